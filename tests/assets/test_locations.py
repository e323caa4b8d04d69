"""Artifact identities: a selection's version is what it picked, never how long picking took."""

import polars as pl

from gtp_pipeline.assets.locations import selection_version


def test_selection_version_ignores_timing_and_sees_every_pick():
    picks = {"budget": ["5pct", "5pct"], "example_id": ["a", "b"], "weight": [0.5, 0.25], "rank": [1, 2]}
    first = pl.DataFrame({**picks, "select_seconds": [0.05, 0.05]})
    rerun = pl.DataFrame({**picks, "select_seconds": [0.07, 0.07]})
    assert selection_version(first) == selection_version(rerun)
    other = pl.DataFrame({**picks, "weight": [0.5, 0.3], "select_seconds": [0.05, 0.05]})
    assert selection_version(other) != selection_version(first)
    plan = pl.DataFrame({"budget": ["5pct"], "example_id": ["a"], "draw": [0]})  # a ClusterClip plan: no timing
    assert selection_version(plan) == selection_version(plan.clone())
