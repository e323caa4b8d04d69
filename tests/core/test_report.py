"""build_report: the summary as before, plus the verdict sections when per-example scores are given."""

import numpy as np
import polars as pl

from gtp_pipeline.core.evaluation.report import NO_PER_EXAMPLE, build_report

METHODS = ("gtp", "topk", "random", "clusterclip")
BUDGETS = ("5pct", "20pct")
SEEDS = (0, 1, 2)
N_TEST = 80


def runs():
    """(run, method, budget, seed) of every evaluated model: base, full data and each method x budget x seed."""
    out = [("base", "base", "-", -1)] + [("full", "full", "100pct", s) for s in SEEDS]
    return out + [(f"{m}-{b}", m, b, s) for m in METHODS for b in BUDGETS for s in SEEDS]


def planted_loss(method: str, budget: str) -> float:
    """Mean test loss per model: gtp clearly best, the rest close to each other, base worst, full best."""
    if method in ("base", "full"):
        return {"base": 3.0, "full": 1.0}[method]
    return {"gtp": 1.6, "topk": 2.0, "random": 2.02, "clusterclip": 1.98}[method] - (0.1 if budget == "20pct" else 0)


def per_example_table():
    rng = np.random.default_rng(0)
    difficulty = rng.normal(0.0, 0.5, N_TEST)
    rows = []
    for run, method, budget, seed in runs():
        loss = planted_loss(method, budget) + difficulty + rng.normal(0.0, 0.1, N_TEST)
        correct = rng.random(N_TEST) < (0.9 if method in ("gtp", "full") else 0.5)
        for i in range(N_TEST):
            rows.append(
                {
                    "run": run,
                    "method": method,
                    "budget": budget,
                    "seed": seed,
                    "example_id": f"t{i}",
                    "loss": float(loss[i]),
                    "correct": bool(correct[i]),
                }
            )
    return pl.DataFrame(rows)


def evaluation_table(per_example):
    summary = per_example.group_by("run", "method", "budget", "seed", maintain_order=True).agg(
        pl.col("loss").mean(), pl.col("correct").cast(pl.Float64).mean().alias("accuracy")
    )
    return summary.with_columns(
        pl.lit(N_TEST).alias("n_test"),
        pl.lit(N_TEST).alias("n_choice"),
        pl.lit(10, pl.Int64).alias("examples"),
        pl.lit(30, pl.Int64).alias("draws"),
        pl.lit(5.0).alias("train_seconds"),
        pl.col("run").alias("checkpoint_id"),
    )


def inputs():
    corpus = pl.DataFrame(
        {
            "example_id": [f"p{i}" for i in range(20)],
            "source": ["a" if i % 2 else "b" for i in range(20)],
            "prompt": [f"prompt {i}" for i in range(20)],
        }
    )
    selections = {
        m: pl.DataFrame(
            {
                "budget": [b for b in BUDGETS for _ in range(4)],
                "example_id": [f"p{i}" for _ in BUDGETS for i in range(4)],
            }
        )
        for m in ("gtp", "topk", "random")
    }
    plan = pl.DataFrame({"method": ["clusterclip"] * 4, "budget": ["5pct", "5pct", "20pct", "20pct"]}).with_columns(
        pl.Series("example_id", ["p1", "p2", "p3", "p5"])
    )
    return selections, plan, corpus


def test_report_without_per_example_builds_as_before_and_says_how_to_get_a_verdict():
    per_example = per_example_table()
    report = build_report(evaluation_table(per_example), *inputs())
    assert NO_PER_EXAMPLE in report.markdown
    assert "## Verdict" not in report.markdown and "## Which method" not in report.markdown
    assert report.verdicts == [] and not any(name.startswith("verdict_") for name in report.plots)
    assert "| gtp | 5pct | 3 |" in report.table_markdown


def test_report_with_per_example_adds_verdict_gap_closed_forest_plot_and_recommendation():
    per_example = per_example_table()
    evaluation = evaluation_table(per_example)
    without = build_report(evaluation, *inputs())
    report = build_report(evaluation, *inputs(), per_example=per_example)
    assert report.table_markdown == without.table_markdown  # the summary is unchanged
    assert NO_PER_EXAMPLE not in report.markdown
    verdict_at = report.markdown.index("## Verdict")
    assert verdict_at < report.markdown.index("## Which method for my data") < report.markdown.index("## Overlap")
    # every method against topk and gtp against random, at both budgets, for loss and accuracy
    pairs = {(r["budget"], r["method"], r["reference"], r["metric"]) for r in report.verdicts}
    expected = {("gtp", "topk"), ("random", "topk"), ("clusterclip", "topk"), ("gtp", "random")}
    assert pairs == {(b, m, ref, metric) for b in BUDGETS for m, ref in expected for metric in ("loss", "accuracy")}
    by_key = {(r["budget"], r["method"], r["reference"], r["metric"]): r for r in report.verdicts}
    assert by_key[("5pct", "gtp", "topk", "loss")]["verdict"] == "win"
    assert by_key[("5pct", "gtp", "topk", "accuracy")]["verdict"] == "win"
    assert "| 5pct | gtp | topk | loss |" in report.markdown and "3 x 80 | win |" in report.markdown
    gap = {(g["budget"], g["method"], g["metric"]): g for g in report.gaps}
    assert abs(gap[("5pct", "gtp", "loss")]["share"] - (3.0 - 1.6) / 2.0) < 0.05
    assert "share of gap closed" in report.markdown
    assert (
        "At 5pct: gtp beats every method it was compared with (topk, random) on every metric, but was not compared with clusterclip"
        in report.markdown
    )
    for metric in ("loss", "accuracy"):
        png = report.plots[f"verdict_{metric}"]
        assert png.startswith(b"\x89PNG") and len(png) > 1000
        assert f"![verdict_{metric}](verdict_{metric}.png)" in report.markdown


def test_the_at_a_glance_plot_draws_every_method_and_full_data_and_stays_short_enough_to_show_inline():
    import xml.etree.ElementTree as ET

    from gtp_pipeline.assets.metadata import INLINE_MARKDOWN_LIMIT, md_inline_svg
    from gtp_pipeline.core.evaluation.plots import lines_svg

    report = build_report(evaluation_table(per_example_table()), *inputs())
    svg = ET.fromstring(report.glance_svg)
    ns = "{http://www.w3.org/2000/svg}"
    labels = [t.text for t in svg.iter(f"{ns}text")]
    assert {*METHODS, "full"} <= set(labels) and "base" not in labels  # base's loss would flatten the rest
    assert len(list(svg.iter(f"{ns}path"))) == len(METHODS) + 1
    gtp_y, topk_y = (int(labels_y) for labels_y in (_label_y(svg, "gtp"), _label_y(svg, "topk")))
    assert gtp_y > topk_y  # planted: gtp's loss is lowest of the methods, so its line ends lower in the plot
    assert len(md_inline_svg(report.glance_svg).value) < INLINE_MARKDOWN_LIMIT

    # three budgets and longer names still fit; a missing point is skipped, not drawn at NaN
    five = {name: [5.5, 5.4, float("nan")] for name in ("gtp+per_example", "topk", "random", "clusterclip")}
    wide = lines_svg({**five, "full": [3.2, 3.2, 3.2]}, ["0.5%", "1%", "5%"])
    assert "nan" not in wide and md_inline_svg(wide) is not None
    assert md_inline_svg(wide + " " * INLINE_MARKDOWN_LIMIT) is None


def _label_y(svg, name: str) -> str:
    return next(t.get("y") for t in svg.iter("{http://www.w3.org/2000/svg}text") if t.text == name)


def test_report_numbers_table_rows_and_files():
    evaluation = evaluation_table(per_example_table())
    report = build_report(evaluation, *inputs())
    numbers = report.numbers()
    keys = list(numbers)
    assert keys[: len(report.rows)] == [f"loss {r['method']} {r['budget']}" for r in report.rows]  # losses first
    gtp = evaluation.filter((pl.col("method") == "gtp") & (pl.col("budget") == "5pct"))
    assert numbers["loss gtp 5pct"] == float(gtp["loss"].mean())
    assert numbers["accuracy gtp 5pct"] == float(gtp["accuracy"].mean())
    assert list(report.table_rows()[0]) == ["method", "budget", "seeds", "loss", "loss_sd", "accuracy", "examples"]
    files = report.files()
    assert list(files)[0] == "report.md" and files["report.md"] == report.markdown.encode()
    assert {f"{name}.png" for name in report.plots} == set(files) - {"report.md"}


def test_report_numbers_leave_out_an_undefined_accuracy():
    evaluation = evaluation_table(per_example_table()).with_columns(pl.lit(None, pl.Float64).alias("accuracy"))
    numbers = build_report(evaluation, *inputs()).numbers()
    assert numbers and all(key.startswith("loss ") for key in numbers)
