"""Feedback on the digital twin: the policy's actions change what is acquired, and the twin scores them."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
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
    # the schedule tells the plan's frames from the policy's, and both runs kept the plan's pace: every planned
    # event started well within its interval of 1 s (without a policy, the engine's look-ahead once held the last
    # position of each time point back by a whole interval)
    for run, added in ((plain, 0), (local, injected)):
        schedule = run.summary["schedule"]
        assert (sum(schedule["planned"]), sum(schedule["injected"])) == (N_PLAN, added)
        assert 0 < max(schedule["late_max_ms"]) < 500, schedule
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


@dataclass(frozen=True)
class _Reply:
    model: str
    model_version: str
    actions: list[Any]


class _Shed(Exception):
    status = 503  # what `serving.client` raises when the server sheds a frame


class _InProcessFeedback:
    """The served model's answers without the network: what `RemotePolicy` does with them (the HTTP path is
    tests/serving's, against `cellfarm serve`). Every `shed_every`-th frame is shed, as an overloaded server does."""

    def __init__(self, shed_every: int = 0) -> None:
        self.policy = MitosisPolicy()
        self.shed_every = shed_every
        self.calls = 0

    def decide(self, image: np.ndarray, meta: Mapping[str, Any]) -> _Reply:
        self.calls += 1
        if self.shed_every and self.calls % self.shed_every == 0:
            raise _Shed("503: shed")
        return _Reply("mitosis-served", "7", self.policy.decide(FrameView(image=image, **meta)))


def test_remote_policy_reports_the_serving_model_and_survives_shedding(tmp_lake: lake.Lake) -> None:
    client = _InProcessFeedback(shed_every=3)
    policy = RemotePolicy(client)
    result = _run(tmp_lake, policy)
    assert result.status == "completed"
    assert result.summary["frames_decided"] > 0
    assert result.summary["policy_errors"] == 0  # a shed frame is no feedback, not an error
    assert policy.shed == client.calls // 3 > 0
    rows = lake.query(tmp_lake, "SELECT DISTINCT model, model_version FROM decisions").to_pylist()
    assert rows == [{"model": "mitosis-served", "model_version": "7"}]
    assert result.n_frames > N_PLAN
