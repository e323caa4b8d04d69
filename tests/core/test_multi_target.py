"""The multi-target report: verdicts per target and budget from per-example scores, and an overall sentence that
claims no more than the intervals do."""

import numpy as np
import polars as pl

from gtp_pipeline.core.evaluation.multi_target import gtp_tally, multi_target_markdown, overall_sentence


def scores(
    shift: dict[str, float], n: int = 60, seeds=(0, 1, 2), seed: int = 0, full_gain: float = 1.0
) -> pl.DataFrame:
    """Per-example losses: every method is topk's loss plus its shift and a little per-run noise."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(2.0, 4.0, n)
    rows = [dict(run="base", method="base", budget="-", seed=-1, example_id=f"e{i}", loss=base[i]) for i in range(n)]
    full = base - full_gain
    rows += [
        dict(run="full", method="full", budget="100pct", seed=0, example_id=f"e{i}", loss=full[i]) for i in range(n)
    ]
    topk = base - 0.5
    for method, delta in {"topk": 0.0, **shift}.items():
        for s in seeds:
            noise = rng.normal(0, 0.01, n)
            rows += [
                dict(
                    run=f"{method}-5pct",
                    method=method,
                    budget="5pct",
                    seed=s,
                    example_id=f"e{i}",
                    loss=topk[i] + delta + noise[i],
                )
                for i in range(n)
            ]
    return pl.DataFrame(rows)


def picked(methods) -> pl.DataFrame:
    return pl.DataFrame(
        [
            {
                "budget": "5pct",
                "method": m,
                "k": 10,
                "fitted": 4 if m == "gtp" else None,
                "fill": 6 if m == "gtp" else None,
                "relative_residual": 0.9,
                "near_duplicates": 0,
                "jaccard_topk": None,
                "sources": "a 10",
            }
            for m in methods
        ]
    )


def test_a_planted_win_and_a_planted_loss_are_each_named_and_the_overall_verdict_says_it_depends():
    per_example = {"A": scores({"gtp": -0.2, "random": 0.3}), "B": scores({"gtp": 0.2, "random": 0.3}, seed=1)}
    selections = {t: picked(["gtp", "topk", "random"]) for t in per_example}
    markdown, plots, verdicts, gaps = multi_target_markdown(selections, per_example, "python -m x")
    assert gtp_tally(verdicts) == {"win": ["A @ 5pct"], "tie": [], "loss": ["B @ 5pct"]}
    sentence = overall_sentence(verdicts)
    assert sentence.startswith("topk beats gtp on B @ 5pct, and gtp beats topk on A @ 5pct") and "depends" in sentence
    by = {(g["target"], g["method"]): g["share"] for g in gaps}
    assert abs(by[("A", "gtp")] - 0.7) < 0.02 and abs(by[("B", "topk")] - 0.5) < 0.02  # (base - m) / (base - full)
    for text in (
        "**A**",
        "**B**",
        "## Which method for my data",
        "| A | 5pct | gtp | 10 | 4 | 6 |",
        "Reproduce: `python -m x`",
    ):
        assert text in markdown
    assert plots["multi_target_verdict_loss"][:4] == b"\x89PNG"


def test_no_loss_and_one_win_is_reported_as_no_worse_everywhere_and_better_there():
    per_example = {"A": scores({"gtp": -0.2}), "B": scores({"gtp": 0.0}, seed=2)}
    _, _, verdicts, _ = multi_target_markdown({}, per_example, "x")
    assert gtp_tally(verdicts) == {"win": ["A @ 5pct"], "tie": ["B @ 5pct"], "loss": []}
    assert overall_sentence(verdicts).startswith("gtp is no worse than topk within the intervals on every target")
    assert overall_sentence([]).startswith("No target has both")


def test_a_target_where_full_data_is_worse_than_the_base_model_says_so_once_instead_of_in_every_row():
    per_example = {"A": scores({"gtp": -0.2}), "B": scores({"gtp": 0.0}, seed=2, full_gain=-0.5)}
    markdown, _, _, gaps = multi_target_markdown({}, per_example, "x")
    assert {g["target"] for g in gaps if g["reason"]} == {"B"}
    b_section = markdown[markdown.index("**B**", markdown.index("gap closed")) :]
    assert b_section.count("full data does not clearly improve on the base model") == 1
    assert "loss: not defined for any method: full data does not clearly improve" in b_section
    a_section = markdown[
        markdown.index("**A**", markdown.index("gap closed")) : markdown.index("**B**", markdown.index("gap closed"))
    ]
    assert "| 5pct | gtp | loss | +0.70" in a_section
