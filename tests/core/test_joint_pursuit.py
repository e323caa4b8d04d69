"""Joint GTP (several targets, one support) against scipy's NNLS and a from-scratch simultaneous NN-OMP."""

import numpy as np
import pytest
from scipy.optimize import nnls as scipy_nnls

from gtp_pipeline.core.features.trajectory import DenseTrajectories
from gtp_pipeline.core.selection.joint_pursuit import joint_gtp
from gtp_pipeline.core.selection.pursuit import PursuitConfig, gtp


def unit(x):
    x = np.asarray(x, dtype=np.float64)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def objective(A, B, idx):
    """sum_j min_{w >= 0} ||A_S w - b_j||^2 by scipy, and the weights."""
    As = A[idx].T.astype(np.float64)
    W = np.stack([scipy_nnls(As, b)[0] for b in B], axis=1)
    return float(((B.T - As @ W) ** 2).sum()), W


def somp_reference(A, B, k):
    """Simultaneous non-negative OMP, one atom per step, every fit from scratch with scipy; atoms no target uses
    leave the support (as in Lawson-Hanson), so it runs until |S| = k or nothing scores (at most 2k steps)."""
    S = []
    for _ in range(2 * k):
        R = B.T - (A[S].T.astype(np.float64) @ objective(A, B, S)[1] if S else 0)
        score = (np.maximum(A.astype(np.float64) @ R, 0) ** 2).sum(axis=1)
        score[S] = -1
        if score.max() <= 1e-12:
            break
        S.append(int(np.argmax(score)))
        W = objective(A, B, S)[1]
        S = [i for i, used in zip(S, W.max(axis=1) > 0, strict=True) if used]
        if len(S) == k:
            break
    return S


def pool_with_targets(n=600, d=48, J=4, seed=0):
    """Rows sharing a common direction, and J targets pointing different ways (outside the rows' cone)."""
    g = np.random.default_rng(seed)
    A = unit(g.standard_normal((n, d)) + 1.5)
    B = g.standard_normal((J, d))
    return A, B


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weights_are_each_targets_exact_nnls_on_the_support(seed):
    A, B = pool_with_targets(seed=seed)
    sel = joint_gtp(DenseTrajectories(A), B, PursuitConfig(budget=40))
    fitted = sel.indices[: sel.indices.size - sel.fill]
    _, W = objective(A, B, fitted)
    np.testing.assert_allclose(sel.info["weights_per_target"], W, atol=1e-6)
    np.testing.assert_allclose(sel.weights[: fitted.size], W.mean(axis=1), atol=1e-6)
    assert (W.max(axis=1) > 0).all()  # no atom that no target uses stays in the support
    assert sel.residual == pytest.approx(np.sqrt(objective(A, B, fitted)[0]), rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_ends_within_5_percent_of_simultaneous_omp(seed):
    g = np.random.default_rng(seed)
    A = unit(g.standard_normal((1000, 256)) + 0.3)
    B = np.stack([A[g.choice(1000, 25, replace=False)].astype(np.float64).mean(axis=0) for _ in range(4)])
    B += 0.3 * np.linalg.norm(B, axis=1, keepdims=True) * g.standard_normal(B.shape) / 16
    sel = joint_gtp(DenseTrajectories(A), B, PursuitConfig(budget=40))
    ref = somp_reference(A, B, 40)
    assert sel.fill == 0 and len(ref) == 40
    assert np.sqrt(objective(A, B, sel.indices)[0]) <= 1.05 * np.sqrt(objective(A, B, ref)[0])
    assert sel.passes <= 5  # the reference makes one pass per atom


def test_planted_supports_of_several_targets_are_recovered():
    g = np.random.default_rng(5)
    A = unit(g.standard_normal((300, 64)))
    parts = [g.choice(300, 3, replace=False) for _ in range(3)]
    B = np.stack([g.uniform(0.5, 1.5, 3) @ A[p].astype(np.float64) for p in parts])
    sel = joint_gtp(DenseTrajectories(A), B, PursuitConfig(budget=9))
    assert set(sel.indices) == set(np.concatenate(parts)) and sel.stop_reason == "tolerance"


def test_several_targets_use_more_of_the_budget_than_their_mean():
    A, B = pool_with_targets(n=1500, d=64, J=8, seed=3)
    view, cfg = DenseTrajectories(A), PursuitConfig(budget=150)
    joint, single = joint_gtp(view, B, cfg), gtp(view, B.mean(axis=0), cfg)
    assert single.fill > 0 and joint.fill < single.fill
    assert joint.indices.size == 150 and np.unique(joint.indices).size == 150


def test_bad_targets_raise():
    view = DenseTrajectories(unit(np.random.default_rng(0).standard_normal((50, 8))))
    with pytest.raises(ValueError, match="dimension"):
        joint_gtp(view, np.ones((2, 9)))
    with pytest.raises(ValueError, match="zero"):
        joint_gtp(view, np.zeros((2, 8)))
