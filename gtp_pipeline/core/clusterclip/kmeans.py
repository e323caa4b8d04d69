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

import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from gtp_pipeline.core.clusterclip.kmeans_blocks import (
    ArraySource,
    KMeansInputError,
    Source,
    StoreSource,
    normalize_rows,
)
from gtp_pipeline.core.clusterclip.kmeans_certify import Centroids, assign_block, check_bf16_gemm
from gtp_pipeline.core.clusterclip.kmeans_init import starting_centroids
from gtp_pipeline.core.storage.feature_store import FeatureStore

log = logging.getLogger(__name__)


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


def _e_step(src: Source, cent: Centroids, bf16: bool, accumulate: bool, pool: ThreadPoolExecutor) -> _EStep:
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
        lab, top, u = assign_block(blk, cent, bf16)
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


def _similarities(src: Source, c: torch.Tensor, labels: torch.Tensor, pool: ThreadPoolExecutor) -> torch.Tensor:
    """(N,) float32 cosine of each row to its own centroid (one cheap row-wise pass, no GEMM)."""
    sims = torch.empty(src.n, dtype=torch.float32)

    def work(i: int) -> None:
        blk = src.block(i, False)
        lab = labels[blk.start : blk.start + blk.x.shape[0]]
        sims[blk.start : blk.start + lab.numel()].copy_((blk.x * c.index_select(0, lab)).sum(dim=1))

    for _ in pool.map(work, range(src.n_blocks)):
        pass
    return sims


# --- M-step -----------------------------------------------------------------------------------------------


def _reseed_empty(
    src: Source,
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
        src: Source = StoreSource(data, config.chunk_rows)
    else:
        src = ArraySource(data, config.chunk_rows)
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
            check_bf16_gemm(pool, min(config.chunk_rows, src.n), src.d + 1, config.K)
        for r, ss in enumerate(seeds):
            rng = np.random.default_rng(ss)
            if init_centroids is not None:
                c0 = torch.as_tensor(np.asarray(init_centroids), dtype=torch.float32)
                if tuple(c0.shape) != (config.K, src.d):
                    raise KMeansInputError(f"init_centroids has shape {tuple(c0.shape)}, expected {(config.K, src.d)}")
                c0 = normalize_rows(c0, 0)
            else:
                c0 = starting_centroids(src, config.init, config.K, config.init_sample_per_cluster, rng)
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
    src: Source,
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
        cent = Centroids.of(c, bf16)
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
