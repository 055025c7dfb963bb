"""Human Protein Atlas ``subcellular_location.tsv`` into ``hpa_subcellular`` (one row per gene x location)."""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa

from lake._errors import InvalidInputError
from lake._fetch import resolve_source
from lake._genes import is_ensembl_id
from lake._lake import Lake
from lake._progress import Progress, null_progress
from lake._recovery import ingest_transaction
from lake._schemas import HPA_SUBCELLULAR

__all__ = ["HpaIngest", "ingest_hpa", "parse_subcellular"]

REQUIRED = ("Gene", "Gene name", "Reliability", "Main location", "Additional location")
_RELIABILITY = ("Enhanced", "Supported", "Approved", "Uncertain")
_GO = re.compile(r"^(.*?)\s*\((GO:\d+)\)$")


@dataclass(frozen=True)
class HpaIngest:
    dataset_id: str
    status: str  # ingested | unchanged
    n_genes: int
    n_rows: int
    seconds: float


def _text(value: object) -> str | None:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    return str(value).strip() or None


def _split(value: object) -> list[str]:
    text = _text(value)
    return [v.strip() for v in text.split(";") if v.strip()] if text else []


def _cut_short(path: Path, n_columns: int) -> bool:
    """An interrupted download: the file ends without a newline, in a row with fewer fields than the header."""
    with path.open("rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - (1 << 16)))
        tail = f.read()
    if not tail or tail.endswith(b"\n"):
        return False
    return tail.rsplit(b"\n", 1)[-1].count(b"\t") + 1 < n_columns


def parse_subcellular(path: Path, *, dataset_id: str) -> pa.Table:
    """Parse the TSV into rows of the ``hpa_subcellular`` schema."""
    try:
        df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise InvalidInputError(f"{path.name} is not a readable HPA TSV: {str(e).splitlines()[0]}") from None
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise InvalidInputError(f"{path.name} is missing HPA column(s): {', '.join(missing)}")
    if _cut_short(path, len(df.columns)):  # pandas reads the partial last row as a row with empty cells
        raise InvalidInputError(f"{path.name} ends in the middle of a row: truncated (fetch it again)")
    if df.empty:
        raise InvalidInputError(f"{path.name} has no rows")
    bad = df.loc[~df["Gene"].astype(str).map(is_ensembl_id), "Gene"]
    if len(bad) > 0.1 * len(df):
        raise InvalidInputError(f"{path.name}: column Gene must hold Ensembl ids (e.g. {bad.iloc[0]!r})")
    out: dict[str, list[object]] = {f.name: [] for f in HPA_SUBCELLULAR.schema}
    for row in df.itertuples(index=False):
        rec = dict(zip(df.columns, row, strict=True))
        gene = str(rec["Gene"])
        if not is_ensembl_id(gene):
            continue
        go = {m.group(1): m.group(2) for g in _split(rec.get("GO id")) if (m := _GO.match(g))}
        by_rel = {loc: rel for rel in _RELIABILITY for loc in _split(rec.get(rel))}
        intensity = set(_split(rec.get("Single-cell variation intensity")))
        spatial = set(_split(rec.get("Single-cell variation spatial")))
        seen: set[str] = set()
        for kind, column in (
            ("main", "Main location"),
            ("additional", "Additional location"),
            ("extracellular", "Extracellular location"),
        ):
            for loc in _split(rec.get(column)):
                if loc in seen:
                    continue
                seen.add(loc)
                variation = ";".join(v for v, s in (("intensity", intensity), ("spatial", spatial)) if loc in s)
                out["dataset_id"].append(dataset_id)
                out["ensembl_id"].append(gene.split(".", 1)[0])
                out["symbol"].append(_text(rec.get("Gene name")))
                out["location"].append(loc)
                out["is_main"].append(kind == "main")
                out["location_kind"].append(kind)
                out["reliability"].append(_text(rec.get("Reliability")))
                out["location_reliability"].append(by_rel.get(loc))
                out["go_id"].append(go.get(loc))
                out["single_cell_variation"].append(variation or None)
                out["cell_cycle_dependency"].append(_text(rec.get("Cell cycle dependency")))
    table = pa.table(out, schema=HPA_SUBCELLULAR.schema)
    if table.num_rows == 0:
        raise InvalidInputError(f"{path.name}: no gene has a location")
    return table


def ingest_hpa(lake: Lake, source: str | os.PathLike[str], *, progress: Progress = null_progress) -> HpaIngest:
    """Ingest an HPA release. The same file twice is a no-op; SQL shows the newest release."""
    t0 = time.perf_counter()
    lake.ensure_writable()
    src = resolve_source(source, cache_dir=lake.settings.cache_dir, progress=progress)
    if (done := lake.find_dataset(sha256=src.sha256)) is not None:
        return HpaIngest(str(done["dataset_id"]), "unchanged", int(done["n_vars"]), int(done["n_obs"]), 0.0)
    dataset_id = src.sha256[:16]
    table = parse_subcellular(src.path, dataset_id=dataset_id)
    n_genes = len(set(table["ensembl_id"].to_pylist()))
    with ingest_transaction(lake):
        if (done := lake.find_dataset(sha256=src.sha256)) is not None:
            return HpaIngest(str(done["dataset_id"]), "unchanged", int(done["n_vars"]), int(done["n_obs"]), 0.0)
        lake.append("hpa_subcellular", table)
        lake.register_dataset(
            {
                "dataset_id": dataset_id,
                "name": f"hpa-{dataset_id[:8]}",
                "kind": "hpa",
                "organism": "homo_sapiens",
                "source_uri": src.uri,
                "sha256": src.sha256,
                "n_obs": table.num_rows,
                "n_vars": n_genes,
                "ingested_at": datetime.now(UTC),
            }
        )
        progress("commit", 1, 1)
    return HpaIngest(dataset_id, "ingested", n_genes, table.num_rows, time.perf_counter() - t0)
