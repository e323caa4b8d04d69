"""Scale-out on a real Dask cluster: gradient shards through dagster-dask, a killed worker, the distributed pursuit.

A `distributed.LocalCluster` with two worker processes on 127.0.0.1 (dashboard off, temp dirs in tmp_path) is
started once for the module and closed at the end. Gradient shards run on the tiny profile's real model and corpus
at a real LoRA checkpoint of a user's training run, through a reconstructable job and a persistent instance.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import time
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

pytest.importorskip("distributed", reason="pip install dagster-dask (brings dask.distributed)")
pytest.importorskip("dagster_dask", reason="pip install dagster-dask")

from gtp_pipeline.executors import (  # noqa: E402
    UnknownExecutorError,
    dask_run_config,
    executor_for_env,
    executor_named,
)

logger = logging.getLogger(__name__)

CHECKPOINT = "run-a"
JOB = "gradient_shards_job"
SHARDS = ["0", "1"]  # N_SHARDS = 2 (gtp_pipeline/partitions.py)


def shards_job(artifact_root: str, checkpoint_dir: str, executor: str) -> dg.JobDefinition:
    """The gradient_shards job (one checkpoint x shard per run); every Dask worker rebuilds exactly this job."""
    from gtp_pipeline.assets import corpus, gradients
    from gtp_pipeline.resources import resources_for_profile
    from gtp_pipeline.resources.compute import ComputeResource
    from gtp_pipeline.resources.profile import ProfileResource

    resources = resources_for_profile("tiny", artifact_root=artifact_root)
    resources["profile"] = ProfileResource(name="tiny", checkpoint_dir=checkpoint_dir)
    resources["compute"] = ComputeResource(device="cpu", torch_threads=1)  # one core per worker, as in-process
    job = dg.define_asset_job(JOB, selection=["gradient_shards"])
    defs = dg.Definitions(
        assets=dg.load_assets_from_modules([corpus, gradients]),
        jobs=[job],
        resources=resources,
        executor=executor_named(executor),
    )
    return defs.resolve_job_def(JOB)


def recon_shards_job(artifact_root: Path, checkpoint_dir: Path, executor: str = "dask"):
    return dg.build_reconstructable_job(
        "tests.test_distributed",
        "shards_job",
        reconstructable_args=(str(artifact_root), str(checkpoint_dir), executor),
    )


def shard_tags(shard: str) -> dict[str, str]:
    from gtp_pipeline.partitions import checkpoint_shard

    key = dg.MultiPartitionKey({"checkpoint": CHECKPOINT, "shard": shard})
    return dict(checkpoint_shard.get_tags_for_partition_key(key))


def persistent_instance(folder: Path):
    """A persistent (SQLite) instance in `folder`, as every executor but in-process needs; telemetry off."""
    folder.mkdir(parents=True, exist_ok=True)
    return dg.instance_for_test(temp_dir=str(folder), overrides={"telemetry": {"enabled": False}})


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def store_dir(artifact_root: Path) -> Path:
    found = list((artifact_root / "gradient_trajectories" / CHECKPOINT).glob("*.zarr"))
    assert len(found) <= 1, found
    return found[0] if found else Path("/nonexistent")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A real LocalCluster: 2 worker processes x 1 thread on 127.0.0.1, no dashboard, temp dirs in tmp_path."""
    import dask
    from distributed import Client, LocalCluster

    tmp = tmp_path_factory.mktemp("dask")
    with dask.config.set({"temporary-directory": str(tmp)}):
        with LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            local_directory=str(tmp),
        ) as local:
            with Client(local) as client:
                client.wait_for_workers(2, timeout=120)
                yield local, client


def extra_examples(path: Path, n: int = 640) -> Path:
    """A user's JSONL file of distinct word problems, added to the tiny pool: shards long enough to kill mid-way."""
    import json

    rng = np.random.default_rng(0)
    names = ["Ada", "Bo", "Chen", "Dara", "Eli", "Fumi", "Gus", "Hana"]
    items = ["apples", "books", "coins", "pencils", "stamps", "marbles", "cards", "shells"]
    with open(path, "w") as fh:
        for i in range(n):
            a, b = (int(x) for x in rng.integers(2, 500, size=2))
            who, what = names[i % 8], items[(i // 8) % 8]
            prompt = f"{who} has {a} {what} and finds {b} more on day {i}. How many {what} does {who} have now?"
            response = f"{who} had {a} {what} and found {b}, so {who} now has {a} + {b} = {a + b} {what}."
            fh.write(json.dumps({"id": f"wp{i}", "prompt": prompt, "response": response, "task": "word_problems"}))
            fh.write("\n")
    return path


@pytest.fixture(scope="module")
def user_run(tmp_path_factory):
    """A real LoRA checkpoint of the tiny model in a watched folder, and the tiny corpus (plus the user's file)."""
    from gtp_pipeline.assets import corpus
    from gtp_pipeline.core.training.lora_train import LoraTrainConfig, train_lora
    from gtp_pipeline.core.training.models import tiny_model
    from gtp_pipeline.resources import resources_for_profile
    from gtp_pipeline.resources.profile import ProfileResource

    root = tmp_path_factory.mktemp("user_run")
    loaded = tiny_model()
    examples = [(f"e{i}", f"Question number {i}?", f"Answer {i}.") for i in range(12)]
    config = LoraTrainConfig(lora_r=4, lora_alpha=16, epochs=1, batch_size=4, max_len=64, lr=1e-3)
    result = train_lora(loaded.model, loaded.tokenizer, examples, root / "out", config, loaded.model_id)
    watched = root / "watched"
    watched.mkdir()
    shutil.copytree(result.checkpoints[0].path, watched / CHECKPOINT)
    corpus_root = root / "corpus"
    with dg.instance_for_test() as instance:
        res = resources_for_profile("tiny", artifact_root=str(corpus_root))
        res["profile"] = ProfileResource(name="tiny", corpus_files=[str(extra_examples(root / "user.jsonl"))])
        assets = dg.load_assets_from_modules([corpus])
        assert dg.materialize(assets, resources=res, instance=instance).success
    return watched, corpus_root


def artifact_root_with_corpus(user_run, path: Path) -> Path:
    shutil.copytree(user_run[1], path)  # raw_corpus etc.: the shards' input, read through the IO manager
    return path


@pytest.fixture(scope="module")
def in_process_store(user_run, tmp_path_factory):
    """The reference: both shards materialized in-process, one after the other."""
    root = artifact_root_with_corpus(user_run, tmp_path_factory.mktemp("in_process") / "artifacts")
    recon = recon_shards_job(root, user_run[0], "in_process")
    with persistent_instance(tmp_path_factory.mktemp("instance_ref")) as instance:
        instance.add_dynamic_partitions("model_checkpoint", [CHECKPOINT])
        for shard in SHARDS:
            result = dg.execute_job(recon, instance, tags=shard_tags(shard))
            assert result.success
    return store_dir(root)


def shard_chunks(store: Path, shard: int) -> list[int]:
    from gtp_pipeline.core.storage.feature_store import FeatureStore

    return [c for c in range(FeatureStore.open(store).n_chunks) if c % len(SHARDS) == shard]


def _run_process(recon_args: tuple, instance_ref, run_config: dict, shard: str, results) -> None:
    """What a run launcher starts: one process executing one shard's run (dagster runs are not thread-safe)."""
    with dg.DagsterInstance.from_ref(instance_ref) as instance:
        result = dg.execute_job(recon_shards_job(*recon_args), instance, run_config=run_config, tags=shard_tags(shard))
        results.put((shard, result.success, result.run_id))


def launch_runs(recon_args: tuple, instance, run_config: dict, shards: list[str]):
    """Start one run process per shard, all at once; returns (processes, results queue)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_run_process, args=(recon_args, instance.get_ref(), run_config, shard, results))
        for shard in shards
    ]
    for proc in procs:
        proc.start()
    return procs, results


def wait_runs(procs, results, timeout: float = 300) -> dict[str, tuple[bool, str]]:
    out = {}
    for _ in procs:
        shard, success, run_id = results.get(timeout=timeout)
        out[shard] = (success, run_id)
    for proc in procs:
        proc.join(timeout=60)
    return out


def materialization_metadata(instance, run_id: str) -> dict:
    events = [
        e.dagster_event.event_specific_data.materialization
        for e in instance.all_logs(run_id)
        if e.dagster_event and e.dagster_event.event_type_value == "ASSET_MATERIALIZATION"
    ]
    assert len(events) == 1
    return {k: v.value for k, v in events[0].metadata.items()}


def step_pids(instance, run_id: str) -> set[int]:
    return {
        e.dagster_event.pid
        for e in instance.all_logs(run_id)
        if e.dagster_event and e.dagster_event.event_type_value == "STEP_START"
    }


def dropped_requirements(instance, run_id: str) -> list[str]:
    """The executor's notes that a step's Dask resource requirement was dropped (no worker of the cluster had it)."""
    return [e.user_message for e in instance.all_logs(run_id) if "runs on any worker" in e.user_message]


def test_dask_executor_shards_write_the_same_store_bytes_as_in_process(cluster, user_run, in_process_store, tmp_path):
    local, client = cluster
    root = artifact_root_with_corpus(user_run, tmp_path / "artifacts")
    worker_pids = set(client.run(os.getpid).values())
    with persistent_instance(tmp_path / "instance") as instance:
        instance.add_dynamic_partitions("model_checkpoint", [CHECKPOINT])
        recon_args = (str(root), str(user_run[0]), "dask")
        # both shards at once: two runs of one job, two workers, one store
        runs = wait_runs(*launch_runs(recon_args, instance, dask_run_config(local.scheduler_address), SHARDS))
        assert all(runs[s][0] for s in SHARDS)
        for s in SHARDS:
            assert step_pids(instance, runs[s][1]) <= worker_pids  # the steps ran in the cluster's workers
            assert len(dropped_requirements(instance, runs[s][1])) == 1  # plain workers: GPU=1 dropped, not pending
        chunks = sum(materialization_metadata(instance, runs[s][1])["chunks"] for s in SHARDS)
    assert chunks == len(shard_chunks(in_process_store, 0) + shard_chunks(in_process_store, 1))
    ours, reference = files(store_dir(root)), files(in_process_store)
    assert sorted(ours) == sorted(reference)
    assert [k for k in reference if ours[k] != reference[k]] == []


def pinned_device() -> tuple[int, str | None]:
    return os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES")


def test_gradient_shards_run_on_pinned_gpu_workers_and_write_the_same_store_bytes(
    user_run, in_process_store, tmp_path
):
    """The placement of `local_gpu_devices` and gpu_workers, on CPU: one worker pinned to each of "devices" 0 and 1."""
    from distributed import Client

    from gtp_pipeline.gpu_workers import local_gpu_cluster

    root = artifact_root_with_corpus(user_run, tmp_path / "artifacts")
    with (
        local_gpu_cluster(["0", "1"], local_directory=str(tmp_path / "dask")) as gpus,
        Client(gpus) as client,
    ):
        client.wait_for_workers(2, timeout=120)
        names = {a: info["name"] for a, info in client.scheduler_info(n_workers=-1)["workers"].items()}
        workers = {pid: (names[a], device) for a, (pid, device) in client.run(pinned_device).items()}
        with persistent_instance(tmp_path / "instance") as instance:
            instance.add_dynamic_partitions("model_checkpoint", [CHECKPOINT])
            recon_args = (str(root), str(user_run[0]), "dask")
            runs = wait_runs(*launch_runs(recon_args, instance, dask_run_config(gpus.scheduler_address), SHARDS))
            assert all(runs[s][0] for s in SHARDS)
            assert [m for s in SHARDS for m in dropped_requirements(instance, runs[s][1])] == []  # GPU=1 kept
            ran_on = {
                s: [workers.get(pid, ("elsewhere", pid)) for pid in step_pids(instance, runs[s][1])] for s in SHARDS
            }
    logger.info("pinned workers: shard -> (worker, CUDA_VISIBLE_DEVICES) %s", ran_on)
    for s in SHARDS:  # each shard step ran on one GPU worker, which sees only its own device
        assert len(ran_on[s]) == 1 and ran_on[s][0][0] in ("gpu-0", "gpu-1"), ran_on
        assert ran_on[s][0][1] == ran_on[s][0][0].removeprefix("gpu-")
    ours, reference = files(store_dir(root)), files(in_process_store)
    assert sorted(ours) == sorted(reference)
    assert [k for k in reference if ours[k] != reference[k]] == []


def test_killed_worker_mid_shard_resumes_without_recomputing_finished_chunks(
    cluster, user_run, in_process_store, tmp_path
):
    local, client = cluster
    root = artifact_root_with_corpus(user_run, tmp_path / "artifacts")
    mine = shard_chunks(in_process_store, 0)  # c % 2 == 0
    run_config = dask_run_config(local.scheduler_address)
    recon_args = (str(root), str(user_run[0]), "dask")
    with persistent_instance(tmp_path / "instance") as instance:
        instance.add_dynamic_partitions("model_checkpoint", [CHECKPOINT])
        procs, results = launch_runs(recon_args, instance, run_config, ["0"])
        deadline = time.monotonic() + 240
        while not list((store_dir(root) / "done").glob("0*")):  # wait for the shard's first finished chunk
            assert procs[0].is_alive() and time.monotonic() < deadline, "the run ended or stalled before the kill"
            time.sleep(0.02)
        busy = [w for w, keys in client.processing().items() if any(JOB in str(k) for k in keys)]
        assert len(busy) == 1
        pid = client.run(os.getpid, workers=busy)[busy[0]]
        os.kill(pid, signal.SIGKILL)  # the worker process dies in the middle of the shard's next chunk
        done_at_kill = sorted(int(p.name) for p in (store_dir(root) / "done").glob("0*"))
        stamps = {
            c: (
                (store_dir(root) / "done" / f"{c:07d}").stat().st_mtime_ns,
                (store_dir(root) / "features" / "c" / str(c) / "0").stat().st_mtime_ns,
            )
            for c in done_at_kill
        }
        assert 1 <= len(done_at_kill) < len(mine), f"the kill did not land mid-shard: done {done_at_kill}"
        success, run_id = wait_runs(procs, results)["0"]
        logger.info("kill test: done at kill %s, first run success %s", done_at_kill, success)
        if not success:  # the run failed with its worker: re-running the shard resumes it
            success, run_id = wait_runs(*launch_runs(recon_args, instance, run_config, ["0"]))["0"]
        assert success
        # Dask rescheduled the lost step (or the re-run started it) on a live worker, which resumed from the markers
        resumed = materialization_metadata(instance, run_id)["chunks_resumed"]
        logger.info("kill test: the finishing run resumed %d chunks of %d", resumed, len(mine))
        assert resumed >= len(done_at_kill)
    store = store_dir(root)
    for c, (marker_ns, chunk_ns) in stamps.items():  # finished chunks were neither recomputed nor rewritten
        assert (store / "done" / f"{c:07d}").stat().st_mtime_ns == marker_ns
        assert (store / "features" / "c" / str(c) / "0").stat().st_mtime_ns == chunk_ns
    assert sorted(int(p.name) for p in (store / "done").iterdir()) == mine
    reference, ours = files(in_process_store), files(store)
    for c in mine:
        for key in (f"features/c/{c}/0", f"valid/c/{c}", f"done/{c:07d}"):
            assert ours[key] == reference[key], key


def write_stores(root: Path, blocks, chunk_rows: int, valid: np.ndarray) -> list[str]:
    from gtp_pipeline.core.storage.feature_store import FeatureStore
    from gtp_pipeline.core.storage.store_records import StoreMeta

    n = blocks[0].shape[0]
    ids = [f"ex{i:05d}" for i in range(n)]
    paths = []
    for t, x in enumerate(blocks):
        meta = StoreMeta("candidate_features", n, x.shape[1], chunk_rows, identity={"checkpoint_id": f"ckpt{t}"})
        store = FeatureStore.create_or_open(root / f"c{t}.zarr", meta, ids)
        for c in range(store.n_chunks):
            a, b = store.chunk_bounds(c)
            store.write_chunk(c, x[a:b], valid[a:b])
        paths.append(str(store.path))
    return paths


def test_dask_pursuit_scores_bit_identical_and_selects_the_same_subset(cluster, tmp_path):
    from gtp_pipeline.core.features.dask_trajectories import DaskTrajectories
    from gtp_pipeline.core.features.store_trajectories import StoreTrajectories
    from gtp_pipeline.core.selection.pursuit import PursuitConfig, gtp

    _, client = cluster
    rng = np.random.default_rng(7)
    n, d, lr = 1000, 48, [3.0, 2.0, 1.0]
    blocks = [rng.standard_normal((n, d)).astype(np.float16) for _ in lr]
    valid = rng.random(n) > 0.05
    paths = write_stores(tmp_path, blocks, chunk_rows=32, valid=valid)
    single = StoreTrajectories.from_paths(paths, lr)
    target = single.mean() + 0.3 * single.gather(np.flatnonzero(valid)[:5]).sum(axis=0)
    with DaskTrajectories(paths, lr, client, n_tasks=5) as dist:
        R = rng.standard_normal((dist.dim, 3)).astype(np.float32)
        np.testing.assert_array_equal(dist.correlate(R), single.correlate(R))
        exclude = np.flatnonzero(valid)[:7]
        a, b = dist.scan(R[:, 0], 40, exclude), single.scan(R[:, 0], 40, exclude)
        np.testing.assert_array_equal(a.top, b.top)
        np.testing.assert_array_equal(a.scores, b.scores)
        np.testing.assert_array_equal(a.rows, b.rows)
        np.testing.assert_allclose(dist.mean(), single.mean(), rtol=1e-12, atol=1e-15)
        config = PursuitConfig(budget=25)
        ours, reference = gtp(dist, target, config), gtp(StoreTrajectories.from_paths(paths, lr), target, config)
        assert dist.passes >= ours.passes > 0
    np.testing.assert_array_equal(ours.indices, reference.indices)
    np.testing.assert_array_equal(ours.weights, reference.weights)
    np.testing.assert_array_equal(ours.residuals, reference.residuals)


def test_executor_for_env_picks_dask_from_the_environment_and_refuses_unknown_names():
    assert executor_for_env({}) is None  # Dagster's default executor
    assert executor_for_env({"GTP_EXECUTOR": "multiprocess"}).name == "multiprocess"
    assert executor_for_env({"GTP_EXECUTOR": "in_process"}).name == "in_process"
    dask = executor_for_env({"GTP_EXECUTOR": "dask", "GTP_DASK_SCHEDULER": "tcp://127.0.0.1:1"})
    assert dask.name == "dask"
    fields = dask.config_schema.as_field().config_type.fields
    assert fields["scheduler_address"].default_value == "tcp://127.0.0.1:1"
    with pytest.raises(UnknownExecutorError, match="'celery'"):
        executor_for_env({"GTP_EXECUTOR": "celery"})
