"""The verdict in words: per budget, which method the intervals support, and nothing more than they support.

Built from the rows `compare_methods` (core/evaluation/verdict.py) returns; a method is recommended only where its
interval excludes zero against every other method compared at that budget.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gtp_pipeline.core.evaluation.verdict import budget_sort_key, method_sort_key


def _signed(x: float, digits: int = 3) -> str:
    """+0.010 / −0.050: an explicit sign, with a true minus so it reads as a number in prose."""
    return f"{x:+.{digits}f}".replace("-", "\u2212")


def _evidence(row: dict[str, Any], confidence: float, flip: bool = False) -> str:
    """The difference, its interval and the sample size; `flip` states it as reference minus method."""
    if flip:
        row = {**row, "diff": -row["diff"], "low": -row["high"], "high": -row["low"]}
    return (
        f"{row['metric']} {_signed(row['diff'])}, {confidence:.0%} CI {_signed(row['low'])} to {_signed(row['high'])}, "
        f"{row['n_seeds']} seed{'s' if row['n_seeds'] != 1 else ''} x {row['n_examples']} examples"
    )


def _sentence(row: dict[str, Any], confidence: float) -> str:
    """One comparison in words, saying no more than its verdict supports."""
    where, evidence = f"at {row['budget']}", _evidence(row, confidence)
    if row["verdict"] == "win":
        text = f"{where}, {row['method']} beats {row['reference']} ({evidence})."
    elif row["verdict"] == "loss":  # said from the winner's side, so the sign reads the same way as for a win
        text = f"{where}, {row['reference']} beats {row['method']} ({_evidence(row, confidence, flip=True)})."
    else:
        text = (
            f"{where}, the data cannot tell {row['method']} and {row['reference']} apart on {row['metric']} "
            f"({evidence}); more seeds or test examples would narrow the interval."
        )
    return text


def _winners(rows: Sequence[dict[str, Any]]) -> list[tuple[str, list[str], list[str]]]:
    """(method, whom it beat, whom it was not compared with) for each method that won every comparison it is in."""
    outcome: dict[str, set[str]] = {}
    opponents: dict[str, set[str]] = {}
    for r in rows:
        flipped = {"win": "loss", "loss": "win", "tie": "tie"}[r["verdict"]]
        outcome.setdefault(r["method"], set()).add(r["verdict"])
        outcome.setdefault(r["reference"], set()).add(flipped)
        opponents.setdefault(r["method"], set()).add(r["reference"])
        opponents.setdefault(r["reference"], set()).add(r["method"])
    return [
        (m, sorted(opponents[m], key=method_sort_key), sorted(set(outcome) - opponents[m] - {m}, key=method_sort_key))
        for m in sorted(m for m, seen in outcome.items() if seen == {"win"})
    ]


def _claim(method: str, beaten: list[str], unseen: list[str], scope: str) -> str:
    claim = f"{method} beats every method it was compared with ({', '.join(beaten)}) {scope}"
    return claim + (f", but was not compared with {', '.join(unseen)}" if unseen else "")


def _headline(budget: str, rows: Sequence[dict[str, Any]]) -> str:
    """Names a method only where it won every comparison it is in (on every metric, or per metric), says whom it
    was not compared with, and says once when the intervals leave out seed-to-seed noise."""
    overall = _winners(rows)
    if overall:
        text = f"At {budget}: " + "; ".join(_claim(*w, "on every metric") for w in overall) + "."
    elif all(r["verdict"] == "tie" for r in rows):
        text = (
            f"At {budget}: no comparison separates the methods; at this number of seeds and test examples "
            "they cannot be told apart."
        )
    else:
        parts = []
        for metric in sorted({r["metric"] for r in rows}):
            group = [r for r in rows if r["metric"] == metric]
            winners = _winners(group)
            if winners:
                parts.extend(_claim(*w, f"on {metric}") for w in winners)
            elif all(r["verdict"] == "tie" for r in group):
                parts.append(f"on {metric} no comparison separates the methods")
            else:
                parts.append(f"on {metric} no method wins every comparison it is in")
        text = f"At {budget}: " + "; ".join(parts) + ". The comparisons below say which differences are clear."
    if any(r["n_seeds"] < 2 for r in rows):
        text += " With one seed the intervals cover test-example noise only, not seed-to-seed noise."
    return text


def _capitalized(text: str) -> str:
    return text[:1].upper() + text[1:]


def recommend(rows: Sequence[dict[str, Any]], confidence: float = 0.95) -> dict[str, str]:
    """{budget: plain-English recommendation} from compare_methods rows (any metrics), never beyond the intervals.

    One sentence per line: a headline, then one line per comparison. "beats" appears only for a win or loss
    verdict; a tie says the data cannot tell the methods apart.
    """
    by_budget: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_budget.setdefault(r["budget"], []).append(r)
    return {
        budget: "\n".join([_headline(budget, group), *(_capitalized(_sentence(r, confidence)) for r in group)])
        for budget, group in sorted(by_budget.items(), key=lambda kv: budget_sort_key(kv[0]))
    }
