"""The comparison a user looks at first: for each method and budget, what the fine-tuned model scores on the target.

Inputs are plain tables (the evaluation, the selections, the ClusterClip plan, the corpus); output is a
markdown report with one summary table (mean and standard deviation over fine-tune seeds) and PNG plots:
score vs budget per method, composition of each selection by source, overlap between methods, and
exact duplicates chosen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gtp_pipeline.core.corpus import prompt_key
from gtp_pipeline.core.plots import bar_png, heatmap_png, lines_png, stacked_bar_png

METHOD_ORDER = ("base", "full", "gtp", "topk", "random", "clusterclip")


@dataclass
class Report:
    rows: list[dict[str, Any]]  # one per (method, budget)
    table_markdown: str
    markdown: str
    plots: dict[str, bytes] = field(default_factory=dict)


def _mean_std(values: list[float]) -> tuple[float, float]:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return math.nan, math.nan
    return float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0


def _fmt(mean: float, std: float, digits: int = 4) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if std else f"{mean:.{digits}f}"


def _budget_order(label: str) -> float:
    if label in ("-", ""):
        return -1.0
    if label.endswith("pct"):
        return float(label[:-3])
    return float(label.lstrip("n")) if label.startswith("n") else math.inf


def summarize(evaluation) -> list[dict[str, Any]]:
    """Mean and spread over seeds for every (method, budget) in the evaluation table."""
    rows = []
    for (method, budget), group in evaluation.group_by(["method", "budget"], maintain_order=True):
        loss, loss_sd = _mean_std(group["loss"].to_list())
        acc, acc_sd = _mean_std(group["accuracy"].to_list())
        train, _ = _mean_std(group["train_seconds"].to_list())
        rows.append(
            {
                "method": method,
                "budget": budget,
                "seeds": group.height,
                "loss": loss,
                "loss_sd": loss_sd,
                "accuracy": acc,
                "accuracy_sd": acc_sd,
                "examples": group["examples"][0],
                "draws": group["draws"][0],
                "train_seconds": train,
            }
        )
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    return sorted(rows, key=lambda r: (_budget_order(r["budget"]), order.get(r["method"], 99)))


def example_sets(selections: dict, plan) -> dict[tuple[str, str], set[str]]:
    """{(method, budget): example ids used}; ClusterClip's set is the distinct examples of its stream."""
    import polars as pl

    sets = {}
    for method, table in selections.items():
        for (budget,), group in table.group_by(["budget"]):
            sets[(method, budget)] = set(group["example_id"])
    clip = plan.filter(pl.col("method") == "clusterclip")
    for (budget,), group in clip.group_by(["budget"]):
        sets[("clusterclip", budget)] = set(group["example_id"])
    return sets


def build_report(evaluation, selections: dict, plan, corpus) -> Report:
    """The summary table, the markdown report and its plots from polars tables (see the module docstring)."""
    rows = summarize(evaluation)
    select_seconds = {}
    for method, table in selections.items():
        if "select_seconds" in table.columns:
            for (budget,), group in table.group_by(["budget"]):
                select_seconds[(method, budget)] = float(group["select_seconds"][0])
    for row in rows:
        row["select_seconds"] = select_seconds.get((row["method"], row["budget"]))
    header = "| method | budget | seeds | target loss | accuracy | examples | draws | selection s | training s |"
    lines = [header, "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        sel = "-" if r["select_seconds"] is None else f"{r['select_seconds']:.2f}"
        train = "-" if math.isnan(r["train_seconds"]) else f"{r['train_seconds']:.0f}"
        lines.append(
            f"| {r['method']} | {r['budget']} | {r['seeds']} | {_fmt(r['loss'], r['loss_sd'])} | "
            f"{_fmt(r['accuracy'], r['accuracy_sd'], 3)} | {r['examples'] if r['examples'] is not None else '-'} | "
            f"{r['draws'] if r['draws'] is not None else '-'} | {sel} | {train} |"
        )
    table_md = "\n".join(lines)
    plots: dict[str, bytes] = {}

    # score vs budget, one line per selection method; base and full data as flat references
    budgets = sorted({r["budget"] for r in rows if r["method"] not in ("base", "full")}, key=_budget_order)
    for metric in ("loss", "accuracy"):
        series = {}
        for method in ("gtp", "topk", "random", "clusterclip"):
            points = [
                (b, next((r[metric] for r in rows if r["method"] == method and r["budget"] == b), math.nan))
                for b in budgets
            ]
            if any(not math.isnan(v) for _, v in points):
                series[method] = ([_budget_order(b) for b, _ in points], [v for _, v in points])
        for ref in ("base", "full"):
            value = next((r[metric] for r in rows if r["method"] == ref), math.nan)
            if not math.isnan(value) and budgets:
                series[ref] = ([_budget_order(budgets[0]), _budget_order(budgets[-1])], [value, value])
        if series and budgets:
            plots[f"{metric}_vs_budget"] = lines_png(
                series, title=f"target {metric} vs budget", xlabel="budget (% of pool)", ylabel=metric, log_x=True
            )

    sets = example_sets(selections, plan)
    by_id = dict(zip(corpus["example_id"], corpus["source"], strict=True))
    prompt_of = dict(zip(corpus["example_id"], corpus["prompt"], strict=True))
    sources = sorted(set(corpus["source"]))
    labels = [f"{m}@{b}" for (m, b) in sorted(sets, key=lambda k: (_budget_order(k[1]), k[0]))]
    keys = sorted(sets, key=lambda k: (_budget_order(k[1]), k[0]))
    shares = {s: [] for s in sources}
    duplicates = []
    for key in keys:
        ids = sets[key]
        counts = {s: 0 for s in sources}
        for eid in ids:
            counts[by_id[eid]] += 1
        for s in sources:
            shares[s].append(counts[s] / max(len(ids), 1))
        prompts = [prompt_key(prompt_of[e]) for e in ids]
        duplicates.append(len(prompts) - len(set(prompts)))
    if keys:
        plots["composition_by_source"] = stacked_bar_png(
            labels, shares, title="selection composition by source", ylabel="share of examples"
        )
        plots["duplicates_chosen"] = bar_png(
            labels, duplicates, title="examples whose prompt repeats another chosen one", ylabel="count"
        )
    overlap_md = []
    for budget in budgets:
        methods = [m for (m, b) in keys if b == budget]
        matrix = [
            [
                len(sets[(a, budget)] & sets[(b, budget)]) / max(len(sets[(a, budget)] | sets[(b, budget)]), 1)
                for b in methods
            ]
            for a in methods
        ]
        plots[f"overlap_{budget}"] = heatmap_png(matrix, methods, title=f"Jaccard overlap of selections at {budget}")
        overlap_md.append(
            f"- {budget}: "
            + ", ".join(
                f"{a}/{b} {matrix[i][j]:.2f}" for i, a in enumerate(methods) for j, b in enumerate(methods) if i < j
            )
        )
    markdown = "\n\n".join(
        [
            "# Selection report",
            "Target loss is the mean response-token NLL on the held-out test split (lower is better); accuracy is "
            "multiple-choice accuracy by option log-likelihood. Mean ± sample standard deviation over fine-tune seeds.",
            table_md,
            "## Overlap between selections (Jaccard)",
            "\n".join(overlap_md) or "-",
            "## Plots",
            "\n".join(f"![{name}]({name}.png)" for name in plots),
        ]
    )
    return Report(rows, table_md, markdown, plots)
