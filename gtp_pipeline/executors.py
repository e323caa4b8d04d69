"""Which Dagster executor runs a run's steps, chosen by one environment variable: `executor_for_env()`.

GTP_EXECUTOR (read where the definitions load: the code server and each run process):
- unset: Dagster's default (multiprocess, switchable to in-process by run config);
- "multiprocess": one subprocess per step on the run's machine;
- "in_process": every step in the run process (debugging, profiling);
- "dask": dagster-dask, each step a task on a Dask cluster (deploy/README.md).
  Run config picks the cluster:
      execution: {config: {scheduler_address: "tcp://10.0.0.5:8786"}}   # an existing cluster
      execution: {config: {scheduler_address: "", local_workers: 2}}   # a LocalCluster for this run
      execution: {config: {scheduler_address: "", local_gpu_devices: "all", local_workers: 0}}
  The third starts one worker per GPU of this machine, each pinned to its device ("all": every visible GPU;
  "0,2": those), plus `local_workers` plain workers (gtp_pipeline/gpu_workers.py). On several nodes, the same
  pinned workers come from `python -m gtp_pipeline.gpu_workers <scheduler>` on each node and the first form.
  `dask_run_config(address)` builds the first form. When run config leaves the address out, it defaults to
  GTP_DASK_SCHEDULER as read where the definitions load, else a LocalCluster. Dask workers re-import the job
  to run a step: they must see the same GTP_* environment as the code location (same image), but they never
  need the scheduler address (a missing value is "", never an import-time KeyError).

GPU steps (op tag `dagster-dask/resource_requirements` = {"GPU": 1}, see gpu_workers.GPU_STEP_TAGS) go only to
workers that advertise GPU and run one at a time per such worker. `step_resources: "auto"` (the default) drops a
requirement that no worker of the cluster has when the run starts, so on a cluster of plain workers (CPU machines,
tests) GPU steps run anywhere, as before; `step_resources: "required"` keeps it, for a cluster whose GPU workers
join later (the steps wait for them).

Constraints of every non-in-process executor: a persistent instance (deploy/dagster.yaml), a reconstructable job
(`dagster.reconstructable` / a job in a loaded code location), and step inputs through an IO manager the workers
can reach (ArtifactStore on shared or object storage). Under dask, op retry policies are off (the executor
reports RetryMode.DISABLED); a worker lost mid-step is handled by Dask rescheduling the step, which resumes from
the store's done markers, and failed runs by the instance's run retries.

Dagster is imported here (this is not core), but dagster-dask only when "dask" is chosen.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from typing import Any

import dagster as dg

from gtp_pipeline.core.config import settings as env
from gtp_pipeline.gpu_workers import STEP_RESOURCES, parse_devices, usable_requirements, visible_devices

logger = logging.getLogger(__name__)

EXECUTOR_ENV = "GTP_EXECUTOR"
SCHEDULER_ENV = "GTP_DASK_SCHEDULER"
EXECUTORS = ("multiprocess", "in_process", "dask")


class UnknownExecutorError(ValueError):
    """GTP_EXECUTOR names an executor this project does not offer."""

    def __init__(self, name: str):
        self.name = name
        super().__init__(f"{EXECUTOR_ENV}={name!r} is not one of {', '.join(EXECUTORS)}")


def executor_for_env(environ: Mapping[str, str] | None = None) -> dg.ExecutorDefinition | None:
    """The executor named by GTP_EXECUTOR, for `Definitions(executor=...)`; None (Dagster's default) when unset."""
    name = env.get(EXECUTOR_ENV, environ).strip().lower().replace("-", "_")
    if not name:
        return None
    return executor_named(name, default_scheduler=env.get(SCHEDULER_ENV, environ))


def executor_named(name: str, default_scheduler: str = "") -> dg.ExecutorDefinition:
    """ "multiprocess", "in_process" or "dask" (the latter with `default_scheduler` as its default address)."""
    if name == "multiprocess":
        return dg.multiprocess_executor
    if name == "in_process":
        return dg.in_process_executor
    if name == "dask":
        return dask_executor(default_scheduler)
    raise UnknownExecutorError(name)


def dask_executor(default_scheduler: str = "", default_local_workers: int = 2) -> dg.ExecutorDefinition:
    """The "dask" executor: dagster-dask's DaskExecutor (fixed, see GtpDaskExecutor) behind a small run config."""

    @dg.executor(
        name="dask",
        requirements=dg.multiple_process_executor_requirements(),
        config_schema={
            "scheduler_address": dg.Field(
                str,
                default_value=default_scheduler,
                description='Dask scheduler to send steps to, e.g. "tcp://10.0.0.5:8786"; "" starts a LocalCluster.',
            ),
            "local_workers": dg.Field(
                int, default_value=default_local_workers, description="Plain worker processes of that LocalCluster."
            ),
            "local_gpu_devices": dg.Field(
                str,
                default_value="",
                description='Also one pinned worker per GPU in that cluster: "all" (every visible GPU), "0,2", or "".',
            ),
            "step_resources": dg.Field(
                dg.Enum("StepResources", [dg.EnumValue(mode) for mode in STEP_RESOURCES]),
                default_value="auto",
                description='"auto": drop a step\'s Dask resource requirement (GPU) that no worker has; "required": keep it.',
            ),
        },
    )
    def gtp_dask_executor(init_context) -> dg.Executor:
        config = init_context.executor_config
        mode = config["step_resources"]
        if config["scheduler_address"]:
            return GtpDaskExecutor("existing", {"address": config["scheduler_address"]}, mode)
        if config["local_gpu_devices"]:
            spec = config["local_gpu_devices"].strip()
            devices = visible_devices() if spec == "all" else parse_devices(spec)
            return GtpDaskExecutor("local_gpu", {"devices": devices, "cpu_workers": config["local_workers"]}, mode)
        local = {
            "n_workers": config["local_workers"],
            "processes": True,
            "host": "127.0.0.1",
            "dashboard_address": None,
        }
        return GtpDaskExecutor("local", local, mode)

    return gtp_dask_executor


class _Opaque:
    """Carries Dagster objects through dask's task-spec parser, which iterates tuples (Dagster records forbid it)."""

    def __init__(self, value: tuple):
        self.value = value


def _execute_step(dependencies: list, payload: _Opaque) -> list:
    """Runs on a Dask worker: dagster-dask's own step function (`dependencies` only orders the tasks)."""
    from dagster_dask.executor import query_on_dask_worker

    return query_on_dask_worker(dependencies, *payload.value)


@functools.cache
def _gtp_dask_executor_class() -> type:
    from dagster_dask.executor import DaskExecutor, get_dask_resource_requirements

    class _GtpDaskExecutor(DaskExecutor):
        """dagster-dask 0.29.27's DaskExecutor with two fixes and one more cluster type, same worker function.

        1. The Dask key of a step is `job.step.run_id`, not `job.step`: with the upstream key, concurrent runs of
           one job (a backfill of gradient_shards partitions) share one Dask task, so only one shard is computed
           and the other runs report its events (dagster-io/dagster#21418, open).
        2. Dagster objects travel wrapped (`_Opaque`): dask >= 2025 parses task arguments and iterates tuples,
           which raises "Iteration is not allowed on `@record` RunOpConcurrency" for any run that uses pools
           (gradient assets are in pool "gpu").
        Cluster type "local_gpu" is a LocalCluster of pinned GPU workers (gpu_workers.local_gpu_cluster), and a
        step's resource requirements pass through `usable_requirements` (`step_resources` in the module docstring).
        """

        def __init__(self, cluster_type: str, cluster_configuration: dict[str, Any], step_resources: str = "auto"):
            super().__init__(cluster_type, cluster_configuration)
            self.step_resources = step_resources

        def execute(self, plan_context, execution_plan):
            import dask.distributed
            from dagster._core.errors import raise_execution_interrupts
            from dagster._utils import iterate_with_context

            if not plan_context.instance.is_persistent:
                raise dg.DagsterInvariantViolationError("Dask execution requires a persistent DagsterInstance")
            cluster: Any
            if self.cluster_type == "existing":
                cluster = self.cluster_configuration["address"]
            elif self.cluster_type == "local":
                from dask.distributed import LocalCluster

                cluster = LocalCluster(**self.build_dict(plan_context.job_name))
            elif self.cluster_type == "local_gpu":
                from gtp_pipeline.gpu_workers import local_gpu_cluster

                config = self.cluster_configuration
                cluster = local_gpu_cluster(config["devices"], cpu_workers=config["cpu_workers"])
            else:
                raise ValueError(
                    f"cluster type {self.cluster_type!r}: this executor offers existing, local, local_gpu"
                )
            run = plan_context.dagster_run
            with dask.distributed.Client(cluster) as client:
                if self.cluster_type != "existing":  # a cluster we started: count all its workers' resources below
                    client.wait_for_workers(len(cluster.worker_spec), timeout=300)
                workers = client.scheduler_info(n_workers=-1)["workers"].values()
                advertised = {name for w in workers for name in w.get("resources", {})}
                futures, by_step = [], {}
                for level in execution_plan.get_steps_to_execute_by_level():
                    for step in level:
                        dependencies = [by_step[k] for inp in step.step_inputs for k in inp.dependency_keys]
                        payload = _Opaque(
                            (
                                plan_context.reconstructable_job,
                                run,
                                plan_context.run_config,
                                [step.key],
                                plan_context.instance.get_ref(),
                                execution_plan.known_state,
                            )
                        )
                        requested = get_dask_resource_requirements(step.tags)
                        resources = usable_requirements(requested, advertised, self.step_resources)
                        if resources != requested:
                            plan_context.log.info(
                                f"{step.key}: no worker of the cluster has Dask resources "
                                f"{sorted(set(requested) - set(resources))}; the step runs on any worker"
                            )
                        future = client.submit(
                            _execute_step,
                            dependencies,
                            payload,
                            key=f"{plan_context.job_name}.{step.key}.{run.run_id}",
                            resources=resources,
                        )
                        futures.append(future)
                        by_step[step.key] = future
                done = dask.distributed.as_completed(futures, with_results=True)
                for _, events in iterate_with_context(raise_execution_interrupts, done):
                    yield from events
            if self.cluster_type != "existing":
                cluster.close()

    return _GtpDaskExecutor


def GtpDaskExecutor(  # noqa: N802
    cluster_type: str, cluster_configuration: dict[str, Any], step_resources: str = "auto"
) -> dg.Executor:
    """A fixed DaskExecutor (class built lazily so importing this module does not import dask)."""
    return _gtp_dask_executor_class()(cluster_type, cluster_configuration, step_resources)


def dask_run_config(scheduler_address: str) -> dict[str, Any]:
    """Run config that sends a run's steps to the Dask cluster at `scheduler_address` (executor "dask")."""
    return {"execution": {"config": {"scheduler_address": scheduler_address}}}
