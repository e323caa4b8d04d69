"""The whole pipeline on the tiny profile: every asset materializes, checks pass, reruns skip, results hang together."""

import json
import re
import shutil
from pathlib import Path

import dagster as dg
import polars as pl

from gtp_pipeline.core.config.profiles import TINY, budget_count, finetune_runs
from gtp_pipeline.core.config.run_key import RunKey
from tests.assets.conftest import latest_metadata

ALL_ASSETS = {
    "target_examples",
    "target_rejects",
    "raw_corpus",
    "corpus_rejects",
    "embeddings",
    "clusters",
    "clusterclip_plan",
    "warmup_checkpoints",
    "gradient_shards",
    "gradient_trajectories",
    "target_gradients",
    "gtp_selection",
    "topk_selection",
    "random_selection",
    "finetuned_model",
    "evaluation",
    "selection_report",
}


def table_rows(table) -> list[dict]:
    """Rows of a table metadata value (what the UI draws) as dicts, its columns in its schema's order."""
    names = [c.name for c in table.schema.columns]
    assert all(set(r.data) == set(names) for r in table.records)
    return [dict(r.data) for r in table.records]


def test_every_asset_materializes_and_every_check_passes(tiny_pipeline):
    _, instance, defs, first, _ = tiny_pipeline
    assert all(r["status"] == "materialized" for r in first), [r for r in first if r["status"] != "materialized"]
    assert {r["assets"].split(" [")[0] for r in first} >= {"embeddings", "evaluation", "selection_report"}
    for key in ALL_ASSETS:
        assert instance.get_latest_materialization_event(dg.AssetKey(key)) is not None, key
    for check in defs.resolve_asset_graph().asset_check_keys:
        record = instance.event_log_storage.get_latest_asset_check_execution_by_key([check]).get(check)
        assert record is not None and record.status.value == "SUCCEEDED", check.to_user_string()


def test_a_second_demo_run_skips_everything(tiny_pipeline):
    *_, second = tiny_pipeline
    assert {r["status"] for r in second} == {"up to date"}


def test_selections_fit_their_budgets_and_gtp_matches_the_target_best(tiny_pipeline):
    root, instance, *_ = tiny_pipeline
    n_pool = pl.read_parquet(root / "raw_corpus" / "data.parquet").height
    residual = {}
    for method in ("gtp", "topk", "random"):
        table = pl.read_parquet(root / f"{method}_selection" / "data.parquet")
        for budget in TINY.budgets.budgets:
            rows = table.filter(pl.col("budget_value") == budget)
            assert rows.height == budget_count(budget, n_pool)
            assert rows["example_id"].n_unique() == rows.height
        summary = table_rows(latest_metadata(instance, f"{method}_selection")["per_budget"])
        residual[method] = [float(row["relative_residual"]) for row in summary]
    # GTP minimizes the NNLS residual of the target trajectory; the baselines do not
    assert len(residual["gtp"]) == len(TINY.budgets.budgets)
    for g, t, r in zip(residual["gtp"], residual["topk"], residual["random"], strict=True):
        assert g <= t + 1e-9 and g <= r + 1e-9


def test_every_finetune_records_the_identity_of_its_training_data(tiny_pipeline):
    _, instance, *_ = tiny_pipeline
    for run in finetune_runs(TINY):
        meta = latest_metadata(instance, "finetuned_model", f"{run}|0")
        assert meta["selection_run"] == run and meta["selection_corpus_version"]
        assert meta["steps"] >= 1 and re.search(rf"checkpoint-0*{meta['steps']}$", meta["adapter"])
    draws = {run: latest_metadata(instance, "finetuned_model", f"{run}|0")["draws"] for run in finetune_runs(TINY)}
    for budget in ("5pct", "20pct"):  # every method sees the same number of training draws at a budget
        assert len({draws[f"{m}-{budget}"] for m in ("gtp", "topk", "random", "clusterclip")}) == 1


def test_report_lists_every_method_and_budget_that_was_materialized(tiny_pipeline):
    root, *_ = tiny_pipeline
    evaluation = pl.read_parquet(root / "evaluation" / "data.parquet")
    report = (root / "selection_report" / "report.md").read_text()
    expected = {("base", "-"), ("full", "100pct")} | {
        (m, b) for m in ("gtp", "topk", "random", "clusterclip") for b in ("5pct", "20pct")
    }
    assert set(zip(evaluation["method"], evaluation["budget"], strict=True)) == expected
    for method, budget in expected:
        assert re.search(rf"^\| {method} \| {re.escape(budget)} \|", report, re.M), (method, budget)
    for plot in ("loss_vs_budget", "composition_by_source", "overlap_5pct", "duplicates_chosen"):
        assert (root / "selection_report" / f"{plot}.png").stat().st_size > 1000


def test_evaluation_keeps_per_example_scores_that_add_up_to_its_table_and_the_report_gives_a_verdict(tiny_pipeline):
    root, instance, *_ = tiny_pipeline
    evaluation = pl.read_parquet(root / "evaluation" / "data.parquet")
    per_example = pl.read_parquet(root / "evaluation" / "per_example.parquet")
    assert latest_metadata(instance, "evaluation")["per_example"] == str(root / "evaluation" / "per_example.parquet")
    assert latest_metadata(instance, "evaluation")["scored_with"].startswith("cpu ")  # the arithmetic that scored it
    assert per_example.height == evaluation.height * TINY.target.n_test
    means = per_example.group_by("run", "seed").agg(
        pl.col("loss").mean().alias("mean_loss"), pl.col("correct").cast(pl.Float64).mean().alias("mean_correct")
    )
    joined = evaluation.join(means, on=["run", "seed"], how="left")
    for row in joined.iter_rows(named=True):  # the per-example rows are the same scores the table summarizes
        assert abs(row["mean_loss"] - row["loss"]) < 1e-9, row["run"]
        assert row["accuracy"] is None or abs(row["mean_correct"] - row["accuracy"]) < 1e-9, row["run"]
    from gtp_pipeline.core.evaluation.scoring import CACHE_FORMAT, read_scores

    caches = list((root / "evaluation" / "cache").iterdir())
    assert caches and all(p.name.endswith(f"-{CACHE_FORMAT}.json") for p in caches)
    for cache in caches:  # whole, and naming the test set their file name names
        test_key = json.loads(cache.read_text())["test_key"]
        assert f"-{test_key}-" in cache.name and read_scores(cache, test_key) is not None
    report = (root / "selection_report" / "report.md").read_text()
    assert "## Verdict" in report and "## Which method for my data" in report
    assert "not seed-to-seed noise" in report  # the tiny profile fine-tunes one seed
    assert (root / "selection_report" / "verdict_loss.png").stat().st_size > 1000


def test_an_interrupted_finetune_resumes_from_its_last_checkpoint(tiny_pipeline):
    root, instance, defs, *_ = tiny_pipeline
    before = latest_metadata(instance, "finetuned_model", "full|0")
    checkpoints = sorted(
        (root / "finetuned_model" / "full" / "seed0").glob("*/checkpoint-*"), key=lambda p: int(p.name.split("-")[1])
    )
    assert len(checkpoints) >= 2
    shutil.rmtree(checkpoints[-1])  # as if the run was killed before its last save
    job = defs.resolve_implicit_global_asset_job_def()
    job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey("finetuned_model")], partition_key="full|0")
    after = latest_metadata(instance, "finetuned_model", "full|0")
    assert 0 < after["steps_run_now"] < after["steps"]
    assert after["checkpoint_id"] == before["checkpoint_id"]  # the same adapter as the uninterrupted run


def test_the_report_gives_numbers_that_plot_across_runs_and_its_plots_as_files(tiny_pipeline):
    _, instance, *_ = tiny_pipeline
    meta = latest_metadata(instance, "selection_report")
    for run in finetune_runs(TINY):
        key = RunKey.from_run(run)
        assert isinstance(meta[f"loss {key.method} {key.budget_column}"], float)
    files = [v for k, v in meta.items() if k.endswith("_file")]
    assert files and all(Path(p).stat().st_size > 1000 for p in files)
    assert [r.data["method"] for r in meta["table"].records][:1]  # a native table, drawn without a click
