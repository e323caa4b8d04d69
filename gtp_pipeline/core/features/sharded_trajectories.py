"""ShardedTrajectories: P worker processes, each a StoreTrajectories over its own chunk range of the same stores,
merged by the coordinator; scores and top-m equal the single-process ones (docs/ALGORITHMS.md §2.5).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from gtp_pipeline.core.features.store_trajectories import StoreTrajectories
from gtp_pipeline.core.features.trajectory import Scan, Trajectories, mean_of_parts, merge_top

logger = logging.getLogger(__name__)


def _shard_worker(conn, paths, lr_weights, c0: int, c1: int, block_rows: int, prefetch: bool, threads: int) -> None:
    """Worker process: a StoreTrajectories over chunks [c0, c1), serving method calls until it gets None."""
    torch.set_num_threads(threads)  # P workers share the machine's cores
    view = StoreTrajectories.from_paths(
        paths, lr_weights, chunks=range(c0, c1), block_rows=block_rows, prefetch=prefetch
    )
    while True:
        msg = conn.recv()
        if msg is None:
            break
        name, args = msg
        try:
            conn.send(("ok", getattr(view, name)(*args)))
        except Exception as exc:  # sent back and re-raised by the coordinator, which names the shard
            conn.send(("error", exc))
    conn.close()


class ShardedTrajectories(Trajectories):
    """StoreTrajectories split by chunk ranges over P spawned processes; scans merge the workers' local top-m."""

    def __init__(
        self,
        paths: Sequence[str | Path],
        lr_weights: Sequence[float],
        n_workers: int = 2,
        block_rows: int = 512,
        prefetch: bool = True,
        worker_threads: int = 1,  # torch threads per worker; P x threads should not exceed the cores
    ):
        self.paths = [str(p) for p in paths]
        self.local = StoreTrajectories.from_paths(self.paths, lr_weights, block_rows=block_rows, prefetch=prefetch)
        self.n_rows, self.dim, self.n_checkpoints, self.passes = (
            self.local.n_rows,
            self.local.dim,
            self.local.n_checkpoints,
            0,
        )
        n_chunks = self.local.stores[0].n_chunks
        if not 1 <= n_workers <= n_chunks:
            raise ValueError(f"n_workers must be in 1..{n_chunks} (the number of chunks), got {n_workers}")
        bounds = np.linspace(0, n_chunks, n_workers + 1).round().astype(int)  # contiguous, balanced chunk ranges
        ctx = mp.get_context("spawn")  # fork would copy torch's thread pools; spawn is safe everywhere
        self._workers = []
        for c0, c1 in zip(bounds[:-1], bounds[1:], strict=True):
            parent, child = ctx.Pipe()
            args = (child, self.paths, list(lr_weights), int(c0), int(c1), block_rows, prefetch, worker_threads)
            proc = ctx.Process(target=_shard_worker, args=args, daemon=True)
            proc.start()
            child.close()
            self._workers.append((proc, parent, (int(c0), int(c1))))

    def _call(self, name: str, *args) -> list:
        for _, conn, _ in self._workers:
            conn.send((name, args))
        results = []
        for proc, conn, (c0, c1) in self._workers:
            try:
                status, value = conn.recv()
            except EOFError as exc:
                raise RuntimeError(f"shard worker for chunks {c0}..{c1 - 1} (pid {proc.pid}) died") from exc
            if status == "error":
                raise value
            results.append(value)
        return results

    def valid_mask(self) -> np.ndarray:
        return self.local.valid_mask()

    def store_metas(self) -> list:
        return self.local.store_metas()

    def correlate(self, R: np.ndarray) -> np.ndarray:
        parts = self._call("correlate", R)  # each (N, J), -inf outside its range
        self.passes += 1
        return np.maximum.reduce(parts)

    def scan(self, R: np.ndarray, top: int, exclude: np.ndarray | None = None, with_rows: bool = True) -> Scan:
        parts = self._call("scan", R, top, exclude, with_rows)
        self.passes += 1
        return merge_top(parts, top)

    def gather(self, rows: np.ndarray) -> np.ndarray:
        return self.local.gather(rows)

    def mean(self) -> np.ndarray:
        parts = self._call("sum_valid")
        self.passes += 1
        return mean_of_parts(parts)

    def close(self) -> None:
        for proc, conn, _ in self._workers:
            try:
                conn.send(None)
                conn.close()
            except (OSError, BrokenPipeError):
                pass
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
        self._workers = []

    def __enter__(self) -> ShardedTrajectories:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
