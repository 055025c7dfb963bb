"""The whole loop, `cellfarm demo --quick`, as a user runs it: twice on one lake, then the numbers that matter.

The lake starts as a copy of the session's Papalexi lake (the ingest is then the demo's no-op path; the ingest
itself is tested in tests/lake). The second run must reuse what the first made and add no duplicate row.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import lake
from tests.conftest import CELLFARM, PAPALEXI, SHARED, need

DEMO_TIMEOUT_S = 900


@dataclass(frozen=True)
class Demo:
    lake: lake.Lake
    home: Path
    first: subprocess.CompletedProcess[str]
    counts_after_first: dict[str, int]
    second: subprocess.CompletedProcess[str]


def _run(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CELLFARM_SHARED_DATA": str(SHARED), "COLUMNS": "160"}
    for var in ("CELLFARM_LAKE", "CELLFARM_API_TOKEN"):
        env.pop(var, None)
    proc = subprocess.run(
        [str(CELLFARM), "--lake", str(root), "demo", "--quick", "--port", "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=DEMO_TIMEOUT_S,
    )
    assert proc.returncode == 0, f"demo failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def _counts(target: lake.Lake) -> dict[str, int]:
    return {name: target.table(name).count() for name in lake.TABLES if _exists(target, name)}


def _exists(target: lake.Lake, name: str) -> bool:
    try:
        target.table(name)
    except lake.TableNotFoundError:
        return False
    return True


@pytest.fixture(scope="module")
def demo(papalexi_lake: lake.Lake, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    need(PAPALEXI)
    home = tmp_path_factory.mktemp("demo") / ".cellfarm"
    root = home / "lake"
    shutil.copytree(papalexi_lake.root, root)
    first = _run(root)
    target = lake.Lake.open(root)
    after_first = _counts(target)
    second = _run(root)
    return Demo(target, home, first, after_first, second)


def test_the_loop_promotes_a_model_that_beats_control_mean(demo: Demo) -> None:
    rows = lake.query(
        demo.lake,
        "SELECT name, version, stage, json_extract(metrics, '$.evaluation.gate.passed')::BOOLEAN AS passed, "
        "json_extract(metrics, '$.evaluation.gate.margin')::DOUBLE AS margin FROM models WHERE kind <> 'mitosis-cnn'",
    ).to_pylist()
    production = [r for r in rows if r["stage"] == "production"]
    assert len(production) == 1, rows
    assert production[0]["passed"] is True
    assert production[0]["margin"] > 0
    # the best margin among the evaluated ones won
    assert production[0]["margin"] == max(r["margin"] for r in rows if r["margin"] is not None)
    evaluations = lake.query(demo.lake, "SELECT count(*) AS n FROM evaluations").to_pylist()[0]["n"]
    assert evaluations > 0


def test_the_farm_was_steered_by_the_served_model(demo: Demo) -> None:
    served = lake.query(
        demo.lake,
        "SELECT r.microscope_id, r.run_id, r.status, count(DISTINCT f.frame_id) AS frames, "
        "count(d.frame_id) AS decisions, "
        "count(DISTINCT d.model || ':' || d.model_version) AS models, min(d.latency_ms) AS min_latency "
        "FROM acquisition_runs r JOIN frames f USING (run_id) LEFT JOIN decisions d USING (run_id, frame_id) "
        "WHERE r.microscope_id LIKE 'twin-farm-%' GROUP BY ALL ORDER BY 1",
    ).to_pylist()
    assert len(served) == 4, served  # 2 microscopes, twice
    assert {r["microscope_id"] for r in served} == {"twin-farm-0", "twin-farm-1"}
    for run in served:
        assert run["status"] == "completed"
        assert run["frames"] >= 18  # 3 time points x 3 positions x 2 channels, plus what feedback added
        assert run["decisions"] > 0
        assert run["models"] == 1
        assert run["min_latency"] > 0
    versions = lake.query(
        demo.lake,
        "SELECT DISTINCT d.model, d.model_version FROM decisions d JOIN acquisition_runs r USING (run_id) "
        "WHERE r.microscope_id LIKE 'twin-farm-%'",
    ).to_pylist()
    assert all(v["model"] and v["model_version"] for v in versions), versions


def test_the_policy_experiment_spares_light(demo: Demo) -> None:
    runs = {
        r["policy"]: r
        for r in lake.query(
            demo.lake, "SELECT policy, light_dose, frames FROM policy_runs WHERE experiment_id = 'demo'"
        ).to_pylist()
    }
    assert set(runs) == {"fixed-fast", "fixed-slow", "smart"}
    assert runs["smart"]["light_dose"] < runs["fixed-fast"]["light_dose"]
    assert runs["fixed-slow"]["light_dose"] < runs["fixed-fast"]["light_dose"]
    assert "claim" in demo.first.stderr


def test_the_report_stands_alone(demo: Demo) -> None:
    page = demo.home / "report" / "index.html"
    text = page.read_text()
    images = re.findall(r'<img src="([^"]+)"', text)
    assert len(images) >= 2  # at least an evaluation and the experiment's plot
    for src in images:
        png = page.parent / src
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", src
    for section in ("Perturbation models", "The farm", "smart-microscopy experiment", "make ui"):
        assert section in text
    assert str(page) in " ".join(demo.first.stderr.split())


def test_the_demo_prints_what_an_analyst_queries_next(demo: Demo) -> None:
    assert "atlas papalexi2021: unchanged (20,729 cells x 299 genes)" in demo.first.stderr
    assert "IFNGR1" in demo.first.stdout  # cells per perturbation
    assert "mitosis-cnn" in demo.first.stdout or "fallback" in demo.first.stdout  # the farm's served model
    assert "fixed-fast" in demo.first.stdout  # the experiment's table


def test_a_second_run_reuses_and_adds_no_duplicate(demo: Demo) -> None:
    after = _counts(demo.lake)
    for table in ("datasets", "cells", "dataset_genes", "hpa_subcellular", "models", "evaluations", "policy_runs"):
        assert after[table] == demo.counts_after_first[table], table
    assert "reusing" in demo.second.stderr
    # every table's keys stay unique (the farm's new runs are new rows, not copies)
    for name, spec in lake.TABLES.items():
        if spec.keys and name in after:
            keys = ", ".join(spec.keys)
            n, k = (
                lake.query(demo.lake, f"SELECT count(*) AS n, count(DISTINCT ({keys})) AS k FROM {name}")
                .to_pylist()[0]
                .values()
            )
            assert n == k, name
    # the BentoML servers were stopped: nothing listens on the port they used
    assert "stopped the BentoML server" in demo.second.stderr
