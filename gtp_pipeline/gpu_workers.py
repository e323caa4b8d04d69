"""One Dask worker per GPU, each pinned to its device: the placement that the "dask" executor and a GPU node share.

Placement, written once (`assign_devices`) and used by both ways of starting device workers:
- a worker per device, named after it, started with `CUDA_VISIBLE_DEVICES=<device>` in its process environment
  (`distributed.Nanny(env=...)` sets it in the child before the Worker exists, so before any task can initialize
  CUDA). Inside the worker its GPU is `cuda:0`: ComputeResource(device="auto" or "cuda") needs no per-worker
  setting. dask-cuda's `dask cuda worker` pins the same way; we skip its dependency (pynvml) and show each worker
  exactly one device, so no step can reach a neighbour's GPU;
- every device worker advertises the Dask resource `GPU=1`, and GPU steps (ops tagged `GPU_STEP_TAGS`: warm-up,
  gradients, fine-tunes, evaluation, i.e. the assets in Dagster pool "gpu") each need `GPU=1`. So a device worker
  runs at most one GPU step at a time, whatever its thread count, and a worker without the resource never gets
  one. Steps without the tag (corpus, selection, report) run on any worker.

Devices are the entries of CUDA_VISIBLE_DEVICES (indices or GPU-/MIG- UUIDs) when it is set, else
0 .. torch.cuda.device_count() - 1 (`visible_devices`), or a list given explicitly ("0,2").

One node with several GPUs: the executor starts the cluster for the run (gtp_pipeline/executors.py),
    execution: {config: {scheduler_address: "", local_gpu_devices: "all", local_workers: 0}}
Several nodes: start `dask scheduler` once, then on each GPU node (same image and GTP_* environment):
    python -m gtp_pipeline.gpu_workers tcp://scheduler:8786                  # one pinned worker per visible GPU
    python -m gtp_pipeline.gpu_workers tcp://scheduler:8786 --devices 0,1 --nthreads 1 --host 10.0.0.7

No Dagster here: the module sits next to executors.py and not in core because it is deployment plumbing, not an
algorithm; assets import only its tag constant, so dask is imported lazily, inside the functions that start workers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gtp_pipeline.core.config import settings as env

logger = logging.getLogger(__name__)

GPU_RESOURCE = "GPU"
DASK_RESOURCES_TAG = "dagster-dask/resource_requirements"  # read by dagster-dask's get_dask_resource_requirements
GPU_STEP_TAGS = {DASK_RESOURCES_TAG: json.dumps({GPU_RESOURCE: 1})}  # op_tags of every GPU step
STEP_RESOURCES = ("auto", "required")


class NoDevicesError(ValueError):
    """No GPU to place a worker on (none visible, or an empty list given)."""


@dataclass(frozen=True)
class DeviceWorker:
    """One Dask worker pinned to one device: its name, the environment its process starts with, its resources."""

    name: str
    device: str  # as CUDA_VISIBLE_DEVICES spells it: "3", "GPU-8f1c..." or "MIG-..."
    env: dict[str, str] = field(default_factory=dict)
    resources: dict[str, float] = field(default_factory=dict)


def parse_devices(spec: str) -> list[str]:
    """ "0,2" -> ["0", "2"]; CUDA's own rule: a negative index hides itself and every device after it."""
    devices = []
    for entry in (s.strip() for s in spec.split(",")):
        if entry.startswith("-"):
            break
        if entry:
            devices.append(entry)
    return devices


def visible_devices(
    environ: Mapping[str, str] | None = None, device_count: Callable[[], int] | None = None
) -> list[str]:
    """The GPUs this process may use: CUDA_VISIBLE_DEVICES's entries when set, else 0..device_count()-1 (torch)."""
    visible = env.raw("CUDA_VISIBLE_DEVICES", environ)
    if visible is not None:
        return parse_devices(visible)
    return [str(i) for i in range((device_count or _torch_device_count)())]


def _torch_device_count() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count()  # in the launcher only: workers are new processes with their own environment


def assign_devices(devices: Sequence[str], name_prefix: str = "") -> list[DeviceWorker]:
    """One worker per device, pinned by CUDA_VISIBLE_DEVICES and advertising GPU=1; refuses a device listed twice."""
    if not devices:
        raise NoDevicesError(
            "no GPU to place a worker on: none visible (CUDA_VISIBLE_DEVICES, torch.cuda.device_count()) "
            "and none given; list them explicitly (e.g. --devices 0,1) or start plain workers"
        )
    repeated = sorted({d for d in devices if list(devices).count(d) > 1})
    if repeated:  # two workers on one GPU would break "one GPU step per device at a time"
        raise ValueError(f"device(s) {', '.join(repeated)} listed twice in {list(devices)}")
    return [
        DeviceWorker(
            name=f"{name_prefix}gpu-{device}",
            device=device,
            env={"CUDA_VISIBLE_DEVICES": device},
            resources={GPU_RESOURCE: 1},
        )
        for device in devices
    ]


def usable_requirements(requested: Mapping[str, float], advertised: set[str], mode: str = "auto") -> dict:
    """The Dask resources a step is submitted with: all it asks for ("required"), or those some worker has ("auto").

    Dask leaves a task that asks for a resource no worker has pending forever, so "auto" drops such a requirement:
    on a cluster without device workers (CPU machines, tests) GPU steps run on any worker, as without the tag.
    "required" keeps it, for an adaptive cluster whose GPU workers join after the run starts.
    """
    if mode not in STEP_RESOURCES:
        raise ValueError(f"step resources {mode!r}: expected one of {', '.join(STEP_RESOURCES)}")
    if mode == "required":
        return dict(requested)
    return {name: amount for name, amount in requested.items() if name in advertised}


def nanny_options(worker: DeviceWorker, nthreads: int = 1, **options: Any) -> dict[str, Any]:
    """Keyword arguments of `distributed.Nanny` for one device worker (plus any shared `options`: host, directory)."""
    return {"name": worker.name, "env": worker.env, "resources": worker.resources, "nthreads": nthreads, **options}


def local_gpu_cluster(
    devices: Sequence[str],
    nthreads: int = 1,
    cpu_workers: int = 0,
    cpu_threads: int = 1,
    local_directory: str | None = None,
):
    """A `distributed.SpecCluster` on 127.0.0.1: one pinned worker per device plus `cpu_workers` plain workers."""
    from distributed import Nanny, Scheduler, SpecCluster

    shared: dict[str, Any] = {"host": "127.0.0.1", "dashboard_address": None}
    if local_directory:
        shared["local_directory"] = local_directory
    workers = {
        w.name: {"cls": Nanny, "options": nanny_options(w, nthreads, **shared)} for w in assign_devices(devices)
    }
    for i in range(cpu_workers):
        workers[f"cpu-{i}"] = {"cls": Nanny, "options": {"nthreads": cpu_threads, **shared}}
    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard_address": None}}
    return SpecCluster(workers=workers, scheduler=scheduler, name="gtp-gpu")


async def serve(scheduler_address: str, workers: Sequence[DeviceWorker], nthreads: int = 1, **options: Any) -> None:
    """Run one Nanny per device worker against an existing scheduler until they end or SIGINT/SIGTERM arrives."""
    from distributed import Nanny

    nannies = [Nanny(scheduler_address, **nanny_options(w, nthreads, **options)) for w in workers]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async def run_all() -> None:
        await asyncio.gather(*nannies)  # starting a Nanny starts its worker process and registers it
        logger.info("workers %s connected to %s", ", ".join(w.name for w in workers), scheduler_address)
        await asyncio.gather(*(n.finished() for n in nannies))

    running, stopping = asyncio.create_task(run_all()), asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([running, stopping], return_when=asyncio.FIRST_COMPLETED)
    if stopping in done:  # unregister from the scheduler, so it reschedules their tasks at once
        await asyncio.gather(*(n.close(timeout=10, reason="gtp_pipeline.gpu_workers stopped") for n in nannies))
        running.cancel()
    else:
        stopping.cancel()
        running.result()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m gtp_pipeline.gpu_workers",
        description="Start one Dask worker per GPU of this node, each pinned to its device, against a scheduler.",
    )
    parser.add_argument("scheduler", help='address of a running `dask scheduler`, e.g. "tcp://10.0.0.5:8786"')
    parser.add_argument("--devices", default="", help='GPUs to use, e.g. "0,1" (default: every visible GPU)')
    parser.add_argument("--nthreads", type=int, default=1, help="threads per worker (GPU steps stay one at a time)")
    parser.add_argument("--host", default=None, help="address the workers listen on (default: chosen by dask)")
    parser.add_argument("--local-directory", default=None, help="scratch directory of the workers")
    parser.add_argument("--name-prefix", default=f"{socket.gethostname()}-", help="worker names must be unique")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    devices = parse_devices(args.devices) if args.devices else visible_devices()
    workers = assign_devices(devices, name_prefix=args.name_prefix)
    options = {k: v for k, v in {"host": args.host, "local_directory": args.local_directory}.items() if v}
    asyncio.run(serve(args.scheduler, workers, args.nthreads, **options))


if __name__ == "__main__":
    main()
