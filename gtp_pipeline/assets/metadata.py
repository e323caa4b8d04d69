"""Formatting helpers that turn counts and plots into Dagster metadata a user can read at a glance."""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping

import dagster as dg

from gtp_pipeline.core.markdown import markdown_table


def md_table(rows: Iterable[Mapping[str, object]], columns: list[str] | None = None) -> dg.MetadataValue:
    """A markdown table from dicts (columns default to the first row's keys)."""
    return dg.MetadataValue.md(markdown_table(rows, columns))


def md_image(png: bytes, alt: str) -> dg.MetadataValue:
    """A PNG embedded in markdown, so the plot shows in the asset's metadata panel."""
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})")


def counts_table(frame, by: list[str], limit: int = 80) -> dg.MetadataValue:
    """Row counts of a polars frame grouped by `by`, largest first."""
    grouped = frame.group_by(by).len("rows").sort(["rows", *by], descending=[True] + [False] * len(by))
    return md_table(grouped.head(limit).to_dicts())
