"""verdict: paired two-way bootstrap intervals, verdicts, gap closed and recommendations, against independent oracles."""

import math
import time

import numpy as np
import polars as pl
import pytest
import scipy.stats

from gtp_pipeline.core.evaluation.recommendation import recommend
from gtp_pipeline.core.evaluation.verdict import (
    BootstrapInterval,
    compare_methods,
    gap_closed,
    gap_closed_table,
    paired_bootstrap,
    verdict,
)


def crossed_scores(rng, n_seeds, n_examples, shift, seed_sd=0.02, example_sd=0.3, noise_sd=0.2):
    """Scores of two methods on shared examples and paired seeds; a - b has population mean `shift`."""
    example = rng.normal(2.0, 1.0, n_examples)  # difficulty both methods share
    seed = rng.normal(0.0, 0.1, (n_seeds, 1))  # seed luck both methods share
    b = example + seed + rng.normal(0.0, 0.3, (n_seeds, n_examples))
    gap = shift + rng.normal(0.0, example_sd, n_examples) + rng.normal(0.0, seed_sd, (n_seeds, 1))
    return b + gap + rng.normal(0.0, noise_sd, (n_seeds, n_examples)), b


def test_single_seed_interval_matches_scipy_percentile_bootstrap():
    rng = np.random.default_rng(7)
    a, b = crossed_scores(rng, 1, 300, shift=-0.05)
    ours = paired_bootstrap(a, b, n_resamples=2000, confidence=0.95, seed=1)
    ref = scipy.stats.bootstrap(
        ((a - b)[0],),
        np.mean,
        method="percentile",
        n_resamples=2000,
        confidence_level=0.95,
        rng=np.random.default_rng(2),
    ).confidence_interval
    width = ref.high - ref.low
    assert ours.diff == pytest.approx(float((a - b).mean()))
    assert abs(ours.low - ref.low) < 0.1 * width and abs(ours.high - ref.high) < 0.1 * width
    assert (ours.n_seeds, ours.n_examples) == (1, 300)


def test_two_way_interval_covers_the_true_difference_about_95_percent_of_the_time():
    reps, truth, covered = 200, -0.05, 0
    for i in range(reps):
        a, b = crossed_scores(np.random.default_rng(100 + i), 3, 300, shift=truth)
        interval = paired_bootstrap(a, b, seed=i)
        covered += interval.low <= truth <= interval.high
    assert 0.88 <= covered / reps <= 0.99


def test_resampling_is_vectorized_enough():
    a, b = crossed_scores(np.random.default_rng(0), 3, 300, shift=0.0)
    start = time.perf_counter()
    paired_bootstrap(a, b, n_resamples=2000)
    assert time.perf_counter() - start < 1.0


def test_resampling_seeds_widens_the_interval_when_seeds_disagree():
    rng = np.random.default_rng(3)
    a, b = crossed_scores(rng, 3, 300, shift=0.0, seed_sd=0.0)
    a_noisy_seeds = a + np.array([[-0.2], [0.0], [0.2]])  # same example-level data, seeds far apart
    narrow, wide = paired_bootstrap(a, b), paired_bootstrap(a_noisy_seeds, b)
    assert wide.high - wide.low > 2 * (narrow.high - narrow.low)


def test_planted_win_null_and_loss_give_win_tie_and_loss():
    verdicts = {"win": [], "null": [], "loss": []}
    for i in range(40):
        rng = np.random.default_rng(1000 + i)
        for name, shift in (("win", -0.15), ("null", 0.0), ("loss", 0.15)):
            a, b = crossed_scores(rng, 3, 300, shift=shift)
            verdicts[name].append(verdict(paired_bootstrap(a, b, n_resamples=500, seed=i), lower_is_better=True))
    assert set(verdicts["win"]) == {"win"}
    assert set(verdicts["loss"]) == {"loss"}
    assert verdicts["null"].count("tie") >= 34  # about 95% expected


def test_verdict_direction_follows_lower_or_higher_is_better():
    below = BootstrapInterval(-0.3, -0.5, -0.1, 3, 100)
    across = BootstrapInterval(0.1, -0.1, 0.3, 3, 100)
    above = BootstrapInterval(0.3, 0.1, 0.5, 3, 100)
    assert [verdict(i) for i in (below, across, above)] == ["win", "tie", "loss"]
    assert [verdict(i, lower_is_better=False) for i in (below, across, above)] == ["loss", "tie", "win"]
    assert verdict(BootstrapInterval(math.nan, math.nan, math.nan, 1, 1)) == "tie"


@pytest.mark.parametrize(
    "a, b, message",
    [
        (np.zeros((2, 5)), np.zeros((3, 5)), "paired"),
        (np.zeros(5), np.zeros(5), "shape"),
        (np.zeros((2, 0)), np.zeros((2, 0)), "shape"),
        (np.full((1, 3), np.nan), np.zeros((1, 3)), "non-finite"),
    ],
)
def test_bad_shapes_and_values_are_refused(a, b, message):
    with pytest.raises(ValueError, match=message):
        paired_bootstrap(a, b)


def test_gap_closed_point_estimate_is_the_hand_computed_share():
    method = np.array([[1.0, 2.0, 3.0, 2.0], [1.2, 2.2, 2.8, 2.0]])  # mean 2.025
    base = np.array([3.0, 4.0, 5.0, 4.0])  # mean 4.0
    full = np.array([[0.9, 1.1, 1.0, 1.0]])  # mean 1.0
    result = gap_closed(method, base, full, n_resamples=500)
    assert result.share == pytest.approx((4.0 - 2.025) / (4.0 - 1.0))
    assert result.low <= result.share <= result.high and result.reason == ""
    assert (result.n_seeds, result.n_examples) == (2, 4)
    # accuracy: the same share, with "improves" meaning up
    acc = gap_closed(1 - method / 10, 1 - base / 10, 1 - full / 10, lower_is_better=False, n_resamples=500)
    assert acc.share == pytest.approx(result.share)


def test_gap_closed_is_nan_with_a_reason_when_full_data_does_not_clearly_help():
    rng = np.random.default_rng(0)
    base = rng.normal(2.0, 1.0, 50)
    full = base[None, :] + rng.normal(0.0, 0.5, (2, 50))  # no real improvement
    result = gap_closed(base[None, :] - 0.1, base, full, n_resamples=500)
    assert math.isnan(result.share) and "does not clearly improve" in result.reason
    with pytest.raises(ValueError, match="same examples"):
        gap_closed(np.zeros((1, 3)), np.zeros(4), np.zeros((1, 3)))


def per_example_table(scores: dict[tuple[str, str, int], dict[str, float | None]], column: str = "loss"):
    """{(method, budget, seed): {example_id: score}} as the evaluation asset's per-example table."""
    rows = [
        {
            "run": method if method in ("base", "full") else f"{method}-{budget}",
            "method": method,
            "budget": budget,
            "seed": seed,
            "example_id": eid,
            column: value,
        }
        for (method, budget, seed), values in scores.items()
        for eid, value in values.items()
    ]
    dtype = pl.Boolean if column == "correct" else pl.Float64
    return pl.DataFrame(rows, schema_overrides={column: dtype, "seed": pl.Int64})


def test_compare_methods_pairs_seeds_by_number_and_drops_unpaired_seeds_and_examples():
    table = per_example_table(
        {
            ("base", "-", -1): {"e1": 9.0, "e2": 9.0, "e3": 9.0},
            ("gtp", "5pct", 0): {"e1": 1.0, "e2": 2.0, "e3": 3.0},
            ("gtp", "5pct", 2): {"e1": 1.0, "e2": 2.0, "e3": 3.0},
            ("gtp", "5pct", 7): {"e1": 100.0, "e2": 100.0, "e3": 100.0},  # topk has no seed 7
            ("topk", "5pct", 0): {"e1": 2.0, "e2": 3.0, "e3": None},  # e3 unscored: dropped everywhere
            ("topk", "5pct", 2): {"e1": 3.0, "e2": 6.0, "e3": 1.0},
            ("topk", "5pct", 5): {"e1": -50.0, "e2": -50.0, "e3": -50.0},  # gtp has no seed 5
            ("random", "5pct", 0): {"e1": 1.5, "e2": 2.5, "e3": 3.5},
        }
    )
    rows = compare_methods(table, metric="loss", reference="topk", n_resamples=200)
    assert [(r["method"], r["reference"]) for r in rows] == [("gtp", "topk"), ("random", "topk"), ("gtp", "random")]
    gtp_topk, random_topk, gtp_random = rows
    # seeds 0 and 2, examples e1 and e2: differences (1-2, 2-3) and (1-3, 2-6)
    assert (gtp_topk["n_seeds"], gtp_topk["n_examples"]) == (2, 2)
    assert gtp_topk["diff"] == pytest.approx(np.mean([-1, -1, -2, -4]))
    assert gtp_topk["budget"] == "5pct" and gtp_topk["metric"] == "loss"
    assert (random_topk["n_seeds"], random_topk["n_examples"]) == (1, 2)
    assert random_topk["diff"] == pytest.approx(np.mean([1.5 - 2.0, 2.5 - 3.0]))
    assert (gtp_random["n_seeds"], gtp_random["n_examples"]) == (1, 3)
    assert gtp_random["diff"] == pytest.approx(-0.5)


def test_compare_methods_reads_accuracy_as_higher_is_better():
    n = 60
    correct_gtp = {f"e{i}": True for i in range(n)}
    correct_topk = {f"e{i}": i % 3 == 0 for i in range(n)}
    scores = {("gtp", "1pct", s): correct_gtp for s in range(3)} | {
        ("topk", "1pct", s): correct_topk for s in range(3)
    }
    (row,) = compare_methods(per_example_table(scores, "correct"), metric="accuracy", n_resamples=500)
    assert row["metric"] == "accuracy" and row["diff"] == pytest.approx(2 / 3)
    assert row["verdict"] == "win"
    with pytest.raises(ValueError, match="metric"):
        compare_methods(per_example_table(scores, "correct"), metric="bleu")


def test_gap_closed_table_uses_base_full_and_every_method_seed():
    table = per_example_table(
        {
            ("base", "-", -1): {"e1": 4.0, "e2": 4.0},
            ("full", "100pct", 0): {"e1": 1.0, "e2": 1.0},
            ("full", "100pct", 1): {"e1": 1.0, "e2": 1.0},
            ("gtp", "5pct", 0): {"e1": 2.0, "e2": 2.0},
            ("gtp", "5pct", 1): {"e1": 3.0, "e2": 3.0},
        }
    )
    (row,) = gap_closed_table(table, n_resamples=200)
    assert row["method"] == "gtp" and row["share"] == pytest.approx((4.0 - 2.5) / 3.0)
    assert gap_closed_table(table.filter(pl.col("method") != "full")) == []


def row(verdict_, diff, low, high, method="gtp", reference="topk", budget="5pct", n_seeds=3, metric="loss"):
    return {
        "budget": budget,
        "method": method,
        "reference": reference,
        "metric": metric,
        "diff": diff,
        "low": low,
        "high": high,
        "n_seeds": n_seeds,
        "n_examples": 300,
        "verdict": verdict_,
    }


def test_recommend_never_says_beats_for_a_tie():
    ties = [row("tie", 0.01, -0.02, 0.04), row("tie", -0.01, -0.03, 0.02, method="random")]
    text = recommend(ties)["5pct"]
    assert "beats" not in text and "cannot tell gtp and topk apart" in text and "more seeds" in text
    mixed = recommend([row("tie", 0.01, -0.02, 0.04), row("win", -0.05, -0.08, -0.02, method="clusterclip")])
    assert "gtp beats" not in mixed["5pct"] and "clusterclip beats topk" in mixed["5pct"]
    headline = mixed["5pct"].split(".")[0]  # names only the method that won, and whom it was not compared with
    assert headline == (
        "At 5pct: clusterclip beats every method it was compared with (topk) on every metric, "
        "but was not compared with gtp"
    )


def test_recommend_states_a_win_with_its_evidence_and_flags_a_single_seed():
    text = recommend([row("win", -0.05, -0.08, -0.02)])["5pct"]
    assert "gtp beats topk (loss \u22120.050, 95% CI \u22120.080 to \u22120.020, 3 seeds x 300 examples)" in text
    assert "test-example noise only" not in text
    one_seed = recommend([row("win", -0.05, -0.08, -0.02, n_seeds=1, budget="1pct")])["1pct"]
    assert "test-example noise only, not seed-to-seed noise" in one_seed
    lost = recommend([row("loss", 0.05, 0.02, 0.08)])["5pct"]
    assert "topk beats gtp" in lost and "gtp beats" not in lost


def test_recommend_headline_names_a_winner_per_metric_and_flags_one_seed_once():
    rows = [
        row("win", -0.05, -0.08, -0.02, n_seeds=1),
        row("win", -0.1, -0.2, -0.05, reference="random", n_seeds=1),
        row("tie", 0.0, -0.03, 0.03, metric="accuracy", n_seeds=1),
        row("tie", 0.01, -0.02, 0.04, reference="random", metric="accuracy", n_seeds=1),
    ]
    text = recommend(rows)["5pct"]
    headline = text.splitlines()[0]
    assert headline.startswith(
        "At 5pct: on accuracy no comparison separates the methods; "
        "gtp beats every method it was compared with (topk, random) on loss."
    )
    assert text.count("not seed-to-seed noise") == 1 and "not seed-to-seed noise" in headline
