"""Spherical k-means on unit-norm embeddings: the clustering step of ClusterClip.

What it computes: K unit-norm centroids c_k and a label per row x_i maximizing the mean cosine
similarity (1/N) sum_i x_i . c_{label_i} (equivalently minimizing sum_i (1 - cos)). Rows are
L2-normalized on the way in, so any non-zero row is accepted; zero or non-finite rows raise.

It follows the clustering of ClusterClip (Shao et al., arXiv 2402.14526; official code
github.com/choosewhatulike/cluster-clip `kmeans.py`, read for understanding, this is our own code;
docs/ALGORITHMS.md §3.2): cosine distance 1 - x.c, E-step = nearest centroid computed in chunks,
M-step = per-cluster sum re-normalized to unit norm, random or k-means++ init, early stop. Unlike the
official code, empty clusters are re-seeded with the rows farthest from their centroid (the official
code keeps the old centroid), and the labels returned are those of the last E-step under the
centroids returned.

One implementation, `spherical_kmeans(data, config)`, with two E-step precisions that give the same
labels, bit for bit: the exact argmax of the fp32 inputs (ties to the lowest k).

* `precision="fp32"`: the chunk's similarities S = X C^T are one fp32 GEMM (torch/MKL). Each entry is
  within gamma_d |x| |c| of the exact value (gamma_d = d 2^-24 / (1 - d 2^-24)); a row whose top-2
  gap exceeds twice that is certain, the rare others get float64 dot products against their few
  candidate centroids.
* `precision="bf16"`: S is a bf16 GEMM (AVX512-BF16, several times the fp32 rate) and every row's
  argmax is *certified* the same way: with u = 2^-8 and x~, c~ the bf16-rounded vectors, each s~_k is
  within E_i + u |s~_k| / (1 - u) of x_i . c_k, where
      E_i = |dx_i| |c~|max + |x~_i| |dc|max + |dx_i| |dc|max + gamma_{d+1} (|x~_i| |c~|max + |o_i|)
  (Cauchy-Schwarz on the rounding errors dx = x - x~, dc = c - c~; fp32 accumulation; one rounding of
  the output to bf16). The output rounding is made small by an extra GEMM column: the row carries -o_i
  (its top cosine from the last iteration) and the centroids a 1, so S holds s - o_i, near 0 where the
  argmax is decided. Rows whose top-2 gap is within the bounds (a minority once the offsets are warm)
  get fp32 dot products against their few candidate centroids (those whose upper bound reaches the
  top's lower bound), and
  float64 where two candidates are within fp32 error. A probe checks once per process and shape that
  the bf16 GEMM accumulates in fp32 (no intermediate bf16 rounding) before relying on the bound.

Passes are fused: one pass per iteration does GEMM, top-2, certification and the M-step accumulation
(`index_add_` of the block into per-cluster sums). The objective is computed from the sums
(sum_k s_k . c_k), so per-row similarities are only computed when needed (re-seeding, final result).
Blocks go to a pool of worker threads, each running single-threaded torch on whole blocks (like
scikit-learn's chunked Lloyd): one synchronization per block, not one per op, which matters when other
processes share the cores; per-block sums are added in block order, so the bits never depend on
scheduling or on the number of threads. Input is an (N x d) array/tensor held in memory, or a
`FeatureStore` streamed block by block (memory: a few blocks plus K x d, plus O(N) labels and offsets).

Where the time goes, and how it compares with faiss and scikit-learn: docs/BENCHMARKS.md (`python bench/kmeans.py`).
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from gtp_pipeline.core.storage.feature_store import FeatureStore

log = logging.getLogger(__name__)

BF16_UNIT_ROUNDOFF = 2.0**-8  # bf16 keeps 8 significant bits; round-to-nearest error <= 2^-8 relative
FP32_UNIT_ROUNDOFF = 2.0**-24
_BOUND_SLACK = 1.01  # the norms in the bound are themselves computed in fp32; 1% covers that many times over


class KMeansInputError(ValueError):
    """The data or the config cannot be clustered as asked (the message names the numbers)."""


@dataclass(frozen=True)
class KMeansConfig:
    """Spherical k-means settings. Defaults follow the official ClusterClip code where it has one."""

    K: int = 2000  # number of clusters; README example 2000 (docs/ALGORITHMS.md §3.4)
    max_iter: int = 300  # E-steps at most; the official README runs 300
    tol: float = 1e-4  # stop once the mean cosine similarity improves by less than tol (relative)
    init: Literal["k-means++", "random"] = "k-means++"  # official code: random rows; k-means++ is more robust
    seed: int = 0  # every random choice (init, restarts) derives from it: same seed, same result
    n_init: int = 1  # restarts, best mean similarity kept; official code runs 1
    chunk_rows: int = 8192  # rows per GEMM (fewer for small N): full GEMM speed, bounded memory per worker
    precision: Literal["fp32", "bf16"] = "bf16"  # bf16 GEMM + exact-argmax certification; same labels as fp32
    init_sample_per_cluster: int = 64  # k-means++ runs on min(N, this*K) sampled rows (cost K passes over them)
    threads: int = 0  # E-step workers, each single-threaded on whole chunks; 0 = torch.get_num_threads()

    def __post_init__(self) -> None:
        if self.K < 1:
            raise KMeansInputError(f"K must be >= 1, got K={self.K}")
        if self.threads < 0:
            raise KMeansInputError(f"threads must be >= 0 (0 = torch's setting), got {self.threads}")
        if self.max_iter < 1 or self.n_init < 1 or self.chunk_rows < 1 or self.init_sample_per_cluster < 1:
            raise KMeansInputError(
                f"max_iter, n_init, chunk_rows and init_sample_per_cluster must be >= 1, got {self.max_iter}, "
                f"{self.n_init}, {self.chunk_rows}, {self.init_sample_per_cluster}"
            )
        if not self.tol >= 0:
            raise KMeansInputError(f"tol must be >= 0, got {self.tol}")
        if self.init not in ("k-means++", "random"):
            raise KMeansInputError(f"init must be 'k-means++' or 'random', got {self.init!r}")
        if self.precision not in ("fp32", "bf16"):
            raise KMeansInputError(f"precision must be 'fp32' or 'bf16', got {self.precision!r}")


@dataclass(frozen=True)
class KMeansResult:
    """A fitted clustering. `labels` are the argmax of the returned `centroids`."""

    labels: np.ndarray  # (N,) int64 cluster of each row
    similarity: np.ndarray  # (N,) float32 cosine of each row to its centroid (the official code's `score`)
    centroids: np.ndarray  # (K, d) float32, unit norm
    objective: list[float]  # mean cosine similarity at each E-step (non-decreasing except after a re-seed)
    iterations: int  # E-steps run in the kept restart
    converged: bool  # labels stopped changing (or the tol criterion fired) before max_iter
    seconds: float  # wall time of the whole fit, all restarts
    seconds_per_iter: float  # mean wall time of one iteration (E-step + M-step) in the kept restart
    cluster_sizes: np.ndarray  # (K,) int64
    n_reseeded: int  # empty clusters re-seeded over the kept restart
    recheck_fraction: float  # share of rows whose first GEMM left the argmax in doubt (bf16: fp32 recheck)
    info: dict = field(default_factory=dict)


# --- data sources: blocks of normalized fp32 rows --------------------------------------------------------


@dataclass
class _Block:
    start: int
    x: torch.Tensor  # (b, d) float32, unit rows
    xb: torch.Tensor | None = None  # (b, d + 1) bfloat16: bf16(x) and, last, -o (the row's offset, see _assign_block)
    dx: torch.Tensor | None = None  # (b,) |x - bf16(x)|
    xbn: torch.Tensor | None = None  # (b,) |bf16(x)|


def _normalize_rows(x: torch.Tensor, start: int) -> torch.Tensor:
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


def _bf16_parts(x: torch.Tensor, offset: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[bf16(x), -bf16(offset)] (rows x d+1), |x - bf16(x)| and |bf16(x)| per row."""
    xb = torch.empty(x.shape[0], x.shape[1] + 1, dtype=torch.bfloat16)
    xb[:, :-1].copy_(x)  # copy_, not `xb[...] = x`: tensor __setitem__ holds the GIL (see _e_step)
    xb[:, -1].copy_(-offset)
    xbf = xb[:, :-1].float()
    return xb, torch.linalg.vector_norm(x - xbf, dim=1), torch.linalg.vector_norm(xbf, dim=1)


def _block_rows(n: int, chunk_rows: int) -> int:
    """Rows per block: chunk_rows, fewer for small inputs (>= 8 blocks, >= 4096 rows: smaller GEMMs cost
    more per row) so that every worker stays busy.

    Depends on n and chunk_rows only (never on the thread count): block boundaries fix the order of the
    per-cluster sums, hence the result bits."""
    return min(chunk_rows, max(4096, -(-n // 8)))


def _empty(shape: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
    """A large uninitialized tensor backed by numpy, whose allocator asks the OS for huge pages: first-touch
    page faults of a torch allocation cost ~0.5 ms per MB on this VM, numpy's ~4x less."""
    if dtype == torch.bfloat16:
        return torch.from_numpy(np.empty(shape, dtype=np.int16)).view(torch.bfloat16)
    return torch.from_numpy(np.empty(shape, dtype=np.float32))


class _ArraySource:
    """An in-memory (N x d) array, normalized (and its bf16 parts built) once, block by block in the pool."""

    def __init__(self, data: np.ndarray | torch.Tensor, chunk_rows: int):
        x = torch.as_tensor(np.asarray(data)) if not isinstance(data, torch.Tensor) else data.detach().cpu()
        if x.ndim != 2:
            raise KMeansInputError(f"data must be 2-D (N x d), got shape {tuple(x.shape)}")
        self.n, self.d = int(x.shape[0]), int(x.shape[1])
        if self.n == 0 or self.d == 0:
            raise KMeansInputError(f"empty input: shape {tuple(x.shape)}")
        self.raw, self.chunk_rows = x, _block_rows(self.n, chunk_rows)  # (N, d) any float dtype, not copied
        self.n_blocks = -(-self.n // self.chunk_rows)
        self.x: torch.Tensor | None = None  # (N, d) float32 unit rows
        self._bf16: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # xb (N, d+1), dx (N,), xbn (N,)

    def prepare(self, bf16: bool, pool: ThreadPoolExecutor) -> None:
        first = self.x is None
        if first:
            self.x = _empty((self.n, self.d), torch.float32)
        if bf16 and self._bf16 is None:
            self._bf16 = (_empty((self.n, self.d + 1), torch.bfloat16), torch.empty(self.n), torch.empty(self.n))
        elif not first:
            return

        def work(i: int) -> None:
            s, e = i * self.chunk_rows, min((i + 1) * self.chunk_rows, self.n)
            if first:
                self.x[s:e].copy_(_normalize_rows(self.raw[s:e], s))
            if bf16:
                for dst, part in zip(self._bf16, _bf16_parts(self.x[s:e], torch.zeros(e - s)), strict=True):
                    dst[s:e].copy_(part)

        for _ in pool.map(work, range(self.n_blocks)):
            pass

    def block(self, i: int, bf16: bool) -> _Block:
        s, e = i * self.chunk_rows, min((i + 1) * self.chunk_rows, self.n)
        if not bf16:
            return _Block(s, self.x[s:e])
        xb, dx, xbn = self._bf16
        return _Block(s, self.x[s:e], xb[s:e], dx[s:e], xbn[s:e])

    def set_offsets(self, start: int, top: torch.Tensor) -> None:
        self._bf16[0][start : start + top.numel(), -1].copy_(-top)

    def fill_offsets(self, value: float) -> None:
        self._bf16[0][:, -1] = -value

    def shift_offsets(self, delta: float) -> None:
        self._bf16[0][:, -1] -= delta

    def rows(self, idx: np.ndarray) -> torch.Tensor:
        return self.x[torch.as_tensor(idx, dtype=torch.int64)]


class _StoreSource:
    """A FeatureStore read chunk by chunk on every pass; memory: a few store chunks plus O(N) offsets.

    Blocks are the same global row ranges as for an array (multiples of chunk_rows), whatever the store's
    own chunking, so a store and the same rows in memory give bit-identical results.
    """

    def __init__(self, store: FeatureStore, chunk_rows: int):
        self.n, self.d = store.meta.n_rows, store.meta.dim
        self.store, self.chunk_rows = store, _block_rows(self.n, chunk_rows)
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

    def block(self, i: int, bf16: bool) -> _Block:
        s, e = i * self.chunk_rows, min((i + 1) * self.chunk_rows, self.n)
        rows = self.store.meta.chunk_rows
        parts = []
        for c in range(s // rows, (e - 1) // rows + 1):
            cs = c * rows
            parts.append(self._read(c)[max(s - cs, 0) : e - cs])  # (<= rows, d) store dtype
        x = _normalize_rows(torch.from_numpy(np.concatenate(parts)), s)  # (e - s, d)
        return _Block(s, x, *_bf16_parts(x, self._offsets[s:e])) if bf16 else _Block(s, x)

    def set_offsets(self, start: int, top: torch.Tensor) -> None:
        self._offsets[start : start + top.numel()].copy_(top)

    def fill_offsets(self, value: float) -> None:
        self._offsets.fill_(value)

    def shift_offsets(self, delta: float) -> None:
        self._offsets += delta

    def rows(self, idx: np.ndarray) -> torch.Tensor:
        idx = np.asarray(idx, dtype=np.int64)
        return _normalize_rows(torch.from_numpy(np.ascontiguousarray(self.store.read_rows(idx))), 0)


_Source = _ArraySource | _StoreSource


# --- certified assignment ---------------------------------------------------------------------------------


@dataclass
class _Centroids:
    c: torch.Tensor  # (K, d) float32, unit rows
    c_t: torch.Tensor  # (d, K) float32
    cn: float  # max |c_k|
    cb_t: torch.Tensor | None = None  # (d + 1, K) bfloat16: bf16(c_k) and, last, 1 (picks up the row offset)
    cbn: float = 0.0  # max |bf16(c_k)|
    dc: float = 0.0  # max |c_k - bf16(c_k)|

    @classmethod
    def of(cls, c: torch.Tensor, bf16: bool) -> _Centroids:
        c = c.contiguous()
        cent = cls(c, c.t().contiguous(), float(torch.linalg.vector_norm(c, dim=1).max()))
        if bf16:
            cb, dc, cbn = _bf16_parts(c, -torch.ones(c.shape[0]))
            cent.cb_t, cent.dc, cent.cbn = cb.t().contiguous(), float(dc.max()), float(cbn.max())
        return cent


def _gamma(n: int) -> float:
    return n * FP32_UNIT_ROUNDOFF / (1 - n * FP32_UNIT_ROUNDOFF)  # error factor of an n-term fp32 dot product


def _certify(
    s: torch.Tensor, err: torch.Tensor, uo: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-1 of each row of `s` (b x K), and the rows where it is not certain to be the exact argmax.

    Every s_ik is within err_i + uo |s_ik| / (1 - uo) of its exact value (uo: rounding of the output).
    Returns (labels (b,), unsure row indices (u,), top values (b,), lower bounds of the exact top (b,)).
    """
    top_v, top_i = torch.topk(s, 2, dim=1)  # (b, 2)
    v1, v2 = top_v[:, 0].float(), top_v[:, 1].float()
    lb1 = v1 - uo * v1.abs() / (1 - uo) - err  # lower bound of the exact top value
    ub2 = v2 + uo * v2.abs() / (1 - uo) + err  # upper bound of every other exact value
    return top_i[:, 0].clone(), (lb1 <= ub2).nonzero().flatten(), v1, lb1


def _candidates(s: torch.Tensor, lb1: torch.Tensor, err: torch.Tensor, uo: float) -> torch.Tensor:
    """(P, 2) pairs (row, k), rows ascending: every k whose upper bound s_k + uo|s_k|/(1-uo) + err reaches lb1.

    The map s -> s + uo|s|/(1-uo) is increasing, so the test is s_k >= tau, tau its inverse at lb1 - err.
    """
    lo = lb1 - err
    tau = torch.where(lo >= 0, lo * (1 - uo), lo * (1 - uo) / (1 - 2 * uo))
    tau = tau - 1e-6 * (tau.abs() + 1)  # margin for the fp32 arithmetic of tau itself
    return (s >= tau[:, None]).nonzero()


def _f64_argmax(x: torch.Tensor, c: torch.Tensor, rows: torch.Tensor, ks: torch.Tensor) -> torch.Tensor:
    """Per row of x (u x d), the argmax over its pairs (rows, ks) of x.c_k in float64, ties to the lowest k.

    Products of fp32 values are exact in float64 and a d-term sum is off by ~1e-14 at most.
    """
    K = c.shape[0]
    vals = (x.index_select(0, rows).double() * c.index_select(0, ks).double()).sum(dim=1)  # (P,)
    best = torch.full((x.shape[0],), -math.inf, dtype=torch.float64).scatter_reduce_(0, rows, vals, "amax")
    k_if_best = torch.where(vals == best.index_select(0, rows), ks, K)
    return torch.full((x.shape[0],), K, dtype=torch.int64).scatter_reduce_(0, rows, k_if_best, "amin")


def _pairs_argmax(x: torch.Tensor, c: torch.Tensor, cn: float, cand: torch.Tensor) -> torch.Tensor:
    """Exact argmax per row of x (u x d) over its candidate pairs `cand` (P x 2): fp32 dots, float64 if close.

    An fp32 dot is within e = gamma_d |x| |c| of the exact value, so the top candidate is certain unless
    another one is within 2e of it; those rows (~1 in 1000) are redone in float64.
    """
    u = x.shape[0]
    rows, ks = cand[:, 0], cand[:, 1]
    vals = (x.index_select(0, rows) * c.index_select(0, ks)).sum(dim=1)  # (P,) float32
    e2 = (2 * _gamma(x.shape[1]) * cn * _BOUND_SLACK) * torch.linalg.vector_norm(x, dim=1)  # (u,)
    best = torch.full((u,), -math.inf).scatter_reduce_(0, rows, vals, "amax")
    contender = vals >= (best - e2).index_select(0, rows)  # (P,) may still be the exact argmax
    n_contenders = torch.zeros(u, dtype=torch.int64).scatter_add_(0, rows, contender.long())
    labels = torch.full((u,), c.shape[0], dtype=torch.int64)
    labels.scatter_reduce_(0, rows, torch.where(contender, ks, c.shape[0]), "amin")  # the contender, if one
    close = n_contenders > 1
    if bool(close.any()):
        keep = contender & close.index_select(0, rows)
        idx = close.nonzero().flatten()
        sub = torch.full((u,), -1, dtype=torch.int64).index_copy_(0, idx, torch.arange(idx.numel()))
        k_rows = sub.index_select(0, rows.masked_select(keep))
        labels.index_copy_(0, idx, _f64_argmax(x.index_select(0, idx), c, k_rows, ks.masked_select(keep)))
    return labels


def _assign_fp32(x: torch.Tensor, cent: _Centroids) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Exact argmax via one fp32 GEMM (error <= gamma_d |x| |c|) and float64 for the doubtful rows."""
    s = x @ cent.c_t  # (b, K) float32
    err = _gamma(x.shape[1]) * torch.linalg.vector_norm(x, dim=1) * cent.cn * _BOUND_SLACK
    labels, unsure, v1, lb1 = _certify(s, err, 0.0)
    if unsure.numel():
        cand = _candidates(s.index_select(0, unsure), lb1.index_select(0, unsure), err.index_select(0, unsure), 0.0)
        labels.index_copy_(0, unsure, _f64_argmax(x.index_select(0, unsure), cent.c, cand[:, 0], cand[:, 1]))
    return labels, v1, int(unsure.numel())


def _assign_block(blk: _Block, cent: _Centroids, bf16: bool) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Exact argmax_k x.c_k of each row (ties: lowest k), an estimate of its top cosine, rows rechecked.

    bf16: S = [x~, -o] [c~, 1]^T = x~.c~ - o with o a bf16 estimate of the row's top cosine (last
    iteration's), so the values that decide the argmax are near 0 and their rounding to bf16 costs
    ~2^-8 * 0.05 instead of 2^-8 * 0.65: that halves the rows to recheck. A doubtful row is rechecked
    with fp32 dot products against its few candidates (those whose upper bound reaches the top's lower
    bound), then float64 if two candidates are within fp32 error of each other.
    """
    b, d = blk.x.shape
    K = cent.c.shape[0]
    if K == 1:
        return torch.zeros(b, dtype=torch.int64), torch.zeros(b), 0
    if not bf16:
        return _assign_fp32(blk.x, cent)
    s = blk.xb @ cent.cb_t  # (b, K) bfloat16
    minus_o = blk.xb[:, -1].float()  # (b,)
    terms = blk.xbn * cent.cbn + minus_o.abs()  # bound of sum |products| of the d + 1 terms
    err = (blk.dx * cent.cbn + blk.xbn * cent.dc + blk.dx * cent.dc + _gamma(d + 1) * terms) * _BOUND_SLACK
    labels, unsure, v1, lb1 = _certify(s, err, BF16_UNIT_ROUNDOFF)
    if unsure.numel():
        pick = (s.index_select(0, unsure), lb1.index_select(0, unsure), err.index_select(0, unsure))
        cand = _candidates(*pick, BF16_UNIT_ROUNDOFF)
        labels.index_copy_(0, unsure, _pairs_argmax(blk.x.index_select(0, unsure), cent.c, cent.cn, cand))
    return labels, v1 - minus_o, int(unsure.numel())


@functools.lru_cache(maxsize=16)
def _bf16_gemm_accumulates_in_fp32(m: int, k: int, n: int) -> bool:
    """Probe this CPU's bf16 GEMM at the shape the E-step uses ((m x k) @ (k x n), run in a pool worker).

    Rows are built so each dot product is a small difference of two large half-sums: a GEMM that
    rounded a partial sum to bf16 anywhere would be off by ~2^-8 of the half-sum, far outside the bound
    (gamma_k sum|products| + 2^-8 |result|) that the certification assumes. Checked on 256 rows.
    """
    g = torch.Generator().manual_seed(0)
    half = torch.rand(m, k // 2, generator=g)
    x = torch.cat([half, -half[:, torch.randperm(k // 2, generator=g)], torch.rand(m, k % 2, generator=g)], dim=1)
    x = (x + 0.01 * torch.randn(m, k, generator=g)).to(torch.bfloat16)  # (m, k)
    c = (1 + torch.rand(k, n, generator=g)).to(torch.bfloat16)  # (k, n) positive entries
    got = (x @ c)[:256].double()  # (256, n)
    xs, cd = x[:256].double(), c.double()
    exact = xs @ cd
    bound = 1.02 * _gamma(k) * (xs.abs() @ cd.abs()) + BF16_UNIT_ROUNDOFF * exact.abs() * 1.01
    return bool(((got - exact).abs() <= bound).all())


def _check_bf16_gemm(pool: ThreadPoolExecutor, m: int, k: int, n: int) -> None:
    """Refuse the bf16 path unless its GEMM stays within the bound the certification assumes."""
    if not pool.submit(_bf16_gemm_accumulates_in_fp32, m, k, n).result():
        raise RuntimeError(
            f"this CPU's bf16 matmul ({m}x{k} @ {k}x{n}) does not accumulate in fp32 (error above the "
            "certified bound); use KMeansConfig(precision='fp32')"
        )


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def _highest_fp32_matmul() -> Iterator[None]:
    """The fp32 error bound assumes true fp32 GEMMs (no bf16/tf32 shortcuts)."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


# --- passes -----------------------------------------------------------------------------------------------


@dataclass
class _EStep:
    labels: torch.Tensor  # (N,) int64
    sums: torch.Tensor | None  # (K, d) float32 per-cluster sum of rows
    unsure: int


def _in_order(pool: ThreadPoolExecutor, fn: Callable, n: int, window: int) -> Iterator:
    """fn(0), ..., fn(n-1) run by the pool, results yielded in order, at most `window` in flight."""
    pending: deque = deque()
    for i in range(n):
        pending.append(pool.submit(fn, i))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _e_step(src: _Source, cent: _Centroids, bf16: bool, accumulate: bool, pool: ThreadPoolExecutor) -> _EStep:
    """One pass: every block assigned (and summed per cluster) by a pool worker.

    Workers run single-threaded torch on whole blocks (like scikit-learn's chunked Lloyd): one
    synchronization per block instead of one per op, which keeps both cores busy even when another
    process takes a share of them. Partial sums are added in block order, so the result is the same
    bits whatever the scheduling. Worker code moves data with index_select / index_copy_ / copy_, never
    with tensor indexing: torch's __getitem__/__setitem__ hold the GIL while they copy, which
    serializes the workers (measured: two threads of `x[idx]` run at half the speed of one).
    """
    K, d = cent.c.shape
    src.prepare(bf16, pool)

    def work(i: int):
        blk = src.block(i, bf16)
        lab, top, u = _assign_block(blk, cent, bf16)
        if bf16:
            src.set_offsets(blk.start, top)  # next iteration's o: this one's top cosine
        part = torch.zeros(K, d).index_add_(0, lab, blk.x) if accumulate else None  # (K, d) fused M-step sums
        return blk.start, lab, part, u

    labels = torch.empty(src.n, dtype=torch.int64)
    sums = torch.zeros(K, d, dtype=torch.float32) if accumulate else None
    unsure = 0
    for start, lab, part, u in _in_order(pool, work, src.n_blocks, window=16):  # a late block stalls no one
        labels[start : start + lab.numel()] = lab
        unsure += u
        if accumulate:
            sums += part
    return _EStep(labels, sums, unsure)


def _similarities(src: _Source, c: torch.Tensor, labels: torch.Tensor, pool: ThreadPoolExecutor) -> torch.Tensor:
    """(N,) float32 cosine of each row to its own centroid (one cheap row-wise pass, no GEMM)."""
    sims = torch.empty(src.n, dtype=torch.float32)

    def work(i: int) -> None:
        blk = src.block(i, False)
        lab = labels[blk.start : blk.start + blk.x.shape[0]]
        sims[blk.start : blk.start + lab.numel()].copy_((blk.x * c.index_select(0, lab)).sum(dim=1))

    for _ in pool.map(work, range(src.n_blocks)):
        pass
    return sims


# --- init -------------------------------------------------------------------------------------------------


def _init_centroids(src: _Source, cfg: KMeansConfig, rng: np.random.Generator) -> torch.Tensor:
    if cfg.init == "random":  # the official code: K distinct random rows
        return src.rows(np.sort(rng.choice(src.n, cfg.K, replace=False))).clone()
    m = min(src.n, cfg.init_sample_per_cluster * cfg.K)
    sample = np.arange(src.n) if m == src.n else np.sort(rng.choice(src.n, m, replace=False))
    xs = src.rows(sample)  # (m, d)
    return xs[_kmeanspp(xs, cfg.K, rng)].clone()


def _kmeanspp(xs: torch.Tensor, K: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-means++ (Arthur & Vassilvitskii; sklearn's 2 + log K local trials) with D = 1 - cos."""
    m = xs.shape[0]
    trials = 2 + int(math.log(K))
    chosen = [int(rng.integers(m))]
    closest = (1 - xs @ xs[chosen[0]]).clamp_min_(0).double()  # (m,) distance to the nearest chosen row
    pot = float(closest.sum())
    for _ in range(1, K):
        if pot <= 0:  # every row coincides with a chosen one: take any unchosen row
            rest = np.setdiff1d(np.arange(m), chosen)
            chosen.append(int(rest[0]))
            continue
        cum = torch.cumsum(closest, 0).numpy()
        cand = np.minimum(np.searchsorted(cum, rng.random(trials) * pot), m - 1)  # (trials,)
        dist = (1 - xs[torch.from_numpy(cand)] @ xs.t()).clamp_min_(0).double()  # (trials, m)
        dist = torch.minimum(dist, closest[None, :])
        pots = dist.sum(dim=1)  # (trials,)
        best = int(torch.argmin(pots))
        chosen.append(int(cand[best]))
        closest, pot = dist[best], float(pots[best])
    return np.asarray(chosen, dtype=np.int64)


# --- M-step -----------------------------------------------------------------------------------------------


def _reseed_empty(
    src: _Source,
    sums: torch.Tensor,
    counts: torch.Tensor,
    labels: torch.Tensor,
    c_prev: torch.Tensor,
    pool: ThreadPoolExecutor,
) -> int:
    """Give each empty cluster the row farthest from its centroid (from a cluster of >= 2 rows).

    Mutates `sums` and `counts`; returns the number of clusters re-seeded.
    """
    norms = torch.linalg.vector_norm(sums, dim=1)
    empty = ((counts == 0) | (norms == 0)).nonzero().flatten().tolist()
    if not empty:
        return 0
    sims = _similarities(src, c_prev, labels, pool)
    order = torch.argsort(sims, stable=True).numpy()  # farthest (lowest cosine) first
    lab = labels.numpy()
    picks: list[int] = []
    for p in order:
        if len(picks) == len(empty):
            break
        if counts[lab[p]] > 1:
            counts[lab[p]] -= 1
            picks.append(int(p))
    x = src.rows(np.asarray(picks, dtype=np.int64))  # (len(picks), d)
    for j, p, row in zip(empty, picks, x, strict=False):
        sums[lab[p]] -= row
        sums[j] = row
        counts[j] = 1
    log.debug("re-seeded %d empty clusters", len(picks))
    return len(picks)


def _m_step(sums: torch.Tensor) -> torch.Tensor:
    return sums / torch.linalg.vector_norm(sums, dim=1, keepdim=True).clamp_min(1e-30)


# --- the fit ----------------------------------------------------------------------------------------------

OnIteration = Callable[[int, float, float], None]  # (iteration, mean cosine, seconds of this iteration)


def spherical_kmeans(
    data: np.ndarray | torch.Tensor | FeatureStore,
    config: KMeansConfig,
    on_iteration: OnIteration | None = None,
    init_centroids: np.ndarray | torch.Tensor | None = None,
) -> KMeansResult:
    """Cluster the rows of `data` (array, tensor or FeatureStore) by cosine; see the module docstring.

    `init_centroids` (K x d) replaces the seeded init (benchmarks give every method the same start);
    it forces n_init=1.
    """
    t0 = time.perf_counter()
    if isinstance(data, FeatureStore):
        src: _Source = _StoreSource(data, config.chunk_rows)
    else:
        src = _ArraySource(data, config.chunk_rows)
    if config.K > src.n:
        raise KMeansInputError(f"K={config.K} clusters cannot be formed from N={src.n} rows (need K <= N)")
    bf16 = config.precision == "bf16"
    seeds = np.random.SeedSequence(config.seed).spawn(config.n_init)
    best: KMeansResult | None = None
    threads = config.threads or torch.get_num_threads()
    # Heavy work runs in `threads` pool workers, each single-threaded on whole chunks; the main thread only
    # does K x d work and k-means++'s thin GEMMs, so it runs single-threaded too: no OpenMP barriers at all.
    pool = ThreadPoolExecutor(threads, initializer=torch.set_num_threads, initargs=(1,))
    with _highest_fp32_matmul(), _torch_threads(1), pool:
        src.prepare(False, pool)  # normalizes (and validates) every row before anything reads them
        if bf16:
            _check_bf16_gemm(pool, min(config.chunk_rows, src.n), src.d + 1, config.K)
        for r, ss in enumerate(seeds):
            rng = np.random.default_rng(ss)
            if init_centroids is not None:
                c0 = torch.as_tensor(np.asarray(init_centroids), dtype=torch.float32)
                if tuple(c0.shape) != (config.K, src.d):
                    raise KMeansInputError(f"init_centroids has shape {tuple(c0.shape)}, expected {(config.K, src.d)}")
                c0 = _normalize_rows(c0, 0)
            else:
                c0 = _init_centroids(src, config, rng)
            res = _fit_once(src, config, c0, bf16, on_iteration, pool)
            log.info(
                "k-means restart %d/%d: mean cos %.5f after %d iterations (%.3f s/iter, %.1f%% rows rechecked)",
                r + 1, config.n_init, res.objective[-1], res.iterations, res.seconds_per_iter,
                100 * res.recheck_fraction,
            )  # fmt: skip
            if best is None or res.objective[-1] > best.objective[-1]:
                best = res
            if init_centroids is not None:
                break
    assert best is not None
    return KMeansResult(**{**best.__dict__, "seconds": time.perf_counter() - t0})


def _fit_once(
    src: _Source,
    cfg: KMeansConfig,
    c: torch.Tensor,
    bf16: bool,
    on_iteration: OnIteration | None,
    pool: ThreadPoolExecutor,
) -> KMeansResult:
    t_start = time.perf_counter()
    objective: list[float] = []
    iter_seconds: list[float] = []
    prev_labels: torch.Tensor | None = None
    reseeded_last, n_reseeded, unsure_total, converged = 0, 0, 0, False
    if bf16:  # first offsets: the median top cosine of 512 spread rows under the initial centroids
        src.prepare(bf16, pool)
        probe = src.rows(np.linspace(0, src.n - 1, min(src.n, 512)).astype(np.int64))  # (<= 512, d)
        src.fill_offsets(float((probe @ c.t()).amax(dim=1).median()))
    for it in range(cfg.max_iter):
        t_it = time.perf_counter()
        cent = _Centroids.of(c, bf16)
        est = _e_step(src, cent, bf16, accumulate=True, pool=pool)
        unsure_total += est.unsure
        obj = float((est.sums.double() * c.double()).sum()) / src.n  # = mean_i x_i . c_{label_i}
        objective.append(obj)
        stable = prev_labels is not None and reseeded_last == 0 and torch.equal(est.labels, prev_labels)
        small = len(objective) > 1 and reseeded_last == 0 and obj - objective[-2] < cfg.tol * abs(objective[-2])
        if stable or small or it == cfg.max_iter - 1:  # the labels are the argmax of c: stop here
            converged = stable or small
            iter_seconds.append(time.perf_counter() - t_it)
            if on_iteration is not None:
                on_iteration(it, obj, iter_seconds[-1])
            break
        counts = torch.bincount(est.labels, minlength=c.shape[0])
        reseeded_last = _reseed_empty(src, est.sums, counts, est.labels, c, pool)
        n_reseeded += reseeded_last
        c = _m_step(est.sums)
        if bf16:  # the new centroids raise each row's top cosine by ~ the gain of the M-step, on average
            src.shift_offsets(float(torch.linalg.vector_norm(est.sums, dim=1).double().sum()) / src.n - obj)
        prev_labels = est.labels
        iter_seconds.append(time.perf_counter() - t_it)
        if on_iteration is not None:
            on_iteration(it, obj, iter_seconds[-1])
        log.debug(
            "iteration %d: mean cos %.6f, %.1f%% unsure, %.3f s", it, obj, 100 * est.unsure / src.n, iter_seconds[-1]
        )
    labels = est.labels
    sims = _similarities(src, c, labels, pool)
    return KMeansResult(
        labels=labels.numpy(),
        similarity=sims.numpy(),
        centroids=c.numpy().copy(),
        objective=objective,
        iterations=len(objective),
        converged=converged,
        seconds=time.perf_counter() - t_start,
        seconds_per_iter=float(np.mean(iter_seconds)),
        cluster_sizes=torch.bincount(labels, minlength=c.shape[0]).numpy(),
        n_reseeded=n_reseeded,
        recheck_fraction=unsure_total / (src.n * len(objective)),
        info={"precision": cfg.precision, "iteration_seconds": iter_seconds},
    )
