"""SIGKILL in the middle of Delta commits, many times: what was committed stays, nothing half-written is visible.

A child appends batches to `frames` through `Lake.append` (the acquisition sink's path) in a loop. The test stops
it (SIGSTOP) at random moments until it is caught in the phase a round asks for, then kills it (SIGKILL) there:
- ``before``: an append began, nothing of it is on disk yet;
- ``data``: its Parquet file is (partly) written, its log entry is not;
- ``logged``: its log entry (and, some rounds, a checkpoint) is written, the append has not returned.
After every kill the table opens, every version reads, each batch is all there or not at all (present exactly
when its log entry is), and the next child appends on top. On a local disk delta-rs (object_store) writes a data
file as ``part-....parquet#1`` renamed into place, then commits by writing ``_delta_log/NNN.json#1`` and
hard-linking it to ``NNN.json`` (which fails if another writer has that version): what a kill leaves is
unreferenced files, which no reader sees, the next commit steps over, and a *full* VACUUM removes (the lake's
VACUUM, not full, only looks past the last checkpoint and keeps them).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable

import lake
from tests.hardening._workers import append_batches, batch, read_journal

ROUNDS = 9  # three kills in each phase
PHASES = ("before", "data", "logged")
ROWS = 2_000  # rows per batch: a Parquet file that takes a moment to write
RUN = "kill"
HUNT_S = 8.0  # per round, at most, to catch the child in the phase asked for
_COMMIT = re.compile(r"^(\d{20})\.json$")


@dataclass
class Table:
    """The parent's view of the table's files, read from disk while the child is stopped or dead."""

    uri: Path
    referenced: set[str] = field(default_factory=set)
    parsed: int = -1  # the newest log entry whose `add` actions are in `referenced`

    def latest(self) -> int:
        return max(int(m.group(1)) for p in (self.uri / "_delta_log").iterdir() if (m := _COMMIT.match(p.name)))

    def refresh(self) -> int:
        latest = self.latest()
        for v in range(self.parsed + 1, latest + 1):
            for line in (self.uri / "_delta_log" / f"{v:020d}.json").read_text().splitlines():
                add = json.loads(line).get("add")
                if add:
                    self.referenced.add(add["path"])
        self.parsed = latest
        return latest

    def data_files(self) -> set[str]:
        return {
            p.relative_to(self.uri).as_posix()
            for p in self.uri.rglob("*")
            if p.is_file() and not p.relative_to(self.uri).as_posix().startswith("_delta_log/")
        }

    def log_debris(self) -> list[str]:
        """Files in `_delta_log` that are neither a commit, a checkpoint nor `_last_checkpoint`."""
        keep = re.compile(r"^(\d{20}\.(json|checkpoint\.parquet)|_last_checkpoint)$")
        return sorted(p.name for p in (self.uri / "_delta_log").iterdir() if not keep.match(p.name))


def _stopped(pid: int) -> None:
    """SIGSTOP, and wait until every thread has stopped (delta-rs writes from its runtime's threads)."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 5
    while not all(_state(task) in "tT" for task in Path(f"/proc/{pid}/task").iterdir()):
        if time.monotonic() > deadline:
            raise AssertionError(f"child {pid} did not stop")
        time.sleep(0.0005)


def _state(task: Path) -> str:
    with contextlib.suppress(FileNotFoundError):  # a thread that just exited
        return (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
    return "T"


def _phase(table: Table, journal: Path, base: int, debris: set[str]) -> str | None:
    """Where the (stopped) child is in its current append, or None between appends."""
    commits, pending = read_journal(journal)
    if pending is None:
        return None
    committed = base + len(commits)  # each returned append made exactly one version
    latest = table.refresh()
    if latest > committed:
        return "logged"
    if table.data_files() - table.referenced - debris:
        return "data"
    return "before"


def _hunt(pid: int, table: Table, journal: Path, base: int, debris: set[str], want: str) -> str:
    """Stop the child at random moments until it is in phase `want` (or time is up), then SIGKILL it there."""
    deadline = time.monotonic() + HUNT_S
    while True:
        time.sleep(random.uniform(0, 0.03))
        _stopped(pid)
        phase = _phase(table, journal, base, debris)
        if phase == want or (phase is not None and time.monotonic() > deadline):
            os.kill(pid, signal.SIGKILL)
            return phase
        os.kill(pid, signal.SIGCONT)


def _wait_for_commit(journal: Path, proc: Any) -> None:
    deadline = time.monotonic() + 60
    while not read_journal(journal)[0]:
        assert proc.is_alive(), f"the appender died (exit {proc.exitcode}) before its first commit"
        assert time.monotonic() < deadline, "no commit within 60 s"
        time.sleep(0.01)


def _batches(uri: Path, version: int | None = None) -> Counter[int]:
    rows = DeltaTable(str(uri), version=version).to_pyarrow_dataset().to_table(columns=["t", "frame_id"])
    ids = rows["frame_id"]
    assert pc.count_distinct(ids).as_py() == len(ids), "a frame id is there twice"
    return Counter(rows["t"].to_pylist())


@pytest.mark.slow
def test_sigkill_during_delta_commits_loses_nothing_committed(tmp_path: Path, children: Any) -> None:
    random.seed(8)
    target = lake.Lake.open(tmp_path / "lake")
    uri = Path(target.table_uri("frames"))
    # A checkpoint every 4 commits (the default is 100), so that some kills land while one is written too.
    target.table("frames").alter.set_table_properties({"delta.checkpointInterval": "4"})
    target.merge("acquisition_runs", [{"run_id": RUN, "microscope_id": RUN, "status": "running"}])  # SQL shows it
    table = Table(uri)
    committed: set[int] = set()  # batches whose append returned (journaled)
    committed_at: list[int] = []  # the version of each batch's commit, in order
    phases: list[str] = []
    debris: set[str] = set()
    seq = 0
    for r in range(ROUNDS):
        base = table.refresh()
        journal = tmp_path / f"journal-{r}.txt"
        proc = children(append_batches, str(target.root), str(journal), RUN, first_seq=seq, rows=ROWS, until=1e12)
        _wait_for_commit(journal, proc)
        phases.append(_hunt(proc.pid, table, journal, base, debris, PHASES[r % len(PHASES)]))
        proc.join(timeout=10)
        assert proc.exitcode == -signal.SIGKILL

        # the table opens at its newest version, and holds whole batches only: every journaled one, plus the
        # batch in flight exactly when its log entry was written before the kill
        commits, pending = read_journal(journal)
        committed |= {int(c[0]) for c in commits}
        assert pending is not None
        in_flight = int(pending)
        latest = table.refresh()
        found = _batches(uri)
        assert set(found.values()) == {ROWS}, f"a batch is partly visible: {found}"
        logged = phases[-1] == "logged"
        assert set(found) == committed | ({in_flight} if logged else set()), (phases[-1], sorted(found))
        assert latest == base + len(commits) + int(logged)
        if logged:
            committed.add(in_flight)
        # every version this round made reads, with one whole batch more than the one before
        for v in range(base + 1, latest + 1):
            assert sum(_batches(uri, v).values()) == ROWS * (len(committed_at) + 1), v
            committed_at.append(v)
        debris |= table.data_files() - table.referenced
        seq = in_flight + 1  # the next child appends on top, with fresh frame ids

    counts = Counter(phases)
    assert all(counts[p] >= 1 for p in PHASES), counts  # kills landed before, inside and after the commit
    assert debris, "no kill left an unreferenced data file: the data phase was never hit"

    # A commit is `NNN.json#1` created and written, then hard-linked to `NNN.json` (which fails if another
    # writer took that version) and unlinked. A kill between the write and the link leaves the staged file; that
    # window is microseconds wide, so rather than hope a random kill lands in it, leave exactly what it leaves:
    # a staged next version, half written. Readers ignore it and the next commit stages `#2` beside it.
    left_by_kills = table.log_debris()  # now and then a kill does land there (staged commits or checkpoints)
    staged = uri / "_delta_log" / f"{table.latest() + 1:020d}.json#1"
    staged.write_text('{"commitInfo":{"timestamp":1,"operation":"WRITE"}}\n{"add":{"path":"run_id=kill/half')
    assert staged.name in table.log_debris()

    # the lake's own path still appends (through the staged leftover's version), every version since the table
    # was created reads, and SQL (DuckDB's Delta reader) agrees
    target.append("frames", batch(RUN, seq, ROWS))
    committed.add(seq)
    latest = table.refresh()
    assert staged.with_name(staged.name.removesuffix("#1")).exists()
    for v in range(latest + 1):
        DeltaTable(str(uri), version=v).to_pyarrow_dataset().count_rows()
    assert set(_batches(uri)) == committed
    sql = "SELECT count(*) AS n, count(DISTINCT t) AS batches FROM frames"  # DuckDB's Delta reader agrees
    assert lake.query(target, sql).to_pylist() == [{"n": ROWS * len(committed), "batches": len(committed)}]
    assert any(p.name.endswith(".checkpoint.parquet") for p in (uri / "_delta_log").iterdir())

    # The lake's VACUUM leaves the table as it was; a full one (every file the log does not reference, not only
    # those since the last checkpoint) removes the debris, and nothing else.
    target.vacuum("frames", retention_hours=0)
    assert set(_batches(uri)) == committed
    removed = target.vacuum("frames", retention_hours=0, full=True)
    assert {Path(f).name for f in removed} == {Path(f).name for f in debris}
    assert set(_batches(uri)) == committed
    assert staged.exists()  # VACUUM leaves `_delta_log` alone; it stays harmless
    print(f"\nkills by phase: {dict(counts)}; unreferenced data files: {len(debris)}; in _delta_log: {left_by_kills}")
