"""Drop-folder sensors: a new or changed ``atlas/*.h5ad`` adds its partition and ingests it; a new or changed
``hpa/*.tsv`` re-materializes `hpa_subcellular`.

The cursor maps each file to its (mtime, size) signature, so a file is requested once, and again when it changes.
A file modified in the last `SETTLE_S` seconds is left for a later tick: it may still be being copied.
"""

import json
import time
from pathlib import Path

import dagster as dg

from dagster_project.atlas.jobs import atlas_ingest_job, hpa_ingest_job
from dagster_project.partitions import ATLAS_DATASETS
from dagster_project.resources import DropFolderResource

__all__ = ["SETTLE_S", "atlas_drop_sensor", "hpa_drop_sensor"]

SETTLE_S = 10.0


def _settled(folder: Path, pattern: str) -> dict[str, str]:
    """File name -> "mtime_ns-size" for the files of ``folder`` that nobody wrote to for `SETTLE_S` seconds."""
    if not folder.is_dir():
        return {}
    now_ns = time.time_ns()
    out: dict[str, str] = {}
    for path in sorted(folder.glob(pattern)):
        if not path.is_file():
            continue
        st = path.stat()  # follows a symlink: a link to a shared file is that file
        if now_ns - st.st_mtime_ns >= SETTLE_S * 1e9:
            out[path.name] = f"{st.st_mtime_ns}-{st.st_size}"
    return out


def _scan(context: dg.SensorEvaluationContext, folder: Path, pattern: str) -> tuple[dict[str, str], dict[str, str]]:
    """The settled files of ``folder`` (the next cursor), and those new or changed since the cursor."""
    files = _settled(folder, pattern)
    seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    return files, {name: sig for name, sig in files.items() if seen.get(name) != sig}


@dg.sensor(
    job=atlas_ingest_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Adds an `atlas_datasets` partition per new `<drop>/atlas/*.h5ad` (key: the file's stem) and "
    "ingests it; a changed file is ingested again.",
)
def atlas_drop_sensor(context: dg.SensorEvaluationContext, drop: DropFolderResource) -> dg.SensorResult | dg.SkipReason:
    folder = drop.folder("atlas")
    files, changed = _scan(context, folder, "*.h5ad")
    if not changed:
        return dg.SkipReason(f"no new or changed *.h5ad in {folder}")
    names = {f: Path(f).stem for f in changed}
    known = set(ATLAS_DATASETS.get_partition_keys(dynamic_partitions_store=context.instance))
    new = sorted(set(names.values()) - known)
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(run_key=f"{names[f]}@{sig}", partition_key=names[f], tags={"cellfarm/file": str(folder / f)})
            for f, sig in changed.items()
        ],
        dynamic_partitions_requests=[ATLAS_DATASETS.build_add_request(new)] if new else [],
        cursor=json.dumps(files, sort_keys=True),
    )


@dg.sensor(
    job=hpa_ingest_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Materializes `hpa_subcellular` when a new or changed `<drop>/hpa/*.tsv` appears.",
)
def hpa_drop_sensor(context: dg.SensorEvaluationContext, drop: DropFolderResource) -> dg.SensorResult | dg.SkipReason:
    folder = drop.folder("hpa")
    files, changed = _scan(context, folder, "*.tsv")
    if not changed:
        return dg.SkipReason(f"no new or changed *.tsv in {folder}")
    # the asset ingests the newest file: one run for whatever changed
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=",".join(f"{f}@{sig}" for f, sig in sorted(changed.items())))],
        cursor=json.dumps(files, sort_keys=True),
    )
