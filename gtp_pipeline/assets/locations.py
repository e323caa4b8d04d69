"""Where each stage's large artifacts live under the artifact root: one function per kind of store.

Stores are keyed by the corpus version (its content hash), so a refreshed corpus gets new stores
instead of colliding with the old ones, while a rerun on the same corpus resumes the same store.
"""

from pathlib import Path

from gtp_pipeline.resources.storage import ArtifactStore


def corpus_version(raw_corpus) -> str:
    """The same content hash Dagster records as raw_corpus's data version."""
    from gtp_pipeline.core.ingest.corpus import table_version

    return table_version(raw_corpus, ("example_id", "content_hash", "task", "contaminated"))


def target_version(target_examples) -> str:
    """The same content hash Dagster records as target_examples's data version."""
    from gtp_pipeline.core.ingest.corpus import table_version
    from gtp_pipeline.core.ingest.targets import TARGET_COLUMNS

    return table_version(target_examples, TARGET_COLUMNS[:-2])


def selection_version(table) -> str:
    """Content hash of a selection (or sampling plan) table: what was picked, not how long picking took, so a
    re-run selection with the same picks resumes its fine-tunes instead of starting them over."""
    from gtp_pipeline.core.ingest.corpus import table_version

    return table_version(table, tuple(c for c in table.columns if c != "select_seconds"))


def combined_hash(parts: list[str]) -> str:
    import hashlib

    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:24]


def embeddings_path(store: ArtifactStore, version: str) -> Path:
    return store.path_for("embeddings", f"{version}.zarr")


def centroids_name(version: str) -> str:
    """The centroid array's name in the `clusters` folder (written through ArtifactStore.local_folder)."""
    return f"centroids-{version}.zarr"


def gradient_store_path(store: ArtifactStore, asset: str, checkpoint: str, version: str) -> Path:
    return store.path_for(asset, checkpoint, f"{version}.zarr")


WARMUP_KEY_PREFIX = "warmup-e"  # model_checkpoint keys of warm-up checkpoints; user checkpoints may not use it


def warmup_parts(version: str) -> tuple[str, str]:
    """The warm-up checkpoints' folder under the artifact root (used through ArtifactStore.local_folder)."""
    return ("warmup_checkpoints", version)


def warmup_key(epoch: float) -> str:
    return f"{WARMUP_KEY_PREFIX}{round(epoch)}"


def _added_by_hand(key: str) -> str:
    return (
        f"; if partition {key!r} was added by hand (the launch dialog offers to add a partition), remove it: "
        f"python -m gtp_pipeline.demo --remove-checkpoint {key}"
    )


def resolve_checkpoint(store: ArtifactStore, version: str, key: str, user_dir: str = ""):
    """The checkpoint behind a model_checkpoint partition key: a warm-up epoch of this corpus, or a user folder."""
    from gtp_pipeline.core.training.checkpoints import list_checkpoints, read_checkpoint

    if key.startswith(WARMUP_KEY_PREFIX):
        with store.local_folder(*warmup_parts(version)) as folder:  # pulled first when the root is remote
            found = [c for c in list_checkpoints(folder) if warmup_key(c.epoch) == key]
        if not found:
            raise FileNotFoundError(
                f"no warm-up checkpoint {key!r} for corpus {version}: materialize warmup_checkpoints first"
                + _added_by_hand(key)
            )
        return found[-1]
    if not user_dir:
        raise FileNotFoundError(
            f"checkpoint {key!r} is not a warm-up checkpoint and no checkpoint folder is configured (GTP_CHECKPOINT_DIR)"
            + _added_by_hand(key)
        )
    path = Path(user_dir) / key
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint folder {path} does not exist" + _added_by_hand(key))
    return read_checkpoint(path)
