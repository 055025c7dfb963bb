"""The lake on S3-compatible object storage: moto's S3 server on 127.0.0.1, driven through the CLI and the API.

One server and one ingested lake (Papalexi + HPA, through `cellfarm --lake s3://...`) are shared by the module;
endpoint and keys reach every engine (delta-rs, TileDB, s3fs, DuckDB) from the standard AWS variables only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import anndata
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import useq
from PIL import Image

import lake
from tests.conftest import GENE_REF, HPA, PAPALEXI, SHARED, need
from tests.s3 import BUCKET, S3, SECRET

HPA_IMAGE = SHARED / "hpa" / "hpa_1000_A12_2_green.png"
HPA_MASKS = (SHARED / "hpa" / "hpa_1000_A12_2_cellmask.png", SHARED / "hpa" / "hpa_1000_A12_2_nucleimask.png")


@dataclass(frozen=True)
class Ingested:
    root: str
    prefix: str
    atlas: subprocess.CompletedProcess[str]
    hpa: lake.HpaIngest


@pytest.fixture(scope="module")
def ingested(s3: S3) -> Ingested:
    """Papalexi (SOMA + Delta) through `cellfarm --lake s3://cellfarm-lake/lake ingest atlas`, HPA through the API."""
    need(PAPALEXI), need(HPA), need(GENE_REF)
    prefix = "lake"
    root = f"s3://{BUCKET}/{prefix}"
    atlas = s3.cli(root, "ingest", "atlas", str(PAPALEXI), "--name", "papalexi2021", "--gene-reference", str(GENE_REF))
    hpa = lake.ingest_hpa(lake.Lake.open(root), HPA)
    return Ingested(root, prefix, atlas, hpa)


def test_atlas_and_hpa_land_in_the_bucket(s3: S3, ingested: Ingested) -> None:
    assert ingested.atlas.returncode == 0, ingested.atlas.stderr
    assert ingested.hpa.status == "ingested"
    target = lake.Lake.open(ingested.root, create=False)
    datasets = {r["kind"]: r for r in target.datasets().to_pylist()}
    assert set(datasets) == {"atlas", "hpa"}
    atlas = datasets["atlas"]
    source = anndata.read_h5ad(PAPALEXI)
    assert atlas["n_obs"] == source.n_obs == target.read("cells").num_rows
    assert atlas["n_vars"] == source.n_vars
    assert datasets["hpa"]["n_obs"] == target.read("hpa_subcellular").num_rows > 1000
    # the SOMA census is on S3 too, and holds every count of the file at the committed timestamp
    assert atlas["counts_source"] == "X"
    with lake.open_experiment(target.settings.soma_uri, "homo_sapiens", timestamp=atlas["soma_timestamp"]) as exp:
        assert exp.obs.count == source.n_obs
        x = exp.ms["RNA"].X["raw"].read().tables().concat()
    assert 0 < x.num_rows <= source.n_obs * source.n_vars
    assert float(pc.sum(x["soma_data"]).as_py()) == pytest.approx(float(source.X.sum()))
    keys = s3.keys(f"{ingested.prefix}/")
    assert any(k.startswith(f"{ingested.prefix}/soma/census_data/homo_sapiens/ms/RNA/X/raw/") for k in keys)
    assert any(k.startswith(f"{ingested.prefix}/delta/cells/_delta_log/") for k in keys)
    assert not any("/_cache/" in k or "/_state/ingest.lease" in k for k in keys)  # the lease was released


def test_sql_reads_the_s3_tables(s3: S3, ingested: Ingested) -> None:
    proc = s3.cli(
        ingested.root,
        "sql",
        "SELECT (SELECT count(*) FROM cells) AS cells, (SELECT count(DISTINCT perturbation) FROM cells) AS perts, "
        "(SELECT count(*) FROM genes g JOIN hpa_subcellular h USING (ensembl_id) WHERE h.is_main) AS located",
        "-f",
        "json",
    )
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(proc.stdout)
    target = lake.Lake.open(ingested.root, create=False)
    cells = target.read("cells")
    assert row["cells"] == cells.num_rows
    assert row["perts"] == len({p for p in cells["perturbation"].to_pylist() if p is not None})
    genes = set(target.read("dataset_genes")["ensembl_id"].to_pylist())
    main = target.read("hpa_subcellular", filter=pc.field("is_main"))["ensembl_id"].to_pylist()
    assert row["located"] == sum(g in genes for g in main) > 100  # Papalexi's genes x HPA, through s3:// views


def test_reingest_is_a_noop(ingested: Ingested) -> None:
    target = lake.Lake.open(ingested.root, create=False)
    before = {t: target.version(t) for t in ("datasets", "cells", "dataset_genes", "hpa_subcellular")}
    again = lake.ingest_atlas(target, PAPALEXI, name="papalexi2021", gene_reference=str(GENE_REF))
    assert again.status == "unchanged"
    assert lake.ingest_hpa(target, HPA).status == "unchanged"
    assert {t: target.version(t) for t in before} == before
    assert target.datasets().num_rows == 2


def test_images_and_a_twin_run_write_ome_zarr_to_s3(s3: S3, ingested: Ingested, tmp_path: Path) -> None:
    from acquisition import Agent, ingest_images, open_twin
    from acquisition._experiment import _stored_bytes
    from acquisition.twin import TwinConfig
    from tests.acquisition.conftest import frames_of

    target = lake.Lake.open(ingested.root, create=False)
    imported = ingest_images(target, need(HPA_IMAGE), masks=HPA_MASKS)
    assert (imported.n_frames, imported.skipped) == (1, False)
    plan = tmp_path / "plan.yaml"
    plan.write_text("channels: [GFP]\nstage_positions: [{x: 0, y: 0, z: 0}]\ntime_plan: {interval: 0, loops: 3}\n")
    acquired = s3.cli(ingested.root, "acquire", "--twin", "--plan", str(plan))
    assert acquired.returncode == 0, acquired.stderr
    frames = target.read("frames").to_pylist()
    runs = {r["run_id"]: r for r in target.read("acquisition_runs").to_pylist()}
    assert sorted(r["status"] for r in runs.values()) == ["completed", "completed"]
    assert len(frames) == 1 + 3
    for f in frames:
        uri = f["image_uri"]
        assert uri.startswith(f"{ingested.root}/images/{f['run_id']}/")
        assert lake.chunk_exists(uri, f["t"], f["c"], f["z"])
        plane = lake.OmeZarrImage.open(uri).read_plane(f["t"], f["c"], f["z"])
        assert float(plane.mean()) == pytest.approx(f["mean"])
    (field_row,) = [f for f in frames if runs[f["run_id"]]["microscope_id"] == "import"]
    stored = lake.OmeZarrImage.open(field_row["image_uri"]).read_plane(0, 0, 0)
    np.testing.assert_array_equal(stored, np.asarray(Image.open(HPA_IMAGE)))
    labels = sum(len(np.setdiff1d(np.unique(np.asarray(Image.open(m))), [0])) for m in HPA_MASKS)
    assert imported.n_objects == target.read("objects").num_rows == labels  # one per labelled cell and nucleus
    twin_run = next(r for r in runs if runs[r]["microscope_id"] != "import")
    level0 = [k for k in s3.keys(f"{ingested.prefix}/images/{twin_run}/") if k.split("/")[-7:-5] == ["0", "c"]]
    assert len(level0) == 3  # one object per plane of the three time points
    # the policy experiment's storage cost reads the bucket through the lake's settings (its endpoint, its keys)
    twin_images = sorted({f["image_uri"] for f in frames if f["run_id"] == twin_run})
    assert (_stored_bytes(twin_images) or 0) > 0

    # big frames' planes go through worker processes, which write to the bucket with the settings they are given
    scope = open_twin(TwinConfig(seed=0, width=64, height=48))
    try:
        agent = Agent(target, scope, microscope_id="s3-processes", sink_options={"planes": "processes"})
        run = agent.run(useq.MDASequence(channels=["GFP"], time_plan={"interval": 0, "loops": 2}))
    finally:
        scope.close()
    assert run.status == "completed", run.error
    assert run.summary["planes"] == "processes"
    put = frames_of(target, run.run_id).to_pylist()
    assert len(put) == 2
    for f in put:
        assert f["image_uri"].startswith(f"{ingested.root}/images/{run.run_id}/")
        plane = lake.OmeZarrImage.open(f["image_uri"]).read_plane(f["t"], f["c"], f["z"])
        assert float(plane.mean()) == pytest.approx(f["mean"])


_WRITER = """
import sys
from datetime import UTC, datetime
import pyarrow as pa
from deltalake import write_deltalake
import lake
root, writer, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
table = lake.Lake.open(root, create=False).table("predictions")  # the lake's storage options, one snapshot
print("ready", flush=True)
sys.stdin.readline()  # go: both writers hold the same snapshot, so each commit races the other writer's
for i in range(n):
    rows = [{"request_id": f"{writer}-{i}", "model": writer, "requested_at": datetime.now(UTC)}]
    write_deltalake(table, pa.Table.from_pylist(rows, schema=lake.TABLES["predictions"].schema), mode="append")
"""


def test_concurrent_delta_writers_lose_no_commit(s3: S3, ingested: Ingested) -> None:
    """Two processes append to one table from the same snapshot: every commit but the first has to find the
    version it wanted taken (the store refuses the put), re-read and retry; none may overwrite another."""
    target = lake.Lake.open(ingested.root, create=False)
    before = target.version("predictions")
    n = 5
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, ingested.root, w, str(n)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in ("a", "b")
    ]
    for p in writers:
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "ready", p.communicate()[1]
    for p in writers:  # both at once: a communicate() each would let the first finish before the second starts
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    results = [p.communicate(timeout=120) for p in writers]
    assert [p.returncode for p in writers] == [0, 0], [err for _, err in results]
    assert s3.refused_commits("predictions") >= 1  # the race happened, and the store decided it
    rows = target.read("predictions")
    assert sorted(rows["request_id"].to_pylist()) == sorted(f"{w}-{i}" for w in "ab" for i in range(n))
    assert target.version("predictions") == before + 2 * n  # one commit per append, none overwritten
    writes = [h for h in target.table("predictions").history() if h.get("operation") == "WRITE"]
    assert len(writes) == 2 * n


def test_soma_leftovers_past_the_commit_are_removed_on_s3(ingested: Ingested) -> None:
    """What a killed ingest leaves in the census past the committed timestamp is swept from the bucket."""
    import tiledbsoma as soma

    target = lake.Lake.open(ingested.root, create=False)
    committed = target.committed_soma_timestamp()
    assert committed is not None
    uri = f"{target.settings.soma_uri}/census_info/summary"
    ctx = lake.soma_context(uri)
    with soma.DataFrame.open(uri, "r", tiledb_timestamp=committed, context=ctx) as summary:
        rows = summary.read().concat()
    value = rows.schema.get_field_index("value")
    strays = pa.array(["stray"] * rows.num_rows, rows.schema.field(value).type)
    stray = rows.set_column(value, rows.schema.field(value), strays)
    with soma.DataFrame.open(uri, "w", tiledb_timestamp=committed + 10_000, context=ctx) as summary:
        summary.write(stray)  # a killed ingest's write, never registered
    later = committed + 20_000
    with soma.DataFrame.open(uri, "r", tiledb_timestamp=later, context=ctx) as summary:
        assert set(summary.read().concat()["value"].to_pylist()) == {"stray"}
    assert lake.recover_lake(target).get("soma", 0) >= 1
    with soma.DataFrame.open(uri, "r", tiledb_timestamp=later, context=ctx) as summary:
        assert summary.read().concat().sort_by("soma_joinid").equals(rows.sort_by("soma_joinid"))


def test_lease_orders_writers_across_machines(s3: S3) -> None:
    uri = f"s3://{BUCKET}/leases/ingest.lease"
    with (
        lake.lease(uri, ttl_s=30.0),
        pytest.raises(lake.LakeBusyError, match="another writer holds"),
        lake.lease(uri, timeout_s=0.5),
    ):
        pass
    assert s3.keys("leases/") == []  # released
    # a holder that died leaves an expired lease behind: the next writer takes it over
    s3.client().put_object(Bucket=BUCKET, Key="leases/ingest.lease", Body=b'{"owner": "dead", "expires_at": 0}')
    with lake.lease(uri, timeout_s=5.0):
        body = s3.client().get_object(Bucket=BUCKET, Key="leases/ingest.lease")["Body"].read()
        assert json.loads(body)["owner"] != "dead"


def test_bad_storage_settings_fail_in_one_line(s3: S3, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = s3.cli(f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/lake", "sql", "SELECT 1")
    assert missing.returncode == 1
    assert "does not exist" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1, missing.stderr
    with pytest.raises(lake.LakeError, match="unsupported storage URI scheme 'gs'"):
        lake.Lake.open("gs://bucket/lake")
    with pytest.raises(lake.LakeError, match="no bucket"):
        lake.Lake.open("s3:///lake")
    assert SECRET not in repr(lake.S3Storage.from_env())
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(lake.LakeError, match="cannot reach bucket") as failed:
        lake.Lake.open(f"s3://{BUCKET}/lake")
    assert SECRET not in str(failed.value)
    assert "\n" not in str(failed.value)


def test_local_state_stays_local(ingested: Ingested) -> None:
    settings = lake.LakeSettings.resolve(ingested.root)
    assert not settings.is_local
    assert settings.local_state_dir.is_relative_to(Path(os.environ["XDG_CACHE_HOME"]))
    assert settings.local_state_dir != lake.LakeSettings.resolve(f"s3://{BUCKET}/other").local_state_dir
