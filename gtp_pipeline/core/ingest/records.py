"""The record types every data source yields, and the reasons a record can be refused.

A source never decides whether a record is valid: it yields what it read (`RawRecord`) with its
origin, and `core.ingest.corpus` normalizes it into an example or a reject. That keeps every source small
and puts the validation rules in one place.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One input row as read, before validation.

    Attributes:
        source: logical source name ("chatterbot", "natural_instructions", or the user's file stem).
        origin: where it came from: a file path, or a package path for packaged data.
        row: 1-based line number (JSONL), or 1-based row/element number (Parquet, packaged sources).
        fields: the decoded object; None when it could not be decoded.
        error: a reason code from `RejectReason` when the row could not be decoded at all.
        detail: free text that explains `error` (the parser's message, the offending bytes).
    """

    source: str
    origin: str
    row: int
    fields: dict[str, Any] | None = None
    error: str | None = None
    detail: str = ""


class RejectReason:
    """Reason codes in `corpus_rejects.reason` and `target_rejects.reason`; one constant per way a row is refused."""

    UNREADABLE_FILE = "unreadable_file"  # the file itself could not be opened or parsed
    INVALID_UTF8 = "invalid_utf8"
    MALFORMED_JSON = "malformed_json"
    NOT_AN_OBJECT = "not_an_object"  # valid JSON, but not a {...} object
    UNKNOWN_SCHEMA = "unknown_schema"  # neither prompt/response nor messages
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    BAD_MESSAGES = "bad_messages"  # a messages list without a user turn followed by an assistant turn
    EMPTY_TEXT = "empty_text"  # nothing visible: empty, whitespace or zero-width characters only
    CONTROL_CHARACTER = "control_character"  # NUL or another C0 control character (tab and line breaks are text)
    TOO_LONG = "too_long"
    DUPLICATE = "duplicate"  # exact duplicate of an earlier example, dropped by config
    TARGET_CONTAMINATION = "target_contamination"  # the prompt is one of the target task's prompts
    # Target rows only:
    BAD_VALUE = "bad_value"  # the right type, not an allowed value (an unknown split, answer_index out of range)
    RESPONSE_MISMATCH = "response_mismatch"  # a response that is not the choice answer_index marks
    SURPLUS = "surplus"  # valid, but beyond the n_dev + n_test rows the seeded split draws for its subtask

    ALL = (
        UNREADABLE_FILE,
        INVALID_UTF8,
        MALFORMED_JSON,
        NOT_AN_OBJECT,
        UNKNOWN_SCHEMA,
        MISSING_FIELD,
        WRONG_TYPE,
        BAD_MESSAGES,
        EMPTY_TEXT,
        CONTROL_CHARACTER,
        TOO_LONG,
        DUPLICATE,
        TARGET_CONTAMINATION,
        BAD_VALUE,
        RESPONSE_MISMATCH,
        SURPLUS,
    )


@dataclass(frozen=True, slots=True)
class Example:
    """A validated prompt/response pair, not yet given its id."""

    source: str
    task: str
    prompt: str
    response: str
    origin: str
    row: int
    source_id: str | None = None  # the id the user's file gave the row, kept for their joins


class TextExample(NamedTuple):
    """An example as training and featurizing read it: its id and its text. A tuple, so (id, prompt, response)
    unpacks as before."""

    example_id: str
    prompt: str
    response: str


def text_examples(frame: Any) -> list[TextExample]:
    """The rows of a pool or target table (example_id, prompt and response columns), in order."""
    columns = (frame["example_id"], frame["prompt"], frame["response"])
    return [TextExample(*row) for row in zip(*columns, strict=True)]


@dataclass(frozen=True, slots=True)
class Reject:
    """A refused input row and why."""

    source: str
    origin: str
    row: int
    reason: str
    detail: str = ""


def summarize_rejects(rejects: Sequence[Reject], first: int = 5) -> str:
    """Counts by reason and the first few rows (origin:row reason detail): one line, whatever the number of rows."""
    counts = ", ".join(f"{reason}: {n}" for reason, n in Counter(r.reason for r in rejects).most_common())
    shown = "; ".join(f"{r.origin}:{r.row} {r.reason} {r.detail}" for r in rejects[:first])
    more = f"; ... {len(rejects) - first} more" if len(rejects) > first else ""
    return f"{len(rejects)} row(s) refused ({counts}): {shown}{more}"


@dataclass(frozen=True, slots=True)
class TargetExample:
    """One example of the target task.

    `choices`/`answer_index` are set for multiple-choice tasks, scored by log-likelihood of each
    option; `response` is then the correct option's text.
    """

    task: str
    subtask: str
    prompt: str
    response: str
    choices: tuple[str, ...] = field(default_factory=tuple)
    answer_index: int = -1
    origin: str = ""
    row: int = 0
