"""`make demo`'s stages launched through the code location, as the UI launches them.

Stage by stage (the plan of gtp_pipeline/demo.py: stale or missing assets in dependency order), an unpartitioned
stage becomes one run and a partitioned one one asset backfill over its stale partitions. Dagster's own backfill
and run-queue daemons (driven here one iteration at a time, unless a daemon such as `make ui`'s already runs on the
instance) create the runs from the code location in workspace.yaml, queue them under the instance's run limits and
run each in its own process. So the runs list, the Overview timeline, the Backfills tab and re-execution in the UI
show real launched runs, tagged with the profile and the configuration file, and the terminal shows the same
progress lines as the in-process engine (demo.run_demo).

Stages go one after another because the checkpoint partitions only exist once the warm-up stage has run.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import dagster as dg

from gtp_pipeline.demo import done_row, observe_sources, release_orphaned_runs, stages_to_run, step_name

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKSPACE = REPO_ROOT / "workspace.yaml"
DAEMON_FRESH_S = 60  # a daemon heartbeat younger than this means `make ui` (or dagster-daemon) drives the queue
POLL_S = 1.0
TERMINAL = ("SUCCESS", "FAILURE", "CANCELED")


def run_tags(profile_resource) -> dict[str, str]:
    """Tags on every run the demo launches: which profile or configuration file it ran (filterable in the UI)."""
    tags = {"gtp/profile": profile_resource.name, "gtp/launched_by": "demo"}
    if profile_resource.config_file:
        tags["gtp/config"] = str(profile_resource.config_file)
    return tags


def _workspace(instance: dg.DagsterInstance):
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import WorkspaceFileTarget

    return WorkspaceProcessContext(instance, WorkspaceFileTarget(paths=[str(WORKSPACE)]))


def daemon_running(instance: dg.DagsterInstance) -> bool:
    """True when a dagster-daemon (for one, `make ui`'s) has beaten its heart on this instance lately."""
    beats = instance.get_daemon_heartbeats()
    now = time.time()
    return any(now - beat.timestamp < DAEMON_FRESH_S for beat in beats.values())


def launch_backfill(
    defs: dg.Definitions, instance: dg.DagsterInstance, keys: list[dg.AssetKey], partitions: list[str], tags: dict
) -> str:
    """Register one asset backfill of `keys` over `partitions` (Dagster launches its runs); return its id."""
    from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset
    from dagster._core.definitions.events import AssetKeyPartitionKey
    from dagster._core.execution.backfill import PartitionBackfill
    from dagster._core.utils import make_new_backfill_id

    wanted = {AssetKeyPartitionKey(k, p) for k in keys for p in partitions}
    backfill = PartitionBackfill.from_asset_graph_subset(
        backfill_id=make_new_backfill_id(),
        backfill_timestamp=time.time(),
        tags=tags,
        dynamic_partitions_store=instance,
        asset_graph_subset=AssetGraphSubset.from_asset_partition_set(wanted, defs.resolve_asset_graph()),
        title=f"demo: {step_name(keys, None)}",
        description=f"{len(partitions)} partition(s), launched by gtp_pipeline.demo",
        run_config=None,
    )
    instance.add_backfill(backfill)
    return backfill.backfill_id


def submit_run(workspace, keys: list[dg.AssetKey], tags: dict[str, str], logger) -> str:
    """Create a run of `keys` (and their checks) from the code location and submit it to the run queue."""
    import asyncio

    from dagster._core.execution.submit_asset_runs import submit_asset_run

    request = dg.RunRequest(asset_selection=keys, tags=tags)
    context = workspace.create_request_context()
    run = asyncio.run(submit_asset_run(None, request, 0, workspace.instance, workspace, context, {}, {}, logger))
    return run.run_id


class _Follower:
    """Drives Dagster's backfill and run-queue daemons one iteration at a time (unless a daemon already runs on the
    instance) and logs each run's progress until the runs of one stage have finished."""

    def __init__(self, workspace, log, timeout_s: float | None):
        from dagster._core.run_coordinator import QueuedRunCoordinator
        from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon

        self.workspace, self.log, self.timeout_s = workspace, log, timeout_s
        self.instance = workspace.instance
        self.logger = logging.getLogger("gtp_pipeline.launcher")
        self.drive = not daemon_running(self.instance)
        # A queued coordinator (instance.yaml's run limits) needs its queue driven; the default one launches at once.
        self.queue = (
            QueuedRunCoordinatorDaemon(interval_seconds=POLL_S)
            if isinstance(self.instance.run_coordinator, QueuedRunCoordinator)
            else None
        )

    def close(self) -> None:
        if self.queue is not None:
            self.queue.__exit__(None, None, None)

    def _runs(self, run_id: str | None, backfill_id: str | None):
        from dagster._core.storage.dagster_run import RunsFilter

        if run_id:
            return [self.instance.get_run_by_id(run_id)]
        return self.instance.get_runs(RunsFilter(tags={"dagster/backfill": backfill_id}))

    def follow(self, run_id: str | None = None, backfill_id: str | None = None) -> list[dict]:
        from dagster._daemon.backfill import execute_backfill_iteration

        seen: dict[str, str] = {}
        rows: list[dict] = []
        deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s
        while True:
            if self.drive:
                if backfill_id:
                    list(execute_backfill_iteration(self.workspace, self.logger))
                if self.queue is not None:
                    list(self.queue.run_iteration(self.workspace))
            runs = self._runs(run_id, backfill_id)
            for run in sorted(runs, key=lambda r: r.run_id):
                if seen.get(run.run_id) != run.status.value:
                    seen[run.run_id] = run.status.value
                    rows.extend(_report_status(self.instance, run, self.log))
            finished = all(r.status.value in TERMINAL for r in runs)
            if backfill_id:  # a backfill may launch more runs until it leaves REQUESTED
                finished = finished and self.instance.get_backfill(backfill_id).status.value != "REQUESTED"
            else:
                finished = finished and bool(runs)
            if finished:
                break
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{run_id or 'backfill ' + str(backfill_id)} not finished after {self.timeout_s}s")
            time.sleep(POLL_S)
        failed = [r["assets"] for r in rows if r["status"] == "failed"]
        if backfill_id and (status := self.instance.get_backfill(backfill_id).status.value) != "COMPLETED_SUCCESS":
            failed = failed or [f"backfill {backfill_id} ended {status}"]
        if failed:
            raise RuntimeError(f"failed: {', '.join(failed)}; see the runs in the UI (make ui)")
        return rows


def launch_demo(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    tags: dict[str, str],
    log=print,
    only: set[dg.AssetKey] | None = None,
    refresh: set[dg.AssetKey] = frozenset(),
    timeout_s: float | None = None,
) -> list[dict]:
    """run_demo's plan, with each stage launched through the code location: one run for an unpartitioned stage, one
    backfill over the stale partitions of a partitioned one. Same progress lines and report rows as run_demo;
    raises RuntimeError when a run fails, TimeoutError when a stage takes longer than `timeout_s`."""
    for run_id in release_orphaned_runs(instance):
        log(f"  released    run {run_id} (its process is gone)")
    observe_sources(defs, instance, log, tags)
    report: list[dict] = []
    with _workspace(instance) as workspace:
        follower = _Follower(workspace, log, timeout_s)
        try:
            for keys, partitions in stages_to_run(defs, instance, log, report, only, refresh):
                if partitions == [None]:
                    report.extend(follower.follow(run_id=submit_run(workspace, keys, tags, follower.logger)))
                    continue
                backfill_id = launch_backfill(defs, instance, keys, partitions, tags)
                log(f"  backfill    {backfill_id}: {step_name(keys, None)}, {len(partitions)} partition(s)")
                report.extend(follower.follow(backfill_id=backfill_id))
        finally:
            follower.close()
    return report


def _report_status(instance: dg.DagsterInstance, run, log) -> list[dict]:
    """Log a run's new status; a finished run becomes a report row."""
    keys = sorted(run.asset_selection or (), key=lambda k: k.to_user_string())
    first, last = (run.tags.get(f"dagster/asset_partition_range_{end}") for end in ("start", "end"))
    name = step_name(keys, run.tags.get("dagster/partition") or (first and f"{first}...{last}"))
    if run.status.value == "STARTED":
        log(f"  running     {name} ...")
        return []
    if run.status.value not in TERMINAL:
        return []
    stats = instance.get_run_stats(run.run_id)
    seconds = (stats.end_time or 0) - (stats.start_time or stats.end_time or 0)
    if run.status.value != "SUCCESS":
        log(f"  failed      {name} (run {run.run_id})")
        return [{"assets": name, "status": "failed", "seconds": round(seconds, 1)}]
    failed = sorted(
        e.dagster_event.event_specific_data.check_name
        for e in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
        if not e.dagster_event.event_specific_data.passed
    )
    return [done_row(name, failed, seconds, log)]
