"""Every environment variable the pipeline reads, with its one default: the only module that touches os.environ.

The README's table of variables lists exactly the GTP_* ones declared here (tests/core/test_settings.py). Values are
read when asked for, so a test's monkeypatched variable or a child process's own environment is what counts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Setting:
    name: str
    default: str  # used when the variable is unset or blank
    meaning: str


SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in (
        Setting("GTP_PROFILE", "demo", "the named profile (core/config/profiles.py)"),
        Setting("GTP_CONFIG", "", "a run configuration file; wins over GTP_PROFILE"),
        Setting("GTP_CORPUS_FILES", "", "the user's pool files"),
        Setting("GTP_TARGET_FILES", "", "the user's target files"),
        Setting("GTP_TARGET_TASK", "", "a packaged target task instead of target files"),
        Setting("GTP_MODEL_DIR", "", "a local Hugging Face model folder"),
        Setting("GTP_ARTIFACT_ROOT", "", "where artifacts go; blank: artifacts/<profile> in the repository"),
        Setting("GTP_DEVICE", "auto", "auto, cpu or cuda"),
        Setting("GTP_GRADIENT_SHARDS", "2", "independent work units per checkpoint's gradient features"),
        Setting("GTP_CHECKPOINT_DIR", "", "a folder of the user's own LoRA checkpoints"),
        Setting("GTP_EMBEDDER_DIR", "", "a sentence-transformers folder; blank: the packaged MiniLM"),
        Setting("GTP_EXECUTOR", "", "a Dagster executor by name; blank: Dagster's default"),
        Setting("GTP_DASK_SCHEDULER", "", "the Dask scheduler address of the dask executor"),
        Setting("GTP_LOCAL_CACHE", "", "local mirror of a URL artifact root; blank: ~/.cache/gtp_pipeline"),
        Setting("GTP_DATA_DIR", "", "where setup extracts the packaged data; blank: .data/ in the repository"),
        Setting("GTP_MODEL_CACHE", "", "where converted models are kept; blank: models/ in the data folder"),
        Setting("GTP_MAX_REJECT_SHARE", "0.2", "the refused share of corpus rows above which a check warns"),
        # set by others, read here
        Setting("CUDA_VISIBLE_DEVICES", "", "the GPUs this process may use (set but blank: none)"),
        Setting("TRITON_INTERPRET", "0", "1: Triton kernels run in its CPU interpreter"),
    )
}

# Nothing may reach a model hub at run time: these are forced on in every process that loads a model.
OFFLINE = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def raw(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The variable as set (None when unset), from `environ` or this process's environment."""
    if name not in SETTINGS:
        raise KeyError(f"{name} is not a declared setting (gtp_pipeline/core/config/settings.py)")
    return (os.environ if environ is None else environ).get(name)


def get(name: str, environ: Mapping[str, str] | None = None) -> str:
    """The setting's value, or its default when unset or blank."""
    value = raw(name, environ)
    return value if value is not None and value.strip() else SETTINGS[name].default


def set_default(name: str, value: str) -> None:
    """Set `name` in this process's environment (and so its children's) unless it is set already."""
    raw(name)
    os.environ.setdefault(name, value)


def child_environment(**overrides: str) -> dict[str, str]:
    """This process's environment with `overrides`, for a child process."""
    unknown = [k for k in overrides if k not in SETTINGS]
    if unknown:
        raise KeyError(f"{unknown} are not declared settings (gtp_pipeline/core/config/settings.py)")
    return {**os.environ, **overrides}


def stay_offline(force: bool = False) -> None:
    """Keep Hugging Face libraries off the network in this process (and its children); `force` overrides a user's
    explicit 0, where a load must never fall back to a download."""
    for name in OFFLINE:
        if force:
            os.environ[name] = "1"
        else:
            os.environ.setdefault(name, "1")
