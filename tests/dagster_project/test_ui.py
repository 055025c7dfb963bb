"""`cellfarm ui` as a user runs it: the real command on a free port of 127.0.0.1 over a temporary lake, and a
headless Chromium (Debian's package, driven by Playwright) that materializes an asset from the asset graph.

Screenshots land in the test's tmp folder; ``CELLFARM_UPDATE_SCREENSHOTS=1`` also copies the asset graph to
``docs/dagster-ui.png`` (the README shows it).
"""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
import yaml
from playwright.sync_api import Page, ViewportSize, expect, sync_playwright

import lake
from tests.conftest import CELLFARM, HPA, ROOT, need

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ASSET = "hpa_subcellular"  # cheap, unpartitioned, and its input is one file in the drop folder
START_TIMEOUT_S = 120.0  # a loaded 2-core box; typically ~20 s
RUN_TIMEOUT_MS = 120_000  # every step of a run is its own process under the default executor


@dataclass
class Ui:
    proc: subprocess.Popen[bytes]
    url: str
    data: Path  # the folder holding lake/, drop/ and dagster/
    log: Path
    dagster_pgid: int  # the process group of `dagster dev` and everything it starts

    @property
    def lake_dir(self) -> Path:
        return self.data / "lake"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, n: int = 4000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


def _dagster_dev(pid: int) -> psutil.Process | None:
    for child in psutil.Process(pid).children():
        if "dev" in child.cmdline():
            return child
    return None


def _group(pgid: int) -> list[psutil.Process]:
    """The live (not zombie) processes of group ``pgid``."""
    found = []
    for p in psutil.process_iter(["status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(p)
        except (ProcessLookupError, psutil.Error):
            continue
    return found


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ui]:
    """`cellfarm --lake <tmp>/.cellfarm/lake ui --port <free>`, started in its own session and waited for."""
    root = tmp_path_factory.mktemp("ui")
    data = root / ".cellfarm"
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("CELLFARM_LAKE", "CELLFARM_DROP", "DAGSTER_HOME")}
    log = root / "cellfarm-ui.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(CELLFARM), "--lake", str(data / "lake"), "ui", "--port", str(port)],
            cwd=root,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    pgid = 0
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert proc.poll() is None, f"cellfarm ui exited with {proc.returncode}:\n{_tail(log)}"
            assert time.monotonic() < deadline, f"no answer from {url} in {START_TIMEOUT_S:.0f} s:\n{_tail(log)}"
            if not pgid and (dev := _dagster_dev(proc.pid)) is not None:
                pgid = dev.pid  # its own session: the leader's pid is the group id
            try:
                if httpx.get(f"{url}/server_info", timeout=2.0).is_success and pgid:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        yield Ui(proc=proc, url=url, data=data, log=log, dagster_pgid=pgid)
    finally:
        # normally test_ctrl_c_stops_everything has stopped it already; this is for a failed or deselected run
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                _kill_group(proc.pid)
        if pgid:
            _kill_group(pgid)


def test_ui_instance_lives_beside_the_lake(ui: Ui) -> None:
    """DAGSTER_HOME is `.cellfarm/dagster` next to the lake, with SQLite storage there, and the server that answers
    has loaded the project's Definitions (every asset of `dagster_project.defs`)."""
    import dagster_project

    config = yaml.safe_load((ui.data / "dagster" / "dagster.yaml").read_text())
    assert config["storage"]["sqlite"]["base_dir"] == str(ui.data / "dagster" / "storage")
    assert (ui.data / "dagster" / "storage").is_dir()  # the instance wrote its SQLite files where it was told
    assert (ui.data / "drop" / "hpa").is_dir()
    info = httpx.get(f"{ui.url}/server_info", timeout=10).json()
    assert info["dagster_webserver_version"].startswith("1.13")

    query = "{ assetNodes { assetKey { path } } }"
    reply = httpx.post(f"{ui.url}/graphql", json={"query": query}, timeout=60).json()
    served = {"/".join(n["assetKey"]["path"]) for n in reply["data"]["assetNodes"]}
    defined = {k.to_user_string() for k in dagster_project.defs.resolve_asset_graph().get_all_asset_keys()}
    assert served == defined


def test_infra_instance_config_is_postgres() -> None:
    """infra/dagster/dagster.yaml is an instance config Dagster accepts, with Postgres storage whose connection
    comes from the environment (no secret in the file)."""
    from dagster._config import validate_config
    from dagster._core.instance.config import dagster_instance_config_schema

    config = yaml.safe_load((ROOT / "infra" / "dagster" / "dagster.yaml").read_text())
    result = validate_config(dagster_instance_config_schema(), config)
    assert result.success, result.errors
    connection = config["storage"]["postgres"]["postgres_db"]
    assert {k for k, v in connection.items() if isinstance(v, dict) and set(v) == {"env"}} == {
        "hostname",
        "port",
        "db_name",
        "username",
        "password",
    }


@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} not found: apt-get install chromium chromium-driver")
@pytest.mark.slow
def test_materialize_from_the_asset_graph(ui: Ui, tmp_path: Path) -> None:
    """A newcomer's path: the asset graph lists every asset; click one, "Materialize selected"; the run succeeds,
    shows in the Runs page, and its rows are in the lake."""
    import dagster_project

    graph = dagster_project.defs.resolve_asset_graph()
    keys = sorted(k.to_user_string() for k in graph.get_all_asset_keys())
    groups = sorted({graph.get(k).group_name for k in graph.get_all_asset_keys()})
    assert ASSET in keys
    # Copied now (not before the start) so its mtime is fresh: the drop sensor leaves a file alone for a few
    # seconds, and this run is the UI's. Should the sensor launch one too, the lake's writer lock serializes them.
    tsv = ui.data / "drop" / "hpa" / "subcellular_location.tsv"
    shutil.copyfile(need(HPA), tsv)

    # tall enough for the sidebar to list every group and asset without scrolling (it is virtualized)
    viewport: ViewportSize = {"width": 1600, "height": max(1000, 200 + 28 * (len(keys) + len(groups)))}
    with sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            tmp_path / "chromium",
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            viewport=viewport,
        )
        try:
            page = browser.pages[0] if browser.pages else browser.new_page()
            page.set_default_timeout(60_000)
            _show_every_asset(page, ui.url, groups, keys)
            page.screenshot(path=tmp_path / "asset-graph-before.png")

            page.locator(f"[title='{ASSET}']").first.click()
            page.get_by_role("button", name="Materialize selected").click()
            launched = page.locator("a[href^='/runs/']", has_text="View")  # the "Launched run ..." toast
            expect(launched).to_be_visible()
            run_id = str(launched.get_attribute("href")).rsplit("/", 1)[-1]
            page.screenshot(path=tmp_path / "launched.png")

            page.goto(f"{ui.url}/runs/{run_id}")
            expect(page.get_by_text("Success", exact=True).first).to_be_visible(timeout=RUN_TIMEOUT_MS)
            page.screenshot(path=tmp_path / "run.png")

            page.goto(f"{ui.url}/runs")
            link = page.locator(f"a[href='/runs/{run_id}']").first
            expect(link).to_be_visible()
            row = link.locator("xpath=ancestor::*[contains(., 'Success')][1]")  # the run's row, with its status
            expect(row).to_contain_text(ASSET)
            page.screenshot(path=tmp_path / "runs.png")

            _show_every_asset(page, ui.url, groups, keys)  # now with the asset's materialization
            page.screenshot(path=tmp_path / "asset-graph.png")
            if os.environ.get("CELLFARM_UPDATE_SCREENSHOTS") == "1":
                shutil.copyfile(tmp_path / "asset-graph.png", ROOT / "docs" / "dagster-ui.png")
        finally:
            browser.close()

    with tsv.open(newline="") as f:
        main = {
            (r["Gene"], loc) for r in csv.DictReader(f, delimiter="\t") for loc in r["Main location"].split(";") if loc
        }
    rows = lake.Lake.open(ui.lake_dir).read(ASSET, columns=["ensembl_id", "location", "is_main"]).to_pylist()
    assert {(r["ensembl_id"], r["location"]) for r in rows if r["is_main"]} == main


def _show_every_asset(page: Page, url: str, groups: list[str], keys: list[str]) -> None:
    """The global asset graph with every group expanded in its sidebar: each group and asset must be listed."""
    page.goto(f"{url}/asset-groups")
    expect(page.get_by_role("button", name="Materialize all")).to_be_visible()
    for group in groups:  # a sidebar row: the caret button, then the group's name
        row = page.locator("div:has(> button > [aria-label='arrow_drop_down'])", has=page.locator(f"[title='{group}']"))
        row.locator(":scope > button").click()
    for name in [*groups, *keys]:
        expect(page.locator(f"[title='{name}']").first).to_be_visible()
    expect(page.get_by_text("fetching statuses")).to_have_count(0)


def test_ctrl_c_stops_everything(ui: Ui) -> None:
    """SIGINT (Ctrl-C) to `cellfarm ui` stops the webserver, the daemon, the code servers and any run: the whole
    process group of `dagster dev`, and the port is free again."""
    ui.proc.send_signal(signal.SIGINT)
    assert ui.proc.wait(timeout=60) == 0, _tail(ui.log)
    assert not _group(ui.dagster_pgid), [p.cmdline()[:5] for p in _group(ui.dagster_pgid)]
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{ui.url}/server_info", timeout=2.0)
    assert "stopping the Dagster UI" in _tail(ui.log)


def test_seed_links_the_shared_sources_into_an_empty_drop_folder(tmp_path: Path) -> None:
    from cellfarm._ui import seed_drop
    from tests.conftest import PAPALEXI

    need(PAPALEXI)
    drop = tmp_path / "drop"
    for kind in ("atlas", "hpa"):
        (drop / kind).mkdir(parents=True)
    linked = seed_drop(drop)
    assert sorted(p.relative_to(drop).as_posix() for p in linked) == ["atlas/papalexi2021.h5ad", f"hpa/{HPA.name}"]
    assert {p.resolve() for p in linked} == {PAPALEXI.resolve(), HPA.resolve()}
    assert seed_drop(drop) == []  # a folder with files is the user's: left alone
