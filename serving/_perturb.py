"""VirtualCell's computations, free of HTTP: a loaded production model with its control cells, and predict /
screen / embed on it. The service calls these in a worker thread; tests call them in process to check the
served numbers.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow.compute as pc

import lake
import models
from serving._genes import GeneVocab, UnknownGenesError, build_vocab
from serving._schemas import (
    MAX_SAMPLED_CELLS,
    Context,
    EmbedRequest,
    EmbedResponse,
    GeneEffect,
    ModelInfo,
    PerturbationPrediction,
    PredictRequest,
    PredictResponse,
    ScreenHit,
    ScreenRequest,
    ScreenResponse,
)

__all__ = [
    "Embedder",
    "InvalidRequestError",
    "PerturbState",
    "embed",
    "find_production",
    "load_perturb_state",
    "predict",
    "screen",
]

log = logging.getLogger(__name__)
F32 = npt.NDArray[np.float32]
_N_CONTROLS = 4096  # control cells kept for sampling predicted cells and for the PCA embedding
_PCA_DIMS = 32
_CHUNK = 512  # perturbations per model call in a screen: bounds the memory of one call


class InvalidRequestError(ValueError):
    """A well-formed request the served model cannot answer (wrong dataset, unmeasured program, ...)."""


@dataclass(frozen=True)
class Embedder:
    """Cells (log-normalised, model genes) -> embeddings: the model's encoder when it has one, else a PCA
    of the training controls (a fixed, documented linear map)."""

    method: str
    dim: int
    mean: F32 = field(repr=False)
    components: F32 = field(repr=False)  # genes x dim (PCA only)
    encoder: Any = field(default=None, repr=False)  # a torch module (latent-shift's `net.enc`)

    def __call__(self, X: F32) -> F32:
        if self.encoder is not None:
            import torch

            with torch.inference_mode():
                out = self.encoder(torch.from_numpy(np.ascontiguousarray(X, np.float32)))
            return np.asarray(out.cpu().numpy(), np.float32)
        return np.asarray((X - self.mean) @ self.components, np.float32)


def _embedder(model: models.PerturbationModel, controls: F32) -> Embedder:
    net = getattr(model, "net", None)
    enc = getattr(net, "enc", None)
    if enc is not None:
        import torch

        with torch.inference_mode():
            dim = int(enc(torch.zeros(1, controls.shape[1])).shape[1])
        return Embedder(f"{model.kind} encoder", dim, np.zeros(0, np.float32), np.zeros((0, 0), np.float32), enc)
    mean = controls.mean(axis=0).astype(np.float32)
    k = max(1, min(_PCA_DIMS, controls.shape[0] - 1, controls.shape[1]))
    _, _, vt = np.linalg.svd(controls - mean, full_matrices=False)
    return Embedder(f"pca of {model.kind}'s control cells", k, mean, vt[:k].T.astype(np.float32))


@dataclass(frozen=True)
class PerturbState:
    """Everything one served version needs, built off the request path and swapped in whole."""

    record: models.ModelRecord
    model: models.PerturbationModel
    dataset: str
    dataset_id: str
    cell_types: tuple[str, ...]
    control_mean: F32 = field(repr=False)
    controls: F32 = field(repr=False)
    vocab: GeneVocab = field(repr=False)
    column: dict[str, int] = field(repr=False)  # upper symbol and Ensembl id -> gene column
    embedder: Embedder = field(repr=False)
    loaded_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    notes: tuple[str, ...] = ()

    @property
    def info(self) -> ModelInfo:
        r = self.record
        return ModelInfo(name=r.name, version=str(r.version), kind=r.kind, stage=r.stage)


def find_production(target: lake.Lake, name: str | None) -> models.ModelRecord | None:
    """The production perturbation model to serve: `name`'s, else the newest production one of any name."""
    if name:
        try:
            return models.resolve(target, name, stage="production")
        except models.ModelNotFoundError:
            return None
    rows = [r for r in models.list_models(target) if r.stage == "production" and r.kind in models.KINDS]
    return max(rows, key=lambda r: r.created_at) if rows else None


def load_perturb_state(target: lake.Lake, record: models.ModelRecord) -> PerturbState:
    model = record.load()
    snapshot = models.Snapshot.from_dict(record.trained_on)
    dataset = str(record.trained_on.get("dataset") or (snapshot.dataset_ids[0] if snapshot.dataset_ids else ""))
    notes: list[str] = []
    try:
        data = models.load_perturb_data(target, dataset, at=snapshot if snapshot.dataset_ids else None)
    except models.ModelError as exc:  # e.g. the pinned snapshot was vacuumed: today's data is the next best
        log.warning("%s: training snapshot unreadable (%s); using the current data", record.ref, exc)
        data = models.load_perturb_data(target, dataset)
        notes.append("control cells read from the current data: the training snapshot is no longer readable")
    ids = data.gene_ids.tolist()
    if ids != model.gene_ids:
        where = {g: i for i, g in enumerate(ids)}
        missing = [g for g in model.gene_ids if g not in where]
        if missing:
            raise models.ArtifactError(f"{record.ref}: {len(missing)} model genes are not in dataset {dataset!r}")
        order = np.array([where[g] for g in model.gene_ids])
        X = data.X[:, order]
    else:
        X = data.X
    controls = X[data.is_control]
    control_mean = controls.mean(axis=0).astype(np.float32)
    rng = np.random.default_rng(0)
    if len(controls) > _N_CONTROLS:
        controls = controls[np.sort(rng.choice(len(controls), _N_CONTROLS, replace=False))]
    controls = np.ascontiguousarray(controls, np.float32)
    cells = target.read("cells", columns=["cell_type"], filter=pc.field("dataset_id") == data.dataset_id)
    cell_types = tuple(sorted({str(c) for c in cells["cell_type"].drop_null().to_pylist() if str(c).strip()}))
    vocab = build_vocab(
        target,
        model_symbols=model.gene_symbols,
        model_ids=model.gene_ids,
        perturbations=model.train_perturbations,
        dataset_id=data.dataset_id,
    )
    column: dict[str, int] = {}
    for i, (gid, sym) in enumerate(zip(model.gene_ids, model.gene_symbols, strict=True)):
        column.setdefault(sym.upper(), i)
        column.setdefault(gid.split(".", 1)[0], i)
    return PerturbState(
        record=record,
        model=model,
        dataset=dataset,
        dataset_id=data.dataset_id,
        cell_types=cell_types,
        control_mean=control_mean,
        controls=controls,
        vocab=vocab,
        column=column,
        embedder=_embedder(model, controls),
        notes=tuple(notes),
    )


# ------------------------------------------------------------------------------------------------ requests


def _check_context(state: PerturbState, ctx: Context) -> list[str]:
    notes = list(state.notes)
    if ctx.dataset and ctx.dataset.lower() not in (state.dataset.lower(), state.dataset_id.lower()):
        raise InvalidRequestError(
            f"{state.record.ref} was trained on dataset {state.dataset!r}, not {ctx.dataset!r}: "
            "no served model knows that context"
        )
    if ctx.cell_line:
        known = {c.lower() for c in state.cell_types}
        if known and ctx.cell_line.lower() not in known:
            raise InvalidRequestError(
                f"{state.record.ref} knows cell line(s) {', '.join(state.cell_types)}, not {ctx.cell_line!r}"
            )
        if not known:
            notes.append(f"dataset {state.dataset!r} records no cell types: cell_line was not checked")
    return notes


def _labels(state: PerturbState, names: list[str]) -> tuple[list[str], list[list[str]]]:
    targets = state.vocab.resolve_perturbations(names)
    return ["+".join(t) for t in targets], targets


def _fallbacks(model: models.PerturbationModel, labels: list[str], reported: list[str]) -> list[bool]:
    """Which predictions are the mean training effect rather than the perturbation's own: the baselines do
    not report it (they fall back silently by design), so it is derived from what they were trained on."""
    said = set(reported)
    if isinstance(model, models.Additive):
        names = set(model.names)
        return [lb not in names and not all(t in names for t in lb.split("+")) for lb in labels]
    if isinstance(model, models.PerturbationMean):
        names = set(model.names)
        return [lb not in names for lb in labels]
    return [lb in said for lb in labels]


def _top(state: PerturbState, delta: F32, k: int, *, up: bool) -> list[GeneEffect]:
    order = np.argsort(-delta if up else delta, kind="stable")[:k]
    out = []
    for i in order.tolist():
        d = float(delta[i])
        if (up and d <= 0) or (not up and d >= 0):
            break
        out.append(GeneEffect(gene=state.model.gene_symbols[i], ensembl_id=state.model.gene_ids[i], delta=d))
    return out


def _round(values: F32) -> list[float]:
    # 6 significant digits: float32 carries ~7, and JSON of full float64 reprs doubles the answer's size
    return [float(f"{v:.6g}") for v in values.tolist()]


def predict(state: PerturbState, req: PredictRequest) -> tuple[PredictResponse, dict[str, Any]]:
    """The answer and the `predictions` row summary."""
    notes = _check_context(state, req.context)
    n = req.context.n_cells
    if n * len(req.perturbations) > MAX_SAMPLED_CELLS:
        raise InvalidRequestError(
            f"{n} cells x {len(req.perturbations)} perturbations is more than {MAX_SAMPLED_CELLS} predicted cells"
        )
    labels, targets = _labels(state, list(req.perturbations))
    deltas, reported = state.model.predict_delta(labels)
    fallback = _fallbacks(state.model, labels, reported)
    seen = set(state.model.train_perturbations)
    rng = np.random.default_rng(req.seed)
    out = []
    for name, label, tg, delta, fb in zip(req.perturbations, labels, targets, deltas, fallback, strict=True):
        mean = np.maximum(state.control_mean + delta, 0.0)
        cells: list[list[float]] = []
        if n:
            pick = rng.integers(0, len(state.controls), size=n)
            cells = [_round(row) for row in np.maximum(state.controls[pick] + delta, 0.0)]
        out.append(
            PerturbationPrediction(
                perturbation=name,
                label=label,
                targets=tg,
                seen_in_training=label in seen,
                fallback=fb,
                mean=_round(mean) if req.include_profile else [],
                delta=_round(delta) if req.include_profile else [],
                cells=cells,
                top_up=_top(state, delta, req.top_k, up=True),
                top_down=_top(state, delta, req.top_k, up=False),
            )
        )
    with_genes = req.include_profile or n > 0
    response = PredictResponse(
        request_id=uuid.uuid4().hex,
        model=state.info,
        dataset=state.dataset,
        genes=list(state.model.gene_symbols) if with_genes else [],
        gene_ids=list(state.model.gene_ids) if with_genes else [],
        predictions=out,
        notes=notes,
    )
    summary = {
        p.label: {
            "top_up": [g.gene for g in p.top_up[:5]],
            "top_down": [g.gene for g in p.top_down[:5]],
            "fallback": p.fallback,
        }
        for p in out
    }
    return response, summary


def _program(state: PerturbState, req: ScreenRequest) -> tuple[list[int], F32, list[str], list[str]]:
    prog = req.program
    if prog.weights and len(prog.weights) != len(prog.genes):
        raise InvalidRequestError(f"program has {len(prog.genes)} genes but {len(prog.weights)} weights")
    weights = prog.weights or [1.0] * len(prog.genes)
    unknown = [g for g in prog.genes if state.vocab.symbol(g) is None and g.split(".", 1)[0] not in state.column]
    if unknown:
        raise UnknownGenesError(unknown, "program gene", state.vocab.hint)
    cols: dict[int, float] = {}
    used, unmeasured = [], []
    for g, weight in zip(prog.genes, weights, strict=True):
        sym = state.vocab.symbol(g) or g
        i = state.column.get(sym.upper(), state.column.get(g.split(".", 1)[0]))
        if i is None:
            unmeasured.append(sym)
        elif i not in cols:
            cols[i] = weight
            used.append(state.model.gene_symbols[i])
    if not cols:
        raise InvalidRequestError(
            f"none of the program's genes is measured by {state.record.ref} "
            f"({len(state.model.gene_ids)} genes, e.g. {', '.join(state.model.gene_symbols[:5])})"
        )
    w = np.array(list(cols.values()), np.float32)
    if not np.abs(w).sum() > 0:
        raise InvalidRequestError("the program's weights are all zero")
    return list(cols), w, used, unmeasured


def screen(state: PerturbState, req: ScreenRequest) -> tuple[ScreenResponse, dict[str, Any]]:
    _check_context(state, req.context)
    cols, w, used, unmeasured = _program(state, req)
    labels, _ = _labels(state, list(req.candidates))
    norm = float(np.abs(w).sum())
    effect = np.empty(len(labels), np.float32)
    magnitude = np.empty(len(labels), np.float32)
    fallback: list[bool] = []
    for start in range(0, len(labels), _CHUNK):
        chunk = labels[start : start + _CHUNK]
        deltas, reported = state.model.predict_delta(chunk)
        sub = deltas[:, cols]
        effect[start : start + len(chunk)] = sub @ w / norm
        magnitude[start : start + len(chunk)] = np.abs(sub) @ np.abs(w) / norm
        fallback += _fallbacks(state.model, chunk, reported)
    direction = req.program.direction
    score = effect if direction == "up" else -effect if direction == "down" else magnitude
    order = np.argsort(-score, kind="stable")[: req.top_k]
    seen = set(state.model.train_perturbations)
    hits = [
        ScreenHit(
            rank=rank + 1,
            perturbation=req.candidates[i],
            label=labels[i],
            score=float(score[i]),
            program_delta=float(effect[i]),
            seen_in_training=labels[i] in seen,
            fallback=fallback[i],
        )
        for rank, i in enumerate(order.tolist())
    ]
    response = ScreenResponse(
        request_id=uuid.uuid4().hex,
        model=state.info,
        dataset=state.dataset,
        program_genes=used,
        unmeasured_genes=unmeasured,
        n_candidates=len(labels),
        hits=hits,
    )
    summary = {
        "program": req.program.name or used[:10],
        "direction": direction,
        "top": [(h.label, round(h.score, 6)) for h in hits[:10]],
    }
    return response, summary


def embed(state: PerturbState, req: EmbedRequest) -> tuple[EmbedResponse, dict[str, Any]]:
    n_model = len(state.model.gene_ids)
    genes = list(req.genes) if req.genes else list(state.model.gene_symbols)
    widths = {len(row) for row in req.counts}
    if widths != {len(genes)}:
        raise InvalidRequestError(
            f"counts rows have {', '.join(map(str, sorted(widths)))} values; expected {len(genes)} (one per gene)"
        )
    if len(set(g.upper() for g in genes)) != len(genes):
        raise InvalidRequestError("genes has duplicates")
    src, dst = [], []
    unknown = []
    for j, g in enumerate(genes):
        i = state.column.get(g.upper(), state.column.get(g.split(".", 1)[0]))
        if i is None:
            sym = state.vocab.symbol(g)
            i = state.column.get(sym.upper()) if sym else None
            if sym is None:
                unknown.append(g)
        if i is not None:
            src.append(j)
            dst.append(i)
    if unknown:
        raise UnknownGenesError(unknown, "gene", state.vocab.hint)
    if len(dst) < max(1, n_model // 2):
        raise InvalidRequestError(
            f"only {len(dst)} of the model's {n_model} genes are in the request: at least half are needed"
        )
    counts = np.asarray(req.counts, np.float32)
    aligned = np.zeros((counts.shape[0], n_model), np.float32)
    aligned[:, dst] = counts[:, src]
    z = state.embedder(models.log_normalize(aligned))
    response = EmbedResponse(
        request_id=uuid.uuid4().hex,
        model=state.info,
        method=state.embedder.method,
        dim=int(z.shape[1]),
        genes_used=len(dst),
        genes_missing=n_model - len(dst),
        embeddings=[_round(row) for row in z],
    )
    summary = {
        "n_cells": int(counts.shape[0]),
        "n_genes": len(genes),
        "dim": int(z.shape[1]),
        "method": state.embedder.method,
    }
    return response, summary
