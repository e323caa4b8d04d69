"""ArtifactStore: the one root under which every artifact of a run lives."""

from pathlib import Path

import dagster as dg


class ArtifactPathError(ValueError):
    """A requested artifact path would leave the configured root."""


class ArtifactStore(dg.ConfigurableResource):
    """Maps artifact names to paths under `root`; refuses names that would escape it."""

    root: str

    def path_for(self, *parts: str) -> Path:
        """`root/part/part/...`, created parent folders included; raises on '..' or absolute parts."""
        base = Path(self.root).resolve()
        path = base.joinpath(*parts).resolve()
        if path != base and base not in path.parents:
            raise ArtifactPathError(
                f"artifact path {'/'.join(parts)!r} resolves to {path}, outside the artifact root {base}"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        return path
