"""The atlas domain on real data: the Papalexi Perturb-seq through the drop sensor and the partitioned ingest,
and the HPA table; checks pass on them and a partition without its file fails with one line."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest

import lake
from dagster_project import atlas
from dagster_project.atlas.sensors import atlas_drop_sensor, hpa_drop_sensor
from dagster_project.resources import DropFolderResource
from tests.conftest import GENE_REF, HPA, PAPALEXI, need
from tests.dagster_project.conftest import bind, checks_of, metadata_of

NAME = PAPALEXI.stem


@dataclass
class Env:
    defs: dg.Definitions
    instance: dg.DagsterInstance
    drop: Path
    lake_dir: Path

    @property
    def lake(self) -> lake.Lake:
        return lake.Lake.open(self.lake_dir)

    def run(
        self, job: str, *, partition_key: str | None = None, raise_on_error: bool = True
    ) -> dg.ExecuteInProcessResult:
        return self.defs.resolve_job_def(job).execute_in_process(
            instance=self.instance, partition_key=partition_key, raise_on_error=raise_on_error
        )


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("atlas")
    drop = root / "drop"
    (drop / "atlas").mkdir(parents=True)
    (drop / "atlas" / PAPALEXI.name).symlink_to(need(PAPALEXI))  # a link to a shared file is that file
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(lake.ENV_GENE_REFERENCE, str(need(GENE_REF)))  # Papalexi's genes are symbols
        defs = bind(atlas.defs, lake_dir=root / "lake", drop_dir=drop)
        yield Env(defs, dg.DagsterInstance.ephemeral(), drop, root / "lake")


def _evaluate(sensor: dg.SensorDefinition, env: Env, cursor: str | None) -> dg.SensorResult | dg.SkipReason:
    ctx = dg.build_sensor_context(
        instance=env.instance, cursor=cursor, resources={"drop": DropFolderResource(path=str(env.drop))}
    )
    out = sensor(ctx)
    assert isinstance(out, dg.SensorResult | dg.SkipReason)
    return out


def _apply(env: Env, out: dg.SensorResult) -> None:
    """What the daemon does with a sensor's partition requests."""
    for req in out.dynamic_partitions_requests or []:
        assert isinstance(req, dg.AddDynamicPartitionsRequest)
        env.instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))


def test_drop_sensor_adds_a_partition_per_new_file_once(env: Env) -> None:
    first = _evaluate(atlas_drop_sensor, env, None)
    assert isinstance(first, dg.SensorResult)
    assert [r.partition_key for r in first.run_requests or []] == [NAME]
    assert [list(r.partition_keys) for r in first.dynamic_partitions_requests or []] == [[NAME]]  # type: ignore[union-attr]
    _apply(env, first)

    again = _evaluate(atlas_drop_sensor, env, first.cursor)
    assert isinstance(again, dg.SkipReason)

    other = env.drop / "atlas" / "other.h5ad"
    other.write_bytes(b"still being copied")  # modified just now: left for a later tick
    assert isinstance(_evaluate(atlas_drop_sensor, env, first.cursor), dg.SkipReason)
    settled = PAPALEXI.stat().st_mtime - 1000
    os.utime(other, (settled, settled))
    later = _evaluate(atlas_drop_sensor, env, first.cursor)
    assert isinstance(later, dg.SensorResult)
    assert [r.partition_key for r in later.run_requests or []] == ["other"]
    assert json.loads(later.cursor or "{}").keys() == {PAPALEXI.name, "other.h5ad"}
    _apply(env, later)

    # the same name with other content is requested again, under a new run key, and is no new partition
    os.utime(other, (settled - 10, settled - 10))
    changed = _evaluate(atlas_drop_sensor, env, later.cursor)
    assert isinstance(changed, dg.SensorResult)
    assert [r.partition_key for r in changed.run_requests or []] == ["other"]
    assert changed.run_requests[0].run_key != later.run_requests[0].run_key  # type: ignore[index]
    assert not changed.dynamic_partitions_requests
    other.unlink()


def test_partition_ingests_and_checks_pass_then_rematerializing_is_a_noop(env: Env) -> None:
    env.instance.add_dynamic_partitions("atlas_datasets", [NAME])
    first = env.run("atlas_ingest", partition_key=NAME)
    assert first.success
    cells = metadata_of(first, "cells")
    assert cells["status"] == "ingested"
    assert cells["n_obs"] == 20_729
    assert "| (control) | 2386 |" in cells["cells_per_perturbation"]
    assert metadata_of(first, "genes")["n_vars"] == 299
    checks = checks_of(first)
    assert set(checks) >= {"cells_schema", "cells_keys_unique", "cells_rows", "dataset_genes_ensembl_ids"}
    assert all(checks.values()), checks

    target = env.lake
    n = lake.query(target, "SELECT count(*) AS n FROM cells")["n"][0].as_py()
    genes = lake.query(target, "SELECT count(*) AS n FROM genes")["n"][0].as_py()
    assert (n, genes) == (20_729, 299)
    versions = {t: target.version(t) for t in ("cells", "dataset_genes", "datasets")}

    second = env.run("atlas_ingest", partition_key=NAME)
    assert second.success
    again = metadata_of(second, "cells")
    assert again["status"] == "unchanged"
    assert again["dataset_id"] == cells["dataset_id"]
    assert {t: target.version(t) for t in versions} == versions  # not one commit
    assert lake.query(target, "SELECT count(*) AS n FROM cells")["n"][0].as_py() == 20_729


def test_partition_without_its_file_fails_with_one_line(env: Env) -> None:
    env.instance.add_dynamic_partitions("atlas_datasets", ["nowhere"])
    result = env.run("atlas_ingest", partition_key="nowhere", raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = failure.step_failure_data.error.message  # type: ignore[union-attr]
    assert "no file for atlas partition 'nowhere'" in message
    assert str(env.drop / "atlas" / "nowhere.h5ad") in message


def test_hpa_sensor_and_asset_ingest_the_newest_tsv(env: Env) -> None:
    missing = env.run("hpa_ingest", raise_on_error=False)
    assert not missing.success  # no file yet: a one-line failure, nothing written
    assert env.lake.read("hpa_subcellular").num_rows == 0

    (env.drop / "hpa").mkdir()
    (env.drop / "hpa" / HPA.name).symlink_to(need(HPA))
    seen = _evaluate(hpa_drop_sensor, env, None)
    assert isinstance(seen, dg.SensorResult)
    assert len(seen.run_requests or []) == 1
    assert isinstance(_evaluate(hpa_drop_sensor, env, seen.cursor), dg.SkipReason)

    result = env.run("hpa_ingest")
    meta = metadata_of(result, "hpa_subcellular")
    assert meta["status"] == "ingested"
    assert meta["n_genes"] > 10_000
    checks = checks_of(result)
    assert checks.keys() == {
        "hpa_subcellular_schema",
        "hpa_subcellular_rows",
        "hpa_subcellular_keys_unique",
        "hpa_subcellular_ensembl_ids",
    }
    assert all(checks.values()), checks
    # the Papalexi genes join the HPA locations through their Ensembl ids
    joined = lake.query(
        env.lake, "SELECT count(DISTINCT g.ensembl_id) AS n FROM genes g JOIN hpa_subcellular h USING (ensembl_id)"
    )
    assert joined["n"][0].as_py() > 50
