"""Atlas assets: one partition per source h5ad into SOMA + `cells` + `genes`, and the HPA subcellular table.

A partition's key is the dataset's name in the lake; its file is ``<drop>/atlas/<key>.h5ad`` (what the drop
sensor sees, and where a data engineer puts a file before adding its partition in the UI).
"""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from dagster_project._report import delta_versions, lake_failures, log_progress, markdown_table
from dagster_project.partitions import ATLAS_DATASETS
from dagster_project.resources import DropFolderResource, LakeResource
from lake import Lake, ingest_atlas, ingest_hpa

__all__ = ["atlas_dataset", "atlas_file", "hpa_subcellular", "newest_hpa_file"]

GROUP = "atlas"


def atlas_file(drop: DropFolderResource, name: str) -> Path:
    """The drop folder's h5ad of dataset ``name``; a one-line failure names where it was looked for."""
    if Path(name).name != name:  # a key typed in the UI must not reach outside the drop folder
        raise dg.Failure(description=f"atlas partition {name!r} is not a file name", allow_retries=False)
    path = drop.folder("atlas") / f"{name}.h5ad"
    if not path.is_file():
        raise dg.Failure(description=f"no file for atlas partition {name!r}: put it at {path}", allow_retries=False)
    return path


def newest_hpa_file(drop: DropFolderResource) -> Path:
    folder = drop.folder("hpa")
    files = sorted(folder.glob("*.tsv"), key=lambda p: p.stat().st_mtime_ns) if folder.is_dir() else []
    if not files:
        raise dg.Failure(
            description=f"no HPA subcellular_location *.tsv in {folder}: download it from proteinatlas.org there",
            allow_retries=False,
        )
    return files[-1]


def _cells_per_perturbation(target: Lake, dataset_id: str) -> pa.Table:
    cells = target.read(
        "cells", columns=["perturbation", "is_control"], filter=pc.field("dataset_id") == dataset_id
    ).to_pandas()
    label = cells["perturbation"].where(~cells["is_control"].fillna(False).astype(bool), "(control)")
    counts = label.fillna("(none)").value_counts().rename_axis("perturbation").reset_index(name="cells")
    return pa.Table.from_pandas(counts, preserve_index=False)


@dg.multi_asset(
    name="atlas_dataset",
    specs=[
        dg.AssetSpec(
            "soma_experiment",
            group_name=GROUP,
            kinds={"tiledb"},
            description="The TileDB-SOMA census (`<lake>/soma`, CELLxGENE Census layout): expression of every "
            "ingested cell, appended dataset by dataset.",
        ),
        dg.AssetSpec(
            "cells",
            group_name=GROUP,
            kinds={"delta"},
            description="`cells`: one row per cell of an atlas dataset (the obs of the SOMA census).",
        ),
        dg.AssetSpec(
            "genes",
            group_name=GROUP,
            kinds={"delta"},
            description="`dataset_genes` (one row per dataset x gene) and its SQL view `genes` (one row per gene).",
        ),
    ],
    partitions_def=ATLAS_DATASETS,
)
def atlas_dataset(
    context: dg.AssetExecutionContext, lake: LakeResource, drop: DropFolderResource
) -> Iterator[dg.MaterializeResult]:
    """Ingest the partition's h5ad; the same file again is a no-op (status `unchanged`)."""
    name = context.partition_key
    path = atlas_file(drop, name)
    target = lake.open()
    with lake_failures({"path": dg.MetadataValue.path(str(path))}):
        result = ingest_atlas(target, path, name=name, progress=log_progress(context.log))
    context.log.info(f"{path.name}: {result.status} as dataset {result.dataset_id} ({result.n_obs} cells)")
    version = dg.DataVersion(result.dataset_id)  # the file's content hash: the same file is the same data
    common: dict[str, Any] = {
        "dataset_id": result.dataset_id,
        "status": result.status,
        "source": dg.MetadataValue.path(str(path)),
        "soma_timestamp": dg.MetadataValue.int(result.soma_timestamp or 0),
    }
    yield dg.MaterializeResult(
        asset_key="soma_experiment",
        data_version=version,
        metadata={**common, "soma_uri": target.settings.soma_uri, "n_obs": result.n_obs, "n_vars": result.n_vars},
    )
    yield dg.MaterializeResult(
        asset_key="cells",
        data_version=version,
        metadata={
            **common,
            "dagster/row_count": dg.MetadataValue.int(result.n_obs),
            "n_obs": result.n_obs,
            "counts_source": result.counts_source,
            "perturbation_column": result.perturbation_column or "",
            "n_perturbations": result.n_perturbations,
            **delta_versions(target, "cells", "datasets"),
            "cells_per_perturbation": markdown_table(_cells_per_perturbation(target, result.dataset_id)),
        },
    )
    yield dg.MaterializeResult(
        asset_key="genes",
        data_version=version,
        metadata={
            **common,
            "dagster/row_count": dg.MetadataValue.int(result.n_vars),
            "n_vars": result.n_vars,
            "n_unmapped_genes": result.n_unmapped_genes,
            **delta_versions(target, "dataset_genes", "datasets"),
        },
    )


@dg.asset(group_name=GROUP, kinds={"delta"})
def hpa_subcellular(
    context: dg.AssetExecutionContext, lake: LakeResource, drop: DropFolderResource
) -> dg.MaterializeResult:
    """`hpa_subcellular`: the Human Protein Atlas' gene x subcellular location table, from the newest
    ``<drop>/hpa/*.tsv``; SQL shows the newest release. The same file again is a no-op."""
    path = newest_hpa_file(drop)
    target = lake.open()
    with lake_failures({"path": dg.MetadataValue.path(str(path))}):
        result = ingest_hpa(target, path, progress=log_progress(context.log))
    rows = target.read("hpa_subcellular", columns=["location"], filter=pc.field("dataset_id") == result.dataset_id)
    locations = rows.group_by("location").aggregate([("location", "count")]).rename_columns(["location", "genes"])
    return dg.MaterializeResult(
        data_version=dg.DataVersion(result.dataset_id),
        metadata={
            "dataset_id": result.dataset_id,
            "status": result.status,
            "source": dg.MetadataValue.path(str(path)),
            "dagster/row_count": dg.MetadataValue.int(result.n_rows),
            "n_genes": result.n_genes,
            **delta_versions(target, "hpa_subcellular", "datasets"),
            "genes_per_location": markdown_table(locations.sort_by([("genes", "descending")]), max_rows=15),
        },
    )
