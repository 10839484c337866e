"""How assets present data in the Dagster UI: small Markdown tables for previews and distributions."""

from __future__ import annotations

import math
from collections.abc import Mapping

import pandas as pd


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(frame: pd.DataFrame, max_rows: int = 10) -> str:
    """The first `max_rows` rows of `frame` as a Markdown table (no extra dependency)."""
    head = frame.head(max_rows)
    lines = [
        "| " + " | ".join(_cell(c) for c in head.columns) + " |",
        "| " + " | ".join("---" for _ in head.columns) + " |",
    ]
    for row in head.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    if len(frame) > max_rows:
        lines.append(f"\n_{len(frame) - max_rows:,} more rows_")
    return "\n".join(lines)


def markdown_mapping(mapping: Mapping[str, object], key: str = "name", value: str = "value") -> str:
    """A two-column Markdown table of a mapping."""
    return markdown_table(pd.DataFrame({key: list(mapping), value: list(mapping.values())}), max_rows=len(mapping))
