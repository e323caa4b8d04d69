"""`python -m gtp_pipeline.variant_study` on what the tiny pipeline materialized: real selections, fine-tunes, verdict."""

import polars as pl

from gtp_pipeline.variant_study import parse_args, run_variant_study


def test_variant_study_reads_the_pipeline_and_writes_a_verdict(tiny_pipeline):
    root, instance, defs, _, _ = tiny_pipeline
    args = parse_args(["--methods", "gtp,gtp+per_example+centered,topk", "--budgets", "0.1", "--seeds", "0,1"])
    study = run_variant_study(defs, instance, args)
    assert study.parent == root / "variant_study" / "social_iqa"
    assert (root / "variant_study" / "shared" / "base").is_dir()  # pool-only runs, shared by every target's study
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


def test_variant_study_refuses_target_examples_of_another_target(tiny_pipeline):
    import dagster as dg
    import pytest

    from gtp_pipeline.resources import resources_for_profile

    root, instance, defs, _, _ = tiny_pipeline
    resources = resources_for_profile("tiny", str(root))
    resources["profile"] = resources["profile"].model_copy(update={"target_task": "gsm8k"})
    other = dg.Definitions(assets=defs.assets, resources=resources)
    with pytest.raises(SystemExit, match="target_examples are \\['social_iqa'\\], the profile's target is 'gsm8k'"):
        run_variant_study(other, instance, parse_args(["--methods", "topk", "--budgets", "0.1", "--seeds", "0"]))
