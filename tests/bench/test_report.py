"""bench/REPORT.md: a benchmark's run rewrites its own section only; a --quick run writes nothing there."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import bench.__main__ as bench_main
from bench import _common


def _result(metric: str, value: float) -> _common.Result:
    return _common.Result(metric, value, 1.0, value, ">= 1", value >= 1, "x/s", {"peer": "a peer", "repeats": 3})


def _payload(name: str, metric: str, value: float) -> dict[str, Any]:
    return {"benchmark": name, "date": "2026-01-01T00:00:00+00:00", "results": [asdict(_result(metric, value))]}


@pytest.fixture
def report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(bench_main, "REPORT", tmp_path / "REPORT.md")
    monkeypatch.setattr(_common, "RESULTS", tmp_path / "results")
    return tmp_path / "REPORT.md"


def test_a_run_rewrites_its_own_section_and_keeps_the_others(report: Path) -> None:
    bench_main.write_report({"sql": _payload("sql", "query", 2.0), "acquire": _payload("acquire", "frames", 0.5)})
    first = bench_main._sections(report.read_text())
    assert list(first) == ["sql", "acquire"]  # the benchmarks' own order, not the run's
    assert "| frames (x/s) | 0.500 | 1.000 (a peer) | 0.500 | >= 1 | no |" in first["acquire"]

    bench_main.write_report({"acquire": _payload("acquire", "frames", 1.5)})
    second = bench_main._sections(report.read_text())
    assert second["sql"] == first["sql"]
    assert "| frames (x/s) | 1.500 | 1.000 (a peer) | 1.500 | >= 1 | yes |" in second["acquire"]
    assert "0.500" not in second["acquire"]


def test_a_quick_run_leaves_the_report_alone(report: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = SimpleNamespace(run=lambda cfg, progress: [_result("query", 3.0 if cfg.quick else 4.0)])
    monkeypatch.setattr(bench_main, "MODULES", {"sql": fake})
    assert bench_main.main(["--only", "sql", "--quick"]) == 0
    assert not report.exists()
    assert (_common.RESULTS / "quick" / "sql.json").is_file()
    assert not (_common.RESULTS / "sql.json").exists()

    assert bench_main.main(["--only", "sql"]) == 0
    assert "| query (x/s) | 4.000 |" in bench_main._sections(report.read_text())["sql"]
    assert (_common.RESULTS / "sql.json").is_file()
