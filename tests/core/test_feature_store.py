"""FeatureStore: identity checks on reopen, per-chunk completion, invalid rows as zeros, fast chunk reads."""

import numpy as np
import pytest

from gtp_pipeline.core.feature_store import FeatureStore, StoreIncompleteError, StoreMeta, StoreMismatchError

IDS = [f"ex{i:03d}" for i in range(11)]
META = StoreMeta(
    kind="candidate_features", n_rows=11, dim=6, chunk_rows=4, identity={"checkpoint": "ep1", "proj_seed": 0}
)


def fill(store, data, valid=None):
    valid = np.ones(len(data), bool) if valid is None else valid
    for c in store.missing_chunks():
        a, b = store.chunk_bounds(c)
        store.write_chunk(c, data[a:b], valid[a:b])


def files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_chunks_read_back_exactly_including_the_ragged_last_one(tmp_path):
    data = np.random.default_rng(0).standard_normal((11, 6)).astype(np.float16)
    store = FeatureStore.create_or_open(tmp_path / "s.zarr", META, IDS)
    fill(store, data)
    assert store.is_complete() and store.n_chunks == 3
    np.testing.assert_array_equal(np.concatenate([store.read_chunk(c) for c in range(3)]), data)
    np.testing.assert_array_equal(store.read_rows(np.array([10, 0, 5])), data[[10, 0, 5]])
    assert list(store.example_ids()) == IDS


def test_resume_after_partial_write_gives_identical_bytes(tmp_path):
    data = np.random.default_rng(1).standard_normal((11, 6)).astype(np.float16)
    whole = FeatureStore.create_or_open(tmp_path / "whole.zarr", META, IDS)
    fill(whole, data)
    partial = FeatureStore.create_or_open(tmp_path / "part.zarr", META, IDS)
    partial.write_chunk(0, data[:4], np.ones(4, bool))
    reopened = FeatureStore.create_or_open(tmp_path / "part.zarr", META, IDS)
    assert reopened.missing_chunks() == [1, 2]
    fill(reopened, data)
    assert files(tmp_path / "whole.zarr") == files(tmp_path / "part.zarr")


@pytest.mark.parametrize(
    "change",
    [
        {"identity": {"checkpoint": "ep2", "proj_seed": 0}},
        {"identity": {"checkpoint": "ep1", "proj_seed": 1}},
        {"dim": 8},
        {"kind": "target_features"},
    ],
)
def test_open_rejects_store_with_other_identity(tmp_path, change):
    FeatureStore.create_or_open(tmp_path / "s.zarr", META, IDS)
    other = StoreMeta(**{**META.__dict__, **change})
    with pytest.raises(StoreMismatchError) as err:
        FeatureStore.create_or_open(tmp_path / "s.zarr", other, IDS)
    assert str(tmp_path / "s.zarr") in str(err.value)


def test_open_rejects_store_with_other_example_ids(tmp_path):
    FeatureStore.create_or_open(tmp_path / "s.zarr", META, IDS)
    with pytest.raises(StoreMismatchError, match="ids_hash"):
        FeatureStore.create_or_open(tmp_path / "s.zarr", META, IDS[::-1])


def test_invalid_rows_are_stored_as_zeros_and_nan_in_valid_rows_is_refused(tmp_path):
    store = FeatureStore.create_or_open(tmp_path / "s.zarr", META, IDS)
    rows = np.ones((4, 6), np.float32)
    rows[1] = np.nan
    valid = np.array([True, False, True, True])
    store.write_chunk(0, rows, valid)
    assert not np.isnan(store.read_chunk(0)).any()
    assert store.read_chunk(0)[1].tolist() == [0.0] * 6
    assert store.valid_mask()[:4].tolist() == valid.tolist()
    with pytest.raises(ValueError, match="non-finite"):
        store.write_chunk(1, rows, np.ones(4, bool))


def test_reading_an_unwritten_chunk_raises(tmp_path):
    store = FeatureStore.create_or_open(tmp_path / "s.zarr", META, IDS)
    with pytest.raises(StoreIncompleteError):
        store.read_chunk(1)
