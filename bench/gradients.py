"""Benchmark the gradient-feature path (core/features/featurize.py) against a LESS-style loop, on one model, one machine.

Same model, same real text (BBC News articles in SmolLM2's chat format, truncated to exactly SEQ_LEN tokens),
same warm-up checkpoint (a few real AdamW steps, so the Adam moments are real), same projection matrix:
  ours   FeatureComputer: per-example LoRA gradients of a whole batch from one forward/backward (per-sample
         hooks), logits only at response positions, PRECISION (bf16 autocast on bf16 weights; eager attention
         and a tuned allocator on CPU), Adam direction, one fused block-wise projection per chunk of rows
         (cached blocks), unit-normalize.
  loop   LESS's collect_grad_reps.py: batch size 1, `model(**batch).loss` (full logits, fp32*) and one
         loss.backward() per example, Adam direction, projection every 16 examples (LESS's
         project_interval) with the materialized fp32 matrix (DenseProjector), unit-normalize.
         (*LESS's get_info.py loads the model in bf16 by default: --loop-precision bf16 measures that loop.)
Reported: examples/s of both and their ratio; achieved FLOP/s (4 x model params x tokens per example: forward
plus the activation-gradient backward; ours skips most of the lm_head, so its "FLOP/s" is effective) as a
fraction of this machine's fp32 and bf16 matmul peaks measured in the same run (best of the start and the end);
the share of our time spent projecting; cosine between our features and the loop's
(the loop is fp32, so this is also our precision error). Burn-in first, then REPS timed repetitions that
interleave ours and the loop, best of each; the ratio is also given in process CPU time, which other processes
on a shared machine do not inflate (use --threads 1 there: a second OpenMP thread waiting for a busy core
stalls every parallel region).

Run: python bench/gradients.py            (full: SmolLM2-135M, a few minutes)
     python bench/gradients.py --quick    (under a minute; falls back to the tiny model, and says so, if the
                                           SmolLM2 conversion is not cached yet)
     python bench/gradients.py --device cuda
     python bench/gradients.py --threads 1 --top-layers 8     (LoRA on the top 8 layers only)
Prints one JSON line. Goal on a 2-core AVX512-BF16 CPU: speedup >= 2 with mean_cosine >= 0.99; on a GPU >= 10.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from dataclasses import replace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from gradient_shapes import SHAPES, run_shape  # noqa: E402
from less_loop import LessLoop  # noqa: E402

from gtp_pipeline.core.features.featurize import FeatureComputer, FeatureConfig  # noqa: E402
from gtp_pipeline.core.features.projection import DenseProjector, ProjectionConfig  # noqa: E402
from gtp_pipeline.core.ingest.packaged import bbc_news  # noqa: E402
from gtp_pipeline.core.training import models  # noqa: E402
from gtp_pipeline.core.training.lora_train import LoraTrainConfig, train_lora  # noqa: E402
from gtp_pipeline.core.training.text import Encoded, encode_example, pad_id  # noqa: E402

# --- defaults (full mode); --quick overrides below ---
MODEL = "demo"  # demo: SmolLM2-135M-Instruct (cached GGUF conversion); tiny: random tiny Llama
SEQ_LEN = 128  # tokens per example (every example is truncated to exactly this)
N_OURS = 64  # timed examples, our path (after one untimed pass over them): one store chunk (chunk_rows)
N_LOOP = 8  # timed examples, LESS-style loop (after 1 burn-in example); the first N_LOOP of ours
BATCH_SIZE = 8  # our examples per forward/backward
LORA_R = 8  # the demo rank: LoRA on q/k/v/o of every layer
LORA_ALPHA = 32.0
PROJ_DIM = 1024  # the demo projection dimension
PRECISION = "bf16"  # ours; the loop runs in fp32 (--loop-precision bf16: LESS get_info.py's default dtype)
WARMUP_STEPS = 2  # real AdamW steps (batch 4) before the checkpoint whose moments the features use
REPS = 2  # timed repetitions, interleaved ours/loop; the best of each counts
SEED = 0
QUICK = dict(N_OURS=8, N_LOOP=2, BATCH_SIZE=8, WARMUP_STEPS=1, REPS=2)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(dtype: torch.dtype, device: torch.device, n: int = 2048, reps: int = 5) -> float:
    """Best GFLOP/s of an n^3 matmul in `dtype` on this machine, now."""
    a, b = torch.randn(n, n, device=device).to(dtype), torch.randn(n, n, device=device).to(dtype)
    a @ b  # burn-in
    best = float("inf")
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def real_examples(tokenizer, n: int, seq_len: int) -> list[tuple[str, str, str, Encoded]]:
    """BBC articles (all 5 sections in turn) whose chat-formatted encoding fills seq_len tokens exactly."""
    by_topic: dict[str, list] = {}
    for rec in bbc_news(limit_per_task=4 * n):
        by_topic.setdefault(rec.fields["task"], []).append(rec)
    out = []
    for k in range(4 * n):
        for topic in sorted(by_topic):
            if k < len(by_topic[topic]) and len(out) < n:
                f = by_topic[topic][k].fields
                enc = encode_example(tokenizer, f["prompt"], f["response"], max_len=seq_len)
                if isinstance(enc, Encoded) and len(enc) == seq_len:
                    out.append((f"{topic}-{k}", f["prompt"], f["response"], enc))
    if len(out) < n:
        raise RuntimeError(f"only {len(out)} BBC examples fill {seq_len} tokens; need {n}")
    return out


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(fn, device: torch.device):
    """(result, wall seconds, CPU seconds of this process): on a shared machine the CPU time is what the work
    cost, the wall time also counts the waits while other processes ran."""
    sync(device)
    t, c = time.perf_counter(), cpu_seconds()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t, cpu_seconds() - c


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    parser.add_argument("--model", default=MODEL, choices=["demo", "tiny"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--precision", default=PRECISION, choices=["fp32", "bf16"])
    parser.add_argument(
        "--loop-precision", default="fp32", choices=["fp32", "bf16"], help="bf16: LESS get_info.py's default dtype"
    )
    parser.add_argument("--proj-dim", type=int, default=None, help=f"default {PROJ_DIM}; with --shape 8192")
    parser.add_argument("--lora-r", type=int, default=None, help=f"default {LORA_R}; with --shape 128")
    parser.add_argument("--top-layers", type=int, default=None, help="LoRA on the top N layers only (default: all)")
    parser.add_argument("--n-ours", type=int, default=None)
    parser.add_argument("--n-loop", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--shape", default=None, choices=sorted(SHAPES), help="a real architecture, random weights")
    parser.add_argument("--seq-len", type=int, default=None, help="with --shape: tokens per example (512)")
    parser.add_argument("--buffer-rows", type=int, default=None, help="with --shape: projection buffer rows")
    parser.add_argument("--kernel", default="", help="with --shape: bm,bn,bk,warps,stages of the projection, or best")
    parser.add_argument("--kernel-sweep", action="store_true", help="with --shape: time the projection's tiles")
    parser.add_argument("--grad-sweep", action="store_true", help="with --shape: gradients alone at batch 2..32")
    parser.add_argument("--profile", action="store_true", help="with --shape: torch.profiler over one batch")
    args = parser.parse_args()
    if args.shape:
        print(json.dumps(run_shape(args)))
        return
    args.proj_dim = args.proj_dim or PROJ_DIM
    args.lora_r = args.lora_r or LORA_R
    cfg = dict(N_OURS=N_OURS, N_LOOP=N_LOOP, BATCH_SIZE=BATCH_SIZE, WARMUP_STEPS=WARMUP_STEPS, REPS=REPS)
    if args.quick:
        cfg.update(QUICK)
    for key in ("n_ours", "n_loop", "batch_size", "reps"):
        if getattr(args, key) is not None:
            cfg[key.upper()] = getattr(args, key)
    cfg["N_LOOP"] = min(cfg["N_LOOP"], cfg["N_OURS"])
    if args.threads:
        torch.set_num_threads(args.threads)
    device = models.pick_device(args.device)
    t_run = time.perf_counter()

    note = ""
    model_name = args.model
    if model_name == "demo" and args.quick and not models.is_converted(models.smollm2_gguf_path()):
        model_name, note = (
            "tiny",
            "quick mode used the tiny model: the SmolLM2 conversion is not cached yet (~60 s once)",
        )
    t = time.perf_counter()
    model, tokenizer, model_id = models.gguf_model() if model_name == "demo" else models.tiny_model()
    seconds_load = time.perf_counter() - t
    seq_len = SEQ_LEN if model_name == "demo" else 64
    n_model_params = sum(p.numel() for p in model.parameters())

    peak_fp32 = matmul_peak(torch.float32, device)
    peak_bf16 = matmul_peak(torch.bfloat16, device)

    data = real_examples(tokenizer, cfg["N_OURS"], seq_len)
    encoded = [d[3] for d in data]
    timed_ours, timed_loop = encoded, encoded[: cfg["N_LOOP"]]

    # A real warm-up checkpoint: WARMUP_STEPS AdamW steps (no LR warm-up, so the adapter moves at step 0).
    n_layers = model.config.num_hidden_layers
    layers = tuple(range(n_layers - args.top_layers, n_layers)) if args.top_layers else None
    lora_cfg = LoraTrainConfig(
        lora_r=args.lora_r, lora_alpha=LORA_ALPHA, layers=layers, warmup_ratio=0.0, epochs=cfg["WARMUP_STEPS"],
        batch_size=4, max_len=seq_len, seed=SEED, precision="bf16" if device.type == "cpu" else "fp32",
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        train = train_lora(
            model, tokenizer, [d[:3] for d in data[:4]], tmp, lora_cfg, model_id=model_id, device=device
        )
        seconds_warmup = time.perf_counter() - t
        ckpt = train.checkpoints[-1]

        proj_cfg = ProjectionConfig(dim=args.proj_dim, seed=SEED, dtype=args.precision)
        feat_cfg = FeatureConfig(
            kind="adam",
            projection=proj_cfg,
            max_len=seq_len,
            batch_size=cfg["BATCH_SIZE"],
            precision=args.precision,
            lora=lora_cfg,
        )
        ours = FeatureComputer(model, tokenizer, ckpt, feat_cfg, device)
        n_lora = ours.n_params
        loop_proj = DenseProjector(n_lora, replace(proj_cfg, dtype="fp32"))
        loop = LessLoop(model, ckpt, loop_proj, pad_id(tokenizer), device, args.loop_precision)

        # Burn-in: one untimed pass of ours over the same rows (first-call costs, the heap growing to its peak,
        # the projection-block cache: what the first chunk of a real run pays once), one example of the loop.
        _, seconds_first_chunk, _ = timed(lambda: ours.compute(timed_ours), device)
        first_chunk_projecting = ours.seconds_projecting
        loop.features(timed_ours[-1:])
        # Timed: interleaved repetitions, best of each (other processes on the machine only ever add time).
        best_ours = best_loop = cpu_ours = cpu_loop = float("inf")
        for _ in range(cfg["REPS"]):
            g0, p0 = ours.seconds_gradients, ours.seconds_projecting
            (ours_feats, _), sec, cpu = timed(lambda: ours.compute(timed_ours), device)
            if sec < best_ours:
                best_ours = sec
                proj_share = (ours.seconds_projecting - p0) / (
                    (ours.seconds_gradients - g0) + (ours.seconds_projecting - p0)
                )
            cpu_ours = min(cpu_ours, cpu)
            loop_feats, sec, cpu = timed(lambda: loop.features(timed_loop), device)
            best_loop, cpu_loop = min(best_loop, sec), min(cpu_loop, cpu)

    peak_fp32 = max(peak_fp32, matmul_peak(torch.float32, device))  # again at the end: the less disturbed one counts
    peak_bf16 = max(peak_bf16, matmul_peak(torch.bfloat16, device))
    cos = (ours_feats[: len(loop_feats)] * loop_feats).sum(axis=1)  # both unit rows: cosine per example
    ours_eps = len(timed_ours) / best_ours
    loop_eps = len(timed_loop) / best_loop
    flops_per_example = 4 * n_model_params * seq_len
    n_ours, n_loop, threads = len(timed_ours), len(timed_loop), torch.get_num_threads()
    result = {
        "bench": "gradients",
        "quick": args.quick,
        "model": model_id,
        "model_params": n_model_params,
        "lora_r": args.lora_r,
        "lora_params": n_lora,
        "lora_layers": f"top {args.top_layers} of {n_layers}" if args.top_layers else f"all {n_layers}",
        "proj_dim": args.proj_dim,
        "seq_len": seq_len,
        "precision": args.precision,
        "loop_precision": args.loop_precision,
        "batch_size": cfg["BATCH_SIZE"],
        "n_ours": len(timed_ours),
        "n_loop": len(timed_loop),
        "reps": cfg["REPS"],
        "ours_examples_per_s": round(ours_eps, 4),
        "loop_examples_per_s": round(loop_eps, 4),
        "speedup": round(ours_eps / loop_eps, 3),
        "ours_cpu_s_per_example": round(cpu_ours / len(timed_ours), 4),
        "loop_cpu_s_per_example": round(cpu_loop / len(timed_loop), 4),
        "speedup_cpu_time": round((cpu_loop / len(timed_loop)) / (cpu_ours / len(timed_ours)), 3),
        "ours_gflops": round(flops_per_example * ours_eps / 1e9, 2),
        "loop_gflops": round(flops_per_example * loop_eps / 1e9, 2),
        "peak_fp32_gflops": round(peak_fp32, 1),
        "peak_bf16_gflops": round(peak_bf16, 1),
        "ours_frac_of_fp32_peak": round(flops_per_example * ours_eps / 1e9 / peak_fp32, 3),
        "ours_frac_of_bf16_peak": round(flops_per_example * ours_eps / 1e9 / peak_bf16, 3),
        "loop_frac_of_fp32_peak": round(flops_per_example * loop_eps / 1e9 / peak_fp32, 3),
        # CPU seconds per example / threads: the time an example would take with the threads to itself.
        "ours_frac_of_bf16_peak_cpu_time": round(
            flops_per_example / (cpu_ours / n_ours / threads) / 1e9 / peak_bf16, 3
        ),
        "loop_frac_of_fp32_peak_cpu_time": round(
            flops_per_example / (cpu_loop / n_loop / threads) / 1e9 / peak_fp32, 3
        ),
        "proj_share": round(proj_share, 4),
        "first_chunk_seconds": round(seconds_first_chunk, 2),
        "first_chunk_projecting_seconds": round(first_chunk_projecting, 2),
        "mean_cosine": round(float(np.mean(cos)), 5),
        "min_cosine": round(float(np.min(cos)), 5),
        "seconds_load": round(seconds_load, 1),
        "seconds_warmup_steps": round(seconds_warmup, 1),
        "seconds_total": round(time.perf_counter() - t_run, 1),
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "torch": torch.__version__,
        "note": note,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
