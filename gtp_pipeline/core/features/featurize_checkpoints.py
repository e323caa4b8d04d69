"""One example set featurized at several checkpoints (a store per checkpoint), or one shard of a store: the loops the
gradient stages run around `featurize`, with the per-checkpoint numbers a reader wants."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gtp_pipeline.core.features.featurize import FeatureConfig, FeaturizeReport, featurize
from gtp_pipeline.core.ingest.records import TextExample
from gtp_pipeline.core.storage.feature_store import FeatureStore
from gtp_pipeline.core.training.checkpoints import CheckpointInfo

logger = logging.getLogger(__name__)


def shard_chunks(n_examples: int, chunk_rows: int, shard: int, n_shards: int) -> list[int]:
    """The store chunks of one shard: chunk c belongs to shard c % n_shards, so shards interleave along the store."""
    return [c for c in range(-(-n_examples // chunk_rows)) if c % n_shards == shard]


def featurize_shard(
    loaded: Any,
    examples: Sequence[TextExample],
    store_path: str | Path,
    checkpoint: CheckpointInfo | None,
    config: FeatureConfig,
    identity: dict[str, Any],
    device: torch.device | str,
    shard: int,
    n_shards: int,
) -> FeaturizeReport:
    """`featurize` restricted to one shard's chunks (`shard_chunks`); `loaded` is a core LoadedModel."""
    chunks = shard_chunks(len(examples), config.chunk_rows, shard, n_shards)
    return featurize(
        loaded.model,
        loaded.tokenizer,
        examples,
        store_path,
        checkpoint,
        config,
        loaded.model_id,
        identity,
        device,
        chunks=chunks,
    )


@dataclass(frozen=True)
class CheckpointFeatures:
    """One example set featurized at several checkpoints: a report row and a content hash per checkpoint."""

    rows: list[dict[str, Any]]  # per checkpoint: counts, chunks computed and resumed, speed, size on disk
    hashes: list[str]  # each store's content hash, in checkpoint order
    invalid: list[dict[str, str]]  # checkpoint, example_id, reason: every row that could not be a feature

    def excluded_frame(self) -> Any:
        """`invalid` as a polars table (typed even when empty)."""
        import polars as pl

        return pl.DataFrame(
            self.invalid, schema={"checkpoint": pl.String, "example_id": pl.String, "reason": pl.String}
        )


def featurize_checkpoints(
    loaded: Any,
    examples: Sequence[TextExample],
    keys: Sequence[str],
    resolve: Callable[[str], CheckpointInfo],
    path_for: Callable[[str], str | Path],
    config: FeatureConfig,
    data_version: str,
    device: torch.device | str,
    label: str,
    log: Callable[[str], None] = logger.info,
) -> CheckpointFeatures:
    """`featurize` the examples at each checkpoint key into its own store (`resolve(key)` gives the checkpoint,
    `path_for(key)` the store); `data_version` goes into every store's identity, `label` into the log lines."""
    rows, hashes, invalid = [], [], []
    for key in keys:
        start = time.perf_counter()
        checkpoint, path = resolve(key), path_for(key)

        def progress(done: int, total: int, key: str = key) -> None:
            log(f"{label}[{key}]: {done}/{total} examples")

        identity = {"data_version": data_version, "checkpoint": key}
        report = featurize(
            loaded.model,
            loaded.tokenizer,
            examples,
            path,
            checkpoint,
            config,
            loaded.model_id,
            identity,
            device,
            progress,
        )
        store = FeatureStore.open(path)
        hashes.append(store.content_hash())
        invalid += [{"checkpoint": key, "example_id": e, "reason": r} for e, r in report.invalid]
        rows.append(
            {
                "checkpoint": key,
                "examples": report.n_examples,
                "valid": report.n_valid,
                # a rate only where this call computed chunks (they may all come from earlier shard steps)
                "examples_per_s": round(report.examples_per_s, 2) if report.chunks_written else None,
                "chunks_computed": report.chunks_written,
                "chunks_resumed": report.chunks_skipped,
                "projecting_share": round(report.seconds_projecting / max(report.seconds, 1e-9), 3),
                "MB_on_disk": round(store.nbytes_on_disk() / 1e6, 2),
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
        rate = f", {report.examples_per_s:.1f} examples/s" if report.chunks_written else ", every chunk already done"
        log(f"{label}[{key}]: {report.n_valid}/{report.n_examples} valid{rate}")
    return CheckpointFeatures(rows, hashes, invalid)
