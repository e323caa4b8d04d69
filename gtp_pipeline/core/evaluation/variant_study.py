"""Which way of selecting works on this data: selection methods and GTP variants, each fine-tuned with several seeds
and scored per test example, so that `core/evaluation/verdict.py` can say win / tie / loss with an interval.

A method is named by a spec: "topk", "random", or "gtp" with options joined by "+":
  per_subtask | per_example | per_checkpoint
                              match each subtask's / dev example's trajectory, or each checkpoint's block of the
                              target, jointly with one support (core/selection/gtp_variants.py)
  centered                    on trajectories centered on the pool's mean (core/features/centered.py)
  in_domain                   match the pool's own mean trajectory, not the target (a target-blind coreset)
  residual_fill               rank the fill by correlation with the final residual instead of LESS's score against
                              the target (the default until the multi-target study, docs/RESULTS.md)
  weights                     train on GTP's fitted NNLS weights as loss weights instead of uniformly
  support                     drop the fill: train on the fitted support only, each example repeated in turn up to
                              the budget's size (the same draws, spent on what the target needs)
  swaps=N                     refinement passes after the support is full (PursuitConfig.swap_rounds, default 1)
  pool_factor=F               atoms taken per pass, F x those still to add (PursuitConfig.pool_factor, default 2)
e.g. "gtp+per_example+centered", "gtp+swaps=0". Every method at a budget trains on the same number of draws with the same recipe
(the pipeline's equal-compute rule); "full" trains on the whole pool.

Each run lives in its own folder named by what it trains on (the selected ids and weights, and the seed), so a
rerun after a kill resumes training (core/training/lora_train.py) and skips finished evaluations, and a changed selection
never reuses an old adapter.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gtp_pipeline.core.config.run_key import BASE, BASE_BUDGET, FULL, FULL_BUDGET
from gtp_pipeline.core.evaluation.alignment import alignment
from gtp_pipeline.core.evaluation.markdown import markdown_table
from gtp_pipeline.core.evaluation.scoring import read_scores, write_scores
from gtp_pipeline.core.features.target_trajectory import TargetTrajectory
from gtp_pipeline.core.features.trajectory import Trajectories
from gtp_pipeline.core.selection.gtp_variants import GTPVariant, fitted_support, repeat_to
from gtp_pipeline.core.selection.pursuit import PursuitConfig, Selection
from gtp_pipeline.core.selection.selection_baselines import evaluate_selection
from gtp_pipeline.core.selection.selection_methods import select as select_method
from gtp_pipeline.core.selection.selection_stats import duplicate_stats

log = logging.getLogger(__name__)

GTP_OPTIONS = (
    "per_subtask",
    "per_example",
    "per_checkpoint",
    "in_domain",
    "centered",
    "residual_fill",
    "weights",
    "support",
)
GTP_SETTINGS = {"swaps": ("swap_rounds", int), "pool_factor": ("pool_factor", float)}  # option=value -> PursuitConfig
ALIGNMENT_COLUMNS = (
    "dev_mean_cosine: the mean cosine of the picks with the target (what an equal-weight fine-tune gains to first "
    "order; top-k maximizes it); dev_sum_cosine: the cosine of their sum with it (what a joint fit covers); test_*: "
    "the same against the gradient of the target's held-out test split, which selection never sees."
)
NEAR_DUPLICATE_COSINE = 0.95  # the threshold GTP's fill de-duplicates at (PursuitConfig.fill_max_cosine)


@dataclass(frozen=True)
class StudyMethod:
    name: str
    base: str  # "gtp" | "topk" | "random"
    variant: GTPVariant = GTPVariant()
    fill: str = "target"
    weighted: bool = False
    support_only: bool = False  # train on the fitted support repeated to k rows instead of support + fill
    pursuit: tuple[tuple[str, int | float], ...] = ()  # PursuitConfig fields set by option=value


def parse_method(spec: str) -> StudyMethod:
    """A method spec ("gtp+per_example+centered", "topk", ...) as a StudyMethod; unknown parts are errors."""
    from gtp_pipeline.core.selection.selection_methods import REGISTRY

    base, *options = spec.strip().split("+")
    if base in REGISTRY and base != "gtp":
        if options:
            raise ValueError(f"{base} takes no options, got {spec!r}")
        return StudyMethod(spec.strip(), base)
    if base != "gtp":
        others = ", ".join(sorted(set(REGISTRY) - {"gtp"}))
        raise ValueError(f"unknown method {spec!r}: expected {others}, or gtp[+{'+'.join(GTP_OPTIONS)}]")
    settings, flags = [o for o in options if "=" in o], [o for o in options if "=" not in o]
    unknown = [o for o in flags if o not in GTP_OPTIONS] + [o for o in settings if o.split("=")[0] not in GTP_SETTINGS]
    names = flags + [o.split("=")[0] for o in settings]
    if unknown or len(set(names)) != len(names):
        raise ValueError(
            f"bad GTP options {options} in {spec!r}; each at most once, from {GTP_OPTIONS} or "
            f"{', '.join(f'{k}=<number>' for k in GTP_SETTINGS)}"
        )
    pursuit = []
    for option in settings:
        name, value = option.split("=", 1)
        field, kind = GTP_SETTINGS[name]
        try:
            number = kind(value)
        except ValueError:
            raise ValueError(
                f"{spec!r}: {name} takes {'an integer' if kind is int else 'a number'}, got {value!r}"
            ) from None
        if number < 0 or (name == "pool_factor" and number <= 0):
            raise ValueError(f"{spec!r}: {name} must be {'> 0' if name == 'pool_factor' else '>= 0'}, got {value}")
        pursuit.append((field, number))
    targets = [o for o in flags if o.startswith("per_")] + (["pool_mean"] if "in_domain" in flags else [])
    if len(targets) > 1:
        raise ValueError(f"{spec!r}: choose one of per_subtask, per_example, per_checkpoint, in_domain")
    variant = GTPVariant(targets=targets[0] if targets else "mean", center="centered" in flags)
    if "support" in flags and ("residual_fill" in flags or "weights" in flags):
        raise ValueError(
            f"{spec!r}: support drops the fill and trains uniformly; it takes neither residual_fill nor weights"
        )
    fill = "residual" if "residual_fill" in flags else "target"
    return StudyMethod(spec.strip(), "gtp", variant, fill, "weights" in flags, "support" in flags, tuple(pursuit))


def select(
    method: StudyMethod,
    view: Trajectories,
    target: TargetTrajectory,
    per_example: TargetTrajectory,
    k: int,
    seed: int = 0,
) -> Selection:
    config = PursuitConfig(budget=k, seed=seed, fill=method.fill, **dict(method.pursuit))
    return select_method(method.base, view, target, config, per_example, method.variant)


def selection_stats(
    view: Trajectories,
    selection: Selection,
    target: np.ndarray,
    corpus_rows: list[dict],
    reference: set[str] | None,
    held_out: np.ndarray | None = None,
) -> dict[str, Any]:
    """What a selection is made of: fitted vs fill, how well it reaches the target, how it lines up with the target
    (and with `held_out`, the target's test-split gradient, if given: core/evaluation/alignment.py), near-duplicates,
    sources, lengths, weight concentration, and overlap with a reference selection (top-k)."""
    k = selection.indices.size
    joint = selection.method not in ("less_topk", "random")  # ranked methods have no fit to saturate
    _, residual = evaluate_selection(view, selection.indices, target)
    rows = view.gather(selection.indices)
    dups = duplicate_stats(
        rows,
        [r["content_hash"] for r in corpus_rows],
        [r["prompt"] for r in corpus_rows],
        near_cosine=NEAR_DUPLICATE_COSINE,
    )
    sources: dict[str, int] = {}
    for r in corpus_rows:
        sources[r["source"]] = sources.get(r["source"], 0) + 1
    ids = {r["example_id"] for r in corpus_rows}
    w = np.asarray(selection.weights, dtype=np.float64)
    top_weight_share = float(np.sort(w)[::-1][: max(1, k // 10)].sum() / w.sum()) if w.sum() > 0 else float("nan")
    lined_up = {f"dev_{name}": round(v, 4) for name, v in alignment(rows, target).items()}
    if held_out is not None:
        lined_up |= {f"test_{name}": round(v, 4) for name, v in alignment(rows, held_out).items()}
    return {
        "k": k,
        "fitted": k - selection.fill if joint else None,
        "fill": selection.fill if joint else None,
        "stop": selection.stop_reason,
        "relative_residual": round(residual / float(np.linalg.norm(target)), 4),
        **lined_up,
        "near_duplicates": dups["near"],
        "exact_duplicates": dups["exact"],
        "jaccard_topk": round(len(ids & reference) / len(ids | reference), 3) if reference is not None else None,
        "top10pct_weight_share": round(top_weight_share, 3),
        "mean_chars": round(float(np.mean([len(r["prompt"]) + len(r["response"]) for r in corpus_rows])), 1),
        "sources": ", ".join(f"{s} {n}" for s, n in sorted(sources.items(), key=lambda kv: -kv[1])),
    }


def run_folder(root: Path, budget: str, method: str, seed: int, example_ids: Sequence[str], weights) -> Path:
    """Where one fine-tune lives: named by what it trains on, so a different selection never reuses it."""
    h = hashlib.sha256()
    for eid in example_ids:
        h.update(f"{eid}\n".encode())
    if weights is not None:
        h.update(np.asarray(weights, dtype=np.float64).round(8).tobytes())
    return root / budget / method / f"seed{seed}-{h.hexdigest()[:12]}"


def finished_twin(folder: Path, test_key: str = "") -> Path | None:
    """A finished run of another method at the same budget with the same name: the same examples, weights and seed
    (run_folder), so the same fine-tune. Variants that pick identically are trained once."""
    cache = f"scores-{test_key}.json" if test_key else "scores.json"
    for other in sorted(folder.parent.parent.glob(f"*/{folder.name}")):
        if other != folder and (other / cache).exists():
            return other
    return None


def scores_key(target_name: str, example_ids: Sequence[str]) -> str:
    """Names the scores of one test set: the same adapter scored on another target or split is cached apart."""
    h = hashlib.sha256(target_name.encode())
    for eid in sorted(example_ids):
        h.update(f"\n{eid}".encode())
    return h.hexdigest()[:12]


def train_and_score(
    folder: Path,
    train: Callable[[Path], Any],
    score: Callable[[Any], list[dict]],
    test_key: str = "",
) -> list[dict]:
    """Per-example scores of the model `train(folder)` produces; cached in folder/scores[-test_key].json, which is
    used only if it reads back whole and names the same test set."""
    cache = folder / (f"scores-{test_key}.json" if test_key else "scores.json")
    cached = read_scores(cache, test_key)
    if cached is not None:
        return cached["per_example"]
    model = train(folder)
    per_example = score(model)
    write_scores(cache, test_key, {"per_example": per_example})
    return per_example


@dataclass
class StudyResult:
    selections: list[dict]  # one row per (budget, method): selection_stats plus budget and method
    per_example: list[dict]  # run, method, budget, seed, example_id, loss, correct
    seconds: float


def run_study(
    view: Trajectories,
    target: TargetTrajectory,
    per_example_target: TargetTrajectory,
    corpus: list[dict],
    methods: Sequence[StudyMethod],
    budgets: Sequence[tuple[str, int]],
    seeds: Sequence[int],
    full_seeds: Sequence[int],
    root: Path,
    finetune: Callable[[list[int], np.ndarray | None, int, Path], Any],
    score: Callable[[Any], list[dict]],
    report: Callable[[str], None] = log.info,
    shared_root: Path | None = None,
    test_key: str = "",
    held_out: np.ndarray | None = None,
) -> StudyResult:
    """Select with every method at every (label, k) budget, fine-tune each with every seed, score every test example.

    `corpus[i]` is row i of the view (example_id, prompt, response, source, content_hash). `finetune(rows,
    weights, seed, folder)` trains on those corpus rows (resuming in folder) and returns a model; `score(model)`
    returns per-example dicts with example_id, loss and correct. The base model is scored as finetune([], ...).
    The base model and the full-pool fine-tunes depend on the pool only: they live under `shared_root` (default
    `root`), so studies of several targets on one pool train them once; `test_key` keeps their scores apart.
    `held_out` (D,), the target trajectory of the test split, only describes the selections (never selects).
    The full-pool fine-tunes, the longest runs, go last, so an interrupted study has its selections' results.
    """
    start = time.perf_counter()
    selections, scores = [], []
    shared_root = shared_root or root

    def record(run: str, method: str, budget: str, seed: int, rows: list[dict]) -> None:
        for r in rows:
            scores.append({"run": run, "method": method, "budget": budget, "seed": seed, **r})

    base = train_and_score(shared_root / "base", lambda f: finetune([], None, -1, f), score, test_key)
    record(BASE, BASE, BASE_BUDGET, -1, base)
    b = target.vector
    for label, k in budgets:
        chosen = {m.name: select(m, view, target, per_example_target, k) for m in methods}
        topk_ids = None
        if "topk" in chosen:
            topk_ids = {corpus[i]["example_id"] for i in chosen["topk"].indices}
        for m in methods:
            sel = chosen[m.name]
            rows_trained = sel.indices
            if m.support_only:
                sel = fitted_support(sel)
                rows_trained = repeat_to(sel.indices, k)
            picked = [corpus[i] for i in sel.indices]
            stats = selection_stats(view, sel, b, picked, topk_ids if m.name != "topk" else None, held_out)
            selections.append({"budget": label, "method": m.name, **stats})
            fit = f"{stats['fitted']} fitted + {stats['fill']} fill, " if stats["fitted"] is not None else ""
            if m.support_only:
                fit += f"each repeated to {k} rows, "
            report(f"{m.name} @ {label}: {fit}{stats['sources']}")
            weights = sel.weights if m.weighted else None
            if weights is not None and not np.any(weights > 0):
                raise ValueError(f"{m.name} @ {label}: no positive weight to train on")
            rows_picked = [int(i) for i in rows_trained]
            for seed in seeds:
                folder = run_folder(root, label, m.name, seed, [corpus[i]["example_id"] for i in rows_picked], weights)

                def train(f: Path, r=rows_picked, w=weights, s=seed):
                    return finetune(r, w, s, f)

                rows = train_and_score(finished_twin(folder, test_key) or folder, train, score, test_key)
                record(f"{m.name}-{label}", m.name, label, seed, rows)
                report(f"{m.name} @ {label} seed {seed}: mean loss {np.nanmean([r['loss'] for r in rows]):.4f}")
    all_rows = [i for i in range(len(corpus)) if view.valid_mask()[i]]
    all_ids = [corpus[i]["example_id"] for i in all_rows]
    for seed in full_seeds:
        report(f"full pool ({len(all_rows)} examples), seed {seed}")
        folder = run_folder(shared_root, FULL_BUDGET, FULL, seed, all_ids, None)
        rows = train_and_score(folder, lambda f, s=seed: finetune(all_rows, None, s, f), score, test_key)
        record(FULL, FULL, FULL_BUDGET, seed, rows)
    return StudyResult(selections, scores, time.perf_counter() - start)


def study_markdown(
    selections, scores, target_name: str, command: str, numerics: str = ""
) -> tuple[str, dict[str, bytes]]:
    """The study's report: what each method picked, mean scores over seeds, and the verdict with its plots.
    `numerics` (core.evaluation.evaluate.scoring_numerics) says what arithmetic scored it."""
    import polars as pl

    from gtp_pipeline.core.evaluation.report import verdict_sections

    means = (
        scores.group_by("method", "budget", "seed", maintain_order=True)
        .agg(pl.col("loss").mean(), pl.col("correct").cast(pl.Float64).mean().alias("accuracy"))
        .group_by("method", "budget", maintain_order=True)
        .agg(
            pl.len().alias("seeds"),
            pl.col("loss").mean().round(4).alias("loss_mean"),
            pl.col("loss").std().round(4).alias("loss_sd"),
            pl.col("accuracy").mean().round(3).alias("accuracy_mean"),
        )
    )
    blocks, plots, _, _ = verdict_sections(scores)
    header = [f"# Variant study: {target_name}", f"Reproduce: `{command}`"]
    if numerics:
        header.append(f"Scored with: {numerics}. Pair its numbers only with scores from the same arithmetic.")
    markdown = "\n\n".join(
        [
            *header,
            "## What each method picked",
            "fitted: chosen by the joint fit (weight > 0); fill: the rest of the budget. relative_residual: how far "
            "the NNLS fit on the selection stays from the target (1 = no closer than nothing). near_duplicates: "
            "selected examples whose trajectory has cosine >= 0.95 with an earlier pick. jaccard_topk: overlap "
            "with top-k's picks. top10pct_weight_share: share of the total weight on the top 10% of picks. "
            f"{ALIGNMENT_COLUMNS}",
            markdown_table(selections.to_dicts()),
            "## Mean over seeds",
            markdown_table(means.to_dicts()),
            *blocks,
            "## Plots",
            "\n".join(f"![{name}]({name}.png)" for name in plots),
        ]
    )
    return markdown, plots
