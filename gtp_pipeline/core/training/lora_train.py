"""The one LoRA training recipe: LESS's warm-up, and later fine-tuning on a selection.

Follows LESS (arXiv 2402.04333, less/scripts/train/base_training_args.sh and less/train/train.py): peft LoRA on
q_proj, k_proj, v_proj, o_proj; AdamW (betas 0.9/0.999, eps 1e-8, weight decay 0); linear warm-up then linear
decay to 0 (HF `get_linear_schedule_with_warmup`, including its LR of 0 at step 0); gradient clipping at 1.0
(HF Trainer's default); loss = mean over the batch of each example's mean response-token loss. Sizes are
scaled down for a CPU (see `LoraTrainConfig`).

Two uses of the same loop:
  (a) warm-up (`warmup_subset` picks LESS's seeded random fraction of the pool): E epochs, one checkpoint per
      epoch; the checkpoints' Adam moments and learning-rate weights feed the gradient features;
  (b) fine-tuning on a selection: uniform weights by default, optional per-example loss weights (normalized
      to mean 1), or a given `stream` of example indices (the ClusterClip sampling plan) instead of epochs.

A checkpoint (its files, reading and verifying them) is core/training/checkpoints.py.
Resume: a rerun with the same inputs loads the last checkpoint and continues the same batch plan (the order
is a function of the seed; dropout is reseeded per step), so it ends with the same adapter as an uninterrupted
run. A checkpoint folder written for other data, config or model is refused (CheckpointMismatchError).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file

from gtp_pipeline.core.features.per_example_grads import (
    autocast,
    param_layout,
    prepare_model,
    response_losses,
    set_attention,
    tune_cpu_allocator,
    weight_sharing_copy,
)
from gtp_pipeline.core.ingest.records import TextExample
from gtp_pipeline.core.training.checkpoints import (
    ADAPTER_FILE,
    MOMENTS_FILE,
    STATE_FILE,
    CheckpointError,
    CheckpointInfo,
    CheckpointMismatchError,
    list_checkpoints,
    save_checkpoint,
)
from gtp_pipeline.core.training.text import Encoded, Excluded, collate, encode_example, pad_id

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1


@dataclass(frozen=True)
class LoraTrainConfig:
    """LoRA training recipe. LESS's values for a 7B model on GPUs are in the comments; defaults fit a CPU demo."""

    lora_r: int = 8  # LESS 128; P ~0.92M on SmolLM2 at 8 (projection cost grows with P x d)
    lora_alpha: float = 32.0  # LESS uses alpha = 4 r
    lora_dropout: float = 0.1  # LESS
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")  # LESS
    layers: tuple[int, ...] | None = None  # None: every layer; e.g. the top layers only, to shorten backward
    lr: float = 2e-4  # LESS 2e-5 at global batch 128 over 13.5k examples; a few hundred examples need more
    weight_decay: float = 0.0  # LESS
    warmup_ratio: float = 0.03  # LESS
    epochs: int = 4  # LESS: 4 epochs, one checkpoint each
    batch_size: int = 8  # LESS 128 (1 x 32 x 4 GPUs); SmolLM2, 8 x 128 tokens, bf16: ~4 s per step on one core
    max_len: int = 128  # LESS 2048
    min_prompt_tokens: int = 16  # see core/training/text.py: the prompt is cut from the left down to this
    max_grad_norm: float = 1.0  # HF Trainer default, which LESS inherits
    seed: int = 0  # LoRA init, epoch order and dropout; LESS uses seed 0
    save_every_epochs: int = 1  # epoch mode: LESS saves every epoch (the last epoch is always saved)
    save_every_steps: int = 0  # stream mode: steps between checkpoints; 0 = only at the end
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: frozen weights bf16 + autocast (LESS trains in bf16)
    attention: str = "auto"  # "auto": eager on CPU (faster bf16 backward than SDPA's CPU kernel), else the model's

    def lora_config(self) -> LoraConfig:
        return LoraConfig(
            r=self.lora_r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules=list(self.target_modules),
            layers_to_transform=list(self.layers) if self.layers is not None else None,
            bias="none",
            task_type="CAUSAL_LM",
        )


@dataclass(frozen=True)
class TrainResult:
    checkpoints: list[CheckpointInfo]
    excluded: list[tuple[str, str]]  # (example_id, reason) of examples that could not be encoded
    steps_run: int  # steps computed by this call (0 when everything was already done)
    seconds: float


def _mix_seed(*parts: int) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "little") >> 1


def warmup_subset(n_pool: int, fraction: float, seed: int = 0) -> list[int]:
    """LESS's warm-up set: a seeded random `fraction` of the pool (at least one), as sorted pool indices."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    k = max(1, round(fraction * n_pool))
    return sorted(np.random.default_rng(seed).choice(n_pool, size=k, replace=False).tolist())


def linear_schedule(step: int, total_steps: int, warmup_steps: int) -> float:
    """HF get_linear_schedule_with_warmup's multiplier for optimizer step `step` (0-based)."""
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def lr_weights(checkpoints: Sequence[CheckpointInfo]) -> list[float]:
    """LESS's w_t = eta_t / sum_s eta_s over the checkpoints used."""
    total = sum(c.lr_weight for c in checkpoints)
    if total <= 0:
        raise ValueError(f"checkpoint learning-rate weights sum to {total}; cannot normalize")
    return [c.lr_weight / total for c in checkpoints]


def make_lora_model(base_model: torch.nn.Module, config: LoraTrainConfig) -> PeftModel:
    """A fresh LoRA model over base_model's weights (shared, never modified), init seeded by config.seed."""
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # peft calls a deprecated transformers helper
        torch.manual_seed(config.seed)
        return get_peft_model(weight_sharing_copy(base_model), config.lora_config())


def load_lora_model(base_model: torch.nn.Module, checkpoint: str | Path | CheckpointInfo) -> PeftModel:
    """The checkpoint's adapter over base_model's weights (shared, never modified), LoRA parameters trainable."""
    path = Path(checkpoint.path if isinstance(checkpoint, CheckpointInfo) else checkpoint)
    if not (path / ADAPTER_FILE).is_file():
        raise CheckpointError(f"{path} has no {ADAPTER_FILE}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # peft calls a deprecated transformers helper
        # an adapter folder is a JSON config and safetensors weights: peft runs no code from it (said explicitly)
        model = weight_sharing_copy(base_model)
        return PeftModel.from_pretrained(model, str(path), is_trainable=True, trust_remote_code=False)


def load_moments(checkpoint: str | Path | CheckpointInfo, model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The checkpoint's AdamW exp_avg and exp_avg_sq, flattened in the model's parameter layout: (P,), (P,)."""
    path = Path(checkpoint.path if isinstance(checkpoint, CheckpointInfo) else checkpoint)
    tensors = load_file(str(path / MOMENTS_FILE))
    layout = param_layout(model)
    missing = [n for n in layout.names if f"exp_avg/{n}" not in tensors or f"exp_avg_sq/{n}" not in tensors]
    if missing or len(tensors) != 2 * len(layout.names):
        raise CheckpointError(
            f"{path}: optimizer moments do not match the model's LoRA parameters (missing {missing[:3]})"
        )
    m = torch.cat([tensors[f"exp_avg/{n}"].reshape(-1).float() for n in layout.names])  # (P,)
    v = torch.cat([tensors[f"exp_avg_sq/{n}"].reshape(-1).float() for n in layout.names])  # (P,)
    return m, v


def _batch_plan(n: int, config: LoraTrainConfig, stream: Sequence[int] | None) -> tuple[list[list[int]], list[int]]:
    """(batches of row indices for every step, the steps after which to save)."""
    bs = config.batch_size
    if stream is not None:
        batches = [list(stream[k : k + bs]) for k in range(0, len(stream), bs)]
        every = config.save_every_steps
        saves = [s for s in range(1, len(batches) + 1) if (every and s % every == 0) or s == len(batches)]
        return batches, saves
    batches, saves = [], []
    for epoch in range(config.epochs):
        order = np.random.default_rng([config.seed, epoch]).permutation(n).tolist()
        batches += [order[k : k + bs] for k in range(0, n, bs)]
        if (epoch + 1) % config.save_every_epochs == 0 or epoch + 1 == config.epochs:
            saves.append(len(batches))
    return batches, saves


def _data_identity(ids: Sequence[str], weights: np.ndarray | None, stream: Sequence[int] | None, model_id: str) -> str:
    digest = hashlib.sha256(model_id.encode())
    digest.update("\n".join(ids).encode())
    if weights is not None:
        digest.update(np.ascontiguousarray(weights, dtype=np.float64).tobytes())
    if stream is not None:
        digest.update(np.asarray(stream, dtype=np.int64).tobytes())
    return digest.hexdigest()[:32]


def train_lora(
    base_model: torch.nn.Module,
    tokenizer: Any,
    examples: Sequence[TextExample],
    out_dir: str | Path,
    config: LoraTrainConfig = LoraTrainConfig(),
    model_id: str = "",
    weights: Sequence[float] | None = None,
    stream: Sequence[int] | None = None,
    device: torch.device | str = "cpu",
    progress: Callable[[int, int, float], None] | None = None,
) -> TrainResult:
    """Train LoRA on (example_id, prompt, response) examples, writing checkpoints to out_dir; resumes.

    Args:
        base_model: the frozen causal LM; it is copied, never modified.
        examples: the training set; examples whose response does not survive truncation are excluded and
            reported in the result.
        config: the recipe; together with the data, `weights`, `stream` and model_id it is checked against
            existing checkpoints in out_dir.
        weights: optional per-example loss weights (normalized to mean 1); None = uniform.
        stream: optional sequence of example indices to train on in order, batch_size at a time, instead of
            `config.epochs` shuffled epochs (ClusterClip's sampling plan).
        progress: called as progress(step, total_steps, loss) after every step (and after its checkpoint).

    Returns:
        TrainResult with every checkpoint of the run (earlier ones included), by step.
    """
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    encoded: list[Encoded] = []
    keep: list[int] = []
    excluded: list[tuple[str, str]] = []
    for i, (eid, prompt, response) in enumerate(examples):
        enc = encode_example(tokenizer, prompt, response, config.max_len, config.min_prompt_tokens)
        if isinstance(enc, Excluded):
            excluded.append((eid, enc.reason))
        else:
            encoded.append(enc)
            keep.append(i)
    if not encoded:
        raise ValueError(
            f"none of the {len(examples)} training examples has a response token at max_len={config.max_len}"
        )
    position = {i: k for k, i in enumerate(keep)}  # pool index -> row of `encoded`
    w = None
    if weights is not None:
        if len(weights) != len(examples):
            raise ValueError(f"{len(weights)} weights for {len(examples)} examples")
        w = np.asarray([weights[i] for i in keep], dtype=np.float64)
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError("weights must be non-negative with a positive sum")
        w = w / w.mean()
    rows_stream = None
    if stream is not None:
        if any(not 0 <= i < len(examples) for i in stream):
            raise ValueError(f"stream holds indices outside 0..{len(examples) - 1}")
        rows_stream = [position[i] for i in stream if i in position]
        if not rows_stream:
            raise ValueError("the stream holds only excluded examples")
    ids = [examples[i][0] for i in keep]
    identity = _data_identity(ids, w, rows_stream, model_id)
    batches, saves = _batch_plan(len(encoded), config, rows_stream)
    total = len(batches)
    warmup = math.ceil(config.warmup_ratio * total)
    steps_per_epoch = math.ceil(len(encoded) / config.batch_size)
    config_json = json.loads(json.dumps(asdict(config)))

    existing = list_checkpoints(out_dir)
    for ck in existing:
        found = json.loads((Path(ck.path) / STATE_FILE).read_text())
        for key, want in (("config", config_json), ("data_identity", identity), ("model_id", model_id)):
            if found.get(key) != want:
                raise CheckpointMismatchError(ck.path, key, want, found.get(key))
    done = [c for c in existing if c.step in saves]
    start = done[-1].step if done else 0
    if start >= total:
        return TrainResult(done, excluded, 0, time.perf_counter() - t_start)

    if torch.device(device).type == "cpu":
        tune_cpu_allocator()
    model = make_lora_model(base_model, config) if start == 0 else load_lora_model(base_model, done[-1].path)
    model = prepare_model(model, config.precision).to(device)
    set_attention(model, config.attention, device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=config.weight_decay)
    losses: list[float] = []
    if start:
        state = json.loads((Path(done[-1].path) / STATE_FILE).read_text())
        losses = list(state["losses"])
        m, v = load_moments(done[-1].path, model)
        offset = 0
        for p in params:
            n = p.numel()
            optimizer.state[p] = {
                "step": torch.tensor(float(start)),
                "exp_avg": m[offset : offset + n].view_as(p).clone().to(p.device),
                "exp_avg_sq": v[offset : offset + n].view_as(p).clone().to(p.device),
            }
            offset += n
        logger.info("resuming LoRA training in %s from step %d of %d", out_dir, start, total)

    pad = pad_id(tokenizer)
    weight_t = torch.as_tensor(w, dtype=torch.float32) if w is not None else None
    checkpoints = list(done)
    lrs = [config.lr * linear_schedule(s, total, warmup) for s in range(total)]
    prev_save = start
    model.train()
    for step in range(start, total):
        rows = batches[step]
        batch = collate([encoded[r] for r in rows], pad)
        for group in optimizer.param_groups:
            group["lr"] = lrs[step]
        with torch.random.fork_rng(devices=[]):  # dropout masks depend on (seed, step) only: resume is exact
            torch.manual_seed(_mix_seed(config.seed, step))
            with autocast(config.precision, device):
                per_example = response_losses(model, batch["input_ids"].to(device), batch["labels"].to(device))  # (B,)
            if weight_t is not None:
                per_example = per_example * weight_t[rows].to(per_example.device)
            loss = per_example.mean()
            loss.backward()
        if config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if step + 1 in saves:
            state = {
                "format_version": FORMAT_VERSION,
                "step": step + 1,
                "epoch": (step + 1) / steps_per_epoch
                if rows_stream is None
                else (step + 1) * config.batch_size / len(encoded),
                "total_steps": total,
                "lr_weight": float(np.mean(lrs[prev_save : step + 1])),
                "mean_loss": float(np.mean(losses[prev_save : step + 1])),
                "losses": losses,
                "config": config_json,
                "data_identity": identity,
                "model_id": model_id,
                "n_examples": len(encoded),
                "n_excluded": len(excluded),
            }
            checkpoints.append(save_checkpoint(out_dir, model, optimizer, state))
            prev_save = step + 1
            logger.info("saved %s (loss %.4f)", checkpoints[-1].path, checkpoints[-1].mean_loss)
        if progress is not None:  # after the save: a callback that stops the run never costs a checkpoint
            progress(step + 1, total, losses[-1])
    model.eval()
    return TrainResult(checkpoints, excluded, total - start, time.perf_counter() - t_start)
