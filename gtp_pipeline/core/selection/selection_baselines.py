"""Selections without a joint fit, on the same `Trajectories` interface as the pursuits, and a common scorer.

Implementations:
- `less_topk`: LESS's selection (docs/ALGORITHMS.md §1.1 step 3): score_i = max over subtasks j of the mean LR-weighted
  cosine between a_i and subtask j's target rows, which equals <a_i, b_j> for the subtask's mean target trajectory
  b_j (trajectory.build_target); the k best, independently. Exact duplicates get equal scores and are all taken:
  the redundancy GTP removes. One pass (a GEMM against all J subtask targets at once).
- `random_k`: k valid rows uniformly without replacement, seeded.
- `evaluate_selection`: the NNLS residual of any selected set against a target, the common quality measure.
"""

from __future__ import annotations

import time

import numpy as np

from gtp_pipeline.core.features.target_trajectory import TargetTrajectory
from gtp_pipeline.core.features.trajectory import Trajectories
from gtp_pipeline.core.selection.nnls import NNLSError, nnls_gram
from gtp_pipeline.core.selection.pursuit import PursuitConfig, Selection, check_budget, check_target


def less_topk(
    view: Trajectories, targets: TargetTrajectory | np.ndarray, config: PursuitConfig = PursuitConfig()
) -> Selection:
    """LESS top-k: the k rows with the largest max_j <a_i, b_j>; `targets` is a TargetTrajectory or (J, D) / (D,)."""
    t0, passes0 = time.perf_counter(), view.passes
    B = targets.per_subtask if isinstance(targets, TargetTrajectory) else np.atleast_2d(np.asarray(targets))  # (J, D)
    for b in B:
        check_target(view, b)
    k = check_budget(view, config.budget)
    scan = view.scan(B.T, top=k, with_rows=False)
    return Selection(
        "less_topk",
        scan.top,
        np.ones(scan.top.size),
        np.zeros(0),
        float(np.linalg.norm(B.mean(axis=0))),
        0,
        view.passes - passes0,
        time.perf_counter() - t0,
        0,
        "ranked",
        dict(scores=scan.scores),
    )


def random_k(view: Trajectories, config: PursuitConfig = PursuitConfig()) -> Selection:
    """k valid rows uniformly at random without replacement (seed = config.seed), weight 1."""
    t0 = time.perf_counter()
    k = check_budget(view, config.budget)
    rows = np.random.default_rng(config.seed).choice(np.flatnonzero(view.valid_mask()), size=k, replace=False)
    return Selection(
        "random",
        np.sort(rows).astype(np.int64),
        np.ones(k),
        np.zeros(0),
        float("nan"),
        0,
        0,
        time.perf_counter() - t0,
        0,
        "ranked",
    )


def evaluate_selection(
    view: Trajectories, indices: np.ndarray, target: np.ndarray, warm_start: np.ndarray | None = None
) -> tuple[np.ndarray, float]:
    """NNLS weights (s,) of b on the selected rows and the residual ||b - A_S w||: a method-independent score.

    `warm_start` (s,), e.g. the selection's own weights, only speeds up the NNLS; the result does not depend on it.
    """
    b = check_target(view, target)
    indices = np.asarray(indices, dtype=np.int64)
    if indices.size == 0:
        raise NNLSError("empty support: a selection needs at least one row to be evaluated")
    if np.unique(indices).size != indices.size:
        raise ValueError("selection has repeated rows")
    rows = view.gather(indices).astype(np.float64)  # (s, D)
    w = nnls_gram(rows @ rows.T, rows @ b, warm_start)
    return w, float(np.linalg.norm(b - w @ rows))
