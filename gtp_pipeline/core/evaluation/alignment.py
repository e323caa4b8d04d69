"""How a selection lines up with a target gradient, in the two senses the methods optimize.

A fine-tune that trains on a selection S with equal weights steps along the mean of its examples' gradients, so to
first order the target loss falls by the mean of <a_i, b> over S: the mean cosine of the picks with the target (the
rows are unit vectors), which LESS's top-k maximizes exactly at every budget. A joint fit instead makes the picks
cover the target together: the cosine between b and the sum of the picks, which rewards picks that are not
redundant with each other and pays for that with a lower mean. Which of the two a fine-tune rewards is an empirical
question; docs/RESULTS.md measures it on held-out gradients of the target's test split.
"""

from __future__ import annotations

import numpy as np


def alignment(rows: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """{"mean_cosine", "sum_cosine"} of the selected rows (s, D), unit vectors, against the target (D,)."""
    rows = np.asarray(rows, dtype=np.float64)
    b = np.asarray(target, dtype=np.float64).reshape(-1)
    if rows.ndim != 2 or rows.shape[0] == 0 or rows.shape[1] != b.size:
        raise ValueError(f"expected (s >= 1, {b.size}) rows, got {rows.shape}")
    b_norm = float(np.linalg.norm(b))
    if b_norm == 0:
        raise ValueError("the target is the zero vector: no direction to align with")
    total = rows.sum(axis=0)
    total_norm = float(np.linalg.norm(total))
    return {
        "mean_cosine": float((rows @ b).mean() / b_norm),
        "sum_cosine": float(total @ b / (total_norm * b_norm)) if total_norm > 0 else 0.0,
    }
