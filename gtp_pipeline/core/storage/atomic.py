"""Atomic file writes, on a local disk or on any fsspec location (object storage), and the local/remote path split.

A reader must never see half a file. How that is guaranteed depends on where the file lives:
- local paths (`pathlib.Path`, or a plain string): write to a temp name beside the target, then `os.replace` it
  into place (same folder, so the rename is atomic);
- fsspec locations (`upath.UPath` with a protocol: `s3://`, `gs://`, `memory://`, `file://`, ...): an object
  store has no rename (it would be a copy, then a delete), but one PUT is atomic: the object appears whole or not
  at all. So the content is written to a local temp file first and then uploaded with one `put_file` (large
  files go as a multipart upload, which also becomes visible only when it completes).

`storage_path` turns what callers pass (str, Path, UPath) into one of the two kinds; `is_local` tells them apart.
Both stay cheap to import: universal-pathlib is only touched for URLs.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

AnyPath = Any  # pathlib.Path for local files, upath.UPath for fsspec locations


def storage_path(path: str | os.PathLike | AnyPath) -> AnyPath:
    """A `Path` for a local path, a `UPath` for a URL ("s3://...", "file://...") or an existing UPath."""
    if isinstance(path, Path):
        return path  # includes upath's local PosixUPath, which is a pathlib.Path
    if isinstance(path, str):
        if "://" not in path:
            return Path(path)
        from upath import UPath

        path = UPath(path)
    elif not (hasattr(path, "protocol") and hasattr(path, "fs")):
        return Path(path)
    if path.protocol in ("file", "local") and "auto_mkdir" not in path.storage_options:
        # "file://" goes through the generic code path; like an object store it then needs no folders made
        from upath import UPath

        path = UPath(str(path), **path.storage_options, auto_mkdir=True)
    return path


def is_local(path: AnyPath) -> bool:
    """True for a path on this machine's file system that the os module can open (the fast paths)."""
    return isinstance(path, Path)


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def temp_sibling(path: Path) -> Path:
    """A temp name beside `path`, unique to this writer: `.<name>.<host>-<pid>-<random>.tmp`.

    Unique so that two writers of the same file never share (and never rename away) each other's temp file; the
    host and pid let `remove_stale_temps` tell a temp left by a killed writer from one being written right now.
    """
    return path.with_name(f".{path.name}.{_host_tag()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temps(path: Path) -> list[Path]:
    """Remove temp siblings of `path` (files or folders) left by writers on this host that no longer run.

    Temps of live processes, and of other hosts sharing the folder, are left alone. Returns what was removed.
    """
    removed = []
    host = _host_tag()
    if not path.parent.is_dir():
        return removed
    for tmp in path.parent.glob(f".{path.name}.{host}-*.tmp"):
        pid = tmp.name[len(f".{path.name}.{host}-") :].split("-", 1)[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def atomic_write(path: str | Path | AnyPath, write: Callable[[Path], Any]) -> AnyPath:
    """Call `write(tmp_path)` with a local temp path, then publish it at `path` in one atomic step.

    Local: rename beside the target. fsspec location: one upload of the finished temp file.
    """
    path = storage_path(path)
    if is_local(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_sibling(path)
        try:
            write(tmp)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        return path
    with tempfile.TemporaryDirectory(prefix="gtp-upload-") as folder:
        tmp = Path(folder) / path.name
        write(tmp)
        path.fs.put_file(str(tmp), path.path)  # one PUT (or a multipart upload completed at the end)
    return path


def write_parquet(frame: Any, path: str | Path | AnyPath) -> AnyPath:
    """Write a polars DataFrame to Parquet atomically."""
    return atomic_write(path, lambda tmp: frame.write_parquet(tmp))


def write_bytes(data: bytes, path: str | Path | AnyPath) -> AnyPath:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def read_parquet(path: str | Path | AnyPath) -> Any:
    """Read a Parquet file into a polars DataFrame, from a local path or any fsspec location."""
    import polars as pl

    path = storage_path(path)
    if is_local(path):
        return pl.read_parquet(path)
    with path.open("rb") as fh:
        return pl.read_parquet(fh)
