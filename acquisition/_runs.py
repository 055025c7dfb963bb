"""The run registry: `acquisition_runs` rows go running -> completed | failed | aborted.

A live run holds a lock file for its whole life; the kernel drops it when the process dies (even by SIGKILL),
so the next start can tell a dead run from another agent's live one and mark only the dead ones failed.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Literal

import pyarrow.compute as pc

import lake

__all__ = ["RunStatus", "fail_dead_runs", "finish_run", "new_run_id", "run_lock", "start_run"]

RunStatus = Literal["running", "completed", "failed", "aborted"]


def new_run_id(microscope_id: str) -> str:
    # the run id names the run's images and lock under the lake root: a name, never a path out of it
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", microscope_id):
        raise lake.InvalidInputError(
            f"microscope id {microscope_id!r} must be letters, digits, '.', '_' or '-' (it names the run's files)"
        )
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return f"{microscope_id}-{stamp}-{uuid.uuid4().hex[:6]}"


@contextmanager
def run_lock(target: lake.Lake, run_id: str) -> Iterator[None]:
    with target.liveness("runs", run_id):  # a lease on the store when agents share an s3:// lake
        yield


def start_run(
    target: lake.Lake, run_id: str, *, microscope_id: str, plan: str, policy: str, started_at: datetime
) -> None:
    target.merge(
        "acquisition_runs",
        [
            {
                "run_id": run_id,
                "microscope_id": microscope_id,
                "plan": plan,
                "started_at": started_at,
                "status": "running",
                "policy": policy,
                "n_frames": 0,
            }
        ],
        mode="upsert",
    )


def finish_run(
    target: lake.Lake,
    run_id: str,
    *,
    status: RunStatus,
    n_frames: int | None = None,
    error: str | None = None,
    summary: dict[str, Any] | None = None,
) -> None:
    """Update the run's row in place; only the columns given change."""
    rows = target.read("acquisition_runs", filter=pc.field("run_id") == run_id).to_pylist()
    row: dict[str, Any] = rows[0] if rows else {"run_id": run_id, "microscope_id": "unknown"}
    row.update(status=status, ended_at=datetime.now(UTC), error=error)
    if n_frames is not None:
        row["n_frames"] = n_frames
    if summary is not None:
        row["summary"] = json.dumps(summary, default=str)
    target.merge("acquisition_runs", [row], mode="upsert")


def fail_dead_runs(target: lake.Lake) -> list[str]:
    """Mark `running` runs whose agent is gone as failed; what they committed stays readable."""
    runs = target.read("acquisition_runs", columns=["run_id", "status"])
    running = runs.filter(pc.equal(runs["status"], "running"))["run_id"].to_pylist()
    dead = [r for r in running if not target.is_live("runs", r)]
    for run_id in dead:
        n = target.read("frames", columns=["frame_id"], filter=pc.field("run_id") == run_id).num_rows
        finish_run(target, run_id, status="failed", n_frames=n, error="the agent died mid-run (found at next start)")
    return dead
