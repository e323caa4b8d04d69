"""FeatureStore: a resumable, self-describing Zarr store of per-example feature rows.

One store holds an (n_rows x dim) fp16 array chunked along rows, the example_id of every row, a
`valid` mask (rows that were excluded, e.g. a response lost to truncation, are zero and invalid, never
NaN), and the store's identity in its attrs. It backs the gradient features of every checkpoint
(candidates and targets) and the embeddings.

Resume follows TRAK's savers and DataTrove's completions: a chunk is written first, then a marker file
`done/<chunk>` is created atomically, so a killed run loses at most the chunk it was writing. Reopening
compares every identity key (model, checkpoint, projection seed and dimension, feature type, example ids,
...) with what the caller expects and raises `StoreMismatchError` on any difference: two runs are never
mixed in one store.

What is read back is verified. The marker records the CRC32C of the chunk's raw file and of its `valid`
flags (`ChunkRecord`); `read_chunk` and the pursuit's mapped reads (core/features/trajectory.py) check the file
against it and raise `StoreCorruptError` naming the store, the chunk and what differs, and a resume
(`chunks_to_write`) checks every finished chunk and recomputes the ones that fail. A marker without a
checksum (written before checksums were kept) counts as unverifiable: recomputed on resume, refused on read.

Chunks are stored uncompressed (gradient features do not compress), so a chunk file is exactly the
raw little-endian array and `read_chunk` can read it with one `np.fromfile` instead of going through
Zarr's codec pipeline (about 10x faster for the pursuit's streaming pass).

Where a store lives (core/storage/atomic.py `storage_path`), two implementations of the same layout:
- local path (the default, and the fast paths): created under a temp name and renamed into place, markers made
  with temp + `os.replace`, chunks read with `np.fromfile`;
- any fsspec location (`UPath`: `s3://`, `gs://`, `file://`, ...), so workers on other machines share one store:
  Zarr's `FsspecStore`; an object store has no atomic rename, so creation is idempotent instead (every creator
  writes the same bytes, the identity attrs last, nothing is ever deleted), each chunk, `valid` chunk and marker
  is one object written with one PUT (atomic), completion is one listing of `done/`, and chunks are read with one
  GET of the raw chunk object.
Shards write disjoint chunks, and `valid` is chunked like the features, so concurrent writers never touch the
same object; two writers of the same chunk (a retried shard beside its first attempt) each write through their own
temp names and publish identical bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from gtp_pipeline.core.storage.atomic import (
    AnyPath,
    atomic_write,
    is_local,
    remove_stale_temps,
    storage_path,
    temp_sibling,
)
from gtp_pipeline.core.storage.store_records import (
    ChunkRecord,
    StoreCorruptError,
    StoreIncompleteError,
    StoreMeta,
    checksum,
    compare_identity,
    ids_hash,
    valid_crc,
)
from gtp_pipeline.core.storage.zarr_layout import LAYOUT_MARKER, init_group, open_group

logger = logging.getLogger(__name__)


class FeatureStore:
    """A chunked (n_rows x dim) feature array with ids, validity, identity and per-chunk completion."""

    def __init__(self, path: AnyPath, meta: StoreMeta, group: Any):
        self.path, self.meta, self._group = path, meta, group
        self._features = group["features"]

    @property
    def is_local(self) -> bool:
        """True when the store is on this machine's file system (chunk files can be opened or mapped)."""
        return is_local(self.path)

    def chunk_file(self, chunk: int) -> str:
        """Path of chunk `chunk`'s raw file (Zarr v3's default key layout, uncompressed and padded to chunk_rows).

        A plain string (os.path, not pathlib: ~60 us less per call, which the streaming pass pays per file).
        """
        return os.path.join(str(self.path), "features", "c", str(chunk), "0")

    # --- opening -----------------------------------------------------------------------------
    @staticmethod
    def exists(path: str | Path | AnyPath) -> bool:
        """Whether a store was created at `path` (callers need not know the layout on disk)."""
        return (storage_path(path) / LAYOUT_MARKER).exists()

    @classmethod
    def create_or_open(cls, path: str | Path | AnyPath, meta: StoreMeta, example_ids: Sequence[str]) -> FeatureStore:
        """Open the store at `path` if it has exactly this identity, else create it; raise on a mismatch."""
        path = storage_path(path)
        meta = StoreMeta(**{**asdict(meta), "ids_hash": ids_hash(example_ids)})
        if meta.n_rows != len(example_ids):
            raise ValueError(f"meta.n_rows={meta.n_rows} but {len(example_ids)} example ids were given")
        if meta.n_rows < 1 or meta.dim < 1 or meta.chunk_rows < 1:
            raise ValueError(
                f"a store needs n_rows, dim and chunk_rows >= 1, got {meta.n_rows}, {meta.dim}, {meta.chunk_rows}"
            )
        if cls.exists(path):
            try:
                store = cls.open(path)
            except StoreIncompleteError:
                if is_local(path):  # local stores appear by rename, complete: this one is broken
                    raise
                store = None  # remote: another worker is creating it right now (or died doing so); join in
            if store is not None:
                compare_identity(path, meta, store.meta.to_attrs())
                return store
        if not is_local(path):
            return cls._create_remote(path, meta, example_ids)
        # Build the store under a temp name and rename it into place: workers that create the same store at
        # once (gradient shards) race on the rename, and the losers open the winner's store and compare.
        for stale in remove_stale_temps(path):  # left by a creator killed mid-way
            logger.info("removed %s, left by a store creation that was killed", stale)
        tmp = temp_sibling(path)
        init_group(open_group(tmp, "w"), meta, example_ids, overwrite=True)
        (tmp / "done").mkdir(exist_ok=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(tmp, path)
        except OSError:  # another process created it first
            shutil.rmtree(tmp, ignore_errors=True)
            store = cls.open(path)
            compare_identity(path, meta, store.meta.to_attrs())
            return store
        return cls.open(path)

    @classmethod
    def _create_remote(cls, path: AnyPath, meta: StoreMeta, example_ids: Sequence[str]) -> FeatureStore:
        """Create in place, idempotently: concurrent creators write identical objects; meta attrs come last."""
        logger.info("creating feature store %s", path)
        init_group(open_group(path, "a"), meta, example_ids, overwrite=False)
        store = cls.open(path)
        compare_identity(path, meta, store.meta.to_attrs())  # a creator with another identity got there first
        return store

    @classmethod
    def open(cls, path: str | Path | AnyPath, expected: StoreMeta | None = None) -> FeatureStore:
        """Open an existing store; with `expected`, raise StoreMismatchError unless every key matches.

        `expected.ids_hash` is compared only when set.
        """
        path = storage_path(path)
        if not cls.exists(path):
            raise FileNotFoundError(f"no feature store at {path}")
        group = open_group(path, "r+")
        attrs = group.attrs.get("meta")
        if attrs is None:
            raise StoreIncompleteError(f"store {path} was never initialized (no meta attrs); delete it and rerun")
        meta = StoreMeta(**attrs)
        if expected is not None:
            want = expected if expected.ids_hash else StoreMeta(**{**asdict(expected), "ids_hash": meta.ids_hash})
            compare_identity(path, want, attrs)
        return cls(path, meta, group)

    # --- chunks and completion ------------------------------------------------------------------
    @property
    def n_chunks(self) -> int:
        return -(-self.meta.n_rows // self.meta.chunk_rows)

    def chunk_bounds(self, chunk: int) -> tuple[int, int]:
        if not 0 <= chunk < self.n_chunks:
            raise IndexError(f"chunk {chunk} outside 0..{self.n_chunks - 1}")
        start = chunk * self.meta.chunk_rows
        return start, min(start + self.meta.chunk_rows, self.meta.n_rows)

    def _marker(self, chunk: int) -> AnyPath:
        return self.path / "done" / f"{chunk:07d}"

    def is_chunk_done(self, chunk: int) -> bool:
        if self.is_local:
            return self._marker(chunk).exists()
        return chunk in self._done_remote()

    def _done_remote(self) -> set[int]:
        """Chunks with a marker, from one listing of done/ (never from fsspec's listing cache: other workers write)."""
        fs, folder = self.path.fs, (self.path / "done").path
        fs.invalidate_cache(folder)
        try:
            names = fs.ls(folder, detail=False)
        except FileNotFoundError:  # object stores have no empty folders: no marker yet
            return set()
        return {int(name.rsplit("/", 1)[-1]) for name in names if name.rsplit("/", 1)[-1].isdigit()}

    def missing_chunks(self) -> list[int]:
        if self.is_local:
            return [c for c in range(self.n_chunks) if not self.is_chunk_done(c)]
        done = self._done_remote()
        return [c for c in range(self.n_chunks) if c not in done]

    def is_complete(self) -> bool:
        return not self.missing_chunks()

    def write_chunk(self, chunk: int, features: np.ndarray, valid: np.ndarray) -> None:
        """Write one chunk's rows, then mark it done with their checksums. Invalid rows must be zero (never NaN).

        The raw chunk file is written here rather than through Zarr (same key, same bytes: uncompressed,
        little-endian, padded to chunk_rows), so its checksum is of exactly what lands on disk and it is
        published by one rename (local) or one PUT (object store), under a temp name of this writer's own.
        """
        start, stop = self.chunk_bounds(chunk)
        if features.shape != (stop - start, self.meta.dim):
            raise ValueError(
                f"chunk {chunk} needs features of shape {(stop - start, self.meta.dim)}, got {features.shape}"
            )
        valid = np.asarray(valid, dtype=bool)
        if valid.shape != (stop - start,):
            raise ValueError(f"chunk {chunk} needs {stop - start} validity flags, got {valid.shape}")
        rows = np.asarray(features, dtype=self.meta.dtype)
        if not np.isfinite(rows[valid]).all():
            raise ValueError(f"chunk {chunk} has non-finite features in rows marked valid")
        raw = np.zeros((self.meta.chunk_rows, self.meta.dim), dtype=np.dtype(self.meta.dtype).newbyteorder("<"))
        raw[: stop - start] = np.where(valid[:, None], rows, 0)  # Zarr pads the last chunk with the fill value 0
        record = ChunkRecord(raw.nbytes, checksum(raw), valid_crc(valid))
        self._publish(self._chunk_path(chunk), raw)
        self._group["valid"][start:stop] = valid
        self._publish(self._marker(chunk), record.to_bytes())  # the chunk counts as written only once this lands

    def _chunk_path(self, chunk: int) -> AnyPath:
        return self.path / "features" / "c" / str(chunk) / "0"  # the file chunk_file() names, as a (U)Path

    def _publish(self, path: AnyPath, data: Any) -> None:
        """Make `path` hold `data` in one atomic step (core/storage/atomic.py: temp + rename locally, one PUT remotely)."""
        atomic_write(path, lambda tmp: tmp.write_bytes(memoryview(data).cast("B")))

    # --- verification -------------------------------------------------------------------------------
    def chunk_record(self, chunk: int) -> ChunkRecord | None:
        """The checksums chunk `chunk`'s marker recorded; None if it records none. Raises if it is not done."""
        try:
            if self.is_local:  # os-level open: the pursuit reads one marker per chunk and store on its first pass
                with open(os.path.join(str(self.path), "done", f"{chunk:07d}"), "rb") as fh:
                    data = fh.read()
            else:
                marker = self._marker(chunk)
                data = marker.fs.cat_file(marker.path)
        except FileNotFoundError:
            raise StoreIncompleteError(
                f"chunk {chunk} of {self.path} has not been written; rerun the asset that fills it"
            ) from None
        return ChunkRecord.parse(data)

    def _verified_record(self, chunk: int) -> ChunkRecord:
        record = self.chunk_record(chunk)
        if record is None:
            raise StoreCorruptError(
                self.path, chunk, "its done-marker records no checksum (written before checksums were kept)"
            )
        return record

    def verify(self, chunk: int, features: Any, valid: np.ndarray | None = None) -> None:
        """Raise StoreCorruptError unless `features` (the raw chunk file's bytes as read) match the marker."""
        problem = self._verified_record(chunk).problem_with(features, valid)
        if problem:
            raise StoreCorruptError(self.path, chunk, problem)

    def chunk_problem(self, chunk: int) -> str | None:
        """Why finished chunk `chunk` fails verification (file and valid flags read back in full), or None."""
        try:
            features = self._read_raw(chunk)
        except FileNotFoundError:
            return "its features file is missing"
        try:
            valid = self._group["valid"][slice(*self.chunk_bounds(chunk))]
        except Exception as err:  # a damaged compressed chunk raises whatever its codec raises
            return f"its valid flags cannot be read ({type(err).__name__}: {err})"
        try:
            self.verify(chunk, features, valid)
        except StoreCorruptError as err:
            return err.problem
        return None

    def chunks_to_write(self, chunks: Sequence[int] | None = None) -> list[int]:
        """Chunks (of `chunks`, default all) a resume must compute: not done, or done but failing verification.

        Reads every finished chunk once. A failing chunk is logged and its marker removed, so a run killed while
        recomputing it leaves it plainly missing.
        """
        todo = []
        for c in range(self.n_chunks) if chunks is None else chunks:
            if not self.is_chunk_done(c):
                todo.append(c)
            elif (problem := self.chunk_problem(c)) is not None:
                logger.warning("store %s: chunk %d is recomputed: %s", self.path, c, problem)
                marker = self._marker(c)
                if self.is_local:
                    marker.unlink(missing_ok=True)
                else:
                    marker.fs.rm_file(marker.path)
                todo.append(c)
        return todo

    # --- reading --------------------------------------------------------------------------------
    def _require(self, chunk: int) -> None:
        if not self.is_chunk_done(chunk):
            raise StoreIncompleteError(
                f"chunk {chunk} of {self.path} has not been written; rerun the asset that fills it"
            )

    def _read_raw(self, chunk: int) -> np.ndarray:
        """Chunk `chunk`'s raw file as a flat fp16 array (padded to chunk_rows), unverified."""
        dtype = np.dtype(self.meta.dtype).newbyteorder("<")
        if self.is_local:
            return np.fromfile(self.chunk_file(chunk), dtype=dtype)
        chunk_file = self._chunk_path(chunk)  # one GET of the raw chunk object
        return np.frombuffer(bytearray(chunk_file.fs.cat_file(chunk_file.path)), dtype=dtype)

    def read_chunk(self, chunk: int) -> np.ndarray:
        """One chunk's rows as fp16 (rows x dim), read straight from its raw chunk file and verified."""
        self._require(chunk)
        start, stop = self.chunk_bounds(chunk)
        try:
            data = self._read_raw(chunk)
        except FileNotFoundError:
            raise StoreCorruptError(self.path, chunk, "its features file is missing") from None
        self.verify(chunk, data)
        # Zarr pads the last chunk to full size on disk; keep only the real rows.
        return data.reshape(self.meta.chunk_rows, self.meta.dim)[: stop - start]

    def read_rows(self, rows: np.ndarray | slice) -> np.ndarray:
        """Arbitrary rows (e.g. k-means seeds) as fp16, from verified chunks."""
        rows = np.arange(self.meta.n_rows)[rows] if isinstance(rows, slice) else np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.meta.dim), dtype=self.meta.dtype)
        chunk_of = rows // self.meta.chunk_rows
        for c in np.unique(chunk_of).tolist():
            sel = np.flatnonzero(chunk_of == c)
            out[sel] = self.read_chunk(c)[rows[sel] - c * self.meta.chunk_rows]
        return out

    def valid_mask(self) -> np.ndarray:
        """(n_rows,) validity flags; those of finished chunks are verified against their markers."""
        valid = self._group["valid"][:]
        done = set(range(self.n_chunks)) - set(self.missing_chunks())
        for c in sorted(done):
            problem = self._verified_record(c).valid_problem(valid[slice(*self.chunk_bounds(c))])
            if problem:
                raise StoreCorruptError(self.path, c, problem)
        return valid

    def example_ids(self) -> np.ndarray:
        return np.asarray(self._group["example_id"][:], dtype=object)

    def content_hash(self) -> str:
        """A hash of the store's identity and every written byte of its rows: its Dagster data version."""
        if not self.is_complete():
            raise StoreIncompleteError(f"store {self.path} has missing chunks {self.missing_chunks()[:5]}...")
        digest = hashlib.sha256(json.dumps(self.meta.to_attrs(), sort_keys=True).encode())
        for c in range(self.n_chunks):
            digest.update(self.read_chunk(c).tobytes())
        digest.update(np.packbits(self.valid_mask()).tobytes())
        return digest.hexdigest()[:24]

    def nbytes_on_disk(self) -> int:
        if not self.is_local:
            return int(self.path.fs.du(self.path.path, total=True))
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())
