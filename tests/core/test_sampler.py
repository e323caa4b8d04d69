"""ClusterClip sampling plans: the clip holds, draws are uniform over active clusters, fast == reference."""

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from gtp_pipeline.core.clusterclip.sampler import (
    PLAN_METHODS,
    SamplerConfig,
    SamplerInputError,
    equal_draws,
    plan_budgets,
    plan_samples,
    reference_plan,
)


def labels_from_sizes(sizes: list[int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(len(sizes)), sizes))


sizes_st = st.lists(st.integers(0, 12), min_size=1, max_size=8).filter(lambda s: sum(s) > 0)


@settings(max_examples=60, deadline=None)
@given(sizes=sizes_st, R=st.integers(1, 4), extra=st.integers(0, 40), seed=st.integers(0, 2**16))
def test_no_example_exceeds_R_uses_before_the_fallback(sizes, R, extra, seed):
    labels = labels_from_sizes(sizes, seed)
    N = labels.size
    M = R * N + extra if seed % 2 else (R * N * seed) // 2**16  # sometimes beyond R*N, sometimes within
    plan = plan_samples(labels, M, SamplerConfig(R=R, seed=seed), n_clusters=len(sizes))
    clip_phase = plan.stream[: plan.fallback_step] if plan.fallback_step is not None else plan.stream
    assert np.bincount(clip_phase, minlength=N).max(initial=0) <= R
    if M >= R * N:  # every example is used exactly R times, then the fallback starts (if draws remain)
        assert (np.bincount(clip_phase, minlength=N) == R).all()
    assert plan.fallback_step == (R * N if M > R * N else None)


@settings(max_examples=60, deadline=None)
@given(
    sizes=sizes_st,
    R=st.integers(1, 4),
    M=st.integers(0, 200),
    seed=st.integers(0, 2**16),
    method=st.sampled_from(["clusterclip", "uniform", "random"]),
)
def test_fast_plan_equals_the_reference_loop(sizes, R, M, seed, method):
    labels = labels_from_sizes(sizes, seed)
    cfg = SamplerConfig(method=method, R=R, seed=seed)
    fast, ref = plan_samples(labels, M, cfg, len(sizes)), reference_plan(labels, M, cfg, len(sizes))
    np.testing.assert_array_equal(fast.stream, ref.stream)
    np.testing.assert_array_equal(fast.retired_at, ref.retired_at)
    np.testing.assert_array_equal(fast.use_counts, ref.use_counts)
    np.testing.assert_array_equal(fast.cluster_draws, ref.cluster_draws)
    assert fast.fallback_step == ref.fallback_step


@pytest.mark.parametrize("method", ["clusterclip", "uniform"])
def test_fast_plan_equals_the_reference_on_a_long_stream_with_many_retirements(method):
    g = np.random.default_rng(5)
    labels = g.choice(300, 6000, p=np.arange(1, 301) ** -1.0 / (np.arange(1, 301) ** -1.0).sum())
    cfg = SamplerConfig(method=method, R=3, seed=11)
    fast, ref = plan_samples(labels, 25_000, cfg, 300), reference_plan(labels, 25_000, cfg, 300)
    np.testing.assert_array_equal(fast.stream, ref.stream)
    np.testing.assert_array_equal(fast.retired_at, ref.retired_at)


def test_draws_are_uniform_over_clusters_before_any_retirement():
    sizes = [500, 800, 1200, 2000, 3000, 5000, 7000, 9000, 12000, 20000]  # very unequal clusters
    labels = labels_from_sizes(sizes)
    plan = plan_samples(labels, 40_000, SamplerConfig(R=10, seed=0))
    assert (plan.retired_at == -1).all() and plan.fallback_step is None
    assert chisquare(plan.cluster_draws).pvalue > 1e-3  # uniform over the 10 clusters
    random = plan_samples(labels, 40_000, SamplerConfig(method="random", seed=0))
    assert chisquare(random.cluster_draws).pvalue < 1e-12  # the random baseline follows cluster sizes instead
    expected = 40_000 * np.asarray(sizes) / sum(sizes)
    assert chisquare(random.cluster_draws, expected).pvalue > 1e-3


def test_draws_are_uniform_over_the_clusters_still_active_after_retirements():
    sizes = [3, 5, 4000, 4000, 4000, 4000]
    labels = labels_from_sizes(sizes)
    plan = plan_samples(labels, 30_000, SamplerConfig(R=2, seed=3))
    assert plan.retired_at[0] >= 0 and plan.retired_at[1] >= 0 and (plan.retired_at[2:] == -1).all()
    after = plan.stream[max(plan.retired_at[:2]) + 1 :]
    counts = np.bincount(labels[after], minlength=6)
    assert counts[:2].sum() == 0
    assert chisquare(counts[2:]).pvalue > 1e-3


def test_retirement_step_is_the_draw_that_completes_the_R_th_pass():
    labels = labels_from_sizes([4, 7, 1, 30], seed=2)
    R = 3
    plan = plan_samples(labels, 200, SamplerConfig(R=R, seed=1))
    for k in range(4):
        members = labels == k
        t = plan.retired_at[k]
        upto = np.bincount(plan.stream[: t + 1], minlength=labels.size)[members]
        before = np.bincount(plan.stream[:t], minlength=labels.size)[members]
        assert (upto == R).all() and (before < R).any()


def test_same_seed_same_plan_other_seed_other_plan():
    labels = labels_from_sizes([50, 10, 200, 3])
    a, b = (plan_samples(labels, 500, SamplerConfig(R=2, seed=4)) for _ in range(2))
    np.testing.assert_array_equal(a.stream, b.stream)
    c = plan_samples(labels, 500, SamplerConfig(R=2, seed=5))
    assert not np.array_equal(a.stream, c.stream)


def test_fallback_is_recorded_and_is_random_epochs_when_M_exceeds_R_times_N():
    labels = labels_from_sizes([5, 9, 2])
    N, R = 16, 2
    plan = plan_samples(labels, R * N + 2 * N + 3, SamplerConfig(R=R, seed=0))
    assert plan.fallback_step == R * N
    tail = plan.stream[R * N :]
    assert sorted(tail[:N].tolist()) == list(range(N)) and sorted(tail[N : 2 * N].tolist()) == list(range(N))
    assert (plan.retired_at >= 0).all() and plan.retired_at.max() == R * N - 1


def test_uniform_baseline_has_no_clip_and_repeats_a_singleton_about_M_over_K_times():
    labels = labels_from_sizes([1, 400, 400, 400])
    plan = plan_samples(labels, 4000, SamplerConfig(method="uniform", R=1, seed=0))
    assert plan.fallback_step is None and (plan.retired_at == -1).all()
    singleton = int(np.flatnonzero(labels == 0)[0])
    assert 850 < plan.use_counts[singleton] < 1150  # ~ M/K = 1000, far beyond any clip


def test_random_baseline_is_shuffled_epochs_over_the_pool():
    labels = labels_from_sizes([3, 4, 5])
    plan = plan_samples(labels, 30, SamplerConfig(method="random", seed=1))
    assert sorted(plan.stream[:12].tolist()) == list(range(12)) and sorted(plan.stream[12:24].tolist()) == list(
        range(12)
    )
    assert plan.R is None and plan.fallback_step is None


def test_empty_clusters_are_never_drawn_nor_retired():
    labels = np.array([0, 0, 2, 2, 2])
    plan = plan_samples(labels, 12, SamplerConfig(R=2, seed=0), n_clusters=4)
    assert plan.cluster_draws[1] == 0 and plan.cluster_draws[3] == 0
    assert plan.retired_at[1] == -1 and plan.retired_at[3] == -1 and plan.fallback_step == 10


def test_zero_draws_give_an_empty_stream():
    plan = plan_samples(np.array([0, 1, 1]), 0, SamplerConfig())
    assert plan.stream.size == 0 and plan.use_counts.tolist() == [0, 0, 0]


@pytest.mark.parametrize(
    ("labels", "M", "kwargs", "n_clusters", "message"),
    [
        ([0, 1], 5, dict(R=0), None, "R .repetition clip. must be >= 1"),
        ([0, 1], -1, {}, None, "M .number of draws. must be >= 0"),
        ([], 5, {}, None, "non-empty 1-D"),
        ([0, -1], 5, {}, None, "found min -1"),
        ([0, 3], 5, {}, 3, "labels must lie in 0..2"),
        ([0.0, 1.0], 5, {}, None, "must be integers"),
        ([0, 1], 5, dict(method="weighted"), None, "method must be"),
    ],
)
def test_bad_input_raises_a_clear_error(labels, M, kwargs, n_clusters, message):
    for plan in (plan_samples, reference_plan):
        with pytest.raises(SamplerInputError, match=message):
            plan(np.asarray(labels), M, SamplerConfig(**kwargs), n_clusters)


def test_equal_draws_is_epochs_times_the_budgets_examples():
    assert equal_draws(0.05, 200, 2) == 20  # 5% of 200 = 10 examples, twice each
    assert equal_draws(30, 200, 3) == 90  # a count budget
    assert equal_draws(0.001, 200, 2) == 2  # at least one example


def test_plan_budgets_gives_every_method_the_same_draws_and_keeps_the_longest_clusterclip_plan():
    labels = labels_from_sizes([30, 8, 2], seed=3)
    ids = np.array([f"ex{i}" for i in range(labels.size)])
    plans = plan_budgets(labels, ids, budgets=(0.1, 0.5), train_epochs=2, R=1, seed=7)
    counts = plans.table.group_by("budget", "method").len().sort("budget", "method").rows()
    assert counts == [(b, m, n) for b, n in (("10pct", 8), ("50pct", 40)) for m in sorted(PLAN_METHODS)]
    clip = plans.table.filter((pl.col("budget") == "50pct") & (pl.col("method") == "clusterclip"))
    direct = plan_samples(labels, 40, SamplerConfig(method="clusterclip", R=1, seed=7), n_clusters=3)
    assert clip["example_id"].to_list() == ids[direct.stream].tolist()
    assert np.array_equal(plans.longest.stream, direct.stream)
    # 40 draws with R=1 over 40 examples: the clip retires every cluster exactly at the budget, no fallback
    row = next(r for r in plans.summary if (r["method"], r["budget"]) == ("clusterclip", "50pct"))
    assert row["draws"] == 40 and row["distinct_examples"] == 40 and row["fallback_step"] == "-"
    assert plans.fallbacks == []


def test_plan_budgets_reports_a_fallback_and_the_share_gap_per_cluster():
    labels = labels_from_sizes([6, 2], seed=0)
    ids = np.arange(labels.size).astype(str)
    plans = plan_budgets(labels, ids, budgets=(4,), train_epochs=5, R=1, seed=0)  # 20 draws from 8 examples
    assert plans.fallbacks == ["clusterclip @ n4: every cluster retired at draw 8 of 20; random fallback after that"]
    assert list(plans.cluster_order) == [0, 1]  # the larger cluster first
    share = plans.longest.cluster_draws / 20
    np.testing.assert_allclose(plans.share_gap, share - np.array([6, 2]) / 8)
