"""Profiles: the one switch between a seconds-long test run, the CPU demo, and a user's full run.

`tiny` (tests, CI): a few hundred real packaged examples, a small random Llama, a target with a
handful of dev examples. `demo` (`make demo`, the default): SmolLM2-135M and a real multi-source pool
sized to finish on a 2-core CPU in minutes. `full`: the user's own corpus files, target and model.
The same code runs in all three; only these numbers and sources differ. Pick one with GTP_PROFILE.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

from gtp_pipeline.core.config.config_errors import ConfigurationError
from gtp_pipeline.core.config.settings import SETTINGS
from gtp_pipeline.core.ingest.corpus import CorpusConfig
from gtp_pipeline.core.ingest.targets import TargetSpec

DEFAULT_PROFILE = SETTINGS["GTP_PROFILE"].default


@dataclass(frozen=True)
class SourceSpec:
    """One pool source: a packaged source by name, or the user's files."""

    kind: str  # chatterbot | bbc_news | sharegpt | natural_instructions | files
    limit_per_task: int | None = None  # first rows of each task in package order; None = all
    limit: int | None = None  # sharegpt only: number of short first-turn pairs
    tasks: tuple[str, ...] | None = None  # only these topics/subtasks; None = all
    files: tuple[str, ...] = ()  # kind="files": JSONL/Parquet paths


@dataclass(frozen=True)
class ClusterSettings:
    """ClusterClip: embeddings, spherical k-means and the sampler (docs/ALGORITHMS.md §3.4)."""

    K: int = 2000  # clusters; the official README example (the paper's K is not published)
    R: int = 2  # repetition clip; Figure 1 of the paper illustrates R=2
    max_iter: int = 300  # the official README's iteration cap
    seed: int = 0
    precision: str = "bf16"  # E-step GEMM precision; labels are certified equal to fp32 (core/clusterclip/kmeans.py)
    embed_chunk_rows: int = 1024  # rows per resumable embedding chunk


@dataclass(frozen=True)
class GradientSettings:
    """LESS's warm-up and gradient features, scaled per profile (docs/ALGORITHMS.md §1.1)."""

    warmup_fraction: float = 0.05  # LESS: a random 5% of the pool
    warmup_epochs: int = 4  # LESS: 4 epochs, one checkpoint each
    lora_r: int = 128  # LESS
    lora_alpha: float = 512.0  # LESS
    lora_layers: int = 0  # LoRA on the top n layers only; 0 = every layer (LESS)
    lr: float = 2e-5  # LESS
    batch_size: int = 32  # training batch
    max_len: int = 1024  # tokens per example (LESS 2048)
    train_precision: str = "bf16"  # LESS trains in bf16
    proj_dim: int = 8192  # LESS's default projection dimension
    proj_seed: int = 0  # LESS/TRAK seed 0; shared by every checkpoint, candidates and targets
    feature_precision: str = "bf16"  # bf16 features stay within cosine 0.99 of fp32 (bench/gradients.py)
    feature_batch_size: int = 16
    chunk_rows: int = 1024  # rows per resumable store chunk
    buffer_rows: int = 0  # gradient rows projected per call; 0: one chunk on a CPU, sized from memory on a GPU


@dataclass(frozen=True)
class BudgetSettings:
    """How much data each selection method may choose, and how long a fine-tune sees it."""

    budgets: tuple[float, ...] = (0.01, 0.05)  # fraction of the pool (< 1) or a count (>= 1)
    train_epochs: int = 2  # passes over a selection; ClusterClip's plan gets the same number of draws
    seed: int = 0  # warm-up subset, selections' random baseline
    finetune_seeds: tuple[int, ...] = (0, 1)  # each fine-tune runs once per seed; reports give mean and spread
    eval_batch_size: int = 16


def budget_count(budget: float, n_pool: int) -> int:
    """A budget as a number of examples: a fraction of the pool (< 1) or a count (>= 1), at least 1."""
    if budget <= 0:
        raise ValueError(f"a budget must be > 0, got {budget}")
    k = int(budget) if budget >= 1 else round(budget * n_pool)
    return max(1, min(k, n_pool))


def budget_label(budget: float) -> str:
    """A partition-key-safe name for a budget: 0.05 -> "5pct", 1000 -> "n1000"."""
    return f"{budget * 100:g}pct" if budget < 1 else f"n{int(budget)}"


@dataclass(frozen=True)
class Profile:
    """Everything that differs between tiny, demo and full."""

    name: str
    pool: tuple[SourceSpec, ...]
    target: TargetSpec
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    clusters: ClusterSettings = field(default_factory=ClusterSettings)
    budgets: BudgetSettings = field(default_factory=BudgetSettings)
    gradients: GradientSettings = field(default_factory=GradientSettings)
    model: str = "hf_folder"  # "tiny" (random Llama) | "smollm2" (packaged GGUF) | "hf_folder" (model_dir)
    model_dir: str = ""  # hf_folder: the local Hugging Face model folder; "" = $GTP_MODEL_DIR
    # Targets besides the active one that the pool must not contain, every row of each. A multi-target
    # experiment lists all its targets here, so that the pool, the warm-up and the pool's gradient stores are
    # the same whichever target is active, and GTP_TARGET_TASK picks the active one among them by name.
    contamination_targets: tuple[TargetSpec, ...] = ()


TINY = Profile(
    name="tiny",
    model="tiny",
    pool=(
        SourceSpec("chatterbot", limit_per_task=10),
        SourceSpec("natural_instructions", limit_per_task=2),
        SourceSpec("bbc_news", limit_per_task=6),
    ),
    target=TargetSpec(name="social_iqa", kind="bigbench", tasks=("social_iqa",), n_dev=4, n_test=24),
    corpus=CorpusConfig(max_chars=4_000),
    clusters=ClusterSettings(K=8, max_iter=50, embed_chunk_rows=128),
    budgets=BudgetSettings(budgets=(0.05, 0.2), train_epochs=2, finetune_seeds=(0,), eval_batch_size=32),
    gradients=GradientSettings(
        warmup_fraction=0.2,
        warmup_epochs=2,
        lora_r=4,
        lora_alpha=16.0,
        lr=1e-3,
        batch_size=8,
        max_len=96,  # ByT5 bytes
        train_precision="fp32",
        proj_dim=256,
        feature_precision="fp32",
        feature_batch_size=16,
        chunk_rows=64,
    ),
)

DEMO = Profile(
    name="demo",
    model="smollm2",
    pool=(
        SourceSpec("natural_instructions", limit_per_task=4),
        SourceSpec("chatterbot", limit_per_task=5),
        SourceSpec("sharegpt", limit=40),
        SourceSpec("bbc_news", limit_per_task=4),
    ),
    target=TargetSpec(name="social_iqa", kind="bigbench", tasks=("social_iqa",), n_dev=8, n_test=100),
    corpus=CorpusConfig(max_chars=6_000),
    clusters=ClusterSettings(K=24, max_iter=100, embed_chunk_rows=128),
    budgets=BudgetSettings(budgets=(0.05, 0.2), train_epochs=2, finetune_seeds=(0,)),
    gradients=GradientSettings(
        warmup_fraction=0.15,
        warmup_epochs=2,
        lora_r=8,
        lora_alpha=32.0,
        lr=2e-4,
        batch_size=8,
        max_len=128,
        train_precision="bf16",
        proj_dim=1024,
        feature_precision="bf16",
        feature_batch_size=8,
        chunk_rows=64,
    ),
)

# The experiment behind docs/RESULTS.md: the demo's sources and model with a ~4x larger pool, the 1% and 5%
# budgets, and two fine-tune seeds, so that differences between methods can rise above seed noise.
EXPERIMENT = replace(
    DEMO,
    name="experiment",
    pool=(
        SourceSpec("natural_instructions", limit_per_task=15),
        SourceSpec("chatterbot", limit_per_task=10),
        SourceSpec("sharegpt", limit=100),
        SourceSpec("bbc_news", limit_per_task=10),
    ),
    target=replace(DEMO.target, n_test=300),
    clusters=replace(DEMO.clusters, K=64),
    budgets=BudgetSettings(budgets=(0.01, 0.05), train_epochs=2, finetune_seeds=(0, 1)),
)

# The multi-target experiment (docs/RESULTS.md): one pool of about 2,400 examples with the redundancy of templated
# subtasks, three targets of different kinds (multiple choice, BIG-bench date reasoning, generative math),
# budgets 0.5% to 5%, three fine-tune seeds. Run by `python -m gtp_pipeline.multi_target`.
MULTI_TARGETS = (
    TargetSpec(name="social_iqa", kind="bigbench", tasks=("social_iqa",), n_dev=8, n_test=150),
    TargetSpec(name="date_understanding", kind="bigbench", tasks=("date_understanding",), n_dev=8, n_test=150),
    TargetSpec(name="gsm8k", kind="gsm8k", tasks=(), n_dev=8, n_test=150),
)
MULTI_TARGET = replace(
    DEMO,
    name="multitarget",
    pool=(
        SourceSpec("natural_instructions", limit_per_task=30),
        SourceSpec("chatterbot", limit_per_task=10),
        SourceSpec("sharegpt", limit=300),
        SourceSpec("bbc_news", limit_per_task=20),
    ),
    target=MULTI_TARGETS[0],
    contamination_targets=MULTI_TARGETS,
    clusters=replace(DEMO.clusters, K=96),
    budgets=BudgetSettings(budgets=(0.005, 0.01, 0.05), train_epochs=2, finetune_seeds=(0, 1, 2)),
)

FULL = Profile(
    name="full",
    pool=(),  # filled from GTP_CORPUS_FILES or the configuration file (resources/profile.py)
    target=TargetSpec(name="target", kind="files", tasks=(), n_dev=5, n_test=100),
    corpus=CorpusConfig(max_chars=50_000),
)

PROFILES = {p.name: p for p in (TINY, DEMO, EXPERIMENT, MULTI_TARGET, FULL)}

# The selection methods the pipeline runs (each registered in core/selection/selection_methods.py): each is an asset
# <name>_selection, checked, fine-tuned at every budget and reported. Adding a registered method's name here is the
# one line that puts it in the pipeline (docs/ARCHITECTURE.md).
SELECTION_METHODS = ("gtp", "topk", "random")
FINETUNE_METHODS = (*SELECTION_METHODS, "clusterclip")  # each trained at every budget; plus "full" data


def finetune_runs(profile: Profile) -> list[str]:
    """Fine-tune run names (core/config/run_key.py): "<method>-<budget label>" for every method and budget, then "full"."""
    from gtp_pipeline.core.config.run_key import FULL, RunKey

    keys = [RunKey(m, budget_label(b)) for m in FINETUNE_METHODS for b in profile.budgets.budgets] + [RunKey(FULL)]
    return [k.run for k in keys]


class ProfileError(ConfigurationError):
    """An unknown profile, or a full profile with nothing to read."""


def split_paths(value: str | None, setting: str = "a list of paths") -> tuple[str, ...]:
    """The files a path-list setting names: separated by ':' or ',', or a JSON array of strings.

    The JSON form is for names that contain ':' or ',' themselves: GTP_CORPUS_FILES='["a,b.jsonl", "c.jsonl"]'.
    """
    value = (value or "").strip()
    if value.startswith("["):
        import json

        try:
            paths = json.loads(value)
        except ValueError as err:
            raise ConfigurationError(
                f"looks like a JSON array but is not valid JSON ({err})", setting, value
            ) from None
        if not isinstance(paths, list) or not all(isinstance(p, str) and p.strip() for p in paths):
            raise ConfigurationError("a JSON array here must hold non-empty strings (file paths)", setting, value)
        return tuple(paths)
    return tuple(p for p in value.replace(",", os.pathsep).split(os.pathsep) if p.strip())


def get_profile(
    name: str,
    corpus_files: tuple[str, ...] = (),
    target_files: tuple[str, ...] = (),
    target_task: str | None = None,
) -> Profile:
    """The named profile, with the user's files or a packaged target task put in where given.

    Args:
        name: one of PROFILES (tiny, demo, experiment, multitarget, full).
        corpus_files: JSONL/Parquet pool files; required for full, added to the pool otherwise.
        target_files: JSONL/Parquet target files (kind="files").
        target_task: a packaged target instead: "gsm8k" or a BIG-bench task path such as "strategyqa"; one of
            the profile's contamination_targets is taken with its own dev/test sizes.
    """
    if name not in PROFILES:
        raise ProfileError(f"unknown profile {name!r}; expected one of {sorted(PROFILES)}")
    return with_user_inputs(PROFILES[name], corpus_files, target_files, target_task)


def with_user_inputs(
    profile: Profile,
    corpus_files: tuple[str, ...] = (),
    target_files: tuple[str, ...] = (),
    target_task: str | None = None,
) -> Profile:
    """`profile` with the user's files or a packaged target task put in where given (see get_profile)."""
    name = profile.name
    if corpus_files:
        user = SourceSpec("files", files=tuple(corpus_files))
        profile = replace(profile, pool=(*profile.pool, user))  # full has no pool of its own
    if target_files:
        profile = replace(
            profile, target=replace(profile.target, name="target", kind="files", files=tuple(target_files), tasks=())
        )
    elif target_task:
        listed = {t.name: t for t in profile.contamination_targets}
        kind = "gsm8k" if target_task == "gsm8k" else "bigbench"
        tasks = () if kind == "gsm8k" else (target_task,)
        chosen = listed.get(target_task) or replace(profile.target, name=target_task, kind=kind, tasks=tasks)
        profile = replace(profile, target=chosen)
    if not profile.pool:
        raise ProfileError(
            f"profile {name!r} has no pool: set GTP_CORPUS_FILES (paths separated by ':' or ',', or a JSON array of "
            "paths), or give `pool` in the configuration file (GTP_CONFIG)"
        )
    if profile.target.kind == "files" and not profile.target.files:
        raise ProfileError(
            f"profile {name!r} needs a target: set GTP_TARGET_FILES, or GTP_TARGET_TASK to a packaged task, or give "
            "`target` in the configuration file (GTP_CONFIG)"
        )
    return profile
