"""Gradient trajectories: the dictionary A that GTP pursues over, streamed from per-checkpoint feature stores.

The trajectory of pool example i (docs/ALGORITHMS.md §2.2) is

    a_i = [ sqrt(w_1) phi_i^1 ; ... ; sqrt(w_T) phi_i^T ]  in R^{T d},    ||a_i|| = 1,

phi_i^t its feature row at checkpoint t divided by its norm, w_t the checkpoint's learning-rate weight normalized to
sum 1 (LESS step 3, §1.1). So <a_i, a_j> = sum_t w_t cos_t(i, j) is LESS's LR-weighted cosine. A (N x T d) is
never materialized: a pass computes A R for a few vectors R chunk by chunk, and the rows of a support are kept.

Implementations of `Trajectories` (all a pursuit ever sees):
- `DenseTrajectories`: an in-memory fp32 (N x D) matrix. Tests, the "streaming equals in-memory" oracle, small pools.
- `StoreTrajectories` (core/features/store_trajectories.py): T FeatureStores (one per checkpoint, same rows) streamed chunk by chunk. Each chunk file is
  memory-mapped (`map_chunk`: no copy out of the page cache, pages mapped in one call) on a helper thread while the
  previous chunk is multiplied; its fp16 rows are converted to fp32 in cache-sized blocks by torch (numpy's fp16
  arithmetic is ~40x slower than fp32 BLAS, and torch's fp16 mv rounds its output to fp16) and multiplied per
  checkpoint block; row norms are applied to the scores, not to the data (computed on the first pass, cached as
  T x N floats). A view checks each chunk file against its recorded CRC32C on its first read (in the prefetch thread,
  beside the multiply; core/storage/feature_store.py). Private memory: a conversion block, the scores of one chunk and the m rows a scan returns; the
  mapped chunks are the OS page cache, two per checkpoint at a time, whatever N is. With `device="cuda"` each chunk
  is copied through a pinned buffer to the GPU and converted and multiplied there, a whole chunk at a time (the
  same scores within fp32 rounding; device memory: one chunk). The GPU's work is then negligible and the pass is
  bound by the host's copies: 1.3x one CPU thread at LESS's size (docs/BENCHMARKS.md). `device="cpu"` runs that
  code on the CPU, which is how tests check it; it is slower than the default (whole-chunk fp32 copies).
- `ShardedTrajectories` (core/features/sharded_trajectories.py): P spawned worker processes, each a StoreTrajectories over its own chunk range of the same
  stores (opened from paths), each returning its local top-m (index, score, row); the coordinator merges. A row's
  score is computed by the same code on the same chunk as in one process, so the merged top-m, and any pursuit run
  on this view, equal the single-process ones (docs/ALGORITHMS.md §2.5, "exact").

Targets (§2.2): `build_target` (core/features/target_trajectory.py) (per checkpoint: the mean over subtasks of the mean unit-norm target row of each
subtask, stacked with the same sqrt(w_t)) and `Trajectories.mean()` (in-domain target: the pool's mean trajectory).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from gtp_pipeline.core.storage.feature_store import FeatureStore

logger = logging.getLogger(__name__)

CHECKPOINT_KEYS = ("checkpoint_id", "checkpoint")  # identity keys naming the checkpoint a store was computed at
SHARED_KEYS = ("model_id", "projection_type", "projection_dim", "projection_seed")  # must agree across all stores


class TrajectoryMismatchError(ValueError):
    """Stores that should describe the same rows / checkpoints / feature space do not."""


class BadFeaturesError(ValueError):
    """A row marked valid has non-finite or all-zero features."""


def normalize_lr_weights(lr_weights: Sequence[float]) -> np.ndarray:
    """(T,) float64 w_t = lr_t / sum(lr): LESS's checkpoint weights (mean LR of each epoch, renormalized)."""
    w = np.asarray(lr_weights, dtype=np.float64).reshape(-1)
    if w.size == 0 or not np.isfinite(w).all() or (w <= 0).any():
        raise ValueError(f"learning-rate weights must be finite and > 0, one per checkpoint; got {list(w)}")
    return w / w.sum()


@dataclass(frozen=True)
class Scan:
    """The m best rows of one pass, ranked by max_j <a_i, R_j> (for one column: the correlation)."""

    top: np.ndarray  # (m,) int64 row indices, best first; equal scores -> lower index first
    scores: np.ndarray  # (m,) float32
    rows: np.ndarray | None  # (m, D) float32 trajectories of `top`, when asked for


def columns(R: np.ndarray, dim: int) -> np.ndarray:
    R = np.asarray(R, dtype=np.float32)
    R = R[:, None] if R.ndim == 1 else R
    if R.ndim != 2 or R.shape[0] != dim:
        raise ValueError(f"vectors to correlate must have {dim} rows (the trajectory dimension), got shape {R.shape}")
    if not np.isfinite(R).all():
        raise ValueError("vectors to correlate have non-finite entries")
    return np.ascontiguousarray(R)  # (D, J)


def mean_of_parts(parts: Sequence[tuple[np.ndarray, int]]) -> np.ndarray:
    """The mean valid trajectory from per-range (sum of valid rows, count) parts (sharded and Dask views)."""
    n = sum(count for _, count in parts)
    if n == 0:
        raise ValueError("no valid rows: the mean trajectory is undefined")
    return sum(total for total, _ in parts) / n


def merge_top(parts: Sequence[Scan], m: int) -> Scan:
    """The m best of several scans (shards, or chunks), same order rule as a single scan."""
    idx = np.concatenate([p.top for p in parts])
    sc = np.concatenate([p.scores for p in parts])
    order = np.lexsort((idx, -sc))[:m]
    rows = None
    if all(p.rows is not None for p in parts):
        rows = np.concatenate([p.rows for p in parts])[order]
    return Scan(idx[order], sc[order], rows)


class Trajectories(ABC):
    """N trajectories of dimension D = T d; the interface every pursuit and baseline uses."""

    n_rows: int
    dim: int
    n_checkpoints: int
    passes: int = 0  # full passes over the data so far (scan, correlate, mean)

    @abstractmethod
    def valid_mask(self) -> np.ndarray:
        """(N,) bool: rows that may be selected."""

    @abstractmethod
    def correlate(self, R: np.ndarray) -> np.ndarray:
        """(N, J) float32 A R for R (D,) or (D, J); -inf at invalid rows. One pass."""

    @abstractmethod
    def scan(self, R: np.ndarray, top: int, exclude: np.ndarray | None = None, with_rows: bool = True) -> Scan:
        """One pass: the `top` valid rows outside `exclude` with the largest max_j <a_i, R_j>, and their rows."""

    @abstractmethod
    def gather(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), D) float32 trajectories of the given valid rows."""

    @abstractmethod
    def mean(self) -> np.ndarray:
        """(D,) float64 mean trajectory over the valid rows (the in-domain target). One pass."""

    def store_metas(self) -> list | None:
        """Per-checkpoint StoreMeta (for checks against target stores), or None for in-memory data."""
        return None

    def _exclusion(self, exclude: np.ndarray | None) -> np.ndarray:
        mask = ~self.valid_mask()
        if exclude is not None and len(exclude):
            mask[np.asarray(exclude, dtype=np.int64)] = True
        return mask  # (N,) True = may not be returned


class DenseTrajectories(Trajectories):
    """An in-memory fp32 (N x D) trajectory matrix (rows as given; `from_blocks` builds them like the stores do)."""

    def __init__(self, A: np.ndarray, valid: np.ndarray | None = None, n_checkpoints: int = 1):
        A = np.ascontiguousarray(A, dtype=np.float32)  # (N, D)
        if A.ndim != 2 or A.shape[0] < 1:
            raise ValueError(f"A must be a non-empty (N, D) matrix, got shape {A.shape}")
        valid = np.ones(A.shape[0], dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
        if valid.shape != (A.shape[0],):
            raise ValueError(f"valid must have shape ({A.shape[0]},), got {valid.shape}")
        bad = np.flatnonzero(valid & ~np.isfinite(A).all(axis=1))
        if bad.size:
            raise BadFeaturesError(f"{bad.size} valid rows of A have non-finite values (first: row {bad[0]})")
        self.A, self._valid = A, valid
        self.n_rows, self.dim, self.n_checkpoints, self.passes = A.shape[0], A.shape[1], n_checkpoints, 0

    @classmethod
    def from_blocks(
        cls, blocks: Sequence[np.ndarray], lr_weights: Sequence[float], valid: np.ndarray | None = None
    ) -> DenseTrajectories:
        """Stack per-checkpoint (N, d) feature blocks into unit trajectories, exactly as StoreTrajectories reads."""
        w = normalize_lr_weights(lr_weights)
        if len(blocks) != len(w):
            raise TrajectoryMismatchError(f"{len(blocks)} checkpoint blocks but {len(w)} learning-rate weights")
        n = blocks[0].shape[0]
        valid = np.ones(n, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
        parts = []
        for t, x in enumerate(blocks):
            if x.shape[0] != n:
                raise TrajectoryMismatchError(f"checkpoint {t} block has {x.shape[0]} rows, checkpoint 0 has {n}")
            x = torch.from_numpy(np.ascontiguousarray(x)).float()  # (N, d)
            inv = inverse_norms(torch.linalg.vector_norm(x, dim=1).numpy(), valid, f"checkpoint block {t}", 0)
            parts.append((x * torch.from_numpy(inv * np.float32(np.sqrt(w[t])))[:, None]).numpy())
        return cls(np.concatenate(parts, axis=1), valid, n_checkpoints=len(w))

    def valid_mask(self) -> np.ndarray:
        return self._valid.copy()

    def correlate(self, R: np.ndarray) -> np.ndarray:
        R = columns(R, self.dim)
        self.passes += 1
        out = (torch.from_numpy(self.A) @ torch.from_numpy(R)).numpy()  # (N, J)
        out[~self._valid] = -np.inf
        return out

    def scan(self, R: np.ndarray, top: int, exclude: np.ndarray | None = None, with_rows: bool = True) -> Scan:
        s = self.correlate(R).max(axis=1)  # (N,)
        s[self._exclusion(exclude)] = -np.inf
        cand = np.flatnonzero(s > -np.inf)
        if cand.size > top:  # keep every row tied with the top-th score, then order exactly
            cut = np.partition(s[cand], cand.size - top)[cand.size - top]
            cand = cand[s[cand] >= cut]
        cand = cand[np.lexsort((cand, -s[cand]))][:top]
        return Scan(cand.astype(np.int64), s[cand], self.A[cand].copy() if with_rows else None)

    def gather(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        check_rows(rows, self._valid)
        return self.A[rows].copy()

    def mean(self) -> np.ndarray:
        self.passes += 1
        return self.A[self._valid].astype(np.float64).mean(axis=0)


def check_rows(rows: np.ndarray, valid: np.ndarray) -> None:
    if rows.size and (rows.min() < 0 or rows.max() >= valid.size):
        raise IndexError(f"row indices must lie in 0..{valid.size - 1}, got {rows.min()}..{rows.max()}")
    if rows.size and not valid[rows].all():
        raise ValueError(f"rows {rows[~valid[rows]][:5].tolist()} are invalid and cannot be gathered")


def inverse_norms(norms: np.ndarray, valid: np.ndarray, where: str, start: int) -> np.ndarray:
    """1 / norm for valid rows (0 for invalid ones); a valid row must have a finite, non-zero norm."""
    bad = np.flatnonzero(valid & ~(np.isfinite(norms) & (norms > 0)))
    if bad.size:
        what = "non-finite" if not np.isfinite(norms[bad[0]]) else "all-zero"
        raise BadFeaturesError(f"{where}: row {start + bad[0]} is marked valid but its features are {what}")
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(valid, 1.0 / norms, 0.0).astype(np.float32)


def identity_value(meta, keys: Sequence[str]):
    for key in keys:
        if key in meta.identity:
            return key, meta.identity[key]
    return None, None


def check_compatible(stores: Sequence[FeatureStore], what: str) -> None:
    """Stores of one role (candidates or targets): same rows, ids, dim and chunking; distinct checkpoints."""
    if not stores:
        raise TrajectoryMismatchError(f"no {what} stores given")
    m0 = stores[0].meta
    for t, st in enumerate(stores[1:], start=1):
        m = st.meta
        for key in ("n_rows", "ids_hash", "dim", "chunk_rows"):
            if getattr(m, key) != getattr(m0, key):
                name = "example ids" if key == "ids_hash" else key
                raise TrajectoryMismatchError(
                    f"{what} store {st.path} (checkpoint {t}) has {name}={getattr(m, key)!r} but "
                    f"{stores[0].path} (checkpoint 0) has {getattr(m0, key)!r}"
                )
        for key in SHARED_KEYS:
            if key in m.identity and key in m0.identity and m.identity[key] != m0.identity[key]:
                raise TrajectoryMismatchError(
                    f"{what} store {st.path} has {key}={m.identity[key]!r} but {stores[0].path} has {m0.identity[key]!r}"
                )
    seen: dict = {}
    for st in stores:
        key, value = identity_value(st.meta, CHECKPOINT_KEYS)
        if key is not None and value in seen:
            raise TrajectoryMismatchError(f"{what} stores {seen[value]} and {st.path} are both checkpoint {value!r}")
        seen[value] = st.path
    for st in stores:
        if not st.is_complete():
            raise TrajectoryMismatchError(f"{what} store {st.path} is incomplete: chunks {st.missing_chunks()[:5]}...")
