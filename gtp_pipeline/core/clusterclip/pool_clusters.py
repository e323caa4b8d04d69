"""The pool's clustering as ClusterClip's stages use it: each example's cluster, a few members that show what the
largest clusters hold, and the centroid array kept beside the assignments."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gtp_pipeline.core.clusterclip.kmeans import KMeansConfig, KMeansResult, OnIteration, spherical_kmeans
from gtp_pipeline.core.storage.feature_store import FeatureStore

SHOWN_CLUSTERS = 12  # the largest clusters, shown to a reader by their most central members
SHOWN_PER_CLUSTER = 2
PROMPT_PREVIEW = 90  # characters of each shown prompt


@dataclass(frozen=True)
class PoolClusters:
    """The pool's clustering: the fit, each example's cluster, and examples that show what the largest hold."""

    fit: KMeansResult
    table: Any  # polars.DataFrame: example_id, cluster (int64), similarity; in pool order
    representatives: list[dict[str, Any]]  # cluster, size, similarity, task, prompt (its first 90 characters)

    def summary(self) -> dict[str, Any]:
        """The fit in plain numbers, for a reader: iterations, convergence, final mean cosine, speed, cluster sizes."""
        fit, sizes = self.fit, self.fit.cluster_sizes
        return {
            "K": int(sizes.size),
            "iterations": fit.iterations,
            "converged": fit.converged,
            "mean_cosine": round(float(fit.objective[-1]), 4),
            "seconds_per_iteration": round(fit.seconds_per_iter, 4),
            "empty_clusters_reseeded": fit.n_reseeded,
            "cluster_size_min_median_max": f"{int(sizes.min())} / {int(np.median(sizes))} / {int(sizes.max())}",
        }


def representatives(pool: Any, table: Any, sizes: np.ndarray) -> list[dict[str, Any]]:
    """The members most similar to their centroid of the largest clusters, with their task and prompt's start."""
    import polars as pl

    rows = []
    for k in np.argsort(-sizes)[:SHOWN_CLUSTERS]:
        members = table.with_row_index().filter(pl.col("cluster") == int(k)).sort("similarity", descending=True)
        for member in members.head(SHOWN_PER_CLUSTER).iter_rows(named=True):
            source = pool.row(member["index"], named=True)
            rows.append(
                {
                    "cluster": int(k),
                    "size": int(sizes[k]),
                    "similarity": round(member["similarity"], 3),
                    "task": source["task"],
                    "prompt": source["prompt"][:PROMPT_PREVIEW],
                }
            )
    return rows


def cluster_pool(
    pool: Any,
    embeddings: np.ndarray | torch.Tensor | FeatureStore,
    config: KMeansConfig,
    on_iteration: OnIteration | None = None,
) -> PoolClusters:
    """Cluster the pool's embeddings (rows in `pool` order); `pool` has example_id, task and prompt columns."""
    import polars as pl

    fit = spherical_kmeans(embeddings, config, on_iteration=on_iteration)
    table = pl.DataFrame(
        {"example_id": pool["example_id"], "cluster": fit.labels.astype(np.int64), "similarity": fit.similarity}
    )
    return PoolClusters(fit, table, representatives(pool, table, fit.cluster_sizes))


def write_centroids(path: str | Path, centroids: np.ndarray) -> None:
    """The centroids as a float32 Zarr array at `path`, replacing any array there."""
    import zarr

    array = zarr.create_array(store=str(path), shape=centroids.shape, dtype="float32", overwrite=True)
    array[:] = centroids
