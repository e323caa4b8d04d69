"""Alignment of a selection with a target: checked against explicit per-row cosines and a brute force over subsets."""

from itertools import combinations

import numpy as np
import pytest

from gtp_pipeline.core.evaluation.alignment import alignment
from gtp_pipeline.core.features.trajectory import DenseTrajectories
from gtp_pipeline.core.selection.pursuit import PursuitConfig
from gtp_pipeline.core.selection.selection_baselines import less_topk


def unit_rows(n: int, d: int, seed: int) -> np.ndarray:
    A = np.random.default_rng(seed).standard_normal((n, d))
    return A / np.linalg.norm(A, axis=1, keepdims=True)


def test_alignment_is_the_mean_cosine_and_the_cosine_of_the_sum():
    rows, b = unit_rows(5, 7, 0), np.random.default_rng(1).standard_normal(7)
    got = alignment(rows, b)
    cosines = [float(r @ b / (np.linalg.norm(r) * np.linalg.norm(b))) for r in rows]
    total = rows.sum(axis=0)
    assert got["mean_cosine"] == pytest.approx(sum(cosines) / len(cosines))
    assert got["sum_cosine"] == pytest.approx(float(total @ b / np.linalg.norm(total) / np.linalg.norm(b)))
    assert alignment(rows, 3.0 * b) == pytest.approx(got)  # the target's scale does not matter


def test_topk_maximizes_the_mean_cosine_but_not_the_cosine_of_the_sum():
    """The reason top-k is hard to beat under equal-weight training: over all subsets of its size, nothing has a
    higher mean cosine with the target; a joint fit trades some of it for coverage (a higher cosine of the sum)."""
    A, b = unit_rows(12, 6, 2), np.random.default_rng(3).standard_normal(6)
    k = 4
    top = less_topk(DenseTrajectories(A), b, PursuitConfig(budget=k)).indices
    subsets = [list(s) for s in combinations(range(len(A)), k)]
    best_mean = max(alignment(A[s], b)["mean_cosine"] for s in subsets)
    best_sum = max(alignment(A[s], b)["sum_cosine"] for s in subsets)
    assert alignment(A[top], b)["mean_cosine"] == pytest.approx(best_mean)
    assert alignment(A[top], b)["sum_cosine"] < best_sum - 1e-6


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="rows"):
        alignment(np.zeros((0, 3)), np.ones(3))
    with pytest.raises(ValueError, match="rows"):
        alignment(np.ones((2, 4)), np.ones(3))
    with pytest.raises(ValueError, match="zero vector"):
        alignment(np.ones((2, 3)), np.zeros(3))
