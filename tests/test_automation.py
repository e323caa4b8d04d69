"""Operating the pipeline: the checkpoint sensor, single-run backfills over checkpoints, schedules and jobs."""

import shutil

import dagster as dg
import pytest

from gtp_pipeline.assets import corpus, gradients
from gtp_pipeline.automation import corpus_refresh_schedule, find_checkpoints, new_checkpoint_sensor
from gtp_pipeline.partitions import model_checkpoint
from gtp_pipeline.resources import resources_for_profile
from gtp_pipeline.resources.profile import ProfileResource

ASSETS = dg.load_assets_from_modules([corpus, gradients])
USER_KEYS = ["run-a", "run-b", "run-c"]


@pytest.fixture(scope="module")
def user_checkpoints(tmp_path_factory):
    """A user's own training run: three real LoRA checkpoints of the tiny model, in a watched folder."""
    from gtp_pipeline.core.training.lora_train import LoraTrainConfig, train_lora
    from gtp_pipeline.core.training.models import tiny_model

    root = tmp_path_factory.mktemp("user_run")
    loaded = tiny_model()
    examples = [(f"e{i}", f"Question number {i}?", f"Answer {i}.") for i in range(12)]
    config = LoraTrainConfig(lora_r=4, lora_alpha=16, epochs=3, batch_size=4, max_len=64, lr=1e-3)
    result = train_lora(loaded.model, loaded.tokenizer, examples, root / "out", config, loaded.model_id)
    watch = root / "watched"
    watch.mkdir()
    for key, ckpt in zip(USER_KEYS, result.checkpoints, strict=True):
        shutil.copytree(ckpt.path, watch / key)
    (watch / "half-written").mkdir()  # a folder without the files a checkpoint needs
    return watch


def test_find_checkpoints_skips_incomplete_folders(user_checkpoints):
    found, skipped = find_checkpoints(user_checkpoints)
    assert found == USER_KEYS
    assert len(skipped) == 1 and skipped[0].startswith("half-written: missing")


def test_sensor_registers_new_checkpoint_folders_and_requests_their_features(user_checkpoints):
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(model_checkpoint.name, ["run-a"])  # already known
        context = dg.build_sensor_context(
            instance=instance,
            resources={"profile": ProfileResource(name="tiny", checkpoint_dir=str(user_checkpoints))},
        )
        result = new_checkpoint_sensor(context)
        assert [r.partition_key for r in result.run_requests] == ["run-b", "run-c"]
        assert result.dynamic_partitions_requests[0].partition_keys == ["run-b", "run-c"]
        instance.add_dynamic_partitions(model_checkpoint.name, ["run-b", "run-c"])
        assert isinstance(new_checkpoint_sensor(context), dg.SkipReason)


def test_sensor_names_a_checkpoint_folder_that_does_not_exist(tmp_path):
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(
            instance=instance, resources={"profile": ProfileResource(name="tiny", checkpoint_dir=str(tmp_path / "x"))}
        )
        skip = new_checkpoint_sensor(context)
    assert (
        isinstance(skip, dg.SkipReason)
        and skip.skip_message == f"GTP_CHECKPOINT_DIR='{tmp_path / 'x'}': no such folder"
    )


def test_single_run_backfill_over_three_checkpoints_writes_three_partitions_in_one_run(user_checkpoints, tmp_path):
    res = resources_for_profile("tiny", artifact_root=str(tmp_path))
    res["profile"] = ProfileResource(name="tiny", checkpoint_dir=str(user_checkpoints))
    with dg.instance_for_test() as instance:
        dg.materialize(
            ASSETS,
            resources=res,
            instance=instance,
            selection=["target_examples", "target_rejects", "raw_corpus", "corpus_rejects"],
        )
        instance.add_dynamic_partitions(model_checkpoint.name, USER_KEYS)
        tags = {
            "dagster/asset_partition_range_start": USER_KEYS[0],
            "dagster/asset_partition_range_end": USER_KEYS[-1],
        }
        result = dg.materialize(
            ASSETS, resources=res, instance=instance, selection=["gradient_trajectories"], tags=tags
        )
        assert result.success
        partitions = sorted(e.materialization.partition for e in result.get_asset_materialization_events())
        assert partitions == USER_KEYS
        assert len(instance.get_run_records()) == 2  # the corpus run and ONE gradient run
        for key in USER_KEYS:
            assert list((tmp_path / "gradient_trajectories" / key).glob("*.zarr"))


def test_nightly_schedule_runs_the_corpus_job():
    from gtp_pipeline.definitions import defs

    schedule = defs.resolve_schedule_def("nightly_corpus_refresh")
    assert schedule.cron_schedule == "0 3 * * *"
    assert schedule.job_name == "corpus_job"
    job = defs.resolve_job_def("corpus_job")
    assert {k.to_user_string() for k in job.asset_layer.executable_asset_keys} == {
        "target_examples",
        "target_rejects",
        "raw_corpus",
        "corpus_rejects",
    }
    assert len(corpus_refresh_schedule.evaluate_tick(dg.build_schedule_context()).run_requests) == 1
