"""The TileDB-SOMA census of the lab, laid out like the CELLxGENE Census so that its client works on it.

    <lake>/soma                         Collection
      census_info/                      Collection: datasets, summary (DataFrames)
      census_data/<organism>            Experiment: obs (the ``cells`` schema)
        ms/RNA                          Measurement: var (feature_id, feature_name, ...)
          X/raw                         SparseNDArray float32, raw counts
          feature_dataset_presence_matrix

Every write of one ingest happens at one TileDB timestamp; readers open at the newest timestamp registered in
the Delta ``datasets`` table, so a half-written dataset is invisible. :func:`recover` removes what a killed
writer left beyond that timestamp, so the next writer starts from the committed state.

On ``s3://`` every open passes the TileDB context of the store (endpoint, region, keys from the environment:
:func:`lake._storage.soma_context`); a local census uses TileDB's default context, as before.
"""

from __future__ import annotations

import posixpath
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pyarrow as pa
import tiledbsoma as soma

from lake._errors import LakeError
from lake._schemas import CELLS
from lake._storage import filesystem, soma_context

__all__ = [
    "CENSUS_DATASETS_SCHEMA",
    "LAYER",
    "MEASUREMENT",
    "SUMMARY_SCHEMA",
    "VAR_SCHEMA",
    "ensure_census",
    "experiment_uri",
    "next_timestamp",
    "open_census",
    "open_experiment",
    "organism_key",
    "recover",
]

MEASUREMENT = "RNA"
LAYER = "raw"
PRESENCE = "feature_dataset_presence_matrix"
CENSUS_SCHEMA_VERSION = "2.1.0"  # the Census layout this mirrors

OBS_SCHEMA = CELLS.schema.remove(CELLS.schema.get_field_index("soma_joinid"))
VAR_SCHEMA = pa.schema(
    [
        pa.field("feature_id", pa.string(), nullable=False),
        pa.field("feature_name", pa.string()),
        pa.field("feature_length", pa.int64()),
        pa.field("feature_biotype", pa.string()),
        pa.field("nnz", pa.int64()),
        pa.field("n_measured_obs", pa.int64()),
    ]
)
CENSUS_DATASETS_SCHEMA = pa.schema(
    [
        pa.field("dataset_id", pa.string(), nullable=False),
        pa.field("collection_id", pa.string()),
        pa.field("collection_name", pa.string()),
        pa.field("dataset_title", pa.string()),
        pa.field("dataset_h5ad_path", pa.string()),
        pa.field("dataset_version_id", pa.string()),
        pa.field("dataset_total_cell_count", pa.int64()),
    ]
)
SUMMARY_SCHEMA = pa.schema([pa.field("label", pa.string()), pa.field("value", pa.string())])


def organism_key(organism: str) -> str:
    """``"Homo sapiens"`` -> ``"homo_sapiens"``, the Census experiment name."""
    return re.sub(r"[ ]+", "_", organism.strip()).lower()


def experiment_uri(soma_uri: str, organism: str) -> str:
    return f"{soma_uri}/census_data/{organism_key(organism)}"


def next_timestamp(committed: int | None) -> int:
    """A write timestamp (ms) after everything committed and after any schema created just now."""
    now = int(time.time() * 1000) + 1
    return max(now, (committed or 0) + 1)


def ensure_census(soma_uri: str, organism: str) -> None:
    """Create the collection tree and the organism's experiment when missing (empty, shape 1)."""
    ctx = soma_context(soma_uri)
    if not soma.Collection.exists(soma_uri, context=ctx):
        root: soma.Collection[Any]
        with soma.Collection.create(soma_uri, context=ctx) as root:
            root.metadata["cellfarm"] = "census"
            with root.add_new_collection("census_info") as info:
                info.add_new_dataframe("datasets", schema=CENSUS_DATASETS_SCHEMA, domain=[(0, 0)]).close()
                info.add_new_dataframe("summary", schema=SUMMARY_SCHEMA, domain=[(0, 15)]).close()
            root.add_new_collection("census_data").close()
    exp_uri = experiment_uri(soma_uri, organism)
    if soma.Experiment.exists(exp_uri, context=ctx):
        return
    data: soma.Collection[Any]
    with (
        soma.Collection.open(f"{soma_uri}/census_data", "w", context=ctx) as data,
        data.add_new_collection(organism_key(organism), soma.Experiment) as exp,
    ):
        exp.metadata["organism"] = organism
        exp.add_new_dataframe("obs", schema=OBS_SCHEMA, domain=[(0, 0)]).close()
        with (
            exp.add_new_collection("ms") as ms,
            ms.add_new_collection(MEASUREMENT, soma.Measurement) as rna,
        ):
            rna.add_new_dataframe("var", schema=VAR_SCHEMA, domain=[(0, 0)]).close()
            with rna.add_new_collection("X") as x:
                x.add_new_sparse_ndarray(LAYER, type=pa.float32(), shape=(1, 1)).close()
            rna.add_new_sparse_ndarray(PRESENCE, type=pa.bool_(), shape=(1, 1)).close()


@contextmanager
def open_census(soma_uri: str, *, timestamp: int | None) -> Iterator[soma.Collection[Any]]:
    """The census collection as of ``timestamp`` (the committed one): pass this to ``cellxgene_census``."""
    ctx = soma_context(soma_uri)
    if not soma.Collection.exists(soma_uri, context=ctx):
        raise LakeError(f"no SOMA census at {soma_uri} yet: ingest an atlas first")
    c: soma.Collection[Any]
    with soma.Collection.open(soma_uri, "r", tiledb_timestamp=timestamp, context=ctx) as c:
        yield c


@contextmanager
def open_experiment(soma_uri: str, organism: str, *, timestamp: int | None) -> Iterator[soma.Experiment]:
    uri = experiment_uri(soma_uri, organism)
    ctx = soma_context(soma_uri)
    if not soma.Experiment.exists(uri, context=ctx):
        raise LakeError(f"no {organism_key(organism)} experiment in the census at {soma_uri}")
    with soma.Experiment.open(uri, "r", tiledb_timestamp=timestamp, context=ctx) as e:
        yield e


# -- crash recovery -----------------------------------------------------------------------------------------
# TileDB names every fragment, commit, schema, metadata and group-membership entry __<t1>_<t2>_<uuid>[_<v>].
_ENTRY = re.compile(r"^__(\d+)_(\d+)_[0-9a-f]{32}(?:_\d+)?(?:\.\w+)?$")
_TIMESTAMPED_DIRS = (
    "__fragments",
    "__commits",
    "__schema",
    "__meta",
    "__group",
    "__fragment_meta",
    "__enumerations",
)


def recover(soma_uri: str, committed: int | None) -> int:
    """Remove every SOMA entry written after ``committed`` (a killed ingest's leftovers). Returns the count.

    Only call this while holding the writer lock: a live writer's entries are also newer than ``committed``.
    Works on a local folder and on ``s3://`` alike (fsspec): on S3 a folder is only a key prefix, so an object
    is judged by what its marker folder held before the sweep, not by what is left of it.
    """
    fs, root = filesystem(soma_uri)
    fs.invalidate_cache()  # TileDB wrote behind fsspec's back
    if not fs.exists(root):
        return 0
    if committed is None:
        fs.rm(root, recursive=True)
        return 1
    removed = 0
    markers: dict[str, dict[str, tuple[int, int]]] = {}  # object -> marker folder -> (entries, removed)
    groups: set[str] = set()
    for dirpath, dirnames, filenames in fs.walk(root, topdown=True):
        if "__tiledb_group.tdb" in filenames:
            groups.add(dirpath)
        name = posixpath.basename(dirpath)
        if name not in _TIMESTAMPED_DIRS:
            continue
        entries = stale = 0
        for entry in list(dirnames) + filenames:
            m = _ENTRY.match(entry)
            if m is None:
                continue
            entries += 1
            if int(m.group(1)) > committed:
                fs.rm(f"{dirpath}/{entry}", recursive=entry in dirnames)
                stale += 1
                removed += 1
        dirnames[:] = [d for d in dirnames if not _ENTRY.match(d)]  # a fragment folder holds no entries
        markers.setdefault(posixpath.dirname(dirpath), {})[name] = (entries, stale)
    # An object created after the commit has no entry left in its schema (arrays) or metadata (groups).
    for obj in sorted(markers, key=lambda p: p.count("/"), reverse=True):
        found = markers[obj]
        marker = found.get("__schema") if "__schema" in found else found.get("__meta") if obj in groups else None
        if marker is not None and marker[0] == marker[1] and fs.exists(obj):
            fs.rm(obj, recursive=True)
            removed += 1
    return removed


def grow(array: Any, rows: int, cols: int | None = None) -> None:
    """Raise an array's current shape to at least ``rows`` (x ``cols``); never shrinks."""
    if isinstance(array, soma.DataFrame):
        current = array.domain[0][1] + 1
        if rows > current:
            array.tiledbsoma_resize_soma_joinid_shape(rows)
        return
    shape = array.shape
    want = (max(shape[0], rows), max(shape[1], cols or 0))
    if want != tuple(shape):
        array.resize(want)


def joinids(start: int, n: int) -> pa.Array:
    return pa.array(np.arange(start, start + n, dtype=np.int64))
