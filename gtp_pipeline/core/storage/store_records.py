"""What a FeatureStore records about itself and each chunk: its identity (`StoreMeta`, compared on every reopen),
the CRC32C record of each finished chunk (`ChunkRecord`), and the errors a mismatched, incomplete or corrupt store
raises. The store itself, and why it is built this way: core/storage/feature_store.py."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gtp_pipeline.core.storage.atomic import (
    AnyPath,
)

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1


class StoreMismatchError(ValueError):
    """An existing store was written with another identity than the one expected."""

    def __init__(self, path: str | Path, key: str, expected: Any, found: Any):
        self.path, self.key, self.expected, self.found = str(path), key, expected, found
        super().__init__(
            f"store {path} was written with {key}={found!r}, but this run expects {key}={expected!r}. "
            f"Use another artifact root, or delete the store to recompute it."
        )


class StoreIncompleteError(RuntimeError):
    """A reader asked for a store (or chunk) that has not been fully written."""


class StoreCorruptError(RuntimeError):
    """A finished chunk's bytes differ from what its done-marker recorded when it was written."""

    def __init__(self, path: AnyPath, chunk: int, problem: str):
        self.path, self.chunk, self.problem = str(path), chunk, problem
        super().__init__(
            f"chunk {chunk} of store {path} is corrupt: {problem}. Rerun the asset that wrote it: a resume "
            f"recomputes every chunk that fails its checksum."
        )


def checksum(data: Any) -> int:
    """CRC32C of a buffer (bytes, a C-contiguous array, a memory map), read in place."""
    import crc32c

    return crc32c.crc32c(data)


@dataclass(frozen=True)
class ChunkRecord:
    """What a done-marker records about its chunk: the size and CRC32C of the raw file and of the valid flags."""

    features_bytes: int
    features_crc32c: int
    valid_crc32c: int  # of the chunk's rows' flags as one byte per row (0/1)

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def parse(cls, data: bytes) -> ChunkRecord | None:
        """The record in a marker's bytes; None for a marker that records no checksum (an older version's)."""
        try:
            return cls(**json.loads(data))
        except (ValueError, TypeError):
            return None

    def problem_with(self, features: Any, valid: np.ndarray | None = None) -> str | None:
        """What differs between this record and the bytes read back (None: nothing)."""
        n = memoryview(features).nbytes
        if n != self.features_bytes:
            return f"its features file has {n} bytes where {self.features_bytes} were written"
        crc = checksum(features)
        if crc != self.features_crc32c:
            return f"its features file has CRC32C {crc:#010x} where {self.features_crc32c:#010x} was written"
        return None if valid is None else self.valid_problem(valid)

    def valid_problem(self, valid: np.ndarray) -> str | None:
        if (crc := valid_crc(valid)) != self.valid_crc32c:
            return f"its valid flags have CRC32C {crc:#010x} where {self.valid_crc32c:#010x} was written"
        return None


def valid_crc(valid: np.ndarray) -> int:
    return checksum(np.ascontiguousarray(valid, dtype=np.uint8))


@dataclass(frozen=True)
class StoreMeta:
    """What a store holds; every field is compared on reopen."""

    kind: str  # "candidate_features" | "target_features" | "embeddings"
    n_rows: int
    dim: int
    chunk_rows: int  # rows per chunk: the unit of work, of resume, and of streaming reads
    dtype: str = "float16"
    identity: dict[str, Any] = field(default_factory=dict)  # model, checkpoint, projection seed/dim/type, ...
    ids_hash: str = ""  # hash of the example_id column, set by `create_or_open`
    schema_version: int = SCHEMA_VERSION

    def to_attrs(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), sort_keys=True))


def ids_hash(example_ids: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for eid in example_ids:
        digest.update(str(eid).encode())
        digest.update(b"\n")
    return digest.hexdigest()[:32]


def compare_identity(path: AnyPath, expected: StoreMeta, found: dict[str, Any]) -> None:
    want = expected.to_attrs()
    for key in ("schema_version", "kind", "n_rows", "dim", "chunk_rows", "dtype", "ids_hash"):
        if want[key] != found.get(key):
            raise StoreMismatchError(path, key, want[key], found.get(key))
    for key in sorted(set(want["identity"]) | set(found.get("identity", {}))):
        if want["identity"].get(key) != found.get("identity", {}).get(key):
            raise StoreMismatchError(
                path, f"identity.{key}", want["identity"].get(key), found.get("identity", {}).get(key)
            )
