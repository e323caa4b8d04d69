"""Target-task evaluation: mean response-token loss, and multiple-choice accuracy by option log-likelihood.

For every test example, `loss` is the mean cross-entropy of its reference response's tokens given the
prompt (the same loss LESS trains and selects with); the reported loss is the mean over examples, so
each example weighs the same whatever its length. For a multiple-choice example each option is scored
as a response, by the *sum* of its tokens' log-probabilities (the "acc" of lm-evaluation-harness), and
the prediction is the best option (ties go to the first). Options that do not fit `max_len` are scored
on what fits; an example none of whose tokens fit is excluded and reported.

One implementation, batched and length-bucketed, computing logits only at response positions
(`core.features.per_example_grads.response_losses`), under `torch.no_grad()`. When the reference response is
one of the options (multiple choice), its option score is reused as its loss instead of scoring it
twice. `precision="bf16"` evaluates a bf16 copy of the frozen weights (as training does on CPU).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from gtp_pipeline.core.features.per_example_grads import autocast, prepare_model, response_losses, weight_sharing_copy
from gtp_pipeline.core.training.text import Encoded, collate, encode_example, length_buckets, pad_id

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
    max_len: int = 128  # as in training: what does not fit is cut the same way (core/training/text.py)
    min_prompt_tokens: int = 16
    batch_size: int = 16
    precision: str = "fp32"  # "bf16": frozen weights cast to bf16 under autocast, ~2x faster on AVX512-BF16 CPUs


def scoring_numerics(config: EvalConfig, device: str) -> str:
    """The arithmetic a score depends on besides the model and the test set: the device's kernels, the precision
    and torch's version. bf16 kernels differ between processors, by as much as some paired differences between
    methods (docs/RESULTS.md), so scores are cached, and compared, per label."""
    if str(device).startswith("cuda"):
        hardware = f"cuda {torch.cuda.get_device_name(torch.device(device))}"
    else:
        hardware = f"cpu {torch.backends.cpu.get_cpu_capability()}{''.join(f' {f}' for f in _bf16_cpu_flags())}"
    return f"{hardware}, {config.precision}, torch {torch.__version__}"


@functools.cache  # the processor does not change within a process; read /proc/cpuinfo once
def _bf16_cpu_flags() -> list[str]:
    """The processor's bf16 instruction sets (Linux's /proc/cpuinfo; none elsewhere): oneDNN's bf16 path uses them."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []
    return sorted({"avx512_bf16", "amx_bf16"} & set(flags))


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
    if config.precision == "bf16":
        model = prepare_model(weight_sharing_copy(model), "bf16")  # the caller's model stays as it was
    model.eval()
    option_pairs, owners = [], []
    for i, e in enumerate(examples):
        for c in e.choices:
            option_pairs.append((e.prompt, c))
            owners.append(i)
    # the reference response is scored as an option when it is one; only the others need their own pass
    own = [i for i, e in enumerate(examples) if e.response not in e.choices]
    with autocast(config.precision, device):
        scores = _score(
            model, tokenizer, option_pairs + [(examples[i].prompt, examples[i].response) for i in own], config, device
        )
    option_scores, own_scores = scores[: len(option_pairs)], dict(zip(own, scores[len(option_pairs) :], strict=True))
    refs: list[tuple[float, int] | None] = [None] * len(examples)
    sums: dict[int, list[float]] = {}
    for i, score in zip(owners, option_scores, strict=True):
        sums.setdefault(i, []).append(math.inf if score is None else score[0] * score[1])  # sum NLL of the option
        if examples[i].choices[len(sums[i]) - 1] == examples[i].response:
            refs[i] = score
    for i, score in own_scores.items():
        refs[i] = score
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
