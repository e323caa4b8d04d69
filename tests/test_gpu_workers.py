"""One pinned Dask worker per GPU, on CPU workers: the placement of gtp_pipeline/gpu_workers.py and the executor.

The "devices" are CUDA_VISIBLE_DEVICES values; no GPU is needed because each worker's pinning and resources are
read back from inside tasks running in that worker's process. Clusters live on 127.0.0.1 with dashboards off.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

pytest.importorskip("distributed", reason="pip install dagster-dask (brings dask.distributed)")
pytest.importorskip("dagster_dask", reason="pip install dagster-dask")

from gtp_pipeline.gpu_workers import (  # noqa: E402
    GPU_RESOURCE,
    GPU_STEP_TAGS,
    NoDevicesError,
    assign_devices,
    local_gpu_cluster,
    usable_requirements,
    visible_devices,
)

GPU = {GPU_RESOURCE: 1}


def test_each_device_gets_one_worker_pinned_to_it_and_advertising_one_gpu():
    workers = assign_devices(["0", "1", "GPU-8f1c"], name_prefix="node-a-")
    assert [w.name for w in workers] == ["node-a-gpu-0", "node-a-gpu-1", "node-a-gpu-GPU-8f1c"]
    assert [w.env for w in workers] == [{"CUDA_VISIBLE_DEVICES": d} for d in ("0", "1", "GPU-8f1c")]
    assert all(w.resources == GPU for w in workers)


def test_a_device_listed_twice_or_no_device_at_all_is_refused():
    with pytest.raises(ValueError, match="device.s. 1 listed twice"):
        assign_devices(["0", "1", "1"])
    with pytest.raises(NoDevicesError, match="--devices"):
        assign_devices([])


@pytest.mark.parametrize(
    ("environ", "count", "expected"),
    [
        ({"CUDA_VISIBLE_DEVICES": "2,3"}, 8, ["2", "3"]),  # the variable wins over what the driver counts
        ({"CUDA_VISIBLE_DEVICES": "GPU-a, GPU-b"}, 8, ["GPU-a", "GPU-b"]),
        ({"CUDA_VISIBLE_DEVICES": "1,-1,2"}, 8, ["1"]),  # CUDA stops at a negative index
        ({"CUDA_VISIBLE_DEVICES": ""}, 8, []),  # set but empty hides every GPU
        ({}, 3, ["0", "1", "2"]),
        ({}, 0, []),
    ],
)
def test_visible_devices_follow_cuda_visible_devices_else_the_device_count(environ, count, expected):
    assert visible_devices(environ, device_count=lambda: count) == expected


def test_auto_drops_only_requirements_that_no_worker_advertises():
    assert usable_requirements(GPU, {"GPU"}) == GPU
    assert usable_requirements(GPU, set()) == {}  # a cluster of plain workers: the step runs anywhere
    assert usable_requirements({"GPU": 1, "MEM": 2}, {"MEM"}) == {"MEM": 2}
    assert usable_requirements(GPU, set(), "required") == GPU  # waits for a GPU worker to join
    with pytest.raises(ValueError, match="'always'"):
        usable_requirements(GPU, set(), "always")


def where_am_i(seconds: float) -> dict:
    """Runs on a worker: which worker and process, the device it is pinned to, and when the task ran."""
    from distributed import get_worker

    start = time.monotonic()  # CLOCK_MONOTONIC is system-wide on Linux: comparable across the worker processes
    time.sleep(seconds)
    return {
        "worker": get_worker().name,
        "pid": os.getpid(),
        "device": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "start": start,
        "end": time.monotonic(),
    }


def overlaps(runs: list[dict]) -> bool:
    runs = sorted(runs, key=lambda r: r["start"])
    return any(b["start"] < a["end"] for a, b in zip(runs, runs[1:], strict=False))


@pytest.fixture(scope="module")
def gpu_cluster(tmp_path_factory):
    """The executor's local_gpu cluster: "devices" 0 and 1, two threads per worker, and one plain worker."""
    from distributed import Client

    tmp = tmp_path_factory.mktemp("dask_gpu")
    with local_gpu_cluster(["0", "1"], nthreads=2, cpu_workers=1, local_directory=str(tmp)) as cluster:
        with Client(cluster) as client:
            client.wait_for_workers(3, timeout=120)
            yield cluster, client


def test_gpu_tasks_run_one_at_a_time_per_pinned_worker_and_never_on_a_plain_one(gpu_cluster):
    _, client = gpu_cluster
    runs = client.gather([client.submit(where_am_i, 0.3, pure=False, resources=GPU) for _ in range(8)])
    by_worker = {}
    for run in runs:
        by_worker.setdefault(run["worker"], []).append(run)
    assert set(by_worker) == {"gpu-0", "gpu-1"}  # both devices used, the plain worker never
    for name, mine in by_worker.items():
        assert {r["device"] for r in mine} == {name.removeprefix("gpu-")}  # read inside the worker's process
        assert len({r["pid"] for r in mine}) == 1
        assert not overlaps(mine), f"two GPU tasks at once on {name}"


def test_untagged_tasks_run_on_every_worker_and_share_a_gpu_workers_threads(gpu_cluster):
    _, client = gpu_cluster
    addresses = {info["name"]: a for a, info in client.scheduler_info(n_workers=-1)["workers"].items()}
    everywhere = [client.submit(where_am_i, 0.0, pure=False, workers=[a]) for a in addresses.values()]
    assert {r["worker"]: r["device"] for r in client.gather(everywhere)} == {"gpu-0": "0", "gpu-1": "1", "cpu-0": None}
    # two threads: without the GPU resource two tasks do overlap on one worker, so the check above has teeth
    pair = client.gather([client.submit(where_am_i, 0.5, pure=False, workers=[addresses["gpu-0"]]) for _ in "ab"])
    assert overlaps(pair)


def test_gpu_workers_command_pins_one_worker_per_visible_gpu_and_leaves_on_sigterm(tmp_path):
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=0, host="127.0.0.1", dashboard_address=None, local_directory=str(tmp_path)) as sched:
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "3,5"}  # discovered: this node's GPUs are 3 and 5
        command = [sys.executable, "-m", "gtp_pipeline.gpu_workers", sched.scheduler_address, "--host", "127.0.0.1"]
        command += ["--name-prefix", "node-a-", "--local-directory", str(tmp_path)]
        proc = subprocess.Popen(command, env=env, cwd=Path(__file__).parents[1])
        try:
            with Client(sched) as client:
                client.wait_for_workers(2, timeout=120)
                addresses = {i["name"]: a for a, i in client.scheduler_info(n_workers=-1)["workers"].items()}
                assert sorted(addresses) == ["node-a-gpu-3", "node-a-gpu-5"]
                seen = {}
                for name, address in addresses.items():
                    run = client.submit(where_am_i, 0.0, pure=False, workers=[address], resources=GPU).result()
                    seen[name] = run["device"]
                assert seen == {"node-a-gpu-3": "3", "node-a-gpu-5": "5"}
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(timeout=60) == 0
                deadline = time.monotonic() + 30
                while client.scheduler_info(n_workers=-1)["workers"]:  # they unregistered on the way out
                    assert time.monotonic() < deadline, "the workers stayed registered after SIGTERM"
                    time.sleep(0.1)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@dg.op(tags=GPU_STEP_TAGS)
def gpu_step() -> dict:
    return where_am_i(0.0)


@dg.op
def cpu_step(upstream: dict) -> dict:
    return where_am_i(0.0)


@dg.job
def placement_job():
    cpu_step(gpu_step())


def test_executor_local_gpu_devices_starts_pinned_workers_and_routes_the_gpu_step(tmp_path):
    import dask

    recon = dg.build_reconstructable_job("tests.test_gpu_workers", "dask_placement_job")
    run_config = {
        "execution": {"config": {"scheduler_address": "", "local_gpu_devices": "4,6", "local_workers": 1}},
    }
    with dask.config.set({"temporary-directory": str(tmp_path / "dask")}):  # the executor's workers' scratch
        with dg.instance_for_test(temp_dir=str(tmp_path), overrides={"telemetry": {"enabled": False}}) as instance:
            with dg.execute_job(recon, instance, run_config=run_config) as result:
                assert result.success
                gpu, cpu = result.output_for_node("gpu_step"), result.output_for_node("cpu_step")
            notes = [e.user_message for e in instance.all_logs(result.run_id) if "any worker" in e.user_message]
    assert notes == []  # the GPU step kept its requirement: its placement below is not luck
    assert (gpu["worker"], gpu["device"]) in {("gpu-4", "4"), ("gpu-6", "6")}
    assert cpu["worker"] in {"gpu-4", "gpu-6", "cpu-0"}  # untagged: any worker of the three


def dask_placement_job() -> dg.JobDefinition:
    """placement_job with the dask executor; the run process and each Dask worker rebuild it from here."""
    from gtp_pipeline.executors import executor_named

    return placement_job.with_executor_def(executor_named("dask"))
