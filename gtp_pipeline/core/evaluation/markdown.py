"""Markdown tables from dicts: what reports and asset metadata show."""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def markdown_table(rows: Iterable[Mapping[str, object]], columns: list[str] | None = None) -> str:
    """A markdown table (columns default to the first row's keys; floats to 4 significant digits, None as -)."""
    rows = list(rows)
    if not rows:
        return "_(none)_"
    cols = columns or list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c, "")) for c in cols) + " |")
    return "\n".join(lines)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")
