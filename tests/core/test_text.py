"""Text encoding: response-only labels, chat template vs plain format, left-first truncation, exclusion, batching."""

import pytest
import torch

from gtp_pipeline.core.training.models import tiny_tokenizer
from gtp_pipeline.core.training.text import (
    EMPTY_RESPONSE,
    IGNORE_INDEX,
    PLAIN_PROMPT,
    RESPONSE_TRUNCATED_AWAY,
    Encoded,
    Excluded,
    TextFormatError,
    collate,
    encode_example,
    length_buckets,
    resolve_format,
)

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def chat_tok():
    t = tiny_tokenizer()
    t.chat_template = CHAT_TEMPLATE
    return t


def decode(tok, ids):
    return tok.decode(list(ids), skip_special_tokens=False)


def test_plain_format_scores_only_response_tokens(tok):
    enc = encode_example(tok, "What is 2+2?", "Four.", max_len=256)
    assert isinstance(enc, Encoded) and resolve_format(tok) == "plain"
    n_p = enc.n_prompt
    assert decode(tok, enc.input_ids[:n_p]) == PLAIN_PROMPT.format(prompt="What is 2+2?")
    assert all(label == IGNORE_INDEX for label in enc.labels[:n_p])
    assert list(enc.labels[n_p:]) == list(enc.input_ids[n_p:])
    assert enc.input_ids[-1] == tok.eos_token_id  # the model is taught to stop
    assert decode(tok, enc.input_ids[n_p:-1]) == "Four."


def test_chat_template_is_used_when_the_tokenizer_has_one(chat_tok):
    enc = encode_example(chat_tok, "Hi there", "Hello!", max_len=256)
    assert resolve_format(chat_tok) == "chat"
    assert decode(chat_tok, enc.input_ids[: enc.n_prompt]) == "<|user|>\nHi there\n<|assistant|>\n"
    assert decode(chat_tok, enc.input_ids[enc.n_prompt :]) == "Hello!\n"  # answer plus the template's end of turn
    assert enc.labels[: enc.n_prompt] == (IGNORE_INDEX,) * enc.n_prompt


def test_chat_template_that_does_not_extend_the_prompt_is_refused(chat_tok):
    bad = tiny_tokenizer()
    bad.chat_template = (
        "{% for m in messages %}{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}>>{% endif %}"
    )
    with pytest.raises(TextFormatError):
        encode_example(bad, "q", "a", max_len=64)


def test_long_prompt_is_cut_from_the_left_and_response_kept(tok):
    prompt = "".join(f"{i:03d} " for i in range(100))  # 400 bytes
    enc = encode_example(tok, prompt, "ok", max_len=64)
    full = encode_example(tok, prompt, "ok", max_len=10_000)
    assert len(enc) == 64 and enc.prompt_cut == full.n_prompt - enc.n_prompt > 0 and enc.response_cut == 0
    assert (
        enc.input_ids[: enc.n_prompt] == full.input_ids[full.n_prompt - enc.n_prompt : full.n_prompt]
    )  # the end survives
    assert enc.input_ids[enc.n_prompt :] == full.input_ids[full.n_prompt :]


def test_long_response_is_cut_from_the_right_after_the_prompt_floor(tok):
    enc = encode_example(tok, "p" * 100, "r" * 500, max_len=64, min_prompt_tokens=16)
    assert len(enc) == 64 and enc.n_prompt == 16 and enc.n_response == 48
    assert enc.response_cut == 500 + 1 - 48  # +1: EOS
    assert decode(tok, enc.input_ids[enc.n_prompt :]) == "r" * 48


def test_response_truncated_away_is_reported_not_raised(tok):
    short = encode_example(tok, "hi", "answer", max_len=40, min_prompt_tokens=40)  # prompt is 35 tokens: 5 left
    long = encode_example(tok, "a much longer question " * 5, "answer", max_len=40, min_prompt_tokens=40)
    assert isinstance(short, Encoded) and short.n_response == 5
    assert isinstance(long, Excluded) and long.reason == RESPONSE_TRUNCATED_AWAY and "max_len=40" in long.detail


@pytest.mark.parametrize("response", ["", "   \n"])
def test_empty_response_is_excluded(tok, response):
    enc = encode_example(tok, "q", response, max_len=64)
    assert isinstance(enc, Excluded) and enc.reason == EMPTY_RESPONSE


def test_collate_right_pads_and_masks_padding(tok):
    a = encode_example(tok, "q", "short", max_len=64)
    b = encode_example(tok, "question", "a longer answer", max_len=64)
    batch = collate([a, b], pad=0)
    T = max(len(a), len(b))
    assert batch["input_ids"].shape == batch["labels"].shape == (2, T)
    assert batch["lengths"].tolist() == [len(a), len(b)]
    assert batch["input_ids"][0, : len(a)].tolist() == list(a.input_ids)
    assert (batch["labels"][0, len(a) :] == IGNORE_INDEX).all() and (batch["input_ids"][0, len(a) :] == 0).all()
    assert torch.equal(batch["labels"][1], torch.tensor(b.labels))


def test_length_buckets_group_similar_lengths_deterministically():
    lengths = [5, 50, 7, 49, 6, 51, 5]
    buckets = length_buckets(lengths, batch_size=3)
    assert buckets == [[5, 1, 3], [2, 4, 0], [6]]  # longest first, ties by index
    assert sorted(i for b in buckets for i in b) == list(range(7))
    assert length_buckets(lengths, 3) == buckets
    with pytest.raises(ValueError):
        length_buckets(lengths, 0)
