"""Partitions, defined once and imported by assets, jobs, sensors and tests."""

from __future__ import annotations

import re

import dagster as dg

from gtp_pipeline.core.config import settings as env

# One partition per warm-up (or user) checkpoint; keys are registered by the asset that writes them
# and by the checkpoint sensor.
model_checkpoint = dg.DynamicPartitionsDefinition(name="model_checkpoint")

# Shards split a checkpoint's gradient work into independent units any worker can run (store chunk c belongs
# to shard c % N_SHARDS). Fixed at load time because partitions are; set GTP_GRADIENT_SHARDS to change it.
N_SHARDS = int(env.get("GTP_GRADIENT_SHARDS"))
gradient_shard = dg.StaticPartitionsDefinition([str(i) for i in range(N_SHARDS)])
checkpoint_shard = dg.MultiPartitionsDefinition({"checkpoint": model_checkpoint, "shard": gradient_shard})


def _profile_for_partitions():
    """The configuration file GTP_CONFIG names, else the profile GTP_PROFILE names, without the user-file checks
    (partitions only need its budgets and seeds)."""
    from gtp_pipeline.core.config.profiles import DEFAULT_PROFILE, PROFILES
    from gtp_pipeline.core.config.run_config import load_run_config

    if config := env.get("GTP_CONFIG"):
        return load_run_config(config)
    return PROFILES.get(env.get("GTP_PROFILE"), PROFILES[DEFAULT_PROFILE])


def _finetune_partitions() -> dg.MultiPartitionsDefinition:
    from gtp_pipeline.core.config.profiles import finetune_runs

    profile = _profile_for_partitions()
    return dg.MultiPartitionsDefinition(
        {
            "run": dg.StaticPartitionsDefinition(finetune_runs(profile)),  # "<method>-<budget>" and "full"
            "seed": dg.StaticPartitionsDefinition([str(s) for s in profile.budgets.finetune_seeds]),
        }
    )


# One fine-tune per (method at a budget, seed); the profile decides the budgets and seeds.
finetune_partitions = _finetune_partitions()

# Keys must survive the UI, CLI ranges ("a...b") and paths: no ",", "|", "/", "..." or spaces.
CHECKPOINT_KEY_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def is_valid_checkpoint_key(key: str) -> bool:
    return bool(CHECKPOINT_KEY_RE.match(key)) and "..." not in key
