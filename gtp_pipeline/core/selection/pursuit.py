"""Gradient Trajectory Pursuit (GTP, arXiv 2410.16710; reconstruction: docs/ALGORITHMS.md §2.2-§2.5) and OMP baselines.

Problem (budget form of the L0-regularized NNLS, §2.2): given trajectories A = [a_1..a_N] (unit columns, see
trajectory.py) and a target trajectory b, find S, |S| <= k, and w >= 0 minimizing ||A_S w - b||. Every method takes a
`Trajectories` view (in memory, streamed from the stores, or sharded over processes) and returns a `Selection`.

Implementations:
- `gtp`: the pursuit of this project (below).
- `cholesky_omp`: non-negative OMP, one atom per pass, support factor updated incrementally (nnls.CholeskySupport),
  weights always the exact NNLS solution. The quality reference: GTP must end within 5% of its residual.
- `gradmatch_omp`: GradMatch's OMP exactly as docs/ALGORITHMS.md §2.3 (cords `OrthogonalMP_REG_Parallel_V1`): one atom per
  pass, Gram and least squares re-solved from scratch each iteration, negatives dropped one by one, random fill with
  weight 1. The "1717x" baseline.
- `less_topk`, `random_k` (selection_baselines.py): no fit.

How GTP gets OMP's quality in a handful of passes (the measurements behind each choice: docs/BENCHMARKS.md, "Why
the pursuit is built this way"). OMP spends one pass over the store per atom because every re-fit changes all correlations c = A^T r. But one pass
yields all N correlations, and the best m of them (the "pool": CoSaMP's identification step with m ~ 2k, Needell &
Tropp 2009) hold most of the next OMP picks. With the pool's rows in memory, OMP restricted to the pool needs no pass:
its correlations with the current residual are h_P - C w (h_P = A_P^T b, C = A_P^T A_S), one (m x |S|) GEMV per
atom; the columns of the pool Gram A_P^T A_P are computed on demand, 64 at a time, for the atoms most likely picked
next (a round accepts a fraction of its pool). So each round runs exact non-negative OMP inside the pool, one atom at
a time: an accepted atom appends a row to the support's Cholesky factor (two O(|S|^2) triangular solves, closed-form
least-squares update); when that would make a weight negative, Lawson-Hanson's inner loop removes the blocking atom
with an O(|S|^2) rank-one update of the factor (nnls.CholeskySupport). The weights are therefore always the exact
NNLS solution on the support, and every support atom has zero correlation with the residual: duplicates of a picked
atom are never picked (docs/ALGORITHMS.md §2.2). This is batch identification (gOMP, Wang, Kwon & Shim 2012) without
gOMP's blind batch add: a pool atom explained by an earlier pick loses its correlation before it is considered.
Plain non-negative CoSaMP (add the top 2k, NNLS on the union, keep the k largest) needs several iterations of an
NNLS on up to 3k columns to come as close to OMP, and is far slower for it.
The approximation: atoms outside the pool are not re-scored between passes. At the pass their correlations were at
most tau (the (m+1)-th best); a round accepts while the pool's best correlation exceeds gamma * tau (`accept_ratio`)
and then makes a new pass. gamma = 1 would be exact if outside correlations never grew; they mostly shrink with the
residual, so a smaller gamma trades exactness for passes; a larger pool does not help (it accepts more per round).
Then `swap_rounds` refinement rounds (CoSaMP's other half, as in OMP with replacement): a pass proposes m_s = k/10
atoms, the pool OMP grows the support to k + m_s, and the m_s atoms of least removal cost w_i^2 / (G^-1)_ii (the
exact increase of ||r||^2 for least squares, Couvreur & Bresler 2000; CoSaMP prunes by |w_i|) are removed at once,
then NNLS is re-fit. A round is kept only if the residual went down (best iterate: the reported residual never
increases). One swap round of k/10 closes most of the remaining gap to OMP's residual for one more pass.
Memory: k + m_s support rows, the pool (m rows) and its Gram columns; the store itself is only ever streamed.

Saturation and fill. When the target lies far outside the cone of the pool's trajectories, the non-negative fit stops
improving after a few atoms whatever k is: at the NNLS optimum no unchosen atom has a positive correlation with the
residual. The rest of the budget is then "fill" (weight 0), ranked by correlation with the target itself (`fill="target"`,
LESS's score, the default) or with that residual, as OMP would (`fill="residual"`). Every residual score is <= 0
there, so the residual ranking is close to arbitrary; the target ranking measured better at budgets up to 5% on three
targets, the residual one at 20% of a small pool (docs/RESULTS.md). Either way a fill atom whose cosine with anything
already chosen is >= `fill_max_cosine` is skipped: the selection stays free of near-duplicates as a whole, not only
in its fitted part (`fill_rows`).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from gtp_pipeline.core.features.trajectory import Scan, Trajectories
from gtp_pipeline.core.selection.nnls import CholeskySupport, shifted_segments

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PursuitConfig:
    """Knobs of GTP and the OMP baselines (docs/ALGORITHMS.md §2.6). Defaults were measured with bench/pursuit.py."""

    budget: int = 1000  # k: |S| <= k, the L0 budget (docs/ALGORITHMS.md §2.2); 1% of a 100k pool
    atoms_per_round: int = 0  # m: pool taken per pass; 0 = auto, pool_factor x (atoms still to add)
    pool_factor: float = 2.0  # auto m = 2 (k - |S|), CoSaMP's 2k: larger costs Gram GEMMs, smaller costs passes
    min_atoms_per_round: int = 64  # floor of auto m, so the last rounds of a nearly full support are not starved
    accept_ratio: float = 0.5  # gamma: accept pool atoms while corr > gamma * tau (trade-off: docs/BENCHMARKS.md)
    max_rounds: int = 50  # cap on passes; CoSaMP-style pursuits converge in 10-30 (docs/ALGORITHMS.md §2.6)
    swap_rounds: int = 1  # refinement passes after |S| = k (propose, grow to k + m_s, prune back to k)
    swap_fraction: float = 0.1  # m_s = 0.1 k atoms per swap round (trade-off: docs/BENCHMARKS.md)
    tol: float = 1e-4  # stop when ||r|| / ||b|| <= tol: GradMatch's default (docs/ALGORITHMS.md §2.3)
    max_omp_iterations: int = 0  # cap on OMP baselines' passes; 0 = 2 k (NNLS drops can need more than k)
    seed: int = 0  # random fill of gradmatch_omp and random_k; nothing in GTP is random
    fill: str = "target"  # fill ranked by correlation with the "target" (LESS's score) or the final "residual" (OMP)
    fill_max_cosine: float = (
        0.95  # a fill atom this aligned with a chosen one is a near-duplicate: skipped (>= 1: off)
    )

    def __post_init__(self):
        if self.fill not in ("target", "residual"):
            raise ValueError(f"fill must be 'target' or 'residual', got {self.fill!r}")


@dataclass(frozen=True)
class Selection:
    """A selected subset: store rows, their weights, and how the pursuit got there."""

    method: str
    indices: np.ndarray  # (k,) int64 store rows: the support in order of acceptance, then any fill
    weights: np.ndarray  # (k,) float64 >= 0 fitted weights (0 for GTP/OMP fill, 1 for GradMatch's random fill)
    residuals: np.ndarray  # (rounds,) float64 ||b - A_S w|| after each round (pass); never increasing for GTP
    target_norm: float  # ||b||
    rounds: int
    passes: int  # full passes over the store
    seconds: float
    fill: int  # atoms added after the residual stopped improving (zero-weight or random)
    stop_reason: str  # budget | tolerance | no_progress | max_rounds | ranked
    info: dict = field(default_factory=dict)

    @property
    def residual(self) -> float:
        return float(self.residuals[-1]) if self.residuals.size else float("nan")

    @property
    def relative_residual(self) -> float:
        return self.residual / self.target_norm


def check_target(view: Trajectories, target: np.ndarray) -> np.ndarray:
    b = np.asarray(target, dtype=np.float64).reshape(-1)
    if b.shape != (view.dim,):
        raise ValueError(f"target has dimension {b.size} but the candidate trajectories have {view.dim}")
    if not np.isfinite(b).all():
        raise ValueError("target trajectory has non-finite entries")
    if not np.linalg.norm(b) > 0:
        raise ValueError("target trajectory is zero: there is nothing to match")
    return b


def check_budget(view: Trajectories, k: int) -> int:
    n_valid = int(view.valid_mask().sum())
    if not isinstance(k, int | np.integer) or not 0 < k <= n_valid:
        raise ValueError(f"budget k must be an integer in 1..{n_valid} (valid rows of {view.n_rows}), got {k!r}")
    return int(k)


class _PoolGram:
    """Rows of the pool Gram A_P A_P^T, computed on demand a block at a time (the likeliest next picks first).

    A round accepts a fraction of its pool, so the full (M x M) Gram would be mostly wasted GEMM work.
    """

    def __init__(self, Rt: torch.Tensor, block: int = 64):
        self.Rt, self.block = Rt, block  # (M, D) the pool's rows
        self.at = np.full(Rt.shape[0], -1, dtype=np.int64)  # (M,) row of each pool atom in buf, -1 = not yet
        self.buf = torch.empty(min(Rt.shape[0], 4 * block), Rt.shape[0])  # (rows, M)
        self.n = 0

    def row(self, p: int, c: np.ndarray, floor: float) -> torch.Tensor:
        """(M,) <a_p, a_q> for every pool atom q. Rows are computed alongside p's for the atoms of highest c still
        above `floor` (below it an atom is out of the round, unless later picks raise its correlation again)."""
        if self.at[p] < 0:
            todo = np.flatnonzero((self.at < 0) & (c > floor))
            todo = todo[np.argsort(-c[todo], kind="stable")[: self.block]]
            if p not in todo:
                todo = np.append(todo[: self.block - 1], p)
            if self.n + todo.size > self.buf.shape[0]:
                grown = torch.empty(max(2 * self.buf.shape[0], self.n + todo.size), self.buf.shape[1])
                grown[: self.n] = self.buf[: self.n]
                self.buf = grown
            self.buf[self.n : self.n + todo.size] = self.Rt[torch.from_numpy(todo)] @ self.Rt.T  # (B, M)
            self.at[todo] = np.arange(self.n, self.n + todo.size)
            self.n += todo.size
        return self.buf[self.at[p]]


def _grow(sup: CholeskySupport, scan: Scan, b: np.ndarray, limit: int, m: int, gamma: float) -> int:
    """Non-negative OMP inside the scanned pool until |S| = limit or the pool's best correlation <= gamma * tau."""
    pool, rows = scan.top[:m], scan.rows[:m]  # (M,), (M, D)
    tau = float(scan.scores[m]) if scan.top.size > m else 0.0  # best correlation outside the pool at the pass
    keep = scan.scores[:m] > 0
    if not keep.all():  # (a copy of the pool's rows: only when some have no positive correlation)
        pool, rows = pool[keep], rows[keep]
    M = pool.size
    if M == 0:
        return 0
    Rt = torch.from_numpy(rows)
    h = (Rt @ torch.from_numpy(b.astype(np.float32))).double().numpy()  # (M,) <a_p, b>
    sq = (Rt * Rt).sum(dim=1).double().numpy()  # (M,) |a_p|^2
    gram = _PoolGram(Rt)
    CT = torch.empty(max(limit, sup.s) + 1, M)  # (|S|, M) cross Gram A_S A_P^T, row i = support position i
    if sup.s:
        CT[: sup.s] = sup.cross(Rt)
    taken, banned = np.zeros(M, dtype=bool), np.zeros(M, dtype=bool)
    floor = max(gamma * tau, 1e-7 * float(np.linalg.norm(b)))
    added = 0
    while sup.s < limit:
        s = sup.s
        c = h - torch.mv(CT[:s].T, torch.from_numpy(sup.w[:s].astype(np.float32))).numpy() if s else h.copy()
        c[taken | banned] = -np.inf  # (M,) pool correlations with the current residual
        p = int(np.argmax(c))
        if c[p] <= floor:
            break
        ok = sup.add(int(pool[p]), rows[p], CT[:s, p].double().numpy(), float(sq[p]), float(h[p]))
        if sup.last_dropped.size:  # NNLS zeroed some atoms: drop their rows, they may come back later
            for src, dst in shifted_segments(sup.last_dropped[sup.last_dropped < s], s):
                CT[dst] = CT[src].clone()
            taken[np.isin(pool, sup.last_dropped_ids)] = False
        if not ok:
            banned[p] = True  # numerically in span(A_S) or no positive weight: never worth a second look this round
            continue
        CT[sup.s - 1] = gram.row(p, c, floor)
        taken[p] = True
        added += 1
    return added


def _prune(sup: CholeskySupport, k: int) -> None:
    """Back to |S| = k: remove the |S| - k atoms of least removal cost at once, then re-fit NNLS.

    Removing in halving batches, re-scoring after each, is a little closer to OMP and several times dearer (each
    batch costs a factorization and an NNLS re-fit of the whole support): docs/BENCHMARKS.md.
    """
    if sup.s > k:
        cost = sup.w[: sup.s] ** 2 / sup.inverse_diagonal()  # (s,) increase of ||r||^2 if atom i alone is removed
        sup.remove(np.argsort(cost, kind="stable")[: sup.s - k])


def fill_rows(
    view: Trajectories, R: np.ndarray, chosen: np.ndarray, n: int, max_cosine: float = 0.95
) -> tuple[np.ndarray, int]:
    """n more rows, best correlated with R first, none with cosine >= max_cosine to a chosen row or an earlier fill.

    A joint selection de-duplicates all of itself: the fitted support cannot hold near-duplicates (one of them has
    zero correlation with the residual), and this keeps the fill from bringing them back. Trajectories have unit
    norm, so a dot product is the cosine. If the pool runs out of rows that are not near-duplicates, the best of
    the rest complete the budget; the second value counts them.
    """
    chosen = np.asarray(chosen, dtype=np.int64)
    if n <= 0:
        return np.zeros(0, dtype=np.int64), 0
    if max_cosine >= 1:
        return view.scan(R, top=n, exclude=chosen, with_rows=False).top, 0
    kept = np.empty((chosen.size + n, view.dim), dtype=np.float32)  # rows a fill candidate must not repeat
    kept[: chosen.size] = view.gather(chosen) if chosen.size else kept[:0]
    s, picked, skipped, top = chosen.size, [], [], 2 * n + 16
    while len(picked) < n:
        scan = view.scan(R, top=top, exclude=np.concatenate([chosen, picked, skipped]).astype(np.int64))
        for i, row in zip(scan.top, scan.rows, strict=True):
            if s and float((kept[:s] @ row).max()) >= max_cosine:
                skipped.append(int(i))
                continue
            kept[s], s = row, s + 1
            picked.append(int(i))
            if len(picked) == n:
                break
        if scan.top.size < top:  # every remaining row was seen: near-duplicates complete the budget
            rest = np.asarray(skipped[: n - len(picked)], dtype=np.int64)
            return np.concatenate([np.asarray(picked, dtype=np.int64), rest]), rest.size
        top *= 2
    return np.asarray(picked, dtype=np.int64), 0


def finish(
    method: str,
    view: Trajectories,
    sup: CholeskySupport,
    b: np.ndarray,
    k: int,
    residuals: list[float],
    rounds: int,
    passes0: int,
    t0: float,
    stop: str,
    info: dict,
    config: PursuitConfig,
) -> Selection:
    """Fill an under-full support (weight 0) with the atoms config.fill ranks first, skipping near-duplicates."""
    idx, w = sup.indices, sup.weights
    fill = k - idx.size
    if fill > 0:
        ranking = b if config.fill == "target" else sup.residual(b)
        extra, dup = fill_rows(view, ranking, idx, fill, config.fill_max_cosine)
        idx, w = np.concatenate([idx, extra]), np.concatenate([w, np.zeros(extra.size)])
        info = {**info, "fill_near_duplicates": dup, "fill_ranked_by": config.fill}
        logger.info(
            "%s: support ended at %d < k=%d (%s); filled %d atoms with weight 0 by correlation with the %s",
            method,
            sup.s,
            k,
            stop,
            fill,
            config.fill,
        )
    seconds = time.perf_counter() - t0
    return Selection(
        method,
        idx,
        w,
        np.asarray(residuals),
        float(np.linalg.norm(b)),
        rounds,
        view.passes - passes0,
        seconds,
        max(fill, 0),
        stop,
        info,
    )


def gtp(view: Trajectories, target: np.ndarray, config: PursuitConfig = PursuitConfig()) -> Selection:
    """Gradient Trajectory Pursuit: pool identification per pass, exact NN-OMP inside the pool, swap refinement."""
    t0, passes0 = time.perf_counter(), view.passes
    b, k = check_target(view, target), check_budget(view, config.budget)
    bnorm = float(np.linalg.norm(b))
    m_swap = max(1, math.ceil(config.swap_fraction * k))
    sup = CholeskySupport(view.dim)
    residuals: list[float] = []
    rounds, swaps, stop = 0, 0, "budget"
    accepted: list[int] = []
    r = b.copy()
    while True:
        if sup.s >= k and swaps >= config.swap_rounds:
            break
        if rounds >= config.max_rounds:
            stop = "max_rounds"
            break
        if sup.s < k:  # growth round
            need = k - sup.s
            m = config.atoms_per_round or max(config.min_atoms_per_round, math.ceil(config.pool_factor * need))
            scan = view.scan(r, top=m + 1, exclude=sup.indices)
            rounds += 1
            added = _grow(sup, scan, b, k, m, config.accept_ratio)
            accepted.append(added)
            r = sup.residual(b)
            res = float(np.linalg.norm(r))
            residuals.append(min(res, residuals[-1]) if residuals else res)
            logger.debug("gtp round %d: pool %d, accepted %d, |S|=%d, ||r||=%.6g", rounds, m, added, sup.s, res)
            if res <= config.tol * bnorm:
                stop = "tolerance"
                break
            if added == 0 or (len(residuals) > 1 and residuals[-2] - res < config.tol * bnorm):
                stop = "no_progress"  # the non-negative fit is saturated: the rest of the budget is fill
                break
            continue
        # swap round: |S| = k; propose m_swap atoms, grow to k + m_swap, prune back to k; keep only if better
        snap, before = sup.state(), residuals[-1]
        scan = view.scan(r, top=m_swap + 1, exclude=sup.indices)
        rounds += 1
        swaps += 1
        added = _grow(sup, scan, b, k + m_swap, m_swap, config.accept_ratio)
        _prune(sup, k)
        r_new = sup.residual(b)
        res = float(np.linalg.norm(r_new))
        if res < before and sup.s <= k:
            r = r_new
            residuals.append(res)
            logger.debug("gtp swap %d: %d proposed, ||r|| %.6g -> %.6g", swaps, added, before, res)
        else:
            sup.restore(snap)
            residuals.append(before)
            swaps = config.swap_rounds  # no gain: further swaps from the same state would propose the same atoms
    info = dict(accepted_per_round=accepted, swaps=swaps)
    return finish("gtp", view, sup, b, k, residuals, rounds, passes0, t0, stop, info, config)
