"""Dagster on PostgreSQL: Debian's PostgreSQL started by the test on 127.0.0.1 (initdb and pg_ctl in a temp dir, a
free port, password auth), a DAGSTER_HOME holding `infra/dagster/dagster.yaml` as shipped with its DAGSTER_PG_*
pointed at that server, and an atlas partition (SOMA, `cells`, `genes` and their checks) materialized by
`dagster job execute` with the multiprocess executor (`CELLFARM_DAGSTER_EXECUTOR`), as a run worker would; the run,
its materializations, check evaluations and the dynamic partition are then read back from Postgres, through
Dagster and through SQL. One run: each process that loads the code location costs seconds (torch, TileDB)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
import yaml

import lake
from dagster_project.definitions import ENV_EXECUTOR, executor
from dagster_project.resources import ENV_DROP
from tests.conftest import CXG, ROOT, need
from tests.models.conftest import free_port

INFRA = ROOT / "infra" / "dagster"
DAGSTER = Path(sys.executable).parent / "dagster"
PARTITION = CXG.stem  # 2 cells x 7 Ensembl genes: the smallest valid CELLxGENE file
USER = "dagster"


def _bin_dir() -> Path:
    """Debian keeps the server binaries off PATH, one folder per major version: the newest."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: [int(n) for n in p.parts[-3].split(".")]
    )
    if found:
        return found[-1].parent
    on_path = shutil.which("initdb")
    if on_path is None:
        pytest.skip("PostgreSQL server binaries not found: apt-get install -y --no-install-recommends postgresql")
    return Path(on_path).parent


def _as_server_user(cmd: list[str]) -> list[str]:
    """The server refuses to run as root: as root, run it as Debian's `postgres` user."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@dataclass(frozen=True)
class Postgres:
    port: int
    password: str
    database: str = "dagster"

    @property
    def env(self) -> dict[str, str]:
        """What `infra/dagster/dagster.yaml` reads."""
        return {
            "DAGSTER_PG_HOST": "127.0.0.1",
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_DB": self.database,
            "DAGSTER_PG_USER": USER,
            "DAGSTER_PG_PASSWORD": self.password,
        }

    def count(self, sql: str) -> int:
        import psycopg2

        conn = psycopg2.connect(
            host="127.0.0.1", port=self.port, user=USER, password=self.password, dbname=self.database
        )
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                row = cur.fetchone()
                return int(row[0]) if row else 0
        finally:
            conn.close()


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    bin_dir = _bin_dir()
    # not under pytest's tmp_path: as root that tree is 0700 and closed to the `postgres` user
    root = Path(tempfile.mkdtemp(prefix="cfpg-", dir="/tmp"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    data, port, password = root / "data", free_port(), secrets.token_hex(16)
    pwfile = root / "pwfile"
    pwfile.write_text(password)
    if os.geteuid() == 0:
        shutil.chown(pwfile, "postgres", "postgres")
    initdb = [
        str(bin_dir / "initdb"), "-D", str(data), "-U", USER, f"--pwfile={pwfile}", "--auth-host=scram-sha-256",
        "--auth-local=peer", "-E", "UTF8", "--no-sync", "--no-instructions",
    ]  # fmt: skip
    # fsync off: a throwaway server; the test is about where Dagster's records go, not about surviving power loss
    options = f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off"
    pg_ctl = str(bin_dir / "pg_ctl")
    try:
        subprocess.run(_as_server_user(initdb), check=True, capture_output=True, timeout=120)
        pwfile.unlink()
        start = [pg_ctl, "-D", str(data), "-l", str(root / "server.log"), "-o", options, "-w", "-t", "60", "start"]
        subprocess.run(_as_server_user(start), check=True, capture_output=True, timeout=90)
        server = Postgres(port=port, password=password)
        subprocess.run(
            [str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", USER, server.database],
            check=True,
            capture_output=True,
            timeout=60,
            env={**os.environ, "PGPASSWORD": password},
        )
        yield server
    finally:
        if (data / "postmaster.pid").exists():
            stop = [pg_ctl, "-D", str(data), "-m", "immediate", "-w", "-t", "30", "stop"]
            subprocess.run(_as_server_user(stop), capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


@dataclass(frozen=True)
class Deployment:
    home: Path
    lake_dir: Path
    run: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def deployment(postgres: Postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """The shipped instance config on that server; the partition added (as the drop sensor would) and its
    ingest job run by a `dagster` process of its own on the code location, the steps in subprocesses. The
    DAGSTER_PG_* variables stay set for the module: this process opens the same instance to read it back."""
    root = tmp_path_factory.mktemp("pg-dagster")
    home = root / "dagster_home"
    home.mkdir()
    shutil.copy(INFRA / "dagster.yaml", home / "dagster.yaml")
    drop = root / "drop"
    (drop / "atlas").mkdir(parents=True)
    (drop / "atlas" / f"{PARTITION}.h5ad").symlink_to(need(CXG))
    env = {
        "DAGSTER_HOME": str(home),
        lake.ENV_LAKE: str(root / "lake"),
        ENV_DROP: str(drop),
        ENV_EXECUTOR: "multiprocess",
    }
    with pytest.MonkeyPatch.context() as mp:
        for name, value in postgres.env.items():
            mp.setenv(name, value)
        with dg.DagsterInstance.from_config(str(home)) as instance:
            instance.add_dynamic_partitions("atlas_datasets", [PARTITION])
        tags = json.dumps({"dagster/partition": PARTITION})
        cmd = [str(DAGSTER), "job", "execute", "-m", "dagster_project", "-j", "atlas_ingest", "--tags", tags]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, **env})
        yield Deployment(home, root / "lake", run)


def test_ingest_run_succeeds_with_a_process_per_step(deployment: Deployment) -> None:
    proc = deployment.run
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    with dg.DagsterInstance.from_config(str(deployment.home)) as instance:
        from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage

        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        (run,) = instance.get_runs()
        assert run.job_name == "atlas_ingest"
        assert run.status == dg.DagsterRunStatus.SUCCESS
        assert run.tags["dagster/partition"] == PARTITION
        succeeded = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_SUCCESS)
        steps = {e.step_key for e in succeeded}
        assert steps == {"atlas_dataset", "cells_table_checks", "genes_table_checks"}
        # the multiprocess executor's own events: one worker per step, each step in a process of its own
        started = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_WORKER_STARTED)
        assert {e.step_key for e in started} == steps
        pids = {e.get_dagster_event().pid for e in succeeded}
        assert len(pids) == len(steps)
    # the lake holds what the run says it wrote
    assert lake.query(lake.Lake.open(deployment.lake_dir), "SELECT count(*) AS n FROM cells")["n"][0].as_py() == 2


def test_materializations_and_checks_are_in_postgres(postgres: Postgres, deployment: Deployment) -> None:
    with dg.DagsterInstance.from_config(str(deployment.home)) as instance:
        for key in ("soma_experiment", "cells", "genes"):
            event = instance.get_latest_materialization_event(dg.AssetKey(key))
            materialization = event.asset_materialization if event else None
            assert materialization is not None, key
            assert materialization.partition == PARTITION
        assert instance.get_dynamic_partitions("atlas_datasets") == [PARTITION]
        (run,) = instance.get_runs()
        evaluations = {
            check.check_name: check.passed
            for entry in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
            if (check := entry.asset_check_evaluation) is not None
        }
    assert {"cells_schema", "cells_rows", "cells_keys_unique", "dataset_genes_ensembl_ids"} <= evaluations.keys()
    assert all(evaluations.values()), evaluations
    # the same records, as rows of the tables dagster-postgres created
    assert postgres.count("SELECT count(*) FROM runs WHERE status = 'SUCCESS'") == 1
    materialized = postgres.count(
        "SELECT count(DISTINCT asset_key) FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION'"
    )
    assert materialized == 3  # soma_experiment, cells, genes
    checks = postgres.count("SELECT count(*) FROM asset_check_executions WHERE execution_status = 'SUCCEEDED'")
    assert checks == len(evaluations)
    assert postgres.count("SELECT count(*) FROM dynamic_partitions WHERE partitions_def_name = 'atlas_datasets'") == 1


def test_executor_is_chosen_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_EXECUTOR, raising=False)
    assert executor() is dg.in_process_executor  # `dagster dev` and the tests: one process per run
    monkeypatch.setenv(ENV_EXECUTOR, "multiprocess")
    assert executor() is dg.multiprocess_executor
    monkeypatch.setenv(ENV_EXECUTOR, "celery")
    with pytest.raises(ValueError, match="in_process, multiprocess, not 'celery'"):
        executor()


def test_helm_values_launch_runs_on_kubernetes_against_postgres() -> None:
    values = yaml.safe_load((INFRA / "values.yaml").read_text())
    launcher = values["runLauncher"]
    assert launcher["type"] == "K8sRunLauncher"
    assert {s["name"] for s in launcher["config"]["k8sRunLauncher"]["envSecrets"]} >= {"cellfarm-lake"}
    (code,) = values["dagster-user-deployments"]["deployments"]
    assert code["dagsterApiGrpcArgs"] == ["--module-name", "dagster_project"]
    assert code["includeConfigInLaunchedRuns"]["enabled"] is True  # run pods get the code's image and env
    env = {e["name"]: e.get("value") for e in code["env"]}
    assert env[ENV_EXECUTOR] == "multiprocess"
    assert values["postgresql"]["enabled"] is False  # the lab's managed Postgres, as in dagster.yaml
    assert values["generatePostgresqlPasswordSecret"] is False
    # one driver and one run queue policy for both deployments: the Helm chart's instance and dagster.yaml agree
    instance = yaml.safe_load((INFRA / "dagster.yaml").read_text())
    assert values["postgresql"]["postgresqlScheme"] == instance["storage"]["postgres"]["postgres_db"]["scheme"]
    queued = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    assert queued["maxConcurrentRuns"] == instance["run_queue"]["max_concurrent_runs"]
    assert queued["tagConcurrencyLimits"] == instance["run_queue"]["tag_concurrency_limits"]
