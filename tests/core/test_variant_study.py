"""The variant study: method specs, one real fine-tune and evaluation per (method, seed), resume, and its report."""

from dataclasses import replace

import numpy as np
import polars as pl
import pytest

from gtp_pipeline.core.evaluation.evaluate import EvalConfig, EvalExample, evaluate
from gtp_pipeline.core.evaluation.variant_study import parse_method, run_study, select, study_markdown
from gtp_pipeline.core.features.target_trajectory import TargetTrajectory
from gtp_pipeline.core.features.trajectory import DenseTrajectories
from gtp_pipeline.core.selection.gtp_variants import GTPVariant
from gtp_pipeline.core.training.lora_train import LoraTrainConfig, load_lora_model, train_lora

pytestmark = pytest.mark.usefixtures("one_thread")  # fixtures: tests/core/conftest.py


def test_method_specs_parse_into_variants():
    m = parse_method("gtp+per_example+centered+weights")
    assert (m.base, m.variant, m.fill, m.weighted) == ("gtp", GTPVariant("per_example", True), "target", True)
    assert parse_method("gtp+residual_fill").fill == "residual"
    assert parse_method("topk").base == "topk"
    for bad in ("gtp+per_example+per_subtask", "gtp+centred", "topk+centered", "lesss", "gtp+weights+weights"):
        with pytest.raises(ValueError):
            parse_method(bad)
    assert parse_method("gtp+in_domain").variant == GTPVariant("pool_mean")
    assert parse_method("gtp+swaps=3+pool_factor=0.5").pursuit == (("swap_rounds", 3), ("pool_factor", 0.5))
    for bad, says in (
        ("gtp+swaps=x", "swaps takes an integer"),
        ("gtp+pool_factor=0", "pool_factor must be > 0"),
        ("gtp+swaps=1+swaps=2", "each at most once"),
        ("gtp+swap=1", "swaps=<number>"),
        ("gtp+in_domain+per_example", "choose one of"),
    ):
        with pytest.raises(ValueError, match=says):
            parse_method(bad)


def test_in_domain_matches_the_pool_mean_and_pursuit_settings_reach_the_pursuit():
    from gtp_pipeline.core.selection.pursuit import PursuitConfig, gtp

    view, target, per_example, _ = pool(n=60, d=16)
    A = view.gather(np.arange(60)).astype(np.float64)
    in_domain = select(parse_method("gtp+in_domain"), view, target, per_example, 8)
    oracle = gtp(view, A.mean(axis=0), PursuitConfig(budget=8))  # the mean computed here, independently
    assert np.array_equal(in_domain.indices, oracle.indices)
    assert not np.array_equal(in_domain.indices, select(parse_method("gtp"), view, target, per_example, 8).indices)
    no_swaps = select(parse_method("gtp+swaps=0"), view, target, per_example, 8)
    direct = gtp(view, target.vector, PursuitConfig(budget=8, swap_rounds=0))
    assert np.array_equal(no_swaps.indices, direct.indices) and np.allclose(no_swaps.weights, direct.weights)


def pool(n=24, d=12, seed=0):
    """Trajectories of a pool with a cluster near the target, corpus rows aligned with them, and the target."""
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(n, d))
    A[:6] += 3 * np.eye(d)[0]  # the related part of the pool
    A /= np.linalg.norm(A, axis=1, keepdims=True)
    corpus = [
        {
            "example_id": f"p{i:02d}",
            "prompt": f"Count to {i % 5 + 1}." if i < 6 else f"Name colour number {i}.",
            "response": " ".join(str(k) for k in range(1, i % 5 + 2)) if i < 6 else f"colour {i}",
            "source": "counting" if i < 6 else "colours",
            "content_hash": f"h{i}",
        }
        for i in range(n)
    ]
    dev = np.eye(d)[[0, 0]] + 0.1 * rng.normal(size=(2, d))
    dev /= np.linalg.norm(dev, axis=1, keepdims=True)
    target = TargetTrajectory(dev.mean(axis=0, keepdims=True), np.array(["t"]), np.array([2]))
    per_example = TargetTrajectory(dev, np.array(["0", "1"]), np.array([1, 1]))
    return DenseTrajectories(A.astype(np.float32)), target, per_example, corpus


def test_study_trains_every_method_and_seed_resumes_and_reports(tmp_path, tiny):
    view, target, per_example, corpus = pool()
    tests = [EvalExample(f"t{i}", f"Count to {i + 1}.", " ".join(str(k) for k in range(1, i + 2))) for i in range(4)]
    recipe = LoraTrainConfig(lora_r=4, lora_alpha=16, lr=2e-2, epochs=2, batch_size=4, max_len=64)
    calls = []

    def finetune(rows, weights, seed, folder):
        calls.append((tuple(rows), seed))
        if not rows:
            return tiny.model
        examples = [(corpus[i]["example_id"], corpus[i]["prompt"], corpus[i]["response"]) for i in rows]
        result = train_lora(
            tiny.model, tiny.tokenizer, examples, folder, replace(recipe, seed=seed), tiny.model_id, weights=weights
        )
        return load_lora_model(tiny.model, result.checkpoints[-1].path)

    def score(model):
        scored = evaluate(model, tiny.tokenizer, tests, EvalConfig(max_len=64))
        return [
            {"example_id": r["example_id"], "loss": r["loss"], "correct": r["correct"]} for r in scored.per_example
        ]

    methods = [parse_method(m) for m in ("gtp", "gtp+weights", "gtp+swaps=0", "topk", "random")]
    same = select(methods[0], view, target, per_example, 4).indices
    assert np.array_equal(select(methods[2], view, target, per_example, 4).indices, same)  # a twin of gtp
    args = (view, target, per_example, corpus, methods, [("n4", 4)], [0, 1], [0], tmp_path, finetune, score)
    held_out = target.vector + 0.1  # stands in for the test split's gradient: it only describes selections
    result = run_study(*args, held_out=held_out)
    assert len(calls) == 1 + 1 + (len(methods) - 1) * 2  # base, full, every method x seed; the twin trained once
    assert calls[0] == ((), -1) and calls[-1] == (tuple(range(len(corpus))), 0)  # base first, the long full run last
    scores = pl.DataFrame(result.per_example, schema_overrides={"loss": pl.Float64, "correct": pl.Boolean})
    assert scores.height == (len(calls) + 2) * len(tests)  # the twin has rows of its own
    assert (
        scores.filter(pl.col("method") == "full")["loss"].mean()
        < scores.filter(pl.col("method") == "base")["loss"].mean()
    )  # training on the pool taught counting
    seeds = scores.filter(pl.col("method") == "gtp").group_by("seed").agg(pl.col("loss").mean()).sort("seed")
    assert seeds["loss"][0] != seeds["loss"][1]  # seeds are real, different fine-tunes
    by_method = {r["method"]: r for r in result.selections}
    assert all(r["fitted"] + r["fill"] == 4 for r in result.selections if r["method"].startswith("gtp"))
    assert by_method["topk"]["fitted"] is None
    assert by_method["topk"]["jaccard_topk"] is None and by_method["gtp"]["jaccard_topk"] is not None
    assert "counting" in by_method["gtp"]["sources"]
    for r in result.selections:  # top-k has the best mean cosine with the target it ranked by
        assert -1 <= r["dev_sum_cosine"] <= 1 and -1 <= r["test_mean_cosine"] <= 1
        assert r["dev_mean_cosine"] <= by_method["topk"]["dev_mean_cosine"] + 1e-9
    assert by_method["gtp"]["test_sum_cosine"] != by_method["gtp"]["dev_sum_cosine"]

    calls.clear()
    again = run_study(*args, held_out=held_out)  # everything finished: read back, nothing trained or scored again
    assert calls == [] and again.per_example == result.per_example

    twin = scores.filter(pl.col("method") == "gtp+swaps=0").drop("run", "method")
    assert twin.equals(scores.filter(pl.col("method") == "gtp").drop("run", "method"))  # its scores, read back
    markdown, plots = study_markdown(pl.DataFrame(result.selections), scores, "counting", "python -m ...", "cpu, fp32")
    for section in (
        "## What each method picked",
        "## Verdict",
        "## Which method for my data",
        "Scored with: cpu, fp32",
    ):
        assert section in markdown
    assert "gtp+weights" in markdown and plots


def test_scores_are_cached_per_test_set_and_a_damaged_cache_is_scored_again(tmp_path):
    from gtp_pipeline.core.evaluation.variant_study import scores_key, train_and_score

    trained, scored = [], []

    def train(folder):
        trained.append(folder)
        return "model"

    def score(model):
        scored.append(model)
        return [{"example_id": "e1", "loss": 1.5, "correct": None}]

    a, b = scores_key("social_iqa|m", ["e1", "e2"]), scores_key("gsm8k|m", ["e1", "e2"])
    assert a == scores_key("social_iqa|m", ["e2", "e1"]) and a != b
    first = train_and_score(tmp_path, train, score, a)
    assert train_and_score(tmp_path, train, score, a) == first and len(scored) == 1  # read back
    train_and_score(tmp_path, train, score, b)  # the same adapter on another target: scored apart
    assert len(scored) == 2 and sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"scores-{a}.json", f"scores-{b}.json"]
    )
    (tmp_path / f"scores-{a}.json").write_text('{"test_key": "' + a + '", "per_example": [{"loss": 1}]')  # cut short
    assert train_and_score(tmp_path, train, score, a) == first and len(scored) == 3


def test_support_only_trains_on_the_fitted_examples_repeated_to_the_budget(tmp_path):
    m = parse_method("gtp+support+per_example")
    assert m.support_only and m.variant == GTPVariant("per_example")
    for bad in ("gtp+support+weights", "gtp+support+residual_fill"):
        with pytest.raises(ValueError, match="support drops the fill"):
            parse_method(bad)
    view, target, per_example, corpus = pool(n=40, d=6)
    k = 20
    full = select(parse_method("gtp"), view, target, per_example, k)
    assert full.fill > 0  # saturated: the default pads the budget with fill
    trained = {}

    def finetune(rows, weights, seed, folder):  # records what each run trains on; scoring reads it back
        trained[folder.parent.name] = list(rows)
        return rows

    def score(rows):
        return [{"example_id": "t0", "loss": float(len(set(rows))), "correct": None}]

    methods = [parse_method(s) for s in ("gtp", "gtp+support")]
    result = run_study(view, target, per_example, corpus, methods, [("k20", k)], [0], [], tmp_path, finetune, score)
    fitted = full.indices[: k - full.fill].tolist()
    assert sorted(trained["gtp"]) == sorted(full.indices.tolist())
    assert len(trained["gtp+support"]) == k and set(trained["gtp+support"]) == set(fitted)
    support_row = next(r for r in result.selections if r["method"] == "gtp+support")
    assert (support_row["k"], support_row["fitted"], support_row["fill"]) == (len(fitted), len(fitted), 0)
    assert support_row["exact_duplicates"] == 0  # described by its distinct examples, not by the repeats
