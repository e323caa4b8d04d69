"""Which Dagster executor runs a run's steps, chosen by one environment variable: `executor_for_env()`.

GTP_EXECUTOR (read where the definitions load: the code server and each run process):
- unset: Dagster's default (multiprocess, switchable to in-process by run config);
- "multiprocess": one subprocess per step on the run's machine;
- "in_process": every step in the run process (debugging, profiling);
- "dask": dagster-dask, each step a task on a Dask cluster (docs/dagster-notes.md §8, deploy/README.md).
  Run config picks the cluster:
      execution: {config: {scheduler_address: "tcp://10.0.0.5:8786"}}   # an existing cluster
      execution: {config: {scheduler_address: "", local_workers: 2}}   # a LocalCluster for this run
  `dask_run_config(address)` builds the first form. When run config leaves the address out, it defaults to
  GTP_DASK_SCHEDULER as read where the definitions load, else a LocalCluster. Dask workers re-import the job
  to run a step: they must see the same GTP_* environment as the code location (same image), but they never
  need the scheduler address (a missing value is "", never an import-time KeyError).

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
import os
from collections.abc import Mapping
from typing import Any

import dagster as dg

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
    env = os.environ if environ is None else environ
    name = (env.get(EXECUTOR_ENV) or "").strip().lower().replace("-", "_")
    if not name:
        return None
    return executor_named(name, default_scheduler=env.get(SCHEDULER_ENV, ""))


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
    """The "dask" executor: dagster-dask's DaskExecutor (fixed, see GtpDaskExecutor) behind a two-key run config."""

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
                int, default_value=default_local_workers, description="Worker processes of that LocalCluster."
            ),
        },
    )
    def gtp_dask_executor(init_context) -> dg.Executor:
        config = init_context.executor_config
        if config["scheduler_address"]:
            return GtpDaskExecutor("existing", {"address": config["scheduler_address"]})
        local = {
            "n_workers": config["local_workers"],
            "processes": True,
            "host": "127.0.0.1",
            "dashboard_address": None,
        }
        return GtpDaskExecutor("local", local)

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
        """dagster-dask 0.29.27's DaskExecutor with two fixes, same cluster types and worker function.

        1. The Dask key of a step is `job.step.run_id`, not `job.step`: with the upstream key, concurrent runs of
           one job (a backfill of gradient_shards partitions) share one Dask task, so only one shard is computed
           and the other runs report its events (dagster-io/dagster#21418, open).
        2. Dagster objects travel wrapped (`_Opaque`): dask >= 2025 parses task arguments and iterates tuples,
           which raises "Iteration is not allowed on `@record` RunOpConcurrency" for any run that uses pools
           (gradient assets are in pool "gpu").
        """

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
            else:
                raise ValueError(f"cluster type {self.cluster_type!r}: this executor offers 'existing' and 'local'")
            run = plan_context.dagster_run
            with dask.distributed.Client(cluster) as client:
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
                        future = client.submit(
                            _execute_step,
                            dependencies,
                            payload,
                            key=f"{plan_context.job_name}.{step.key}.{run.run_id}",
                            resources=get_dask_resource_requirements(step.tags),
                        )
                        futures.append(future)
                        by_step[step.key] = future
                done = dask.distributed.as_completed(futures, with_results=True)
                for _, events in iterate_with_context(raise_execution_interrupts, done):
                    yield from events
            if self.cluster_type == "local":
                cluster.close()

    return _GtpDaskExecutor


def GtpDaskExecutor(cluster_type: str, cluster_configuration: dict[str, Any]) -> dg.Executor:  # noqa: N802
    """A fixed DaskExecutor (class built lazily so importing this module does not import dask)."""
    return _gtp_dask_executor_class()(cluster_type, cluster_configuration)


def dask_run_config(scheduler_address: str) -> dict[str, Any]:
    """Run config that sends a run's steps to the Dask cluster at `scheduler_address` (executor "dask")."""
    return {"execution": {"config": {"scheduler_address": scheduler_address}}}
