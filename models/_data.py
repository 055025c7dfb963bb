"""Training data from the lake: one atlas dataset's cells, log-normalised, pinned to what it was read at.

A `PerturbData` holds the expression (log1p of counts per 10k, dense: a Perturb-seq screen's panel fits in
memory; `iter_cell_batches` streams larger ones), each cell's perturbation label and replicate, and the
`Snapshot` (dataset ids, Delta table versions, SOMA timestamp) that makes a model traceable to its data.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp
from deltalake.exceptions import DeltaError

import lake
from models._errors import InvalidTrainingDataError

__all__ = ["CONTROL", "PerturbData", "Snapshot", "iter_cell_batches", "load_perturb_data", "log_normalize"]

CONTROL = "control"  # the label of control cells in `PerturbData.perturbation`
ORGANISM = "homo_sapiens"
TARGET_SUM = 1e4
_PINNED_TABLES = ("datasets", "cells", "dataset_genes", "hpa_subcellular")

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Snapshot:
    """What a training set was read at: enough to read exactly the same data again."""

    dataset_ids: tuple[str, ...]
    soma_timestamp: int | None
    delta_versions: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["dataset_ids"] = list(self.dataset_ids)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Snapshot:
        """The snapshot a registry row's `trained_on` recorded (extra keys are ignored)."""
        ts = d.get("soma_timestamp")
        return cls(
            tuple(d.get("dataset_ids") or ()),
            int(ts) if ts is not None else None,
            {str(k): int(v) for k, v in (d.get("delta_versions") or {}).items()},
        )


def log_normalize(counts: sp.csr_matrix | npt.NDArray[Any]) -> F32:
    """log1p of counts scaled to `TARGET_SUM` per cell (scanpy's `normalize_total` + `log1p`)."""
    if sp.issparse(counts):
        csr = sp.csr_matrix(counts, dtype=np.float32)
        totals = np.asarray(csr.sum(axis=1)).ravel()
        scale = np.divide(TARGET_SUM, totals, out=np.zeros_like(totals), where=totals > 0)
        csr = sp.csr_matrix(sp.diags(scale.astype(np.float32)) @ csr)
        csr.data = np.log1p(csr.data)
        return cast(F32, np.asarray(csr.toarray(), dtype=np.float32))
    dense = np.asarray(counts, dtype=np.float32)
    totals = dense.sum(axis=1, keepdims=True)
    scale = np.divide(TARGET_SUM, totals, out=np.zeros_like(totals), where=totals > 0)
    return cast(F32, np.log1p(dense * scale).astype(np.float32))


@dataclass
class PerturbData:
    """Cells x genes of one dataset, with each cell's perturbation (`CONTROL` for controls) and replicate."""

    X: F32
    perturbation: npt.NDArray[np.str_]
    replicate: npt.NDArray[np.str_]
    gene_ids: npt.NDArray[np.str_]
    gene_symbols: npt.NDArray[np.str_]
    dataset_id: str = ""
    snapshot: Snapshot | None = None

    def __post_init__(self) -> None:
        n = self.X.shape[0]
        if not (len(self.perturbation) == len(self.replicate) == n and len(self.gene_ids) == self.X.shape[1]):
            raise InvalidTrainingDataError("expression, labels and genes do not line up")
        if not np.isfinite(self.X).all():
            raise InvalidTrainingDataError("expression has NaN or infinite values")

    @property
    def n_cells(self) -> int:
        return int(self.X.shape[0])

    @property
    def n_genes(self) -> int:
        return int(self.X.shape[1])

    @property
    def is_control(self) -> npt.NDArray[np.bool_]:
        return np.asarray(self.perturbation == CONTROL)

    @property
    def perturbations(self) -> list[str]:
        """The perturbations present (controls excluded), sorted."""
        return sorted(set(self.perturbation[~self.is_control].tolist()))

    @property
    def replicates(self) -> list[str]:
        return sorted(set(self.replicate.tolist()))

    def subset(self, mask: npt.NDArray[np.bool_]) -> PerturbData:
        return PerturbData(
            self.X[mask],
            self.perturbation[mask],
            self.replicate[mask],
            self.gene_ids,
            self.gene_symbols,
            self.dataset_id,
            self.snapshot,
        )

    def where(self, perturbations: list[str] | set[str], *, with_controls: bool = True) -> PerturbData:
        keep = np.isin(self.perturbation, list(perturbations))
        return self.subset(keep | self.is_control if with_controls else keep)

    def control_mean(self, replicate: str | None = None) -> F32:
        mask = self.is_control if replicate is None else self.is_control & (self.replicate == replicate)
        if not mask.any():
            mask = self.is_control
        return np.asarray(self.X[mask].mean(axis=0), dtype=np.float32)

    def pseudobulk(self) -> tuple[list[str], F32]:
        """Mean log-expression per perturbation (controls excluded): (names, perturbations x genes)."""
        names = self.perturbations
        codes = {p: i for i, p in enumerate(names)}
        idx = np.array([codes.get(p, -1) for p in self.perturbation.tolist()])
        keep = idx >= 0
        sums = np.zeros((len(names), self.n_genes), np.float64)
        np.add.at(sums, idx[keep], self.X[keep])
        counts = np.bincount(idx[keep], minlength=len(names)).astype(np.float64)
        return names, (sums / counts[:, None]).astype(np.float32)

    def deltas(self) -> tuple[list[str], F32]:
        """Pseudo-bulk minus the control mean of the same replicates: the effect of each perturbation."""
        names, means = self.pseudobulk()
        out = np.empty_like(means)
        for i, p in enumerate(names):
            cells = self.perturbation == p
            reps, counts = np.unique(self.replicate[cells], return_counts=True)
            # controls matched by replicate, weighted as the perturbed cells are
            ctrl = sum(c * self.control_mean(r) for r, c in zip(reps.tolist(), counts.tolist(), strict=True))
            out[i] = means[i] - np.asarray(ctrl, np.float32) / counts.sum()
        return names, out


def _dataset_row(target: lake.Lake, dataset: str, *, version: int | None = None) -> dict[str, Any]:
    if version is not None:  # a pinned read: the registry as it was
        rows = target.read("datasets", version=version, filter=pc.field("dataset_id") == dataset).to_pylist()
        if not rows:
            raise InvalidTrainingDataError(f"dataset {dataset!r} is not in version {version} of `datasets`")
        return cast(dict[str, Any], rows[0])
    row = target.find_dataset(name=dataset)
    if row is None:
        rows = target.read("datasets", filter=pc.field("dataset_id") == dataset)
        row = rows.to_pylist()[0] if rows.num_rows else None
    if row is None:
        names = sorted(set(target.datasets(kind="atlas")["name"].to_pylist()))
        raise InvalidTrainingDataError(f"no atlas dataset {dataset!r} in the lake (have: {', '.join(names) or 'none'})")
    if row["kind"] != "atlas":
        raise InvalidTrainingDataError(f"dataset {dataset!r} is {row['kind']}, not an atlas")
    return row


def _dataset_genes(target: lake.Lake, dataset_id: str, *, version: int | None = None) -> pa.Table:
    rows = target.read("dataset_genes", version=version, filter=pc.field("dataset_id") == dataset_id)
    return rows.sort_by("soma_joinid")


def load_perturb_data(target: lake.Lake, dataset: str, *, at: Snapshot | None = None) -> PerturbData:
    """Read one atlas dataset (by name or id) from the SOMA experiment at the committed timestamp.

    `at` reads exactly what a model was trained on: the `Snapshot` it recorded (its first dataset id, the
    Delta table versions and the SOMA timestamp), whatever was ingested since.
    """
    import tiledbsoma as soma

    if at is not None:
        if not at.dataset_ids:
            raise InvalidTrainingDataError("the snapshot names no dataset")
        versions = dict(at.delta_versions)
        try:
            row = _dataset_row(target, at.dataset_ids[0], version=versions.get("datasets"))
        except (lake.LakeError, DeltaError) as e:  # e.g. the pinned Delta version was vacuumed away
            raise InvalidTrainingDataError(f"the data snapshot is no longer readable: {e}") from None
        ts = at.soma_timestamp
    else:
        row = _dataset_row(target, dataset)
        versions = {t: target.version(t) for t in _PINNED_TABLES}
        ts = target.committed_soma_timestamp()
    did = row["dataset_id"]
    genes = _dataset_genes(target, did, version=versions["dataset_genes"])
    var_ids = genes["soma_joinid"].to_numpy()
    organism = row.get("organism") or ORGANISM
    with (
        lake.open_experiment(target.settings.soma_uri, organism, timestamp=ts) as exp,
        exp.axis_query(
            "RNA",
            obs_query=soma.AxisQuery(value_filter=f"dataset_id == '{did}'"),
            var_query=soma.AxisQuery(coords=(var_ids,)),
        ) as q,
    ):
        obs = q.obs(column_names=["soma_joinid", "perturbation", "is_control", "replicate"]).concat()
        coo = q.X("raw").tables().concat()
        obs_ids = np.sort(q.obs_joinids().to_numpy())
    if obs.num_rows == 0:
        raise InvalidTrainingDataError(f"dataset {dataset!r} has no cells in the SOMA experiment")
    rows = np.searchsorted(obs_ids, coo["soma_dim_0"].to_numpy())
    cols = np.searchsorted(var_ids, coo["soma_dim_1"].to_numpy())
    counts = sp.csr_matrix(
        (coo["soma_data"].to_numpy().astype(np.float32), (rows, cols)), shape=(len(obs_ids), len(var_ids))
    )
    order = np.searchsorted(obs_ids, obs["soma_joinid"].to_numpy())  # obs rows in joinid order
    pert = np.empty(len(obs_ids), dtype=object)
    pert[order] = obs["perturbation"].to_numpy(zero_copy_only=False)
    control = np.zeros(len(obs_ids), bool)
    control[order] = obs["is_control"].fill_null(False).to_numpy(zero_copy_only=False)
    rep = np.empty(len(obs_ids), dtype=object)
    rep[order] = obs["replicate"].fill_null("").to_numpy(zero_copy_only=False)
    if not control.any() and all(p is None for p in pert):
        raise InvalidTrainingDataError(
            f"dataset {dataset!r} has no perturbation column: ingest it with one (e.g. target_gene / perturbation)"
        )
    if not control.any():
        raise InvalidTrainingDataError(f"dataset {dataset!r} has no control cells: effects cannot be measured")
    labels = np.where(control, CONTROL, np.where(_isnull(pert), "", pert)).astype(str)
    keep = labels != ""  # a perturbed cell with no target recorded is unusable for training
    symbols = genes["symbol"].to_numpy(zero_copy_only=False)
    ids = genes["ensembl_id"].to_numpy(zero_copy_only=False).astype(str)
    data = PerturbData(
        log_normalize(counts[keep]),
        labels[keep],
        rep[keep].astype(str),
        ids,
        np.where(_isnull(symbols), ids, symbols).astype(str),
        dataset_id=did,
        snapshot=Snapshot((did,), ts, versions),
    )
    if not data.perturbations:
        raise InvalidTrainingDataError(f"dataset {dataset!r} has control cells only")
    return data


def _isnull(values: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
    return np.array([v is None or (isinstance(v, float) and np.isnan(v)) for v in values.tolist()], dtype=bool)


def iter_cell_batches(
    target: lake.Lake,
    dataset: str,
    *,
    batch_size: int = 1024,
    block_cells: int = 16_384,
    shuffle: bool = True,
    seed: int = 0,
) -> Iterator[tuple[F32, npt.NDArray[np.int64]]]:
    """Stream (log-normalised X, soma_joinids) mini-batches of one dataset, a block of cells at a time.

    Memory stays at one block whatever the dataset's size (two while the next one is read ahead); blocks (and
    cells within a block) are shuffled.
    """
    from concurrent.futures import Future, ThreadPoolExecutor

    import tiledbsoma as soma

    def locate(ids: npt.NDArray[np.int64]) -> tuple[Any, Any]:
        # (SOMA coordinates, joinid -> position) for sorted unique `ids`. A dataset's cells and genes are
        # mostly consecutive joinids (ingest appends dataset by dataset): a slice reads a range instead of
        # setting thousands of points, and positions are an offset, not a binary search over every nonzero.
        if len(ids) == 0:
            return ids, lambda j: j
        first, span = int(ids[0]), int(ids[-1]) - int(ids[0]) + 1
        if span == len(ids):
            return slice(first, first + span - 1), lambda j: j - first  # SOMA slices include both ends
        if span <= 4 * len(ids):  # a small gap-filled lookup table beats searchsorted on millions of values
            table = np.full(span, -1, np.int64)
            table[ids - first] = np.arange(len(ids))
            return ids, lambda j: table[j - first]
        return ids, lambda j: np.searchsorted(ids, j)

    row = _dataset_row(target, dataset)
    ts = target.committed_soma_timestamp()
    did = row["dataset_id"]
    var = _dataset_genes(target, did)["soma_joinid"].to_numpy()
    var_coords, var_pos = locate(var)
    rng = np.random.default_rng(seed)

    def read_block(X: Any, block: npt.NDArray[np.int64]) -> sp.csr_matrix:
        # one SOMA read per block, normalised while sparse (log_normalize's maths, in place on the nonzeros):
        # densifying the whole block first costs block x genes floats and a copy for every mini-batch
        coords, pos = locate(block)
        coo = X.read(coords=(coords, var_coords)).tables().concat()
        data = coo["soma_data"].to_numpy().astype(np.float32, copy=False)
        r, c = pos(coo["soma_dim_0"].to_numpy()), var_pos(coo["soma_dim_1"].to_numpy())
        csr = sp.csr_matrix((data, (r, c)), shape=(len(block), len(var)))
        totals = np.asarray(csr.sum(axis=1), dtype=np.float32).ravel()
        scale = np.divide(np.float32(TARGET_SUM), totals, out=np.zeros_like(totals), where=totals > 0)
        csr.data *= np.repeat(scale, np.diff(csr.indptr))
        np.log1p(csr.data, out=csr.data)
        return csr

    with lake.open_experiment(target.settings.soma_uri, row.get("organism") or ORGANISM, timestamp=ts) as exp:
        with exp.axis_query("RNA", obs_query=soma.AxisQuery(value_filter=f"dataset_id == '{did}'")) as q:
            obs_ids = q.obs_joinids().to_numpy()
        X = cast(Any, exp.ms["RNA"].X["raw"])  # a SparseNDArray; typed as the dense one
        blocks = [obs_ids[i : i + block_cells] for i in range(0, len(obs_ids), block_cells)]
        if shuffle:
            rng.shuffle(blocks)
        blocks = [np.sort(b) for b in blocks]
        # read ahead one block on a thread (TileDB and scipy release the GIL) while this one is yielded; leaving
        # the pool's `with` waits for it, so an abandoned generator never reads from a closed experiment
        with ThreadPoolExecutor(max_workers=1) as pool:
            ahead: Future[sp.csr_matrix] | None = pool.submit(read_block, X, blocks[0]) if blocks else None
            for k, block in enumerate(blocks):
                assert ahead is not None
                csr = ahead.result()
                ahead = pool.submit(read_block, X, blocks[k + 1]) if k + 1 < len(blocks) else None
                order = rng.permutation(len(block)) if shuffle else np.arange(len(block))
                for i in range(0, len(block), batch_size):
                    sel = order[i : i + batch_size]
                    yield np.asarray(csr[sel].toarray(), dtype=np.float32), block[sel]
