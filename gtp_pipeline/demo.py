"""`make demo`: materialize the whole pipeline on the embedded instance, skipping what is up to date.

Each stage is launched through the code location (gtp_pipeline/launcher.py: a run, or a backfill for a partitioned
stage), so the UI shows launched runs, the timeline and the backfills; `--in-process` runs the same plan in this
process instead (run_demo below, what the tests use).

It observes the input sources first (the target and pool files by content, and the settings each stage reads:
gtp_pipeline/assets/inputs.py), so that an edited file or setting reruns exactly the stages it shapes.

    GTP_PROFILE=demo python -m gtp_pipeline.demo      # what `make demo` runs, from the repo root
    python -m gtp_pipeline.demo --through target_gradients   # only that asset and what it depends on
    python -m gtp_pipeline.demo --refresh target_examples    # and rerun it although Dagster sees no change
    python -m gtp_pipeline.demo --remove-checkpoint KEY      # drop a checkpoint partition added by hand

Runs every asset in dependency order (every partition of partitioned ones) through the same
definitions and instance as `make ui` (SQLite under .dagster/<profile>/, configured from gtp_pipeline/instance.yaml;
see gtp_pipeline/instance.py), so the UI shows the demo's runs, lineage and metadata. An asset whose latest materialization is current (same code
version, same upstream data versions: Dagster's own staleness rules) is skipped, so a rerun after a
finished demo does nothing, and a rerun after a crash redoes only what is missing.
"""

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus

REPO_ROOT = Path(__file__).resolve().parents[1]


def status_resolver(instance: dg.DagsterInstance, defs: dg.Definitions) -> CachingStaleStatusResolver:
    """Dagster's stale-status resolver (what the UI's stale badges use) for these definitions."""
    from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
    from dagster._time import get_current_datetime

    graph = defs.resolve_asset_graph()
    view = AssetGraphView(
        temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
        instance=instance,
        asset_graph=graph,
    )
    return CachingStaleStatusResolver(instance=instance, asset_graph=graph, loading_context=view)


def needs_run(
    instance: dg.DagsterInstance, defs: dg.Definitions, key: dg.AssetKey, partition: str | None = None
) -> bool:
    """True when the asset (partition) was never materialized or is stale."""
    return status_resolver(instance, defs).get_status(key, partition) != StaleStatus.FRESH


def _stages(defs: dg.Definitions) -> list[list[dg.AssetKey]]:
    """Asset keys in dependency order, grouped by the node that materializes them together."""
    graph = defs.resolve_asset_graph()
    stages, seen = [], set(graph.observable_asset_keys)  # sources are observed, not materialized
    for key in graph.toposorted_asset_keys:
        if key in seen:
            continue
        keys = sorted(defs.get_assets_def(key).keys, key=lambda k: k.to_user_string())
        seen.update(keys)
        stages.append(keys)
    return stages


def partitions_of(defs: dg.Definitions, instance: dg.DagsterInstance, key: dg.AssetKey) -> list[str | None]:
    """Every partition of the asset, or [None] for an unpartitioned one."""
    partitions_def = defs.resolve_asset_graph().get(key).partitions_def
    return [None] if partitions_def is None else partitions_def.get_partition_keys(dynamic_partitions_store=instance)


def release_orphaned_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark runs whose process died (a killed demo) as failed and free their concurrency slots.

    The embedded instance has no daemon to notice a dead run, and a dead run keeps its slot in pool "gpu", so
    the next demo would wait for it forever. A run counts as dead when the process that started it is gone.
    """
    import os

    from dagster._core.storage.dagster_run import DagsterRunStatus, RunsFilter

    released = []
    for run in instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.STARTING, DagsterRunStatus.STARTED])):
        pids = [e.dagster_event.pid for e in instance.all_logs(run.run_id) if e.dagster_event and e.dagster_event.pid]
        if pids:
            try:
                os.kill(pids[0], 0)
                continue  # still running (another demo, or a run launched from the UI)
            except ProcessLookupError:
                pass
            except PermissionError:
                continue  # alive, someone else's
        instance.report_run_failed(run, "its process is gone (killed); released by the next demo")
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        released.append(run.run_id)
    return released


def remove_checkpoint_partition(instance: dg.DagsterInstance, key: str) -> None:
    """Drop a model_checkpoint partition that names no checkpoint (one typed into the launch dialog by hand)."""
    from gtp_pipeline.partitions import model_checkpoint

    known = instance.get_dynamic_partitions(model_checkpoint.name)
    if key not in known:
        raise ValueError(f"no model_checkpoint partition {key!r}; registered: {known}")
    instance.delete_dynamic_partition(model_checkpoint.name, key)


def with_upstream(defs: dg.Definitions, names: list[str]) -> set[dg.AssetKey]:
    """The named assets and every asset they depend on, directly or not."""
    graph = defs.resolve_asset_graph()
    todo = [dg.AssetKey(n) for n in names]
    unknown = [k.to_user_string() for k in todo if not graph.has(k)]
    if unknown:
        raise ValueError(
            f"no asset named {unknown}; assets: {sorted(k.to_user_string() for k in graph.get_all_asset_keys())}"
        )
    found: set[dg.AssetKey] = set()
    while todo:
        key = todo.pop()
        if key not in found:
            found.add(key)
            todo.extend(graph.get(key).parent_keys)
    return found


def step_name(keys: list[dg.AssetKey], partition: str | None) -> str:
    return ", ".join(k.to_user_string() for k in keys) + (f" [{partition}]" if partition else "")


def observe_sources(defs: dg.Definitions, instance: dg.DagsterInstance, log, tags: dict | None = None) -> None:
    """Observe the input sources first, so that a changed file or setting shows as stale (one quick run, here)."""
    if sources := sorted(defs.resolve_asset_graph().observable_asset_keys):
        defs.resolve_implicit_global_asset_job_def().execute_in_process(
            instance=instance, asset_selection=sources, raise_on_error=True, tags=tags
        )
        log(f"  observed    {', '.join(k.to_user_string() for k in sources)}")


def stages_to_run(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    log,
    report: list[dict],
    only: set[dg.AssetKey] | None = None,
    refresh: set[dg.AssetKey] = frozenset(),
) -> Iterator[tuple[list[dg.AssetKey], list[str | None]]]:
    """Each stage in dependency order with its partitions ([None] when unpartitioned) that are stale, missing or to
    be refreshed; up-to-date ones are logged and added to `report`. Lazy: a stage is judged after the ones before it
    have run (a warm-up adds the checkpoint partitions its successors then list)."""
    for keys in _stages(defs):
        if only is not None and not only.intersection(keys):
            continue
        todo = []
        for partition in partitions_of(defs, instance, keys[0]):
            if refresh.intersection(keys) or any(needs_run(instance, defs, k, partition) for k in keys):
                todo.append(partition)
            else:
                log(f"  up to date  {step_name(keys, partition)}")
                report.append({"assets": step_name(keys, partition), "status": "up to date", "seconds": 0.0})
        if todo:
            yield keys, todo


def done_row(name: str, failed_checks: list[str], seconds: float, log) -> dict:
    status = "materialized" + (f" (failed checks: {', '.join(failed_checks)})" if failed_checks else "")
    log(f"  {status:<11} {name} in {seconds:.1f}s")
    return {"assets": name, "status": status, "seconds": round(seconds, 1)}


def run_demo(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    log=print,
    only: set[dg.AssetKey] | None = None,
    refresh: set[dg.AssetKey] = frozenset(),
) -> list[dict]:
    """Materialize every stale or missing asset (partition) in dependency order, in this process, or only those in
    `only` (and the assets materialized together with them), and those in `refresh` even when up to date; return
    what happened. gtp_pipeline/launcher.py launches the same plan through the code location instead.

    `refresh` is for inputs the observed sources do not cover (a model folder rewritten in place, for one)."""
    for run_id in release_orphaned_runs(instance):
        log(f"  released    run {run_id} (its process is gone)")
    job = defs.resolve_implicit_global_asset_job_def()
    observe_sources(defs, instance, log)
    report: list[dict] = []
    for keys, partitions in stages_to_run(defs, instance, log, report, only, refresh):
        for partition in partitions:
            log(f"  running     {step_name(keys, partition)} ...")
            start = time.perf_counter()
            result = job.execute_in_process(
                instance=instance, asset_selection=keys, partition_key=partition, raise_on_error=True
            )
            failed = [c.check_name for c in result.get_asset_check_evaluations() if not c.passed]
            report.append(done_row(step_name(keys, partition), failed, time.perf_counter() - start, log))
    return report


def main(argv: list[str] | None = None) -> int:
    import argparse

    from gtp_pipeline.definitions import defs
    from gtp_pipeline.instance import instance_home

    parser = argparse.ArgumentParser(description="Materialize the pipeline, skipping what is up to date.")
    parser.add_argument("--through", default="", help="comma-separated assets: only these and what they depend on")
    parser.add_argument("--refresh", default="", help="comma-separated assets to materialize even if up to date")
    parser.add_argument(
        "--in-process", action="store_true", help="run every stage in this process instead of launching it"
    )
    parser.add_argument("--remove-checkpoint", default="", metavar="KEY", help="drop a model_checkpoint partition")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.through.split(",") if n.strip()]
    only = with_upstream(defs, names) if names else None
    refresh = {dg.AssetKey(n.strip()) for n in args.refresh.split(",") if n.strip()}
    if unknown := refresh - set(defs.resolve_asset_graph().get_all_asset_keys()):
        raise SystemExit(f"--refresh: no asset named {sorted(k.to_user_string() for k in unknown)}")

    from gtp_pipeline.core.config.run_config import profile_yaml
    from gtp_pipeline.core.storage.atomic import write_bytes

    resource = defs.resources["profile"]
    profile, store_root = resource.name, defs.resources["store"].root
    home = instance_home(profile, store_root)
    source = f"configuration {resource.config_file}" if resource.config_file else f"profile={profile}"
    print(f"gtp_pipeline demo: {source}, artifacts under {store_root}, instance {home}")
    resolved = defs.resources["store"].path_for("run_config.yaml")  # what this run used, every setting resolved
    write_bytes(profile_yaml(resource.settings()).encode(), resolved)
    print(f"resolved settings: {resolved}")
    instance = dg.DagsterInstance.from_config(str(home))
    if args.remove_checkpoint:
        remove_checkpoint_partition(instance, args.remove_checkpoint)
        print(f"removed model_checkpoint partition {args.remove_checkpoint!r}")
        return 0
    start = time.perf_counter()
    if args.in_process:
        run_demo(defs, instance, only=only, refresh=refresh)
    else:
        from gtp_pipeline.launcher import launch_demo, run_tags

        launch_demo(defs, instance, run_tags(resource), only=only, refresh=refresh)
    print(f"\nDone in {time.perf_counter() - start:.0f}s.")
    if only is not None:
        return 0
    print(f"Results (Parquet, Zarr, PNG plots): {store_root}")
    print(f"The comparison: {Path(store_root) / 'selection_report' / 'report.md'}")
    print(f"Run history and metadata: {home} (embedded SQLite instance)")
    print(f"Open the UI:  GTP_PROFILE={profile} make ui   then browse http://127.0.0.1:3000 (Lineage)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
