"""The rows spherical k-means reads: in-memory arrays or a FeatureStore, in blocks of unit-norm fp32 rows (with their
bf16 copies and rounding errors when the E-step runs in bf16). core/clusterclip/kmeans.py has the algorithm."""

from __future__ import annotations

import functools
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from gtp_pipeline.core.storage.feature_store import FeatureStore

log = logging.getLogger(__name__)


class KMeansInputError(ValueError):
    """The data or the config cannot be clustered as asked (the message names the numbers)."""


@dataclass
class Block:
    start: int
    x: torch.Tensor  # (b, d) float32, unit rows
    xb: torch.Tensor | None = None  # (b, d + 1) bfloat16: bf16(x) and, last, -o (the row's offset, see assign_block)
    dx: torch.Tensor | None = None  # (b,) |x - bf16(x)|
    xbn: torch.Tensor | None = None  # (b,) |bf16(x)|


def normalize_rows(x: torch.Tensor, start: int) -> torch.Tensor:
    """fp32 copy of `x` with unit rows; raise on non-finite or zero rows (numbered from `start`)."""
    x = x.to(torch.float32)
    finite = torch.isfinite(x).all(dim=1)
    if not bool(finite.all()):
        bad = (~finite).nonzero().flatten()
        raise KMeansInputError(
            f"{bad.numel()} rows have non-finite values (first: row {start + int(bad[0])}); embeddings must be finite"
        )
    norms = torch.linalg.vector_norm(x, dim=1)  # (b,)
    zero = norms == 0
    if bool(zero.any()):
        bad = zero.nonzero().flatten()
        raise KMeansInputError(
            f"{bad.numel()} rows are zero vectors (first: row {start + int(bad[0])}); a zero row has no direction"
        )
    return x / norms[:, None]


def bf16_parts(x: torch.Tensor, offset: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[bf16(x), -bf16(offset)] (rows x d+1), |x - bf16(x)| and |bf16(x)| per row."""
    xb = torch.empty(x.shape[0], x.shape[1] + 1, dtype=torch.bfloat16)
    xb[:, :-1].copy_(x)  # copy_, not `xb[...] = x`: tensor __setitem__ holds the GIL (see _e_step)
    xb[:, -1].copy_(-offset)
    xbf = xb[:, :-1].float()
    return xb, torch.linalg.vector_norm(x - xbf, dim=1), torch.linalg.vector_norm(xbf, dim=1)


def block_rows(n: int, chunk_rows: int) -> int:
    """Rows per block: chunk_rows, fewer for small inputs (>= 8 blocks, >= 4096 rows: smaller GEMMs cost
    more per row) so that every worker stays busy.

    Depends on n and chunk_rows only (never on the thread count): block boundaries fix the order of the
    per-cluster sums, hence the result bits."""
    return min(chunk_rows, max(4096, -(-n // 8)))


def empty_rows(shape: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
    """A large uninitialized tensor backed by numpy, whose allocator asks the OS for huge pages: first-touch
    page faults of a torch allocation cost ~0.5 ms per MB on this VM, numpy's ~4x less."""
    if dtype == torch.bfloat16:
        return torch.from_numpy(np.empty(shape, dtype=np.int16)).view(torch.bfloat16)
    return torch.from_numpy(np.empty(shape, dtype=np.float32))


class ArraySource:
    """An in-memory (N x d) array, normalized (and its bf16 parts built) once, block by block in the pool."""

    def __init__(self, data: np.ndarray | torch.Tensor, chunk_rows: int):
        x = torch.as_tensor(np.asarray(data)) if not isinstance(data, torch.Tensor) else data.detach().cpu()
        if x.ndim != 2:
            raise KMeansInputError(f"data must be 2-D (N x d), got shape {tuple(x.shape)}")
        self.n, self.d = int(x.shape[0]), int(x.shape[1])
        if self.n == 0 or self.d == 0:
            raise KMeansInputError(f"empty input: shape {tuple(x.shape)}")
        self.raw, self.chunk_rows = x, block_rows(self.n, chunk_rows)  # (N, d) any float dtype, not copied
        self.n_blocks = -(-self.n // self.chunk_rows)
        self.x: torch.Tensor | None = None  # (N, d) float32 unit rows
        self._bf16: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # xb (N, d+1), dx (N,), xbn (N,)

    def prepare(self, bf16: bool, pool: ThreadPoolExecutor) -> None:
        first = self.x is None
        if first:
            self.x = empty_rows((self.n, self.d), torch.float32)
        if bf16 and self._bf16 is None:
            self._bf16 = (empty_rows((self.n, self.d + 1), torch.bfloat16), torch.empty(self.n), torch.empty(self.n))
        elif not first:
            return

        def work(i: int) -> None:
            s, e = i * self.chunk_rows, min((i + 1) * self.chunk_rows, self.n)
            if first:
                self.x[s:e].copy_(normalize_rows(self.raw[s:e], s))
            if bf16:
                for dst, part in zip(self._bf16, bf16_parts(self.x[s:e], torch.zeros(e - s)), strict=True):
                    dst[s:e].copy_(part)

        for _ in pool.map(work, range(self.n_blocks)):
            pass

    def block(self, i: int, bf16: bool) -> Block:
        s, e = i * self.chunk_rows, min((i + 1) * self.chunk_rows, self.n)
        if not bf16:
            return Block(s, self.x[s:e])
        xb, dx, xbn = self._bf16
        return Block(s, self.x[s:e], xb[s:e], dx[s:e], xbn[s:e])

    def set_offsets(self, start: int, top: torch.Tensor) -> None:
        self._bf16[0][start : start + top.numel(), -1].copy_(-top)

    def fill_offsets(self, value: float) -> None:
        self._bf16[0][:, -1] = -value

    def shift_offsets(self, delta: float) -> None:
        self._bf16[0][:, -1] -= delta

    def rows(self, idx: np.ndarray) -> torch.Tensor:
        return self.x[torch.as_tensor(idx, dtype=torch.int64)]


class StoreSource:
    """A FeatureStore read chunk by chunk on every pass; memory: a few store chunks plus O(N) offsets.

    Blocks are the same global row ranges as for an array (multiples of chunk_rows), whatever the store's
    own chunking, so a store and the same rows in memory give bit-identical results.
    """

    def __init__(self, store: FeatureStore, chunk_rows: int):
        self.n, self.d = store.meta.n_rows, store.meta.dim
        self.store, self.chunk_rows = store, block_rows(self.n, chunk_rows)
        self.n_blocks = -(-self.n // self.chunk_rows)
        self._offsets: torch.Tensor | None = None  # (N,) float32, allocated on the first bf16 pass
        self._read = functools.lru_cache(maxsize=4)(store.read_chunk)  # consecutive blocks share store chunks
        valid = store.valid_mask()
        if not valid.all():
            bad = np.flatnonzero(~valid)
            raise KMeansInputError(
                f"store {store.path} has {bad.size} invalid rows (first: row {bad[0]}); k-means needs every row"
            )

    def prepare(self, bf16: bool, pool: ThreadPoolExecutor) -> None:
        if bf16 and self._offsets is None:
            self._offsets = torch.zeros(self.n)

    def block(self, i: int, bf16: bool) -> Block:
        s, e = i * self.chunk_rows, min((i + 1) * self.chunk_rows, self.n)
        rows = self.store.meta.chunk_rows
        parts = []
        for c in range(s // rows, (e - 1) // rows + 1):
            cs = c * rows
            parts.append(self._read(c)[max(s - cs, 0) : e - cs])  # (<= rows, d) store dtype
        x = normalize_rows(torch.from_numpy(np.concatenate(parts)), s)  # (e - s, d)
        return Block(s, x, *bf16_parts(x, self._offsets[s:e])) if bf16 else Block(s, x)

    def set_offsets(self, start: int, top: torch.Tensor) -> None:
        self._offsets[start : start + top.numel()].copy_(top)

    def fill_offsets(self, value: float) -> None:
        self._offsets.fill_(value)

    def shift_offsets(self, delta: float) -> None:
        self._offsets += delta

    def rows(self, idx: np.ndarray) -> torch.Tensor:
        idx = np.asarray(idx, dtype=np.int64)
        return normalize_rows(torch.from_numpy(np.ascontiguousarray(self.store.read_rows(idx))), 0)


Source = ArraySource | StoreSource
