"""Feedback over HTTP on a real server: binary frames in, the served detector's findings and the policy's
actions out; a twin acquisition steered through it; bad frames are 400s."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import useq

import lake
from acquisition import Agent, RemotePolicy, RunResult, detect_mitoses, open_twin
from acquisition.twin import TwinConfig, TwinSample
from models.imaging import load_detector, render_frames
from serving import FRAME_HEADER, NPY_MEDIA_TYPE
from serving._imaging import FALLBACK_NAME
from serving.client import RequestError
from tests.conftest import run_cli
from tests.serving.conftest import Server


def _plate(seed: int, size: int) -> TwinSample:
    return TwinSample(TwinConfig(seed=seed, time_scale=0, width=size, height=size))


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    """Real twin fields (uint16, 12-bit) with dividing cells in some."""
    return render_frames(_plate, twin_seed=11, n_frames=4, exposure_ms=20.0, power_pct=50.0).images


def _expected(server: Server, model: str, version: str, image: np.ndarray) -> list[tuple[float, float]]:
    if model == FALLBACK_NAME:
        found: Any = detect_mitoses(image)
    else:
        found = load_detector(server.lake, f"{model}:{version}")(image)
    return [(round(d.y, 3), round(d.x, 3)) for d in found]


def test_binary_frames_get_the_served_detectors_findings(server: Server, frames: np.ndarray) -> None:
    fb = server.feedback()
    found_any = False
    for i, image in enumerate(frames):
        d = fb.decide(image, {"run_id": "bin", "frame_id": i, "p": i, "bit_depth": 12, "light_power": 50.0})
        assert (d.run_id, d.frame_id, d.p) == ("bin", i, i)
        assert d.model_version
        assert d.server_ms > 0
        assert d.batch_size >= 1
        got = [(round(x.y, 3), round(x.x, 3)) for x in d.detections]
        assert got == _expected(server, d.model, d.model_version, image)
        if d.detections:
            found_any = True
            assert {"action": "revisit", "p": i} in [a.model_dump(include={"action", "p"}) for a in d.actions]
            assert d.event_score > 0
    assert found_any, "no dividing cell in four twin fields: the frames fixture is wrong"


def test_json_frames_answer_as_binary_ones(server: Server, frames: np.ndarray) -> None:
    image = frames[0]
    binary = server.feedback().decide(image, {"run_id": "a", "bit_depth": 12})
    payload = {
        "run_id": "b",
        "bit_depth": 12,
        "shape": list(image.shape),
        "dtype": "<u2",
        "image_b64": base64.b64encode(image.astype("<u2").tobytes()).decode(),
    }
    one = server.post("/decide_json", json=payload)  # acquisition's current remote format
    listed = server.post("/decide", json=[payload])
    assert one.status_code == listed.status_code == 200, one.text + listed.text
    for body in (one.json(), listed.json()[0]):
        assert body["detections"] == [d.model_dump() for d in binary.detections]
        assert body["model_version"] == binary.model_version
        assert "actions" in body


def test_the_policy_skips_empty_fields_and_lowers_bright_light(server: Server) -> None:
    fb = server.feedback()
    rng = np.random.default_rng(0)
    empty = rng.poisson(100, (256, 256)).astype(np.uint16)
    d = fb.decide(empty, {"run_id": "policy", "p": 3, "bit_depth": 12})
    assert [a.model_dump() for a in d.actions] == [{"action": "skip_position", "p": 3, "time_points": None}]
    bright = empty.copy()
    for y, x in ((20, 20), (100, 150), (180, 60)):  # nuclei near full scale (12-bit): over 0.5 % of the field
        bright[y : y + 30, x : x + 30] = 3900
    first = fb.decide(bright, {"run_id": "policy", "p": 1, "bit_depth": 12, "light_power": 80.0})
    assert {"action": "set_light_power", "power": 40.0} in [a.model_dump() for a in first.actions]
    again = fb.decide(bright, {"run_id": "policy", "p": 1, "bit_depth": 12, "light_power": 40.0})
    assert "set_light_power" not in [a.action for a in again.actions]  # once per run


def test_bad_frames_are_400s(server: Server) -> None:
    fb = server.feedback()
    good = np.zeros((64, 64), np.uint16)
    for bad, message in [
        (good.astype(np.float32), "dtype must be uint16 or uint8"),
        (np.zeros((2, 64, 64), np.uint16), "2-D plane"),
        (np.zeros((4, 64), np.uint16), "sides must be"),
    ]:
        with pytest.raises(RequestError, match=message):
            fb.decide(bad)
    npy = {"content-type": NPY_MEDIA_TYPE}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"content": b"PK\x03\x04 a zip", "headers": npy}, "not a .npy file"),
        ({"content": b"\x93NUMPY\x01\x00garbage", "headers": npy}, "not a readable .npy"),
        ({"content": _npy(good), "headers": {**npy, FRAME_HEADER: '{"p": -1}'}}, "X-Cellfarm-Frame header: p"),
        ({"content": _npy(good), "headers": {**npy, FRAME_HEADER: "not json"}}, "X-Cellfarm-Frame header"),
        ({"content": b"not json"}, "neither JSON nor"),
        ({"json": []}, "no frames"),
        ({"json": [{"shape": [64, 64], "dtype": "<u2", "image_b64": "AAAA"}]}, "holds 3 bytes"),
        ({"json": [{"shape": [64, 64], "dtype": "<f8", "image_b64": ""}]}, "dtype must be"),
        ({"json": [{"shape": [64, 64], "dtype": "<u2", "image_b64": "%%%"}]}, "not valid base64"),
    ]
    for kwargs, message in cases:
        resp = server.post("/decide", **kwargs)
        assert resp.status_code == 400, (kwargs, resp.text)
        assert message in resp.json()["error"], resp.text


def _npy(image: np.ndarray) -> bytes:
    from serving._frames import encode_npy

    return encode_npy(image)


# ----------------------------------------------------------------------- the loop: a twin steered remotely

PLAN = useq.MDASequence.model_validate(
    {
        "axis_order": "tpc",
        "stage_positions": [(0, 0, 0), (700, 0, 0), (1400, 0, 0)],
        "channels": [{"config": "GFP", "exposure": 20}],
        "time_plan": {"interval": 1.0, "loops": 8},
    }
)
N_PLAN = 24


def test_a_twin_acquisition_steered_by_the_served_model(server: Server, tmp_path: Any) -> None:
    target = lake.Lake.open(tmp_path / "lake")
    scope = open_twin(TwinConfig(seed=7, time_scale=600))  # a 30-minute mitosis lasts 3 s of the run
    try:
        result: RunResult = Agent(
            target, scope, microscope_id="twin-remote", policy=RemotePolicy(server.feedback())
        ).run(PLAN)
    finally:
        scope.close()
    assert result.status == "completed", result.error
    assert result.summary["policy_errors"] == 0
    decisions = lake.query(target, f"SELECT * FROM decisions WHERE run_id = '{result.run_id}'").to_pylist()
    served = server.client().status().models
    feedback = next(m for m in served if m.service == "Feedback")
    assert decisions
    assert all(
        d["model"] == feedback.name and d["model_version"] == feedback.version and d["latency_ms"] > 0
        for d in decisions
    )
    revisits = [d for d in decisions if d["action"] == "revisit"]
    assert revisits, "the served detector never fired on a twin with dividing cells"
    injected = result.summary["events_injected"]
    assert injected == sum(json.loads(d["params"])["repeats"] for d in revisits)
    frames = lake.query(target, f"SELECT count(*) AS n FROM frames WHERE run_id = '{result.run_id}'")
    assert frames["n"][0].as_py() == result.n_frames == N_PLAN + injected  # the actions were taken


def test_cellfarm_acquire_policy_remote_through_the_server(server: Server, tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(PLAN.model_dump_json())
    root = tmp_path / "lake"
    args = ["acquire", "--policy", "remote", "--policy-url", server.url, "--plan", str(plan), "--seed", "7"]
    proc = run_cli(*args, lake_dir=root, CELLFARM_API_TOKEN=server.token)
    assert proc.returncode == 0, proc.stderr[-3000:]
    feedback = next(m for m in server.client().status().models if m.service == "Feedback")
    assert f"--policy remote: {feedback.name}:{feedback.version} served at {server.url}" in " ".join(
        proc.stderr.split()
    )
    target = lake.Lake.open(root)
    run = lake.query(target, "SELECT policy, summary FROM acquisition_runs").to_pylist()
    assert len(run) == 1
    summary = json.loads(run[0]["summary"])
    assert summary["frames_decided"] > 0
    assert summary["policy_errors"] == 0
    decisions = lake.query(target, "SELECT DISTINCT model, model_version FROM decisions").to_pylist()
    assert decisions in ([], [{"model": feedback.name, "model_version": feedback.version}])

    # a wrong token or a dead server: one line, before anything runs
    bad = run_cli(*args, lake_dir=tmp_path / "bad", CELLFARM_API_TOKEN="wrong-token-" + "y" * 20)
    assert bad.returncode == 1
    assert "--policy-url" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert (
        not (tmp_path / "bad" / "tables").exists()
        or not lake.Lake.open(tmp_path / "bad").read("acquisition_runs").num_rows
    )
