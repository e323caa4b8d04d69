"""Readers for the user's own corpus files: JSONL and Parquet, one `RawRecord` per line or row.

A reader never raises on bad content: an unreadable file, a line that is not UTF-8 or not JSON,
each becomes a `RawRecord` with an `error` code, so `core.ingest.corpus` can report it in corpus_rejects.
Accepted row shapes (checked later, in `core.ingest.corpus.normalize`):
  {"prompt": str, "response": str, "id"?: str|int, "source"?: str, "task"?: str}
  {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...], ...same optional keys}
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from gtp_pipeline.core.ingest.records import RawRecord, RejectReason

SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}


def read_jsonl(path: str | Path, source: str | None = None) -> Iterator[RawRecord]:
    """Yield one record per non-blank line of a JSONL file; `row` is the 1-based line number.

    Lines end at "\n", "\r\n" or a lone "\r" (old Mac files): JSON text cannot hold a raw CR, so a CR is always a
    line break. Bytes that are not UTF-8 are decoded as lone surrogates (`surrogateescape`), which valid UTF-8 never
    yields, so such a line is reported by itself instead of failing the file.
    """
    path = Path(path)
    src = source or path.stem
    try:
        handle = open(path, encoding="utf-8", errors="surrogateescape", newline=None)
    except OSError as err:
        yield RawRecord(src, str(path), 0, error=RejectReason.UNREADABLE_FILE, detail=str(err))
        return
    with handle:
        for lineno, line in enumerate(handle, 1):
            line = line.rstrip("\n")
            if lineno == 1:
                line = line.removeprefix("\ufeff")  # a UTF-8 byte-order mark is not content
            if not line.strip():  # blank lines separate nothing in JSONL; they are not rows
                continue
            if _NOT_UTF8.search(line):
                yield RawRecord(src, str(path), lineno, error=RejectReason.INVALID_UTF8, detail=_utf8_problem(line))
                continue
            try:
                obj = json.loads(line)
            except (json.JSONDecodeError, RecursionError) as err:
                yield RawRecord(src, str(path), lineno, error=RejectReason.MALFORMED_JSON, detail=str(err)[:200])
                continue
            if not isinstance(obj, dict):
                yield RawRecord(
                    src, str(path), lineno, error=RejectReason.NOT_AN_OBJECT, detail=f"got {type(obj).__name__}"
                )
                continue
            yield RawRecord(src, str(path), lineno, fields=obj)


_NOT_UTF8 = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of bytes that are not UTF-8


def _utf8_problem(line: str) -> str:
    raw = line.encode("utf-8", "surrogateescape")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return f"{err.reason} near {raw[max(0, err.start - 10) : err.end + 10]!r}"
    return "not UTF-8"


def read_parquet(path: str | Path, source: str | None = None) -> Iterator[RawRecord]:
    """Yield one record per row of a Parquet file; `row` is the 1-based row number.

    Binary columns are decoded as UTF-8 per row, so one bad cell refuses one row, not the file.
    """
    import polars as pl

    path = Path(path)
    src = source or path.stem
    try:
        frame = pl.read_parquet(path)
    except Exception as err:  # polars raises several unrelated types for a corrupt or missing file
        yield RawRecord(
            src, str(path), 0, error=RejectReason.UNREADABLE_FILE, detail=f"{type(err).__name__}: {err}"[:300]
        )
        return
    binary_cols = [name for name, dtype in frame.schema.items() if dtype == pl.Binary]
    for rowno, row in enumerate(frame.iter_rows(named=True), 1):
        bad = None
        for name in binary_cols:
            if row[name] is None:
                continue
            try:
                row[name] = row[name].decode("utf-8")
            except UnicodeDecodeError as err:
                bad = f"column {name!r}: {err.reason} at byte {err.start}"
                break
        if bad:
            yield RawRecord(src, str(path), rowno, error=RejectReason.INVALID_UTF8, detail=bad)
        else:
            yield RawRecord(src, str(path), rowno, fields=row)


def read_user_files(paths: Iterable[str | Path]) -> Iterator[RawRecord]:
    """Read each file by its suffix; an unknown suffix is one `unreadable_file` record, not a crash."""
    for p in paths:
        path = Path(p)
        kind = SUFFIXES.get(path.suffix.lower())
        if kind == "jsonl":
            yield from read_jsonl(path)
        elif kind == "parquet":
            yield from read_parquet(path)
        else:
            yield RawRecord(
                path.stem,
                str(path),
                0,
                error=RejectReason.UNREADABLE_FILE,
                detail=f"unsupported file type {path.suffix!r}; expected one of {sorted(SUFFIXES)}",
            )
