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


def tidy_number(value: float) -> float:
    """A float as people read it: 4 significant digits below 1 (0.8491, 0.0003142), 2 decimals above."""
    value = float(value)  # numpy's floats too: Dagster stores plain ones
    if not math.isfinite(value) or value == 0:
        return value
    if abs(value) >= 1:
        return round(value, 2)
    return round(value, 3 - int(math.floor(math.log10(abs(value)))))


def tidy(metadata: Mapping[str, object]) -> dict[str, object]:
    """Metadata with every plain float rounded (`tidy_number`); ints, strings and MetadataValues unchanged, so
    numbers stay numbers and the UI plots them over time."""
    return {key: tidy_number(value) if isinstance(value, float) else value for key, value in metadata.items()}


def count_table(counts: Mapping[str, int], key: str = "reason", value: str = "rows", empty: str = "none"):
    """A Markdown table of counts (`empty` when there are none), for the UI."""
    import dagster as dg

    return dg.MetadataValue.md(markdown_mapping(dict(counts), key, value) if counts else empty)


def metrics_table(metrics: Mapping[str, object]) -> str:
    """Model metrics as a two-column Markdown table, numbers rounded; nested values are left out."""
    rows = {name: tidy_number(float(v)) if isinstance(v, float) else v for name, v in sorted(metrics.items())
            if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
    return markdown_mapping(rows, "metric", "value")


def artifact_link(uri: str, folder: bool = False):
    """Where an artifact (a file, or a folder with `folder`) lives, as the UI shows it: on S3 a link to the S3
    console, locally a path to copy (browsers do not open file links from a web page)."""
    import dagster as dg

    if uri.startswith("s3://"):
        from urllib.parse import quote

        bucket, _, key = uri[len("s3://"):].partition("/")
        if folder or not key:
            return dg.MetadataValue.url(f"https://s3.console.aws.amazon.com/s3/buckets/{bucket}?prefix="
                                        f"{quote(key.rstrip('/') + '/' if key else '')}")
        return dg.MetadataValue.url(f"https://s3.console.aws.amazon.com/s3/object/{bucket}?prefix={quote(key)}")
    if uri.startswith("file://"):  # a path to paste in a terminal
        from urllib.parse import unquote, urlsplit

        return dg.MetadataValue.path(unquote(urlsplit(uri).path))
    return dg.MetadataValue.path(uri)
