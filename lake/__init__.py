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
from lake._images import (
    ImageSpec,
    OmeZarrImage,
    PlaneWriter,
    chunk_exists,
    delete_images,
    downsample2,
    downsample2_blocks,
    list_images,
)
from lake._lake import Lake
from lake._lease import lease, lease_held
from lake._lock import is_held, liveness_lock
from lake._progress import Progress, null_progress
from lake._recovery import ingest_transaction, recover_lake
from lake._schemas import TABLES, TableSpec
from lake._settings import DEFAULT_LAKE, ENV_GENE_REFERENCE, ENV_LAKE, LakeSettings
from lake._soma import open_census, open_experiment
from lake._sql import connect, delta_extension_path, query, write_catalog
from lake._storage import S3Storage, download_dir, filesystem, is_remote, reports_dir, soma_context, upload_dir

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
    "PlaneWriter",
    "Progress",
    "S3Storage",
    "SchemaMismatchError",
    "Source",
    "TableNotFoundError",
    "TableSpec",
    "chunk_exists",
    "connect",
    "delete_images",
    "delta_extension_path",
    "download_dir",
    "downsample2",
    "downsample2_blocks",
    "filesystem",
    "ingest_atlas",
    "ingest_hpa",
    "ingest_transaction",
    "is_ensembl_id",
    "is_held",
    "is_remote",
    "lease",
    "lease_held",
    "list_images",
    "liveness_lock",
    "map_var",
    "null_progress",
    "open_census",
    "open_experiment",
    "query",
    "recover_lake",
    "reports_dir",
    "resolve_source",
    "sha256_file",
    "sha256_files",
    "soma_context",
    "upload_dir",
    "write_catalog",
]
