"""cellfarm's storage: Delta tables, the TileDB-SOMA census, the DuckDB SQL layer and the ingests.

Pure functions over a lake root; nothing here imports an orchestrator, a server or a microscope driver.
"""

from lake._atlas import DEFAULT_CHUNK_NNZ, AtlasIngest, ingest_atlas
from lake._errors import (
    InvalidInputError,
    LakeBusyError,
    LakeError,
    LakeNotWritableError,
    SchemaMismatchError,
    TableNotFoundError,
)
from lake._fetch import Source, resolve_source, sha256_file, sha256_files
from lake._genes import GeneReference, is_ensembl_id, map_var
from lake._hpa import HpaIngest, ingest_hpa
from lake._images import ImageSpec, OmeZarrImage, chunk_exists, downsample2
from lake._lake import Lake
from lake._lock import is_held, liveness_lock
from lake._progress import Progress, null_progress
from lake._recovery import ingest_transaction, recover_lake
from lake._schemas import TABLES, TableSpec
from lake._settings import DEFAULT_LAKE, ENV_GENE_REFERENCE, ENV_LAKE, LakeSettings
from lake._soma import open_census, open_experiment
from lake._sql import connect, delta_extension_path, query, write_catalog

__all__ = [
    "DEFAULT_CHUNK_NNZ",
    "DEFAULT_LAKE",
    "ENV_GENE_REFERENCE",
    "ENV_LAKE",
    "TABLES",
    "AtlasIngest",
    "GeneReference",
    "HpaIngest",
    "ImageSpec",
    "InvalidInputError",
    "Lake",
    "LakeBusyError",
    "LakeError",
    "LakeNotWritableError",
    "LakeSettings",
    "OmeZarrImage",
    "Progress",
    "SchemaMismatchError",
    "Source",
    "TableNotFoundError",
    "TableSpec",
    "chunk_exists",
    "connect",
    "delta_extension_path",
    "downsample2",
    "ingest_atlas",
    "ingest_hpa",
    "ingest_transaction",
    "is_ensembl_id",
    "is_held",
    "liveness_lock",
    "map_var",
    "null_progress",
    "open_census",
    "open_experiment",
    "query",
    "recover_lake",
    "resolve_source",
    "sha256_file",
    "sha256_files",
    "write_catalog",
]
