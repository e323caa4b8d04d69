"""LESS's warm-up: a short LoRA training on a seeded share of the pool, whose checkpoints the gradient features are
taken at (their learning rates weight each checkpoint's block of a trajectory)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gtp_pipeline.core.ingest.records import text_examples
from gtp_pipeline.core.training.lora_train import LoraTrainConfig, TrainResult, train_lora, warmup_subset

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WarmupRun:
    """A warm-up: how many pool examples it trained on, and its checkpoints."""

    n_examples: int
    result: TrainResult

    def checkpoint_rows(self, keys: Sequence[str]) -> list[dict[str, Any]]:
        """One row per checkpoint, under the name (`keys`, in checkpoint order) that the caller gives it."""
        return [
            {
                "partition": key,
                "step": c.step,
                "epoch": c.epoch,
                "lr_weight": c.lr_weight,
                "mean_loss": c.mean_loss,
                "checkpoint_id": c.checkpoint_id,
            }
            for key, c in zip(keys, self.result.checkpoints, strict=True)
        ]

    def summary(self) -> dict[str, Any]:
        """What the run trained on and did, in plain numbers."""
        return {
            "warmup_examples": self.n_examples,
            "excluded_examples": len(self.result.excluded),
            "steps_run": self.result.steps_run,
            "seconds": round(self.result.seconds, 1),
        }

    def version(self) -> str:
        """The checkpoints' adapter hashes, joined: changes exactly when a checkpoint's weights do."""
        return "-".join(c.checkpoint_id for c in self.result.checkpoints)


WARMUP_LOG_EVERY = 10  # steps between warm-up progress lines (and the last step)


def warm_up(
    loaded: Any,
    pool: Any,
    fraction: float,
    seed: int,
    config: LoraTrainConfig,
    out_dir: str | Path,
    device: torch.device | str = "cpu",
    log: Callable[[str], None] = logger.info,
) -> WarmupRun:
    """LESS's warm-up: LoRA on a seeded `fraction` of the pool (a table of example_id, prompt, response) into out_dir.

    `loaded` is a core.training.models.LoadedModel; resumes from the checkpoints already in out_dir.
    """
    examples = text_examples(pool[warmup_subset(pool.height, fraction, seed)])
    log(
        f"warm-up: {len(examples)} of {pool.height} examples, {config.epochs} epochs, LoRA r={config.lora_r}, "
        f"device {device}"
    )

    def progress(step: int, total: int, loss: float) -> None:
        if step == total or step % WARMUP_LOG_EVERY == 0:
            log(f"warm-up step {step}/{total}: loss {loss:.4f}")

    result = train_lora(
        loaded.model, loaded.tokenizer, examples, out_dir, config, loaded.model_id, device=device, progress=progress
    )
    return WarmupRun(len(examples), result)
