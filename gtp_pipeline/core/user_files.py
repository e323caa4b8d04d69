"""Readers for the user's own corpus files: JSONL and Parquet, one `RawRecord` per line or row.

A reader never raises on bad content: an unreadable file, a line that is not UTF-8 or not JSON,
each becomes a `RawRecord` with an `error` code, so `core.corpus` can report it in corpus_rejects.
Accepted row shapes (checked later, in `core.corpus.normalize`):
  {"prompt": str, "response": str, "id"?: str|int, "source"?: str, "task"?: str}
  {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...], ...same optional keys}
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from gtp_pipeline.core.records import RawRecord, RejectReason

SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}


def read_jsonl(path: str | Path, source: str | None = None) -> Iterator[RawRecord]:
    """Yield one record per non-blank line of a JSONL file; `row` is the 1-based line number."""
    path = Path(path)
    src = source or path.stem
    try:
        handle = open(path, "rb")  # bytes: invalid UTF-8 must be reported per line, not crash the read
    except OSError as err:
        yield RawRecord(src, str(path), 0, error=RejectReason.UNREADABLE_FILE, detail=str(err))
        return
    with handle:
        for lineno, raw in enumerate(handle, 1):
            line = raw.rstrip(b"\r\n")
            if lineno == 1 and line.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark is not content
                line = line[3:]
            if not line.strip():  # blank lines separate nothing in JSONL; they are not rows
                continue
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as err:
                snippet = line[max(0, err.start - 10) : err.end + 10]
                yield RawRecord(
                    src, str(path), lineno, error=RejectReason.INVALID_UTF8, detail=f"{err.reason} near {snippet!r}"
                )
                continue
            try:
                obj = json.loads(text)
            except (json.JSONDecodeError, RecursionError) as err:
                yield RawRecord(src, str(path), lineno, error=RejectReason.MALFORMED_JSON, detail=str(err)[:200])
                continue
            if not isinstance(obj, dict):
                yield RawRecord(
                    src, str(path), lineno, error=RejectReason.NOT_AN_OBJECT, detail=f"got {type(obj).__name__}"
                )
                continue
            yield RawRecord(src, str(path), lineno, fields=obj)


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
