"""`python -m gtp_pipeline.variant_study` on what the tiny pipeline materialized: real selections, fine-tunes, verdict."""

import polars as pl

from gtp_pipeline.variant_study import parse_args, run_variant_study


def test_variant_study_reads_the_pipeline_and_writes_a_verdict(tiny_pipeline):
    root, instance, defs, _, _ = tiny_pipeline
    args = parse_args(["--methods", "gtp,gtp+per_example+centered,topk", "--budgets", "0.1", "--seeds", "0,1"])
    study = run_variant_study(defs, instance, args)
    assert study.parent == root / "variant_study"
    scores = pl.read_parquet(study.parent / "per_example.parquet")
    test = defs.load_asset_value("target_examples", instance=instance).filter(pl.col("split") == "test")
    runs = scores.select("method", "budget", "seed").unique()
    assert runs.height == 1 + 1 + 3 * 2  # base, full (seed 0), three methods x two seeds
    assert scores.height == runs.height * test.height
    selections = pl.read_parquet(study.parent / "selections.parquet")
    assert set(selections["method"]) == {"gtp", "gtp+per_example+centered", "topk"}
    gtp = selections.filter(pl.col("method") != "topk")
    assert (gtp["fitted"] + gtp["fill"] == gtp["k"]).all()
    text = study.read_text()
    assert "## Verdict" in text and "gtp+per_example+centered" in text and "Reproduce:" in text
