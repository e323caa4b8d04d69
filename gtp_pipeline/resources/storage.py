"""ArtifactStore: the one root under which every artifact of a run lives, on a local disk or any fsspec location.

`root` is a local folder (the default) or a URL that fsspec understands (`s3://bucket/gtp`, `gs://...`,
`file:///mnt/shared/gtp`), so Dask/k8s workers on other machines read and write the same stores. Local roots
give `pathlib.Path`s (the fast paths: np.fromfile, temp + rename); URL roots give `upath.UPath`s carrying
`storage_options` (e.g. `{"endpoint_url": "http://minio:9000"}` for an S3-compatible server). Credentials are
best left to the provider's usual environment (AWS_ACCESS_KEY_ID, ...; fsspec also reads FSSPEC_S3_* variables),
so nothing secret sits in run config.

Artifacts that libraries write as plain files (checkpoints, centroids) go through `local_folder`: the folder
itself for a local root; for a URL root, a local mirror that is pulled before and pushed after (core/storage/mirror.py).
"""

import hashlib
import posixpath
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg

from gtp_pipeline.core.config import settings as env


class ArtifactPathError(ValueError):
    """A requested artifact path would leave the configured root."""


class ArtifactStore(dg.ConfigurableResource):
    """Maps artifact names to paths under `root`; refuses names that would escape it."""

    root: str
    storage_options: dict[str, Any] = {}  # fsspec options for a URL root (endpoint_url, anon, ...); unused locally
    local_cache: str = (
        ""  # mirror of a URL root's file-based artifacts; "" = $GTP_LOCAL_CACHE or ~/.cache/gtp_pipeline
    )

    def is_remote(self) -> bool:
        return "://" in self.root

    def path_for(self, *parts: str) -> Any:
        """`root/part/part/...` (a Path, or a UPath for a URL root); raises on parts that leave the root.

        Local parent folders are created; object stores need none.
        """
        if self.is_remote():
            return self._remote_path(parts)
        base = Path(self.root).resolve()
        path = base.joinpath(*parts).resolve()
        if path != base and base not in path.parents:
            raise ArtifactPathError(
                f"artifact path {'/'.join(parts)!r} resolves to {path}, outside the artifact root {base}"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def _remote_path(self, parts: tuple[str, ...]) -> Any:
        from upath import UPath

        from gtp_pipeline.core.storage.atomic import storage_path

        joined = "/".join(parts)
        rel = posixpath.normpath(joined) if joined else "."
        if any(p.startswith("/") or "://" in p for p in parts) or rel == ".." or rel.startswith("../"):
            raise ArtifactPathError(f"artifact path {joined!r} resolves outside the artifact root {self.root}")
        base = storage_path(UPath(self.root.rstrip("/"), **self.storage_options))
        return base if rel == "." else base.joinpath(*rel.split("/"))

    @contextmanager
    def local_folder(self, *parts: str) -> Iterator[Path]:
        """A local folder for `root/parts...` that plain-file writers can use; synced with a URL root.

        Local root: the folder itself. URL root: a mirror folder, first pulled from the root (to read or resume
        what another worker wrote), then pushed back on exit, also when the body raised (so a failed or
        interrupted step keeps the checkpoints it finished).
        """
        if not self.is_remote():
            path = self.path_for(*parts)
            path.mkdir(parents=True, exist_ok=True)
            yield path
            return
        from gtp_pipeline.core.storage.mirror import pull, push

        remote = self._remote_path(parts)  # validates parts
        base = Path(self.local_cache or env.get("GTP_LOCAL_CACHE") or Path.home() / ".cache" / "gtp_pipeline")
        local = base / "mirror" / hashlib.sha256(self.root.encode()).hexdigest()[:12] / Path(*parts)
        local.mkdir(parents=True, exist_ok=True)
        pull(remote, local)
        try:
            yield local
        finally:
            push(local, remote)
