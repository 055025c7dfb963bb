"""Feedback on the digital twin: the policy's actions change what is acquired, and the twin scores them."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest
import useq

import lake
from acquisition import Agent, FrameView, MitosisPolicy, RunResult, open_twin
from acquisition._remote import RemotePolicy
from acquisition.twin import TwinConfig

PLAN = useq.MDASequence.model_validate(
    {
        "axis_order": "tpc",
        "stage_positions": [(0, 0, 0), (700, 0, 0), (1400, 0, 0)],
        "channels": [{"config": "GFP", "exposure": 20}],
        "time_plan": {"interval": 1.0, "loops": 8},
    }
)
N_PLAN = 24
# 600 sim seconds per wall second: a 30-minute mitosis lasts 3 s, so an 8 s run sees several
TWIN = TwinConfig(seed=7, time_scale=600)


def _run(target: lake.Lake, policy: Any) -> RunResult:
    scope = open_twin(TWIN)
    try:
        return Agent(target, scope, microscope_id="twin-0", policy=policy).run(PLAN)
    finally:
        scope.close()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[lake.Lake, RunResult, RunResult]:
    target = lake.Lake.open(tmp_path_factory.mktemp("loop") / "lake")
    return target, _run(target, None), _run(target, MitosisPolicy())


def test_local_policy_changes_what_is_acquired(runs: tuple[lake.Lake, RunResult, RunResult]) -> None:
    target, plain, local = runs
    assert plain.status == local.status == "completed"
    assert plain.n_frames == N_PLAN
    assert (
        lake.query(target, f"SELECT count(*) AS n FROM decisions WHERE run_id = '{plain.run_id}'")["n"][0].as_py() == 0
    )
    decisions = lake.query(
        target,
        "SELECT d.*, f.p FROM decisions d JOIN frames f USING (run_id, frame_id) "
        f"WHERE run_id = '{local.run_id}' ORDER BY decided_at",
    ).to_pylist()
    revisits = [d for d in decisions if d["action"] == "revisit"]
    assert revisits, "the detector never fired on a twin with dividing cells"
    assert all(d["model"] == "mitosis-detector" and d["latency_ms"] > 0 for d in decisions)
    assert all(d["late_frames"] >= 0 for d in decisions)
    injected = local.summary["events_injected"]
    assert injected == sum(json.loads(d["params"])["repeats"] for d in revisits)
    assert local.n_frames == N_PLAN + injected  # one channel: one frame per inserted time point
    # each revisit added time points to the position it was about, after the decision
    for d in revisits:
        later = lake.query(
            target,
            f"SELECT count(*) AS n FROM frames WHERE run_id = '{local.run_id}' AND p = {d['p']} "
            f"AND acquired_at > '{d['decided_at'].isoformat()}'::TIMESTAMPTZ",
        )["n"][0].as_py()
        assert later >= json.loads(d["params"])["repeats"]
    per_position = lake.query(
        target, f"SELECT p, max(t) + 1 AS n_t FROM frames WHERE run_id = '{local.run_id}' GROUP BY p ORDER BY p"
    )
    assert sum(per_position["n_t"].to_pylist()) == N_PLAN + injected  # the images grew along t


def test_twin_ground_truth_scores_the_policy(runs: tuple[lake.Lake, RunResult, RunResult]) -> None:
    target, plain, local = runs
    truth = lake.query(
        target, "SELECT run_id, count(*) AS n FROM twin_events WHERE kind = 'division' GROUP BY 1 ORDER BY 1"
    )
    assert truth.num_rows == 2
    assert min(truth["n"].to_pylist()) >= 3
    a, b = plain.summary["twin"], local.summary["twin"]
    # more frames of the rare event, at the price of more light
    assert b["frames_during_mitosis"] > a["frames_during_mitosis"]
    assert b["health_mean_dose"] > a["health_mean_dose"]
    imaged = lake.query(target, f"SELECT count(*) AS n FROM twin_events WHERE run_id = '{local.run_id}' AND imaged")[
        "n"
    ][0].as_py()
    assert imaged == b["divisions_imaged"] > 0


class _PolicyServer(BaseHTTPRequestHandler):
    policy = MitosisPolicy()

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        image = np.frombuffer(base64.b64decode(body["image_b64"]), dtype=body["dtype"]).reshape(body["shape"])
        frame = FrameView(
            **{k: body[k] for k in ("run_id", "frame_id", "t", "p", "c", "z", "channel", "x_um", "y_um", "z_um")},
            exposure_ms=body["exposure_ms"],
            light_power=body["light_power"],
            acquired_at=datetime.fromisoformat(body["acquired_at"]),
            image=image,
            bit_depth=body["bit_depth"],
        )
        actions = [a.model_dump() for a in self.policy.decide(frame)]
        data = json.dumps({"actions": actions, "model_version": "test-server-1"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def policy_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _PolicyServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/decide"
    server.shutdown()


def test_remote_policy_over_http(tmp_lake: lake.Lake, policy_url: str) -> None:
    result = _run(tmp_lake, RemotePolicy(policy_url))
    assert result.status == "completed"
    assert result.summary["frames_decided"] > 0
    rows = lake.query(tmp_lake, "SELECT DISTINCT model, model_version FROM decisions").to_pylist()
    assert rows == [{"model": "remote", "model_version": "test-server-1"}]
    assert result.n_frames > N_PLAN
