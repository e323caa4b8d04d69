"""ClusterClip assets on the tiny profile: real MiniLM embeddings, k-means clusters, sampling plans."""

import dagster as dg
import numpy as np
import polars as pl

from gtp_pipeline.core.config.profiles import TINY, budget_count
from gtp_pipeline.core.storage.feature_store import FeatureStore
from tests.assets.conftest import latest_metadata


def test_embeddings_are_unit_norm_rows_in_corpus_order(tiny_pipeline):
    root, instance, *_ = tiny_pipeline
    pool = pl.read_parquet(root / "raw_corpus" / "data.parquet")
    store = FeatureStore.open(latest_metadata(instance, "embeddings")["path"])
    rows = np.concatenate([store.read_chunk(c) for c in range(store.n_chunks)]).astype(np.float32)
    assert rows.shape == (pool.height, 384)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=2e-3)
    assert list(store.example_ids()) == pool["example_id"].to_list()


def test_rematerializing_embeddings_resumes_the_store_and_keeps_its_data_version(tiny_pipeline):
    _, instance, defs, *_ = tiny_pipeline
    key = dg.AssetKey("embeddings")
    before = instance.get_latest_materialization_event(key).asset_materialization.tags["dagster/data_version"]
    defs.resolve_implicit_global_asset_job_def().execute_in_process(instance=instance, asset_selection=[key])
    meta = latest_metadata(instance, "embeddings")
    assert meta["chunks_written"] == 0 and meta["chunks_resumed"] >= 1
    assert instance.get_latest_materialization_event(key).asset_materialization.tags["dagster/data_version"] == before


def test_every_example_is_in_one_of_k_clusters(tiny_pipeline):
    root, instance, *_ = tiny_pipeline
    table = pl.read_parquet(root / "clusters" / "data.parquet")
    assert set(table["cluster"].unique()) == set(range(TINY.clusters.K))
    assert table["similarity"].min() > -1.0 and table["similarity"].max() <= 1.0 + 1e-5
    assert latest_metadata(instance, "clusters")["K"] == TINY.clusters.K
    assert list((root / "clusters").glob("centroids-*.zarr"))


def test_plans_have_equal_draws_per_budget_and_clusterclip_respects_the_clip(tiny_pipeline):
    root, *_ = tiny_pipeline
    plans = pl.read_parquet(root / "clusterclip_plan" / "data.parquet")
    n_pool = pl.read_parquet(root / "raw_corpus" / "data.parquet").height
    for budget in TINY.budgets.budgets:
        label = f"{budget * 100:g}pct"
        draws = plans.filter(pl.col("budget") == label).group_by("method").len()
        expected = TINY.budgets.train_epochs * budget_count(budget, n_pool)
        assert dict(draws.iter_rows()) == {"clusterclip": expected, "uniform": expected, "random": expected}
        clip = plans.filter((pl.col("budget") == label) & (pl.col("method") == "clusterclip"))
        assert clip["example_id"].value_counts()["count"].max() <= TINY.clusters.R
