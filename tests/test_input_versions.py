"""Inputs Dagster can see change: the target and pool files by content and the settings of each stage, observed as
source assets, so that an edit reruns exactly the stages it shapes."""

import json
import os
from dataclasses import replace

import dagster as dg
import pytest

from gtp_pipeline.core.config import profiles
from gtp_pipeline.core.config.input_versions import RECIPES, file_digest, pool_input_version, recipe_version
from gtp_pipeline.demo import needs_run, run_demo, with_upstream


def test_a_recipe_version_moves_only_with_its_own_settings():
    demo = profiles.DEMO
    changed = replace(demo, gradients=replace(demo.gradients, proj_dim=2048, feature_batch_size=3))
    moved = {r for r in RECIPES if recipe_version(demo, r) != recipe_version(changed, r)}
    assert moved == {"feature_recipe"}  # the batch size changes speed, not results: no recipe reads it
    changed = replace(demo, budgets=replace(demo.budgets, train_epochs=3))
    assert {r for r in RECIPES if recipe_version(demo, r) != recipe_version(changed, r)} == {
        "selection_recipe",
        "finetune_recipe",
    }
    with pytest.raises(ValueError, match="unknown recipe"):
        recipe_version(demo, "nope")


def test_file_digests_follow_content_not_timestamps(tmp_path):
    path = tmp_path / "pool.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n')
    before = file_digest(path)
    os.utime(path, (1, 1))
    assert file_digest(path) == before
    path.write_text('{"prompt": "a", "response": "c"}\n')
    assert file_digest(path) != before
    profile = profiles.get_profile("full", corpus_files=(str(path),), target_files=(str(path),))
    gone = profiles.get_profile("full", corpus_files=(str(tmp_path / "gone.jsonl"),), target_files=(str(path),))
    assert pool_input_version(profile) != pool_input_version(gone)  # a missing file is a version, not a crash


def _write(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_editing_a_file_reruns_the_stages_that_read_it_and_nothing_else(tmp_path, monkeypatch):
    from gtp_pipeline.assets import corpus, inputs
    from gtp_pipeline.resources import resources_for_profile

    pool, target = tmp_path / "pool.jsonl", tmp_path / "target.jsonl"
    _write(pool, [{"prompt": f"Question {i}?", "response": f"Answer {i}."} for i in range(20)])
    _write(target, [{"prompt": f"Sum {i} + {i}?", "response": str(2 * i)} for i in range(10)])
    monkeypatch.setenv("GTP_CORPUS_FILES", str(pool))
    monkeypatch.setenv("GTP_TARGET_FILES", str(target))
    defs = dg.Definitions(
        assets=dg.load_assets_from_modules([inputs, corpus]),
        resources=resources_for_profile("full", str(tmp_path / "art")),
    )
    only = with_upstream(defs, ["raw_corpus"])

    def ran(report):
        return sorted(r["assets"] for r in report if r["status"] != "up to date")

    with dg.instance_for_test() as instance:
        assert ran(run_demo(defs, instance, log=lambda _: None, only=only)) == [
            "corpus_rejects, raw_corpus",
            "target_examples, target_rejects",
        ]
        forced = run_demo(defs, instance, log=lambda _: None, only=only, refresh={dg.AssetKey("target_examples")})
        assert ran(forced) == ["target_examples, target_rejects"]  # same content: the corpus stays up to date
        assert ran(run_demo(defs, instance, log=lambda _: None, only=only)) == []
        _write(pool, [{"prompt": f"Question {i}?", "response": f"Answer {i}!"} for i in range(20)])
        assert ran(run_demo(defs, instance, log=lambda _: None, only=only)) == ["corpus_rejects, raw_corpus"]
        _write(target, [{"prompt": f"Sum {i} + {i}?", "response": str(2 * i)} for i in range(11)])
        job = defs.resolve_implicit_global_asset_job_def()
        job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey("target_input")])
        assert needs_run(instance, defs, dg.AssetKey("target_examples"))
        assert not needs_run(instance, defs, dg.AssetKey("raw_corpus"))  # until target_examples has new content
        assert ran(run_demo(defs, instance, log=lambda _: None, only=only)) == [
            "corpus_rejects, raw_corpus",
            "target_examples, target_rejects",
        ]
        forced = run_demo(defs, instance, log=lambda _: None, only=only, refresh={dg.AssetKey("target_examples")})
        assert ran(forced) == ["target_examples, target_rejects"]  # same content: the corpus stays up to date
