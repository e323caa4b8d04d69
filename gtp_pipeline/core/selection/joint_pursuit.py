"""Joint GTP: several target trajectories matched at once with one shared support (simultaneous NNLS).

Problem: targets B = [b_1..b_J] (each dev example's trajectory, or each subtask's mean), find S, |S| <= k, and
W >= 0 (|S| x J) minimizing sum_j ||A_S w_j - b_j||^2. A single target far outside the cone of the pool is fitted
by a handful of atoms and the rest of the budget is fill (pursuit.py); J targets that point different ways each
need their own atoms, so the fitted part of the budget grows with J. Each target keeps its own non-negative
weights, and an atom stays in S while any target gives it a positive weight.

The greedy step is simultaneous OMP (Tropp, Gilbert & Strauss 2006) made non-negative: an atom's score is
sum_j max(0, <a, r_j>)^2, the decrease of the total squared residual it could bring in one step. As in `gtp`,
one pass scores every atom and keeps the best m as a pool; inside the pool atoms are added one at a time, each
followed by an exact NNLS re-fit of every target on the support (Lawson-Hanson on the support Gram, warm-started),
until the pool's best score falls to `accept_ratio` times the best score left outside it. An atom no target
uses is dropped and may return in a later pass. Near-duplicates stay out for the same reason as in `gtp`: once
one copy is fitted, every residual has non-positive correlation with the other.

Cost per added atom: J warm-started NNLS solves on an |S| x |S| Gram. That suits budgets of hundreds and J of
tens (the experiments this exists for); the single-target `gtp` is the one built for k in the thousands.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np

from gtp_pipeline.core.features.trajectory import Trajectories
from gtp_pipeline.core.selection.nnls import nnls_gram
from gtp_pipeline.core.selection.pursuit import PursuitConfig, Selection, check_budget, check_target, fill_rows

logger = logging.getLogger(__name__)


def check_targets(view: Trajectories, targets: np.ndarray) -> np.ndarray:
    """(J, D) float64 targets, each checked as a single target is."""
    B = np.atleast_2d(np.asarray(targets, dtype=np.float64))
    if B.ndim != 2 or B.shape[0] == 0:
        raise ValueError(f"targets must be a (J, D) matrix with J >= 1, got shape {np.shape(targets)}")
    return np.stack([check_target(view, b) for b in B])


class _JointSupport:
    """Support rows, their Gram and cross products with the targets, and the exact per-target NNLS weights."""

    def __init__(self, B: np.ndarray):
        self.B = B  # (J, D)
        self.idx: list[int] = []
        self.rows = np.zeros((0, B.shape[1]))  # (s, D) float64
        self.G = np.zeros((0, 0))  # (s, s)
        self.H = np.zeros((0, B.shape[0]))  # (s, J) A_S^T B
        self.W = np.zeros((0, B.shape[0]))  # (s, J) >= 0

    @property
    def s(self) -> int:
        return len(self.idx)

    def add(self, i: int, row: np.ndarray) -> None:
        g = self.rows @ row  # (s,)
        self.G = np.block([[self.G, g[:, None]], [g[None, :], np.array([[row @ row]])]])
        self.H = np.vstack([self.H, self.B @ row])
        self.W = np.vstack([self.W, np.zeros(self.B.shape[0])])
        self.rows = np.vstack([self.rows, row])
        self.idx.append(int(i))

    def refit(self) -> np.ndarray:
        """Re-solve every target's NNLS; drop atoms no target uses; return the dropped store rows."""
        self.W = np.stack([nnls_gram(self.G, self.H[:, j], w0=self.W[:, j]) for j in range(self.H.shape[1])], axis=1)
        used = self.W.max(axis=1) > 0
        dropped = np.asarray(self.idx, dtype=np.int64)[~used]
        if dropped.size:
            self.idx = [i for i, u in zip(self.idx, used, strict=True) if u]
            self.rows, self.G, self.H, self.W = self.rows[used], self.G[np.ix_(used, used)], self.H[used], self.W[used]
        return dropped

    def residuals(self) -> np.ndarray:
        """(J, D) b_j - A_S w_j."""
        return self.B - self.W.T @ self.rows

    def correlations(self, rows: np.ndarray, h: np.ndarray) -> np.ndarray:
        """(m, J) <a_p, r_j> for pool rows (m, D) with h = rows @ B^T, without forming the residuals."""
        return h - (rows @ self.rows.T) @ self.W if self.s else h.copy()


def _scores(corr: np.ndarray) -> np.ndarray:
    return (np.maximum(corr, 0.0) ** 2).sum(axis=1)


def joint_gtp(view: Trajectories, targets: np.ndarray, config: PursuitConfig = PursuitConfig()) -> Selection:
    """Several targets, one support: the selection's weights are each atom's mean weight over the targets."""
    t0, passes0 = time.perf_counter(), view.passes
    B, k = check_targets(view, targets), check_budget(view, config.budget)
    norm = float(np.linalg.norm(B))
    sup = _JointSupport(B)
    residuals: list[float] = []
    accepted: list[int] = []
    rounds, stop = 0, "budget"
    floor = 1e-14 * norm**2
    while sup.s < k:
        if rounds >= config.max_rounds:
            stop = "max_rounds"
            break
        need = k - sup.s
        m = config.atoms_per_round or max(config.min_atoms_per_round, math.ceil(config.pool_factor * need))
        corr = view.correlate(sup.residuals().T.astype(np.float32)).astype(np.float64)  # (N, J), one pass
        score = np.where(view.valid_mask(), _scores(corr), -np.inf)
        score[np.asarray(sup.idx, dtype=np.int64)] = -np.inf
        order = np.argsort(-score, kind="stable")
        pool = order[:m][score[order[:m]] > floor]
        tau = float(score[order[m]]) if order.size > m and np.isfinite(score[order[m]]) else 0.0
        rounds += 1
        added = _grow(sup, view, pool, k, max(config.accept_ratio**2 * tau, floor))
        accepted.append(added)
        res = float(np.linalg.norm(sup.residuals()))
        residuals.append(min(res, residuals[-1]) if residuals else res)
        logger.debug(
            "joint gtp round %d: pool %d, accepted %d, |S|=%d, ||R||=%.6g", rounds, pool.size, added, sup.s, res
        )
        if res <= config.tol * norm:
            stop = "tolerance"
            break
        if added == 0 or (len(residuals) > 1 and residuals[-2] - res < config.tol * norm):
            stop = "no_progress"
            break
    idx = np.asarray(sup.idx, dtype=np.int64)
    w = sup.W.mean(axis=1)
    fill = k - idx.size
    info = dict(accepted_per_round=accepted, targets=B.shape[0], fill_near_duplicates=0, weights_per_target=sup.W)
    if fill > 0:
        extra, dup = fill_rows(view, B.mean(axis=0), idx, fill, config.fill_max_cosine)
        idx, w = np.concatenate([idx, extra]), np.concatenate([w, np.zeros(extra.size)])
        info.update(fill_near_duplicates=dup, fill_ranked_by="target")
        logger.info("joint gtp: support ended at %d < k=%d (%s); filled %d atoms with weight 0", sup.s, k, stop, fill)
    return Selection(
        "joint_gtp",
        idx,
        w,
        np.asarray(residuals),
        norm,
        rounds,
        view.passes - passes0,
        time.perf_counter() - t0,
        max(fill, 0),
        stop,
        info,
    )


def _grow(sup: _JointSupport, view: Trajectories, pool: np.ndarray, limit: int, floor: float) -> int:
    """Add pool atoms one at a time by joint score, re-fitting after each, until |S| = limit or no score > floor.
    Returns how many atoms were added (a re-fit may drop some of them, or earlier ones, again)."""
    if pool.size == 0:
        return 0
    rows = view.gather(pool).astype(np.float64)  # (M, D)
    h = rows @ sup.B.T  # (M, J)
    tried = np.zeros(pool.size, dtype=bool)  # added this round (whether or not a re-fit kept it)
    added = 0
    while sup.s < limit:
        score = np.where(tried, -np.inf, _scores(sup.correlations(rows, h)))
        p = int(np.argmax(score))
        if score[p] <= floor:
            break
        sup.add(int(pool[p]), rows[p])
        tried[p] = True
        sup.refit()
        added += 1
    return added
