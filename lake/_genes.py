"""Gene identifiers: a GENCODE reference (Ensembl id, symbol, version, length, biotype) and the mapping of an
h5ad's var ids (Ensembl ids or symbols) onto it."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from lake._errors import InvalidInputError
from lake._fetch import resolve_source

__all__ = ["GeneMapping", "GeneReference", "is_ensembl_id", "map_var"]

_ENSEMBL = re.compile(r"^ENS[A-Z]*G\d{11}(\.\d+)?$")
_ENSEMBL_COLUMNS = ("feature_id", "gene_ids", "gene_id", "ensembl_id", "ensembl", "gene_ensembl_id")
_SYMBOL_COLUMNS = ("feature_name", "gene_symbols", "gene_symbol", "symbol", "gene_name", "gene_names")
_MIN_MAPPED = 0.5


def is_ensembl_id(value: str) -> bool:
    return bool(_ENSEMBL.match(value))


def _strip_version(ids: Sequence[str]) -> list[str]:
    return [i.split(".", 1)[0] if i.startswith("ENS") else i for i in ids]


@dataclass(frozen=True)
class GeneReference:
    """A gene list such as the GENCODE file of the CELLxGENE schema (no header; id, symbol, version,
    length, biotype)."""

    table: pd.DataFrame  # index: Ensembl id (no version); columns symbol, feature_length, biotype
    by_symbol: dict[str, str]
    source: str

    @classmethod
    def load(cls, source: str, *, cache_dir: Path) -> GeneReference:
        src = resolve_source(source, cache_dir=cache_dir)
        try:
            t = pacsv.read_csv(
                src.path,
                read_options=pacsv.ReadOptions(autogenerate_column_names=True),
                convert_options=pacsv.ConvertOptions(column_types={"f0": pa.string(), "f1": pa.string()}),
            ).to_pandas()
        except (pa.ArrowInvalid, OSError) as e:
            raise InvalidInputError(f"gene reference {source} is not a readable CSV: {e}") from None
        if t.shape[1] < 2 or not t.iloc[:, 0].astype(str).str.startswith("ENS").mean() > 0.9:
            raise InvalidInputError(f"gene reference {source}: first column must hold Ensembl gene ids")
        ids = _strip_version(t.iloc[:, 0].astype(str).tolist())
        table = pd.DataFrame(
            {
                "symbol": t.iloc[:, 1].astype(str).to_numpy(),
                "feature_length": pd.to_numeric(t.iloc[:, 3], errors="coerce") if t.shape[1] > 3 else np.nan,
                "biotype": t.iloc[:, 4].astype(str).to_numpy() if t.shape[1] > 4 else None,
            },
            index=pd.Index(ids, name="ensembl_id"),
        )
        table = table[~table.index.duplicated()]
        # An ambiguous symbol maps to its protein-coding gene when there is one, else to the first listed.
        order = table.assign(_pc=table["biotype"].eq("protein_coding")).sort_values(
            "_pc", ascending=False, kind="stable"
        )
        by_symbol: dict[str, str] = {}
        for ens, sym in zip(order.index, order["symbol"], strict=True):
            by_symbol.setdefault(sym, ens)
            by_symbol.setdefault(sym.upper(), ens)
        return cls(table=table, by_symbol=by_symbol, source=src.uri)


@dataclass(frozen=True)
class GeneMapping:
    """The var axis of one dataset, mapped: one entry per var row, in file order."""

    ensembl_id: list[str]  # the Ensembl id, or the file's own id where it maps to nothing
    symbol: list[str | None]
    source_id: list[str]
    feature_length: list[int | None]
    biotype: list[str | None]
    is_mapped: list[bool]
    id_kind: Literal["ensembl", "symbol"]

    @property
    def n_unmapped(self) -> int:
        return self.is_mapped.count(False)


def _pick_ids(var: pd.DataFrame) -> tuple[list[str], list[str] | None, Literal["ensembl", "symbol"]]:
    """Choose the id column: Ensembl ids (index or a known column) when present, else symbols."""
    index = [str(v) for v in var.index]

    def frac(values: Sequence[str]) -> float:
        return float(np.mean([is_ensembl_id(v) for v in values])) if len(values) else 0.0

    symbols = next(
        ([str(v) for v in var[c]] for c in _SYMBOL_COLUMNS if c in var.columns and frac(var[c].astype(str)) < 0.5),
        None,
    )
    if frac(index) >= 0.5:
        return index, symbols, "ensembl"
    for c in _ENSEMBL_COLUMNS:
        if c in var.columns and frac(var[c].astype(str).tolist()) >= 0.5:
            return [str(v) for v in var[c]], symbols or index, "ensembl"
    return index, None, "symbol"


def map_var(var: pd.DataFrame, reference: GeneReference | None, *, what: str) -> GeneMapping:
    """Map a var table onto Ensembl ids. Raises :class:`InvalidInputError` when the ids map to (almost) nothing."""
    ids, symbols, kind = _pick_ids(var)
    if kind == "symbol" and reference is None:
        raise InvalidInputError(
            f"{what}: var ids are gene symbols (e.g. {ids[0]!r}); mapping them to Ensembl needs a gene reference "
            "(--gene-reference PATH_OR_URL or CELLFARM_GENE_REFERENCE)"
        )
    n = len(ids)
    out_ids: list[str] = []
    out_sym: list[str | None] = []
    lengths: list[int | None] = []
    biotypes: list[str | None] = []
    mapped: list[bool] = []
    seen: set[str] = set()
    table = reference.table if reference is not None else None
    for i, raw in enumerate(ids):
        ens: str | None
        if kind == "ensembl":
            ens = raw.split(".", 1)[0] if is_ensembl_id(raw) else None
            if ens is not None and table is not None and ens not in table.index:
                ens = None
        else:
            assert reference is not None
            ens = reference.by_symbol.get(raw) or reference.by_symbol.get(raw.upper())
        if ens is not None and ens in seen:
            ens = None  # two ids of the file name one gene: keep the second under its own id, unmapped
        if ens is None:
            out_ids.append(raw)
            out_sym.append(symbols[i] if symbols else (raw if kind == "symbol" else None))
            lengths.append(None)
            biotypes.append(None)
            mapped.append(False)
            continue
        seen.add(ens)
        out_ids.append(ens)
        if table is not None:
            row = table.loc[ens]
            out_sym.append(str(row["symbol"]))
            length = row["feature_length"]
            lengths.append(int(length) if pd.notna(length) else None)
            biotypes.append(str(row["biotype"]) if row["biotype"] is not None else None)
        else:
            out_sym.append(symbols[i] if symbols else None)
            lengths.append(None)
            biotypes.append(None)
        mapped.append(True)
    n_mapped = sum(mapped)
    if n == 0:
        raise InvalidInputError(f"{what}: var is empty (no genes)")
    if n_mapped / n < _MIN_MAPPED:
        where = f"the gene reference {reference.source}" if reference is not None else "Ensembl gene id format"
        examples = ", ".join(repr(i) for i in ids[:3])
        raise InvalidInputError(
            f"{what}: only {n_mapped} of {n} gene ids map to {where} (e.g. {examples}); wrong id column or organism?"
        )
    return GeneMapping(out_ids, out_sym, list(ids), lengths, biotypes, mapped, kind)
