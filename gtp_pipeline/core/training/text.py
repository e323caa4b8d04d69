"""(prompt, response) -> token ids and labels with the loss on response tokens only, plus batching.

Follows LESS's `encode_with_prompt_completion_format` (arXiv 2402.04333, less/data_selection/get_training_dataset.py):
prompt tokens get label -100, so a model's loss is the mean cross-entropy of the response tokens. Two formats:
  - "chat": the tokenizer's chat template (SmolLM2 has one): the prompt is the rendered user turn plus the
    generation header; the response is the rest of the rendered conversation (the answer and its end-of-turn).
  - "plain": "### Instruction:\\n{prompt}\\n\\n### Response:\\n" then the response and EOS, for tokenizers without
    a template (the tiny model's ByT5).
Prompt and response are tokenized separately and concatenated, so no BPE merge crosses the boundary and the
label mask is exact.

Truncation to `max_len` differs from LESS on purpose (LESS cuts from the right, which silently loses the
whole response of a long prompt): the prompt is cut from the *left* first, down to its last
`min_prompt_tokens` tokens (the end of the question and the answer header), then the response is cut from
the right. If no response token fits, the example is not encoded: `Excluded(reason=...)` is returned, never an
exception, so callers exclude and report it.

Batches are right-padded. With right padding a causal model's real positions never attend to padding, so the
forward needs no attention mask and a padded example computes the same values as it would alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

IGNORE_INDEX = -100  # label of a token that is not scored (prompt, padding); torch's cross_entropy default
PLAIN_PROMPT = "### Instruction:\n{prompt}\n\n### Response:\n"

# Exclusion reasons (stable strings: they end up in reports and asset metadata).
EMPTY_RESPONSE = "empty_response"
RESPONSE_TRUNCATED_AWAY = "response_truncated_away"

Format = Literal["auto", "chat", "plain"]


class TextFormatError(ValueError):
    """The chat template renders the prompt in a way that is not a prefix of the full conversation."""


@dataclass(frozen=True, slots=True)
class Encoded:
    """One example as ids; labels are the ids at response positions and IGNORE_INDEX elsewhere."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    n_prompt: int  # prompt tokens kept
    n_response: int  # response tokens kept (all of them carry a label)
    prompt_cut: int  # prompt tokens dropped from the left
    response_cut: int  # response tokens dropped from the right

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass(frozen=True, slots=True)
class Excluded:
    """An example that cannot be scored, and why."""

    reason: str  # EMPTY_RESPONSE | RESPONSE_TRUNCATED_AWAY
    detail: str = ""


def resolve_format(tokenizer: Any, fmt: Format = "auto") -> Literal["chat", "plain"]:
    if fmt == "auto":
        return "chat" if getattr(tokenizer, "chat_template", None) else "plain"
    if fmt == "chat" and not getattr(tokenizer, "chat_template", None):
        raise TextFormatError("fmt='chat' was requested but the tokenizer has no chat_template")
    return fmt


def _split_text(tokenizer: Any, prompt: str, response: str, fmt: Literal["chat", "plain"]) -> tuple[str, str]:
    """The prompt part and the response part of the rendered example, as strings."""
    if fmt == "plain":
        return PLAIN_PROMPT.format(prompt=prompt), response
    user = [{"role": "user", "content": prompt}]
    head = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template([*user, {"role": "assistant", "content": response}], tokenize=False)
    if not full.startswith(head):
        raise TextFormatError(
            f"chat template: prompt rendering {head[-60:]!r} is not a prefix of the full conversation"
        )
    return head, full[len(head) :]


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_example(
    tokenizer: Any,
    prompt: str,
    response: str,
    max_len: int = 128,
    min_prompt_tokens: int = 16,
    fmt: Format = "auto",
) -> Encoded | Excluded:
    """Token ids and labels of one (prompt, response), truncated to max_len; Excluded if nothing is left to score."""
    if max_len < 2:
        raise ValueError(f"max_len must be >= 2 (one prompt token to predict from, one response token), got {max_len}")
    if not response.strip():
        return Excluded(EMPTY_RESPONSE, "the response is empty")
    form = resolve_format(tokenizer, fmt)
    head, tail = _split_text(tokenizer, prompt, response, form)
    p = _ids(tokenizer, head)
    r = _ids(tokenizer, tail)
    if form == "plain":
        if tokenizer.eos_token_id is not None:
            r.append(tokenizer.eos_token_id)  # the model learns to stop; LESS appends EOS the same way
        if tokenizer.bos_token_id is not None:
            p.insert(0, tokenizer.bos_token_id)
    if not r:
        return Excluded(EMPTY_RESPONSE, "the response has no tokens")
    prompt_cut = response_cut = 0
    if len(p) + len(r) > max_len:
        keep_p = min(len(p), max(max_len - len(r), min_prompt_tokens))
        budget_r = max_len - keep_p
        if budget_r <= 0:
            return Excluded(
                RESPONSE_TRUNCATED_AWAY,
                f"max_len={max_len} leaves no room after the prompt's last {keep_p} tokens "
                f"(min_prompt_tokens={min_prompt_tokens})",
            )
        bos = p[:1] if tokenizer.bos_token_id is not None and p and p[0] == tokenizer.bos_token_id else []
        prompt_cut = len(p) - keep_p
        p = bos + p[len(p) - keep_p + len(bos) :] if bos else p[prompt_cut:]
        response_cut = max(0, len(r) - budget_r)
        r = r[:budget_r]
    ids = tuple(p + r)
    labels = (IGNORE_INDEX,) * len(p) + tuple(r)
    return Encoded(ids, labels, len(p), len(r), prompt_cut, response_cut)


def pad_id(tokenizer: Any) -> int:
    """The id used for padding: pad, else eos, else 0 (never scored: its label is IGNORE_INDEX)."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


def collate(examples: Sequence[Encoded], pad: int) -> dict[str, torch.Tensor]:
    """Right-padded batch: input_ids and labels (B, T), lengths (B,)."""
    if not examples:
        raise ValueError("cannot collate an empty batch")
    T = max(len(e) for e in examples)
    input_ids = torch.full((len(examples), T), pad, dtype=torch.long)  # (B, T)
    labels = torch.full((len(examples), T), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    for i, e in enumerate(examples):
        input_ids[i, : len(e)] = torch.tensor(e.input_ids)
        labels[i, : len(e)] = torch.tensor(e.labels)
    return {"input_ids": input_ids, "labels": labels, "lengths": torch.tensor([len(e) for e in examples])}


def length_buckets(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (sorted longest first, ties by index): little padding,
    and a deterministic composition for a given input."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[k : k + batch_size] for k in range(0, len(order), batch_size)]
