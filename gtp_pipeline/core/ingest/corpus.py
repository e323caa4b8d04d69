"""Normalize raw records into the pool table (raw_corpus) and the table of refused rows (corpus_rejects).

Rules, in order (first failure wins, and names the reason):
  1. a record the reader could not decode keeps its reader error (invalid_utf8, malformed_json, ...);
  2. the shape must be prompt/response or chat `messages` (unknown_schema, missing_field, wrong_type,
     bad_messages);
  3. text is NFC-normalized and stripped; it must have a visible character (empty_text: empty, or only
     whitespace and zero-width/format characters), no NUL or other C0 control character except tab, line
     feed, carriage return and form feed (control_character: "\u0000" in JSON decodes to a NUL that C
     tools and tokenizers treat as an end of text), be encodable as UTF-8 (invalid_utf8: lone surrogates
     from JSON escapes) and at most `max_chars` long (too_long);
  4. a prompt that is one of the target task's prompts is target contamination: refused or flagged;
  5. an exact duplicate (same prompt and response) of an earlier example is refused or flagged.

Ids: `content_hash` hashes the normalized text; `example_id` hashes (source, content_hash, k), k the
number of identical earlier rows of that source. Both depend only on content, so they are stable under
reordering and re-ingestion; the table is sorted by example_id for the same reason.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from gtp_pipeline.core.ingest.records import Example, RawRecord, Reject, RejectReason, summarize_rejects

USER_ROLES = ("user", "human")
ASSISTANT_ROLES = ("assistant", "gpt", "model")
_WORD_RE = re.compile(r"\w+|[^\w\s]")
# Invisible: whitespace, and the format characters people paste by accident (zero-width space/joiners, word joiner,
# BOM, soft hyphen, bidi marks). Text with nothing else is empty.
_VISIBLE_RE = re.compile("[^\\s\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff]")
_CONTROL_RE = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f]")  # C0 controls and DEL, but not \t \n \f \r

CORPUS_COLUMNS = (
    "example_id",
    "content_hash",
    "source",
    "task",
    "prompt",
    "response",
    "n_tokens",
    "origin",
    "row",
    "source_id",
    "is_duplicate",
    "contaminated",
)
REJECT_COLUMNS = ("source", "origin", "row", "reason", "detail")


@dataclass(frozen=True)
class CorpusConfig:
    """How raw records become the pool."""

    max_chars: int = 20_000  # prompt + response; longer rows are refused (too_long), never truncated silently
    duplicates: Literal["keep_first", "keep_all"] = "keep_first"  # keep_all flags copies in is_duplicate
    contamination: Literal["exclude", "flag"] = "exclude"  # flag keeps the row with contaminated=True


def content_hash(prompt: str, response: str) -> str:
    """Hash of the normalized text of an example (32 hex chars)."""
    return hashlib.sha256(f"{prompt}\x1e{response}".encode()).hexdigest()[:32]


def prompt_key(prompt: str) -> str:
    """The form in which prompts are compared for contamination: case- and whitespace-insensitive."""
    return " ".join(prompt.lower().split())


def count_tokens(text: str) -> int:
    """Words plus punctuation marks: a model-independent length (the model's tokenizer comes later)."""
    return len(_WORD_RE.findall(text))


def clean_text(text: str) -> str:
    return unicodedata.normalize("NFC", text).strip()


def text_problem(name: str, text: str) -> tuple[str, str] | None:
    """(reason, detail) when cleaned `text` breaks rule 3 of the module docstring (length aside), else None."""
    if not _VISIBLE_RE.search(text):
        return RejectReason.EMPTY_TEXT, f"{name} is empty" if not text else f"{name} has no visible character"
    if control := _CONTROL_RE.search(text):
        return (
            RejectReason.CONTROL_CHARACTER,
            f"{name} holds control character U+{ord(control.group()):04X} at position {control.start()}",
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        return RejectReason.INVALID_UTF8, f"{name}: unpaired surrogate at position {err.start}"
    return None


def _optional_str(fields: dict[str, Any], key: str) -> tuple[str | None, str | None]:
    """(value, error detail) for an optional id/source/task field."""
    value = fields.get(key)
    if value is None:
        return None, None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None, f"field {key!r} must be a string, got {type(value).__name__}"
    return str(value), None


def _pair_from_messages(messages: Any) -> tuple[str, str] | str:
    """(prompt, response) from a chat transcript's first user turn and the assistant reply; else an error."""
    if not isinstance(messages, list) or not messages:
        return "messages must be a non-empty list"
    system, prompt = [], None
    for msg in messages:
        if not isinstance(msg, dict) or not isinstance(msg.get("content"), str):
            return "each message must be an object with a string 'content'"
        role = msg.get("role", msg.get("from"))
        if prompt is None:
            if role == "system":
                system.append(msg["content"])
            elif role in USER_ROLES:
                prompt = msg["content"]
            else:
                return f"expected a user turn first, got role {role!r}"
        elif role in ASSISTANT_ROLES:
            return ("\n\n".join([*system, prompt]), msg["content"])
        else:
            return f"expected an assistant reply after the first user turn, got role {role!r}"
    return "no assistant reply after the first user turn"


def normalize(record: RawRecord, max_chars: int) -> Example | Reject:
    """Validate one raw record (rules 1-3 of the module docstring)."""

    def reject(reason: str, detail: str = "") -> Reject:
        return Reject(record.source, record.origin, record.row, reason, detail)

    if record.error is not None:
        return reject(record.error, record.detail)
    fields = record.fields or {}
    if "messages" in fields:
        pair = _pair_from_messages(fields["messages"])
        if isinstance(pair, str):
            return reject(RejectReason.BAD_MESSAGES, pair)
        prompt, response = pair
    elif "prompt" in fields or "response" in fields:
        for key in ("prompt", "response"):
            if key not in fields or fields[key] is None:
                return reject(RejectReason.MISSING_FIELD, f"field {key!r} is missing")
            if not isinstance(fields[key], str):
                return reject(
                    RejectReason.WRONG_TYPE, f"field {key!r} must be a string, got {type(fields[key]).__name__}"
                )
        prompt, response = fields["prompt"], fields["response"]
    else:
        keys = sorted(map(str, fields))[:10]
        return reject(RejectReason.UNKNOWN_SCHEMA, f"expected prompt/response or messages; found keys {keys}")
    extras = {}
    for key in ("id", "source", "task"):
        extras[key], problem = _optional_str(fields, key)
        if problem:
            return reject(RejectReason.WRONG_TYPE, problem)
    prompt, response = clean_text(prompt), clean_text(response)
    for name, text in (("prompt", prompt), ("response", response)):
        if problem := text_problem(name, text):
            return reject(*problem)
    if len(prompt) + len(response) > max_chars:
        return reject(RejectReason.TOO_LONG, f"{len(prompt) + len(response)} chars > max_chars={max_chars}")
    source = extras["source"] or record.source
    return Example(
        source=source,
        task=extras["task"] or source,
        prompt=prompt,
        response=response,
        origin=record.origin,
        row=record.row,
        source_id=extras["id"],
    )


@dataclass(frozen=True)
class CorpusBuild:
    """The result of one ingestion: the pool, the refused rows, and counts for metadata."""

    corpus: Any  # polars.DataFrame with CORPUS_COLUMNS, sorted by example_id
    rejects: Any  # polars.DataFrame with REJECT_COLUMNS
    n_read: int
    n_duplicates: int  # rows whose exact text appeared earlier (dropped or flagged)
    n_contaminated: int

    def refused(self) -> list[Reject]:
        return [Reject(**row) for row in self.rejects.to_dicts()]

    def rejects_version(self) -> str:
        """The content hash of the refused rows (their data version)."""
        return table_version(self.rejects, REJECT_COLUMNS)

    def unreadable_files(self) -> str:
        """One line about the files that could not be read; "" when every file was read."""
        unreadable = [r for r in self.refused() if r.reason == RejectReason.UNREADABLE_FILE]
        return summarize_rejects(unreadable) if unreadable else ""

    def empty_pool_reason(self) -> str:
        """Why no example survived, for when none did."""
        return f"no valid examples among {self.n_read} rows read; {summarize_rejects(self.refused())}"

    def describe(self) -> str:
        return (
            f"read {self.n_read} rows: {self.corpus.height} examples, {self.rejects.height} refused "
            f"({self.n_duplicates} duplicates, {self.n_contaminated} contaminated)"
        )

    def rejects_summary(self) -> dict[str, Any]:
        return {
            "rows_refused": self.rejects.height,
            "refused_share": round(self.rejects.height / max(self.n_read, 1), 4),
        }

    def summary(self, profile: Any) -> dict[str, Any]:
        """The counts, with the policies and targets of `profile` (a core.config.profiles.Profile) behind them."""
        targets = dict.fromkeys([profile.target.name, *(t.name for t in profile.contamination_targets)])
        return {
            "examples": self.corpus.height,
            "rows_read": self.n_read,
            "rows_refused": self.rejects.height,
            "duplicates": self.n_duplicates,
            "duplicate_policy": profile.corpus.duplicates,
            "contaminated": self.n_contaminated,
            "contamination_policy": profile.corpus.contamination,
            "decontaminated_against": ", ".join(targets),
        }

    def length_summary(self) -> dict[str, float]:
        """Mean, median, 90th percentile and maximum of the examples' n_tokens."""
        lengths = self.corpus["n_tokens"]
        return {
            "mean": round(float(lengths.mean()), 1),
            "median": float(lengths.median()),
            "p90": float(lengths.quantile(0.9)),
            "max": int(lengths.max()),
        }


def build_corpus(
    records: Iterable[RawRecord], config: CorpusConfig = CorpusConfig(), target_prompts: frozenset[str] = frozenset()
) -> CorpusBuild:
    """Validate, de-duplicate and id every record; each record lands in exactly one of the two tables."""
    import polars as pl

    rows: list[dict[str, Any]] = []
    rejects: list[Reject] = []
    seen_content: dict[str, str] = {}  # content_hash -> example_id of its first occurrence
    occurrences: Counter[tuple[str, str]] = Counter()
    n_read = n_dup = n_contaminated = 0
    for record in records:
        n_read += 1
        item = normalize(record, config.max_chars)
        if isinstance(item, Reject):
            rejects.append(item)
            continue
        contaminated = prompt_key(item.prompt) in target_prompts
        if contaminated:
            n_contaminated += 1
            if config.contamination == "exclude":
                rejects.append(
                    Reject(
                        item.source,
                        item.origin,
                        item.row,
                        RejectReason.TARGET_CONTAMINATION,
                        "prompt is a target prompt",
                    )
                )
                continue
        chash = content_hash(item.prompt, item.response)
        is_dup = chash in seen_content
        if is_dup:
            n_dup += 1
            if config.duplicates == "keep_first":
                detail = f"same text as example {seen_content[chash]}"
                rejects.append(Reject(item.source, item.origin, item.row, RejectReason.DUPLICATE, detail))
                continue
        k = occurrences[(item.source, chash)]
        occurrences[(item.source, chash)] += 1
        example_id = hashlib.sha256(f"{item.source}\x1f{chash}\x1f{k}".encode()).hexdigest()[:16]
        seen_content.setdefault(chash, example_id)
        rows.append(
            {
                "example_id": example_id,
                "content_hash": chash,
                "source": item.source,
                "task": item.task,
                "prompt": item.prompt,
                "response": item.response,
                "n_tokens": count_tokens(item.prompt) + count_tokens(item.response),
                "origin": item.origin,
                "row": item.row,
                "source_id": item.source_id,
                "is_duplicate": is_dup,
                "contaminated": contaminated,
            }
        )
    corpus_schema = {
        "example_id": pl.String,
        "content_hash": pl.String,
        "source": pl.String,
        "task": pl.String,
        "prompt": pl.String,
        "response": pl.String,
        "n_tokens": pl.Int64,
        "origin": pl.String,
        "row": pl.Int64,
        "source_id": pl.String,
        "is_duplicate": pl.Boolean,
        "contaminated": pl.Boolean,
    }
    corpus = pl.DataFrame(rows, schema=corpus_schema).sort("example_id")
    reject_frame = pl.DataFrame(
        [{c: getattr(r, c) for c in REJECT_COLUMNS} for r in rejects],
        schema={"source": pl.String, "origin": pl.String, "row": pl.Int64, "reason": pl.String, "detail": pl.String},
    )
    return CorpusBuild(corpus, reject_frame, n_read, n_dup, n_contaminated)


def table_version(frame: Any, columns: tuple[str, ...]) -> str:
    """A content hash of a table, independent of row order: what Dagster records as its DataVersion."""
    import polars as pl

    if frame.height == 0:
        return hashlib.sha256(b"empty").hexdigest()[:24]

    def as_text(name: str):
        col = pl.col(name)
        if isinstance(frame.schema[name], pl.List):
            col = col.list.join("\x1d")
        return col.cast(pl.String).fill_null("\x00")

    row_hashes = frame.select(pl.concat_str([as_text(c) for c in columns], separator="\x1f"))
    digest = hashlib.sha256()
    for value in sorted(row_hashes.to_series().to_list()):
        digest.update(value.encode())
        digest.update(b"\x1e")
    return digest.hexdigest()[:24]
