"""Lineage across reruns: code versions, content-hash data versions, staleness and automation conditions."""

import json

import dagster as dg
import pytest
from dagster._core.definitions.data_version import StaleStatus

from gtp_pipeline.assets import clusterclip, corpus
from gtp_pipeline.demo import status_resolver
from gtp_pipeline.resources import resources_for_profile
from gtp_pipeline.resources.profile import ProfileResource

ASSETS = dg.load_assets_from_modules([corpus, clusterclip])
CORPUS = ["target_examples", "target_rejects", "raw_corpus", "corpus_rejects"]
EMBEDDINGS = dg.AssetKey("embeddings")


def resources(root, corpus_files=()):
    res = resources_for_profile("tiny", artifact_root=str(root))
    res["profile"] = ProfileResource(name="tiny", corpus_files=[str(p) for p in corpus_files])
    return res


@pytest.fixture
def extra_file(tmp_path):
    path = tmp_path / "extra.jsonl"
    path.write_text(
        json.dumps({"prompt": "A question nobody asked before?", "response": "An answer nobody gave."}) + "\n"
    )
    return path


def status(instance, assets, key, root):
    return status_resolver(instance, dg.Definitions(assets=assets, resources=resources(root))).get_status(key)


def test_new_code_version_makes_the_asset_stale(tmp_path):
    with dg.instance_for_test() as instance:
        dg.materialize(ASSETS, resources=resources(tmp_path), instance=instance, selection=[*CORPUS, "embeddings"])
        assert status(instance, ASSETS, EMBEDDINGS, tmp_path) == StaleStatus.FRESH
        bumped = [
            a.map_asset_specs(lambda s: s.replace_attributes(code_version="bumped")) if EMBEDDINGS in a.keys else a
            for a in ASSETS
        ]
        resolver = status_resolver(instance, dg.Definitions(assets=bumped, resources=resources(tmp_path)))
        assert resolver.get_status(EMBEDDINGS) == StaleStatus.STALE
        assert resolver.get_stale_causes(EMBEDDINGS)[0].category.value == "CODE"


def test_reingesting_an_unchanged_corpus_leaves_downstream_fresh_and_unrequested(tmp_path, extra_file):
    with dg.instance_for_test() as instance:
        dg.materialize(ASSETS, resources=resources(tmp_path), instance=instance, selection=[*CORPUS, "embeddings"])
        defs = dg.Definitions(assets=ASSETS, resources=resources(tmp_path))
        cursor = dg.evaluate_automation_conditions(defs=defs, instance=instance).cursor

        dg.materialize(ASSETS, resources=resources(tmp_path), instance=instance, selection=CORPUS)
        assert status(instance, ASSETS, EMBEDDINGS, tmp_path) == StaleStatus.FRESH
        tick = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
        assert tick.get_num_requested(EMBEDDINGS) == 0

        dg.materialize(ASSETS, resources=resources(tmp_path, [extra_file]), instance=instance, selection=CORPUS)
        assert status(instance, ASSETS, EMBEDDINGS, tmp_path) == StaleStatus.STALE
        tick = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=tick.cursor)
        assert tick.get_num_requested(EMBEDDINGS) == 1


def test_failing_blocking_check_stops_downstream_assets(tmp_path):
    target = tmp_path / "target.jsonl"
    # The same text in dev and test: two subtasks, or the second row would be refused as a duplicate.
    rows = [
        {"prompt": "Same question?", "response": "Same answer.", "split": split, "subtask": split}
        for split in ("dev", "test")
    ]
    target.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    res = resources(tmp_path)
    res["profile"] = ProfileResource(name="tiny", target_files=[str(target)])
    from gtp_pipeline import checks

    result = dg.materialize(
        [*ASSETS, *dg.load_asset_checks_from_modules([checks])], resources=res, selection=CORPUS, raise_on_error=False
    )
    assert not result.success
    evaluations = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert evaluations["target_splits_disjoint"] is False
    materialized = {e.materialization.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert materialized == {"target_examples", "target_rejects"}
