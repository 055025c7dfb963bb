"""``cellfarm ui``: ``dagster dev`` on the project's Definitions, with its instance next to the lake.

``dagster dev`` (webserver + daemon, so sensors and schedules tick) runs in a process group of its own; Ctrl-C or
SIGTERM stops that whole group, runs it launched included, and nothing it started outlives the command.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Protocol

import httpx

import lake

__all__ = ["UiPlaces", "run_ui", "seed_drop", "ui_places", "write_instance_config"]

CODE_LOCATION = "dagster_project"
# Read by dagster_project.resources; not imported from there, since importing that package loads every definition
# and a broken one must show in the UI (which reports load errors) rather than stop this command.
ENV_DROP = "CELLFARM_DROP"
_STOP_WAIT_S = 20.0  # dagster dev's own grace for its webserver and daemon is 10 s each, one after the other
_STRAGGLER_WAIT_S = 5.0  # run workers of an interrupted run mark it failed before they are killed

INSTANCE_CONFIG = """\
# The Dagster instance of `cellfarm ui` (written once; yours to edit). SQLite in this folder: no server needed.
# infra/dagster/dagster.yaml is the Postgres one for a shared deployment.
storage:
  sqlite:
    base_dir: {storage}
run_queue:
  max_concurrent_runs: 4  # a lab workstation: more runs at once only fight for cores and SQLite's lock
telemetry:
  enabled: false
nux:
  enabled: false
"""


class _Console(Protocol):
    def print(self, *objects: object, highlight: bool | None = None, soft_wrap: bool | None = None) -> None: ...


@dataclass(frozen=True)
class UiPlaces:
    """Where the UI keeps its state and where the Definitions look for data, all absolute."""

    lake_root: str
    drop: Path
    dagster_home: Path


def ui_places(lake_uri: str | None, *, drop: str | None = None, dagster_home: str | None = None) -> UiPlaces:
    """The lake root, drop folder and DAGSTER_HOME: the last two beside a local lake (``.cellfarm/``), else in
    ``./.cellfarm``, unless given."""
    settings = lake.LakeSettings.resolve(lake_uri)
    data = Path(settings.root).parent if settings.is_local else Path(".cellfarm").resolve()
    return UiPlaces(
        lake_root=settings.root,
        drop=Path(drop).expanduser().resolve() if drop else data / "drop",
        dagster_home=Path(dagster_home).expanduser().resolve() if dagster_home else data / "dagster",
    )


def write_instance_config(dagster_home: Path) -> Path:
    """``dagster.yaml`` for SQLite storage in ``dagster_home``, unless one is there (then it is the user's)."""
    dagster_home.mkdir(parents=True, exist_ok=True)
    config = dagster_home / "dagster.yaml"
    if not config.exists():
        config.write_text(INSTANCE_CONFIG.format(storage=dagster_home / "storage"))
    return config


def seed_drop(drop: Path) -> list[Path]:
    """Link the shared data's Perturb-seq and HPA files into an empty drop folder, so that a newcomer's first
    **Materialize all** has sources (the names the demo ingests them under: a lake that ran the demo sees the
    same files and does nothing). Nothing happens where the folder has files or there is no shared data."""
    from cellfarm._demo import DATASET, HPA, PAPALEXI, find_shared_data

    shared = find_shared_data()
    linked: list[Path] = []
    if shared is None:
        return linked
    for kind, source, name in (("atlas", PAPALEXI, f"{DATASET}.h5ad"), ("hpa", HPA, Path(HPA).name)):
        folder = drop / kind
        if (shared / source).is_file() and not any(folder.iterdir()):
            (folder / name).symlink_to(shared / source)
            linked.append(folder / name)
    return linked


def run_ui(places: UiPlaces, *, host: str, port: int, seed: bool = False, console: _Console) -> int:
    """Run ``dagster dev`` until it exits, or until SIGINT / SIGTERM stops it; its exit status."""
    from serving._cli import check_address  # the one check of a bind address, shared with `cellfarm serve`

    host = check_address(host, port)
    write_instance_config(places.dagster_home)
    for kind in ("atlas", "hpa"):  # where the drop-folder sensors look: made visible to a newcomer
        (places.drop / kind).mkdir(parents=True, exist_ok=True)
    for seeded in seed_drop(places.drop) if seed else []:
        console.print(f"drop folder: linked {seeded} (the shared data) for the sensors to ingest", highlight=False)
    env = {
        **os.environ,
        "DAGSTER_HOME": str(places.dagster_home),
        lake.ENV_LAKE: places.lake_root,
        ENV_DROP: str(places.drop),
    }
    url = f"http://{host}:{port}"
    console.print(
        f"starting the Dagster UI on {url} (lake {places.lake_root}, drop folder {places.drop}, "
        f"DAGSTER_HOME {places.dagster_home}); Ctrl-C stops it",
        highlight=False,
        soft_wrap=True,
    )
    cmd = [sys.executable, "-m", "dagster", "dev", "-m", CODE_LOCATION, "--host", host, "--port", str(port)]
    # Handled here, both signals are back to their defaults in the child: dagster dev needs SIGINT, and a shell
    # starts background jobs with it ignored (an ignored signal stays ignored across exec).
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    try:
        _announce_when_ready(proc, url, console)
        return proc.wait()
    except KeyboardInterrupt:
        console.print("stopping the Dagster UI", highlight=False)
        return 0
    finally:
        _stop_group(proc)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _announce_when_ready(proc: subprocess.Popen[bytes], url: str, console: _Console) -> None:
    while proc.poll() is None:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/server_info", timeout=2.0).is_success:
                console.print(
                    f"[bold green]Dagster UI ready[/]: {url} (Lineage > Materialize all)",
                    highlight=False,
                    soft_wrap=True,
                )
                return
        time.sleep(0.5)


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT to the group (what Ctrl-C in a terminal sends to ``dagster dev``), then SIGKILL to what is left;
    a second Ctrl-C skips the wait."""
    pgid = proc.pid  # start_new_session: the leader's pid is the group id
    try:
        if proc.poll() is None:
            _signal_group(pgid, signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=_STOP_WAIT_S)
        deadline = time.monotonic() + _STRAGGLER_WAIT_S
        while _signal_group(pgid, 0) and time.monotonic() < deadline:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        _signal_group(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5.0)


def _signal_group(pgid: int, sig: int) -> bool:
    """Whether the group still had members to signal."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True
