"""Versioned Arrow schemas of every lake table (the SQL contract of DESIGN.md).

A schema change bumps ``version``; the version is written into the Delta table's description at creation and
checked when a table is opened, so old code never writes into a newer layout (or the reverse) by accident.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pyarrow as pa

__all__ = ["TABLES", "TableSpec", "spec"]

_TS = pa.timestamp("us", tz="UTC")
_STR = pa.string()


@dataclass(frozen=True)
class TableSpec:
    """One Delta table: its name, schema version, Arrow schema, keys and partitioning."""

    name: str
    version: int
    schema: pa.Schema
    doc: str
    keys: tuple[str, ...] = ()
    partition_by: tuple[str, ...] = ()
    # Rows belong to a dataset and are visible only once that dataset's registry row is committed.
    dataset_scoped: bool = False
    # A reference table (e.g. HPA) whose newest release replaces the older ones in SQL.
    latest_release_only: bool = False
    # Rows belong to an acquisition run and are visible once its `acquisition_runs` row is committed (a live run
    # registers first, so its frames stream into SQL; an import registers last, so a crash leaves nothing visible).
    run_scoped: bool = False

    @property
    def description(self) -> str:
        return f"cellfarm {self.name} v{self.version}: {self.doc}"

    @staticmethod
    def parse_version(description: str | None) -> int | None:
        m = re.match(r"cellfarm \S+ v(\d+):", description or "")
        return int(m.group(1)) if m else None


def _schema(*fields: tuple[str, pa.DataType] | tuple[str, pa.DataType, bool]) -> pa.Schema:
    out = []
    for f in fields:
        name, typ, nullable = (f[0], f[1], f[2] if len(f) == 3 else True)
        out.append(pa.field(name, typ, nullable=nullable))
    return pa.schema(out)


DATASETS = TableSpec(
    name="datasets",
    version=1,
    doc="one row per ingested source file; the commit point of every ingest",
    keys=("dataset_id",),
    schema=_schema(
        ("dataset_id", _STR, False),
        ("name", _STR, False),
        ("kind", _STR, False),  # atlas | hpa | images
        ("organism", _STR),
        ("source_uri", _STR, False),
        ("sha256", _STR, False),
        ("n_obs", pa.int64()),
        ("n_vars", pa.int64()),
        ("ingested_at", _TS, False),
        ("soma_timestamp", pa.int64()),  # ms since epoch; SOMA readers open at this
        ("obs_joinid_start", pa.int64()),
        ("counts_source", _STR),  # X | raw.X | layers/counts
        ("gene_id_source", _STR),  # ensembl | symbol
        ("n_unmapped_genes", pa.int64()),
        ("perturbation_column", _STR),
        ("n_perturbations", pa.int64()),
    ),
)

# The obs of every ingested cell; the same Arrow schema is the SOMA obs dataframe (Census-like columns).
CELLS = TableSpec(
    name="cells",
    version=1,
    doc="one row per cell of an atlas dataset (obs mirror of SOMA)",
    keys=("soma_joinid",),
    partition_by=("dataset_id",),
    dataset_scoped=True,
    schema=_schema(
        ("soma_joinid", pa.int64(), False),
        ("dataset_id", _STR, False),
        ("obs_id", _STR, False),
        ("organism", _STR),
        ("assay", _STR),
        ("assay_ontology_term_id", _STR),
        ("cell_type", _STR),
        ("cell_type_ontology_term_id", _STR),
        ("tissue", _STR),
        ("tissue_ontology_term_id", _STR),
        ("disease", _STR),
        ("disease_ontology_term_id", _STR),
        ("development_stage", _STR),
        ("development_stage_ontology_term_id", _STR),
        ("sex", _STR),
        ("sex_ontology_term_id", _STR),
        ("donor_id", _STR),
        ("suspension_type", _STR),
        ("replicate", _STR),
        ("perturbation", _STR),  # target gene symbol(s), "+"-joined for combinations; null for controls
        ("is_control", pa.bool_()),
        ("guide_id", _STR),
        ("raw_sum", pa.float64()),
        ("nnz", pa.int64()),
    ),
)

DATASET_GENES = TableSpec(
    name="dataset_genes",
    version=1,
    doc="one row per gene of each atlas dataset; the SQL view `genes` aggregates it to one row per gene",
    keys=("dataset_id", "ensembl_id"),
    partition_by=("dataset_id",),
    dataset_scoped=True,
    schema=_schema(
        ("dataset_id", _STR, False),
        ("ensembl_id", _STR, False),  # feature_id in SOMA; the file's own id where it maps to nothing
        ("symbol", _STR),
        ("source_id", _STR, False),
        ("soma_joinid", pa.int64(), False),
        ("feature_length", pa.int64()),
        ("biotype", _STR),
        ("is_mapped", pa.bool_(), False),
        ("nnz", pa.int64()),
    ),
)

HPA_SUBCELLULAR = TableSpec(
    name="hpa_subcellular",
    version=1,
    doc="one row per gene x subcellular location from the Human Protein Atlas",
    keys=("dataset_id", "ensembl_id", "location"),
    partition_by=("dataset_id",),
    dataset_scoped=True,
    latest_release_only=True,
    schema=_schema(
        ("dataset_id", _STR, False),
        ("ensembl_id", _STR, False),
        ("symbol", _STR),
        ("location", _STR, False),
        ("is_main", pa.bool_(), False),
        ("location_kind", _STR, False),  # main | additional | extracellular
        ("reliability", _STR),  # gene-level: Enhanced | Supported | Approved | Uncertain
        ("location_reliability", _STR),  # this location's own evidence level
        ("go_id", _STR),
        ("single_cell_variation", _STR),  # intensity | spatial | null
        ("cell_cycle_dependency", _STR),
    ),
)

ACQUISITION_RUNS = TableSpec(
    name="acquisition_runs",
    version=1,
    doc="one row per acquisition run (latest status wins)",
    keys=("run_id",),
    schema=_schema(
        ("run_id", _STR, False),
        ("microscope_id", _STR, False),
        ("plan", _STR),  # useq-schema MDASequence as JSON
        ("started_at", _TS),
        ("ended_at", _TS),
        ("status", _STR, False),  # running | completed | failed | aborted
        ("policy", _STR),
        ("n_frames", pa.int64()),
        ("error", _STR),
        ("summary", _STR),  # JSON: frames/s, commits, queue high-water mark, backpressure, policy and twin scores
    ),
)

FRAMES = TableSpec(
    name="frames",
    version=1,
    doc="one row per acquired image plane",
    keys=("run_id", "frame_id"),
    partition_by=("run_id",),
    run_scoped=True,
    schema=_schema(
        ("run_id", _STR, False),
        ("frame_id", pa.int64(), False),
        ("t", pa.int32()),
        ("p", pa.int32()),
        ("c", pa.int32()),
        ("z", pa.int32()),
        ("well", _STR),
        ("x_um", pa.float64()),
        ("y_um", pa.float64()),
        ("z_um", pa.float64()),
        ("channel", _STR),
        ("exposure_ms", pa.float64()),
        ("light_power", pa.float64()),
        ("acquired_at", _TS),
        ("image_uri", _STR),
        ("shape", pa.list_(pa.int32())),
        ("dtype", _STR),
        ("mean", pa.float64()),
        ("max", pa.float64()),
        ("saturated_frac", pa.float64()),
        ("focus_score", pa.float64()),
    ),
)

OBJECTS = TableSpec(
    name="objects",
    version=1,
    doc="one row per segmented cell in a frame",
    keys=("run_id", "frame_id", "object_id"),
    partition_by=("run_id",),
    run_scoped=True,
    schema=_schema(
        ("run_id", _STR, False),
        ("frame_id", pa.int64(), False),
        ("object_id", pa.int64(), False),
        ("centroid_x", pa.float64()),
        ("centroid_y", pa.float64()),
        ("area", pa.float64()),
        ("mean_intensity", pa.float64()),
        ("max_intensity", pa.float64()),
        ("class", _STR),
        ("score", pa.float64()),
    ),
)

DECISIONS = TableSpec(
    name="decisions",
    version=1,
    doc="one row per feedback action taken during an acquisition",
    keys=("run_id", "frame_id", "action"),
    run_scoped=True,
    schema=_schema(
        ("run_id", _STR, False),
        ("frame_id", pa.int64()),
        ("model", _STR),
        ("model_version", _STR),
        ("action", _STR, False),
        ("params", _STR),  # JSON
        ("latency_ms", pa.float64()),
        ("decided_at", _TS, False),
        # frames acquired between the frame the policy saw and the event the action took effect on
        ("late_frames", pa.int32()),
    ),
)

TWIN_EVENTS = TableSpec(
    name="twin_events",
    version=1,
    doc="ground truth of the digital-twin microscope: divisions, arrests and deaths, to score feedback policies",
    keys=("run_id", "kind", "cell_id"),
    partition_by=("run_id",),
    run_scoped=True,
    schema=_schema(
        ("run_id", _STR, False),
        ("kind", _STR, False),  # division | arrest | death
        ("cell_id", pa.int64(), False),
        ("parent_id", pa.int64()),
        ("sim_time_s", pa.float64()),
        ("end_sim_time_s", pa.float64()),
        ("at", _TS),
        ("end_at", _TS),
        ("x_um", pa.float64()),
        ("y_um", pa.float64()),
        ("dose", pa.float64()),
        ("imaged", pa.bool_()),  # a frame of this cell's position was acquired while the event was under way
    ),
)

MODELS = TableSpec(
    name="models",
    version=1,
    doc="one row per model version",
    keys=("name", "version"),
    schema=_schema(
        ("name", _STR, False),
        ("version", pa.int64(), False),
        ("kind", _STR, False),
        ("params", _STR),  # JSON
        ("trained_on", _STR),  # JSON: dataset ids, Delta versions, SOMA timestamp
        ("metrics", _STR),  # JSON
        ("stage", _STR, False),  # candidate | production | archived
        ("artifact_uri", _STR),
        ("created_at", _TS, False),
    ),
)

EVALUATIONS = TableSpec(
    name="evaluations",
    version=1,
    doc="one row per model x split x perturbation x metric",
    keys=("name", "version", "split", "perturbation", "metric", "baseline"),
    schema=_schema(
        ("name", _STR, False),
        ("version", pa.int64(), False),
        ("split", _STR, False),
        ("perturbation", _STR),
        ("metric", _STR, False),
        ("value", pa.float64()),
        ("baseline", _STR),
        ("baseline_value", pa.float64()),
    ),
)

PREDICTIONS = TableSpec(
    name="predictions",
    version=1,
    doc="one row per served in-silico request",
    keys=("request_id",),
    schema=_schema(
        ("request_id", _STR, False),
        ("model", _STR, False),
        ("version", _STR),
        ("perturbations", pa.list_(_STR)),
        ("context", _STR),  # JSON
        ("summary", _STR),  # JSON
        ("requested_at", _TS, False),
    ),
)

POLICY_RUNS = TableSpec(
    name="policy_runs",
    version=1,
    doc="one row per policy x seed of a smart-microscopy experiment on the digital twin, scored against its truth",
    keys=("experiment_id", "policy", "seed"),
    schema=_schema(
        ("experiment_id", _STR, False),
        ("policy", _STR, False),  # fixed-fast | fixed-slow | smart | ...
        ("seed", pa.int64(), False),  # the twin's seed: the same plate for every policy
        ("run_id", _STR),  # the acquisition run: its frames, decisions and twin_events
        ("status", _STR),  # the run's status
        ("model", _STR),  # who decided (null: a fixed schedule)
        ("model_version", _STR),
        ("settings", _STR),  # JSON: the policy's schedule and light, the twin and the scoring rule
        # the scored window of the twin's clock, the same for every policy of the experiment
        ("window_start_sim_s", pa.float64()),
        ("window_end_sim_s", pa.float64()),
        ("divisions", pa.int64()),  # divisions that start and end inside the window, in the imaged fields
        ("divisions_imaged", pa.int64()),  # ... with at least one time point during mitosis
        ("divisions_captured", pa.int64()),  # ... with at least `min_frames` time points during mitosis
        ("min_frames", pa.int32()),
        ("capture_fraction", pa.float64()),
        ("light_dose", pa.float64()),  # sum over frames of light power (%) x exposure (ms), the twin's dose unit
        ("frames", pa.int64()),
        ("time_points", pa.int64()),  # distinct (position, time index): a z-stack is one time point
        ("bytes", pa.int64()),  # stored: the run's OME-Zarr on storage (compressed, with its pyramid)
        ("bytes_raw", pa.int64()),  # pixels x bytes per pixel, as acquired
        ("cells_harmed", pa.int64()),  # cells in the imaged fields that the light arrested or killed
        ("cells_dead", pa.int64()),
        ("mean_cell_dose", pa.float64()),  # light dose the imaged fields' cells got, mean and most exposed
        ("max_cell_dose", pa.float64()),
        ("decisions", pa.int64()),
        ("decision_p50_ms", pa.float64()),  # latency, frame acquired -> decision, over the run's decisions
        ("decision_p99_ms", pa.float64()),
        ("started_at", _TS),
        ("ended_at", _TS),
        ("recorded_at", _TS, False),
    ),
)

TABLES: dict[str, TableSpec] = {
    t.name: t
    for t in (
        DATASETS,
        CELLS,
        DATASET_GENES,
        HPA_SUBCELLULAR,
        ACQUISITION_RUNS,
        FRAMES,
        OBJECTS,
        DECISIONS,
        TWIN_EVENTS,
        MODELS,
        EVALUATIONS,
        PREDICTIONS,
        POLICY_RUNS,
    )
}


def spec(name: str) -> TableSpec:
    try:
        return TABLES[name]
    except KeyError:
        raise KeyError(f"no table {name!r}; known: {', '.join(TABLES)}") from None
