"""One selection method at every budget: the table holds exactly what `select` picks, with its summary rows."""

import numpy as np
import polars as pl
import pytest

from gtp_pipeline.core.config.profiles import budget_count
from gtp_pipeline.core.features.target_trajectory import TargetTrajectory
from gtp_pipeline.core.features.trajectory import DenseTrajectories
from gtp_pipeline.core.selection.budget_selections import select_at_budgets
from gtp_pipeline.core.selection.gtp_variants import GTPVariant
from gtp_pipeline.core.selection.pursuit import PursuitConfig
from gtp_pipeline.core.selection.selection_methods import in_domain_target, select

BUDGETS = [0.1, 0.25, 5]


def pool(n=40, d=12, seed=0):
    """Unit trajectories with a cluster near the target, the pool table aligned with them, and the targets."""
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(n, d))
    A[:8] += 3 * np.eye(d)[0]
    A /= np.linalg.norm(A, axis=1, keepdims=True)
    ids = np.asarray([f"p{i:02d}" for i in range(n)])
    corpus = pl.DataFrame(
        {
            "example_id": ids.tolist(),
            "source": ["near" if i < 8 else "far" for i in range(n)],
            "task": ["t"] * n,
            "content_hash": [f"h{i}" for i in range(n)],
            "prompt": [f"question {i}" for i in range(n)],
        }
    )
    dev = np.eye(d)[[0, 0]] + 0.1 * rng.normal(size=(2, d))
    dev /= np.linalg.norm(dev, axis=1, keepdims=True)
    target = TargetTrajectory(dev.mean(axis=0, keepdims=True), np.array(["t"]), np.array([2]))
    per_example = TargetTrajectory(dev, np.array(["0", "1"]), np.array([1, 1]))
    return DenseTrajectories(A.astype(np.float32)), target, per_example, ids, corpus


@pytest.mark.parametrize("method", ["gtp", "topk", "random"])
def test_each_budget_holds_what_select_picks_with_its_summary(method):
    view, target, per_example, ids, corpus = pool()
    pursuit = PursuitConfig(seed=2)
    logged = []
    result = select_at_budgets(method, view, target, per_example, ids, corpus, BUDGETS, pursuit, log=logged.append)
    assert result.table.columns == ["budget", "budget_value", "example_id", "weight", "rank", "select_seconds"]
    assert [row["budget"] for row in result.summary] == ["10pct", "25pct", "n5"]
    for budget, row in zip(BUDGETS, result.summary, strict=True):
        k = budget_count(budget, 40)
        chosen = select(method, view, target, PursuitConfig(budget=k, seed=2), per_example)
        picked = result.table.filter(pl.col("budget") == row["budget"])
        assert picked["example_id"].to_list() == ids[chosen.indices].tolist()
        assert np.allclose(picked["weight"].to_numpy(), chosen.weights)
        assert picked["rank"].to_list() == list(range(1, k + 1))
        assert set(picked["budget_value"]) == {float(budget)}
        assert (row["k"], row["fill"], row["fitted"]) == (k, chosen.fill, k - chosen.fill)
        composition = result.composition.filter(pl.col("budget") == row["budget"])
        assert composition["examples"].sum() == k
    assert len(logged) == len(BUDGETS) and logged[0].startswith(f"{method} @ 10pct: k=4, relative NNLS residual")
    assert len(result.fill_notes) == (len(BUDGETS) if method == "gtp" else 0)
    assert set(result.curves) <= {"10pct", "25pct", "n5"}


def test_gtp_matches_the_target_better_than_random_and_its_curve_is_the_pursuit_per_round():
    view, target, per_example, ids, corpus = pool()
    gtp = select_at_budgets("gtp", view, target, per_example, ids, corpus, BUDGETS, PursuitConfig())
    rand = select_at_budgets("random", view, target, per_example, ids, corpus, BUDGETS, PursuitConfig())
    for g, r in zip(gtp.summary, rand.summary, strict=True):
        assert g["relative_residual"] <= r["relative_residual"]
        rounds, relative = gtp.curves[g["budget"]]
        assert rounds == list(range(1, len(relative) + 1)) and all(np.diff(relative) <= 1e-12)
        # the NNLS refit on the whole selection is at least as good as where the pursuit ended
        assert g["relative_residual"] <= relative[-1] + 1e-4


def test_in_domain_matches_the_pool_mean_with_the_plain_variant():
    view, target, per_example, ids, corpus = pool()
    variant = GTPVariant("per_example", center=True)
    result = select_at_budgets(
        "gtp", view, target, per_example, ids, corpus, [5], PursuitConfig(), variant, in_domain=True
    )
    oracle = select("gtp", view, in_domain_target(view), PursuitConfig(budget=5))
    assert result.table["example_id"].to_list() == ids[oracle.indices].tolist()
    assert result.variant == GTPVariant()
    on_target = select_at_budgets("gtp", view, target, per_example, ids, corpus, [5], PursuitConfig(), variant)
    assert on_target.variant == variant
    assert on_target.table["example_id"].to_list() != result.table["example_id"].to_list()
