"""Evaluation of a model whose next-token distribution is known in closed form."""

import math

import numpy as np
import pytest
import torch
from transformers import ByT5Tokenizer, LlamaConfig, LlamaForCausalLM

from gtp_pipeline.core.evaluation.evaluate import EvalConfig, EvalExample, evaluate

VOCAB = 384  # ByT5: 3 special ids + 256 bytes, padded


def known_model(logits: np.ndarray) -> LlamaForCausalLM:
    """A real Llama whose every position predicts softmax(logits), whatever the input.

    Attention and MLP outputs are zeroed, every token embeds to the same vector e, so the final hidden state
    is RMSNorm(e) = h everywhere; lm_head rows are logits[v] * h / |h|^2, so the logits are exactly `logits`.
    """
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        e = torch.linspace(0.5, 2.0, cfg.hidden_size)
        model.model.embed_tokens.weight.copy_(e.expand(VOCAB, -1))
        h = e / torch.sqrt((e**2).mean() + cfg.rms_norm_eps) * model.model.norm.weight
        model.lm_head.weight.copy_(torch.tensor(logits, dtype=torch.float32)[:, None] * h[None, :] / (h @ h))
    return model


def response_ids(text: str) -> list[int]:
    return [b + 3 for b in text.encode()] + [1]  # ByT5 bytes are offset by 3; the plain format ends with EOS (1)


def test_loss_and_accuracy_equal_the_closed_form():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, VOCAB)
    logp = logits - (np.log(np.exp(logits - logits.max()).sum()) + logits.max())  # log-softmax, by hand
    nll = lambda text: -sum(logp[i] for i in response_ids(text))  # noqa: E731
    examples = [
        EvalExample("a", "Pick one:", "yes", ("yes", "no", "maybe"), 0),
        EvalExample("b", "Which?", "blue", ("red", "blue"), 1),
        EvalExample("c", "Free text", "an open answer"),
    ]
    result = evaluate(known_model(logits), ByT5Tokenizer(), examples, EvalConfig(max_len=64, batch_size=2))
    expected_losses = [nll(e.response) / len(response_ids(e.response)) for e in examples]
    assert result.loss == pytest.approx(np.mean(expected_losses), abs=1e-5)
    for row, want in zip(result.per_example, expected_losses, strict=True):
        assert row["loss"] == pytest.approx(want, abs=1e-5)
    predicted = [int(np.argmin([nll(c) for c in e.choices])) for e in examples[:2]]
    assert [r["predicted"] for r in result.per_example[:2]] == predicted
    assert result.accuracy == pytest.approx(
        np.mean([p == e.answer_index for p, e in zip(predicted, examples, strict=False)])
    )
    assert result.n_choice == 2 and result.n_loss == 3


def test_uniform_model_has_loss_log_v_and_prefers_the_shortest_option():
    result = evaluate(
        known_model(np.zeros(VOCAB)), ByT5Tokenizer(), [EvalExample("x", "Q", "long answer", ("long answer", "ok"), 0)]
    )
    assert result.loss == pytest.approx(math.log(VOCAB), abs=1e-5)
    assert result.per_example[0]["predicted"] == 1 and result.accuracy == 0.0


def test_examples_that_cannot_fit_are_excluded_and_reported():
    result = evaluate(
        known_model(np.zeros(VOCAB)),
        ByT5Tokenizer(),
        [EvalExample("x", "Q" * 400, "A")],
        EvalConfig(max_len=8, min_prompt_tokens=8),
    )
    assert result.n_loss == 0 and math.isnan(result.loss)
    assert result.excluded == [("x", "response_truncated_away")]


def test_bf16_evaluation_stays_close_to_fp32_and_leaves_the_model_fp32():
    from gtp_pipeline.core.training.models import tiny_model

    loaded = tiny_model()
    examples = [EvalExample(str(i), f"Question {i}: pick one.", "yes", ("yes", "no", "maybe so"), 0) for i in range(6)]
    fp32 = evaluate(loaded.model, loaded.tokenizer, examples, EvalConfig(max_len=64))
    bf16 = evaluate(loaded.model, loaded.tokenizer, examples, EvalConfig(max_len=64, precision="bf16"))
    assert bf16.loss == pytest.approx(fp32.loss, rel=0.01)
    assert next(loaded.model.parameters()).dtype == torch.float32


def test_scoring_a_run_caches_each_model_once_and_tables_every_test_example(tmp_path):
    from contextlib import nullcontext

    from gtp_pipeline.core.evaluation.scoring import BASE_SEED, ModelToScore, score_models

    opened: list[str] = []

    def opener(name: str, logits: np.ndarray):
        def open_model():
            opened.append(name)
            return nullcontext(known_model(logits))

        return open_model

    examples = [EvalExample("a", "Pick:", "yes", ("yes", "no"), 0), EvalExample("b", "Say", "blue")]
    models = [
        ModelToScore("base", BASE_SEED, "base-x", opener("base", np.zeros(VOCAB))),
        ModelToScore("gtp-5pct", 1, "ckpt-1", opener("gtp", np.linspace(-1, 1, VOCAB)), {"examples": 7, "draws": 14}),
    ]
    score = lambda: score_models(models, ByT5Tokenizer(), examples, EvalConfig(max_len=64), "cpu", tmp_path, "t1")  # noqa: E731
    table, per_example = score()
    assert opened == ["base", "gtp"]
    assert table["loss"][0] == pytest.approx(math.log(VOCAB), abs=1e-5)  # uniform model: log V per token
    assert table.select("run", "method", "budget", "seed", "examples", "draws").rows() == [
        ("base", "base", "-", -1, None, None),
        ("gtp-5pct", "gtp", "5pct", 1, 7, 14),
    ]
    assert per_example.height == 4 and set(per_example["example_id"]) == {"a", "b"}
    import polars as pl

    means = per_example.group_by("run").agg(pl.col("loss").mean()).sort("run")["loss"].to_list()
    assert means == pytest.approx(table.sort("run")["loss"].to_list())

    again, _ = score()  # every result is cached: no model is loaded again, the table is the same
    assert opened == ["base", "gtp"] and again.equals(table)
    score_models(models[:1], ByT5Tokenizer(), examples[:1], EvalConfig(max_len=64), "cpu", tmp_path, "t2")
    assert opened == ["base", "gtp", "base"]  # another test set is scored apart
