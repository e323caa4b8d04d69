"""The on-disk LoRA checkpoint: its file names, reading, listing, saving and verifying, in one place.

A checkpoint is a folder `checkpoint-<step>` written atomically (temp folder, then rename):
  adapter_model.safetensors + adapter_config.json   peft's format: `PeftModel.from_pretrained` reads it
  optimizer.safetensors   "exp_avg/<param>", "exp_avg_sq/<param>" for every LoRA parameter (named_parameters)
  trainer_state.json      step, epoch, lr_weight (mean LR over the steps since the previous checkpoint, LESS's
                          eta_t; unnormalized), mean_loss, loss history, config, data identity, model_id, and
                          checkpoint_id: the hash of the adapter file, which feature stores record as their identity
The training loop that writes them is core/training/lora_train.py; a user's own checkpoints use the same format.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if (
    TYPE_CHECKING
):  # torch and peft load only where a checkpoint is read or written: the file names stay cheap to import
    import torch
    from peft import PeftModel

ADAPTER_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG_FILE = "adapter_config.json"
MOMENTS_FILE = "optimizer.safetensors"
STATE_FILE = "trainer_state.json"
CHECKPOINT_FILES = (ADAPTER_FILE, ADAPTER_CONFIG_FILE, MOMENTS_FILE, STATE_FILE)  # a complete checkpoint holds all
CHECKPOINT_PREFIX = "checkpoint-"


class CheckpointMismatchError(ValueError):
    """A checkpoint folder holds a run with another config, data or model than the one asked for."""

    def __init__(self, path: str | Path, key: str, expected: Any, found: Any):
        self.path, self.key, self.expected, self.found = str(path), key, expected, found
        super().__init__(
            f"checkpoint {path} was written with {key}={found!r}, but this run has {key}={expected!r}. "
            f"Use another output folder, or delete it to retrain."
        )


class CheckpointError(RuntimeError):
    """A checkpoint folder is unreadable or does not fit the model."""


@dataclass(frozen=True)
class CheckpointInfo:
    """What callers (assets) need of a checkpoint; `lr_weight` is unnormalized (see lora_train.lr_weights)."""

    path: str
    step: int
    epoch: float
    lr_weight: float
    mean_loss: float
    checkpoint_id: str  # hash of the adapter weights: goes into feature-store identities


def read_checkpoint(path: str | Path) -> CheckpointInfo:
    path = Path(path)
    try:
        state = json.loads((path / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: unreadable {STATE_FILE}: {err}") from err
    return CheckpointInfo(
        str(path), state["step"], state["epoch"], state["lr_weight"], state["mean_loss"], state["checkpoint_id"]
    )


def list_checkpoints(out_dir: str | Path) -> list[CheckpointInfo]:
    """Complete checkpoints under out_dir, by step (temp folders of a killed save are ignored)."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    paths = sorted(p for p in out_dir.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX))
    return sorted((read_checkpoint(p) for p in paths), key=lambda c: c.step)


def adapter_hash(path: Path) -> str:
    return hashlib.sha256((path / ADAPTER_FILE).read_bytes()).hexdigest()[:16]


def checkpoint_problem(path: str | Path) -> str | None:
    """Why a saved checkpoint cannot be trusted (unreadable state, adapter not the one recorded, a non-finite loss or
    weight), or None."""
    import torch
    from safetensors.torch import load_file

    path = Path(path)
    try:
        info = read_checkpoint(path)
        adapter = load_file(str(path / ADAPTER_FILE))
    except Exception as err:  # a damaged file raises whatever its reader raises
        return f"unreadable: {type(err).__name__}: {err}"
    if adapter_hash(path) != info.checkpoint_id:
        return f"adapter hash {adapter_hash(path)} is not the recorded {info.checkpoint_id}"
    if not math.isfinite(info.mean_loss):
        return f"mean training loss {info.mean_loss}"
    bad = sorted(name for name, t in adapter.items() if not torch.isfinite(t).all())
    return f"non-finite weights in {', '.join(bad[:3])}" if bad else None


def save_checkpoint(
    out_dir: Path, model: PeftModel, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> CheckpointInfo:
    """Write the model's adapter, its AdamW moments and `state` as checkpoint-<step>, atomically."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    tmp = out_dir / f".tmp-{CHECKPOINT_PREFIX}{state['step']:06d}-{uuid.uuid4().hex[:8]}"
    final = out_dir / f"{CHECKPOINT_PREFIX}{state['step']:06d}"
    tmp.mkdir(parents=True)
    try:
        adapter = {k: v.detach().float().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()}
        save_file(adapter, str(tmp / ADAPTER_FILE))
        model.peft_config["default"].save_pretrained(str(tmp))  # ADAPTER_CONFIG_FILE
        moments = {}
        for name, p in model.named_parameters():
            if p.requires_grad:
                s = optimizer.state[p]
                moments[f"exp_avg/{name}"] = s["exp_avg"].detach().cpu().contiguous()
                moments[f"exp_avg_sq/{name}"] = s["exp_avg_sq"].detach().cpu().contiguous()
        save_file(moments, str(tmp / MOMENTS_FILE))
        state = {**state, "checkpoint_id": adapter_hash(tmp)}
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
        if final.exists():  # a stale copy of the same step (identity already checked): replace it
            shutil.rmtree(final)
        os.rename(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return read_checkpoint(final)
