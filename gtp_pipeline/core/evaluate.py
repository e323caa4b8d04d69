"""Target-task evaluation: mean response-token loss, and multiple-choice accuracy by option log-likelihood.

For every test example, `loss` is the mean cross-entropy of its reference response's tokens given the
prompt (the same loss LESS trains and selects with); the reported loss is the mean over examples, so
each example weighs the same whatever its length. For a multiple-choice example each option is scored
as a response, by the *sum* of its tokens' log-probabilities (the "acc" of lm-evaluation-harness), and
the prediction is the best option (ties go to the first). Options that do not fit `max_len` are scored
on what fits; an example none of whose tokens fit is excluded and reported.

One implementation, batched and length-bucketed, computing logits only at response positions
(`core.per_example_grads.response_losses`), under `torch.no_grad()`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from gtp_pipeline.core.per_example_grads import response_losses
from gtp_pipeline.core.text import Encoded, collate, encode_example, length_buckets, pad_id

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalExample:
    example_id: str
    prompt: str
    response: str
    choices: tuple[str, ...] = ()  # empty: not multiple choice
    answer_index: int = -1


@dataclass(frozen=True)
class EvalConfig:
    max_len: int = 128  # as in training: what does not fit is cut the same way (core/text.py)
    min_prompt_tokens: int = 16
    batch_size: int = 16


@dataclass(frozen=True)
class EvalResult:
    loss: float  # mean over examples of the mean response-token NLL (nats/token); nan if none was scored
    n_loss: int
    accuracy: float | None  # share of multiple-choice examples whose best-scored option is the answer
    n_choice: int
    per_example: list[dict[str, Any]] = field(default_factory=list)  # example_id, loss, predicted, correct
    excluded: list[tuple[str, str]] = field(default_factory=list)  # (example_id, reason)


def _score(
    model: Any, tokenizer: Any, pairs: Sequence[tuple[str, str]], config: EvalConfig, device: str
) -> list[tuple[float, int] | None]:
    """(mean NLL, n response tokens) of each (prompt, response); None where nothing fits."""
    encoded = [encode_example(tokenizer, p, r, config.max_len, config.min_prompt_tokens) for p, r in pairs]
    out: list[tuple[float, int] | None] = [None] * len(pairs)
    ok = [i for i, e in enumerate(encoded) if isinstance(e, Encoded)]
    pad = pad_id(tokenizer)
    for bucket in length_buckets([len(encoded[i]) for i in ok], config.batch_size):
        rows = [ok[j] for j in bucket]
        batch = collate([encoded[i] for i in rows], pad)
        losses = response_losses(model, batch["input_ids"].to(device), batch["labels"].to(device))  # (B,)
        for i, loss in zip(rows, losses.tolist(), strict=True):
            out[i] = (loss, encoded[i].n_response)
    return out


@torch.no_grad()
def evaluate(
    model: Any, tokenizer: Any, examples: Sequence[EvalExample], config: EvalConfig = EvalConfig(), device: str = "cpu"
) -> EvalResult:
    """Loss on every example's reference response; accuracy on the multiple-choice ones."""
    model.eval()
    refs = _score(model, tokenizer, [(e.prompt, e.response) for e in examples], config, device)
    option_pairs, owners = [], []
    for i, e in enumerate(examples):
        for c in e.choices:
            option_pairs.append((e.prompt, c))
            owners.append(i)
    option_scores = _score(model, tokenizer, option_pairs, config, device) if option_pairs else []
    sums: dict[int, list[float]] = {}
    for i, score in zip(owners, option_scores, strict=True):
        sums.setdefault(i, []).append(math.inf if score is None else score[0] * score[1])  # sum NLL of the option
    per_example, excluded, losses, correct = [], [], [], []
    for i, e in enumerate(examples):
        row: dict[str, Any] = {"example_id": e.example_id, "loss": None, "predicted": None, "correct": None}
        if refs[i] is None:
            excluded.append((e.example_id, "response_truncated_away"))
        else:
            row["loss"] = refs[i][0]
            losses.append(refs[i][0])
        if e.choices:
            nll = sums[i]
            if all(math.isinf(x) for x in nll):
                excluded.append((e.example_id, "no_option_fits"))
            else:
                row["predicted"] = min(range(len(nll)), key=lambda k: (nll[k], k))
                row["correct"] = row["predicted"] == e.answer_index
                correct.append(row["correct"])
        per_example.append(row)
    if excluded:
        log.warning("%d evaluation examples could not be scored at max_len=%d", len(excluded), config.max_len)
    return EvalResult(
        loss=sum(losses) / len(losses) if losses else math.nan,
        n_loss=len(losses),
        accuracy=sum(correct) / len(correct) if correct else None,
        n_choice=len(correct),
        per_example=per_example,
        excluded=excluded,
    )
