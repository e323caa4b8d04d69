"""Checks fail on the damage they exist for (their passing on sound outputs: tests/assets/test_pipeline.py)."""

import dagster as dg
import polars as pl

from gtp_pipeline import checks


def test_clusters_check_names_missing_examples_and_bad_similarities():
    pool = pl.DataFrame({"example_id": ["a", "b", "c"]})
    clusters = pl.DataFrame({"example_id": ["a", "b"], "cluster": [0, 1], "similarity": [0.9, float("nan")]})
    result = checks.clusters_cover_the_pool(clusters=clusters, raw_corpus=pool)
    assert not result.passed
    meta = {k: v.value for k, v in result.metadata.items()}
    assert meta["pool_examples_without_cluster"] == 1 and meta["bad_similarities"] == 1


def test_evaluation_check_names_an_unscored_fine_tune_and_a_missing_base_model(tiny_pipeline):
    _, instance, _, _, _ = tiny_pipeline
    evaluation = pl.read_parquet(tiny_pipeline[0] / "evaluation" / "data.parquet")
    context = dg.build_asset_check_context(instance=instance)
    assert checks.evaluation_complete(context, evaluation=evaluation).passed
    dropped = evaluation.filter(pl.col("run") != "base").row(0, named=True)
    broken = evaluation.filter(~((pl.col("run") == dropped["run"]) & (pl.col("seed") == dropped["seed"])))
    broken = broken.filter(pl.col("run") != "base")
    result = checks.evaluation_complete(context, evaluation=broken)
    meta = {k: v.value for k, v in result.metadata.items()}
    assert not result.passed and meta["base_model_scored"] is False
    assert meta["unscored"] == f"{dropped['run']}|{dropped['seed']}"


def test_store_check_runs_per_checkpoint_and_fails_only_the_damaged_one(tiny_pipeline, tmp_path):
    import shutil
    from pathlib import Path

    from gtp_pipeline.core.storage.feature_store import FeatureStore
    from gtp_pipeline.resources.storage import ArtifactStore

    root, instance, _, _, _ = tiny_pipeline
    shutil.copytree(root / "gradient_trajectories", tmp_path / "gradient_trajectories")  # a copy, to damage
    checkpoints = instance.get_dynamic_partitions("model_checkpoint")
    damaged = checkpoints[-1]
    (store_path,) = (tmp_path / "gradient_trajectories" / damaged).glob("*.zarr")
    Path(FeatureStore.open(store_path).chunk_file(0)).write_bytes(b"not the features")
    outcome = {}
    for key in checkpoints:  # direct invocation, one partition each (a run would repair the chunk first)
        context = dg.build_op_context(instance=instance, partition_key=key)
        result = checks.gradient_stores_sound(context, store=ArtifactStore(root=str(tmp_path)))
        outcome[key] = (result.passed, result.metadata["problems"].value, result.metadata["checkpoints"].value)
    assert outcome[damaged][0] is False and outcome[damaged][2] == damaged
    assert outcome[damaged][1].startswith(f"{damaged}: chunk 0 ")
    assert all(passed and problems == "none" for k, (passed, problems, _) in outcome.items() if k != damaged)
