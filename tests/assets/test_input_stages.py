"""A changed setting, observed as the recipe source of the stages it shapes, makes exactly those stages stale."""

from dataclasses import replace

import dagster as dg

from gtp_pipeline.core.config import profiles
from gtp_pipeline.demo import needs_run


def test_a_changed_setting_makes_only_the_stages_it_shapes_stale(tiny_pipeline, monkeypatch):
    _, instance, defs, _, _ = tiny_pipeline
    job = defs.resolve_implicit_global_asset_job_def()
    sources = sorted(defs.resolve_asset_graph().observable_asset_keys)
    tiny = profiles.PROFILES["tiny"]
    monkeypatch.setitem(
        profiles.PROFILES,
        "tiny",
        replace(tiny, gradients=replace(tiny.gradients, proj_dim=2 * tiny.gradients.proj_dim)),
    )
    try:
        job.execute_in_process(instance=instance, asset_selection=sources)
        stale = {
            key.to_user_string()
            for key in defs.resolve_asset_graph().materializable_asset_keys
            if defs.resolve_asset_graph().get(key).partitions_def is None and needs_run(instance, defs, key)
        }
        assert stale == set()  # the feature stages are all partitioned: checked per partition below
        for checkpoint in instance.get_dynamic_partitions("model_checkpoint"):
            for name in ("gradient_trajectories", "target_gradients"):
                assert needs_run(instance, defs, dg.AssetKey(name), checkpoint), (name, checkpoint)
        assert not needs_run(instance, defs, dg.AssetKey("warmup_checkpoints"))
        assert not needs_run(instance, defs, dg.AssetKey("raw_corpus"))
    finally:
        monkeypatch.undo()
        job.execute_in_process(instance=instance, asset_selection=sources)  # back to what the fixture built
    assert not needs_run(instance, defs, dg.AssetKey("target_gradients"), checkpoint)
