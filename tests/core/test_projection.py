"""Rademacher projection: block-wise equals the dense reference, any block size and order, JL norms, seeding."""

import numpy as np
import pytest
import torch

from gtp_pipeline.core.features.projection import (
    TILE_ROWS,
    BlockProjector,
    DenseProjector,
    ProjectionConfig,
    ProjectionError,
    clear_projection_cache,
    rademacher_rows,
)


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def grads(n, p, seed=0):
    return torch.randn(n, p, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("n_params,dim,block_rows", [(1000, 16, 256), (5003, 64, 1024), (300, 8, 4096)])
def test_blockwise_equals_dense_reference_fp32(n_params, dim, block_rows):
    cfg = ProjectionConfig(dim=dim, seed=3, block_rows=block_rows, dtype="fp32")
    G = grads(7, n_params)
    dense = DenseProjector(n_params, cfg)
    # The reference product, spelled out: G @ R / sqrt(d) with R the materialized +-1 matrix.
    R = dense.matrix().double()
    oracle = (G.double() @ R / np.sqrt(dim)).float()
    torch.testing.assert_close(dense.project(G), oracle, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(BlockProjector(n_params, cfg).project(G), oracle, rtol=1e-5, atol=1e-4)


def test_blockwise_bf16_stays_close_to_fp32():
    cfg = ProjectionConfig(dim=128, block_rows=512)
    G = grads(5, 3000)
    exact = BlockProjector(3000, ProjectionConfig(dim=128, block_rows=512, dtype="fp32")).project(G)
    approx = BlockProjector(3000, cfg).project(G)
    cos = torch.nn.functional.cosine_similarity(exact, approx, dim=1)
    assert (cos > 0.999).all()


def test_matrix_does_not_depend_on_block_size_or_cache():
    G = grads(3, 4000)
    outs = [
        BlockProjector(4000, ProjectionConfig(dim=32, block_rows=b, dtype="fp32", cache_bytes=c)).project(G)
        for b, c in [(256, 2 << 30), (1024, 0), (8192, 10_000)]
    ]
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], rtol=1e-5, atol=1e-5)


def test_rows_can_be_generated_in_any_order_and_are_balanced_signs():
    full = rademacher_rows(seed=9, start=0, stop=1000, dim=64)
    assert torch.equal(rademacher_rows(9, 300, 777, 64), full[300:777])
    assert torch.equal(rademacher_rows(9, TILE_ROWS, 2 * TILE_ROWS, 64), full[TILE_ROWS : 2 * TILE_ROWS])
    assert torch.equal(rademacher_rows(9, 10, 20, 64, torch.bfloat16).float(), full[10:20])
    assert set(full.unique().tolist()) == {-1.0, 1.0}
    assert abs(full.mean().item()) < 0.01  # 64k fair signs: |mean| ~ 0.004


def test_same_seed_same_matrix_other_seed_other_matrix():
    G = grads(2, 2000)
    a = BlockProjector(2000, ProjectionConfig(dim=32, seed=0)).project(G)
    b = BlockProjector(2000, ProjectionConfig(dim=32, seed=0)).project(G)
    c = BlockProjector(2000, ProjectionConfig(dim=32, seed=1)).project(G)
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_projection_preserves_norms_and_inner_products():
    """JL: with d = 1024, ||xR||^2 / ||x||^2 has std sqrt(2/d) ~ 0.044; cosines move by ~1/sqrt(d)."""
    n, p, d = 40, 20_000, 1024
    G = grads(n, p, seed=5)
    Y = BlockProjector(p, ProjectionConfig(dim=d, dtype="fp32")).project(G)
    ratio = (Y.norm(dim=1) / G.norm(dim=1)) ** 2
    assert (ratio - 1).abs().max() < 6 * np.sqrt(2 / d)
    assert abs(ratio.mean().item() - 1) < 4 * np.sqrt(2 / d / n)
    a, b = G[0] + G[1], G[0]  # a pair with cosine ~0.71
    ya, yb = Y[0] + Y[1], Y[0]
    cos_x = torch.nn.functional.cosine_similarity(a, b, dim=0)
    cos_y = torch.nn.functional.cosine_similarity(ya, yb, dim=0)
    assert abs(cos_x - cos_y) < 5 / np.sqrt(d)


def test_projectors_of_the_same_matrix_share_generated_blocks():
    clear_projection_cache()
    cfg = ProjectionConfig(dim=32, block_rows=256)
    G = grads(2, 3000)
    first, second = BlockProjector(3000, cfg), BlockProjector(3000, cfg)
    a, b = first.project(G), second.project(G)
    assert first.seconds_generating > 0 and second.seconds_generating == 0 and torch.equal(a, b)
    other = BlockProjector(3000, ProjectionConfig(dim=32, block_rows=256, seed=1))
    other.project(G)
    assert other.seconds_generating > 0  # another matrix: generated, and it replaces the shared one
    clear_projection_cache()


def test_projector_rejects_wrong_widths_and_block_sizes():
    with pytest.raises(ProjectionError, match=r"\(N, 100\)"):
        BlockProjector(100, ProjectionConfig(dim=8)).project(torch.zeros(2, 99))
    with pytest.raises(ProjectionError, match="multiple"):
        BlockProjector(100, ProjectionConfig(dim=8, block_rows=100))


@pytest.mark.cuda
def test_cuda_inputs_see_the_same_matrix():
    cfg = ProjectionConfig(dim=64, dtype="fp32")
    G = grads(4, 3000)
    cpu = BlockProjector(3000, cfg).project(G)
    gpu = BlockProjector(3000, cfg).project(G.cuda()).cpu()
    torch.testing.assert_close(gpu, cpu, rtol=1e-4, atol=1e-4)
