"""The report of a study over several targets on one pool: per target and budget, each method against top-k with
its interval, the share of the base-to-full gap it closes, what each selection is made of, and which method the
numbers support, target by target and overall. Built from the per-target tables `core/evaluation/variant_study.py` writes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gtp_pipeline.core.evaluation.markdown import markdown_table
from gtp_pipeline.core.evaluation.recommendation import recommend
from gtp_pipeline.core.evaluation.report import GAP_CLOSED_MEANING, forest_of, gap_table, verdict_table
from gtp_pipeline.core.evaluation.variant_study import ALIGNMENT_COLUMNS
from gtp_pipeline.core.evaluation.verdict import compare_methods, gap_closed_table

METRIC = "loss"  # every target has a loss; accuracy is undefined for generative targets (each study.md has it)
REFERENCE = "topk"
DEFAULT_GTP = "gtp"


def _with_target(rows: list[dict[str, Any]], target: str) -> list[dict[str, Any]]:
    return [{"target": target, **r} for r in rows]


def target_rows(per_example: Mapping[str, Any]) -> tuple[list[dict], list[dict]]:
    """(verdict rows, gap-closed rows) of every target, each row naming its target."""
    verdicts, gaps = [], []
    for target, table in per_example.items():
        verdicts += _with_target(compare_methods(table, metric=METRIC, reference=REFERENCE), target)
        gaps += _with_target(gap_closed_table(table, metric=METRIC), target)
    return verdicts, gaps


def gtp_tally(verdicts: list[dict[str, Any]], method: str = DEFAULT_GTP) -> dict[str, list[str]]:
    """{"win" | "tie" | "loss": ["target @ budget", ...]} for `method` against top-k."""
    tally: dict[str, list[str]] = {"win": [], "tie": [], "loss": []}
    for r in verdicts:
        if r["method"] == method and r["reference"] == REFERENCE:
            tally[r["verdict"]].append(f"{r['target']} @ {r['budget']}")
    return tally


def overall_sentence(verdicts: list[dict[str, Any]], method: str = DEFAULT_GTP) -> str:
    """What the intervals say about `method` against top-k over every target and budget, and no more."""
    tally = gtp_tally(verdicts, method)
    n = sum(len(v) for v in tally.values())
    if n == 0:
        return f"No target has both {method} and {REFERENCE} scored yet."
    counts = (
        f"{len(tally['win'])} win(s), {len(tally['tie'])} tie(s), {len(tally['loss'])} loss(es) in {n} comparisons"
    )
    if not tally["loss"] and tally["win"]:
        text = (
            f"{method} is no worse than {REFERENCE} within the intervals on every target and budget measured, and "
            f"better on {', '.join(tally['win'])} ({counts})."
        )
    elif not tally["loss"]:
        text = f"{method} and {REFERENCE} cannot be told apart on any target and budget measured ({counts})."
    else:
        text = (
            f"{REFERENCE} beats {method} on {', '.join(tally['loss'])}"
            + (f", and {method} beats {REFERENCE} on {', '.join(tally['win'])}" if tally["win"] else "")
            + f" ({counts}): which is better depends on the target and the budget, so run the comparison on your "
            "own target before choosing."
        )
    return text


def _picked(selections: Mapping[str, Any]) -> list[dict[str, Any]]:
    keep = (
        "budget",
        "method",
        "k",
        "fitted",
        "fill",
        "relative_residual",
        "dev_mean_cosine",
        "test_mean_cosine",
        "test_sum_cosine",
        "near_duplicates",
        "jaccard_topk",
        "sources",
    )
    rows = []
    for target, table in selections.items():
        for r in table.to_dicts():
            rows.append({"target": target, **{c: r.get(c) for c in keep}})
    return rows


def multi_target_markdown(
    selections: Mapping[str, Any], per_example: Mapping[str, Any], command: str
) -> tuple[str, dict[str, bytes], list[dict], list[dict]]:
    """(markdown, plots, verdict rows, gap rows) over every target; tables are polars DataFrames keyed by target."""
    verdicts, gaps = target_rows(per_example)
    png = forest_of(verdicts, METRIC, "target", f"{METRIC}: paired difference per target, 95% bootstrap CI")
    plots = {"multi_target_verdict_loss": png} if png is not None else {}
    advice = []
    for target in per_example:
        rows = [r for r in verdicts if r["target"] == target]
        for text in recommend(rows).values():
            headline, *details = text.splitlines()
            advice.append(f"- **{target}.** {headline}")
            advice.extend(f"  - {line}" for line in details)
    blocks = [
        f"# Several targets, one pool: {', '.join(per_example)}",
        f"Reproduce: `{command}`",
        "## Verdict over every target",
        overall_sentence(verdicts),
        "Each method against top-k (and gtp against random) on the same test examples of each target, fine-tune "
        "seeds paired by number: mean per-example difference in test loss (method minus vs; below 0 favors the "
        "method) with a 95% percentile bootstrap interval over test examples and seeds. A win or loss needs the "
        "whole interval on one side of 0.",
        _by_target(verdicts, verdict_table) or "_No target has two methods scored at one budget yet._",
        GAP_CLOSED_MEANING,
        _by_target(gaps, gap_table) or "_Needs the base model and the full-pool fine-tune scored on each target._",
        "## What each method picked",
        "fitted: chosen by GTP's joint fit; fill: the rest of its budget (de-duplicated). near_duplicates: picks "
        "whose trajectory has cosine >= 0.95 with an earlier pick. jaccard_topk: overlap with top-k's picks. "
        + ALIGNMENT_COLUMNS,
        markdown_table(_picked(selections)) if selections else "_No selections yet._",
        "## Which method for my data",
        "\n".join(advice) or "_No comparison to base a recommendation on._",
        "## Plots",
        "\n".join(f"![{name}]({name}.png)" for name in plots),
    ]
    return "\n\n".join(blocks), plots, verdicts, gaps


def _by_target(rows: list[dict[str, Any]], table) -> str:
    """One table per target, each under its name (the tables are those of the single-target report)."""
    parts = []
    for target in dict.fromkeys(r["target"] for r in rows):
        parts.append(f"**{target}**\n\n" + table([r for r in rows if r["target"] == target]))
    return "\n\n".join(parts)
