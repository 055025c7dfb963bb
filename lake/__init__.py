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
from lake._genes import GeneReference, is_ensembl_id, map_var
from lake._hpa import HpaIngest, ingest_hpa
from lake._lake import Lake
from lake._progress import Progress, null_progress
from lake._recovery import recover_lake
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
    "InvalidInputError",
    "Lake",
    "LakeBusyError",
    "LakeError",
    "LakeNotWritableError",
    "LakeSettings",
    "Progress",
    "SchemaMismatchError",
    "TableNotFoundError",
    "TableSpec",
    "connect",
    "delta_extension_path",
    "ingest_atlas",
    "ingest_hpa",
    "is_ensembl_id",
    "map_var",
    "null_progress",
    "open_census",
    "open_experiment",
    "query",
    "recover_lake",
    "write_catalog",
]
