"""Scoring every model of a run on the target's held-out test split: the test examples and settings, one cached
result per (adapter, test set, numerics: the device's kernels, precision and torch version), and the two tables the
report reads (one row per model; one row per model and test example, which the paired verdicts resample)."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from gtp_pipeline.core.config.run_key import RunKey
from gtp_pipeline.core.evaluation.evaluate import EvalConfig, EvalExample, evaluate, scoring_numerics
from gtp_pipeline.core.storage.atomic import write_bytes

log = logging.getLogger(__name__)

CACHE_FORMAT = "v3"  # v3 files name their test set (read_scores checks it); older ones are scored again
BASE_SEED = -1  # the base model's row: it has no fine-tune seed
RESULT_COLUMNS = ["run", "seed", "loss", "accuracy"]  # what a reader of the evaluation table looks at first


@dataclass(frozen=True)
class ModelToScore:
    run: str  # "base" or a fine-tune's run name (core/config/run_key.py)
    seed: int
    checkpoint_id: str  # names the adapter's weights (or the base model), so a cached score is found again
    open: Callable[[], AbstractContextManager[Any]]  # yields the model to score (loaded only on a cache miss)
    facts: dict[str, Any] = field(default_factory=dict)  # what its fine-tune recorded: examples, draws, train_seconds


def eval_inputs(target_examples, settings) -> tuple[list[EvalExample], EvalConfig]:
    """The target's test examples, and the scoring settings every evaluation of them uses."""
    test = target_examples.filter(target_examples["split"] == "test")
    if test.height == 0:
        raise ValueError("the target has no test examples (n_test=0): nothing to evaluate on")
    examples = [
        EvalExample(r["example_id"], r["prompt"], r["response"], tuple(r["choices"]), r["answer_index"])
        for r in test.iter_rows(named=True)
    ]
    config = EvalConfig(
        max_len=settings.gradients.max_len,
        batch_size=settings.budgets.eval_batch_size,
        precision=settings.gradients.train_precision,  # evaluate in the precision the models were trained in
    )
    return examples, config


def read_scores(path, test_key: str) -> dict | None:
    """A model's cached scores at `path` if the file reads back whole and names the same test set, else None: the
    one cache rule of the pipeline's evaluation and the variant study (a damaged file means scoring again)."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError:
        data = None
    rows = data.get("per_example") if isinstance(data, dict) else None
    if (
        isinstance(rows, list)
        and data.get("test_key", "") == test_key
        and all(isinstance(r, dict) and {"example_id", "loss"} <= set(r) for r in rows)
    ):
        return {k: v for k, v in data.items() if k != "test_key"}  # as written: the caller knows its test set
    log.warning("ignoring unreadable %s; scoring again", path)
    return None


def write_scores(path, test_key: str, result: dict) -> None:
    write_bytes(json.dumps({"test_key": test_key, **result}).encode(), path)


def cached_score(
    model: ModelToScore, tokenizer, examples, config: EvalConfig, device, cache_dir, test_key: str
) -> dict:
    """The model's scores on the test set: read from cache_dir when an earlier run computed them with the same
    arithmetic (they are a function of the adapter, the test set and the numerics), else computed and cached."""
    numerics = scoring_numerics(config, device)
    label = hashlib.sha256(numerics.encode()).hexdigest()[:8]
    cache = cache_dir / f"{model.checkpoint_id}-{test_key}-{config.precision}-{label}-{CACHE_FORMAT}.json"
    cached = read_scores(cache, test_key)
    if cached is not None:
        return cached
    with model.open() as net:
        scored = evaluate(net, tokenizer, examples, config, device)
    result = {
        "loss": scored.loss,
        "accuracy": scored.accuracy,
        "n_loss": scored.n_loss,
        "n_choice": scored.n_choice,
        "excluded": len(scored.excluded),
        "numerics": numerics,
        "per_example": [
            {"example_id": e["example_id"], "loss": e["loss"], "correct": e["correct"]} for e in scored.per_example
        ],
    }
    write_scores(cache, test_key, result)
    return result


def score_models(
    models: Sequence[ModelToScore],
    tokenizer,
    examples: Sequence[EvalExample],
    config: EvalConfig,
    device,
    cache_dir,
    test_key: str,
    log: Callable[[str], None] = lambda _: None,
):
    """(the evaluation table: one row per model, the per-example table: one row per model and test example)."""
    import polars as pl

    rows, per_example = [], []
    for model in models:
        result = cached_score(model, tokenizer, examples, config, device, cache_dir, test_key)
        key = RunKey.from_run(model.run, model.seed)
        method, budget = key.method, key.budget_column
        rows.append(
            {
                "run": model.run,
                "method": method,
                "budget": budget,
                "seed": model.seed,
                "loss": result["loss"],
                "accuracy": result["accuracy"],
                "n_test": result["n_loss"],
                "n_choice": result["n_choice"],
                **{k: model.facts.get(k) for k in ("examples", "draws", "train_seconds")},
                "checkpoint_id": model.checkpoint_id,
            }
        )
        per_example += [
            {"run": model.run, "method": method, "budget": budget, "seed": model.seed, **e}
            for e in result["per_example"]
        ]
        log(f"{model.run} seed {model.seed}: loss {result['loss']:.4f}, accuracy {result['accuracy']}")
    numbers = {"accuracy": pl.Float64, "examples": pl.Int64, "draws": pl.Int64, "train_seconds": pl.Float64}
    per_example_schema = {
        "run": pl.String,
        "method": pl.String,
        "budget": pl.String,
        "seed": pl.Int64,
        "example_id": pl.String,
        "loss": pl.Float64,
        "correct": pl.Boolean,
    }
    return pl.DataFrame(rows, schema_overrides=numbers), pl.DataFrame(per_example, schema=per_example_schema)


def result_rows(table) -> list[dict[str, Any]]:
    """The evaluation table's RESULT_COLUMNS as rows for a reader: the base model has no fine-tune seed, so its
    seed is None (an empty cell), not the BASE_SEED sentinel."""
    return [{**r, "seed": r["seed"] if r["seed"] >= 0 else None} for r in table.select(RESULT_COLUMNS).to_dicts()]
