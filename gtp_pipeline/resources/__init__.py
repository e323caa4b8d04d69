"""Resources per profile, chosen in one place (`resources_for_profile`)."""

from __future__ import annotations

import os
from pathlib import Path

from gtp_pipeline.resources.io_managers import ParquetIOManager
from gtp_pipeline.resources.profile import ProfileResource
from gtp_pipeline.resources.storage import ArtifactStore

ARTIFACT_ROOT_ENV = "GTP_ARTIFACT_ROOT"


def default_artifact_root(profile: str) -> str:
    """$GTP_ARTIFACT_ROOT, else `artifacts/<profile>` in the checkout."""
    env = os.environ.get(ARTIFACT_ROOT_ENV)
    if env:
        return env
    return str(Path(__file__).resolve().parents[2] / "artifacts" / profile)


def resources_for_profile(profile: str, artifact_root: str | None = None) -> dict:
    """Every resource the assets need, configured for `profile` (tiny | demo | full)."""
    store = ArtifactStore(root=artifact_root or default_artifact_root(profile))
    return {
        "profile": ProfileResource(
            name=profile,
            corpus_files=[p for p in os.environ.get("GTP_CORPUS_FILES", "").replace(",", ":").split(":") if p],
            target_files=[p for p in os.environ.get("GTP_TARGET_FILES", "").replace(",", ":").split(":") if p],
            target_task=os.environ.get("GTP_TARGET_TASK") or None,
        ),
        "store": store,
        "io_manager": ParquetIOManager(store=store),
    }
