"""Benchmark the report's paired bootstrap (core/evaluation/verdict.py) against scipy.stats.bootstrap on the same data.

scipy's bootstrap resamples one axis, so the comparison is on one seed (test examples only): the same number of
resamples, the same percentile interval; both are timed (best of 5, interleaved) and their intervals compared.
Then the two-way form (seeds and examples) that scipy has no equivalent for, at the size of a multi-target
report: every comparison of 8 methods x 3 budgets x 2 metrics.

Run: python bench/verdict.py   (seconds). Prints one JSON line.
Goals: speedup_vs_scipy >= 1 at equal resamples; interval endpoints within 10% of the interval width of scipy's;
report_seconds (48 two-way comparisons, 3 seeds x 1,000 examples) <= 5.
"""

from __future__ import annotations

import json
import os
import platform
import time

import numpy as np
from scipy import stats

from gtp_pipeline.core.evaluation.verdict import paired_bootstrap

N_EXAMPLES, N_SEEDS, N_RESAMPLES = 1_000, 3, 2_000
COMPARISONS = 8 * 3 * 2


def best_of(fn, reps: int = 5) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    rng = np.random.default_rng(0)
    base = rng.gamma(2.0, 2.0, size=N_EXAMPLES)
    a = base + rng.normal(0.0, 0.5, size=(N_SEEDS, N_EXAMPLES)) - 0.05
    b = base + rng.normal(0.0, 0.5, size=(N_SEEDS, N_EXAMPLES))
    diff = a[0] - b[0]

    def ours():
        return paired_bootstrap(a[:1], b[:1], n_resamples=N_RESAMPLES, seed=1)

    def scipy_ref():
        return stats.bootstrap(
            (diff,), np.mean, n_resamples=N_RESAMPLES, method="percentile", vectorized=True, random_state=1
        )

    t_ours, t_scipy = best_of(ours), best_of(scipy_ref)
    mine, ref = ours(), scipy_ref().confidence_interval
    width = ref.high - ref.low
    t = time.perf_counter()
    for i in range(COMPARISONS):
        paired_bootstrap(a, b, n_resamples=N_RESAMPLES, seed=i)
    report_s = time.perf_counter() - t
    result = dict(
        bench="verdict",
        device=f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        examples=N_EXAMPLES,
        resamples=N_RESAMPLES,
        ours_s=t_ours,
        scipy_s=t_scipy,
        speedup_vs_scipy=t_scipy / t_ours,
        ours_interval=[mine.low, mine.high],
        scipy_interval=[float(ref.low), float(ref.high)],
        endpoint_gap_over_width=max(abs(mine.low - ref.low), abs(mine.high - ref.high)) / width,
        two_way_comparisons=COMPARISONS,
        two_way_seeds=N_SEEDS,
        report_seconds=report_s,
    )
    print(json.dumps({k: (round(v, 6) if isinstance(v, float) else v) for k, v in result.items()}))


if __name__ == "__main__":
    main()
