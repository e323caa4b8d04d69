"""StoreTrajectories: the trajectories of T per-checkpoint feature stores, streamed chunk by chunk (memory-mapped,
checksummed on first read, converted to fp32 in cache-sized blocks; on a GPU through a pinned buffer). The design
and its measurements: core/features/trajectory.py and docs/BENCHMARKS.md.
"""

from __future__ import annotations

import logging
import mmap
import os
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from gtp_pipeline.core.features.trajectory import (
    DenseTrajectories,
    Scan,
    Trajectories,
    TrajectoryMismatchError,
    check_compatible,
    check_rows,
    columns,
    inverse_norms,
    normalize_lr_weights,
)
from gtp_pipeline.core.storage.feature_store import FeatureStore
from gtp_pipeline.core.storage.store_records import StoreIncompleteError

logger = logging.getLogger(__name__)


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
                    self._inv[t, start + s0 : start + s1] = inverse_norms(norms, valid[s0:s1], where, start + s0)
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
                self._inv[t, start:stop] = inverse_norms(norms, self._valid[start:stop], where, start)
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
        R = columns(R, self.dim)  # (D, J)
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
        check_rows(rows, self._valid)
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
