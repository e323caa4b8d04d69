"""Where each stage's large artifacts live under the artifact root: one function per kind of store.

Stores are keyed by the corpus version (its content hash), so a refreshed corpus gets new stores
instead of colliding with the old ones, while a rerun on the same corpus resumes the same store.
"""

from pathlib import Path

from gtp_pipeline.resources.storage import ArtifactStore


def corpus_version(raw_corpus) -> str:
    """The same content hash Dagster records as raw_corpus's data version."""
    from gtp_pipeline.core.corpus import table_version

    return table_version(raw_corpus, ("example_id", "content_hash", "task", "contaminated"))


def embeddings_path(store: ArtifactStore, version: str) -> Path:
    return store.path_for("embeddings", f"{version}.zarr")


def centroids_path(store: ArtifactStore, version: str) -> Path:
    return store.path_for("clusters", f"centroids-{version}.zarr")


def gradient_store_path(store: ArtifactStore, asset: str, checkpoint: str, version: str) -> Path:
    return store.path_for(asset, checkpoint, f"{version}.zarr")


def checkpoints_dir(store: ArtifactStore) -> Path:
    return store.path_for("warmup_checkpoints", "checkpoints")
