"""Benchmark joint GTP (several targets, one support) against simultaneous NN-OMP re-fitted from scratch.

One run, one synthetic pool in memory (DenseTrajectories; the streaming view has the same interface), J targets:
  joint_gtp       gtp_pipeline.core.selection.joint_pursuit.joint_gtp (pool per pass, warm-started per-target NNLS)
  somp_scratch    the textbook form it replaces: one atom per pass scored by sum_j max(0, <a, r_j>)^2, then every
                  target re-fitted from scratch with scipy's NNLS; atoms no target uses leave the support
  gtp_mean        single-target GTP on the mean of the targets (the pipeline's default form), for the fitted count
and the de-duplicating fill (`fill_rows`) against the plain top-n scan it replaces.
Data: a clustered pool (shared direction + cluster centre + within-cluster part + noise, rows unit-norm) with 5%
near-duplicate copies; each target is the mean of a few rows of its own cluster plus noise, so the targets point
different ways (what per-example or per-subtask targets look like).

Run: python bench/joint_pursuit.py           (N=20k, D=512, J=8, k=200)
     python bench/joint_pursuit.py --quick   (N=5k, D=256, J=8, k=100)
Prints one JSON line. Goals: joint_vs_somp_objective <= 1.05; passes_ratio >= 20 (passes over the pool are what
a store-backed view pays for); joint_speedup_vs_somp >= 2 in memory, where passes are cheap; the fill's
de-duplication costs fill_dedup_over_plain_scan <= 3 (a few extra scans at most).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch
from scipy.optimize import nnls as scipy_nnls

from gtp_pipeline.core.features.trajectory import DenseTrajectories
from gtp_pipeline.core.selection.joint_pursuit import joint_gtp
from gtp_pipeline.core.selection.pursuit import PursuitConfig, fill_rows, gtp

N, D, J, K = 20_000, 512, 8, 200
QUICK = dict(N=5_000, D=256, K=100)
CLUSTERS = 100
SHARED, CENTRE, WITHIN, NOISE = 0.3, 0.6, 0.5, 1.0
DUP_FRAC = 0.05
SEED = 0


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def synthetic(n: int, d: int, j: int, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """(n, d) unit rows of a clustered pool with near-duplicates, and (j, d) targets from j different clusters."""
    rng = np.random.default_rng(seed)
    shared = rng.normal(size=d)
    centres = rng.normal(size=(CLUSTERS, d))
    labels = rng.integers(0, CLUSTERS, size=n)
    A = (
        SHARED * _unit(shared)
        + CENTRE * _unit(centres)[labels]
        + WITHIN * _unit(rng.normal(size=(n, d)))
        + NOISE * _unit(rng.normal(size=(n, d)))
    )
    copies = rng.choice(n, size=int(DUP_FRAC * n), replace=False)
    A[copies] = A[rng.integers(0, n, size=copies.size)] + 0.05 * _unit(rng.normal(size=(copies.size, d)))
    targets = []
    for c in rng.choice(CLUSTERS, size=j, replace=False):
        members = np.flatnonzero(labels == c)[:4]
        targets.append(_unit(A[members]).mean(axis=0) + 0.3 * _unit(rng.normal(size=d)))
    return _unit(A), np.stack(targets).astype(np.float64)


def objective(A: np.ndarray, B: np.ndarray, idx) -> float:
    """sum_j min_{w >= 0} ||A_S w - b_j||^2 by scipy (the score both methods are judged by)."""
    As = A[list(idx)].T.astype(np.float64)
    return float(sum(scipy_nnls(As, b)[1] ** 2 for b in B))


def somp_scratch(A: np.ndarray, B: np.ndarray, k: int) -> tuple[list[int], int]:
    """Simultaneous non-negative OMP, one atom per pass, every target re-fitted from scratch each step;
    returns the support and the number of passes over the pool."""
    A64, S = A.astype(np.float64), []
    R = B.T.copy()  # (D, J)
    passes = 0
    for _ in range(2 * k):
        passes += 1
        score = (np.maximum(A64 @ R, 0) ** 2).sum(axis=1)
        score[S] = -1
        if score.max() <= 1e-12:
            break
        S.append(int(np.argmax(score)))
        As = A64[S].T
        W = np.stack([scipy_nnls(As, b)[0] for b in B], axis=1)  # (s, J)
        keep = W.max(axis=1) > 0
        S, W = [i for i, used in zip(S, keep, strict=True) if used], W[keep]
        R = B.T - A64[S].T @ W
        if len(S) == k:
            break
    return S, passes


def main() -> None:
    global N, D, K
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="N=5k, D=256, k=100; under a minute")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.quick:
        N, D, K = QUICK["N"], QUICK["D"], QUICK["K"]
    torch.set_num_threads(args.threads)
    A, B = synthetic(N, D, J)
    view = DenseTrajectories(A)
    cfg = PursuitConfig(budget=K)

    t = time.perf_counter()
    joint = joint_gtp(view, B, cfg)
    joint_s = time.perf_counter() - t
    t = time.perf_counter()
    ref, somp_passes = somp_scratch(A, B, K)
    somp_s = time.perf_counter() - t
    single = gtp(view, B.mean(axis=0), cfg)

    fitted = joint.indices[: K - joint.fill]
    chosen, n_fill = fitted[: K // 2], K - K // 2  # fill half the budget after a fitted half
    b = B.mean(axis=0)
    fill_times = {"dedup": [], "plain": []}
    for _ in range(3):
        t = time.perf_counter()
        fill_rows(view, b, chosen, n_fill, 0.95)
        fill_times["dedup"].append(time.perf_counter() - t)
        t = time.perf_counter()
        view.scan(b, top=n_fill, exclude=chosen, with_rows=False)
        fill_times["plain"].append(time.perf_counter() - t)
    dedup_s, plain_s = min(fill_times["dedup"]), min(fill_times["plain"])
    _, n_dup_taken = fill_rows(view, b, chosen, n_fill, 0.95)

    result = dict(
        bench="joint_pursuit",
        mode="quick" if args.quick else "full",
        device=f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        torch=torch.__version__,
        torch_threads=torch.get_num_threads(),
        n=N,
        d=D,
        targets=J,
        k=K,
        joint_wall_s=joint_s,
        somp_wall_s=somp_s,
        joint_speedup_vs_somp=somp_s / joint_s,
        joint_objective=objective(A, B, joint.indices[: K - joint.fill]),
        somp_objective=objective(A, B, ref),
        joint_vs_somp_objective=objective(A, B, joint.indices[: K - joint.fill]) / objective(A, B, ref),
        joint_fitted=K - joint.fill,
        somp_fitted=len(ref),
        gtp_mean_target_fitted=K - single.fill,
        joint_passes=joint.passes,
        somp_passes=somp_passes,
        passes_ratio=somp_passes / joint.passes,
        fill_dedup_s=dedup_s,
        fill_plain_scan_s=plain_s,
        fill_dedup_over_plain_scan=dedup_s / plain_s,
        fill_near_duplicates_taken=n_dup_taken,
    )
    print(json.dumps({k: (round(v, 6) if isinstance(v, float) else v) for k, v in result.items()}))


if __name__ == "__main__":
    main()
