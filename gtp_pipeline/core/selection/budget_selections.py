"""One selection method at every budget: the picks as one table, a summary row per budget, the residual curves,
GTP's fill notes and the picks' composition by source. The selection assets write and report what this returns."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import polars as pl

from gtp_pipeline.core.config.profiles import budget_count, budget_label
from gtp_pipeline.core.features.target_trajectory import TargetTrajectory
from gtp_pipeline.core.features.trajectory import Trajectories
from gtp_pipeline.core.selection.gtp_variants import GTPVariant, describe_fill
from gtp_pipeline.core.selection.pursuit import PursuitConfig, Selection
from gtp_pipeline.core.selection.selection_baselines import evaluate_selection
from gtp_pipeline.core.selection.selection_methods import in_domain_target, select
from gtp_pipeline.core.selection.selection_stats import duplicate_stats


@dataclass(frozen=True)
class BudgetSelections:
    table: pl.DataFrame  # budget, budget_value, example_id, weight, rank, select_seconds: every budget's picks
    summary: list[dict]  # one row per budget: k, relative residual, passes, fill, duplicates, seconds
    curves: dict[str, tuple[list[int], list[float]]]  # budget label -> (round, ||r|| / ||b||)
    fill_notes: list[str]  # GTP only: how much of each budget's selection the fit chose
    composition: pl.DataFrame  # budget, source, examples
    variant: GTPVariant  # the variant that ran (the plain one for an in-domain target)


def select_at_budgets(
    method: str,
    view: Trajectories,
    target: TargetTrajectory,
    per_example: TargetTrajectory | None,
    ids: np.ndarray,
    corpus: pl.DataFrame,
    budgets: Sequence[float],
    pursuit: PursuitConfig,
    variant: GTPVariant = GTPVariant(),
    in_domain: bool = False,
    log: Callable[[str], None] = lambda _: None,
) -> BudgetSelections:
    """Run `method` once per budget; `ids` are the example ids of `view`'s rows, `corpus` the pool (example_id,
    source, task, content_hash, prompt), `pursuit` the settings every budget shares (its budget is replaced).
    `in_domain`: match the pool's own mean instead of the target."""
    if in_domain:  # the pool's own mean, matched as one target
        target, per_example, variant = in_domain_target(view), None, GTPVariant()
    corpus_by_id = corpus.select("example_id", "source", "task", "content_hash", "prompt")
    n_valid = int(view.valid_mask().sum())
    frames, summary, curves, fill_notes = [], [], {}, []
    for budget in budgets:
        config = replace(pursuit, budget=budget_count(budget, n_valid))
        chosen, seconds = _timed_select(method, view, target, config, per_example, variant)
        frame, row = _budget_rows(view, target, chosen, ids, corpus_by_id, budget, config.budget, seconds)
        frames.append(frame)
        summary.append(row)
        label = row["budget"]
        if chosen.residuals.size:
            curves[label] = (
                list(range(1, chosen.residuals.size + 1)),
                (chosen.residuals / chosen.target_norm).tolist(),
            )
        log(f"{method} @ {label}: k={row['k']}, relative NNLS residual {row['relative_residual']}, {seconds:.2f}s")
        if method == "gtp":
            fill_notes.append(f"- {label}: {describe_fill(chosen)}")
    table = pl.concat(frames)
    return BudgetSelections(table, summary, curves, fill_notes, composition_by_source(table, corpus), variant)


def _timed_select(method, view, target, config, per_example, variant) -> tuple[Selection, float]:
    start = time.perf_counter()
    chosen = select(method, view, target, config, per_example, variant)
    return chosen, time.perf_counter() - start


def _budget_rows(
    view: Trajectories,
    target: TargetTrajectory,
    chosen: Selection,
    ids: np.ndarray,
    corpus_by_id: pl.DataFrame,
    budget: float,
    k: int,
    seconds: float,
) -> tuple[pl.DataFrame, dict]:
    """One budget's picks (budget, budget_value, example_id, weight, rank, select_seconds) and its summary row."""
    label, b = budget_label(budget), target.vector
    _, residual = evaluate_selection(view, chosen.indices, b)
    picked = pl.DataFrame(
        {"example_id": ids[chosen.indices], "weight": chosen.weights.astype(np.float64), "rank": np.arange(1, k + 1)}
    ).join(corpus_by_id, on="example_id", how="left")
    dups = duplicate_stats(view.gather(chosen.indices), picked["content_hash"].to_list(), picked["prompt"].to_list())
    frame = picked.select(
        pl.lit(label).alias("budget"),
        pl.lit(float(budget)).alias("budget_value"),
        "example_id",
        "weight",
        "rank",
        pl.lit(round(seconds, 4)).alias("select_seconds"),
    )
    row = {
        "budget": label,
        "k": k,
        "relative_residual": round(residual / float(np.linalg.norm(b)), 4),
        "passes": chosen.passes,
        "rounds": chosen.rounds,
        "fitted": k - chosen.fill,
        "fill": chosen.fill,
        "stop": chosen.stop_reason,
        "exact_duplicates": dups["exact"],
        "near_duplicates": dups["near"],
        "seconds": round(seconds, 3),
    }
    return frame, row


def composition_by_source(table: pl.DataFrame, corpus: pl.DataFrame) -> pl.DataFrame:
    """How many of each budget's picks came from each source, largest first."""
    return (
        table.join(corpus.select("example_id", "source", "task"), on="example_id")
        .group_by("budget", "source")
        .len("examples")
        .sort("budget", "examples", descending=[False, True])
    )
