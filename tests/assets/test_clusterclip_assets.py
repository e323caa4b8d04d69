"""ClusterClip assets on the tiny profile: real MiniLM embeddings, k-means clusters, sampling plans."""

import dagster as dg
import numpy as np
import polars as pl
import pytest

from gtp_pipeline import checks
from gtp_pipeline.assets import clusterclip, corpus
from gtp_pipeline.core.feature_store import FeatureStore
from gtp_pipeline.core.profiles import TINY, budget_count

ASSETS = [*dg.load_assets_from_modules([corpus, clusterclip]), *dg.load_asset_checks_from_modules([checks])]


@pytest.fixture(scope="module")
def materialized(tmp_path_factory):
    from gtp_pipeline.resources import resources_for_profile

    root = tmp_path_factory.mktemp("clusterclip")
    resources = resources_for_profile("tiny", artifact_root=str(root))
    with dg.instance_for_test() as instance:
        first = dg.materialize(ASSETS, resources=resources, instance=instance)
        again = dg.materialize(ASSETS, resources=resources, instance=instance, selection=["embeddings", "clusters", "clusterclip_plan"])
        yield root, first, again


def meta(result, key):
    events = [e.materialization for e in result.get_asset_materialization_events() if e.materialization.asset_key.to_user_string() == key]
    return events[0].metadata, events[0].tags


def test_embeddings_are_unit_norm_rows_in_corpus_order(materialized):
    root, first, _ = materialized
    pool = pl.read_parquet(root / "raw_corpus" / "data.parquet")
    metadata, _ = meta(first, "embeddings")
    store = FeatureStore.open(metadata["path"].value)
    rows = np.concatenate([store.read_chunk(c) for c in range(store.n_chunks)]).astype(np.float32)
    assert rows.shape == (pool.height, 384)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=2e-3)
    assert list(store.example_ids()) == pool["example_id"].to_list()


def test_rerun_resumes_the_embedding_store_and_keeps_its_data_version(materialized):
    _, first, again = materialized
    meta_again, tags_again = meta(again, "embeddings")
    assert meta_again["chunks_written"].value == 0 and meta_again["chunks_resumed"].value >= 1
    assert tags_again["dagster/data_version"] == meta(first, "embeddings")[1]["dagster/data_version"]
    assert pl.read_parquet(meta(first, "clusters")[0]["path"].value).equals(pl.read_parquet(meta(again, "clusters")[0]["path"].value))


def test_every_example_is_in_one_of_k_clusters(materialized):
    root, first, _ = materialized
    table = pl.read_parquet(root / "clusters" / "data.parquet")
    assert set(table["cluster"].unique()) == set(range(TINY.clusters.K))
    assert table["similarity"].min() > -1.0 and table["similarity"].max() <= 1.0 + 1e-5
    assert meta(first, "clusters")[0]["K"].value == TINY.clusters.K


def test_plans_have_equal_draws_per_budget_and_clusterclip_respects_the_clip(materialized):
    root, first, _ = materialized
    plans = pl.read_parquet(root / "clusterclip_plan" / "data.parquet")
    n_pool = pl.read_parquet(root / "raw_corpus" / "data.parquet").height
    for budget in TINY.budgets.budgets:
        label = f"{budget * 100:g}pct"
        draws = plans.filter(pl.col("budget") == label).group_by("method").len()
        expected = TINY.budgets.train_epochs * budget_count(budget, n_pool)
        assert dict(draws.iter_rows()) == {"clusterclip": expected, "uniform": expected, "random": expected}
        clip = plans.filter((pl.col("budget") == label) & (pl.col("method") == "clusterclip"))
        assert clip["example_id"].value_counts()["count"].max() <= TINY.clusters.R
