"""`cellfarm evaluate` and `promote`: cell-eval on held-out Papalexi perturbations on a local Ray, and the gate."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow.compute as pc
import pytest

import lake
from models import (
    BASELINES,
    GATE_BASELINE,
    VCC_METRICS,
    ArtifactError,
    InvalidTrainingDataError,
    ModelNotFoundError,
    evaluate,
    resolve,
    train,
)
from tests.conftest import run_cli
from tests.models.conftest import HOLDOUT


@pytest.fixture(scope="module")
def trained(model_lake: lake.Lake) -> lake.Lake:
    for kind in ("control-mean", "perturbation-mean"):
        train(model_lake, kind, "papalexi2021", holdout=HOLDOUT)
    return model_lake


def test_evaluate_writes_metrics_rows_and_plot(trained: lake.Lake, tmp_path: Path) -> None:
    before = trained.version("evaluations")
    # run from a folder holding a user's `models/` and `lake/` folders: Ray puts the driver's working directory on
    # its workers' sys.path, where such folders once shadowed our packages and every Ray task failed to import
    for name in ("models", "lake"):
        (tmp_path / name).mkdir()
    proc = run_cli("evaluate", "perturbation-mean", lake_dir=Path(trained.root), check=True, cwd=tmp_path)
    assert "perturbation-mean:1" in proc.stdout
    assert "DES" in proc.stdout
    assert "gate: perturbation-mean:1 beats control-mean" in " ".join(proc.stderr.split()), proc.stderr

    rec = resolve(trained, "perturbation-mean:1")
    ev = rec.metrics["evaluation"]
    assert ev["perturbations"] == sorted(HOLDOUT)
    assert ev["split"] == "perturbation"
    assert set(ev["baselines"]) == set(BASELINES)
    assert set(VCC_METRICS) | {"pearson_delta"} <= set(ev["summary"])
    # the model is a perturbation-mean fit on the same split: identical to that baseline, ahead of control-mean
    assert ev["baselines"]["perturbation-mean"]["margin"]["mean"] == 0
    assert ev["normalized_score"] == 0
    gate = ev["baselines"][GATE_BASELINE]
    assert gate["summary"]["overlap_at_N"] == 0  # no effect predicted: no DE gene found
    assert ev["summary"]["overlap_at_N"] > 0.05
    assert ev["gate"] == {"baseline": GATE_BASELINE, "margin": gate["margin"]["mean"], "passed": True}
    assert ev["gate"]["margin"] > 0

    rows = trained.read("evaluations", filter=pc.field("name") == "perturbation-mean")
    assert trained.version("evaluations") == before + 1  # one commit
    n_metrics = len({m for m in rows["metric"].to_pylist()})
    assert rows.num_rows == len(HOLDOUT) * n_metrics * len(BASELINES)
    assert set(rows["perturbation"].to_pylist()) == set(HOLDOUT)
    # per-perturbation values agree with the summary's mean
    des = rows.filter((pc.field("metric") == "overlap_at_N") & (pc.field("baseline") == "control-mean"))
    assert math.isclose(pc.mean(des["value"]).as_py(), ev["summary"]["overlap_at_N"], rel_tol=1e-9)
    assert pc.max(des["baseline_value"]).as_py() == 0

    plot = Path(ev["plot"])
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot.stat().st_size > 10_000

    # one row per (perturbation, metric, baseline): the keys analysts join on are unique
    sql = run_cli(
        "sql",
        "select count(*) n, count(distinct (perturbation, metric, baseline)) k from evaluations "
        "where name = 'perturbation-mean'",
        "--format",
        "json",
        lake_dir=Path(trained.root),
        check=True,
    )
    assert json.loads(sql.stdout) == [{"n": rows.num_rows, "k": rows.num_rows}]


def test_promote_follows_the_gate(trained: lake.Lake) -> None:
    root = Path(trained.root)
    # not evaluated yet: refused, nothing changes
    before = trained.version("models")
    refused = run_cli("promote", "control-mean:1", lake_dir=root)
    assert refused.returncode == 1
    assert "has not been evaluated" in refused.stderr
    # control-mean against itself: a zero margin is not a win
    evaluate(trained, "control-mean:1", baselines=["control-mean"])
    before = trained.version("models")
    refused = run_cli("promote", "control-mean:1", lake_dir=root)
    assert refused.returncode == 1, refused.stderr
    line = " ".join(refused.stderr.split())
    assert "refused: control-mean:1 does not beat control-mean (margin +0.000)" in line, line
    assert "Traceback" not in refused.stderr
    assert trained.version("models") == before
    assert resolve(trained, "control-mean:1").stage == "candidate"

    if "evaluation" not in resolve(trained, "perturbation-mean:1").metrics:
        evaluate(trained, "perturbation-mean:1")
    ok = run_cli("promote", "perturbation-mean:1", lake_dir=root, check=True)
    assert ok.stdout.strip() == "perturbation-mean:1"
    assert "beats control-mean (margin +" in " ".join(ok.stderr.split())
    assert resolve(trained, "perturbation-mean", stage="production").version == 1


def test_evaluate_bad_input_leaves_the_lake_as_it_was(trained: lake.Lake) -> None:
    versions = {t: trained.version(t) for t in ("models", "evaluations")}
    bad = run_cli("evaluate", "nope", lake_dir=Path(trained.root))
    assert bad.returncode == 1, bad.stderr
    assert "no model named 'nope'" in bad.stderr
    assert "Traceback" not in bad.stderr
    with pytest.raises(ModelNotFoundError, match="has no version 9"):
        evaluate(trained, "perturbation-mean:9")
    with pytest.raises(InvalidTrainingDataError, match=r"unknown baseline\(s\) wavenet"):
        evaluate(trained, "perturbation-mean", baselines=["wavenet"])
    # a corrupt artifact: a clear error, and no rows
    rec = train(trained, "perturbation-mean", "papalexi2021", holdout=HOLDOUT, name="corrupt")
    versions["models"] = trained.version("models")
    arrays = Path(rec.artifact_uri) / "arrays.npz"
    arrays.write_bytes(arrays.read_bytes()[:100])
    with pytest.raises(ArtifactError, match="cannot load model artifact"):
        evaluate(trained, rec.ref)
    assert {t: trained.version(t) for t in versions} == versions
