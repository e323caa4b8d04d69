"""Spherical k-means: quality against scikit-learn, exact argmax, bf16 == fp32, re-seeding, streaming, errors."""

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans

from gtp_pipeline.core.clusterclip.kmeans import KMeansConfig, KMeansInputError, spherical_kmeans
from gtp_pipeline.core.storage.feature_store import FeatureStore
from gtp_pipeline.core.storage.store_records import StoreMeta


def clustered(n: int, d: int, n_true: int, spread: float, seed: int = 0) -> np.ndarray:
    """(n, d) float32 unit rows around n_true random directions, with unequal cluster sizes."""
    g = np.random.default_rng(seed)
    centers = g.standard_normal((n_true, d))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    weights = g.uniform(0.2, 1.0, n_true)
    lab = g.choice(n_true, n, p=weights / weights.sum())
    x = centers[lab] + spread * g.standard_normal((n, d)) / np.sqrt(d)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def cosine_objective(x: np.ndarray, labels: np.ndarray, K: int) -> float:
    """Sum over rows of cos(x, normalized mean of its cluster): the oracle's and our common yardstick."""
    sums = np.zeros((K, x.shape[1]))
    np.add.at(sums, labels, x.astype(np.float64))
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    cent = np.divide(sums, norms, out=np.zeros_like(sums), where=norms > 0)
    return float((x * cent[labels]).sum())


X = clustered(3000, 32, n_true=25, spread=1.2)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_objective_no_worse_than_sklearn_kmeans_within_2_percent(precision):
    K = 20
    ours = spherical_kmeans(X, KMeansConfig(K=K, n_init=4, seed=0, precision=precision, chunk_rows=1024))
    oracle = KMeans(n_clusters=K, n_init=4, random_state=0).fit(X)
    ours_obj, oracle_obj = cosine_objective(X, ours.labels, K), cosine_objective(X, oracle.labels_, K)
    assert ours_obj >= 0.98 * oracle_obj, (ours_obj, oracle_obj)
    # the reported similarities are the cosines to the returned (unit) centroids
    np.testing.assert_allclose(np.linalg.norm(ours.centroids, axis=1), 1, atol=1e-6)
    np.testing.assert_allclose(ours.similarity, (X * ours.centroids[ours.labels]).sum(1), atol=1e-5)
    np.testing.assert_allclose(ours.objective[-1], ours.similarity.mean(), atol=1e-5)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_labels_are_the_exact_argmax_of_the_returned_centroids(precision):
    res = spherical_kmeans(X, KMeansConfig(K=40, max_iter=5, tol=0, precision=precision, chunk_rows=700))
    exact = np.argmax(X.astype(np.float64) @ res.centroids.astype(np.float64).T, axis=1)
    np.testing.assert_array_equal(res.labels, exact)


def near_ties(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows built to sit on (or within bf16 noise of) the boundary between two centroids, plus duplicates."""
    g = np.random.default_rng(seed)
    c = g.standard_normal((30, 48)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    a, b = g.integers(0, 30, 400), g.integers(0, 30, 400)
    mid = c[a] + c[b] + 1e-4 * g.standard_normal((400, 48)).astype(np.float32)  # nearly equidistant from c_a, c_b
    x = np.concatenate([mid, clustered(1200, 48, 30, 1.0, seed), c[:10], c[:10]])
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), c


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bf16_path_gives_the_same_assignment_as_fp32(seed):
    x, c0 = near_ties(seed)
    runs = {
        p: spherical_kmeans(x, KMeansConfig(K=30, max_iter=6, tol=0, precision=p, chunk_rows=512), init_centroids=c0)
        for p in ("fp32", "bf16")
    }
    np.testing.assert_array_equal(runs["fp32"].labels, runs["bf16"].labels)
    np.testing.assert_array_equal(runs["fp32"].centroids, runs["bf16"].centroids)
    assert runs["fp32"].objective == runs["bf16"].objective
    assert runs["bf16"].recheck_fraction > runs["fp32"].recheck_fraction  # the near-ties did need the check


def test_empty_cluster_is_reseeded_with_the_row_farthest_from_its_centroid():
    g = np.random.default_rng(3)
    x = clustered(500, 16, 4, 0.8, seed=3)
    c0 = x[g.choice(500, 5, replace=False)].copy()
    c0[4] = -x.mean(0) / np.linalg.norm(x.mean(0))  # points away from all the data: gets no row
    sims0 = x.astype(np.float64) @ c0.astype(np.float64).T
    assert (sims0.argmax(1) != 4).all()
    farthest = int(np.argmin(sims0.max(1)))
    res = spherical_kmeans(x, KMeansConfig(K=5, max_iter=2, tol=0, precision="fp32"), init_centroids=c0)
    assert res.n_reseeded == 1
    np.testing.assert_allclose(res.centroids[4], x[farthest], atol=1e-6)  # the re-seeded centroid is that row
    assert (res.cluster_sizes > 0).all()


def test_duplicate_rows_in_random_init_still_give_k_non_empty_clusters():
    x = np.repeat(clustered(60, 8, 3, 1.0, seed=4), 5, axis=0)  # every row five times
    res = spherical_kmeans(x, KMeansConfig(K=12, init="random", max_iter=20, seed=1, precision="fp32"))
    assert (res.cluster_sizes > 0).all()


@pytest.mark.parametrize("init", ["k-means++", "random"])
def test_same_seed_same_result_and_other_seed_other_result(init):
    cfg = KMeansConfig(K=15, max_iter=8, init=init, seed=7, n_init=2, chunk_rows=800)
    a, b = spherical_kmeans(X, cfg), spherical_kmeans(X, cfg)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    assert a.objective == b.objective
    other = spherical_kmeans(X, KMeansConfig(**{**cfg.__dict__, "seed": 8}))
    assert not np.array_equal(a.centroids, other.centroids)


def test_objective_never_decreases_without_reseeding():
    res = spherical_kmeans(X, KMeansConfig(K=25, max_iter=15, tol=0, precision="bf16"))
    assert res.n_reseeded == 0
    assert all(b >= a - 1e-7 for a, b in zip(res.objective, res.objective[1:], strict=False))


def test_streaming_from_a_feature_store_equals_in_memory(tmp_path):
    x16 = X.astype(np.float16)  # what the embeddings store holds
    ids = [f"e{i}" for i in range(len(x16))]
    store = FeatureStore.create_or_open(
        tmp_path / "emb.zarr", StoreMeta(kind="embeddings", n_rows=len(x16), dim=32, chunk_rows=700), ids
    )
    for c in store.missing_chunks():
        s, e = store.chunk_bounds(c)
        store.write_chunk(c, x16[s:e], np.ones(e - s, bool))
    for precision in ("fp32", "bf16"):
        cfg = KMeansConfig(K=18, max_iter=10, seed=2, chunk_rows=512, precision=precision)
        streamed, in_memory = spherical_kmeans(store, cfg), spherical_kmeans(x16, cfg)
        np.testing.assert_array_equal(streamed.labels, in_memory.labels)
        np.testing.assert_allclose(streamed.centroids, in_memory.centroids, atol=1e-6)
        np.testing.assert_allclose(streamed.similarity, in_memory.similarity, atol=1e-6)


def test_store_with_invalid_rows_is_refused(tmp_path):
    store = FeatureStore.create_or_open(
        tmp_path / "emb.zarr",
        StoreMeta(kind="embeddings", n_rows=10, dim=4, chunk_rows=10),
        [str(i) for i in range(10)],
    )
    valid = np.ones(10, bool)
    valid[3] = False
    store.write_chunk(0, np.ones((10, 4)), valid)
    with pytest.raises(KMeansInputError, match="1 invalid rows"):
        spherical_kmeans(store, KMeansConfig(K=2))


def test_k_equal_to_n_puts_every_row_in_its_own_cluster():
    x = clustered(30, 8, 30, 0.5, seed=5)
    res = spherical_kmeans(x, KMeansConfig(K=30, init="k-means++", max_iter=5))
    assert sorted(res.labels.tolist()) == list(range(30))
    np.testing.assert_allclose(res.similarity, 1, atol=1e-6)


@pytest.mark.parametrize(
    ("data", "cfg", "message"),
    [
        (X[:10], dict(K=11), "K=11 clusters cannot be formed from N=10"),
        (np.zeros((0, 8), np.float32), dict(K=1), "empty input"),
        (X[0], dict(K=1), "must be 2-D"),
        (np.vstack([X[:5], np.zeros((1, 32), np.float32)]), dict(K=2), "zero vectors .first: row 5"),
        (np.vstack([X[:5], np.full((1, 32), np.nan, np.float32)]), dict(K=2), "non-finite values .first: row 5"),
        (np.vstack([X[:5], np.full((1, 32), np.inf, np.float32)]), dict(K=2), "non-finite"),
    ],
)
def test_bad_input_raises_a_clear_error(data, cfg, message):
    with pytest.raises(KMeansInputError, match=message):
        spherical_kmeans(data, KMeansConfig(**cfg))


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (dict(K=0), "K must be >= 1"),
        (dict(K=3, max_iter=0), "max_iter"),
        (dict(K=3, precision="fp16"), "precision"),
        (dict(K=3, init="kmeans||"), "init"),
        (dict(K=3, tol=-1.0), "tol"),
    ],
)
def test_bad_config_raises_a_clear_error(cfg, message):
    with pytest.raises(KMeansInputError, match=message):
        KMeansConfig(**cfg)


def test_init_centroids_of_the_wrong_shape_are_refused():
    with pytest.raises(KMeansInputError, match="init_centroids has shape"):
        spherical_kmeans(X, KMeansConfig(K=4), init_centroids=np.ones((3, 32), np.float32))


def test_accepts_a_torch_tensor_and_unnormalized_rows():
    res_np = spherical_kmeans(X, KMeansConfig(K=6, max_iter=5, seed=0))
    res_t = spherical_kmeans(torch.from_numpy(X) * 3.0, KMeansConfig(K=6, max_iter=5, seed=0))
    np.testing.assert_array_equal(res_np.labels, res_t.labels)


def test_result_does_not_depend_on_the_number_of_worker_threads():
    runs = [spherical_kmeans(X, KMeansConfig(K=12, max_iter=6, seed=3, chunk_rows=300, threads=t)) for t in (1, 3)]
    np.testing.assert_array_equal(runs[0].labels, runs[1].labels)
    np.testing.assert_array_equal(runs[0].centroids, runs[1].centroids)
