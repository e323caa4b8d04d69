"""Jobs, schedules, sensors and the automation condition the pipeline's assets share.

- `nightly_corpus_refresh` re-ingests the corpus; content-hash data versions make that a no-op downstream
  when nothing changed.
- `ON_INPUT_DATA_CHANGE` (on every downstream asset): request the asset when one of its inputs' *data
  version* changed, not merely when an input was re-materialized. Missing assets are not requested: the
  first materialization is yours (`make demo`, or the UI), so opening the UI never starts the whole pipeline. It is evaluated by the
  `automation` sensor, and unlike the UI's stale badge it also works for assets that aggregate more than
  100 checkpoint partitions.
- `new_checkpoint_sensor` registers checkpoint folders that appear in the configured folder (a user's own
  training run) as `model_checkpoint` partitions and requests their gradient features.
"""

from pathlib import Path

import dagster as dg

from gtp_pipeline.core.training.checkpoints import CHECKPOINT_FILES
from gtp_pipeline.partitions import is_valid_checkpoint_key, model_checkpoint
from gtp_pipeline.resources.profile import ProfileResource

_AC = dg.AutomationCondition
ON_INPUT_DATA_CHANGE = (
    _AC.in_latest_time_window()
    & _AC.any_deps_match(_AC.data_version_changed()).since_last_handled()
    & ~_AC.any_deps_missing()
    & ~_AC.any_deps_in_progress()
    & ~_AC.in_progress()
).with_label("an input's data version changed")

corpus_job = dg.define_asset_job(
    "corpus_job", selection=dg.AssetSelection.groups("corpus"), description="Re-ingest the pool and the target task."
)
gradients_job = dg.define_asset_job(
    "gradients_job",
    selection=dg.AssetSelection.assets("gradient_trajectories", "target_gradients"),
    description="Gradient features of the pool and the target for the requested checkpoint partitions.",
)

corpus_refresh_schedule = dg.ScheduleDefinition(
    name="nightly_corpus_refresh",
    job=corpus_job,
    cron_schedule="0 3 * * *",
    description="Re-ingest the corpus every night at 03:00.",
)

automation_sensor = dg.AutomationConditionSensorDefinition(
    "automation",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Evaluates every asset's automation condition (ON_INPUT_DATA_CHANGE).",
)

# A user checkpoint folder must hold what the gradient features need (core/training/lora_train.py's format).


def find_checkpoints(folder: str | Path) -> tuple[list[str], list[str]]:
    """(complete checkpoint folder names with valid keys, names skipped with the reason)."""
    folder = Path(folder)
    found, skipped = [], []
    if not folder.is_dir():
        return found, skipped
    for path in sorted(p for p in folder.iterdir() if p.is_dir()):
        missing = [f for f in CHECKPOINT_FILES if not (path / f).is_file()]
        if missing:
            skipped.append(f"{path.name}: missing {', '.join(missing)}")
        elif not is_valid_checkpoint_key(path.name) or path.name.startswith("warmup-"):
            skipped.append(f"{path.name}: not a valid partition key (letters, digits, _ . -; not warmup-*)")
        else:
            found.append(path.name)
    return found, skipped


@dg.sensor(
    job=gradients_job,
    minimum_interval_seconds=60,
    description="Registers new checkpoint folders as model_checkpoint partitions.",
)
def new_checkpoint_sensor(context: dg.SensorEvaluationContext, profile: ProfileResource):
    if not profile.checkpoint_dir:
        return dg.SkipReason("no checkpoint folder configured (set GTP_CHECKPOINT_DIR)")
    if not Path(profile.checkpoint_dir).is_dir():  # say so on every tick rather than "no new checkpoints"
        return dg.SkipReason(f"GTP_CHECKPOINT_DIR={profile.checkpoint_dir!r}: no such folder")
    found, skipped = find_checkpoints(profile.checkpoint_dir)
    for note in skipped:
        context.log.info(f"skipping {note}")
    existing = set(context.instance.get_dynamic_partitions(model_checkpoint.name))
    new = [key for key in found if key not in existing]
    if not new:
        return dg.SkipReason(f"no new checkpoints in {profile.checkpoint_dir} ({len(found)} known)")
    return dg.SensorResult(
        run_requests=[dg.RunRequest(partition_key=key, run_key=f"checkpoint-{key}") for key in new],
        dynamic_partitions_requests=[model_checkpoint.build_add_request(new)],
    )
