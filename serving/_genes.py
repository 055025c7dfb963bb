"""Which names are genes: symbols and Ensembl ids the lake knows, so that a typo is a 4xx, not a silent fallback.

The vocabulary is the union of what the lake has seen: the served model's genes and perturbations, every
dataset's genes, the dataset's perturbation targets, the HPA table, and the GENCODE reference when one is
configured (`CELLFARM_GENE_REFERENCE`). A known gene the model never saw is still predicted (and flagged as
a fallback); a name that is no gene at all is refused.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import pyarrow.compute as pc

import lake

__all__ = ["GeneVocab", "UnknownGenesError", "build_vocab"]

log = logging.getLogger(__name__)


class UnknownGenesError(ValueError):
    """Names that are not genes; the message lists them (one line)."""

    def __init__(self, names: Sequence[str], what: str = "gene", hint: str = "") -> None:
        self.names = list(names)
        shown = ", ".join(self.names[:10]) + (f" and {len(self.names) - 10} more" if len(self.names) > 10 else "")
        hint = hint or "use HGNC symbols or Ensembl ids; 'A+B' for combinations"
        super().__init__(f"unknown {what}(s): {shown} ({hint})")


def _strip_version(ensembl_id: str) -> str:
    return ensembl_id.split(".", 1)[0]


@dataclass
class GeneVocab:
    """Upper-case symbol -> canonical symbol, Ensembl id -> symbol (and back)."""

    by_symbol: dict[str, str] = field(default_factory=dict)
    hint: str = ""  # added to "unknown gene" errors (e.g. that no full gene reference is loaded)
    ensembl_to_symbol: dict[str, str] = field(default_factory=dict)
    symbol_to_ensembl: dict[str, str] = field(default_factory=dict)

    def add(self, symbol: str | None, ensembl_id: str | None = None) -> None:
        """First writer wins, so callers add the most authoritative source (the model's own labels) first."""
        ens = _strip_version(ensembl_id) if ensembl_id and lake.is_ensembl_id(ensembl_id) else None
        sym = (symbol or "").strip() or None
        if sym is None and ens is not None:
            sym = ens  # a gene known only by id stands for itself
        if sym is None:
            return
        self.by_symbol.setdefault(sym.upper(), sym)
        if ens is not None:
            self.ensembl_to_symbol.setdefault(ens, sym)
            self.symbol_to_ensembl.setdefault(sym.upper(), ens)

    def add_all(self, symbols: Iterable[str | None], ensembl_ids: Iterable[str | None] | None = None) -> None:
        if ensembl_ids is None:
            for s in symbols:
                self.add(s)
        else:
            for s, e in zip(symbols, ensembl_ids, strict=True):
                self.add(s, e)

    def __len__(self) -> int:
        return len(self.by_symbol)

    def symbol(self, name: str) -> str | None:
        """The canonical symbol of a symbol (any case) or an Ensembl id (with or without version); None: unknown."""
        name = name.strip()
        if lake.is_ensembl_id(name):
            return self.ensembl_to_symbol.get(_strip_version(name))
        return self.by_symbol.get(name.upper())

    def ensembl(self, symbol: str) -> str:
        return self.symbol_to_ensembl.get(symbol.upper(), "")

    def resolve_perturbation(self, name: str) -> list[str] | None:
        """ "A+B" -> canonical target symbols; None when any target is unknown or the name is empty."""
        parts = [p.strip() for p in name.split("+")]
        if not parts or any(not p for p in parts):
            return None
        out = [self.symbol(p) for p in parts]
        return None if any(s is None for s in out) else [s for s in out if s is not None]

    def resolve_perturbations(self, names: Sequence[str]) -> list[list[str]]:
        """Every name's targets, or `UnknownGenesError` listing each name that is not a gene (combination)."""
        resolved = [self.resolve_perturbation(n) for n in names]
        bad = [n for n, r in zip(names, resolved, strict=True) if r is None]
        if bad:
            raise UnknownGenesError(list(dict.fromkeys(bad)), "perturbation", self.hint)
        return [r for r in resolved if r is not None]


def build_vocab(
    target: lake.Lake,
    *,
    model_symbols: Sequence[str],
    model_ids: Sequence[str],
    perturbations: Sequence[str],
    dataset_id: str | None,
) -> GeneVocab:
    vocab = GeneVocab()
    for label in perturbations:  # the model's own labels first: their spelling is what it was trained on
        for part in label.split("+"):
            vocab.add(part)
    vocab.add_all(model_symbols, model_ids)
    try:
        genes = target.read("dataset_genes", columns=["dataset_id", "ensembl_id", "symbol"])
        vocab.add_all(genes["symbol"].to_pylist(), genes["ensembl_id"].to_pylist())
        if dataset_id:
            cells = target.read("cells", columns=["perturbation"], filter=pc.field("dataset_id") == dataset_id)
            targets = pc.unique(cells["perturbation"].drop_null()).to_pylist()
            for label in targets:
                for part in str(label).split("+"):
                    vocab.add(part)
        hpa = target.read("hpa_subcellular", columns=["ensembl_id", "symbol"])
        vocab.add_all(hpa["symbol"].to_pylist(), hpa["ensembl_id"].to_pylist())
    except (lake.LakeError, OSError) as exc:  # a partial vocabulary still serves the model's own genes
        log.warning("gene vocabulary is partial: %s", exc)
    ref = target.settings.gene_reference or os.environ.get(lake.ENV_GENE_REFERENCE)
    if ref:
        try:
            reference = lake.GeneReference.load(ref, cache_dir=target.settings.cache_dir)
            vocab.add_all(reference.symbol.to_pylist(), reference.ensembl_id.to_pylist())
            return vocab
        except (lake.LakeError, OSError) as exc:
            log.warning("gene reference %s not loaded: %s", ref, exc)
    vocab.hint = (
        f"HGNC symbols or Ensembl ids of the {len(vocab)} genes the lake knows; the server has no full gene "
        f"reference: set {lake.ENV_GENE_REFERENCE} to the GENCODE list to accept every human gene"
    )
    return vocab
