"""FeatureStore: identity checks on reopen, per-chunk completion, checksummed chunks, invalid rows as zeros,
fast chunk reads, concurrent writers."""

import multiprocessing as mp
import os

import numpy as np
import pytest

from gtp_pipeline.core.features.store_trajectories import StoreTrajectories
from gtp_pipeline.core.storage.atomic import temp_sibling
from gtp_pipeline.core.storage.feature_store import FeatureStore
from gtp_pipeline.core.storage.store_records import (
    StoreCorruptError,
    StoreIncompleteError,
    StoreMeta,
    StoreMismatchError,
)

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


DATA = np.random.default_rng(7).standard_normal((11, 6)).astype(np.float16)


def damage_file(path, how):
    data = bytearray(path.read_bytes())
    if how == "flip":
        data[5] ^= 0x01
        path.write_bytes(bytes(data))
    elif how == "zero":
        path.write_bytes(bytes(len(data)))
    elif how == "truncate":
        path.write_bytes(bytes(data[:-2]))
    else:
        path.unlink()


@pytest.mark.parametrize("how", ["flip", "zero", "truncate", "delete"])
def test_damaged_chunk_file_is_detected_on_every_read_path_and_repaired_on_resume(tmp_path, how):
    whole = FeatureStore.create_or_open(tmp_path / "whole.zarr", META, IDS)
    fill(whole, DATA)
    store = FeatureStore.create_or_open(tmp_path / "s.zarr", META, IDS)
    fill(store, DATA)
    damage_file(tmp_path / "s.zarr" / "features" / "c" / "1" / "0", how)
    with pytest.raises(StoreCorruptError, match=r"chunk 1 of store .*s\.zarr is corrupt: its features file") as err:
        store.read_chunk(1)
    assert err.value.chunk == 1
    with pytest.raises(StoreCorruptError, match="chunk 1"):
        store.read_rows(np.array([0, 5]))
    with pytest.raises(StoreCorruptError, match="chunk 1"):
        store.content_hash()
    view = StoreTrajectories([store], [1.0])
    with pytest.raises(StoreCorruptError, match="chunk 1"):
        view.correlate(np.ones(6))
    assert store.chunks_to_write() == [1] and store.missing_chunks() == [1]  # the bad chunk's marker is gone
    fill(store, DATA)
    assert store.chunks_to_write() == []
    assert files(tmp_path / "s.zarr") == files(tmp_path / "whole.zarr")


def test_damaged_valid_flags_are_detected_and_repaired(tmp_path):
    store = FeatureStore.create_or_open(tmp_path / "s.zarr", META, IDS)
    fill(store, DATA)
    (tmp_path / "s.zarr" / "valid" / "c" / "2").unlink()  # flags read back as the fill value False
    with pytest.raises(StoreCorruptError, match="chunk 2 .*valid flags"):
        store.valid_mask()
    assert store.chunks_to_write() == [2]
    fill(store, DATA)
    assert store.valid_mask().all()


def test_a_marker_without_checksum_is_unverifiable_so_recomputed(tmp_path):
    store = FeatureStore.create_or_open(tmp_path / "s.zarr", META, IDS)
    fill(store, DATA)
    (tmp_path / "s.zarr" / "done" / "0000000").write_bytes(b"")  # what versions before checksums wrote
    with pytest.raises(StoreCorruptError, match="records no checksum"):
        store.read_chunk(0)
    assert store.chunks_to_write() == [0]


def test_a_view_verifies_each_chunk_once_then_trusts_the_mapped_file(tmp_path):
    store = FeatureStore.create_or_open(tmp_path / "s.zarr", META, IDS)
    fill(store, DATA)
    view = StoreTrajectories([store], [1.0])
    first = view.correlate(np.ones(6))
    assert view._verified.all()
    np.testing.assert_array_equal(view.correlate(np.ones(6)), first)


def _write_same_chunks(path, n_writes):
    store = FeatureStore.open(path)
    for i in range(n_writes):
        c = i % store.n_chunks
        a, b = store.chunk_bounds(c)
        store.write_chunk(c, DATA[a:b], np.ones(b - a, bool))


def test_two_processes_writing_the_same_chunks_never_crash_and_end_byte_identical(tmp_path):
    reference = FeatureStore.create_or_open(tmp_path / "ref.zarr", META, IDS)
    fill(reference, DATA)
    FeatureStore.create_or_open(tmp_path / "s.zarr", META, IDS)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_write_same_chunks, args=(tmp_path / "s.zarr", 1000)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0]
    assert files(tmp_path / "s.zarr") == files(tmp_path / "ref.zarr")
    assert FeatureStore.open(tmp_path / "s.zarr").chunks_to_write() == []


def test_a_creation_killed_midway_leaves_no_temp_folder_behind(tmp_path):
    ctx = mp.get_context("spawn")
    gone = ctx.Process(target=os.getpid)
    gone.start()
    gone.join()
    stale = temp_sibling(tmp_path / "s.zarr")
    stale = stale.with_name(stale.name.replace(f"-{os.getpid()}-", f"-{gone.pid}-"))
    stale.mkdir()  # what a creator killed before its rename leaves
    live = temp_sibling(tmp_path / "s.zarr")
    live.mkdir()  # a creator of this process (alive) that is still working
    FeatureStore.create_or_open(tmp_path / "s.zarr", META, IDS)
    assert not stale.exists() and live.exists()
