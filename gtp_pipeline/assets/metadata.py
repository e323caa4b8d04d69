"""Formatting helpers that turn counts and plots into Dagster metadata a user can read at a glance."""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable, Mapping

import dagster as dg

from gtp_pipeline.core.evaluation.markdown import markdown_table


def _cell(value: object) -> str | int | float | bool | None:
    if isinstance(value, float) and math.isnan(value):
        return None  # an undefined number (one seed's spread): an empty cell, not "NaN"
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def metadata_table(rows: Iterable[Mapping[str, object]], columns: list[str] | None = None) -> dg.MetadataValue:
    """A table Dagster's UI draws in the metadata panel, no click needed (columns default to the first row's keys).

    Columns are typed from the first non-empty value of each; a column with no value at all is a string column."""
    rows = list(rows)
    names = columns or (list(rows[0]) if rows else ["(none)"])
    types = {}
    for name in names:
        sample = next((r.get(name) for r in rows if r.get(name) is not None), None)
        types[name] = {bool: "bool", int: "int", float: "float"}.get(type(sample), "string")
    schema = dg.TableSchema(columns=[dg.TableColumn(name, types[name]) for name in names])
    records = [dg.TableRecord({name: _cell(r.get(name)) for name in names}) for r in rows]
    return dg.MetadataValue.table(records=records, schema=schema)


def markdown_metadata(rows: Iterable[Mapping[str, object]], columns: list[str] | None = None) -> dg.MetadataValue:
    """A markdown table, for tables whose cells hold long text (prompts)."""
    return dg.MetadataValue.md(markdown_table(rows, columns))


def md_image(png: bytes, alt: str) -> dg.MetadataValue:
    """A PNG embedded in markdown, so the plot shows in the asset's metadata panel."""
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})")


# Dagster's UI draws a markdown metadata value inline on the asset page only when it is shorter than this; longer
# ones sit behind a "[Show Markdown]" button (ui-core MetadataEntry, expandSmallValues).
INLINE_MARKDOWN_LIMIT = 1000


def md_inline_svg(svg: str) -> dg.MetadataValue | None:
    """An SVG as markdown short enough to show on the asset page without a click, or None if it is too long."""
    md = f"![](data:image/svg+xml;base64,{base64.b64encode(svg.encode()).decode()})"
    return dg.MetadataValue.md(md) if len(md) < INLINE_MARKDOWN_LIMIT else None


def counts_table(frame, by: list[str], limit: int = 80) -> dg.MetadataValue:
    """Row counts of a polars frame grouped by `by`, largest first."""
    grouped = frame.group_by(by).len("rows").sort(["rows", *by], descending=[True] + [False] * len(by))
    return metadata_table(grouped.head(limit).to_dicts(), [*by, "rows"])


def counts_or_none(frame, by: list[str]) -> dg.MetadataValue:
    """`counts_table`, or a table with no rows and no columns when the frame is empty (nothing refused, say)."""
    return counts_table(frame, by) if frame.height else metadata_table([])
