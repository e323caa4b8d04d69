"""The comparison a user looks at first: for each method and budget, what the fine-tuned model scores on the target.

Inputs are plain tables (the evaluation, the selections, the ClusterClip plan, the corpus); output is a
markdown report with one summary table (mean and standard deviation over fine-tune seeds) and PNG plots:
score vs budget per method, composition of each selection by source, overlap between methods, and
exact duplicates chosen. Given per-example scores, it adds a verdict: paired bootstrap intervals of each
method against the reference, the share of the base-to-full gap each selection closes, a forest plot, and
a recommendation that claims no more than the intervals support (core/evaluation/verdict.py and
recommendation.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gtp_pipeline.core.evaluation.plots import bar_png, forest_png, heatmap_png, lines_png, lines_svg, stacked_bar_png
from gtp_pipeline.core.evaluation.recommendation import recommend
from gtp_pipeline.core.evaluation.verdict import METRICS, compare_methods, gap_closed_table
from gtp_pipeline.core.ingest.corpus import prompt_key

METHOD_ORDER = ("base", "full", "gtp", "topk", "random", "clusterclip")
VERDICT_REFERENCE = "topk"  # the baseline every method is compared with (LESS's independent top-k)
NO_PER_EXAMPLE = (
    "_The verdict (paired bootstrap intervals per comparison) needs per-example results: re-run `evaluation`._"
)


@dataclass
class Report:
    rows: list[dict[str, Any]]  # one per (method, budget)
    table_markdown: str
    markdown: str
    plots: dict[str, bytes] = field(default_factory=dict)
    verdicts: list[dict[str, Any]] = field(default_factory=list)  # compare_methods rows, every metric
    gaps: list[dict[str, Any]] = field(default_factory=list)  # gap_closed_table rows, every metric
    glance_svg: str | None = None  # loss vs budget per method and full data, small enough to show inline

    def table_rows(self) -> list[dict[str, Any]]:
        """The summary rows, cut to what a glance needs: method, budget, seeds, loss (and spread), accuracy, examples."""
        return [
            {k: r.get(k) for k in ("method", "budget", "seeds", "loss", "loss_sd", "accuracy", "examples")}
            for r in self.rows
        ]

    def numbers(self) -> dict[str, float]:
        """ "loss METHOD BUDGET" for every row, then "accuracy METHOD BUDGET" where accuracy is defined."""
        losses = {f"loss {r['method']} {r['budget']}": float(r["loss"]) for r in self.rows}
        accuracies = {
            f"accuracy {r['method']} {r['budget']}": float(r["accuracy"])
            for r in self.rows
            if isinstance(r["accuracy"], float) and r["accuracy"] == r["accuracy"]  # NaN/None: not multiple choice
        }
        return {**losses, **accuracies}

    def files(self) -> dict[str, bytes]:
        """What to write beside the report: report.md, then each plot as NAME.png."""
        return {"report.md": self.markdown.encode(), **{f"{name}.png": png for name, png in self.plots.items()}}


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


def _interval(estimate: float, low: float, high: float, digits: int = 3) -> str:
    if math.isnan(estimate):
        return "-"
    return f"{estimate:+.{digits}f} ({low:+.{digits}f} to {high:+.{digits}f})"


def verdict_table(verdicts: list[dict[str, Any]]) -> str:
    """Markdown: one row per comparison, its difference with the 95% interval and the verdict."""
    lines = [
        "| budget | method | vs | metric | difference (95% CI) | seeds x examples | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in verdicts:
        lines.append(
            f"| {r['budget']} | {r['method']} | {r['reference']} | {r['metric']} | "
            f"{_interval(r['diff'], r['low'], r['high'])} | {r['n_seeds']} x {r['n_examples']} | {r['verdict']} |"
        )
    return "\n".join(lines)


GAP_CLOSED_MEANING = (
    "Share of the base-to-full gap closed, (base - method) / (base - full), with a 95% bootstrap interval: 1 = as "
    "good as training on all the data, 0 = no better than the base model, above 1 = better than all the data:"
)


def gap_table(gaps: list[dict[str, Any]]) -> str:
    """Markdown: the share of the base-to-full gap each method closes at each budget, or why it is not defined.

    A metric whose share is undefined for the same reason in every row (full data does not beat the base model)
    gets that reason once, in a sentence after the table, instead of in every row."""
    reasons = {}
    for g in gaps:
        reasons.setdefault(g["metric"], set()).add(g["reason"] or None)
    said_once = {m: r.pop() for m, r in reasons.items() if len(r) == 1 and None not in r}
    lines = [
        "| budget | method | metric | share of gap closed (95% CI) | seeds x examples | note |",
        "|---|---|---|---|---|---|",
    ]
    for g in gaps:
        if g["metric"] in said_once:
            continue
        lines.append(
            f"| {g['budget']} | {g['method']} | {g['metric']} | {_interval(g['share'], g['low'], g['high'], 2)} | "
            f"{g['n_seeds']} x {g['n_examples']} | {g['reason'] or '-'} |"
        )
    table = "\n".join(lines) if len(lines) > 2 else ""
    sentences = [f"{metric}: not defined for any method: {reason}." for metric, reason in said_once.items()]
    return "\n\n".join(part for part in (table, *sentences) if part)


def forest_of(verdicts: list[dict[str, Any]], metric: str, label_prefix: str = "", title: str = "") -> bytes | None:
    """The forest plot of compare_methods rows on one metric; `label_prefix` names a column shown before each
    label ("target" in the multi-target report)."""
    rows = [r for r in verdicts if r["metric"] == metric]
    if not rows:
        return None
    better = "< 0" if METRICS[metric][1] else "> 0"
    prefix = (lambda r: f"{r[label_prefix]}: ") if label_prefix else (lambda r: "")
    return forest_png(
        [f"{prefix(r)}{r['method']} vs {r['reference']} @ {r['budget']}" for r in rows],
        [r["diff"] for r in rows],
        [r["low"] for r in rows],
        [r["high"] for r in rows],
        title=title or f"{metric}: paired difference, 95% bootstrap CI",
        xlabel=f"{metric} of method minus {metric} of vs ({better} favors the method)",
    )


def _bullets(text: str) -> str:
    """A recommendation (headline line, then one line per comparison) as a bullet with nested bullets."""
    headline, *details = text.splitlines()
    return "\n".join([f"- {headline}", *(f"  - {line}" for line in details)])


def verdict_sections(per_example) -> tuple[list[str], dict[str, bytes], list[dict], list[dict]]:
    """Markdown blocks (Verdict, Which method for my data), forest plots, verdict rows and gap rows."""
    metrics = [m for m, (column, _) in METRICS.items() if column in per_example.columns]
    verdicts = [r for m in metrics for r in compare_methods(per_example, metric=m, reference=VERDICT_REFERENCE)]
    gaps = [g for m in metrics for g in gap_closed_table(per_example, metric=m)]
    plots = {f"verdict_{m}": png for m in metrics if (png := forest_of(verdicts, m)) is not None}
    advice = recommend(verdicts)
    blocks = [
        "## Verdict",
        "Each method against "
        f"{VERDICT_REFERENCE} (and gtp against random) on the same test examples, fine-tune seeds paired by "
        "number: the mean per-example difference (method minus vs; lower loss and higher accuracy are better) "
        "with a 95% percentile bootstrap interval that resamples test examples and seeds. A win or loss needs the "
        "whole interval on one side of 0; otherwise it is a tie.",
        verdict_table(verdicts) if verdicts else "_No two methods share a budget, a seed and scored test examples._",
        GAP_CLOSED_MEANING,
        gap_table(gaps) if gaps else "_Needs the base model and the full-data fine-tune in the evaluation._",
        "## Which method for my data",
        "\n".join(_bullets(text) for text in advice.values()) or "_No comparison to base a recommendation on._",
    ]
    return blocks, plots, verdicts, gaps


def build_report(evaluation, selections: dict, plan, corpus, per_example=None) -> Report:
    """The summary table, the markdown report and its plots from polars tables (see the module docstring).

    `per_example` (one row per model x test example, as the evaluation asset writes it) adds the verdict;
    without it (evaluations recorded before per-example results were kept) the report says how to get one.
    """
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
    glance = None

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
        if metric == "loss" and budgets and (lines := {m: ys for m, (_, ys) in series.items() if m != "base"}):
            full = lines.pop("full", None)  # a flat line over every budget, drawn last
            lines = {m: ys if len(ys) == len(budgets) else [math.nan] * len(budgets) for m, ys in lines.items()}
            ticks = [b.replace("pct", "%") for b in budgets]
            glance = lines_svg({**lines, **({"full": [full[0]] * len(budgets)} if full else {})}, ticks)
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
    verdicts: list[dict[str, Any]] = []
    gaps: list[dict[str, Any]] = []
    if per_example is None:
        verdict_blocks = [NO_PER_EXAMPLE]
    else:
        verdict_blocks, verdict_plots, verdicts, gaps = verdict_sections(per_example)
        plots.update(verdict_plots)
    markdown = "\n\n".join(
        [
            "# Selection report",
            "Target loss is the mean response-token NLL on the held-out test split (lower is better); accuracy is "
            "multiple-choice accuracy by option log-likelihood. Mean ± sample standard deviation over fine-tune seeds.",
            table_md,
            *verdict_blocks,
            "## Overlap between selections (Jaccard)",
            "\n".join(overlap_md) or "-",
            "## Plots",
            "\n".join(f"![{name}]({name}.png)" for name in plots),
        ]
    )
    return Report(rows, table_md, markdown, plots, verdicts, gaps, glance)
