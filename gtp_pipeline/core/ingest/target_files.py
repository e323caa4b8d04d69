"""User target files, row by row: each field checked strictly (nothing is coerced), the first rule a row breaks
becoming its Reject. The rules and what each refuses are listed in core/ingest/targets.py's docstring."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from gtp_pipeline.core.ingest.corpus import clean_text, normalize, text_problem
from gtp_pipeline.core.ingest.records import RawRecord, Reject, RejectReason, TargetExample
from gtp_pipeline.core.ingest.user_files import read_user_files

# User target files: one check per field, each raising _Refused with the reason and a detail that names the
# field and the value; `_file_row` turns the first one into the row's Reject.
SPLITS = ("dev", "test")
SPLIT_RULE = 'accepted: "dev", "test", or absent/null to let the seeded split decide'
MAX_TARGET_CHARS = 100_000  # prompt + response of one target row
_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "object"}


class _Refused(Exception):
    """A rule a row breaks; raised by the field checks below, caught once per row in `_file_row`."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def _quote(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(value: Any) -> str:
    """A value's JSON type and a short quote of it, for reject details: `string '1'`, `number 1.7`."""
    if value is None:
        return "null"
    return f"{_JSON_TYPES.get(type(value), type(value).__name__)} {_quote(value)}"


def _choices(fields: dict[str, Any]) -> tuple[str, ...]:
    """The cleaned choices, or () for a row that is not multiple choice."""
    value = fields.get("choices")
    if value is None:
        return ()
    if not isinstance(value, list):  # a string would otherwise become its characters
        raise _Refused(RejectReason.WRONG_TYPE, f"field 'choices' must be a list of strings, got {_describe(value)}")
    cleaned: list[str] = []
    for i, choice in enumerate(value):
        if not isinstance(choice, str):
            raise _Refused(RejectReason.WRONG_TYPE, f"choices[{i}] must be a string, got {_describe(choice)}")
        text = clean_text(choice)  # the response is cleaned the same way, so the two compare as equals
        if not text:
            raise _Refused(RejectReason.BAD_VALUE, f"choices[{i}] is empty")
        if problem := text_problem(f"choices[{i}]", text):  # the same text rules as prompts and responses
            raise _Refused(*problem)
        if text in cleaned:  # two equal options make the scored answer ambiguous
            raise _Refused(
                RejectReason.BAD_VALUE, f"choices[{i}] repeats choices[{cleaned.index(text)}] {_quote(text)}"
            )
        cleaned.append(text)
    if len(cleaned) < 2:
        raise _Refused(RejectReason.BAD_VALUE, f"field 'choices' needs at least 2 options, got {len(cleaned)}")
    return tuple(cleaned)


def _answer_index(fields: dict[str, Any], choices: tuple[str, ...]) -> int:
    """The index of the right choice; -1 for a row without choices."""
    value = fields.get("answer_index")
    if not choices:
        if value is not None:
            raise _Refused(RejectReason.BAD_VALUE, f"answer_index without choices (got {_describe(value)})")
        return -1
    if "answer_index" not in fields:
        raise _Refused(RejectReason.MISSING_FIELD, "field 'answer_index' is missing; a row with choices needs it")
    if isinstance(value, bool) or not isinstance(value, int):  # "1", 1.7 and true are not 1
        raise _Refused(RejectReason.WRONG_TYPE, f"field 'answer_index' must be an integer, got {_describe(value)}")
    if not 0 <= value < len(choices):
        raise _Refused(RejectReason.BAD_VALUE, f"answer_index {value} is outside choices 0..{len(choices) - 1}")
    return value


def _given_split(fields: dict[str, Any]) -> str | None:
    """The split the row asks for, or None to let the seeded split decide."""
    value = fields.get("split")
    if value is None:
        return None
    if not isinstance(value, str):
        raise _Refused(
            RejectReason.WRONG_TYPE, f"field 'split' must be a string, got {_describe(value)}; {SPLIT_RULE}"
        )
    if value not in SPLITS:  # case-sensitive: "DEV" or "train" is a mistake to report, not to guess at
        raise _Refused(RejectReason.BAD_VALUE, f"split {_quote(value)} is not accepted; {SPLIT_RULE}")
    return value


def _subtask(fields: dict[str, Any], default: str) -> str:
    value = fields.get("subtask")
    if value is None:
        return default
    if not isinstance(value, str):
        raise _Refused(RejectReason.WRONG_TYPE, f"field 'subtask' must be a string, got {_describe(value)}")
    if not value.strip():
        raise _Refused(RejectReason.BAD_VALUE, "field 'subtask' is empty; give a name, or null for the row's task")
    return value


def _file_row(record: RawRecord) -> tuple[TargetExample, str | None] | Reject:
    """One user target row checked by every rule of the module docstring: an example with its split, or why not."""
    if record.error is not None:
        return normalize(record, MAX_TARGET_CHARS)  # the reader's own reject
    fields = record.fields or {}
    try:
        choices = _choices(fields)
        answer = _answer_index(fields, choices)
        split = _given_split(fields)
        if choices and fields.get("response") is None:
            # A multiple-choice row may leave out its response: it is the marked choice.
            record = dataclasses.replace(record, fields={**fields, "response": choices[answer]})
        item = normalize(record, MAX_TARGET_CHARS)
        if isinstance(item, Reject):
            return item
        subtask = _subtask(fields, item.task)
        if choices and item.response != choices[answer]:
            raise _Refused(
                RejectReason.RESPONSE_MISMATCH,
                f"response {_quote(item.response)} is not choices[{answer}] {_quote(choices[answer])}",
            )
    except _Refused as refused:
        return Reject(record.source, record.origin, record.row, refused.reason, refused.detail)
    example = TargetExample(
        Path(record.origin).stem, subtask, item.prompt, item.response, choices, answer, record.origin, record.row
    )
    return example, split


def file_examples(files: tuple[str, ...]) -> tuple[list[tuple[TargetExample, str | None]], list[Reject]]:
    """Examples from the user's target files, with the split each row asks for (or None), and the refused rows."""
    out, rejects = [], []
    for record in read_user_files(files):
        row = _file_row(record)
        if isinstance(row, Reject):
            rejects.append(row)
        else:
            out.append(row)
    return out, rejects
