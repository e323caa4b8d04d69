"""`python -m gtp_pipeline.multi_target` end to end on the tiny profile: two targets on one pool, each studied in
its own child process, the pool's work and the full-pool fine-tune done once, one report over both."""

import os
import shutil
import subprocess
import sys

import polars as pl
import pytest

from gtp_pipeline.instance import REPO_ROOT, instance_home


def test_with_upstream_is_the_asset_and_everything_it_depends_on():
    from gtp_pipeline.definitions import defs
    from gtp_pipeline.demo import with_upstream

    found = {k.to_user_string() for k in with_upstream(defs, ["target_gradients"])}
    assert found == {"target_gradients", "target_examples", "raw_corpus", "warmup_checkpoints"} | {
        "target_input",
        "pool_input",
        "warmup_recipe",
        "feature_recipe",
    }
    with pytest.raises(ValueError, match="no asset named \\['nope'\\]"):
        with_upstream(defs, ["nope"])


def test_two_targets_share_the_pool_and_get_one_report(tmp_path):
    root = tmp_path / "art"
    env = {**os.environ, "GTP_PROFILE": "tiny", "GTP_ARTIFACT_ROOT": str(root)}
    env.pop("GTP_TARGET_TASK", None)
    command = [sys.executable, "-m", "gtp_pipeline.multi_target", "--targets", "social_iqa,gsm8k"]
    command += ["--methods", "topk,random", "--budgets", "0.1", "--seeds", "0", "--full-seeds", "0"]
    try:
        done = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        # the pool's stages ran for the first target only; the second found them up to date
        log = done.stdout
        assert log.count("materialized warmup_checkpoints") == 1 and "up to date  warmup_checkpoints" in log
        assert log.count("materialized target_examples") == 4  # target_input sees each switch
        from gtp_pipeline.core.config.profiles import TINY
        from gtp_pipeline.core.config.run_config import load_run_config

        assert load_run_config(root / "run_config.yaml").gradients == TINY.gradients  # what the run used, resolved
        study = root / "variant_study"
        shared = [p for p in (study / "shared" / "100pct" / "full").iterdir()]
        assert len(shared) == 1  # one full-pool fine-tune, scored on both targets
        assert len(list(shared[0].glob("scores-*.json"))) == 2
        for target in ("social_iqa", "gsm8k"):
            scores = pl.read_parquet(study / target / "per_example.parquet")
            assert set(scores["method"]) == {"base", "full", "topk", "random"}
            assert scores.filter(pl.col("method") == "full")["example_id"].n_unique() == 24  # that target's tests
            picked = pl.read_parquet(study / target / "selections.parquet")
            assert picked["test_mean_cosine"].is_not_null().all()  # the held-out split's gradients, featurized
            assert len(list((study / target / "held_out_gradients").glob("*/*.zarr"))) == 2  # one per checkpoint
        report = (study / "multi_target.md").read_text()
        assert "# Several targets, one pool: social_iqa, gsm8k" in report
        assert "**social_iqa**" in report and "**gsm8k**" in report and "Not yet studied" not in report
        assert (study / "multi_target_verdict_loss.png").stat().st_size > 1000
    finally:
        shutil.rmtree(instance_home("tiny", str(root)), ignore_errors=True)


def test_the_targets_come_from_the_profile_or_the_configuration_file(tmp_path, monkeypatch):
    from gtp_pipeline.multi_target import profile_targets

    monkeypatch.delenv("GTP_CONFIG", raising=False)
    assert profile_targets("multitarget") == ["social_iqa", "date_understanding", "gsm8k"]
    with pytest.raises(SystemExit, match="profile 'demo' lists no targets: pass --targets"):
        profile_targets("demo")
    config = tmp_path / "two.yaml"
    config.write_text(
        "contamination_targets:\n  - {name: gsm8k, kind: gsm8k, tasks: []}\n  - {name: navigate, tasks: [navigate]}\n"
    )
    monkeypatch.setenv("GTP_CONFIG", str(config))
    assert profile_targets("demo") == ["gsm8k", "navigate"]
