"""GTP variants: the target vectors each one matches, and that each runs the pursuit it names."""

import numpy as np
import pytest
from scipy.optimize import nnls as scipy_nnls

from gtp_pipeline.core.features.target_trajectory import TargetTrajectory
from gtp_pipeline.core.features.trajectory import DenseTrajectories
from gtp_pipeline.core.selection.gtp_variants import GTPVariant, select_gtp, target_matrix
from gtp_pipeline.core.selection.pursuit import PursuitConfig


def unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def problem(n=300, d=8, T=2, seed=0):
    rng = np.random.default_rng(seed)
    A = np.concatenate([unit(rng.normal(size=(n, d))) for _ in range(T)], axis=1) / np.sqrt(T)
    per_subtask = rng.normal(size=(3, d * T))
    target = TargetTrajectory(per_subtask, np.array(["a", "b", "c"]), np.ones(3))
    return DenseTrajectories(A.astype(np.float32), n_checkpoints=T), target


def test_per_checkpoint_blocks_partition_the_mean_target():
    view, target = problem(T=3)
    B = target_matrix(GTPVariant("per_checkpoint"), target, None, view.n_checkpoints)
    assert B.shape == (3, view.dim)
    np.testing.assert_allclose(B.sum(axis=0), target.vector)
    assert ((B != 0).sum(axis=0) <= 1).all()  # each coordinate belongs to one block
    np.testing.assert_array_equal(target_matrix(GTPVariant("per_subtask"), target, None), target.per_subtask)
    with pytest.raises(ValueError):
        target_matrix(GTPVariant("per_checkpoint"), target, None, 5)  # 24 dims do not split into 5 blocks
    with pytest.raises(ValueError):
        GTPVariant("per_block")


def test_per_checkpoint_fits_each_block_with_its_own_weights():
    view, target = problem()
    sel = select_gtp(view, target, PursuitConfig(budget=12), GTPVariant("per_checkpoint"))
    W = sel.info["weights_per_target"]  # (fitted, T): one weight column per checkpoint block
    fitted = sel.indices[: sel.indices.size - sel.fill]
    assert W.shape == (fitted.size, 2)
    A = view.gather(fitted).astype(np.float64)
    B = target_matrix(GTPVariant("per_checkpoint"), target, None, 2)
    for t in range(2):
        w_ref, _ = scipy_nnls(A.T, B[t])  # the exact NNLS of that block on the chosen support
        np.testing.assert_allclose(A.T @ W[:, t], A.T @ w_ref, atol=1e-6)
    assert not np.allclose(W[:, 0], W[:, 1])  # the blocks were not forced to share weights


def test_the_fitted_support_drops_only_the_fill_and_repeats_to_the_budget():
    from gtp_pipeline.core.selection.gtp_variants import fitted_support, repeat_to

    view, _ = problem(n=200, d=4, T=2)
    b = np.zeros(view.dim)
    b[0] = 1.0  # a few atoms reach it; at k=20 in 8 dimensions the non-negative fit saturates
    sel = select_gtp(view, TargetTrajectory(b[None], np.array(["t"]), np.ones(1)), PursuitConfig(budget=20))
    assert sel.fill > 0
    support = fitted_support(sel)
    n = 20 - sel.fill
    np.testing.assert_array_equal(support.indices, sel.indices[:n])
    assert support.fill == 0 and support.info["fill_dropped"] == sel.fill
    A = view.gather(support.indices).astype(np.float64)
    _, residual = scipy_nnls(A.T, b)  # the support alone fits the target as well as support + fill did
    assert residual == pytest.approx(sel.residual, rel=1e-4, abs=1e-6)
    rows = repeat_to(support.indices, 20)
    assert rows.size == 20 and set(rows.tolist()) == set(support.indices.tolist())
    counts = np.unique(rows, return_counts=True)[1]
    assert counts.max() - counts.min() <= 1  # each fitted example trained on about equally often
    with pytest.raises(ValueError):
        repeat_to(support.indices, n - 1)
