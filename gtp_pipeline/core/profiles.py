"""Profiles: the one switch between a seconds-long test run, the CPU demo, and a user's full run.

`tiny` (tests, CI): a few hundred real packaged examples, a small random Llama, a target with a
handful of dev examples. `demo` (`make demo`, the default): SmolLM2-135M and a real multi-source pool
sized to finish on a 2-core CPU in minutes. `full`: the user's own corpus files, target and model.
The same code runs in all three; only these numbers and sources differ. Pick one with GTP_PROFILE.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

from gtp_pipeline.core.corpus import CorpusConfig
from gtp_pipeline.core.targets import TargetSpec

PROFILE_ENV = "GTP_PROFILE"
DEFAULT_PROFILE = "demo"


@dataclass(frozen=True)
class SourceSpec:
    """One pool source: a packaged source by name, or the user's files."""

    kind: str  # chatterbot | bbc_news | sharegpt | natural_instructions | files
    limit_per_task: int | None = None  # first rows of each task in package order; None = all
    limit: int | None = None  # sharegpt only: number of short first-turn pairs
    tasks: tuple[str, ...] | None = None  # only these topics/subtasks; None = all
    files: tuple[str, ...] = ()  # kind="files": JSONL/Parquet paths


@dataclass(frozen=True)
class Profile:
    """Everything that differs between tiny, demo and full."""

    name: str
    pool: tuple[SourceSpec, ...]
    target: TargetSpec
    corpus: CorpusConfig = field(default_factory=CorpusConfig)


TINY = Profile(
    name="tiny",
    pool=(
        SourceSpec("chatterbot", limit_per_task=10),
        SourceSpec("natural_instructions", limit_per_task=2),
        SourceSpec("bbc_news", limit_per_task=6),
    ),
    target=TargetSpec(name="social_iqa", kind="bigbench", tasks=("social_iqa",), n_dev=4, n_test=24),
    corpus=CorpusConfig(max_chars=4_000),
)

DEMO = Profile(
    name="demo",
    pool=(
        SourceSpec("natural_instructions", limit_per_task=4),
        SourceSpec("chatterbot", limit_per_task=5),
        SourceSpec("sharegpt", limit=40),
        SourceSpec("bbc_news", limit_per_task=4),
    ),
    target=TargetSpec(name="social_iqa", kind="bigbench", tasks=("social_iqa",), n_dev=8, n_test=200),
    corpus=CorpusConfig(max_chars=6_000),
)

FULL = Profile(
    name="full",
    pool=(),  # filled from GTP_CORPUS_FILES (or run config) by `profile_from_env`
    target=TargetSpec(name="target", kind="files", tasks=(), n_dev=5, n_test=100),
    corpus=CorpusConfig(max_chars=50_000),
)

PROFILES = {p.name: p for p in (TINY, DEMO, FULL)}


class ProfileError(ValueError):
    """An unknown profile, or a full profile with nothing to read."""


def _split_paths(value: str | None) -> tuple[str, ...]:
    return tuple(p for p in (value or "").replace(",", os.pathsep).split(os.pathsep) if p.strip())


def get_profile(
    name: str,
    corpus_files: tuple[str, ...] = (),
    target_files: tuple[str, ...] = (),
    target_task: str | None = None,
) -> Profile:
    """The named profile, with the user's files or a packaged target task put in where given.

    Args:
        name: tiny | demo | full.
        corpus_files: JSONL/Parquet pool files; required for full, added to the pool otherwise.
        target_files: JSONL/Parquet target files (kind="files").
        target_task: a packaged target instead: "gsm8k" or a BIG-bench task path such as "strategyqa".
    """
    if name not in PROFILES:
        raise ProfileError(f"unknown profile {name!r}; expected one of {sorted(PROFILES)}")
    profile = PROFILES[name]
    if corpus_files:
        user = SourceSpec("files", files=tuple(corpus_files))
        profile = replace(profile, pool=(user,) if name == "full" else (*profile.pool, user))
    if target_files:
        profile = replace(profile, target=replace(profile.target, name="target", kind="files", files=tuple(target_files), tasks=()))
    elif target_task:
        kind = "gsm8k" if target_task == "gsm8k" else "bigbench"
        profile = replace(profile, target=replace(profile.target, name=target_task, kind=kind, tasks=(target_task,)))
    if not profile.pool:
        raise ProfileError("profile 'full' reads the user's corpus: set GTP_CORPUS_FILES (paths separated by ':' or ',')")
    if profile.target.kind == "files" and not profile.target.files:
        raise ProfileError("profile 'full' needs a target: set GTP_TARGET_FILES, or GTP_TARGET_TASK to a packaged task")
    return profile


def profile_from_env() -> Profile:
    """The profile GTP_PROFILE names (default demo), with GTP_CORPUS_FILES / GTP_TARGET_* applied."""
    return get_profile(
        os.environ.get(PROFILE_ENV, DEFAULT_PROFILE),
        corpus_files=_split_paths(os.environ.get("GTP_CORPUS_FILES")),
        target_files=_split_paths(os.environ.get("GTP_TARGET_FILES")),
        target_task=os.environ.get("GTP_TARGET_TASK") or None,
    )
