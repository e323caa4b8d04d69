"""Certified nearest-centroid assignment: a fast (bf16 or fp32) GEMM, an error bound per row, and exact dot products
for the rows the bound cannot decide, so labels equal the exact argmax (the derivation: core/clusterclip/kmeans.py)."""

from __future__ import annotations

import functools
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from gtp_pipeline.core.clusterclip.kmeans_blocks import Block, bf16_parts

log = logging.getLogger(__name__)

BF16_UNIT_ROUNDOFF = 2.0**-8  # bf16 keeps 8 significant bits; round-to-nearest error <= 2^-8 relative
FP32_UNIT_ROUNDOFF = 2.0**-24
BOUND_SLACK = 1.01  # the norms in the bound are themselves computed in fp32; 1% covers that many times over


# --- certified assignment ---------------------------------------------------------------------------------


@dataclass
class Centroids:
    c: torch.Tensor  # (K, d) float32, unit rows
    c_t: torch.Tensor  # (d, K) float32
    cn: float  # max |c_k|
    cb_t: torch.Tensor | None = None  # (d + 1, K) bfloat16: bf16(c_k) and, last, 1 (picks up the row offset)
    cbn: float = 0.0  # max |bf16(c_k)|
    dc: float = 0.0  # max |c_k - bf16(c_k)|

    @classmethod
    def of(cls, c: torch.Tensor, bf16: bool) -> Centroids:
        c = c.contiguous()
        cent = cls(c, c.t().contiguous(), float(torch.linalg.vector_norm(c, dim=1).max()))
        if bf16:
            cb, dc, cbn = bf16_parts(c, -torch.ones(c.shape[0]))
            cent.cb_t, cent.dc, cent.cbn = cb.t().contiguous(), float(dc.max()), float(cbn.max())
        return cent


def gamma(n: int) -> float:
    return n * FP32_UNIT_ROUNDOFF / (1 - n * FP32_UNIT_ROUNDOFF)  # error factor of an n-term fp32 dot product


def certify(
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


def candidates(s: torch.Tensor, lb1: torch.Tensor, err: torch.Tensor, uo: float) -> torch.Tensor:
    """(P, 2) pairs (row, k), rows ascending: every k whose upper bound s_k + uo|s_k|/(1-uo) + err reaches lb1.

    The map s -> s + uo|s|/(1-uo) is increasing, so the test is s_k >= tau, tau its inverse at lb1 - err.
    """
    lo = lb1 - err
    tau = torch.where(lo >= 0, lo * (1 - uo), lo * (1 - uo) / (1 - 2 * uo))
    tau = tau - 1e-6 * (tau.abs() + 1)  # margin for the fp32 arithmetic of tau itself
    return (s >= tau[:, None]).nonzero()


def f64_argmax(x: torch.Tensor, c: torch.Tensor, rows: torch.Tensor, ks: torch.Tensor) -> torch.Tensor:
    """Per row of x (u x d), the argmax over its pairs (rows, ks) of x.c_k in float64, ties to the lowest k.

    Products of fp32 values are exact in float64 and a d-term sum is off by ~1e-14 at most.
    """
    K = c.shape[0]
    vals = (x.index_select(0, rows).double() * c.index_select(0, ks).double()).sum(dim=1)  # (P,)
    best = torch.full((x.shape[0],), -math.inf, dtype=torch.float64).scatter_reduce_(0, rows, vals, "amax")
    k_if_best = torch.where(vals == best.index_select(0, rows), ks, K)
    return torch.full((x.shape[0],), K, dtype=torch.int64).scatter_reduce_(0, rows, k_if_best, "amin")


def pairs_argmax(x: torch.Tensor, c: torch.Tensor, cn: float, cand: torch.Tensor) -> torch.Tensor:
    """Exact argmax per row of x (u x d) over its candidate pairs `cand` (P x 2): fp32 dots, float64 if close.

    An fp32 dot is within e = gamma_d |x| |c| of the exact value, so the top candidate is certain unless
    another one is within 2e of it; those rows (~1 in 1000) are redone in float64.
    """
    u = x.shape[0]
    rows, ks = cand[:, 0], cand[:, 1]
    vals = (x.index_select(0, rows) * c.index_select(0, ks)).sum(dim=1)  # (P,) float32
    e2 = (2 * gamma(x.shape[1]) * cn * BOUND_SLACK) * torch.linalg.vector_norm(x, dim=1)  # (u,)
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
        labels.index_copy_(0, idx, f64_argmax(x.index_select(0, idx), c, k_rows, ks.masked_select(keep)))
    return labels


def assign_fp32(x: torch.Tensor, cent: Centroids) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Exact argmax via one fp32 GEMM (error <= gamma_d |x| |c|) and float64 for the doubtful rows."""
    s = x @ cent.c_t  # (b, K) float32
    err = gamma(x.shape[1]) * torch.linalg.vector_norm(x, dim=1) * cent.cn * BOUND_SLACK
    labels, unsure, v1, lb1 = certify(s, err, 0.0)
    if unsure.numel():
        cand = candidates(s.index_select(0, unsure), lb1.index_select(0, unsure), err.index_select(0, unsure), 0.0)
        labels.index_copy_(0, unsure, f64_argmax(x.index_select(0, unsure), cent.c, cand[:, 0], cand[:, 1]))
    return labels, v1, int(unsure.numel())


def assign_block(blk: Block, cent: Centroids, bf16: bool) -> tuple[torch.Tensor, torch.Tensor, int]:
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
        return assign_fp32(blk.x, cent)
    s = blk.xb @ cent.cb_t  # (b, K) bfloat16
    minus_o = blk.xb[:, -1].float()  # (b,)
    terms = blk.xbn * cent.cbn + minus_o.abs()  # bound of sum |products| of the d + 1 terms
    err = (blk.dx * cent.cbn + blk.xbn * cent.dc + blk.dx * cent.dc + gamma(d + 1) * terms) * BOUND_SLACK
    labels, unsure, v1, lb1 = certify(s, err, BF16_UNIT_ROUNDOFF)
    if unsure.numel():
        pick = (s.index_select(0, unsure), lb1.index_select(0, unsure), err.index_select(0, unsure))
        cand = candidates(*pick, BF16_UNIT_ROUNDOFF)
        labels.index_copy_(0, unsure, pairs_argmax(blk.x.index_select(0, unsure), cent.c, cent.cn, cand))
    return labels, v1 - minus_o, int(unsure.numel())


@functools.lru_cache(maxsize=16)
def bf16_gemm_accumulates_in_fp32(m: int, k: int, n: int) -> bool:
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
    bound = 1.02 * gamma(k) * (xs.abs() @ cd.abs()) + BF16_UNIT_ROUNDOFF * exact.abs() * 1.01
    return bool(((got - exact).abs() <= bound).all())


def check_bf16_gemm(pool: ThreadPoolExecutor, m: int, k: int, n: int) -> None:
    """Refuse the bf16 path unless its GEMM stays within the bound the certification assumes."""
    if not pool.submit(bf16_gemm_accumulates_in_fp32, m, k, n).result():
        raise RuntimeError(
            f"this CPU's bf16 matmul ({m}x{k} @ {k}x{n}) does not accumulate in fp32 (error above the "
            "certified bound); use KMeansConfig(precision='fp32')"
        )
