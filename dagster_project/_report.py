"""How assets report: markdown previews of Arrow tables, plots as inline PNG, progress in the run log, and lake
errors as one-line failures (the UI shows the reason, not a traceback)."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import dagster as dg
import pyarrow as pa

import lake

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["delta_versions", "lake_failures", "log_progress", "markdown_table", "png_markdown"]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(table: pa.Table, *, max_rows: int = 20) -> dg.MetadataValue:
    """The first ``max_rows`` rows of ``table`` as a markdown table (tabulate is not a dependency of ours)."""
    head = table.slice(0, max_rows).to_pylist()
    lines = ["| " + " | ".join(table.column_names) + " |", "|" + "---|" * table.num_columns]
    lines += ["| " + " | ".join(_cell(row[c]) for c in table.column_names) + " |" for row in head]
    if table.num_rows > max_rows:
        lines.append(f"\n… {table.num_rows - max_rows} more rows")
    return dg.MetadataValue.md("\n".join(lines))


def png_markdown(image: Figure | bytes, *, alt: str) -> dg.MetadataValue:
    """A PNG (bytes, or a matplotlib figure) inline in markdown metadata."""
    if not isinstance(image, bytes):
        buf = io.BytesIO()
        image.savefig(buf, format="png", dpi=80, bbox_inches="tight")
        image = buf.getvalue()
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(image).decode('ascii')})")


def delta_versions(target: lake.Lake, *tables: str) -> dict[str, dg.MetadataValue]:
    """``<table>_version`` metadata: the Delta versions a materialization left, for time travel and lineage."""
    return {f"{t}_version": dg.MetadataValue.int(target.version(t)) for t in tables}


def log_progress(log: dg.DagsterLogManager, *, every_s: float = 5.0) -> lake.Progress:
    """A `lake.Progress` that writes a line per stage, and at most one every ``every_s`` seconds within one."""
    last: dict[str, float] = {}

    def progress(stage: str, done: int, total: int | None) -> None:
        now = time.monotonic()
        finished = total is not None and done >= total
        if stage in last and not finished and now - last[stage] < every_s:
            return
        last[stage] = now
        log.info(f"{stage}: {done}/{total}" if total is not None else f"{stage}: {done}")

    return progress


@contextmanager
def lake_failures(metadata: Mapping[str, Any] | None = None) -> Iterator[None]:
    """Turn a `lake.LakeError` (bad input, busy lake, ...) into a `dg.Failure` with its one-line reason."""
    try:
        yield
    except lake.LakeError as e:
        raise dg.Failure(description=str(e), metadata=dict(metadata or {}), allow_retries=False) from None
