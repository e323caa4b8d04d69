"""The device-generated projection: the same matrix as numpy's definition, bit for bit, and the same products.

Without a GPU the kernels run in Triton's CPU interpreter (tests/conftest.py sets TRITON_INTERPRET=1); the `cuda`
tests run the compiled kernels against the same oracles.
"""

import math

import numpy as np
import pytest
import torch

pytest.importorskip("triton", reason="pip install triton (the dev extra) for the device projection's tests")

from gtp_pipeline.core.features import projection_triton  # noqa: E402
from gtp_pipeline.core.features.projection import (  # noqa: E402
    TILE_ROWS,
    BlockProjector,
    DenseProjector,
    ProjectionConfig,
    ProjectionError,
    make_projector,
    rademacher_rows,
)
from gtp_pipeline.core.features.projection_triton import KernelConfig, TritonProjector, philox_words  # noqa: E402

SMALL = KernelConfig(block_m=32, block_n=32, block_k=32, programs=8)  # interpreter-sized tiles
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def numpy_words(seed: int, tile: int, dim: int) -> np.ndarray:
    """The definition (core/features/projection.py): tile `tile` of R is numpy's Philox4x64-10 stream keyed by (seed, tile)."""
    return np.random.Philox(key=np.array([seed, tile], dtype=np.uint64)).random_raw(TILE_ROWS * dim // 64)


@pytest.mark.parametrize(
    "seed,tile0,n_tiles,dim",
    [(0, 0, 2, 32), (1, 7, 1, 96), (12345, 1000, 2, 64), (2**63 + 5, 2**20 + 3, 1, 32), (3, 2**31 - 1, 2, 32)],
)
def test_device_words_equal_numpys_philox_bit_for_bit(seed, tile0, n_tiles, dim):
    out = philox_words(
        seed, tile0, n_tiles, dim, out=torch.empty(n_tiles * 4 * dim, dtype=torch.uint64, device=DEVICE)
    )
    expected = np.concatenate([numpy_words(seed, tile0 + k, dim) for k in range(n_tiles)])
    assert np.array_equal(out.cpu().numpy(), expected)


@pytest.mark.parametrize(
    "n_params,dim,slab_tiles",
    [
        (600, 96, 2),  # two slabs; the last tile ragged (88 of 256 rows)
        (613, 64, 8),  # odd P, one slab
        (257, 32, 1),  # one row past a tile: a slab of one row
    ],
)
def test_identity_rows_recover_the_cpu_matrix_exactly(monkeypatch, n_params, dim, slab_tiles):
    """Projecting the identity gives R / sqrt(d) itself: every sign of every tile, as numpy defines it."""
    monkeypatch.setattr(projection_triton, "SLAB_BITS", slab_tiles * TILE_ROWS * dim)
    cfg = ProjectionConfig(dim=dim, seed=5)
    proj = TritonProjector(n_params, cfg, SMALL)
    assert len(proj.slabs()) == -(-n_params // (slab_tiles * TILE_ROWS))
    eye = torch.eye(n_params, dtype=torch.bfloat16, device=DEVICE)
    out = proj.project(eye).cpu()  # (P, d)
    assert torch.equal(out, rademacher_rows(5, 0, n_params, dim).div_(math.sqrt(dim)))


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_products_equal_the_dense_reference(monkeypatch, dtype):
    monkeypatch.setattr(projection_triton, "SLAB_BITS", 3 * TILE_ROWS * 64)
    n_params, dim = 1000, 64
    cfg = ProjectionConfig(dim=dim, seed=2, dtype=dtype)
    G = torch.randn(9, n_params, generator=torch.Generator().manual_seed(0))
    if dtype == "bf16":
        G = G.bfloat16().float()  # values the bf16 product sees exactly
    R = DenseProjector(n_params, ProjectionConfig(dim=dim, seed=2, dtype="fp32")).matrix().double()
    oracle = (G.double() @ R / math.sqrt(dim)).float()
    out = TritonProjector(n_params, cfg, SMALL).project(G.to(DEVICE)).cpu()
    torch.testing.assert_close(out, oracle, rtol=1e-5, atol=1e-4)


def test_a_rows_features_do_not_depend_on_the_rows_beside_it(monkeypatch):
    """Resume writes the same bytes only if a row's projection ignores its neighbours in the call."""
    monkeypatch.setattr(projection_triton, "SLAB_BITS", 2 * TILE_ROWS * 32)
    proj = TritonProjector(700, ProjectionConfig(dim=32, seed=1), SMALL)
    G = torch.randn(40, 700, generator=torch.Generator().manual_seed(3)).bfloat16().to(DEVICE)
    together = proj.project(G)
    assert torch.equal(proj.project(G[5:6]), together[5:6])
    assert torch.equal(proj.project(G[33:40]), together[33:40])
    assert torch.equal(proj.project(torch.cat([G[20:22], G[0:3]])), torch.cat([together[20:22], together[0:3]]))


def test_block_and_device_projectors_agree():
    """Same matrix, same bf16 inputs, sums in fp32 (the block projector in fp32 mode: in bf16 mode it rounds each
    block's partial product to bf16, which the device kernel never does)."""
    n_params, dim = 3000, 64
    G = torch.randn(4, n_params, generator=torch.Generator().manual_seed(1)).bfloat16()
    blocks = BlockProjector(n_params, ProjectionConfig(dim=dim, block_rows=512, dtype="fp32"), shared_cache=False)
    device = TritonProjector(n_params, ProjectionConfig(dim=dim), SMALL).project(G.to(DEVICE)).cpu()
    torch.testing.assert_close(device, blocks.project(G.float()), rtol=1e-5, atol=1e-4)


def test_make_projector_picks_by_device_and_refuses_what_cannot_work():
    assert isinstance(make_projector(100, ProjectionConfig(dim=64), "cpu"), BlockProjector)
    assert isinstance(make_projector(100, ProjectionConfig(dim=64, kernel="blocks"), DEVICE), BlockProjector)
    if DEVICE == "cuda":
        assert isinstance(make_projector(100, ProjectionConfig(dim=64), "cuda"), TritonProjector)
    with pytest.raises(ProjectionError, match="dim % 32"):
        make_projector(100, ProjectionConfig(dim=48, kernel="triton"), DEVICE)
    with pytest.raises(ProjectionError, match="dim % 32"):
        TritonProjector(100, ProjectionConfig(dim=48))
    with pytest.raises(ProjectionError, match=r"\(N, 100\)"):
        TritonProjector(100, ProjectionConfig(dim=32), SMALL).project(torch.zeros(2, 99, device=DEVICE))


@pytest.mark.cuda
def test_compiled_kernels_with_production_tiles_recover_the_matrix():
    """The default KernelConfig on the GPU: identity rows, a ragged tile, several slabs, both dtypes."""
    n_params, dim = 70_000, 1024
    cfg = ProjectionConfig(dim=dim, seed=11)
    proj = TritonProjector(n_params, cfg)
    rows = torch.tensor([0, 1, 255, 256, 40_000, 69_999])
    G = torch.zeros(len(rows), n_params, dtype=torch.bfloat16, device="cuda")
    G[torch.arange(len(rows)), rows] = 1
    expected = torch.cat([rademacher_rows(11, r, r + 1, dim) for r in rows.tolist()]).div_(math.sqrt(dim))
    assert torch.equal(proj.project(G).cpu(), expected)
    X = torch.randn(37, n_params, device="cuda")
    together = proj.project(X)
    assert torch.equal(proj.project(X[3:4]), together[3:4]) and torch.equal(proj.project(X[30:]), together[30:])
    for dtype in ("bf16", "fp32"):
        c = ProjectionConfig(dim=dim, seed=11, dtype=dtype)
        Xc = X.bfloat16().float() if dtype == "bf16" else X  # what each product sees
        exact = BlockProjector(n_params, ProjectionConfig(dim=dim, seed=11, dtype="fp32"), shared_cache=False)
        torch.testing.assert_close(TritonProjector(n_params, c).project(X), exact.project(Xc), rtol=1e-4, atol=1e-3)


@pytest.mark.cuda
def test_device_projection_memory_does_not_grow_with_the_number_of_parameters():
    """Workspace = one slab of words + the split partials, whatever P: R (here up to 4.4e12 entries) never exists."""
    dim, used = 8192, {}
    for n_params in (1 << 24, 1 << 29):
        G = torch.randn(2, n_params, device="cuda", dtype=torch.bfloat16)
        proj = TritonProjector(n_params, ProjectionConfig(dim=dim))
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        out = proj.project(G)
        torch.cuda.synchronize()
        used[n_params] = torch.cuda.max_memory_allocated() - before
        assert out.shape == (2, dim) and torch.isfinite(out).all()
        del G, proj, out
    assert used[1 << 29] <= used[1 << 24] + (1 << 20)  # 32x the parameters, the same workspace
    assert used[1 << 29] <= (projection_triton.SLAB_BITS // 8) * 1.2 + (64 << 20)
