"""An artifact root in object storage: a real S3-compatible server (moto) on 127.0.0.1, and fsspec's "file://".

The S3 tests start `moto.server.ThreadedMotoServer` inside the test (no network beyond 127.0.0.1, explicit dummy
credentials so botocore never looks for real ones) and drive the same FeatureStore and Parquet IO-manager code that
production points at S3/GCS. The "file://" tests exercise the same generic (non-local) code path without a server.
"""

from __future__ import annotations

import threading

import dagster as dg
import numpy as np
import polars as pl
import pytest

from gtp_pipeline.core.storage.feature_store import FeatureStore
from gtp_pipeline.core.storage.store_records import StoreMeta, StoreMismatchError
from gtp_pipeline.resources.io_managers import ParquetIOManager
from gtp_pipeline.resources.storage import ArtifactPathError, ArtifactStore

IDS = [f"ex{i:03d}" for i in range(11)]
META = StoreMeta(kind="candidate_features", n_rows=11, dim=6, chunk_rows=4, identity={"checkpoint": "ep1"})
BUCKET = "gtp-artifacts"


@pytest.fixture(scope="module")
def s3_options():
    """fsspec storage options for a moto S3 server on 127.0.0.1 with one empty bucket."""
    pytest.importorskip("s3fs", reason="pip install s3fs")
    server_mod = pytest.importorskip("moto.server", reason="pip install 'moto[server]'")
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one access-log line per request otherwise
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    options = {
        "endpoint_url": f"http://{host}:{port}",
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"region_name": "us-east-1"},
    }
    import boto3

    boto3.client(
        "s3",
        endpoint_url=options["endpoint_url"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    ).create_bucket(Bucket=BUCKET)
    yield options
    server.stop()


def fill(store: FeatureStore, data: np.ndarray) -> None:
    for c in store.missing_chunks():
        a, b = store.chunk_bounds(c)
        store.write_chunk(c, data[a:b], np.ones(b - a, bool))


def local_files(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_feature_store_on_s3_resumes_and_holds_the_same_bytes_as_a_local_store(s3_options, tmp_path):
    import s3fs

    data = np.random.default_rng(0).standard_normal((11, 6)).astype(np.float16)
    root = ArtifactStore(root=f"s3://{BUCKET}/resume", storage_options=s3_options)
    path = root.path_for("gradient_trajectories", "ep1", "v1.zarr")
    store = FeatureStore.create_or_open(path, META, IDS)
    assert not store.is_local and store.missing_chunks() == [0, 1, 2]
    store.write_chunk(1, data[4:8], np.ones(4, bool))  # another worker's shard
    reopened = FeatureStore.create_or_open(path, META, IDS)
    assert reopened.missing_chunks() == [0, 2]
    fill(reopened, data)
    np.testing.assert_array_equal(np.concatenate([reopened.read_chunk(c) for c in range(3)]), data)
    np.testing.assert_array_equal(reopened.read_rows(np.array([10, 0, 5])), data[[10, 0, 5]])
    local = FeatureStore.create_or_open(tmp_path / "local.zarr", META, IDS)
    fill(local, data)
    assert reopened.content_hash() == local.content_hash()
    fs = s3fs.S3FileSystem(**s3_options)
    prefix = f"{BUCKET}/resume/gradient_trajectories/ep1/v1.zarr/"
    remote = {k[len(prefix) :]: fs.cat_file(k) for k in fs.find(prefix)}
    assert remote == local_files(tmp_path / "local.zarr")
    with pytest.raises(StoreMismatchError, match="identity.checkpoint"):
        FeatureStore.create_or_open(path, StoreMeta(**{**META.__dict__, "identity": {"checkpoint": "ep2"}}), IDS)


def test_concurrent_creators_of_one_s3_store_agree_and_keep_each_others_chunks(s3_options):
    data = np.random.default_rng(1).standard_normal((11, 6)).astype(np.float16)
    path = ArtifactStore(root=f"s3://{BUCKET}/race", storage_options=s3_options).path_for("s.zarr")
    errors: list[BaseException] = []

    def shard(chunks: list[int]) -> None:  # like gradient_shards: create-or-open, then write only its own chunks
        try:
            store = FeatureStore.create_or_open(path, META, IDS)
            for c in chunks:
                a, b = store.chunk_bounds(c)
                store.write_chunk(c, data[a:b], np.ones(b - a, bool))
        except BaseException as exc:  # re-raised below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=shard, args=(chunks,)) for chunks in ([0, 2], [1])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    store = FeatureStore.open(path)
    assert store.is_complete()
    np.testing.assert_array_equal(np.concatenate([store.read_chunk(c) for c in range(3)]), data)


def test_parquet_io_manager_round_trips_a_table_through_s3(s3_options):
    import s3fs

    @dg.asset
    def table():
        return pl.DataFrame({"x": [1, 2, 3]})

    @dg.asset
    def doubled(table: pl.DataFrame) -> pl.DataFrame:
        return table.with_columns(pl.col("x") * 2)

    store = ArtifactStore(root=f"s3://{BUCKET}/tables", storage_options=s3_options)
    result = dg.materialize([table, doubled], resources={"io_manager": ParquetIOManager(store=store)})
    assert result.success
    fs = s3fs.S3FileSystem(**s3_options)
    with fs.open(f"{BUCKET}/tables/doubled/data.parquet", "rb") as fh:
        assert pl.read_parquet(fh)["x"].to_list() == [2, 4, 6]
    meta = result.asset_materializations_for_node("table")[0].metadata
    assert meta["path"].value == f"s3://{BUCKET}/tables/table/data.parquet"
    assert sorted(fs.find(f"{BUCKET}/tables")) == [
        f"{BUCKET}/tables/doubled/data.parquet",
        f"{BUCKET}/tables/table/data.parquet",
    ]  # no temp objects left behind


def test_file_url_root_goes_through_the_generic_path_and_matches_a_local_store(tmp_path):
    data = np.random.default_rng(2).standard_normal((11, 6)).astype(np.float16)
    path = ArtifactStore(root=f"file://{tmp_path}/url").path_for("s.zarr")
    store = FeatureStore.create_or_open(path, META, IDS)
    assert not store.is_local  # the fsspec code path, on a local disk
    fill(store, data)
    local = FeatureStore.create_or_open(tmp_path / "plain.zarr", META, IDS)
    fill(local, data)
    assert local_files(tmp_path / "url" / "s.zarr") == local_files(tmp_path / "plain.zarr")


@pytest.mark.parametrize("parts", [("..", "escape.txt"), ("/etc", "passwd"), ("a", "..", "..", "b"), ("s3://x",)])
def test_url_root_refuses_paths_outside_the_root(parts):
    with pytest.raises(ArtifactPathError):
        ArtifactStore(root="s3://bucket/root").path_for(*parts)


def test_local_folder_pushes_files_commit_file_last_and_another_machine_pulls_them(s3_options, tmp_path):
    import s3fs

    root = f"s3://{BUCKET}/mirror"
    writer = ArtifactStore(root=root, storage_options=s3_options, local_cache=str(tmp_path / "machine_a"))
    with writer.local_folder("warmup_checkpoints", "v1") as folder:
        ckpt = folder / "checkpoint-000009"
        ckpt.mkdir()
        (ckpt / "adapter_model.safetensors").write_bytes(b"weights")
        (ckpt / "trainer_state.json").write_text('{"step": 9}')
        (folder / ".tmp-checkpoint-000018-abcd").mkdir()  # an interrupted save: never copied
        (folder / ".tmp-checkpoint-000018-abcd" / "adapter_model.safetensors").write_bytes(b"half")
    fs = s3fs.S3FileSystem(**s3_options)
    prefix = f"{BUCKET}/mirror/warmup_checkpoints/v1/"
    assert sorted(k[len(prefix) :] for k in fs.find(prefix)) == [
        "checkpoint-000009/adapter_model.safetensors",
        "checkpoint-000009/trainer_state.json",
    ]
    from gtp_pipeline.core.storage.mirror import _ordered

    assert _ordered(["c/trainer_state.json", "c/adapter.safetensors"])[-1] == "c/trainer_state.json"
    reader = ArtifactStore(root=root, storage_options=s3_options, local_cache=str(tmp_path / "machine_b"))
    with reader.local_folder("warmup_checkpoints", "v1") as folder:
        assert (folder / "checkpoint-000009" / "adapter_model.safetensors").read_bytes() == b"weights"
        assert not (folder / ".tmp-checkpoint-000018-abcd").exists()
        assert folder.is_relative_to(tmp_path / "machine_b")


def test_tiny_pipeline_on_an_s3_artifact_root(s3_options, tmp_path):
    """Every kind of artifact through object storage: tables, Zarr stores, LoRA checkpoints, adapters, reports."""
    import s3fs

    from gtp_pipeline.assets import clusterclip, corpus, evaluation, gradients, selection, training
    from gtp_pipeline.resources import resources_for_profile

    assets = dg.load_assets_from_modules([corpus, clusterclip, gradients, selection, training, evaluation])
    resources = resources_for_profile("tiny", artifact_root=f"s3://{BUCKET}/pipeline")
    store = ArtifactStore(root=f"s3://{BUCKET}/pipeline", storage_options=s3_options, local_cache=str(tmp_path))
    resources["store"], resources["io_manager"] = store, ParquetIOManager(store=store)
    upstream = [
        "target_examples",
        "target_rejects",
        "raw_corpus",
        "corpus_rejects",
        "embeddings",
        "clusters",
        "clusterclip_plan",
        "warmup_checkpoints",
    ]
    with dg.instance_for_test() as instance:
        assert dg.materialize(assets, selection=upstream, resources=resources, instance=instance).success
        for key in instance.get_dynamic_partitions("model_checkpoint"):
            stores = ["gradient_trajectories", "target_gradients"]
            assert dg.materialize(assets, selection=stores, partition_key=key, resources=resources, instance=instance)
        assert dg.materialize(
            assets,
            selection=["gtp_selection", "topk_selection", "random_selection"],
            resources=resources,
            instance=instance,
        ).success
        run = dg.materialize(
            assets, selection=["finetuned_model"], partition_key="gtp-5pct|0", resources=resources, instance=instance
        )
        assert run.success
        evaluated = dg.materialize(assets, selection=["evaluation"], resources=resources, instance=instance)
        assert evaluated.success
    table = evaluated.output_for_node("evaluation")
    assert sorted(table["run"].to_list()) == ["base", "gtp-5pct"]
    fs = s3fs.S3FileSystem(**s3_options)
    found = fs.find(f"{BUCKET}/pipeline")
    for folder in ("warmup_checkpoints", "finetuned_model/gtp-5pct/seed0", "gradient_trajectories/warmup-e1"):
        assert any(f"/pipeline/{folder}/" in k for k in found), folder
    assert any(k.endswith("adapter_model.safetensors") and "finetuned_model" in k for k in found)
    per_example = evaluation._read_per_example(store, table)  # what selection_report reads, through S3
    assert (
        set(per_example["run"]) == {"base", "gtp-5pct"}
        and per_example.height == 2 * per_example["example_id"].n_unique()
    )
