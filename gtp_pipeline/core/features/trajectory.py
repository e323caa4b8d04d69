"""Gradient trajectories: the dictionary A that GTP pursues over, streamed from per-checkpoint feature stores.

The trajectory of pool example i (docs/ALGORITHMS.md §2.2) is

    a_i = [ sqrt(w_1) phi_i^1 ; ... ; sqrt(w_T) phi_i^T ]  in R^{T d},    ||a_i|| = 1,

phi_i^t its feature row at checkpoint t divided by its norm, w_t the checkpoint's learning-rate weight normalized to
sum 1 (LESS step 3, §1.1). So <a_i, a_j> = sum_t w_t cos_t(i, j) is LESS's LR-weighted cosine. A (N x T d) is
never materialized: a pass computes A R for a few vectors R chunk by chunk, and the rows of a support are kept.

Implementations of `Trajectories` (all a pursuit ever sees):
- `DenseTrajectories`: an in-memory fp32 (N x D) matrix. Tests, the "streaming equals in-memory" oracle, small pools.
- `StoreTrajectories`: T FeatureStores (one per checkpoint, same rows) streamed chunk by chunk. Each chunk file is
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
- `ShardedTrajectories`: P spawned worker processes, each a StoreTrajectories over its own chunk range of the same
  stores (opened from paths), each returning its local top-m (index, score, row); the coordinator merges. A row's
  score is computed by the same code on the same chunk as in one process, so the merged top-m, and any pursuit run
  on this view, equal the single-process ones (docs/ALGORITHMS.md §2.5, "exact").

Targets (§2.2): `build_target` (per checkpoint: the mean over subtasks of the mean unit-norm target row of each
subtask, stacked with the same sqrt(w_t)) and `Trajectories.mean()` (in-domain target: the pool's mean trajectory).
"""

from __future__ import annotations

import logging
import mmap
import multiprocessing as mp
import os
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gtp_pipeline.core.storage.feature_store import FeatureStore, StoreIncompleteError

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


def _columns(R: np.ndarray, dim: int) -> np.ndarray:
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
            inv = _inverse_norms(torch.linalg.vector_norm(x, dim=1).numpy(), valid, f"checkpoint block {t}", 0)
            parts.append((x * torch.from_numpy(inv * np.float32(np.sqrt(w[t])))[:, None]).numpy())
        return cls(np.concatenate(parts, axis=1), valid, n_checkpoints=len(w))

    def valid_mask(self) -> np.ndarray:
        return self._valid.copy()

    def correlate(self, R: np.ndarray) -> np.ndarray:
        R = _columns(R, self.dim)
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
        _check_rows(rows, self._valid)
        return self.A[rows].copy()

    def mean(self) -> np.ndarray:
        self.passes += 1
        return self.A[self._valid].astype(np.float64).mean(axis=0)


def _check_rows(rows: np.ndarray, valid: np.ndarray) -> None:
    if rows.size and (rows.min() < 0 or rows.max() >= valid.size):
        raise IndexError(f"row indices must lie in 0..{valid.size - 1}, got {rows.min()}..{rows.max()}")
    if rows.size and not valid[rows].all():
        raise ValueError(f"rows {rows[~valid[rows]][:5].tolist()} are invalid and cannot be gathered")


def _inverse_norms(norms: np.ndarray, valid: np.ndarray, where: str, start: int) -> np.ndarray:
    """1 / norm for valid rows (0 for invalid ones); a valid row must have a finite, non-zero norm."""
    bad = np.flatnonzero(valid & ~(np.isfinite(norms) & (norms > 0)))
    if bad.size:
        what = "non-finite" if not np.isfinite(norms[bad[0]]) else "all-zero"
        raise BadFeaturesError(f"{where}: row {start + bad[0]} is marked valid but its features are {what}")
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(valid, 1.0 / norms, 0.0).astype(np.float32)


def _identity_value(meta, keys: Sequence[str]):
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
        key, value = _identity_value(st.meta, CHECKPOINT_KEYS)
        if key is not None and value in seen:
            raise TrajectoryMismatchError(f"{what} stores {seen[value]} and {st.path} are both checkpoint {value!r}")
        seen[value] = st.path
    for st in stores:
        if not st.is_complete():
            raise TrajectoryMismatchError(f"{what} store {st.path} is incomplete: chunks {st.missing_chunks()[:5]}...")


def map_chunk(
    store: FeatureStore, chunk: int, populate: bool = True, known_done: bool = False, verify: bool = True
) -> np.ndarray:
    """Chunk `chunk` of `store` as a read-only fp16 (rows, d) array mapped from its raw chunk file, without a copy.

    The same file FeatureStore.read_chunk reads (uncompressed, padded to chunk_rows). Mapping it instead of reading
    it saves the copy out of the page cache; MAP_POPULATE maps every page in one call instead of a page fault per 64
    KiB, which made a pass 1.4x faster (`populate=False` for reading a few rows); the mapping is released with the
    array, so nothing accumulates. A file not in the page cache is first asked for whole (POSIX_FADV_WILLNEED): the
    populate alone reads it in small synchronous read-arounds, and a cold pass over a 17.7 GB store took 28-29 s
    that way against 21-23.5 s with the hint (docs/BENCHMARKS.md). Falls back to read_chunk when the file is not
    the raw array this expects.
    `known_done`: the caller has checked the store is complete (a view does, once), so skip the marker check.
    `verify`: check the mapped bytes against the chunk's recorded CRC32C (StoreCorruptError if they differ); a view
    verifies each chunk on its first read and trusts the same file on later passes.
    """
    if not known_done and not store.is_chunk_done(chunk):
        raise StoreIncompleteError(
            f"chunk {chunk} of {store.path} has not been written; rerun the asset that fills it"
        )
    start, stop = store.chunk_bounds(chunk)
    dtype = np.dtype(store.meta.dtype).newbyteorder("<")
    path = store.chunk_file(chunk)
    flags = mmap.MAP_SHARED | (getattr(mmap, "MAP_POPULATE", 0) if populate else 0)
    try:
        with open(path, "rb") as fh:
            if populate and hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_WILLNEED)  # see the docstring
            buf = mmap.mmap(fh.fileno(), 0, flags=flags, prot=mmap.PROT_READ)
    except (OSError, ValueError):
        return store.read_chunk(chunk)
    if len(buf) != store.meta.chunk_rows * store.meta.dim * dtype.itemsize:
        return store.read_chunk(chunk)  # raises StoreCorruptError naming the size
    if verify:
        store.verify(chunk, buf)
    return np.frombuffer(buf, dtype=dtype).reshape(store.meta.chunk_rows, store.meta.dim)[: stop - start]


def read_chunk_rows(store: FeatureStore, chunk: int, local: np.ndarray) -> np.ndarray:
    """Rows `local` (sorted, within the chunk) of chunk `chunk` of a complete store as fp16 (n, d), one pread per row.

    Unverified: callers read rows of a chunk they have already read whole (and verified) in the same view.

    For the few thousand rows a scan keeps: faulting them in through a fresh mapping cost 3x more (a page fault per
    row, plus the mmap calls). Falls back to map_chunk when the file is not the raw array this expects.
    """
    dtype = np.dtype(store.meta.dtype).newbyteorder("<")
    row_bytes = store.meta.dim * dtype.itemsize
    out = np.empty((local.size, store.meta.dim), dtype=dtype)  # (n, d)
    path = store.chunk_file(chunk)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return map_chunk(store, chunk, populate=False, known_done=True)[local]
    try:
        if os.fstat(fd).st_size != store.meta.chunk_rows * row_bytes:
            return map_chunk(store, chunk, populate=False, known_done=True)[local]
        view = memoryview(out).cast("B")
        for i, row in enumerate(local.tolist()):
            if os.preadv(fd, [view[i * row_bytes : (i + 1) * row_bytes]], row * row_bytes) != row_bytes:
                raise StoreIncompleteError(f"chunk {chunk} of {store.path} is shorter than its rows")
    finally:
        os.close(fd)
    return out


def _tensor(x: np.ndarray) -> torch.Tensor:
    """torch view of a possibly read-only array (a mapped chunk); it is only ever read."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(x)


def _matvecs(block: torch.Tensor, rt: torch.Tensor) -> torch.Tensor:
    """(n, J) block @ rt.T for rt (J, d). MKL's sgemm is ~10x slower than J sgemv for 2 <= J <= 8 on this CPU."""
    if rt.shape[0] == 1:
        return torch.mv(block, rt[0])[:, None]
    if rt.shape[0] <= 8:
        return torch.stack([torch.mv(block, v) for v in rt], dim=1)
    return block @ rt.T


class _TopM:
    """Running top-m over chunks; rows are kept in a fixed (m, D) buffer so a merge moves indices, not rows."""

    def __init__(self, m: int, dim: int, with_rows: bool):
        self.m = m
        self.idx, self.sc, self.slot = np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64)
        self.buf = np.empty((m, dim), dtype=np.float32) if with_rows else None  # (m, D)

    def threshold(self) -> float:
        return float(self.sc[-1]) if self.idx.size == self.m else -np.inf

    def offer(self, idx: np.ndarray, sc: np.ndarray, make_rows) -> None:
        """Merge candidates idx (n,) with scores sc (n,); make_rows(sel) gives the rows of idx[sel]."""
        sel = np.arange(idx.size)
        if idx.size > self.m:  # only the chunk's own top-m can enter (keep ties at the cut: order decides them)
            cut = np.partition(sc, idx.size - self.m)[idx.size - self.m]
            sel = np.flatnonzero(sc >= cut)
        n_old = self.idx.size
        all_idx, all_sc = np.concatenate([self.idx, idx[sel]]), np.concatenate([self.sc, sc[sel]])
        order = np.lexsort((all_idx, -all_sc))[: self.m]
        old = order < n_old
        if self.buf is not None:
            slots = np.empty(order.size, dtype=np.int64)
            slots[old] = self.slot[order[old]]
            used = np.zeros(self.m, dtype=bool)
            used[slots[old]] = True
            free = np.flatnonzero(~used)[: int((~old).sum())]
            if free.size:
                self.buf[free] = make_rows(sel[order[~old] - n_old])
            slots[~old] = free
            self.slot = slots
        self.idx, self.sc = all_idx[order], all_sc[order]

    def result(self) -> Scan:
        return Scan(self.idx, self.sc, None if self.buf is None else self.buf[self.slot])


class StoreTrajectories(Trajectories):
    """Trajectories streamed from T FeatureStores (one per checkpoint), optionally restricted to a chunk range."""

    def __init__(
        self,
        stores: Sequence[FeatureStore],
        lr_weights: Sequence[float],
        chunks: range | None = None,
        block_rows: int = 512,  # rows converted fp16 -> fp32 at a time: 512 x 1024 x 4 B = 2 MiB stays in cache
        prefetch: bool = True,  # open chunk c+1 on a helper thread while chunk c is multiplied
        mapped: bool = True,  # map chunk files (no copy) instead of FeatureStore.read_chunk (np.fromfile)
        device: str | torch.device | None = None,  # None: the CPU pass below; else convert + multiply there
        verify: bool = True,  # check each chunk's CRC32C on its first read (False only to measure what that costs)
    ):  # mapping needs files on this machine: stores on an fsspec location are read chunk by chunk
        check_compatible(stores, "candidate")
        self.stores, self.w = list(stores), normalize_lr_weights(lr_weights)
        if len(self.w) != len(self.stores):
            raise TrajectoryMismatchError(
                f"{len(self.stores)} checkpoint stores but {len(self.w)} learning-rate weights"
            )
        m0 = self.stores[0].meta
        self.n_rows, self.d, self.n_checkpoints = m0.n_rows, m0.dim, len(self.stores)
        self.dim = self.d * self.n_checkpoints
        self.chunks = range(self.stores[0].n_chunks) if chunks is None else chunks
        mapped = mapped and all(st.is_local for st in self.stores)
        self.block_rows, self.prefetch, self.mapped, self.passes = block_rows, prefetch, mapped, 0
        self._scale = np.sqrt(self.w).astype(np.float32)  # (T,)
        valid = np.logical_and.reduce([st.valid_mask() for st in self.stores])  # (N,) valid at every checkpoint
        in_range = np.zeros(self.n_rows, dtype=bool)
        for c in self.chunks:
            in_range[slice(*self.stores[0].chunk_bounds(c))] = True
        self._valid = valid & in_range
        self._inv = np.zeros((self.n_checkpoints, self.n_rows), dtype=np.float32)  # (T, N) 1/|row|, filled lazily
        self._normed = np.zeros(self.stores[0].n_chunks, dtype=bool)
        self._verified = np.full(self.stores[0].n_chunks, not verify)  # chunks whose files passed their checksums
        self._buf = torch.empty(block_rows, self.d)  # (block_rows, d) fp32 conversion buffer
        self.device = None if device is None else torch.device(device)
        if self.device is not None and self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device={device!r} was asked for, but torch sees no CUDA device; use device=None")
        self._stage: torch.Tensor | None = None  # (T, chunk_rows, d) fp16 pinned staging buffer, on first use
        self._staged: torch.cuda.Event | None = None  # recorded after the last copy out of the staging buffer

    @classmethod
    def from_paths(cls, paths: Sequence[str | Path], lr_weights: Sequence[float], **kw) -> StoreTrajectories:
        return cls([FeatureStore.open(p) for p in paths], lr_weights, **kw)

    def store_metas(self) -> list:
        return [st.meta for st in self.stores]

    def valid_mask(self) -> np.ndarray:
        return self._valid.copy()

    # --- the pass -----------------------------------------------------------------------------------
    def _read(self, c: int, populate: bool = True) -> list[np.ndarray]:
        if self.mapped:  # verified on the first read only: later passes map the same, unchanged files
            blocks = [map_chunk(st, c, populate, known_done=True, verify=not self._verified[c]) for st in self.stores]
            self._verified[c] = True
            return blocks  # T x (rows, d) fp16
        return [st.read_chunk(c) for st in self.stores]  # read_chunk verifies every read

    def _iter_chunks(self) -> Iterator[tuple[int, int, int, list[np.ndarray]]]:
        chunks = list(self.chunks)
        if not self.prefetch or len(chunks) < 2:
            for c in chunks:
                yield (c, *self.stores[0].chunk_bounds(c), self._read(c))
            return
        with ThreadPoolExecutor(1) as ex:  # file I/O releases the GIL: the read overlaps the multiply
            nxt = ex.submit(self._read, chunks[0])
            for i, c in enumerate(chunks):
                blocks = nxt.result()
                if i + 1 < len(chunks):
                    nxt = ex.submit(self._read, chunks[i + 1])
                yield (c, *self.stores[0].chunk_bounds(c), blocks)

    def _chunk(
        self, c: int, start: int, stop: int, blocks: list[np.ndarray], RT: torch.Tensor | None, sums: np.ndarray | None
    ) -> np.ndarray | None:
        """Scores (rows, J) of one chunk against RT (T, J, d) and/or add its unit rows into sums (D,)."""
        if self.device is not None:
            return self._chunk_on_device(c, start, stop, blocks, RT, sums)
        rows, first = stop - start, not self._normed[c]
        valid = self._valid[start:stop] if first else None
        out = np.zeros((rows, RT.shape[1]), dtype=np.float32) if RT is not None else None  # (rows, J)
        out_t = torch.from_numpy(out) if out is not None else None
        for t, x16 in enumerate(blocks):
            x = _tensor(x16)  # (rows, d) fp16
            inv_t = torch.from_numpy(self._inv[t, start:stop])  # (rows,) filled below on the first pass
            acc = torch.zeros(self.d) if sums is not None else None
            for s0 in range(0, rows, self.block_rows):
                s1 = min(rows, s0 + self.block_rows)
                b = self._buf[: s1 - s0]
                b.copy_(x[s0:s1])  # fp16 -> fp32 into the cache-resident buffer
                if first:
                    norms = torch.linalg.vector_norm(b, dim=1).numpy()
                    where = f"store {self.stores[t].path}"
                    self._inv[t, start + s0 : start + s1] = _inverse_norms(norms, valid[s0:s1], where, start + s0)
                if out_t is not None:
                    out_t[s0:s1].addcmul_(_matvecs(b, RT[t]), inv_t[s0:s1, None])  # row norms on the scores
                if acc is not None:
                    acc += torch.mv(b.T, inv_t[s0:s1])
            if sums is not None:
                sums[t * self.d : (t + 1) * self.d] += self._scale[t] * acc.double().numpy()
        self._normed[c] = True
        return out

    def _chunk_on_device(
        self, c: int, start: int, stop: int, blocks: list[np.ndarray], RT: torch.Tensor | None, sums: np.ndarray | None
    ) -> np.ndarray | None:
        """`_chunk` on self.device: the whole chunk is converted at once (device memory: one chunk, not the pool)."""
        rows, first = stop - start, not self._normed[c]
        xs = self._to_device(blocks)  # T x (rows, d) fp16 on the device
        out = torch.zeros((rows, RT.shape[1]), device=self.device) if RT is not None else None  # (rows, J)
        for t, x16 in enumerate(xs):
            x = x16.float()  # (rows, d) fp32
            if first:
                norms = torch.linalg.vector_norm(x, dim=1).cpu().numpy()
                where = f"store {self.stores[t].path}"
                self._inv[t, start:stop] = _inverse_norms(norms, self._valid[start:stop], where, start)
            inv_t = torch.from_numpy(self._inv[t, start:stop]).to(self.device)  # (rows,)
            if out is not None:
                out.addcmul_(_matvecs(x, RT[t]), inv_t[:, None])  # row norms on the scores, as on the CPU path
            if sums is not None:
                sums[t * self.d : (t + 1) * self.d] += self._scale[t] * torch.mv(x.T, inv_t).double().cpu().numpy()
        self._normed[c] = True
        return None if out is None else out.cpu().numpy()

    def _to_device(self, blocks: list[np.ndarray]) -> list[torch.Tensor]:
        """The chunk's fp16 blocks on self.device; to a GPU through one reused pinned buffer."""
        if self.device.type != "cuda":
            return [_tensor(x) for x in blocks]  # the mapped pages themselves
        if self._stage is None:
            shape = (self.n_checkpoints, self.stores[0].meta.chunk_rows, self.d)
            self._stage = torch.empty(shape, dtype=torch.float16, pin_memory=True)
        if self._staged is not None:
            self._staged.synchronize()  # the previous chunk's copies have left the buffer
        out = []
        for t, x in enumerate(blocks):
            buf = self._stage[t, : x.shape[0]]
            buf.copy_(_tensor(x))  # one memcpy out of the page cache; from pageable memory the driver would stage
            out.append(buf.to(self.device, non_blocking=True))  # DMA, overlapping the next checkpoint's memcpy
        self._staged = torch.cuda.Event()
        self._staged.record()
        return out

    def _prepare(self, R: np.ndarray) -> torch.Tensor:
        R = _columns(R, self.dim)  # (D, J)
        RT = R.T.reshape(R.shape[1], self.n_checkpoints, self.d).transpose(1, 0, 2)  # (T, J, d)
        RT = torch.from_numpy(np.ascontiguousarray(RT * self._scale[:, None, None]))
        return RT if self.device is None else RT.to(self.device)

    def correlate(self, R: np.ndarray) -> np.ndarray:
        RT = self._prepare(R)
        out = np.full((self.n_rows, RT.shape[1]), -np.inf, dtype=np.float32)  # (N, J)
        for c, start, stop, blocks in self._iter_chunks():
            out[start:stop] = self._chunk(c, start, stop, blocks, RT, None)
        out[~self._valid] = -np.inf
        self.passes += 1
        return out

    def scan(self, R: np.ndarray, top: int, exclude: np.ndarray | None = None, with_rows: bool = True) -> Scan:
        RT = self._prepare(R)
        skip = self._exclusion(exclude)  # (N,)
        now = with_rows and not self.mapped  # mapped chunks reopen for free: take the rows of the final top at the end
        acc = _TopM(top, self.dim, now)
        for c, start, stop, blocks in self._iter_chunks():
            s = self._chunk(c, start, stop, blocks, RT, None).max(axis=1)  # (rows,)
            s[skip[start:stop]] = -np.inf
            cand = np.flatnonzero((s > -np.inf) & (s >= acc.threshold()))
            if cand.size:
                acc.offer(start + cand, s[cand], lambda sel, b=blocks, st=start, cd=cand: self._rows(b, cd[sel], st))
        self.passes += 1
        found = acc.result()
        if with_rows and not now:
            found = Scan(found.top, found.scores, self._take(found.top))
        return found

    def _rows(self, blocks: list[np.ndarray], local: np.ndarray, start: int) -> np.ndarray:
        """(n, D) float32 trajectories of rows start + local of a chunk whose norms are known."""
        out = np.empty((local.size, self.dim), dtype=np.float32)  # (n, D)
        for t, x16 in enumerate(blocks):
            scale = self._scale[t] * self._inv[t, start + local]  # (n,)
            out[:, t * self.d : (t + 1) * self.d] = torch.from_numpy(x16[local]).float().numpy() * scale[:, None]
        return out

    def _take(self, rows: np.ndarray) -> np.ndarray:
        """(n, D) trajectories of arbitrary rows, chunk by chunk (a chunk never scanned gets its norms here)."""
        out = np.empty((rows.size, self.dim), dtype=np.float32)  # (n, D)
        chunk_of = rows // self.stores[0].meta.chunk_rows
        for c in np.unique(chunk_of):
            sel = np.flatnonzero(chunk_of == c)
            start, stop = self.stores[0].chunk_bounds(int(c))
            if not self._normed[c] or not self.mapped:
                blocks = self._read(int(c), populate=not self._normed[c])
                if not self._normed[c]:
                    self._chunk(int(c), start, stop, blocks, None, None)
                out[sel] = self._rows(blocks, rows[sel] - start, start)
                continue
            local = rows[sel] - start
            order = np.argsort(local, kind="stable")
            for t, st in enumerate(self.stores):  # norms known: read just the rows
                x = torch.from_numpy(read_chunk_rows(st, int(c), local[order])).float()  # (n, d) in `order`
                x.mul_(torch.from_numpy(self._scale[t] * self._inv[t, rows[sel][order]])[:, None])
                out[sel[order], t * self.d : (t + 1) * self.d] = x.numpy()
        return out

    def sum_valid(self) -> tuple[np.ndarray, int]:
        """((D,) float64 sum of the valid trajectories in range, their count). One pass."""
        sums = np.zeros(self.dim)
        for c, start, stop, blocks in self._iter_chunks():
            self._chunk(c, start, stop, blocks, None, sums)
        self.passes += 1
        return sums, int(self._valid.sum())

    def mean(self) -> np.ndarray:
        sums, n = self.sum_valid()
        if n == 0:
            raise ValueError("no valid rows: the mean trajectory is undefined")
        return sums / n

    def gather(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        _check_rows(rows, self._valid)
        return self._take(rows)

    def to_dense(self) -> DenseTrajectories:
        """All rows in memory as fp32 trajectories (tests and small pools). One pass."""
        A = np.zeros((self.n_rows, self.dim), dtype=np.float32)  # (N, D)
        for c, start, stop, blocks in self._iter_chunks():
            self._chunk(c, start, stop, blocks, None, None)
            A[start:stop] = self._rows(blocks, np.arange(stop - start), start)
        self.passes += 1
        A[~self._valid] = 0
        return DenseTrajectories(A, self._valid, n_checkpoints=self.n_checkpoints)


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


@dataclass(frozen=True)
class TargetTrajectory:
    """Target trajectories: one per subtask (LESS scores against each) and their mean (GTP's b)."""

    per_subtask: np.ndarray  # (J, D) float64 sqrt(w_t)-stacked mean unit-norm target row of each subtask
    subtasks: np.ndarray  # (J,) subtask labels, sorted
    counts: np.ndarray  # (J,) valid target rows per subtask

    @property
    def vector(self) -> np.ndarray:
        """(D,) the mean of the per-subtask means: small subtasks count as much as large ones (docs/ALGORITHMS.md §2.2)."""
        return self.per_subtask.mean(axis=0)


def build_target(
    target_stores: Sequence[FeatureStore],
    lr_weights: Sequence[float],
    subtasks: np.ndarray | Sequence | None = None,
    candidates: Trajectories | None = None,
) -> TargetTrajectory:
    """Target trajectories from per-checkpoint target stores (rows = target dev examples).

    Args:
        target_stores: one FeatureStore per checkpoint, same rows and ids, in the candidates' checkpoint order.
        lr_weights: the same learning-rate weights as the candidates.
        subtasks: (n_rows,) subtask label of each target row; None = one subtask.
        candidates: if given, checked for the same checkpoint count, dims and checkpoint/projection identity.
    """
    check_compatible(target_stores, "target")
    w = normalize_lr_weights(lr_weights)
    T, m0 = len(target_stores), target_stores[0].meta
    if len(w) != T:
        raise TrajectoryMismatchError(f"{T} target stores but {len(w)} learning-rate weights")
    if candidates is not None:
        _check_against(candidates, target_stores)
    labels = np.zeros(m0.n_rows, dtype=np.int64) if subtasks is None else np.asarray(subtasks)
    if labels.shape != (m0.n_rows,):
        raise ValueError(f"subtasks must label each of the {m0.n_rows} target rows, got shape {labels.shape}")
    names = np.unique(labels)
    out = np.zeros((names.size, T * m0.dim))  # (J, D)
    counts = np.zeros(names.size, dtype=np.int64)
    for t, st in enumerate(target_stores):
        x = torch.from_numpy(np.concatenate([st.read_chunk(c) for c in range(st.n_chunks)])).float()  # (n, d)
        valid = st.valid_mask()
        inv = _inverse_norms(torch.linalg.vector_norm(x, dim=1).numpy(), valid, f"target store {st.path}", 0)
        unit = x.double().numpy() * inv[:, None]  # (n, d) float64, invalid rows 0
        for j, name in enumerate(names):
            sel = (labels == name) & valid
            if not sel.any():
                raise ValueError(f"subtask {name!r} has no valid target rows in {st.path}")
            out[j, t * m0.dim : (t + 1) * m0.dim] = np.sqrt(w[t]) * unit[sel].mean(axis=0)
            counts[j] = sel.sum() if t == 0 else counts[j]
    return TargetTrajectory(out, names, counts)


def _check_against(candidates: Trajectories, target_stores: Sequence[FeatureStore]) -> None:
    T = len(target_stores)
    if candidates.n_checkpoints != T:
        raise TrajectoryMismatchError(f"{candidates.n_checkpoints} candidate checkpoints but {T} target stores")
    if candidates.dim != T * target_stores[0].meta.dim:
        raise TrajectoryMismatchError(
            f"candidate trajectories have dim {candidates.dim}, target stores give {T} x {target_stores[0].meta.dim}"
        )
    metas = candidates.store_metas()
    if metas is None:
        return
    for t, (cm, st) in enumerate(zip(metas, target_stores, strict=True)):
        if cm.dim != st.meta.dim:
            raise TrajectoryMismatchError(
                f"checkpoint {t}: candidate dim {cm.dim} but target store {st.path} dim {st.meta.dim}"
            )
        ck, cv = _identity_value(cm, CHECKPOINT_KEYS)
        tk, tv = _identity_value(st.meta, CHECKPOINT_KEYS)
        if ck is not None and tk is not None and cv != tv:
            raise TrajectoryMismatchError(
                f"checkpoint {t}: candidate store is checkpoint {cv!r} but target store {st.path} is checkpoint {tv!r}"
            )
        for key in SHARED_KEYS:
            if key in cm.identity and key in st.meta.identity and cm.identity[key] != st.meta.identity[key]:
                raise TrajectoryMismatchError(
                    f"checkpoint {t}: candidate {key}={cm.identity[key]!r} but target store {st.path} "
                    f"has {key}={st.meta.identity[key]!r}"
                )
