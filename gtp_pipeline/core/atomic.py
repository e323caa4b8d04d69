"""Atomic file writes: write to a temp name beside the target, then rename, so a reader never sees half a file."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call `write(tmp_path)`, then rename tmp_path to `path` (same folder, so the rename is atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_parquet(frame: Any, path: str | Path) -> Path:
    """Write a polars DataFrame to Parquet atomically."""
    return atomic_write(path, lambda tmp: frame.write_parquet(tmp))


def write_bytes(data: bytes, path: str | Path) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))
