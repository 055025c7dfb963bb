"""The mitosis CNN in the model registry, and steering a twin acquisition as the `local` policy's detector.

One short training run (the session's `trained` fixture); the acquisition is real: the `cellfarm` command,
the digital twin, frames and decisions in a Delta lake.
"""

from __future__ import annotations

import io
import json
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from rich.console import Console

import lake
from acquisition import AgentSpec, DetectionLike, MitosisDetector, detect_mitoses, make_policy
from cellfarm._acquire import choose_detector
from models import ModelNotFoundError, ModelRecord, register, set_stage
from models.imaging import (
    detector_factory,
    heldout_metrics,
    load_detector,
    register_detector,
    render_frames,
    resolve_detector,
)
from models.imaging.__main__ import _promote
from models.imaging.__main__ import main as imaging_main
from tests.conftest import run_cli
from tests.models.imaging.conftest import HELD_OUT_SEED, Trained, twin_plate

# Dim light: 0.2 ms at the twin's 50 % is the dose of 2 ms at 5 %, ~5 photo-electrons per pixel of an
# interphase nucleus, where the classical detector finds nothing (tests/models/imaging/test_mitosis_cnn.py).
PLAN = {
    "axis_order": "tpc",
    "stage_positions": [{"x": 0.0, "y": 0.0}, {"x": 600.0, "y": 0.0}, {"x": 1200.0, "y": 0.0}],
    "channels": [{"config": "GFP", "exposure": 0.2}],
    "time_plan": {"interval": 0.5, "loops": 4},
}
N_PLAN = 12


class Registry:
    def __init__(self, target: lake.Lake, production: ModelRecord, candidate: ModelRecord) -> None:
        self.lake, self.production, self.candidate = target, production, candidate


@pytest.fixture(scope="module")
def registry(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> Registry:
    """Version 1 registered by `python -m models.imaging register` and promoted; version 2 a newer candidate."""
    target = lake.Lake.open(tmp_path_factory.mktemp("registry") / "lake")
    args = ["register", str(trained.artifact), "--lake", str(target.root)]
    assert imaging_main([*args, "--heldout-seeds", str(HELD_OUT_SEED), "--heldout-frames", "4"]) == 0
    production = set_stage(target, resolve_detector(target, "mitosis-cnn:1"), "production")
    candidate = register_detector(target, trained.detector)
    return Registry(target, production, candidate)


@pytest.fixture(autouse=True)
def _torch_threads() -> Iterator[None]:
    """Building an agent's detector sets torch's threads for the process (to 1): give the other tests theirs back."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _count(target: lake.Lake, table: str) -> int:
    try:
        return int(target.read(table).num_rows)
    except lake.TableNotFoundError:
        return 0


# ---------------------------------------------------------------------- the registry


def test_registration_records_the_twin_plates_and_held_out_scores(registry: Registry, trained: Trained) -> None:
    rec = resolve_detector(registry.lake, "mitosis-cnn:1")
    assert (rec.name, rec.version, rec.kind, rec.stage) == ("mitosis-cnn", 1, "mitosis-cnn", "production")
    assert rec.trained_on["source"] == "digital-twin"
    assert rec.trained_on["twin_seeds"] == list(range(1000, 1008))
    assert rec.trained_on["n_frames"] == 64
    assert rec.trained_on["trained_version"] == trained.detector.version
    assert rec.params["threshold"] == trained.detector.threshold
    m = rec.metrics
    assert m["heldout_twin_seeds"] == [HELD_OUT_SEED]
    for key in ("precision", "recall", "f1", "dim_precision", "dim_recall", "dim_f1", "baseline_dim_recall"):
        assert 0.0 <= m[key] <= 1.0, key
    assert m["dim_recall"] > m["baseline_dim_recall"]  # it sees mitoses in dim frames; the classical one does not
    assert Path(rec.artifact_uri) == Path(registry.lake.root) / "models" / "mitosis-cnn" / "1"
    with pytest.raises(ValueError, match="used in training"):
        heldout_metrics(trained.detector, twin_plate, seeds=[1003])


def test_loading_by_reference_gives_the_registry_version(registry: Registry, trained: Trained) -> None:
    assert load_detector(registry.lake).version == "2"  # NAME: the latest
    production = load_detector(registry.lake, "mitosis-cnn:production")
    assert production.version == "1"
    assert load_detector(registry.lake, "mitosis-cnn", stage="candidate").version == "2"
    frame = render_frames(twin_plate, twin_seed=HELD_OUT_SEED, n_frames=1).images[0]
    assert production(frame) == trained.detector(frame)
    found: list[DetectionLike] = list(production(frame))  # the acquisition's structural protocol
    assert found
    assert isinstance(production, MitosisDetector)


class _OtherModel:
    """Any `Registrable`: not a mitosis detector."""

    kind = "linear"
    params: dict[str, Any] = {}  # noqa: RUF012

    def save(self, path: Path) -> Path:
        path.mkdir(parents=True)
        (path / "model.json").write_text("{}")
        return path


def test_bad_references_fail_with_one_line(registry: Registry, tmp_path: Path) -> None:
    register(registry.lake, _OtherModel(), name="other", trained_on={})
    cases = {
        "mitosis-cnn:9": "has no version 9",
        "mitosis-cnn:archived": "has no archived version",
        "nope": "no model named 'nope'",
        "other": "'linear' model, not a mitosis detector",
        "bad ref!": "not a model reference",
    }
    for ref, message in cases.items():
        with pytest.raises(ModelNotFoundError, match=message) as info:
            resolve_detector(registry.lake, ref)
        assert "\n" not in str(info.value)
    with pytest.raises(ModelNotFoundError, match=r"no model named 'mitosis-cnn' \(have: none\)"):
        resolve_detector(lake.Lake.open(tmp_path / "empty"), "mitosis-cnn")


def test_promotion_gate_wants_dim_light_won_and_the_default_light_kept(registry: Registry, trained: Trained) -> None:
    good = {"f1": 0.96, "baseline_f1": 1.0, "dim_f1": 0.7, "baseline_dim_f1": 0.0}
    for bad in ({"f1": 0.9}, {"dim_f1": 0.0}, {"dim_f1": None}):
        metrics = {k: v for k, v in {**good, **bad}.items() if v is not None}
        rec = register_detector(registry.lake, trained.detector, name="gate", metrics=metrics)
        assert _promote(registry.lake, rec) == 1
        assert resolve_detector(registry.lake, "gate").stage == "candidate"
    rec = register_detector(registry.lake, trained.detector, name="gate", metrics=good)
    assert _promote(registry.lake, rec) == 0
    assert resolve_detector(registry.lake, "gate:production").version == 4


# ---------------------------------------------------------------------- handing it to an agent


def _console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=300), buf


def test_the_agent_gets_a_picklable_recipe_and_builds_the_detector(registry: Registry) -> None:
    console, said = _console()
    factory = choose_detector(registry.lake, "local", None, console)  # the default: production, not the latest
    assert factory is not None
    assert "detector mitosis-cnn:1 (production)" in said.getvalue()
    spec = AgentSpec(lake_root=str(registry.lake.root), microscope_id="twin", policy="local", detector=factory)
    clone = pickle.loads(pickle.dumps(spec))  # what a spawned agent process receives
    torch.set_num_threads(2)
    policy = make_policy(clone.policy, detector=clone.detector)
    assert policy is not None
    assert (policy.name, policy.version) == ("mitosis-cnn", "1")
    assert torch.get_num_threads() == 1  # an agent's inference keeps to one core
    chosen = choose_detector(registry.lake, "local", "mitosis-cnn:2", console)
    assert chosen is not None
    assert chosen().version == "2"
    assert choose_detector(registry.lake, "local", "classical", console) is None
    assert choose_detector(registry.lake, "none", None, console) is None
    with pytest.raises(lake.InvalidInputError, match="--detector is for --policy local"):
        choose_detector(registry.lake, "remote", "mitosis-cnn", console)


def test_a_lake_without_a_production_cnn_falls_back_to_the_classical_detector(tmp_path: Path) -> None:
    console, said = _console()
    assert choose_detector(lake.Lake.open(tmp_path / "lake"), "local", None, console) is None
    lines = said.getvalue().strip().splitlines()
    assert len(lines) == 1
    assert "the classical detector" in lines[0]
    with pytest.raises(ModelNotFoundError):  # named, it must exist
        choose_detector(lake.Lake.open(tmp_path / "lake"), "local", "mitosis-cnn", console)


# ---------------------------------------------------------------------- a twin run, end to end


def test_cli_local_policy_runs_the_production_cnn_in_dim_light(registry: Registry, tmp_path: Path) -> None:
    plan = tmp_path / "dim.yaml"
    plan.write_text(yaml.safe_dump(PLAN))
    target = registry.lake
    proc = run_cli("acquire", "--twin", "--plan", str(plan), "--policy", "local", lake_dir=Path(target.root))
    assert proc.returncode == 0, proc.stderr
    assert "detector mitosis-cnn:1 (production)" in proc.stderr
    run = lake.query(target, "SELECT * FROM acquisition_runs").to_pylist()[-1]
    assert run["status"] == "completed"
    assert run["policy"] == "mitosis-cnn"
    rid = run["run_id"]
    decisions = lake.query(target, f"SELECT * FROM decisions WHERE run_id = '{rid}'").to_pylist()
    assert {(d["model"], d["model_version"]) for d in decisions} == {("mitosis-cnn", "1")}
    revisits = [d for d in decisions if d["action"] == "revisit"]
    assert revisits, "the CNN never fired on dim frames of a twin with dividing cells"
    assert not [d for d in decisions if d["action"] == "skip_position"]  # dim is not empty
    summary = json.loads(run["summary"])
    assert summary["events_injected"] == sum(json.loads(d["params"])["repeats"] for d in revisits)
    assert run["n_frames"] == N_PLAN + summary["events_injected"]
    # the light was dim indeed: the classical detector finds (next to) nothing in these frames, the CNN does
    frames = lake.query(target, f"SELECT * FROM frames WHERE run_id = '{rid}' ORDER BY frame_id").to_pylist()
    planes = [
        np.asarray(lake.OmeZarrImage.open(f["image_uri"]).read_plane(f["t"], f["c"], f["z"])) for f in frames[:N_PLAN]
    ]
    classical = sum(bool(detect_mitoses(p)) for p in planes)  # ~1 frame in 200 at this light
    cnn = detector_factory(registry.production)()
    assert classical <= 4  # at most one position's time points
    assert sum(bool(cnn(p)) for p in planes) >= classical + 4


def test_cli_bad_detector_fails_with_one_line_before_anything_runs(registry: Registry) -> None:
    runs = _count(registry.lake, "acquisition_runs")
    proc = run_cli(
        "acquire", "--twin", "--policy", "local", "--detector", "mitosis-cnn:9", lake_dir=Path(registry.lake.root)
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error:")
    assert "has no version 9" in lines[0]
    assert _count(registry.lake, "acquisition_runs") == runs
