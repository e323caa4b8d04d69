"""Non-negative least squares in Gram form, the re-fit of every pursuit (docs/ALGORITHMS.md §2.4, "NNLS on <= 3k columns").

    min_{w >= 0}  1/2 w^T G w - h^T w        G = A_S^T A_S (s x s),  h = A_S^T b (s,)

is min ||A_S w - b||^2 / 2 up to a constant, but costs O(s^2) memory instead of O(s D) once G is known.

Implementations:
- `nnls_gram`: Lawson & Hanson's active-set algorithm (Solving Least Squares Problems, 1974, ch. 23; the
  algorithm behind scipy.optimize.nnls) on (G, h), warm-startable from any feasible w. Each passive-set solve is
  one Cholesky of G_PP. This is the reference; tests compare it with scipy.optimize.nnls.
- `CholeskySupport`: the incremental form the pursuits use. It holds a support, its fp32 trajectories, its Gram
  in float64 and the Cholesky factor L of that Gram. Adding an atom appends one row to L (two triangular solves,
  O(s^2)) and updates the least-squares weights in closed form. Only when a weight would turn negative does it run
  Lawson-Hanson's inner loop: step from the old (feasible) weights towards the least-squares solution, remove the
  atom that reaches zero with an O(s^2) rank-one update of the trailing factor, re-solve, repeat. So the weights are
  always the exact NNLS solution on the support (KKT: every active atom has zero correlation with the residual,
  which is what de-duplicates, docs/ALGORITHMS.md §2.2), at O(s^2) per change instead of an O(s^3) re-solve.
Dense linear algebra goes through torch (MKL, torch.set_num_threads): numpy/scipy's OpenBLAS spawns its own threads,
which on a busy 2-core machine made a 250 x 250 Cholesky take 11 ms instead of 0.4 ms. The exception is the two
triangular solves of every add: scipy's BLAS dtpsv on the packed factor rows, a level-2 routine that OpenBLAS runs on
the calling thread, and that solves on exactly the s rows of a growing factor without copying it.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from scipy.linalg.blas import dtpsv

logger = logging.getLogger(__name__)


class NNLSError(ValueError):
    """Bad input to a non-negative re-fit (shapes, non-finite values, an empty support)."""


def nnls_gram(
    G: np.ndarray, h: np.ndarray, w0: np.ndarray | None = None, tol: float | None = None, max_iter: int | None = None
) -> np.ndarray:
    """Lawson-Hanson NNLS on the normal equations: argmin_{w>=0} 1/2 w^T G w - h^T w.

    Args:
        G: (s, s) symmetric positive semi-definite Gram matrix.
        h: (s,) right-hand side A^T b.
        w0: optional feasible warm start (s,), entries < 0 are clipped; its positive entries seed the passive set.
        tol: a free coordinate enters the passive set while its gradient h - G w exceeds tol (default scales
            with max|h|, like scipy's).
        max_iter: cap on passive-set solves (default 3 s + 10, as scipy).

    Returns:
        (s,) float64 non-negative weights.
    """
    G = np.asarray(G, dtype=np.float64)
    h = np.asarray(h, dtype=np.float64)
    n = h.shape[0]
    if n == 0:
        raise NNLSError("empty support: nothing to re-fit (G is 0 x 0)")
    if G.shape != (n, n):
        raise NNLSError(f"G must be ({n}, {n}) to match h, got {G.shape}")
    if not (np.isfinite(G).all() and np.isfinite(h).all()):
        raise NNLSError("G or h has non-finite entries")
    w = np.zeros(n) if w0 is None else np.maximum(np.asarray(w0, dtype=np.float64), 0.0)
    if w.shape != (n,):
        raise NNLSError(f"warm start must have shape ({n},), got {w.shape}")
    tol = 1e-10 * max(1.0, float(np.abs(h).max())) if tol is None else tol
    max_iter = 3 * n + 10 if max_iter is None else max_iter
    Gt = torch.from_numpy(G)
    passive = w > 0
    solves = 0
    need_inner = bool(passive.any())  # a warm start first has to be made optimal on its own passive set
    while True:
        if not need_inner:
            grad = h - torch.mv(Gt, torch.from_numpy(w)).numpy()  # (s,) > 0: more weight lowers the objective
            grad[passive] = -np.inf
            j = int(np.argmax(grad))
            if grad[j] <= tol:
                return w
            passive[j] = True
        need_inner = False
        while True:  # inner loop: solve on the passive set, step back to feasibility, shrink the set
            solves += 1
            if solves > max_iter:
                raise NNLSError(f"NNLS did not converge in {max_iter} passive-set solves (s={n}); G may be singular")
            idx = np.flatnonzero(passive)
            z = np.zeros(n)
            z[idx] = _solve_spd(G[np.ix_(idx, idx)], h[idx])
            neg = passive & (z <= 0)
            if not neg.any():
                w = z
                break
            alpha = float(np.min(w[neg] / (w[neg] - z[neg])))  # largest step from w towards z that stays >= 0
            w = w + alpha * (z - w)
            passive &= w > 1e-14 * max(1.0, float(w.max()))
            w[~passive] = 0.0


def _solve_spd(G: np.ndarray, h: np.ndarray) -> np.ndarray:
    """G^-1 h by Cholesky; minimum-norm least squares when G is singular (e.g. duplicate atoms in a warm start)."""
    Gt, ht = torch.from_numpy(np.ascontiguousarray(G)), torch.from_numpy(np.ascontiguousarray(h))[:, None]
    L, info = torch.linalg.cholesky_ex(Gt)
    if int(info) == 0:
        return torch.cholesky_solve(ht, L)[:, 0].numpy()
    return torch.linalg.lstsq(Gt, ht, driver="gelsd").solution[:, 0].numpy()


def shifted_segments(gone: np.ndarray, n: int) -> list[tuple[slice, slice]]:
    """(source, destination) slices that close the gaps left by removing sorted positions `gone` from 0..n-1."""
    bounds = np.append(gone, n)
    out = []
    for shift, (a, z) in enumerate(zip(bounds[:-1] + 1, bounds[1:], strict=True), start=1):
        if z > a:
            out.append((slice(int(a), int(z)), slice(int(a) - shift, int(z) - shift)))
    return out


def _packed(i: int) -> int:
    """Offset of row i in a lower triangle packed row after row."""
    return i * (i + 1) // 2


def _capacity(s: int) -> int:
    """Buffer size for a support of s atoms: grows geometrically in steps of 64 (amortized O(1) copies)."""
    return max(64, -(-int(s * 1.25) // 64) * 64)


class CholeskySupport:
    """A growing support S with its rows, Gram G (float64), Cholesky factor L (G = L L^T) and NNLS weights.

    Positions 0..s-1 order the support (the factor's order). The factor is kept twice: dense in a (cap x cap) buffer
    (identity beyond s; the removal update reads it), and packed row after row (`Lp`, row i at offset
    i (i + 1) / 2), which grows by appending and is what every triangular solve reads: BLAS dtpsv on exactly s rows,
    2.4x faster than a LAPACK solve on the padded buffer (a solve on a strided s x s view would copy it, ~10x slower).
    Rows and Gram entries live in slots (`slot[i]`: position i's slot, freed slots reused): removing an atom then
    moves a few small per-position arrays, not (s x D) rows and (s x s) Gram columns, which was half the cost of a
    removal at k=1000.
    """

    def __init__(self, dim: int, capacity: int = 64):
        self.dim, self.s = dim, 0
        self.hi, self.free = 0, []  # slots 0..hi-1 have been used; `free` of them are not in the support now
        self._alloc(_capacity(capacity))  # grows with s (two cap x cap float64 buffers): never the budget upfront
        self._dropped(np.zeros(0, dtype=np.int64))

    def _dropped(self, positions: np.ndarray, ids: np.ndarray | None = None) -> None:
        """Record what the last add/remove/refit removed: positions (old numbering) and their store rows."""
        self.last_dropped = positions
        self.last_dropped_ids = self.idx[positions] if ids is None else ids

    def _alloc(self, cap: int) -> None:
        old = getattr(self, "cap", 0)
        s, hi = self.s, self.hi
        idx, slot = np.zeros(cap, dtype=np.int64), np.zeros(cap, dtype=np.int64)  # (cap,) store row, slot
        h, w = np.zeros(cap), np.zeros(cap)  # (cap,) by position
        L = np.eye(cap)  # (cap, cap) float64 by position
        Lp = np.zeros(cap * (cap + 1) // 2)  # the same rows packed: row i is Lp[i (i+1) / 2 : (i+1) (i+2) / 2]
        rows = np.zeros((cap, self.dim), dtype=np.float32)  # (cap, D) trajectories by slot
        G = np.zeros((cap, cap))  # (cap, cap) float64 Gram by slot
        if old:
            idx[:s], slot[:s], h[:s], w[:s], L[:s, :s] = (
                self.idx[:s],
                self.slot[:s],
                self.h[:s],
                self.w[:s],
                self.L[:s, :s],
            )
            Lp[: _packed(s)] = self.Lp[: _packed(s)]
            rows[:hi], G[:hi, :hi] = self.rows_by_slot[:hi], self.G_by_slot[:hi, :hi]
        self.cap, self.idx, self.slot, self.h, self.w, self.L, self.Lp = cap, idx, slot, h, w, L, Lp
        self.rows_by_slot, self.G_by_slot = rows, G
        self._Lt = torch.from_numpy(L)  # shares memory: the removal update and inverse_diagonal work on it in torch
        self._scratch = torch.empty(64 * cap, dtype=torch.float64)  # the factor update's work area

    def _new_slot(self) -> int:
        if self.free:
            return self.free.pop()
        self.hi += 1
        return self.hi - 1

    # --- views ----------------------------------------------------------------------------------
    @property
    def indices(self) -> np.ndarray:
        return self.idx[: self.s].copy()

    @property
    def weights(self) -> np.ndarray:
        return self.w[: self.s].copy()

    def gram(self) -> np.ndarray:
        """(s, s) float64 Gram of the support in position order (a copy)."""
        live = self.slot[: self.s]
        return self.G_by_slot[np.ix_(live, live)]

    def cross(self, X: torch.Tensor) -> torch.Tensor:
        """(s, M) float32 A_S X^T for X (M, D): <support atom i, row q of X>, in position order."""
        prod = torch.from_numpy(self.rows_by_slot[: self.hi]) @ X.T  # (hi, M): free slots cost a little, no gather
        return prod[torch.from_numpy(self.slot[: self.s])]

    def residual(self, b: np.ndarray) -> np.ndarray:
        """(D,) float64 b - A_S w; the product in fp32 (the rows are fp32 anyway)."""
        w = np.zeros(self.hi, dtype=np.float32)  # (hi,) weights by slot, 0 for free slots
        w[self.slot[: self.s]] = self.w[: self.s]
        fit = torch.mv(torch.from_numpy(self.rows_by_slot[: self.hi]).T, torch.from_numpy(w))  # (D,)
        return np.asarray(b, dtype=np.float64) - fit.double().numpy()

    # --- growth ---------------------------------------------------------------------------------
    def add(self, j: int, row: np.ndarray, g: np.ndarray, gjj: float, hj: float) -> bool:
        """Add atom j (its row, g = A_S^T a_j, gjj = |a_j|^2, hj = <a_j, b>) and re-fit the NNLS weights.

        Returns False when a_j is numerically in the span of the support or would not get a positive weight. Either
        way `last_dropped` lists positions (numbering: the s old atoms, then a_j at s) the re-fit removed.
        """
        s = self.s
        self._dropped(np.zeros(0, dtype=np.int64))
        if s + 1 > self.cap:
            self._alloc(_capacity(s + 1))
        g = np.asarray(g, dtype=np.float64)
        lvec = self._forward(g)  # (s,) L^{-1} g
        d2 = gjj - float(lvec @ lvec)  # squared norm of a_j's part orthogonal to span(A_S)
        if d2 <= 1e-9 * gjj:
            return False
        u = self._backward(lvec)  # (s,) G_SS^{-1} g
        cj = hj - float(g @ self.w[:s])  # a_j's correlation with the current residual
        alpha = cj / d2  # its least-squares weight once added (Schur complement)
        if alpha <= 0:
            return False
        new_w = self.w[:s] - alpha * u  # (s,) the other weights after the least-squares update
        slot, live = self._new_slot(), self.slot[:s]
        self.idx[s], self.slot[s], self.h[s], self.rows_by_slot[slot] = j, slot, hj, row
        self.G_by_slot[slot, live], self.G_by_slot[live, slot], self.G_by_slot[slot, slot] = g, g, gjj
        self.L[s, :s], self.L[s, s] = lvec, np.sqrt(d2)
        self.Lp[_packed(s) : _packed(s) + s], self.Lp[_packed(s) + s] = lvec, np.sqrt(d2)
        self.s = s + 1
        if new_w.size == 0 or new_w.min() >= 0:
            self.w[:s], self.w[s] = new_w, alpha
            return True
        # A weight would go negative. Lawson-Hanson's inner loop, incrementally: walk from the feasible point
        # [w, 0] towards the least-squares solution z, drop the atom that hits zero first, re-solve, repeat.
        w, z = np.append(self.w[:s], 0.0), np.append(new_w, alpha)  # (s+1,) each
        ids = self.idx[: s + 1].copy()
        alive = np.ones(s + 1, dtype=bool)  # (s+1,) pre-drop positions still in the support
        while (z <= 0).any():
            neg = np.flatnonzero(z <= 0)
            ratios = w[neg] / (w[neg] - z[neg])
            step = float(ratios.min())
            w = w + step * (z - w)
            gone = np.union1d(np.flatnonzero(w <= 1e-14 * max(1.0, float(w.max()))), neg[np.argmin(ratios)])
            self._compact(gone)
            alive[np.flatnonzero(alive)[gone]] = False
            w = np.delete(w, gone)
            z = self._solve(self.h[: self.s])
        self.w[: self.s] = z
        self._dropped(np.flatnonzero(~alive), ids[~alive])
        return bool(alive[s])  # False: the new atom itself was dropped (degenerate numerics)

    def _forward(self, x: np.ndarray) -> np.ndarray:
        """(s,) L^{-1} x for x (s,) (BLAS dtpsv on the packed rows: column-major packed upper L^T, transposed)."""
        return dtpsv(self.s, self.Lp, x, lower=0, trans=1) if self.s else np.zeros(0)

    def _backward(self, y: np.ndarray) -> np.ndarray:
        """(s,) L^{-T} y for y (s,)."""
        return dtpsv(self.s, self.Lp, y, lower=0, trans=0) if self.s else np.zeros(0)

    def _solve(self, rhs: np.ndarray) -> np.ndarray:
        """(s,) G_SS^{-1} rhs with the current factor."""
        return self._backward(self._forward(np.asarray(rhs, dtype=np.float64)))

    def _pack(self, start: int) -> None:
        """Copy the dense factor's rows start..s-1 into the packed rows (a row at a time: 2x faster than a mask)."""
        L, Lp = self.L, self.Lp
        for i in range(start, self.s):
            o = _packed(i)
            Lp[o : o + i + 1] = L[i, : i + 1]

    def state(self) -> dict:
        """A copy of the support's state, for `restore`."""
        s, hi = self.s, self.hi
        return dict(
            s=s,
            hi=hi,
            free=list(self.free),
            idx=self.idx[:s].copy(),
            slot=self.slot[:s].copy(),
            h=self.h[:s].copy(),
            w=self.w[:s].copy(),
            L=self.L[:s, :s].copy(),
            rows_by_slot=self.rows_by_slot[:hi].copy(),
            G_by_slot=self.G_by_slot[:hi, :hi].copy(),
        )

    def restore(self, state: dict) -> None:
        """Return to a `state()` snapshot (the buffers beyond it are reset)."""
        s, hi = state["s"], state["hi"]
        if hi > self.cap:
            self._alloc(_capacity(hi))
        self.L[:] = np.eye(self.cap)
        self.w[:] = 0.0
        self.s, self.hi, self.free = s, hi, list(state["free"])
        self.idx[:s], self.slot[:s], self.h[:s], self.w[:s] = state["idx"], state["slot"], state["h"], state["w"]
        self.L[:s, :s] = state["L"]
        self._pack(0)
        self.rows_by_slot[:hi], self.G_by_slot[:hi, :hi] = state["rows_by_slot"], state["G_by_slot"]
        self._dropped(np.zeros(0, dtype=np.int64))

    def remove(self, positions: np.ndarray) -> None:
        """Drop atoms at `positions`, then re-fit the NNLS weights of the rest (warm start: their old weights);
        `last_dropped` then lists the atoms the re-fit removed too (numbering after the removal)."""
        positions = np.asarray(positions, dtype=np.int64)
        w0 = np.delete(self.w[: self.s], positions)
        self._compact(positions)
        self._dropped(np.zeros(0, dtype=np.int64))
        if not self.s:
            return
        z = self._solve(self.h[: self.s])  # least squares on what is left: the NNLS solution when it is positive
        if z.min() > 0:
            self.w[: self.s] = z
        else:
            self.refit(w0)

    def refit(self, w0: np.ndarray | None = None) -> None:
        """Exact NNLS on the current support; atoms that reach zero are removed (listed in `last_dropped`)."""
        s = self.s
        w = nnls_gram(self.gram(), self.h[:s], self.w[:s] if w0 is None else w0)
        self.w[:s] = w
        dropped = np.flatnonzero(w <= 0)
        self._dropped(dropped)
        if dropped.size:
            self._compact(dropped)

    def inverse_diagonal(self) -> np.ndarray:
        """(s,) diag(G^{-1}): the cost of removing atom i from a least-squares fit is w_i^2 / diag_i."""
        s = self.s
        eye = torch.eye(s, dtype=torch.float64)
        linv = torch.linalg.solve_triangular(self._Lt[:s, :s].contiguous(), eye, upper=False)  # (s, s) L^{-1}
        return torch.linalg.vector_norm(linv, dim=0).square().numpy()

    def _downdate(self, i0: int, block: int = 64) -> None:
        """The trailing rows of the factor after removing position i0 alone, in place (rows i0.., columns i0..).

        L'[i0:, i0:] = L33 F: column j of the result is L33[:, j] sqrt(t_j / t_{j-1}) + S[:, j] v_j / sqrt(t_j t_{j-1})
        with S[:, j] = sum_{i > j} v_i L33[:, i], t_j = 1 + sum_{i <= j} v_i^2. Computed `block` rows at a time in a
        small work area (it stays in cache; whole-matrix temporaries made every step a trip to memory), each block
        only over its nonzero columns. A block's result lands one row and one column up-left of what it reads, on
        rows no later block reads.
        """
        s_old, Lt = self.s, self._Lt
        n = s_old - i0 - 1
        # v = L33^{-1} l as a forward solve with the whole factor: rows < i0 + 1 see a zero right-hand side
        x = np.zeros(s_old)
        x[i0 + 1 :] = self.L[i0 + 1 : s_old, i0]
        v = torch.from_numpy(self._forward(x)[i0 + 1 :])  # (n,)
        t = 1.0 + torch.cumsum(v * v, dim=0)  # (n,)
        t_prev = torch.cat([torch.ones(1, dtype=t.dtype), t[:-1]])
        keep, mix = torch.sqrt(t / t_prev), v / torch.sqrt(t * t_prev)  # (n,) each
        for r0 in range(0, n, block):
            r1 = min(n, r0 + block)
            src = Lt[i0 + 1 + r0 : i0 + 1 + r1, i0 + 1 : i0 + 1 + r1]  # (B, r1) rows r0..r1 of L33, nonzero columns
            out = torch.mul(src, v[:r1], out=self._scratch[: (r1 - r0) * r1].view(r1 - r0, r1))  # v_i L33[:, i]
            total = out.cumsum_(1)[:, -1:].clone()  # (B, 1) row sums
            out.neg_().add_(total)  # S; exactly 0 above the diagonal (the cumsum already holds the row sum)
            out.mul_(mix[:r1]).addcmul_(src, keep[:r1])
            Lt[i0 + r0 : i0 + r1, i0 : i0 + r1] = out

    def _compact(self, positions: np.ndarray) -> None:
        """Remove atoms at `positions`; the factor's rows above the first removed position i0 stay as they are.

        One removal (the usual case, an atom displaced by a newer one): L'[i0:, i0:] = L33 F, F the Cholesky factor
        of I + v v^T, v = L33^{-1} l (l, L33: the removed column below the diagonal and the block after it), whose
        closed form (Gill, Golub, Murray & Saunders 1974, method C1; `_downdate`) makes this O(n^2) vectorized work
        instead of an O(n^3) refactorization. Several removals: L'[i0:, i0:] = chol(G'[i0:, i0:] - L'[i0:, :i0] L'[i0:, :i0]^T).
        """
        s_old = self.s
        gone = np.unique(np.asarray(positions, dtype=np.int64))
        s, i0 = s_old - gone.size, int(gone[0])
        Lt = self._Lt
        if gone.size == 1 and s > i0:
            self._downdate(i0)
        self.free.extend(self.slot[gone].tolist())
        # shift the per-position entries between removed positions up (contiguous slice copies)
        for src, dst in shifted_segments(gone, s_old):
            for buf in (self.idx, self.slot, self.h, self.w):
                buf[dst] = buf[src]
            self.L[dst, :i0] = self.L[src, :i0]
        if gone.size > 1 and s > i0:
            live = self.slot[i0:s]
            G = torch.from_numpy(self.G_by_slot[np.ix_(live, live)])  # (s - i0, s - i0) in the new order
            Lt[i0:s, i0:s] = torch.linalg.cholesky(G - Lt[i0:s, :i0] @ Lt[i0:s, :i0].T)
        self.L[s:s_old, :s_old] = 0.0  # back to the identity padding beyond the support
        self.L[:s, s:s_old] = 0.0
        self.L[np.arange(s, s_old), np.arange(s, s_old)] = 1.0
        self.w[s:s_old] = 0.0
        self.s = s
        self._pack(i0)
