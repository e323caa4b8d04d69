"""Trajectories: LESS's LR-weighted cosine as an inner product, streaming == in-memory, checks between stores."""

import numpy as np
import pytest

from gtp_pipeline.core.features.store_trajectories import StoreTrajectories, map_chunk
from gtp_pipeline.core.features.target_trajectory import build_target
from gtp_pipeline.core.features.trajectory import (
    BadFeaturesError,
    DenseTrajectories,
    TrajectoryMismatchError,
    normalize_lr_weights,
)
from gtp_pipeline.core.storage.feature_store import FeatureStore
from gtp_pipeline.core.storage.store_records import StoreCorruptError, StoreMeta

LR = (1.6877e-05, 1.2859e-05, 7.7030e-06)  # three checkpoints keep the tests small


def write_stores(root, blocks, valid=None, chunk_rows=16, kind="candidate_features", ids=None, tags=None):
    """One FeatureStore per (n, d) block, written chunk by chunk (the last chunk ragged unless n % chunk_rows == 0)."""
    n, d = blocks[0].shape
    ids = [f"ex{i:04d}" for i in range(n)] if ids is None else ids
    valid = np.ones(n, dtype=bool) if valid is None else valid
    stores = []
    for t, x in enumerate(blocks):
        ident = {"checkpoint_id": f"ckpt{t}" if tags is None else tags[t]}
        st = FeatureStore.create_or_open(
            root / f"{kind}{t}", StoreMeta(kind, n, x.shape[1], chunk_rows, identity=ident), ids
        )
        for c in range(st.n_chunks):
            a, b = st.chunk_bounds(c)
            st.write_chunk(c, x[a:b], valid[a:b])
        stores.append(st)
    return stores


def random_blocks(n=70, d=24, T=3, seed=0):
    g = np.random.default_rng(seed)
    return [g.standard_normal((n, d)).astype(np.float16) for _ in range(T)]


def test_lr_weights_normalize_to_one_and_refuse_nonpositive():
    np.testing.assert_allclose(normalize_lr_weights([2.0, 1.0, 1.0]), [0.5, 0.25, 0.25])
    for bad in ([], [1.0, 0.0], [1.0, -1.0], [np.nan]):
        with pytest.raises(ValueError, match="learning-rate weights"):
            normalize_lr_weights(bad)


def test_inner_product_of_trajectories_is_less_lr_weighted_cosine():
    blocks = random_blocks(n=6)
    A = DenseTrajectories.from_blocks(blocks, LR).A.astype(np.float64)
    w = np.asarray(LR) / sum(LR)
    x = [b.astype(np.float64) for b in blocks]
    cos = sum(
        w[t] * (x[t] @ x[t].T) / np.outer(np.linalg.norm(x[t], axis=1), np.linalg.norm(x[t], axis=1)) for t in range(3)
    )
    np.testing.assert_allclose(A @ A.T, cos, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(A, axis=1), 1.0, atol=1e-6)


def test_streaming_correlations_scan_gather_and_mean_equal_in_memory(tmp_path):
    blocks, valid = random_blocks(n=70), np.ones(70, dtype=bool)
    valid[[3, 40]] = False
    view = StoreTrajectories(
        write_stores(tmp_path, blocks, valid, chunk_rows=16), LR, block_rows=5
    )  # 5 chunks, ragged
    dense = DenseTrajectories.from_blocks(blocks, LR, valid)
    R = np.random.default_rng(1).standard_normal((view.dim, 3))
    np.testing.assert_allclose(view.correlate(R), dense.correlate(R), atol=1e-5)
    streamed, inmem = (
        view.scan(R[:, 0], top=9, exclude=np.array([7])),
        dense.scan(R[:, 0], top=9, exclude=np.array([7])),
    )
    np.testing.assert_array_equal(streamed.top, inmem.top)
    np.testing.assert_allclose(streamed.rows, inmem.rows, atol=1e-6)
    np.testing.assert_allclose(view.gather(np.array([69, 0, 17])), dense.A[[69, 0, 17]], atol=1e-6)
    np.testing.assert_allclose(view.mean(), dense.mean(), atol=1e-6)
    np.testing.assert_allclose(view.to_dense().A, dense.A, atol=1e-6)


def test_scan_ranks_by_max_over_columns_and_breaks_ties_by_lower_index():
    A = np.eye(4, dtype=np.float32)[[0, 1, 1, 2, 3]]  # rows 1 and 2 are the same atom
    view = DenseTrajectories(A)
    R = np.stack([np.array([0.0, 1.0, 0.0, 0.2]), np.array([0.5, 0.0, 0.0, 0.0])], axis=1)  # (4, 2)
    scan = view.scan(R, top=4)
    np.testing.assert_array_equal(scan.top, [1, 2, 0, 4])  # max over columns: 1, 1, 0.5, 0.2; 0 for row 3
    np.testing.assert_allclose(scan.scores, [1.0, 1.0, 0.5, 0.2])


def test_invalid_rows_score_minus_infinity_and_are_never_scanned(tmp_path):
    blocks, valid = random_blocks(n=40), np.ones(40, dtype=bool)
    valid[::3] = False
    view = StoreTrajectories(write_stores(tmp_path, blocks, valid), LR)
    r = np.random.default_rng(2).standard_normal(view.dim)
    c = view.correlate(r)[:, 0]
    assert np.isneginf(c[~valid]).all() and np.isfinite(c[valid]).all()
    assert valid[view.scan(r, top=40).top].all() and view.scan(r, top=40).top.size == valid.sum()
    with pytest.raises(ValueError, match="invalid"):
        view.gather(np.array([0]))


def test_mapped_chunk_reads_the_same_values_as_read_chunk(tmp_path):
    st = write_stores(tmp_path, random_blocks(n=37, T=1), chunk_rows=16)[0]
    for c in range(st.n_chunks):
        np.testing.assert_array_equal(map_chunk(st, c), st.read_chunk(c))


def assert_same_passes(got, want, R):
    """Every kind of pass over `got` gives `want`'s results within fp32 rounding, and scans pick the same rows."""
    np.testing.assert_allclose(got.correlate(R), want.correlate(R), rtol=1e-5, atol=1e-6)
    for r in (R[:, 0], R):
        g, w = got.scan(r, top=11, exclude=np.array([7])), want.scan(r, top=11, exclude=np.array([7]))
        np.testing.assert_array_equal(g.top, w.top)
        np.testing.assert_allclose(g.scores, w.scores, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(g.rows, w.rows, atol=1e-6)
    np.testing.assert_allclose(got.mean(), want.mean(), atol=1e-6)
    np.testing.assert_allclose(got.gather(np.array([69, 0, 17])), want.gather(np.array([69, 0, 17])), atol=1e-6)
    np.testing.assert_allclose(got.to_dense().A, want.to_dense().A, atol=1e-6)


@pytest.mark.parametrize("columns", [1, 3, 12])  # one mv, a few mv (_matvecs), a GEMM
def test_device_pass_on_cpu_equals_the_default_pass(tmp_path, columns):
    blocks, valid = random_blocks(n=70), np.ones(70, dtype=bool)
    valid[[3, 40]] = False
    stores = write_stores(tmp_path, blocks, valid, chunk_rows=16)  # 5 chunks, the last ragged
    R = np.random.default_rng(4).standard_normal((72, columns))
    # the device path (whole chunks, the code a GPU runs) against the cache-blocked CPU pass; both compute norms fresh
    assert_same_passes(StoreTrajectories(stores, LR, device="cpu"), StoreTrajectories(stores, LR, block_rows=5), R)


def test_device_pass_finds_bad_rows_like_the_default_pass(tmp_path):
    stores = write_stores(tmp_path, random_blocks(n=20), chunk_rows=8)
    raw = np.memmap(stores[1].path / "features" / "c" / "1" / "0", dtype="<f2", mode="r+", shape=(8, 24))
    raw[2, 5] = np.inf  # row 8 + 2 = 10 of checkpoint 1
    raw.flush()
    with pytest.raises(StoreCorruptError, match="chunk 1 of store .*candidate_features1.*CRC32C"):
        StoreTrajectories(stores, LR, device="cpu").correlate(np.ones(72))
    with pytest.raises(BadFeaturesError, match="row 10 .*non-finite"):  # the pass's own check, behind the checksum
        StoreTrajectories(stores, LR, device="cpu", verify=False).correlate(np.ones(72))


@pytest.mark.cuda
def test_cuda_pass_equals_cpu_pass(tmp_path):
    blocks, valid = random_blocks(n=70), np.ones(70, dtype=bool)
    valid[[3, 40]] = False
    stores = write_stores(tmp_path, blocks, valid, chunk_rows=16)
    R = np.random.default_rng(4).standard_normal((72, 3))
    assert_same_passes(StoreTrajectories(stores, LR, device="cuda"), StoreTrajectories(stores, LR), R)


def test_nonfinite_or_zero_valid_rows_raise_naming_the_row(tmp_path):
    blocks = random_blocks(n=20)
    stores = write_stores(tmp_path, blocks, chunk_rows=8)
    raw = np.memmap(stores[1].path / "features" / "c" / "1" / "0", dtype="<f2", mode="r+", shape=(8, 24))
    raw[2, 5] = np.nan  # a corrupted chunk file: row 8 + 2 = 10 of checkpoint 1
    raw.flush()
    with pytest.raises(StoreCorruptError, match="chunk 1 of store"):
        StoreTrajectories(stores, LR).correlate(np.ones(72))
    with pytest.raises(BadFeaturesError, match="row 10 .*non-finite"):
        StoreTrajectories(stores, LR, verify=False).correlate(np.ones(72))
    zero = [b.copy() for b in blocks]
    zero[0][4] = 0
    with pytest.raises(BadFeaturesError, match="row 4 .*all-zero"):
        DenseTrajectories.from_blocks(zero, LR)
    bad = DenseTrajectories.from_blocks(blocks, LR).A
    bad[3, 0] = np.inf
    with pytest.raises(BadFeaturesError, match="row 3"):
        DenseTrajectories(bad)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(n=71), "n_rows"),
        (dict(ids=[f"other{i}" for i in range(70)]), "example ids"),
        (dict(d=23), "dim"),
        (dict(tags=["ckpt0", "ckpt0", "ckpt2"]), "both checkpoint 'ckpt0'"),
    ],
)
def test_candidate_stores_that_disagree_are_refused(tmp_path, change, message):
    n, d = change.get("n", 70), change.get("d", 24)
    good = write_stores(tmp_path / "a", random_blocks(n=70)[:2])
    odd = write_stores(tmp_path / "b", [np.ones((n, d), np.float16)], ids=change.get("ids"), tags=["ckpt2"])
    stores = good + odd
    if "tags" in change:
        stores = write_stores(tmp_path / "c", random_blocks(n=70), tags=change["tags"])
    with pytest.raises(TrajectoryMismatchError, match=message):
        StoreTrajectories(stores, LR)
    with pytest.raises(TrajectoryMismatchError, match="learning-rate weights"):
        StoreTrajectories(good, LR)


def test_build_target_is_the_mean_of_per_subtask_means(tmp_path):
    g = np.random.default_rng(3)
    tblocks = [g.standard_normal((7, 24)).astype(np.float16) for _ in range(3)]
    valid = np.array([1, 1, 1, 1, 1, 0, 1], dtype=bool)
    labels = np.array(["a", "a", "a", "b", "b", "b", "c"])
    cands = StoreTrajectories(write_stores(tmp_path, random_blocks()), LR)
    target = build_target(write_stores(tmp_path, tblocks, valid, kind="target_features"), LR, labels, cands)
    w = np.asarray(LR) / sum(LR)
    unit = [x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True) for x in tblocks]
    expect = np.stack(
        [
            np.concatenate([np.sqrt(w[t]) * unit[t][(labels == name) & valid].mean(0) for t in range(3)])
            for name in "abc"
        ]
    )
    np.testing.assert_allclose(target.per_subtask, expect, atol=1e-6)
    np.testing.assert_allclose(target.vector, expect.mean(axis=0), atol=1e-6)
    assert list(target.subtasks) == ["a", "b", "c"] and list(target.counts) == [3, 2, 1]


@pytest.mark.parametrize(
    "tblocks, tags, message",
    [
        ("dim", None, "dim"),
        ("few", None, "candidate checkpoints but 2 target stores"),
        ("ok", ["ckpt0", "ckpt9", "ckpt2"], "candidate store is checkpoint 'ckpt1' but target store"),
    ],
)
def test_targets_that_do_not_match_the_candidates_are_refused(tmp_path, tblocks, tags, message):
    cands = StoreTrajectories(write_stores(tmp_path, random_blocks()), LR)
    g = np.random.default_rng(4)
    shape = {"dim": (5, 23), "few": (5, 24), "ok": (5, 24)}[tblocks]
    T = 2 if tblocks == "few" else 3
    tstores = write_stores(
        tmp_path, [g.standard_normal(shape).astype(np.float16) for _ in range(T)], kind="target_features", tags=tags
    )
    with pytest.raises(TrajectoryMismatchError, match=message):
        build_target(tstores, LR[:T], None, cands)
    with pytest.raises(ValueError, match="label each of the 5"):
        build_target(write_stores(tmp_path / "x", random_blocks(n=5), kind="target_features"), LR, ["a"] * 4, cands)
