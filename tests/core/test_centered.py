"""Centered trajectories equal an explicitly centered, renormalized matrix, streamed or in memory."""

import numpy as np
import pytest

from gtp_pipeline.core.features.centered import CenteredTrajectories
from gtp_pipeline.core.features.store_trajectories import StoreTrajectories
from gtp_pipeline.core.features.trajectory import DenseTrajectories
from gtp_pipeline.core.selection.pursuit import PursuitConfig, gtp
from tests.core.test_pursuit import LR, clustered, target_of, write_stores


def explicit(A, valid):
    mu = A[valid].astype(np.float64).mean(axis=0)
    C = A.astype(np.float64) - mu
    C = C / np.linalg.norm(C, axis=1, keepdims=True)
    C[~valid] = 0
    return C, mu


def test_passes_and_rows_equal_the_explicit_centered_matrix():
    g = np.random.default_rng(0)
    A = (g.standard_normal((300, 40)) + 2.0).astype(np.float32)
    valid = g.random(300) > 0.1
    view = CenteredTrajectories(DenseTrajectories(A, valid))
    C, mu = explicit(A, valid)
    R = g.standard_normal((40, 3))
    got = view.correlate(R)
    np.testing.assert_allclose(got[valid], (C @ R)[valid], rtol=1e-4, atol=1e-4)
    assert np.isneginf(got[~valid]).all()
    np.testing.assert_allclose(view.gather(np.flatnonzero(valid)[:20]), C[np.flatnonzero(valid)[:20]], atol=1e-5)
    np.testing.assert_allclose(view.mu, mu, atol=1e-6)
    scan = view.scan(R, top=10, exclude=np.flatnonzero(valid)[:5])
    want = np.argsort(-np.where(valid, (C @ R).max(axis=1), -np.inf))
    want = [i for i in want if i not in np.flatnonzero(valid)[:5]][:10]
    assert scan.top.tolist() == want
    np.testing.assert_allclose(view.center(A[0]), A[0] - mu)


def test_selection_on_a_centered_store_equals_in_memory(tmp_path):
    blocks = clustered(n=400, seed=12)
    stores = write_stores(tmp_path, blocks, chunk_rows=64)
    dense = CenteredTrajectories(DenseTrajectories.from_blocks(blocks, LR))
    streamed = CenteredTrajectories(StoreTrajectories(stores, LR))
    b = dense.center(target_of(DenseTrajectories.from_blocks(blocks, LR), [4, 44]))
    cfg = PursuitConfig(budget=25)
    got, want = gtp(streamed, b, cfg), gtp(dense, b, cfg)
    np.testing.assert_array_equal(got.indices, want.indices)
    np.testing.assert_allclose(got.weights, want.weights, atol=1e-5)


def test_centering_widens_the_cone_a_distant_target_is_fitted_from():
    g = np.random.default_rng(1)
    A = (g.standard_normal((1000, 64)) + 1.5).astype(np.float32)  # a dominant shared direction
    b = g.standard_normal(64)  # a target pointing elsewhere
    plain = gtp(DenseTrajectories(A / np.linalg.norm(A, axis=1, keepdims=True)), b, PursuitConfig(budget=100))
    view = CenteredTrajectories(DenseTrajectories(A))
    centered = gtp(view, view.center(b), PursuitConfig(budget=100))
    assert centered.fill < plain.fill and centered.relative_residual < plain.relative_residual


def test_a_wrong_mean_shape_is_refused():
    with pytest.raises(ValueError, match="mu must have shape"):
        CenteredTrajectories(DenseTrajectories(np.ones((4, 3), dtype=np.float32)), mu=np.zeros(2))
