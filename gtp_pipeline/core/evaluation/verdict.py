"""Is one selection method really better than another, or is the gap noise? Paired bootstrap verdicts.

A mean ± sd over a few fine-tune seeds says nothing about test-example noise, and comparing two methods'
means ignores that they were scored on the same test examples (their errors are correlated, so the
difference is far less noisy than either score). Here two methods are compared on per-example scores of
the same test examples, seeds paired by seed number, and the difference gets a percentile bootstrap
interval that resamples test examples and seeds independently (two-way), so both sources of noise are in it.
A method "wins" only when the whole interval is on the better side of zero; the plain-English
recommendation never claims more than that. With only a few seeds the seed part of the interval is itself
rough (a bootstrap over three seeds sees three values), and with one seed it is absent: the text says so.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from gtp_pipeline.core.config.run_key import BASE, FULL

# metric name -> (per-example column, lower is better)
METRICS = {"loss": ("loss", True), "accuracy": ("correct", False)}
REFERENCE_RUNS = (BASE, FULL)  # not selection methods: the ends of the base-to-full gap
METHOD_ORDER = ("gtp", "topk", "random", "clusterclip")  # the order tables list methods in; others follow by name
MAX_CHUNK_ELEMENTS = 4_000_000  # resampled (resample x example) cells held at once


@dataclass(frozen=True)
class BootstrapInterval:
    diff: float  # point estimate: mean over seeds and examples of (a - b)
    low: float
    high: float
    n_seeds: int
    n_examples: int


@dataclass(frozen=True)
class GapClosed:
    share: float  # (base - method) / (base - full); nan when the gap is not clearly there
    low: float
    high: float
    n_seeds: int  # seeds of the method
    n_examples: int
    reason: str = ""  # why share is nan, else ""


def _as_matrix(x: Any, name: str) -> np.ndarray:
    """A finite float matrix (seeds x examples), so shape mistakes fail here rather than broadcast silently."""
    m = np.asarray(x, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] < 1 or m.shape[1] < 1:
        raise ValueError(f"{name} must have shape (n_seeds, n_examples) with both >= 1, got {m.shape}")
    if not np.isfinite(m).all():
        raise ValueError(f"{name} has non-finite scores: drop those examples first")
    return m


def _check_resampling(n_resamples: int, confidence: float) -> None:
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def _row_weights(rng: np.random.Generator, n_rows: int, size: int) -> np.ndarray:
    """(size, n_rows) bootstrap counts of rows divided by n_rows: the weights of a resampled mean over rows."""
    if n_rows == 1:
        return np.ones((size, 1))
    draws = rng.integers(0, n_rows, size=(size, n_rows)) + np.arange(size)[:, None] * n_rows
    return np.bincount(draws.ravel(), minlength=size * n_rows).reshape(size, n_rows) / n_rows


def _two_way_means(matrices: Sequence[np.ndarray], n_resamples: int, seed: int) -> np.ndarray:
    """(n_resamples, len(matrices)) means of each matrix under two-way bootstrap resampling.

    Test examples (columns) are drawn once per resample and shared by all matrices, since they are scored on
    the same examples; each matrix's seeds (rows) are drawn on their own, since their runs are independent.
    Resamples go in chunks so memory stays bounded for large test sets.
    """
    rng = np.random.default_rng(seed)
    n_examples = matrices[0].shape[1]
    out = np.empty((n_resamples, len(matrices)))
    chunk = max(1, MAX_CHUNK_ELEMENTS // n_examples)
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        columns = rng.integers(0, n_examples, size=(size, n_examples))
        for k, m in enumerate(matrices):
            per_seed = np.stack([row[columns].mean(axis=1) for row in m], axis=1)  # (size, seeds): over drawn examples
            out[start : start + size, k] = (_row_weights(rng, m.shape[0], size) * per_seed).sum(axis=1)
    return out


def _percentiles(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(samples, [tail, 1.0 - tail])
    return float(low), float(high)


def paired_bootstrap(
    a: Any, b: Any, n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> BootstrapInterval:
    """Mean of (a - b) with a two-way percentile bootstrap interval over test examples and seeds.

    Row i of `a` and of `b` come from fine-tunes with the same seed, columns are the same test examples, so the
    per-cell difference removes what the two share (example difficulty, seed luck) before resampling.
    """
    a, b = _as_matrix(a, "a"), _as_matrix(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must be paired (same seeds x same examples), got shapes {a.shape} and {b.shape}")
    _check_resampling(n_resamples, confidence)
    diff = a - b
    low, high = _percentiles(_two_way_means([diff], n_resamples, seed)[:, 0], confidence)
    return BootstrapInterval(float(diff.mean()), low, high, a.shape[0], a.shape[1])


def verdict(interval: Any, lower_is_better: bool = True) -> str:
    """ "win" / "loss" for a (the first method) when the whole interval lies on one side of 0, else "tie".

    A point estimate alone is never a verdict: an interval straddling 0 (or nan) means the data cannot tell.
    """
    low, high = interval.low, interval.high
    better_side = high < 0 if lower_is_better else low > 0
    worse_side = low > 0 if lower_is_better else high < 0
    return "win" if better_side else "loss" if worse_side else "tie"


def gap_closed(
    method: Any,
    base: Any,
    full: Any,
    lower_is_better: bool = True,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> GapClosed:
    """Share of the base-to-full gap a selection closes: (base - method) / (base - full), with a bootstrap interval.

    It answers "how much of what training on all the data buys do I get from this subset". The ratio only means
    something when full data clearly improves on the base model, so otherwise the share is nan with a reason.
    The same formula serves accuracy (both signs flip); `lower_is_better` only says which way "improves" is.
    `method` is (n_seeds, n_examples), `base` (n_examples,) (the base model has no seed), `full`
    (n_seeds_full, n_examples), all on the same test examples.
    """
    method = _as_matrix(method, "method")
    base_row = np.asarray(base, dtype=np.float64)
    if base_row.ndim != 1:
        raise ValueError(f"base must have shape (n_examples,), got {base_row.shape}")
    base_m = _as_matrix(base_row[None, :], "base")
    full = _as_matrix(full, "full")
    if not method.shape[1] == base_m.shape[1] == full.shape[1]:
        raise ValueError(
            f"method, base and full must be scored on the same examples, got {method.shape[1]}, "
            f"{base_m.shape[1]} and {full.shape[1]} examples"
        )
    _check_resampling(n_resamples, confidence)
    n_seeds, n_examples = method.shape
    means = _two_way_means([method, base_m, full], n_resamples, seed)
    sign = 1.0 if lower_is_better else -1.0  # improvement = sign * (base - x)
    gap = sign * (base_m.mean() - full.mean())
    gap_low, gap_high = _percentiles(sign * (means[:, 1] - means[:, 2]), confidence)
    if not gap_low > 0:
        reason = (
            f"full data does not clearly improve on the base model (improvement {gap:+.4f}, "
            f"{confidence:.0%} CI {gap_low:+.4f} to {gap_high:+.4f})"
        )
        return GapClosed(math.nan, math.nan, math.nan, n_seeds, n_examples, reason)
    share = float((base_m.mean() - method.mean()) / (base_m.mean() - full.mean()))
    low, high = _percentiles((means[:, 1] - means[:, 0]) / (means[:, 1] - means[:, 2]), confidence)
    return GapClosed(share, low, high, n_seeds, n_examples)


def budget_sort_key(budget: str) -> tuple[float, str]:
    """Budgets in numeric order ("1pct" < "5pct" < "20pct"); unknown labels last, by name."""
    try:
        return (float(budget.removesuffix("pct").lstrip("n")), budget)
    except ValueError:
        return (math.inf, budget)


def method_sort_key(method: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


def _metric(metric: str) -> tuple[str, bool]:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {sorted(METRICS)}, got {metric!r}")
    return METRICS[metric]


def _scores_by_seed(table: Any, method: str, budget: str | None, column: str) -> dict[int, dict[str, float]]:
    """{seed: {example_id: score}} of one method (at a budget, or any budget for base/full), nulls left out."""
    import polars as pl

    rows = table.filter(pl.col("method") == method)
    if budget is not None:
        rows = rows.filter(pl.col("budget") == budget)
    if rows.select(pl.struct("seed", "example_id").is_duplicated().any()).item():
        raise ValueError(f"{method} at {budget} has more than one score for a (seed, example_id)")
    rows = rows.filter(pl.col(column).is_not_null()).with_columns(pl.col(column).cast(pl.Float64))
    out: dict[int, dict[str, float]] = {}
    for seed, example_id, value in rows.select("seed", "example_id", column).iter_rows():
        out.setdefault(int(seed), {})[example_id] = value
    return out


def _matrix(scores: dict[int, dict[str, float]], seeds: Sequence[int], examples: Sequence[str]) -> np.ndarray:
    return np.array([[scores[s][e] for e in examples] for s in seeds], dtype=np.float64)


def _common_examples(runs: Iterable[dict[str, float]]) -> list[str]:
    """Example ids scored (non-null) in every run, sorted so matrices line up column by column."""
    sets = [set(r) for r in runs]
    return sorted(set.intersection(*sets)) if sets else []


def _pairs_at(methods: Sequence[str], reference: str) -> list[tuple[str, str]]:
    """(method, reference) comparisons at one budget: each method against the reference, and gtp against random."""
    pairs = [(m, reference) for m in methods if m != reference and reference in methods]
    if "gtp" in methods and "random" in methods and ("gtp", "random") not in pairs:
        pairs.append(("gtp", "random"))
    return pairs


def compare_methods(
    per_example_table: Any,
    metric: str = "loss",
    reference: str = "topk",
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Paired bootstrap verdicts of every selection method against `reference` (and gtp against random), per budget.

    The table has one row per (model, test example): run, method, budget, seed, example_id and the metric's
    column ("loss", or "correct" for accuracy). Only seeds both methods have are used (paired by number), and
    only examples with a score in every run involved. A comparison without a shared seed or example is left out.
    """
    import polars as pl

    column, lower_is_better = _metric(metric)
    missing = {"method", "budget", "seed", "example_id", column} - set(per_example_table.columns)
    if missing:
        raise ValueError(f"the per-example table lacks columns {sorted(missing)}")
    selected = per_example_table.filter(~pl.col("method").is_in(REFERENCE_RUNS))
    rows = []
    for budget in sorted(set(selected["budget"].to_list()), key=budget_sort_key):
        methods = sorted(set(selected.filter(pl.col("budget") == budget)["method"].to_list()), key=method_sort_key)
        for method, ref in _pairs_at(methods, reference):
            a = _scores_by_seed(selected, method, budget, column)
            b = _scores_by_seed(selected, ref, budget, column)
            seeds = sorted(set(a) & set(b))
            examples = _common_examples([a[s] for s in seeds] + [b[s] for s in seeds])
            if not seeds or not examples:
                continue
            interval = paired_bootstrap(
                _matrix(a, seeds, examples), _matrix(b, seeds, examples), n_resamples, confidence, seed
            )
            rows.append(
                {
                    "budget": budget,
                    "method": method,
                    "reference": ref,
                    "metric": metric,
                    "diff": interval.diff,
                    "low": interval.low,
                    "high": interval.high,
                    "n_seeds": interval.n_seeds,
                    "n_examples": interval.n_examples,
                    "verdict": verdict(interval, lower_is_better),
                }
            )
    return rows


def gap_closed_table(
    per_example_table: Any, metric: str = "loss", n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> list[dict[str, Any]]:
    """gap_closed for every selection method and budget, from the same per-example table as compare_methods.

    Every seed of the method and of the full-data model is used (they need no pairing: the base model is the
    only shared run); examples are those scored in all of them. Empty when base or full data was not evaluated.
    """
    import polars as pl

    column, lower_is_better = _metric(metric)
    base = _scores_by_seed(per_example_table, "base", None, column)
    full = _scores_by_seed(per_example_table, "full", None, column)
    if len(base) != 1 or not full:
        return []
    (base_scores,) = base.values()
    selected = per_example_table.filter(~pl.col("method").is_in(REFERENCE_RUNS))
    rows = []
    keys = selected.select("budget", "method").unique().rows()
    for budget, method in sorted(keys, key=lambda k: (budget_sort_key(k[0]), method_sort_key(k[1]))):
        scores = _scores_by_seed(selected, method, budget, column)
        examples = _common_examples([base_scores, *full.values(), *scores.values()])
        if not examples:
            continue
        result = gap_closed(
            _matrix(scores, sorted(scores), examples),
            np.array([base_scores[e] for e in examples]),
            _matrix(full, sorted(full), examples),
            lower_is_better,
            n_resamples,
            confidence,
            seed,
        )
        rows.append({"budget": budget, "method": method, "metric": metric, **asdict(result)})
    return rows
