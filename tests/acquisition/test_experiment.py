"""The smart-microscopy experiment on the digital twin: policies run, scored from the lake, and the claim tested."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

import lake
from acquisition import (
    ExperimentConfig,
    ExperimentResult,
    FrameView,
    MitosisPolicy,
    PolicyRun,
    Revisit,
    SmartPolicy,
    default_policies,
    run_policy_experiment,
)
from acquisition.twin import TwinConfig, TwinSample

# Two fields for an hour of twin time (600 sim s per wall s): plate 4 has 6 divisions there, ~7 s a policy.
CONFIG = ExperimentConfig(positions=2, duration_s=6.0, lead_in_s=1.0)
SEED = 4
EXPERIMENT = "test-exp"


class Experiment:
    def __init__(self, target: lake.Lake, result: ExperimentResult, progress: list[tuple[str, int, int | None]]):
        self.lake, self.result, self.progress = target, result, progress

    def rows(self) -> list[dict[str, Any]]:
        return lake.query(
            self.lake, f"SELECT * FROM policy_runs WHERE experiment_id = '{EXPERIMENT}' ORDER BY policy, seed"
        ).to_pylist()

    def run(self, policy: str) -> PolicyRun:
        return next(r for r in self.result.runs if r.policy == policy)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> Experiment:
    target = lake.Lake.open(tmp_path_factory.mktemp("experiment") / "lake")
    seen: list[tuple[str, int, int | None]] = []
    result = run_policy_experiment(
        target,
        smart=MitosisPolicy,  # the model deciding for the smart policy: the classical detector, in process
        seeds=(SEED,),
        config=CONFIG,
        experiment_id=EXPERIMENT,
        progress=lambda stage, done, total: seen.append((stage, done, total)),
    )
    return Experiment(target, result, seen)


def test_one_row_per_policy_and_seed(experiment: Experiment) -> None:
    rows = experiment.rows()
    assert [(r["policy"], r["seed"]) for r in rows] == [("fixed-fast", SEED), ("fixed-slow", SEED), ("smart", SEED)]
    assert all(r["status"] == "completed" for r in rows)
    runs = lake.query(experiment.lake, "SELECT run_id, policy FROM acquisition_runs").to_pylist()
    assert {r["run_id"] for r in rows} == {r["run_id"] for r in runs}  # every row traces to its run
    assert experiment.progress[-1] == ("policy experiment", 3, 3)
    assert any(stage == f"smart (seed {SEED})" for stage, _, _ in experiment.progress)


def test_policies_differ_as_designed(experiment: Experiment) -> None:
    fast, slow, smart = (experiment.run(p) for p in ("fixed-fast", "fixed-slow", "smart"))
    # the same plate, the same window of twin time: the same divisions to catch (light below harm changes none)
    assert fast.divisions == slow.divisions == smart.divisions > 0
    assert fast.divisions_captured >= slow.divisions_captured
    assert fast.divisions_captured > 0
    assert slow.divisions_captured == 0  # 2 s apart, a 3 s mitosis never gets 3 time points
    assert smart.light_dose < fast.light_dose
    assert slow.light_dose < smart.light_dose  # smart spent light on bursts, where it saw divisions
    assert smart.model == "mitosis-detector"
    assert smart.decisions > 0
    assert smart.decision_p50_ms is not None
    assert fast.model is None
    assert fast.decisions == 0
    assert fast.decision_p50_ms is None
    assert smart.frames > smart.time_points  # its bursts were z-stacks
    claim = experiment.result.verdict
    assert claim.capture_ratio == pytest.approx(smart.divisions_captured / fast.divisions_captured)
    assert claim.dose_ratio == pytest.approx(smart.light_dose / fast.light_dose)


def test_figures_agree_with_sql(experiment: Experiment) -> None:
    t = experiment.lake
    half = CONFIG.fov_um[0] / 2
    for row in experiment.rows():
        run = f"run_id = '{row['run_id']}'"
        caught = lake.query(
            t,
            f"""
            WITH tp AS (SELECT p, t, min(acquired_at) AS ts, min(x_um) AS x, min(y_um) AS y
                        FROM frames WHERE {run} GROUP BY p, t),
                 dv AS (SELECT * FROM twin_events WHERE {run} AND kind = 'division'
                        AND sim_time_s >= {row["window_start_sim_s"]} AND end_sim_time_s <= {row["window_end_sim_s"]}),
                 n AS (SELECT dv.cell_id, count(tp.t) AS n FROM dv LEFT JOIN tp
                       ON abs(tp.x - dv.x_um) <= {half} AND abs(tp.y - dv.y_um) <= {half}
                       AND tp.ts BETWEEN dv."at" AND dv.end_at GROUP BY dv.cell_id)
            SELECT count(*) AS divisions, count(*) FILTER (WHERE n >= {row["min_frames"]}) AS captured,
                   count(*) FILTER (WHERE n > 0) AS imaged FROM n
            """,
        ).to_pylist()[0]
        assert (row["divisions"], row["divisions_captured"], row["divisions_imaged"]) == (
            caught["divisions"],
            caught["captured"],
            caught["imaged"],
        )
        frames = lake.query(
            t,
            "SELECT count(*) AS n, sum(light_power * exposure_ms) AS dose, sum(shape[1] * shape[2] * 2) AS bytes, "
            f"count(DISTINCT (p, t)) AS points FROM frames WHERE {run}",
        ).to_pylist()[0]
        assert row["frames"] == frames["n"]
        assert row["time_points"] == frames["points"]
        assert row["light_dose"] == pytest.approx(frames["dose"])
        assert row["bytes_raw"] == frames["bytes"]
        assert 0 < row["bytes"] < 2 * row["bytes_raw"]
        harm = lake.query(
            t, f"SELECT count(DISTINCT cell_id) AS n FROM twin_events WHERE {run} AND kind IN ('arrest', 'death')"
        )
        assert row["cells_harmed"] == harm["n"][0].as_py()
        lat = lake.query(
            t,
            "SELECT count(*) AS n, quantile_cont(latency_ms, 0.5) AS p50, quantile_cont(latency_ms, 0.99) AS p99 "
            f"FROM decisions WHERE {run}",
        ).to_pylist()[0]
        assert row["decisions"] == lat["n"]
        if lat["n"]:
            assert row["decision_p50_ms"] == pytest.approx(lat["p50"])
            assert row["decision_p99_ms"] == pytest.approx(lat["p99"])


def test_plot_is_written(experiment: Experiment) -> None:
    path = experiment.result.plot
    assert path is not None
    assert path.suffix == ".png"
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000


def test_rerun_replaces_rows(experiment: Experiment) -> None:
    before = {r["policy"]: r["run_id"] for r in experiment.rows()}
    slow_only = {"fixed-slow": default_policies()["fixed-slow"]}
    short = CONFIG.model_copy(update={"duration_s": 1.0})
    run_policy_experiment(experiment.lake, policies=slow_only, seeds=(SEED,), config=short, experiment_id=EXPERIMENT)
    after = {r["policy"]: r["run_id"] for r in experiment.rows()}
    assert len(experiment.rows()) == 3  # no duplicate (experiment, policy, seed)
    assert after["fixed-slow"] != before["fixed-slow"]  # the re-run's row replaced the old one
    assert after["fixed-fast"] == before["fixed-fast"]
    assert after["smart"] == before["smart"]


def test_bad_input_leaves_the_lake_as_it_was(experiment: Experiment) -> None:
    version = experiment.lake.version("policy_runs")
    runs = experiment.lake.version("acquisition_runs")
    with pytest.raises(lake.InvalidInputError, match="bad twin settings"):
        run_policy_experiment(experiment.lake, config=CONFIG.model_copy(update={"twin": {"no_such": 1}}))
    with pytest.raises(lake.InvalidInputError, match="seeds"):
        run_policy_experiment(experiment.lake, seeds=(), config=CONFIG)
    with pytest.raises(lake.InvalidInputError, match="not both"):
        run_policy_experiment(experiment.lake, smart=MitosisPolicy, policies=default_policies(), config=CONFIG)
    with pytest.raises(lake.InvalidInputError, match="time_scale"):
        run_policy_experiment(experiment.lake, config=CONFIG.model_copy(update={"twin": {"time_scale": 0}}))
    assert experiment.lake.version("policy_runs") == version
    assert experiment.lake.version("acquisition_runs") == runs


def _frame(image: Any, p: int, frame_id: int) -> FrameView:
    return FrameView(
        run_id="r",
        frame_id=frame_id,
        t=0,
        p=p,
        c=0,
        z=1,
        channel="GFP",
        x_um=None,
        y_um=None,
        z_um=None,
        exposure_ms=50.0,
        light_power=10.0,
        acquired_at=datetime.now(UTC),
        image=image,
    )


def test_smart_policy_bursts_once_per_division() -> None:
    """A dividing cell earns its field one burst of z-stacks; the burst's own frames are not shown to the model."""
    sample = TwinSample(TwinConfig(seed=3, time_scale=0))
    x = next(x for x in range(0, 20_000, 700) if sample.cells_in_view(x, 0.0)["in_mitosis"].any())
    img, _ = sample.render(x_um=x, y_um=0.0, exposure_ms=50.0, power_pct=10.0)
    smart = SmartPolicy(MitosisPolicy(), burst=3, burst_interval_s=0.3, z_planes=3)
    assert smart.wants(_frame(img, 0, 0))
    (revisit,) = [a for a in smart.decide(_frame(img, 0, 0)) if isinstance(a, Revisit)]
    assert (revisit.p, revisit.repeats, revisit.interval_s, revisit.z_planes) == (0, 3, 0.3, 3)
    assert smart.name == "mitosis-detector"
    # the burst's 3 x 3 frames are hidden; other fields, and this one afterwards, are shown again
    assert [smart.wants(_frame(img, 0, k)) for k in range(1, 10)] == [False] * 9
    assert smart.wants(_frame(img, 1, 10))
    assert smart.wants(_frame(img, 0, 11))
