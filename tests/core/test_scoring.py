"""Scoring: the evaluation table as a reader sees it, and the score cache."""

import polars as pl

from gtp_pipeline.core.evaluation.scoring import BASE_SEED, RESULT_COLUMNS, result_rows


def test_the_base_models_seed_is_an_empty_cell_and_only_the_result_columns_are_kept():
    table = pl.DataFrame(
        {"run": ["base", "gtp-5pct"], "method": ["base", "gtp"], "seed": [BASE_SEED, 0], "loss": [3.0, 2.0]}
    ).with_columns(pl.Series("accuracy", [0.25, None], pl.Float64))
    assert result_rows(table) == [
        {"run": "base", "seed": None, "loss": 3.0, "accuracy": 0.25},
        {"run": "gtp-5pct", "seed": 0, "loss": 2.0, "accuracy": None},
    ]
    assert list(result_rows(table)[0]) == RESULT_COLUMNS


def base_model_to_score(tiny):
    """(the tiny base model as a ModelToScore that counts its openings, the list of openings, two test examples)."""
    from contextlib import nullcontext

    from gtp_pipeline.core.evaluation.evaluate import EvalExample
    from gtp_pipeline.core.evaluation.scoring import ModelToScore

    opened = []

    def open_model():
        opened.append(1)
        return nullcontext(tiny.model)

    examples = [EvalExample("e1", "Count to 2.", "1 2"), EvalExample("e2", "Count to 3.", "1 2 3")]
    return ModelToScore("base", BASE_SEED, "ck1", open_model), opened, examples


def test_the_pipelines_score_cache_reads_back_only_whole_files_of_the_same_test_set(tmp_path, tiny):
    """cached_score follows the variant study's rule (read_scores): a damaged file or another test set is scored
    again, a whole one is read back without opening the model."""
    from gtp_pipeline.core.evaluation.evaluate import EvalConfig
    from gtp_pipeline.core.evaluation.scoring import cached_score

    model, opened, examples = base_model_to_score(tiny)
    config = EvalConfig(max_len=32)
    first = cached_score(model, tiny.tokenizer, examples, config, "cpu", tmp_path, "set-a")
    assert [r["example_id"] for r in first["per_example"]] == ["e1", "e2"] and len(opened) == 1
    assert cached_score(model, tiny.tokenizer, examples, config, "cpu", tmp_path, "set-a") == first
    assert len(opened) == 1  # read back
    (cache,) = tmp_path.iterdir()
    cache.write_text(cache.read_text()[:40])  # cut short, as by a kill mid-write on a store without renames
    again = cached_score(model, tiny.tokenizer, examples, config, "cpu", tmp_path, "set-a")
    assert len(opened) == 2 and again["loss"] == first["loss"]
    cached_score(model, tiny.tokenizer, examples, config, "cpu", tmp_path, "set-b")  # another test set
    assert len(opened) == 3 and len(list(tmp_path.iterdir())) == 2


def test_scores_are_cached_per_arithmetic_and_say_which_one_scored_them(tmp_path, tiny):
    """The same adapter and test set scored in bf16 and fp32 are two cached results, each naming its numerics: a
    study resumed on other hardware or precision scores again instead of pairing scores from two arithmetics."""
    import torch

    from gtp_pipeline.core.evaluation.evaluate import EvalConfig, scoring_numerics
    from gtp_pipeline.core.evaluation.scoring import cached_score

    bf16, fp32 = EvalConfig(max_len=32, precision="bf16"), EvalConfig(max_len=32, precision="fp32")
    label = scoring_numerics(bf16, "cpu")
    assert label.startswith(f"cpu {torch.backends.cpu.get_cpu_capability()}")
    assert ", bf16, " in label and label.endswith(f"torch {torch.__version__}")
    assert scoring_numerics(fp32, "cpu") == label.replace(", bf16, ", ", fp32, ")

    model, opened, examples = base_model_to_score(tiny)
    in_bf16 = cached_score(model, tiny.tokenizer, examples, bf16, "cpu", tmp_path, "set-a")
    in_fp32 = cached_score(model, tiny.tokenizer, examples, fp32, "cpu", tmp_path, "set-a")
    assert len(opened) == 2 and len(list(tmp_path.iterdir())) == 2
    assert in_bf16["numerics"] == label and in_fp32["numerics"] == scoring_numerics(fp32, "cpu")
    assert cached_score(model, tiny.tokenizer, examples, bf16, "cpu", tmp_path, "set-a") == in_bf16
    assert len(opened) == 2  # each read back from its own file
