"""The OMP baselines GTP is measured against: non-negative OMP with one atom per pass (incremental Cholesky and an
exact NNLS re-fit: the greedy rule GTP batches), and GradMatch's non-negative OMP as published (docs/ALGORITHMS.md
§2.3). Same interface as `gtp`: a `Trajectories` view, a target and a `PursuitConfig` in, a `Selection` out
(core/selection/pursuit.py)."""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from gtp_pipeline.core.features.trajectory import Trajectories
from gtp_pipeline.core.selection.nnls import CholeskySupport
from gtp_pipeline.core.selection.pursuit import PursuitConfig, Selection, check_budget, check_target, finish

logger = logging.getLogger(__name__)


def cholesky_omp(view: Trajectories, target: np.ndarray, config: PursuitConfig = PursuitConfig()) -> Selection:
    """Non-negative OMP: one pass and one atom per iteration, incremental Cholesky + exact NNLS re-fit."""
    t0, passes0 = time.perf_counter(), view.passes
    b, k = check_target(view, target), check_budget(view, config.budget)
    bnorm = float(np.linalg.norm(b))
    sup = CholeskySupport(view.dim)
    b32 = b.astype(np.float32)
    residuals: list[float] = []
    stop, it, max_it = "budget", 0, config.max_omp_iterations or 2 * k
    r = b.copy()
    while sup.s < k:
        if it >= max_it:
            stop = "max_rounds"
            break
        scan = view.scan(r, top=1, exclude=sup.indices)
        it += 1
        if scan.top.size == 0 or scan.scores[0] <= 0:
            stop = "no_progress"
            break
        row = scan.rows[0]  # (D,)
        g = sup.cross(torch.from_numpy(row)[None])[:, 0].double().numpy()  # (s,) A_S^T a_j
        if not sup.add(int(scan.top[0]), row, g, float(row @ row), float(row @ b32)):
            stop = "no_progress"  # the best-correlated atom cannot enter: numerically nothing left to gain
            break
        r = sup.residual(b)
        residuals.append(float(np.linalg.norm(r)))
        if residuals[-1] <= config.tol * bnorm:
            stop = "tolerance"
            break
    return finish("cholesky_omp", view, sup, b, k, residuals, it, passes0, t0, stop, {}, config)


def gradmatch_omp(
    view: Trajectories,
    target: np.ndarray,
    config: PursuitConfig = PursuitConfig(),
    lam: float = 0.0,
    max_iterations: int | None = None,
) -> Selection:
    """GradMatch's non-negative OMP exactly as docs/ALGORITHMS.md §2.3 (cords OrthogonalMP_REG_Parallel_V1).

    `max_iterations` < k runs only a prefix of the k iterations (for timing extrapolation); the result is then
    marked stop_reason="max_rounds" and is not a full GradMatch selection.
    """
    t0, passes0 = time.perf_counter(), view.passes
    b, k = check_target(view, target), check_budget(view, config.budget)
    bnorm = float(np.linalg.norm(b))
    bt = torch.from_numpy(b.astype(np.float32))
    S: list[int] = []
    rows = torch.zeros(0, view.dim)  # (s, D) the support's trajectories
    x = torch.zeros(0)
    residuals: list[float] = []
    r = b.copy()
    stop, n_iter = "budget", k if max_iterations is None else min(k, max_iterations)
    for _ in range(n_iter):
        if residuals and residuals[-1] / bnorm < config.tol:
            stop = "tolerance"
            break
        scan = view.scan(r, top=1)  # argmax over all valid rows, the support included (positive=True: no abs)
        j = int(scan.top[0])
        if j not in S:
            S.append(j)
            rows = torch.cat([rows, torch.from_numpy(scan.rows[:1])])
        while True:  # least squares on the support from scratch, then drop the most negative weight, repeat
            G = rows @ rows.T + lam * torch.eye(len(S))  # (s, s)
            x = torch.linalg.lstsq(G, (rows @ bt)[:, None]).solution[:, 0]
            if len(S) == 0 or x.min() >= 0:
                break
            drop = int(torch.argmin(x))
            del S[drop]
            rows = torch.cat([rows[:drop], rows[drop + 1 :]])
            if not S:
                break
        if not S:
            stop = "no_progress"
            break
        r = b - (x @ rows).double().numpy()
        residuals.append(float(np.linalg.norm(r)))
    if max_iterations is not None and max_iterations < k and stop == "budget":
        stop = "max_rounds"
    idx, w = np.asarray(S, dtype=np.int64), x.double().numpy()[: len(S)]
    fill = 0
    if stop != "max_rounds" and idx.size < k:  # GradMatch: fill the budget with random rows, weight 1
        rng = np.random.default_rng(config.seed)
        free = np.flatnonzero(view.valid_mask() & ~np.isin(np.arange(view.n_rows), idx))
        extra = rng.choice(free, size=k - idx.size, replace=False)
        fill = extra.size
        idx, w = np.concatenate([idx, extra]), np.concatenate([w, np.ones(fill)])
    seconds = time.perf_counter() - t0
    return Selection(
        "gradmatch_omp",
        idx,
        w,
        np.asarray(residuals),
        bnorm,
        len(residuals),
        view.passes - passes0,
        seconds,
        fill,
        stop,
        dict(iterations=len(residuals), lam=lam),
    )
