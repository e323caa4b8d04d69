"""The pursuit's streaming passes as Dask tasks on a distributed cluster: `DaskTrajectories`.

GTP (core/selection/pursuit.py) touches the candidate store only through a `Trajectories` view, and nearly all of its time is
the streaming pass (correlations A^T R chunk by chunk, core/features/trajectory.py). This view runs every pass as P Dask
tasks on a `distributed.Client`, task i a `StoreTrajectories` over its own contiguous range of Zarr chunks of the
same per-checkpoint stores (local paths on a shared file system, or fsspec URLs: core/storage/feature_store.py):
- `scan`: each task returns its local top-m (indices and scores, no rows); the coordinator merges them with
  `merge_top` (same order rule as one scan) and reads the rows of the final top-m itself (`gather` stays local:
  m rows, instead of P x m rows over the network);
- `correlate`: each task returns the scores of its own rows; `mean`: each task returns (sum, count).
A row's score is computed by the same code (`StoreTrajectories._chunk`) on the same chunk bytes as in one process,
so the merged top-m, and any pursuit run on this view, equal the single-process ones (docs/ALGORITHMS.md §2.5).

Each worker process keeps its views (opened stores, cached row norms) between passes, keyed by this object's token
and chunk range; task i prefers worker i % W so its view stays warm, but may run anywhere (a lost worker's task is
simply recomputed by Dask on another one, from the shared store). `close()` drops the cached views.

Implementations of the same interface: DenseTrajectories, StoreTrajectories, ShardedTrajectories (local processes)
in core/features/trajectory.py; this one for a cluster.
"""

from __future__ import annotations

import logging
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gtp_pipeline.core.features.store_trajectories import StoreTrajectories
from gtp_pipeline.core.features.trajectory import Scan, Trajectories, mean_of_parts, merge_top
from gtp_pipeline.core.storage.atomic import is_local, storage_path

logger = logging.getLogger(__name__)

MAX_CACHED_VIEWS = 16  # views kept per worker process (each holds T x N row norms: 4 MiB at N=270k, T=4)
_VIEWS: OrderedDict[tuple, StoreTrajectories] = OrderedDict()  # worker-process cache, see _view


class DaskPassError(RuntimeError):
    """A pass task failed on the cluster; names the chunk range and the method."""

    def __init__(self, method: str, c0: int, c1: int, cause: BaseException):
        self.method, self.c0, self.c1 = method, c0, c1
        super().__init__(f"dask task {method} over chunks {c0}..{c1 - 1} failed: {type(cause).__name__}: {cause}")


def _view(spec: dict[str, Any]) -> StoreTrajectories:
    """The worker-local StoreTrajectories for this spec (token, paths, chunk range, ...), opened once per process."""
    key = (spec["token"], spec["c0"], spec["c1"])
    view = _VIEWS.get(key)
    if view is None:
        view = StoreTrajectories.from_paths(
            spec["paths"],
            spec["lr_weights"],
            chunks=range(spec["c0"], spec["c1"]),
            block_rows=spec["block_rows"],
            prefetch=spec["prefetch"],
            mapped=spec["mapped"],
        )
        _VIEWS[key] = view
        while len(_VIEWS) > MAX_CACHED_VIEWS:
            _VIEWS.popitem(last=False)
    else:
        _VIEWS.move_to_end(key)
    return view


def _pass_task(spec: dict[str, Any], method: str, args: tuple) -> Any:
    """One pass over one chunk range, run on a Dask worker."""
    if spec["threads"] > 0:
        import torch

        torch.set_num_threads(spec["threads"])  # W workers share a machine's cores
    view = _view(spec)
    if method == "scan":
        R, top, exclude = args
        found = view.scan(R, top, exclude, with_rows=False)
        return found.top, found.scores
    if method == "correlate":
        (R,) = args
        start, stop = spec["rows"]
        return view.correlate(R)[start:stop]  # (rows in range, J): only this task's rows travel back
    if method == "sum_valid":
        return view.sum_valid()
    raise ValueError(f"unknown pass method {method!r}")


def _forget(token: str) -> int:
    """Drop a closed view's cached worker views; returns how many were dropped."""
    keys = [k for k in _VIEWS if k[0] == token]
    for k in keys:
        del _VIEWS[k]
    return len(keys)


class DaskTrajectories(Trajectories):
    """StoreTrajectories split by chunk ranges into Dask tasks; scans merge the tasks' local top-m exactly."""

    def __init__(
        self,
        paths: Sequence[str | Path | Any],
        lr_weights: Sequence[float],
        client: Any,  # a distributed.Client, or a scheduler address ("tcp://host:8786") to connect to
        n_tasks: int = 0,  # chunk ranges per pass; 0 = one per worker thread of the cluster (at most one per chunk)
        block_rows: int = 512,
        prefetch: bool = True,
        worker_threads: int = 0,  # torch threads per task; 0 = the worker's default (Dask's nanny sets 1)
    ):
        from distributed import Client

        self._own_client = not isinstance(client, Client)
        self.client = Client(client) if self._own_client else client
        self.paths = [storage_path(p) for p in paths]
        mapped = all(is_local(p) for p in self.paths)  # remote stores: read chunk objects instead of mapping files
        self.local = StoreTrajectories.from_paths(
            self.paths, lr_weights, block_rows=block_rows, prefetch=prefetch, mapped=mapped
        )
        self.n_rows, self.dim, self.n_checkpoints = self.local.n_rows, self.local.dim, self.local.n_checkpoints
        self.passes = 0
        first = self.local.stores[0]
        n_chunks = first.n_chunks
        workers = sorted(self.client.scheduler_info(n_workers=-1)["workers"])
        if not workers:
            raise ValueError(f"the Dask cluster at {self.client.scheduler.address} has no workers")
        n_tasks = n_tasks or sum(self.client.nthreads().values())
        n_tasks = min(n_tasks, n_chunks)
        if n_tasks < 1:
            raise ValueError(f"n_tasks must be >= 1 (the store has {n_chunks} chunks), got {n_tasks}")
        bounds = np.linspace(0, n_chunks, n_tasks + 1).round().astype(int)  # same split rule as ShardedTrajectories
        token = uuid.uuid4().hex
        self._token = token
        self._specs = []
        for i, (c0, c1) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
            rows = (first.chunk_bounds(int(c0))[0], first.chunk_bounds(int(c1) - 1)[1])
            spec = dict(
                token=token,
                paths=self.paths,
                lr_weights=[float(w) for w in lr_weights],
                c0=int(c0),
                c1=int(c1),
                rows=rows,
                block_rows=block_rows,
                prefetch=prefetch,
                mapped=mapped,
                threads=worker_threads,
            )
            self._specs.append((spec, workers[i % len(workers)]))
        logger.info("DaskTrajectories: %d chunks in %d tasks over %d workers", n_chunks, n_tasks, len(workers))

    def _call(self, method: str, *args) -> list:
        futures = [
            self.client.submit(_pass_task, spec, method, args, workers=[worker], allow_other_workers=True, pure=False)
            for spec, worker in self._specs
        ]
        results = []
        for (spec, _), fut in zip(self._specs, futures, strict=True):
            try:
                results.append(fut.result())
            except Exception as exc:
                for other in futures:
                    other.cancel()
                raise DaskPassError(method, spec["c0"], spec["c1"], exc) from exc
        return results

    def valid_mask(self) -> np.ndarray:
        return self.local.valid_mask()

    def store_metas(self) -> list:
        return self.local.store_metas()

    def correlate(self, R: np.ndarray) -> np.ndarray:
        parts = self._call("correlate", np.asarray(R, dtype=np.float32))
        out = np.full((self.n_rows, parts[0].shape[1]), -np.inf, dtype=np.float32)  # (N, J)
        for (spec, _), part in zip(self._specs, parts, strict=True):
            out[spec["rows"][0] : spec["rows"][1]] = part
        out[~self.local.valid_mask()] = -np.inf
        self.passes += 1
        return out

    def scan(self, R: np.ndarray, top: int, exclude: np.ndarray | None = None, with_rows: bool = True) -> Scan:
        exclude = None if exclude is None else np.asarray(exclude, dtype=np.int64)
        parts = self._call("scan", np.asarray(R, dtype=np.float32), top, exclude)
        self.passes += 1
        merged = merge_top([Scan(idx, sc, None) for idx, sc in parts], top)
        rows = self.local.gather(merged.top) if with_rows else None  # (m, D) read here: the same bytes and code
        return Scan(merged.top, merged.scores, rows)

    def gather(self, rows: np.ndarray) -> np.ndarray:
        return self.local.gather(rows)

    def mean(self) -> np.ndarray:
        parts = self._call("sum_valid")
        self.passes += 1
        return mean_of_parts(parts)

    def close(self) -> None:
        """Drop the workers' cached views (and close the client if this object opened it)."""
        try:
            self.client.run(_forget, self._token)
        except Exception as exc:  # a cluster already gone has nothing cached
            logger.debug("could not clear cached views: %s", exc)
        if self._own_client:
            self.client.close()

    def __enter__(self) -> DaskTrajectories:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
