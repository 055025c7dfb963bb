"""Atlas ingest: an h5ad (CELLxGENE, HCA, Perturb-seq) into the SOMA census and the Delta tables.

Order of writes, so that a crash at any point leaves nothing a reader can see:
validate -> SOMA writes at one new timestamp -> Delta ``cells`` / ``dataset_genes`` -> the ``datasets`` row.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import tiledbsoma as soma

from lake import _soma
from lake._errors import InvalidInputError
from lake._fetch import resolve_source
from lake._genes import GeneMapping, GeneReference, map_var
from lake._h5ad import CountsMatrix, H5ad, describe_values
from lake._lake import Lake
from lake._obs import PerturbationColumns, cells_table, detect_perturbations
from lake._progress import Progress, null_progress
from lake._recovery import ingest_transaction
from lake._schemas import DATASET_GENES
from lake._storage import soma_context

__all__ = ["AtlasIngest", "ingest_atlas"]

DEFAULT_CHUNK_NNZ = 500_000  # ~15 MB of COO buffers per write; larger chunks are no faster


@dataclass(frozen=True)
class AtlasIngest:
    """What an atlas ingest did; ``status`` is ``"unchanged"`` when the same file was already ingested."""

    dataset_id: str
    name: str
    status: str
    n_obs: int
    n_vars: int
    n_unmapped_genes: int
    counts_source: str
    perturbation_column: str | None
    n_perturbations: int
    soma_timestamp: int | None
    seconds: float


def _choose_counts(f: H5ad, what: str) -> CountsMatrix:
    """X, else raw.X, else layers['counts']: the first that holds raw integer counts."""
    found: list[str] = []
    for m in f.candidates():
        problem = describe_values(m.head_values())
        if problem is None:
            if m.shape[0] != f.n_obs:
                raise InvalidInputError(f"{what}: {m.where} has {m.shape[0]} rows but obs has {f.n_obs}")
            return m
        found.append(f"{m.where} holds {problem}")
    if not any(m.where == "layers/counts" for m in f.candidates()):
        found.append("there is no layers['counts']")
    raise InvalidInputError(f"{what}: no raw integer counts found: {'; '.join(found)}")


def _check_unique(index: pd.Index, what: str, axis: str) -> None:
    dup = index[index.duplicated()]
    if len(dup):
        raise InvalidInputError(f"{what}: {len(dup)} duplicate {axis} id(s), e.g. {str(dup[0])!r}; ids must be unique")


def _load_reference(lake: Lake, explicit: str | None) -> GeneReference | None:
    source = explicit or lake.settings.gene_reference
    return GeneReference.load(source, cache_dir=lake.settings.cache_dir) if source else None


def ingest_atlas(
    lake: Lake,
    source: str | os.PathLike[str],
    *,
    name: str | None = None,
    organism: str = "homo_sapiens",
    gene_reference: str | None = None,
    progress: Progress = null_progress,
    chunk_nnz: int = DEFAULT_CHUNK_NNZ,
) -> AtlasIngest:
    """Validate an h5ad and append it to the census. The same file twice is a no-op."""
    t0 = time.perf_counter()
    lake.ensure_writable()
    src = resolve_source(source, cache_dir=lake.settings.cache_dir, progress=progress)
    name = name or Path(src.path.name).name.removesuffix(".h5ad")
    if (done := lake.find_dataset(sha256=src.sha256)) is not None:
        return _unchanged(done, t0)
    other = lake.find_dataset(name=name)
    if other is not None:
        raise InvalidInputError(
            f"a dataset named {name!r} already exists ({other['source_uri']}) with other content; pass --name"
        )
    dataset_id = src.sha256[:16]
    what = src.path.name
    with H5ad(src.path) as f:
        _check_unique(f.obs.index, what, "cell")
        matrix = _choose_counts(f, what)
        _check_unique(matrix.var.index, what, "gene")
        genes = map_var(matrix.var, _load_reference(lake, gene_reference), what=what)
        perts = detect_perturbations(f.obs, f.uns("genetic_perturbations"))
        with ingest_transaction(lake) as committed:
            if (done := lake.find_dataset(sha256=src.sha256)) is not None:  # a concurrent ingest won
                return _unchanged(done, t0)
            written = _write_soma(
                lake.settings.soma_uri, f, matrix, genes, perts, dataset_id=dataset_id, name=name,
                source_uri=src.uri, organism=organism, committed=committed, progress=progress,
                chunk_nnz=chunk_nnz,
            )  # fmt: skip
            lake.append("cells", written.cells)
            lake.append("dataset_genes", _dataset_genes(dataset_id, genes, written))
            n_perturbations = len({p for p in perts.perturbation if p is not None})
            lake.register_dataset(
                {
                    "dataset_id": dataset_id,
                    "name": name,
                    "kind": "atlas",
                    "organism": _soma.organism_key(organism),
                    "source_uri": src.uri,
                    "sha256": src.sha256,
                    "n_obs": f.n_obs,
                    "n_vars": matrix.shape[1],
                    "ingested_at": datetime.now(UTC),
                    "soma_timestamp": written.timestamp,
                    "obs_joinid_start": written.obs_start,
                    "counts_source": matrix.where,
                    "gene_id_source": genes.id_kind,
                    "n_unmapped_genes": genes.n_unmapped,
                    "perturbation_column": perts.target_column,
                    "n_perturbations": n_perturbations,
                }
            )
            progress("commit", 1, 1)
    return AtlasIngest(
        dataset_id=dataset_id,
        name=name,
        status="ingested",
        n_obs=f.n_obs,
        n_vars=matrix.shape[1],
        n_unmapped_genes=genes.n_unmapped,
        counts_source=matrix.where,
        perturbation_column=perts.target_column,
        n_perturbations=n_perturbations,
        soma_timestamp=written.timestamp,
        seconds=time.perf_counter() - t0,
    )


@dataclass(frozen=True)
class _SomaWrite:
    timestamp: int
    obs_start: int
    var_joinids: npt.NDArray[np.int64]  # per var row of the file
    var_nnz: npt.NDArray[np.int64]  # per var row of the file
    cells: pa.Table  # the obs rows written, for the Delta mirror


def _dataset_genes(dataset_id: str, genes: GeneMapping, written: _SomaWrite) -> pa.Table:
    return pa.table(
        {
            "dataset_id": pa.array([dataset_id] * len(genes.ensembl_id), type=pa.string()),
            "ensembl_id": pa.array(genes.ensembl_id, type=pa.string()),
            "symbol": pa.array(genes.symbol, type=pa.string()),
            "source_id": pa.array(genes.source_id, type=pa.string()),
            "soma_joinid": pa.array(written.var_joinids),
            "feature_length": pa.array(genes.feature_length, type=pa.int64()),
            "biotype": pa.array(genes.biotype, type=pa.string()),
            "is_mapped": pa.array(genes.is_mapped, type=pa.bool_()),
            "nnz": pa.array(written.var_nnz),
        },
        schema=DATASET_GENES.schema,
    )


def _write_soma(
    soma_uri: str,
    f: H5ad,
    matrix: CountsMatrix,
    genes: GeneMapping,
    perts: PerturbationColumns,
    *,
    dataset_id: str,
    name: str,
    source_uri: str,
    organism: str,
    committed: int | None,
    progress: Progress,
    chunk_nnz: int,
) -> _SomaWrite:
    """Append one dataset to the organism's experiment, every write at one new timestamp."""
    _soma.ensure_census(soma_uri, organism)
    exp_uri = _soma.experiment_uri(soma_uri, organism)
    ctx = soma_context(soma_uri)
    ts = _soma.next_timestamp(committed)
    n_obs, n_file_vars = matrix.shape

    # The committed state: where the obs axis ends, which genes the var axis has registered.
    rna: Any
    with soma.Experiment.open(exp_uri, "r", tiledb_timestamp=committed, context=ctx) as exp:
        obs_start = exp.obs.count if committed is not None else 0
        rna = exp.ms[_soma.MEASUREMENT]
        var_old = rna.var.read(column_names=["soma_joinid", "feature_id", "nnz", "n_measured_obs"]).concat()
        var_old = var_old if committed is not None else var_old.slice(0, 0)
    with soma.DataFrame.open(f"{soma_uri}/census_info/datasets", "r", tiledb_timestamp=committed, context=ctx) as ds:
        census_row = ds.count if committed is not None else 0

    known = dict(zip(var_old["feature_id"].to_pylist(), var_old["soma_joinid"].to_pylist(), strict=True))
    next_id = len(known)
    var_joinids = np.empty(n_file_vars, dtype=np.int64)
    for i, fid in enumerate(genes.ensembl_id):
        if fid not in known:
            known[fid] = next_id
            next_id += 1
        var_joinids[i] = known[fid]
    n_vars_total = next_id

    with soma.Experiment.open(exp_uri, "w", tiledb_timestamp=ts, context=ctx) as exp:
        rna = exp.ms[_soma.MEASUREMENT]
        _soma.grow(exp.obs, obs_start + n_obs)
        _soma.grow(rna.var, n_vars_total)
        _soma.grow(rna.X[_soma.LAYER], obs_start + n_obs, n_vars_total)
        _soma.grow(rna[_soma.PRESENCE], census_row + 1, n_vars_total)
    with soma.DataFrame.open(f"{soma_uri}/census_info/datasets", "w", tiledb_timestamp=ts, context=ctx) as ds:
        _soma.grow(ds, census_row + 1)

    raw_sum = np.zeros(n_obs, dtype=np.float64)
    row_nnz = np.zeros(n_obs, dtype=np.int64)
    var_nnz = np.zeros(n_file_vars, dtype=np.int64)
    with soma.Experiment.open(exp_uri, "w", tiledb_timestamp=ts, context=ctx) as exp:
        rna = exp.ms[_soma.MEASUREMENT]
        x: Any = rna.X[_soma.LAYER]
        for chunk in matrix.iter_chunks(chunk_nnz=chunk_nnz):
            problem = describe_values(chunk.data)
            if problem is not None:
                raise InvalidInputError(
                    f"{f.path}: {matrix.where} rows {chunk.start}-{chunk.stop} hold {problem}; need raw counts"
                )
            local = chunk.rows - chunk.start
            raw_sum[chunk.start : chunk.stop] = np.bincount(
                local, weights=chunk.data, minlength=chunk.stop - chunk.start
            )
            row_nnz[chunk.start : chunk.stop] = chunk.row_nnz
            var_nnz += np.bincount(chunk.cols, minlength=n_file_vars)
            x.write(
                pa.Table.from_arrays(
                    [
                        pa.array(chunk.rows + obs_start),
                        pa.array(var_joinids[chunk.cols]),
                        pa.array(chunk.data.astype(np.float32, copy=False)),
                    ],
                    names=["soma_dim_0", "soma_dim_1", "soma_data"],
                )
            )
            progress("write X", chunk.stop, n_obs)

        cells = cells_table(
            f.obs,
            dataset_id=dataset_id,
            organism=_soma.organism_key(organism),
            joinid_start=obs_start,
            perturbations=perts,
            raw_sum=raw_sum,
            nnz=row_nnz,
        )
        exp.obs.write(cells)
        # var: new genes, and the running nnz / n_measured_obs of every gene this dataset measures.
        old = {
            j: (n, m)
            for j, n, m in zip(
                var_old["soma_joinid"].to_pylist(),
                var_old["nnz"].to_pylist(),
                var_old["n_measured_obs"].to_pylist(),
                strict=True,
            )
        }
        prev = [old.get(int(j), (0, 0)) for j in var_joinids]
        rna.var.write(
            pa.table(
                {
                    "soma_joinid": pa.array(var_joinids),
                    "feature_id": pa.array(genes.ensembl_id, type=pa.string()),
                    "feature_name": pa.array(genes.symbol, type=pa.string()),
                    "feature_length": pa.array(genes.feature_length, type=pa.int64()),
                    "feature_biotype": pa.array(genes.biotype, type=pa.string()),
                    "nnz": pa.array([(p[0] or 0) + int(v) for p, v in zip(prev, var_nnz, strict=True)], pa.int64()),
                    "n_measured_obs": pa.array([(p[1] or 0) + n_obs for p in prev], pa.int64()),
                }
            )
        )
        presence: Any = rna[_soma.PRESENCE]
        presence.write(
            pa.table(
                {
                    "soma_dim_0": pa.array(np.full(n_file_vars, census_row, dtype=np.int64)),
                    "soma_dim_1": pa.array(var_joinids),
                    "soma_data": pa.array(np.ones(n_file_vars, dtype=bool)),
                }
            )
        )
    with soma.DataFrame.open(f"{soma_uri}/census_info/datasets", "w", tiledb_timestamp=ts, context=ctx) as ds:
        ds.write(
            pa.table(
                {
                    "soma_joinid": pa.array([census_row], pa.int64()),
                    "dataset_id": [dataset_id],
                    "collection_id": [None],
                    "collection_name": [None],
                    "dataset_title": [name],
                    "dataset_h5ad_path": [source_uri],
                    "dataset_version_id": [dataset_id],
                    "dataset_total_cell_count": pa.array([n_obs], pa.int64()),
                },
                schema=pa.schema([pa.field("soma_joinid", pa.int64()), *_soma.CENSUS_DATASETS_SCHEMA]),
            )
        )
    _write_summary(soma_uri, ts, total_cells=obs_start + n_obs, n_datasets=census_row + 1)
    return _SomaWrite(ts, obs_start, var_joinids, var_nnz, cells)


def _write_summary(soma_uri: str, ts: int, *, total_cells: int, n_datasets: int) -> None:
    rows = [
        ("census_schema_version", _soma.CENSUS_SCHEMA_VERSION),
        ("census_build_date", datetime.fromtimestamp(ts / 1000, UTC).date().isoformat()),
        ("dataset_schema_version", "cellfarm"),
        ("total_cell_count", str(total_cells)),
        ("unique_cell_count", str(total_cells)),
        ("dataset_count", str(n_datasets)),
    ]
    ctx = soma_context(soma_uri)
    with soma.DataFrame.open(f"{soma_uri}/census_info/summary", "w", tiledb_timestamp=ts, context=ctx) as summary:
        summary.write(
            pa.table(
                {
                    "soma_joinid": pa.array(range(len(rows)), pa.int64()),
                    "label": [r[0] for r in rows],
                    "value": [r[1] for r in rows],
                }
            )
        )


def _unchanged(row: dict[str, object], t0: float) -> AtlasIngest:
    return AtlasIngest(
        dataset_id=str(row["dataset_id"]),
        name=str(row["name"]),
        status="unchanged",
        n_obs=int(row["n_obs"] or 0),  # type: ignore[call-overload]
        n_vars=int(row["n_vars"] or 0),  # type: ignore[call-overload]
        n_unmapped_genes=int(row["n_unmapped_genes"] or 0),  # type: ignore[call-overload]
        counts_source=str(row["counts_source"]),
        perturbation_column=None if row["perturbation_column"] is None else str(row["perturbation_column"]),
        n_perturbations=int(row["n_perturbations"] or 0),  # type: ignore[call-overload]
        soma_timestamp=None if row["soma_timestamp"] is None else int(row["soma_timestamp"]),  # type: ignore[call-overload]
        seconds=time.perf_counter() - t0,
    )
