"""Security, each claim a test: the serving token, read-only `cellfarm sql`, no path out of the lake, no secret in
output or logs.

(The SQL and lake checks live here with the serving ones so that the whole security surface is one file.)
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest

import lake
from serving._config import Settings
from serving._middleware import Guard, GuardConfig
from tests.conftest import run_cli
from tests.serving.conftest import TOKEN, Server

SECRET = "s3cr3t-" + "k" * 24  # a credential that must never be printed


# ------------------------------------------------------------------------------------------- the serving token


async def _app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def _status(token: str | None, path: str, authorization: str | None) -> int:
    guard = Guard(_app, GuardConfig(token=token, groups={}, inflight={}, body_limit={}))
    headers = {"authorization": authorization} if authorization is not None else {}

    async def call() -> int:
        transport = httpx.ASGITransport(app=guard)
        async with httpx.AsyncClient(transport=transport, base_url="http://cellfarm") as client:
            return (await client.post(path, headers=headers)).status_code

    return asyncio.run(call())


@pytest.mark.parametrize(
    ("configured", "authorization", "status"),
    [
        (None, None, 401),  # no token configured: every request is refused (fail closed)...
        (None, "Bearer ", 401),  # ...even one that sends the empty token
        (None, "Bearer None", 401),
        (SECRET, None, 401),
        (SECRET, f"Basic {SECRET}", 401),  # the scheme counts
        (SECRET, f"Bearer {SECRET}x", 401),
        (SECRET, f"Bearer {SECRET[:-1]}", 401),
        (SECRET, f"bearer {SECRET}", 200),  # schemes are case-insensitive (RFC 7235)
        (SECRET, f"Bearer  {SECRET} ", 200),
    ],
)
def test_the_token_is_required_and_fails_closed(configured: str | None, authorization: str | None, status: int) -> None:
    assert _status(configured, "/predict", authorization) == status
    assert _status(configured, "/livez", None) == 200  # the kubelet's probe needs no token


def test_settings_never_show_the_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELLFARM_API_TOKEN", SECRET)
    settings = Settings.from_env()
    assert settings.token == SECRET
    config = GuardConfig(token=settings.token, groups={}, inflight={}, body_limit={})
    assert SECRET not in repr(settings) + str(settings) + repr(config)


def test_the_server_log_holds_no_token(server: Server) -> None:
    """Right and wrong tokens, a bad body and a shed-worthy path: none of the tokens reaches the server's log."""
    wrong = "wrong-" + SECRET
    server.post("/predict", json={"perturbations": ["STAT1"], "context": {"n_cells": 1}})
    server.post("/predict", content=b"{", headers={"content-type": "application/json"})
    httpx.post(server.url + "/predict", json={}, headers={"Authorization": f"Bearer {wrong}"}, timeout=30)
    httpx.get(server.url + "/docs.json", headers={"Authorization": f"Bearer {wrong}"}, timeout=30)
    log = server.log.read_text(errors="replace")
    assert "/predict" in log  # the log is the access log we think it is
    assert TOKEN not in log
    assert wrong not in log


# ------------------------------------------------------------------------------------- no path out of the lake


def test_lake_names_never_leave_the_root(tmp_path: Path) -> None:
    settings = lake.LakeSettings.resolve(tmp_path / "lake")
    assert settings.image_uri("run-1", "p000") == f"{tmp_path}/lake/images/run-1/p000.ome.zarr"
    for run_id, position in (("../../etc", "p000"), ("run", "../../../x"), ("..", "p0"), ("a/b", "p0"), ("", "p0")):
        with pytest.raises(lake.InvalidInputError, match="not a name inside the lake"):
            settings.image_uri(run_id, position)


def test_requests_cannot_reach_files_outside_the_lake(server: Server, tmp_path: Path) -> None:
    canary = tmp_path / "canary.txt"
    canary.write_text("CANARY-" + SECRET)
    escape = f"../../../../../../..{tmp_path}"
    for path in (
        f"/static_content/{escape}/canary.txt",
        f"/{escape}/canary.txt",
        "/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e" + str(canary).replace("/", "%2f"),
        f"/docs/..%2f..%2f..%2f..%2f..%2f..%2f..%2f..{tmp_path}/canary.txt",
    ):
        resp = httpx.get(server.url + path, headers=server.auth, timeout=30)
        assert resp.status_code < 500, (path, resp.status_code)
        assert SECRET not in resp.text, path
    # strings that look like paths are names, never opened: a dataset is matched against the model's own
    resp = server.post("/predict", json={"perturbations": ["STAT1"], "context": {"dataset": f"{escape}/canary.txt"}})
    assert resp.status_code == 422
    assert "was trained on dataset" in resp.json()["error"]
    plane = base64.b64encode(bytes(2 * 64 * 64)).decode()
    frame = {"run_id": f"{escape}/made-by-a-request", "shape": [64, 64], "dtype": "<u2", "image_b64": plane}
    assert server.post("/decide_json", json=frame).status_code == 200
    assert sorted(p.name for p in tmp_path.iterdir()) == ["canary.txt"]


# ---------------------------------------------------------------------------------------------- read-only SQL


@pytest.fixture(scope="module")
def sql_lake(tmp_path_factory: pytest.TempPathFactory) -> lake.Lake:
    root = tmp_path_factory.mktemp("sql-security")
    (root / "outside.csv").write_text(f"secret\n{SECRET}\n")
    target = lake.Lake.open(root / "lake")
    (root / "lake" / "inside.csv").write_text("a\n1\n")
    return target


def _outside(target: lake.Lake) -> Path:
    return Path(target.root).parent


REFUSED = [
    ("copy (select 1) to '{out}/x.csv'", "read-only: COPY"),
    ("copy (select 1) to '{root}/x.csv'", "read-only: COPY"),  # inside the lake too: the engine alone would allow it
    ("attach '{root}/x.duckdb' as x", "read-only: ATTACH"),
    ("export database '{out}/dump'", "read-only: EXPORT"),
    ("install httpfs", "read-only: LOAD"),
    ("load '{out}/x.duckdb_extension'", "read-only: LOAD"),
    ("create table t as select 1", "read-only: CREATE"),
    ("insert into frames select * from frames", "read-only: INSERT"),
    ("update datasets set name = 'x'", "read-only: UPDATE"),
    ("delete from datasets", "read-only: DELETE"),
    ("set enable_external_access = true", "read-only: SET"),
    ("reset lock_configuration", "read-only: SET"),
    ("pragma enable_profiling", "read-only: PRAGMA"),
    ("call checkpoint()", "read-only: CALL"),
    ("select 1; copy (select 1) to '{out}/y.csv'", "read-only: COPY"),  # the second of two statements
    ("explain analyze copy (select 1) to '{root}/x.csv'", "EXPLAIN ANALYZE"),
    ("select * from read_csv('{out}/outside.csv')", "Permission Error"),
    ("select * from read_csv('{root}/../outside.csv')", "Permission Error"),
    ("select * from read_text('/etc/passwd')", "Permission Error"),
    ("select * from glob('{out}/*')", "Permission Error"),
    ("select * from read_parquet('http://127.0.0.1:9/x.parquet')", "Permission Error"),
    ("select * from delta_scan('{out}')", "outside the lake"),
    ("select * from delta_scan('{root}/delta/../..')", "outside the lake"),
    ("select * from query('select 1')", "runs SQL from a string"),
]


@pytest.mark.parametrize(("sql", "message"), REFUSED, ids=[s for s, _ in REFUSED])
def test_sql_is_read_only_by_default(sql_lake: lake.Lake, sql: str, message: str) -> None:
    out = _outside(sql_lake)
    before = sorted(p.name for p in out.rglob("*"))
    with pytest.raises(lake.LakeError, match=message.replace("(", r"\(")) as info:
        lake.query(sql_lake, sql.format(out=out, root=sql_lake.root))
    assert "\n" not in str(info.value)
    assert str(info.value).startswith("SQL error: ")
    assert SECRET not in str(info.value)
    assert sorted(p.name for p in out.rglob("*")) == before  # nothing written, anywhere


@pytest.mark.parametrize(
    "sql",
    [
        "select count(*) as n from datasets",
        "with d as (select * from cells) select count(*) as n from d",
        "explain select * from frames",
        "describe frames",
        "show tables",
        "summarize select 1 as a",
        "select * from read_csv('{root}/inside.csv')",  # a file inside the lake reads
        "select count(*) as n from delta_scan('{root}/delta/models')",
    ],
)
def test_reads_still_work(sql_lake: lake.Lake, sql: str) -> None:
    assert lake.query(sql_lake, sql.format(root=sql_lake.root)).num_rows >= 1


def test_allow_writes_is_the_one_way_to_write(sql_lake: lake.Lake, tmp_path: Path) -> None:
    out = tmp_path / "export.csv"
    query = f"copy (select count(*) as n from datasets) to '{out}'"
    refused = run_cli("sql", query, lake_dir=Path(sql_lake.root))
    assert refused.returncode == 1
    assert "--allow-writes" in refused.stderr
    assert not out.exists()
    run_cli("sql", query, "--allow-writes", lake_dir=Path(sql_lake.root), check=True)
    assert out.read_text().splitlines() == ["n", "0"]


def test_the_catalog_file_keeps_working_after_a_read_only_query(sql_lake: lake.Lake, tmp_path: Path) -> None:
    """The lock-down is on `query`'s own connection only: a catalog written in the same process is a normal
    DuckDB database, its views readable by the DuckDB CLI and Python."""
    lake.query(sql_lake, "select count(*) from datasets")
    path = lake.write_catalog(sql_lake, tmp_path / "lake.duckdb")
    con = duckdb.connect(str(path), read_only=True)
    try:
        con.execute(f"LOAD '{lake.delta_extension_path()}'")
        assert con.execute("select count(*) from datasets").fetchone() == (0,)
        assert con.execute("select current_setting('enable_external_access')").fetchone() == (True,)
    finally:
        con.close()


# ------------------------------------------------------------------------------------- no secret in any output


def test_no_secret_reaches_the_cli_output(tmp_path: Path) -> None:
    """Credentials in the environment and in URLs: errors name the URL without them, and nothing else prints
    them."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens: refused at once
    env = {
        "CELLFARM_API_TOKEN": SECRET,
        "AWS_ACCESS_KEY_ID": "AKIA" + SECRET,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    url = f"http://lab:{SECRET}@127.0.0.1:{port}/atlas.h5ad?X-Amz-Signature={SECRET}"
    runs = [
        run_cli("ingest", "atlas", url, lake_dir=tmp_path / "lake", **env),
        run_cli("--lake", "s3://lab-lake/cellfarm", "sql", "select count(*) from datasets", **env),
        run_cli("sql", "select * from nope", lake_dir=tmp_path / "lake", **env),
    ]
    for proc in runs:
        assert proc.returncode == 1, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert SECRET not in proc.stdout + proc.stderr
    assert f"http://lab:***@127.0.0.1:{port}/atlas.h5ad?***" in runs[0].stderr
    rows = lake.query(lake.Lake.open(tmp_path / "lake"), "select count(*) as n from datasets")
    assert rows.to_pylist() == [{"n": 0}]


def test_urls_are_stored_and_shown_without_credentials() -> None:
    from lake._fetch import redact_url

    assert redact_url("https://host/x.h5ad") == "https://host/x.h5ad"
    assert redact_url(f"https://u:{SECRET}@host:8443/x.h5ad") == "https://u:***@host:8443/x.h5ad"
    assert redact_url(f"https://host/x.h5ad?X-Amz-Credential={SECRET}&X-Amz-Signature=1") == "https://host/x.h5ad?***"
    assert json.dumps(redact_url(f"http://u:{SECRET}@[::1]:9/x")) == '"http://u:***@[::1]:9/x"'
