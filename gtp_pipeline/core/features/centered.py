"""Trajectories centered on the pool's mean: a_i -> (a_i - mu) / ||a_i - mu||, targets b -> b - mu.

LESS-style gradient features share a dominant common direction (most pairs of pool examples have a large positive
cosine), so the pool's trajectories fill a narrow cone. A target pointing elsewhere is then fitted by a handful of
non-negative combinations and the fit saturates (core/selection/pursuit.py, "Saturation and fill"). Subtracting the pool's
mean trajectory removes that shared direction from atoms and target alike: what is left is how an example differs
from the average one, the cone widens, and the non-negative fit can use more of the budget. Whether that selects
better training data is an empirical question; this view makes it one option to measure.

`CenteredTrajectories` wraps any `Trajectories`. Building it costs one pass for the mean and one read of all rows
for the centered norms; afterwards a pass costs what the wrapped view's pass costs plus an O(N J) correction,
because <(a_i - mu)/n_i, R> = (<a_i, R> - <mu, R>) / n_i.
"""

from __future__ import annotations

import numpy as np

from gtp_pipeline.core.features.trajectory import Scan, Trajectories, check_rows, columns


def top_rows(scores: np.ndarray, blocked: np.ndarray, top: int) -> np.ndarray:
    """Row indices of the `top` largest scores outside `blocked`, best first; ties go to the lower index."""
    s = np.where(blocked, -np.inf, scores)
    cand = np.flatnonzero(s > -np.inf)
    if cand.size > top:
        cut = np.partition(s[cand], cand.size - top)[cand.size - top]
        cand = cand[s[cand] >= cut]
    return cand[np.lexsort((cand, -s[cand]))][:top].astype(np.int64)


class CenteredTrajectories(Trajectories):
    """The wrapped view's rows minus `mu` (default: their mean), renormalized to unit length."""

    def __init__(self, view: Trajectories, mu: np.ndarray | None = None, block_rows: int = 4096):
        self.view = view
        self.n_rows, self.dim, self.n_checkpoints = view.n_rows, view.dim, view.n_checkpoints
        self.mu = view.mean() if mu is None else np.asarray(mu, dtype=np.float64)
        if self.mu.shape != (view.dim,):
            raise ValueError(f"mu must have shape ({view.dim},), got {self.mu.shape}")
        self._own_passes = 0
        valid = view.valid_mask()
        norms = np.zeros(view.n_rows)
        rows = np.flatnonzero(valid)
        for start in range(0, rows.size, block_rows):  # one read of every row: the centered norms
            part = rows[start : start + block_rows]
            norms[part] = np.linalg.norm(view.gather(part).astype(np.float64) - self.mu, axis=1)
        self._own_passes += 1
        self._valid = valid & (norms > 1e-6)  # a row equal to the mean has no direction left
        self._inv = np.where(self._valid, 1.0 / np.where(norms > 0, norms, 1.0), 0.0)

    @property
    def passes(self) -> int:
        return self.view.passes + self._own_passes

    def center(self, targets: np.ndarray) -> np.ndarray:
        """Targets (D,) or (J, D) with the same mean removed."""
        return np.asarray(targets, dtype=np.float64) - self.mu

    def valid_mask(self) -> np.ndarray:
        return self._valid.copy()

    def store_metas(self) -> list | None:
        return self.view.store_metas()

    def correlate(self, R: np.ndarray) -> np.ndarray:
        R = columns(R, self.dim)  # (D, J)
        raw = self.view.correlate(R).astype(np.float64)  # (N, J), -inf at the wrapped view's invalid rows
        out = ((np.where(np.isfinite(raw), raw, 0.0) - self.mu @ R.astype(np.float64)) * self._inv[:, None]).astype(
            np.float32
        )
        out[~self._valid] = -np.inf
        return out

    def scan(self, R: np.ndarray, top: int, exclude: np.ndarray | None = None, with_rows: bool = True) -> Scan:
        scores = self.correlate(R).max(axis=1)  # (N,)
        cand = top_rows(scores, self._exclusion(exclude), top)
        return Scan(cand, scores[cand], self.gather(cand) if with_rows else None)

    def gather(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        check_rows(rows, self._valid)
        centered = self.view.gather(rows).astype(np.float64) - self.mu
        return (centered * self._inv[rows, None]).astype(np.float32)

    def mean(self) -> np.ndarray:
        total = np.zeros(self.dim)
        rows = np.flatnonzero(self._valid)
        for start in range(0, rows.size, 4096):
            total += self.gather(rows[start : start + 4096]).sum(axis=0, dtype=np.float64)
        self._own_passes += 1
        return total / max(rows.size, 1)
