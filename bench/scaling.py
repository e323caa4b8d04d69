"""Scale-out of the gradient stage: throughput with 1 and 2 Dask workers here, and a cost model for a LESS-sized pool.

Measured. One real workload: the demo model (SmolLM2-135M-Instruct; --model tiny, and --quick by default, use the
tiny random Llama and say so in `note`), a real LoRA warm-up checkpoint (a few AdamW steps, so the
Adam moments are real), real packaged text (BBC News articles and Natural Instructions tasks, interleaved), the
demo profile's feature settings (tiny profile's for the tiny model) and a FeatureStore of several chunks. The
store is cut into SHARDS shards with gradient_shards' rule (shard s computes the chunks c with c % SHARDS == s),
and each shard is one task on a real `distributed.LocalCluster` (worker processes, 1 thread each, 127.0.0.1,
no dashboard, temp dirs): first a cluster with 1 worker, then a fresh one with 2, each writing a fresh store.
A task is the unit a worker runs in production: set torch to 1 thread, load the model, read the checkpoint,
read the pool, then `featurize(..., chunks=mine)` into the shared store. Workers import the libraries before
the clock starts (a Dask worker is a long-lived process); everything a task does is timed, from submitting the
tasks to having every result.
Reported: examples/s with 1 and 2 workers, speedup, parallel efficiency (speedup / 2), and, measured inside
each task, its fixed cost (model load, checkpoint, pool read, and featurize's own setup: store open,
tokenization, LoRA injection, Adam moments, chunk writes) and its per-example compute time (gradients +
projection, `FeaturizeReport`), medians over the 1-worker run's shards, plus `featurize_cpu_s_per_example`
(the task thread's CPU time in featurize, its setup included, per example: other processes on a shared machine
do not inflate it). `stores_equal`: the 2-worker store is byte for byte the
1-worker store (every file). The first shard a worker process runs also pays that process's one-off costs
(the projection blocks it generates and then caches, core/features/projection.py; first-call kernel and heap setup):
`worker_first_task_extra_s` (per worker, its first task's compute minus examples x per_example_s). The 2-worker
run pays them twice, so they lower its efficiency on a small pool.

Modelled (no GPU here). A LESS-sized pool: 270,000 examples x 4 checkpoints on Llama-2-7B, which LESS (Xia et
al. 2024, "LESS: Selecting Influential Data for Targeted Instruction Tuning", arXiv 2402.04333) reports as
~48 GPU-hours of gradient features in a 17.7 GB store (= 270,000 x 4 x 8192 dims x 2 bytes: fp16 at d=8192).
With N workers, every checkpoint split into max(1, ceil(N / 4)) shards, and each worker running
ceil(tasks / N) shard tasks one after another:
    wall(N) = ceil(tasks / N) * shard_fixed + examples * checkpoints * sec_per_example / (N * efficiency(N))
    cost(N) = N * wall(N) / 3600 * price_per_gpu_hour
  sec_per_example  = 48 * 3600 / (270,000 * 4) = 0.16 s per example-checkpoint on one GPU: LESS's published
                     figure, on their GPUs, with their per-example loop (bench/gradients.py compares ours with
                     that loop). It assumes our path is at least as fast on a GPU. Caveat: core/features/projection.py
                     generates the projection matrix on the CPU (~2-3 ns per entry) and caches 2 GiB of it; at
                     LESS's size (P = 32 layers x 4 modules x 128 x (4096 + 4096) = 134M LoRA parameters, d = 8192:
                     1.1e12 entries) it would be regenerated for every chunk, ~45 min per call, i.e. ~2.7 s per
                     example at 1024-row chunks, which would bound the time, not the GPU.
  efficiency(N)    = 1 for N = 1; for N > 1 the 2-worker efficiency measured here, held constant (shards share
                     nothing but the store, but it is an extrapolation from 2 CPU processes to N GPUs).
  shard_fixed      = our measured per-shard fixed cost (CPU, small model); loading a 7B model on a GPU node
                     costs more: --gpu-shard-fixed-s sets it. At N = 1 the model gives back LESS's 48 GPU-hours.
  price_per_gpu_hour = --price-per-gpu-hour, default 2.0 USD: an assumption, not a quote.
The same formula with our measured per-example time (the 1-worker run's median) answers: how long would the
LESS-sized pool take with the bench's model (SmolLM2-135M, 128 tokens, LoRA r=8, d=1024, bf16) on W CPU workers
of this machine (one core each)? That is labelled cpu_model and is not comparable to LESS's 7B at 2048 tokens.

Run: python bench/scaling.py            (full: SmolLM2-135M, 256 examples in 8 chunks of 32, 4 shards; ~5-10 min)
     python bench/scaling.py --quick    (about 1-2 minutes: tiny model, 48 examples in 6 chunks of 8, 4 shards)
     python bench/scaling.py --quick --model demo    (SmolLM2 on the quick pool: ~3 minutes on 2 busy cores)
     python bench/scaling.py --price-per-gpu-hour 1.5 --gpu-shard-fixed-s 120
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from gtp_pipeline.core.config.profiles import DEMO, TINY  # noqa: E402
from gtp_pipeline.core.features.featurize import FeatureConfig  # noqa: E402
from gtp_pipeline.core.features.projection import ProjectionConfig  # noqa: E402
from gtp_pipeline.core.ingest.packaged import bbc_news, natural_instructions  # noqa: E402
from gtp_pipeline.core.training import models  # noqa: E402
from gtp_pipeline.core.training.lora_train import LoraTrainConfig, train_lora  # noqa: E402

# --- defaults (full mode); --quick overrides below ---
MODEL = "demo"  # demo: SmolLM2-135M-Instruct (cached GGUF conversion); tiny: random tiny Llama
N_EXAMPLES = 256  # pool rows in the store
CHUNK_ROWS = 32  # rows per store chunk (the demo profile has 64; 32 gives every shard 2 chunks)
SHARDS = 4  # shard tasks per run: more than the workers, so both runs do the same tasks and Dask balances them
WORKER_COUNTS = (1, 2)
WARMUP_STEPS = 2  # real AdamW steps (batch 4) before the checkpoint whose moments the features use
SEED = 0
QUICK = dict(MODEL="tiny", N_EXAMPLES=48, CHUNK_ROWS=8, SHARDS=4, WARMUP_STEPS=1)

# --- the LESS-sized pool (Xia et al. 2024, LESS, arXiv 2402.04333) ---
LESS_EXAMPLES = 270_000  # Flan v2 + CoT + Dolly + Open Assistant
LESS_CHECKPOINTS = 4  # one per warm-up epoch
LESS_GPU_HOURS = 48.0  # gradient features, Llama-2-7B, as reported
LESS_STORE_GB = 17.7  # as reported
LESS_PROJ_DIM = 8192
GPU_COUNTS = (1, 8, 32, 128)
CPU_WORKER_COUNTS = (1, 2, 8, 32, 128)
PRICE_PER_GPU_HOUR = 2.0  # USD; an assumption (a rough on-demand price for one data-centre GPU), not a quote


def pool_examples(n: int) -> list[tuple[str, str, str]]:
    """n real (example_id, prompt, response) rows: BBC articles and Natural Instructions examples, interleaved.

    Each source goes round-robin over its sections/subtasks, so every chunk holds a mix of lengths and kinds.
    """
    half = -(-n // 2)
    bbc = sorted(bbc_news(limit_per_task=-(-half // 5) + 1), key=lambda r: (r.row, r.fields["task"]))
    ni = sorted(natural_instructions(limit_per_task=-(-half // 60) + 1), key=lambda r: (r.row, r.fields["task"]))
    ni = [r for r in ni if r.fields["response"].strip()]
    mixed = [r for pair in zip(bbc, ni, strict=False) for r in pair]
    if len(mixed) < n:
        raise RuntimeError(f"only {len(mixed)} packaged examples; asked for {n}")
    return [
        (f"{r.source}-{r.fields['task'].split('_')[0]}-{r.row}", r.fields["prompt"], r.fields["response"])
        for r in mixed[:n]
    ]


def load_model(name: str) -> models.LoadedModel:
    """What the ModelSource resource loads at the start of every gradient_shards step."""
    return models.gguf_model() if name == "demo" else models.tiny_model()


def configs(model_name: str, chunk_rows: int) -> tuple[LoraTrainConfig, FeatureConfig]:
    """The profile's warm-up LoRA recipe and gradient-feature settings (assets/gradients.py), chunk_rows ours."""
    g = (DEMO if model_name == "demo" else TINY).gradients
    lora = LoraTrainConfig(
        lora_r=g.lora_r, lora_alpha=g.lora_alpha, lr=g.lr, epochs=1, batch_size=4, warmup_ratio=0.0,
        max_len=g.max_len, precision=g.train_precision, seed=SEED,
    )  # fmt: skip
    feats = FeatureConfig(
        kind="adam",
        projection=ProjectionConfig(dim=g.proj_dim, seed=g.proj_seed),
        max_len=g.max_len,
        batch_size=g.feature_batch_size,
        chunk_rows=chunk_rows,
        precision=g.feature_precision,
    )
    return lora, feats


def warm_worker() -> int:
    """Import what a task needs (a long-lived worker has done so before its first step); returns the pid."""
    import gtp_pipeline.core.features.featurize  # noqa: F401
    import gtp_pipeline.core.training.models  # noqa: F401

    return os.getpid()


def shard_task(shard: int, job: dict) -> dict:
    """One gradient shard, as a worker runs it in production: load model + checkpoint + pool, featurize its chunks."""
    from gtp_pipeline.core.features.featurize import featurize
    from gtp_pipeline.core.training.checkpoints import read_checkpoint

    started, t0, c0 = time.time(), time.perf_counter(), time.thread_time()
    torch.set_num_threads(1)
    loaded = load_model(job["model"])
    checkpoint = read_checkpoint(job["checkpoint"])
    examples = [tuple(e) for e in json.loads(Path(job["pool"]).read_text())]
    config = job["config"]
    n_chunks = -(-len(examples) // config.chunk_rows)
    mine = [c for c in range(n_chunks) if c % job["shards"] == shard]
    seconds_load, cpu_load = time.perf_counter() - t0, time.thread_time() - c0
    report = featurize(
        loaded.model,
        loaded.tokenizer,
        examples,
        job["store"],
        checkpoint,
        config,
        loaded.model_id,
        {"data_version": "bench-scaling", "checkpoint": "bench"},
        "cpu",
        chunks=mine,
    )
    seconds_compute = report.seconds_gradients + report.seconds_projecting
    return {
        "shard": shard,
        "pid": os.getpid(),
        "started": started,
        "chunks": len(mine),
        "examples": report.n_examples,
        "valid": report.n_valid,
        "seconds": time.perf_counter() - t0,
        "seconds_load": seconds_load,
        "seconds_featurize": report.seconds,
        "seconds_compute": seconds_compute,
        "seconds_projecting": report.seconds_projecting,
        "fixed_s": seconds_load + report.seconds - seconds_compute,
        "per_example_s": seconds_compute / max(report.n_examples, 1),
        "cpu_s": time.thread_time() - c0,
        "cpu_load_s": cpu_load,
        "model_id": loaded.model_id,
        "threads": torch.get_num_threads(),
    }


def run_on_cluster(n_workers: int, job: dict, tmp: Path) -> tuple[float, list[dict]]:
    """All shards as tasks on a fresh LocalCluster of n_workers processes x 1 thread; (wall seconds, results)."""
    import dask
    from distributed import Client, LocalCluster

    scratch = tmp / f"dask-{n_workers}"
    scratch.mkdir()
    with (
        dask.config.set({"temporary-directory": str(scratch)}),
        LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            local_directory=str(scratch),
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(n_workers, timeout=180)
        client.run(warm_worker)
        t = time.perf_counter()
        futures = [client.submit(shard_task, s, job, pure=False, key=f"shard-{s}") for s in range(job["shards"])]
        results = client.gather(futures)
        return time.perf_counter() - t, sorted(results, key=lambda r: r["shard"])


def store_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def first_task_extra_s(results: list[dict], per_example_s: float) -> list[float]:
    """Per worker process: how much longer its first task's compute took than per_example_s predicts (one-off
    costs of a fresh process: projection blocks generated into the cache, first-call kernel and heap setup)."""
    first: dict[int, dict] = {}
    for r in sorted(results, key=lambda r: r["started"]):
        first.setdefault(r["pid"], r)
    return [round(r["seconds_compute"] - r["examples"] * per_example_s, 2) for r in first.values()]


def pool_model(
    n_workers: int, sec_per_example: float, shard_fixed_s: float, efficiency: float, price: float | None
) -> dict:
    """wall(N) and cost(N) of the LESS-sized pool on N workers (see the module docstring)."""
    shards_per_checkpoint = max(1, math.ceil(n_workers / LESS_CHECKPOINTS))
    tasks = LESS_CHECKPOINTS * shards_per_checkpoint
    tasks_per_worker = math.ceil(tasks / n_workers)
    eff = 1.0 if n_workers == 1 else efficiency
    work = LESS_EXAMPLES * LESS_CHECKPOINTS * sec_per_example
    wall = tasks_per_worker * shard_fixed_s + work / (n_workers * eff)
    row = {
        "workers": n_workers,
        "shards_per_checkpoint": shards_per_checkpoint,
        "tasks_per_worker": tasks_per_worker,
        "efficiency": round(eff, 3),
        "wall_hours": round(wall / 3600, 3),
        "worker_hours": round(n_workers * wall / 3600, 2),
    }
    if price is not None:
        row["cost_usd"] = round(n_workers * wall / 3600 * price, 2)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--model", default=None, choices=["demo", "tiny"], help="default: demo; tiny with --quick")
    parser.add_argument("--examples", type=int, default=None)
    parser.add_argument("--chunk-rows", type=int, default=None)
    parser.add_argument("--shards", type=int, default=None)
    parser.add_argument("--price-per-gpu-hour", type=float, default=PRICE_PER_GPU_HOUR, help="USD; an assumption")
    parser.add_argument(
        "--gpu-shard-fixed-s", type=float, default=None, help="per-shard fixed seconds on a GPU (default: ours)"
    )
    parser.add_argument("--efficiency", type=float, default=None, help="override the measured 2-worker efficiency")
    args = parser.parse_args()
    cfg = dict(MODEL=MODEL, N_EXAMPLES=N_EXAMPLES, CHUNK_ROWS=CHUNK_ROWS, SHARDS=SHARDS, WARMUP_STEPS=WARMUP_STEPS)
    if args.quick:
        cfg.update(QUICK)
    for key, name in (("examples", "N_EXAMPLES"), ("chunk_rows", "CHUNK_ROWS"), ("shards", "SHARDS")):
        if getattr(args, key) is not None:
            cfg[name] = getattr(args, key)
    t_run = time.perf_counter()
    load_avg_start = os.getloadavg()[0]

    note = ""
    model_name = args.model or cfg["MODEL"]
    if model_name == "demo" and args.quick and not models.is_converted(models.smollm2_gguf_path()):
        model_name, note = "tiny", "quick mode used the tiny model: the SmolLM2 conversion is not cached yet"
    elif model_name == "tiny":
        note = "tiny model: checks the machinery; its per-example time is too small for the numbers to mean much"
    t = time.perf_counter()
    loaded = load_model(model_name)
    seconds_load_main = time.perf_counter() - t
    lora_cfg, feat_cfg = configs(model_name, cfg["CHUNK_ROWS"])
    examples = pool_examples(cfg["N_EXAMPLES"])
    n_chunks = -(-len(examples) // feat_cfg.chunk_rows)
    if cfg["SHARDS"] > n_chunks:
        raise SystemExit(f"{cfg['SHARDS']} shards need at least as many chunks; the store has {n_chunks}")

    with tempfile.TemporaryDirectory(prefix="gtp-scaling-") as tmp_name:
        tmp = Path(tmp_name)
        # A real warm-up checkpoint: WARMUP_STEPS AdamW steps on the first 4 x WARMUP_STEPS pool rows.
        t = time.perf_counter()
        warm = examples[: 4 * cfg["WARMUP_STEPS"]]
        train = train_lora(loaded.model, loaded.tokenizer, warm, tmp / "warmup", lora_cfg, model_id=loaded.model_id)
        seconds_warmup = time.perf_counter() - t
        del loaded
        pool_file = tmp / "pool.json"
        pool_file.write_text(json.dumps(examples))
        job = {
            "model": model_name,
            "checkpoint": train.checkpoints[-1].path,
            "pool": str(pool_file),
            "shards": cfg["SHARDS"],
            "config": feat_cfg,
        }
        runs = {}
        for n_workers in WORKER_COUNTS:
            store = tmp / f"workers-{n_workers}" / "store.zarr"
            wall, results = run_on_cluster(n_workers, {**job, "store": str(store)}, tmp)
            runs[n_workers] = {"wall": wall, "results": results, "files": store_files(store)}
        one, two = runs[1]["files"], runs[2]["files"]
        stores_equal = sorted(one) == sorted(two) and all(one[k] == two[k] for k in one)
        store_mb = sum(len(b) for b in one.values()) / 1e6

    n = len(examples)
    eps = {w: n / runs[w]["wall"] for w in WORKER_COUNTS}
    speedup = eps[2] / eps[1]
    efficiency_measured = speedup / 2
    single = runs[1]["results"]
    shard_fixed_s = statistics.median(r["fixed_s"] for r in single)
    per_example_s = statistics.median(r["per_example_s"] for r in single)
    cpu_per_example_s = statistics.median((r["cpu_s"] - r["cpu_load_s"]) / r["examples"] for r in single)
    first_task_extra = {w: first_task_extra_s(runs[w]["results"], per_example_s) for w in WORKER_COUNTS}
    efficiency = args.efficiency if args.efficiency is not None else min(1.0, efficiency_measured)
    gpu_sec_per_example = LESS_GPU_HOURS * 3600 / (LESS_EXAMPLES * LESS_CHECKPOINTS)
    gpu_fixed = args.gpu_shard_fixed_s if args.gpu_shard_fixed_s is not None else shard_fixed_s
    model_desc = (
        f"{runs[1]['results'][0]['model_id']}, {feat_cfg.max_len} tokens, LoRA r={lora_cfg.lora_r}, "
        f"d={feat_cfg.projection.dim}, {feat_cfg.precision}"
    )

    def shard_rows(results: list[dict]) -> list[dict]:
        keys = ("shard", "pid", "chunks", "examples", "seconds", "seconds_load", "fixed_s", "per_example_s", "cpu_s")
        return [{k: round(r[k], 3) if isinstance(r[k], float) else r[k] for k in keys} for r in results]

    result = {
        "bench": "scaling",
        "quick": args.quick,
        "model": model_desc,
        "examples": n,
        "chunk_rows": feat_cfg.chunk_rows,
        "chunks": n_chunks,
        "shards": cfg["SHARDS"],
        "valid": sum(r["valid"] for r in single),
        "store_mb": round(store_mb, 2),
        "wall_s_1_worker": round(runs[1]["wall"], 2),
        "wall_s_2_workers": round(runs[2]["wall"], 2),
        "examples_per_s_1_worker": round(eps[1], 3),
        "examples_per_s_2_workers": round(eps[2], 3),
        "speedup": round(speedup, 3),
        "parallel_efficiency": round(efficiency_measured, 3),
        "shard_fixed_s": round(shard_fixed_s, 3),
        "per_example_s": round(per_example_s, 4),
        "featurize_cpu_s_per_example": round(cpu_per_example_s, 4),
        "worker_first_task_extra_s_1_worker": first_task_extra[1],
        "worker_first_task_extra_s_2_workers": first_task_extra[2],
        "stores_equal": stores_equal,
        "shards_1_worker": shard_rows(runs[1]["results"]),
        "shards_2_workers": shard_rows(runs[2]["results"]),
        "less_model": {
            "source": "Xia et al. 2024, LESS (arXiv 2402.04333): 270,000 examples x 4 checkpoints, Llama-2-7B, "
            f"~{LESS_GPU_HOURS:g} GPU-hours of gradient features, {LESS_STORE_GB} GB store",
            "formula": "wall(N) = ceil(tasks/N) * shard_fixed + examples * checkpoints * sec_per_example / "
            "(N * efficiency); cost = N * wall * price_per_gpu_hour",
            "store_gb_check": round(LESS_EXAMPLES * LESS_CHECKPOINTS * LESS_PROJ_DIM * 2 / 1e9, 2),
            "sec_per_example_gpu": round(gpu_sec_per_example, 4),
            "shard_fixed_s": round(gpu_fixed, 2),
            "shard_fixed_source": "--gpu-shard-fixed-s"
            if args.gpu_shard_fixed_s is not None
            else "measured here (CPU)",
            "efficiency": round(efficiency, 3),
            "efficiency_source": "--efficiency" if args.efficiency is not None else "measured 2-worker, capped at 1",
            "price_per_gpu_hour_usd": args.price_per_gpu_hour,
            "price_note": "an assumption (CLI --price-per-gpu-hour), not a quote",
            "rows": [
                pool_model(g, gpu_sec_per_example, gpu_fixed, efficiency, args.price_per_gpu_hour) for g in GPU_COUNTS
            ],
        },
        "cpu_model": {
            "what": f"the LESS-sized pool (270,000 x 4) with THIS bench's model ({model_desc}) on W one-core CPU "
            "workers of this machine, from the per-example time measured here; not comparable to LESS's 7B",
            "sec_per_example": round(per_example_s, 4),
            "shard_fixed_s": round(shard_fixed_s, 2),
            "efficiency": round(efficiency, 3),
            "rows": [pool_model(w, per_example_s, shard_fixed_s, efficiency, None) for w in CPU_WORKER_COUNTS],
        },
        "seconds_load_main": round(seconds_load_main, 1),
        "seconds_warmup_steps": round(seconds_warmup, 1),
        "seconds_total": round(time.perf_counter() - t_run, 1),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "load_avg_1m_start": round(load_avg_start, 2),
        "load_avg_1m_end": round(os.getloadavg()[0], 2),
        "torch": torch.__version__,
        "note": note,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
