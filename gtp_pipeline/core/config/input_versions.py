"""What each stage's results depend on outside the data flowing between assets: the user's input files (by content)
and the settings that shape the stage. Each is summarized as a version string; the pipeline records them as the
data versions of observable source assets upstream of the stages, so editing a file or a setting makes exactly the
stages it shapes stale (Dagster's own staleness rules), and nothing else.

Settings that change how fast something runs but not what it produces (batch sizes of feature extraction and
evaluation, chunk and buffer sizes, the k-means embedding chunk) are left out on purpose.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from gtp_pipeline.core.config.profiles import Profile

READ_BLOCK = 1 << 22

# The LoRA training recipe, shared by the warm-up and the fine-tunes (assets/gradients.py's lora_config).
LORA_TRAINING = (
    "gradients.lora_r",
    "gradients.lora_alpha",
    "gradients.lora_layers",
    "gradients.lr",
    "gradients.batch_size",
    "gradients.max_len",
    "gradients.train_precision",
)
# Each recipe: the settings fields (section.field) that shape the stages it feeds.
RECIPES: dict[str, tuple[str, ...]] = {
    "warmup_recipe": ("gradients.warmup_fraction", "gradients.warmup_epochs", *LORA_TRAINING, "budgets.seed"),
    "feature_recipe": (
        "gradients.proj_dim",
        "gradients.proj_seed",
        "gradients.max_len",
        "gradients.feature_precision",
    ),
    "cluster_recipe": ("clusters.K", "clusters.R", "clusters.max_iter", "clusters.seed", "clusters.precision"),
    "selection_recipe": ("budgets.budgets", "budgets.seed", "budgets.train_epochs"),
    "finetune_recipe": (*LORA_TRAINING, "budgets.train_epochs"),
}


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:24]


def file_digest(path: str | Path) -> str:
    """Size and CRC32C of a file's bytes: changes whenever the content does (a touch alone does not)."""
    import crc32c

    crc, size = 0, 0
    with open(path, "rb") as f:
        while block := f.read(READ_BLOCK):
            crc = crc32c.crc32c(block, crc)
            size += len(block)
    return f"{size}:{crc:08x}"


def _files_version(paths: tuple[str, ...]) -> list[tuple[str, str]]:
    """(path, digest) per file; a file that cannot be read is named as missing (the stage itself says why)."""
    out = []
    for p in paths:
        try:
            out.append((p, file_digest(p)))
        except OSError as err:
            out.append((p, f"unreadable: {type(err).__name__}"))
    return out


def recipe_settings(profile: Profile, recipe: str) -> dict[str, Any]:
    """{"section.field": value} of one recipe's settings in `profile`."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; expected one of {sorted(RECIPES)}")
    return {name: getattr(getattr(profile, name.split(".")[0]), name.split(".")[1]) for name in RECIPES[recipe]}


def recipe_version(profile: Profile, recipe: str) -> str:
    """The version of one recipe's settings in `profile`."""
    return _digest(recipe_settings(profile, recipe))


def target_input(profile: Profile) -> dict[str, Any]:
    """What the target stage reads: the task's spec and the content of the user's target files (packaged tasks are
    pinned data, installed sha256-checked)."""
    spec = profile.target
    return {"spec": asdict(spec), "files": _files_version(spec.files)}


def pool_input(profile: Profile) -> dict[str, Any]:
    """What the corpus stage reads: the pool's sources and rules, the targets it is decontaminated against, and the
    content of the user's files."""
    return {
        "pool": [asdict(s) for s in profile.pool],
        "corpus": asdict(profile.corpus),
        "contamination_targets": [asdict(t) for t in profile.contamination_targets],
        "target_files": _files_version(tuple(f for t in profile.contamination_targets for f in t.files)),
        "files": _files_version(tuple(f for source in profile.pool for f in source.files)),
    }


def input_version(described: dict[str, Any]) -> str:
    """The version of what `target_input`, `pool_input` or `recipe_settings` describe."""
    return _digest(described)


def target_input_version(profile: Profile) -> str:
    return input_version(target_input(profile))


def pool_input_version(profile: Profile) -> str:
    return input_version(pool_input(profile))
