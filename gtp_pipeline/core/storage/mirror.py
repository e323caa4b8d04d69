"""Mirror a folder between an fsspec location (object storage) and the local disk.

Some artifacts are written by libraries that only know local files: peft/safetensors checkpoints, Zarr arrays
opened by path. With a remote artifact root those are produced in a local mirror folder and pushed to the root
afterwards; a worker on another machine pulls the folder before it reads (or resumes) it.

Rules that keep a half-finished copy harmless:
- each file is uploaded or downloaded whole (one PUT / GET; see core/storage/atomic.py);
- names starting with "." are never copied (temp folders of an interrupted save);
- "commit" files go last (a checkpoint's trainer_state.json, a Zarr's zarr.json), so a reader that looks for them
  never sees a folder whose other files are still on their way.
Files are compared by relative path and size: artifacts here are written once under content-keyed names and not
edited in place, so a file of the same size is the same file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

COMMIT_FILES = ("trainer_state.json", "zarr.json")


def _hidden(rel: str) -> bool:
    return any(part.startswith(".") for part in rel.split("/"))


def _ordered(rels: list[str]) -> list[str]:
    """Commit files after every other file (within each folder depth, deepest folders first)."""
    return sorted(rels, key=lambda r: (r.rsplit("/", 1)[-1] in COMMIT_FILES, -r.count("/"), r))


def remote_listing(remote: Any) -> dict[str, int]:
    """{relative path: size} of every file under the fsspec location `remote` (a UPath); {} when absent."""
    fs, root = remote.fs, remote.path.rstrip("/")
    fs.invalidate_cache(root)  # other workers write here: never trust a cached listing
    try:
        found = fs.find(root, detail=True)
    except FileNotFoundError:
        return {}
    out = {}
    for name, info in found.items():
        rel = name[len(root) :].lstrip("/")
        if rel and info.get("type") != "directory" and not _hidden(rel):
            out[rel] = int(info.get("size") or 0)
    return out


def local_listing(local: Path) -> dict[str, int]:
    if not local.is_dir():
        return {}
    out = {}
    for p in local.rglob("*"):
        rel = p.relative_to(local).as_posix()
        if p.is_file() and not _hidden(rel):
            out[rel] = p.stat().st_size
    return out


def pull(remote: Any, local: Path) -> int:
    """Download the files of `remote` that `local` lacks (or has with another size); returns how many."""
    have, want = local_listing(local), remote_listing(remote)
    todo = [rel for rel in _ordered(list(want)) if have.get(rel) != want[rel]]
    for rel in todo:
        target = local / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.part")
        remote.fs.get_file(f"{remote.path.rstrip('/')}/{rel}", str(tmp))
        tmp.replace(target)  # a killed download never leaves a file that looks complete
    return len(todo)


def push(local: Path, remote: Any) -> int:
    """Upload the files of `local` that `remote` lacks (or has with another size), commit files last."""
    have, mine = remote_listing(remote), local_listing(local)
    todo = [rel for rel in _ordered(list(mine)) if have.get(rel) != mine[rel]]
    for rel in todo:
        remote.fs.put_file(str(local / rel), f"{remote.path.rstrip('/')}/{rel}")
    return len(todo)
