"""Gene identifiers: a GENCODE reference (Ensembl id, symbol, version, length, biotype) and the mapping of an
h5ad's var ids (Ensembl ids or symbols) onto it."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
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


@dataclass(frozen=True)
class GeneReference:
    """A gene list such as the GENCODE file of the CELLxGENE schema (no header; id, symbol, version,
    length, biotype), held as Arrow columns: ~5 MB for the 79k human genes, looked up vectorized."""

    ensembl_id: pa.Array  # no version suffix; protein-coding genes first so that ambiguous symbols prefer them
    symbol: pa.Array
    symbol_upper: pa.Array
    feature_length: pa.Array
    biotype: pa.Array
    source: str

    @classmethod
    def load(cls, source: str, *, cache_dir: Path) -> GeneReference:
        src = resolve_source(source, cache_dir=cache_dir)
        try:
            t = pacsv.read_csv(
                src.path,
                read_options=pacsv.ReadOptions(autogenerate_column_names=True, use_threads=False),
                convert_options=pacsv.ConvertOptions(column_types={"f0": pa.string(), "f1": pa.string()}),
            )
        except (pa.ArrowInvalid, OSError) as e:
            raise InvalidInputError(f"gene reference {source} is not a readable CSV: {e}") from None
        ids = t.column(0).combine_chunks() if t.num_columns else pa.array([], pa.string())
        if t.num_columns < 2 or pc.mean(pc.cast(pc.starts_with(ids, "ENS"), pa.int8())).as_py() < 0.9:
            raise InvalidInputError(f"gene reference {source}: first column must hold Ensembl gene ids")
        n = t.num_rows
        length = pc.cast(t.column(3), pa.int64(), safe=False) if t.num_columns > 3 else pa.nulls(n, pa.int64())
        biotype = pc.cast(t.column(4), pa.string()) if t.num_columns > 4 else pa.nulls(n, pa.string())
        table = pa.table(
            {
                "ensembl_id": pc.replace_substring_regex(ids, r"\.\d+$", ""),
                "symbol": t.column(1),
                "feature_length": length,
                "biotype": biotype,
                "_rank": pc.if_else(pc.equal(biotype, "protein_coding"), 0, 1),
                "_row": pa.array(range(n)),
            }
        ).sort_by([("_rank", "ascending"), ("_row", "ascending")])
        sym = table.column("symbol").combine_chunks()
        pa.default_memory_pool().release_unused()  # the CSV reader's buffers, ~40 MB, would stay otherwise
        return cls(
            ensembl_id=table.column("ensembl_id").combine_chunks(),
            symbol=sym,
            symbol_upper=pc.utf8_upper(sym),
            feature_length=table.column("feature_length").combine_chunks(),
            biotype=table.column("biotype").combine_chunks(),
            source=src.uri,
        )

    def lookup(self, ids: Sequence[str], *, kind: Literal["ensembl", "symbol"]) -> npt.NDArray[np.int64]:
        """Row of each id in the reference (-1 where unknown); symbols match exactly, then case-blind."""
        values = pa.array(ids, type=pa.string())
        if kind == "ensembl":
            idx = pc.index_in(pc.replace_substring_regex(values, r"\.\d+$", ""), value_set=self.ensembl_id)
        else:
            exact = pc.index_in(values, value_set=self.symbol)
            idx = pc.coalesce(exact, pc.index_in(pc.utf8_upper(values), value_set=self.symbol_upper))
        return np.asarray(idx.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)


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
    rows = reference.lookup(ids, kind=kind) if reference is not None else None
    for i, raw in enumerate(ids):
        ens: str | None
        if rows is not None:
            ens = reference.ensembl_id[int(rows[i])].as_py() if rows[i] >= 0 else None  # type: ignore[union-attr]
        else:  # Ensembl ids without a reference: accepted when well-formed
            ens = raw.split(".", 1)[0] if is_ensembl_id(raw) else None
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
        if rows is not None and reference is not None:
            r = int(rows[i])
            out_sym.append(reference.symbol[r].as_py())
            lengths.append(reference.feature_length[r].as_py())
            biotypes.append(reference.biotype[r].as_py())
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
