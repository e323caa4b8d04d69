"""cluster_pool: the pool's assignment table, its representatives and summary; write_centroids."""

import numpy as np
import polars as pl
import zarr

from gtp_pipeline.core.clusterclip.kmeans import KMeansConfig
from gtp_pipeline.core.clusterclip.pool_clusters import cluster_pool, representatives, write_centroids


def three_blobs(seed: int = 0) -> tuple[pl.DataFrame, np.ndarray]:
    """30 rows near three orthogonal directions (sizes 15, 10, 5), and a pool table naming each row."""
    rng = np.random.default_rng(seed)
    centres, sizes = np.eye(3, 8), [15, 10, 5]
    x = np.concatenate([c + 0.05 * rng.standard_normal((n, 8)) for c, n in zip(centres, sizes, strict=True)])
    tasks = [f"task{k}" for k, n in enumerate(sizes) for _ in range(n)]
    pool = pl.DataFrame(
        {
            "example_id": [f"ex{i:02d}" for i in range(30)],
            "task": tasks,
            "prompt": [f"p{i} " + "x" * 200 for i in range(30)],
        }
    )
    return pool, x.astype(np.float32)


def test_the_table_follows_pool_order_and_representatives_are_the_most_central_of_the_largest():
    pool, x = three_blobs()
    clustered = cluster_pool(pool, x, KMeansConfig(K=3, seed=0, precision="fp32"))
    table = clustered.table
    assert table["example_id"].to_list() == pool["example_id"].to_list() and table["cluster"].dtype == pl.Int64
    assert table.group_by("cluster").len()["len"].sort().to_list() == [5, 10, 15]
    reps = clustered.representatives
    assert [r["size"] for r in reps] == [15, 15, 10, 10, 5, 5]  # largest cluster first, two members each
    assert [r["task"] for r in reps] == ["task0", "task0", "task1", "task1", "task2", "task2"]
    for r in reps:  # each is among its cluster's two highest similarities
        top = table.filter(pl.col("cluster") == r["cluster"])["similarity"].sort(descending=True).head(2)
        assert r["similarity"] in [round(v, 3) for v in top.to_list()] and len(r["prompt"]) == 90


def test_representatives_show_at_most_twelve_clusters():
    n = 40
    table = pl.DataFrame(
        {"example_id": [str(i) for i in range(n)], "cluster": np.arange(n) % 20, "similarity": np.linspace(0, 1, n)}
    )
    pool = pl.DataFrame({"task": ["t"] * n, "prompt": ["q"] * n})
    rows = representatives(pool, table, np.bincount(table["cluster"].to_numpy()))
    assert len({r["cluster"] for r in rows}) == 12 and len(rows) == 24


def test_summary_describes_the_fit():
    pool, x = three_blobs(1)
    clustered = cluster_pool(pool, x, KMeansConfig(K=3, seed=0, precision="fp32"))
    summary = clustered.summary()
    assert summary["K"] == 3 and summary["cluster_size_min_median_max"] == "5 / 10 / 15"
    assert summary["mean_cosine"] == round(clustered.fit.objective[-1], 4) > 0.9
    assert summary["iterations"] == clustered.fit.iterations and isinstance(summary["converged"], bool)


def test_write_centroids_replaces_the_array(tmp_path):
    path = tmp_path / "centroids.zarr"
    write_centroids(path, np.ones((4, 3)))
    write_centroids(path, np.eye(2, 3))
    array = zarr.open_array(str(path), mode="r")
    assert array.dtype == np.float32 and np.array_equal(array[:], np.eye(2, 3))
