"""The smart-microscopy experiment: acquisition policies on the digital twin, scored against its ground truth.

Every policy images the same positions of the same seeded plates for the same simulated time, one run each
(one after another, so that no run steals the others' CPU while the twin's clock runs). Each run is scored
from what the lake holds (`frames`, `decisions`, `twin_events`) and becomes a `policy_runs` row; the
experiment's verdict tests the claim that the smart policy catches nearly every division the fast one
catches (`CLAIM_CAPTURE`) at a fraction of its light (`CLAIM_DOSE`).
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pydantic
import useq
from pydantic import BaseModel, ConfigDict, Field

import lake
from acquisition._agent import Agent
from acquisition._microscope import LIGHT_DEVICE, LIGHT_PROPERTY, open_twin
from acquisition._policies import FIXED_FAST, SMART, PolicyArm, PolicyFactory, default_policies
from acquisition._score import score_divisions

if TYPE_CHECKING:
    from acquisition.twin import TwinConfig

__all__ = [
    "CLAIM_CAPTURE",
    "CLAIM_DOSE",
    "TWIN_DEFAULTS",
    "ClaimVerdict",
    "ExperimentConfig",
    "ExperimentResult",
    "PolicyRun",
    "PolicySummary",
    "experiment_plan",
    "run_policy_experiment",
    "score_run",
]

CLAIM_CAPTURE = 0.9  # smart catches at least this fraction of what fixed-fast catches ...
CLAIM_DOSE = 0.3  # ... with at most this fraction of its light dose
MICROSCOPE_ID = "twin-policy"

log = logging.getLogger(__name__)


# What the experiment's twin changes from `TwinConfig`'s defaults: 10 sim minutes per wall second, and a camera
# that takes its exposure time as a real one does (frames come no faster than the model can look at them).
TWIN_DEFAULTS: dict[str, Any] = {"time_scale": 600.0, "realtime_exposure": True}


class ExperimentConfig(BaseModel):
    """The stage every policy plays on: positions, simulated time, exposure, the twin and the scoring rule.

    Times are wall seconds; the twin turns them into simulated time (`time_scale` sim seconds per wall second,
    600 by default: a 30-minute mitosis lasts 3 s, a 15 s run covers 2.5 simulated hours). Each run images for
    `lead_in_s + duration_s`; the divisions scored are those of the window from `lead_in_s` to the end on the
    twin's clock, which starts when the twin is made: the same window for every policy, whatever each run's
    start-up took.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    positions: int = Field(default=4, ge=1, le=64, description="fields in a row, `spacing_um` apart")
    spacing_um: float = Field(default=700.0, gt=0)
    duration_s: float = Field(default=15.0, gt=0, le=3600, description="wall seconds of the scored window")
    lead_in_s: float = Field(default=1.5, ge=0, le=60, description="wall seconds of imaging before the window")
    channel: str = "GFP"  # the nuclear marker: what divisions are seen in
    exposure_ms: float = Field(default=50.0, gt=0)
    min_frames: int = Field(default=3, ge=1, description="time points during mitosis that count as captured")
    twin: dict[str, Any] = Field(
        default_factory=dict, description="TwinConfig fields besides the seed, over `TWIN_DEFAULTS`"
    )

    @property
    def fov_um(self) -> tuple[float, float]:
        return self.twin_config(0).fov_um

    @property
    def window_sim_s(self) -> tuple[float, float]:
        """The scored window on the twin's clock (sim seconds since the twin was made)."""
        scale = self.twin_config(0).time_scale
        return self.lead_in_s * scale, (self.lead_in_s + self.duration_s) * scale

    @property
    def twin_settings(self) -> dict[str, Any]:
        return {**TWIN_DEFAULTS, **self.twin}

    def twin_config(self, seed: int) -> TwinConfig:
        from acquisition.twin import TwinConfig

        return TwinConfig(seed=seed, **self.twin_settings)


class PolicyRun(BaseModel):
    """One policy on one seed: a `policy_runs` row."""

    experiment_id: str
    policy: str
    seed: int
    run_id: str
    status: str
    model: str | None
    model_version: str | None
    settings: str
    window_start_sim_s: float
    window_end_sim_s: float
    divisions: int
    divisions_imaged: int
    divisions_captured: int
    min_frames: int
    capture_fraction: float | None
    light_dose: float
    frames: int
    time_points: int
    bytes: int | None
    bytes_raw: int
    cells_harmed: int
    cells_dead: int
    mean_cell_dose: float | None
    max_cell_dose: float | None
    decisions: int
    decision_p50_ms: float | None
    decision_p99_ms: float | None
    started_at: datetime | None
    ended_at: datetime | None
    recorded_at: datetime


class PolicySummary(BaseModel):
    """One policy over every seed."""

    policy: str
    runs: int
    divisions: int
    divisions_captured: int
    capture_fraction: float | None
    light_dose: float
    cells_harmed: int
    max_cell_dose: float | None
    frames: int
    bytes: int | None
    bytes_raw: int
    decision_p50_ms: float | None
    decision_p99_ms: float | None


class ClaimVerdict(BaseModel):
    """Smart against fixed-fast, divisions captured and light dose summed over the seeds both ran."""

    smart: str = SMART
    reference: str = FIXED_FAST
    capture_ratio: float | None  # smart's captured divisions / the reference's
    dose_ratio: float | None  # smart's light dose / the reference's
    min_capture_ratio: float = CLAIM_CAPTURE
    max_dose_ratio: float = CLAIM_DOSE
    holds: bool | None  # None: the experiment did not run both policies
    per_seed: dict[int, tuple[float | None, float | None]] = Field(default_factory=dict)

    def __str__(self) -> str:
        if self.holds is None:
            return f"claim not tested: the experiment needs both {self.smart!r} and {self.reference!r}"
        word = "HOLDS" if self.holds else "DOES NOT HOLD"
        return (
            f"claim {word}: {self.smart} captured {_pct(self.capture_ratio)} of the divisions {self.reference} "
            f"captured (needs >= {self.min_capture_ratio:.0%}) with {_pct(self.dose_ratio)} of its light dose "
            f"(needs <= {self.max_dose_ratio:.0%})"
        )


class ExperimentResult(BaseModel):
    experiment_id: str
    config: ExperimentConfig
    runs: list[PolicyRun]
    summaries: list[PolicySummary]
    verdict: ClaimVerdict  # str() of it: the verdict in one line
    plot: Path | None

    def table(self) -> pa.Table:
        """The per-policy figures, one row per policy (what a report prints)."""
        return pa.Table.from_pylist([s.model_dump() for s in self.summaries])


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0%}"


# -------------------------------------------------------------------------------------------------- running


def experiment_plan(config: ExperimentConfig, interval_s: float) -> useq.MDASequence:
    """The positions and channel of `config`, every `interval_s` from the start through the window's end."""
    loops = math.ceil((config.lead_in_s + config.duration_s) / interval_s - 1e-9) + 1
    return useq.MDASequence.model_validate(
        {
            "axis_order": "tpcz",
            "stage_positions": [(k * config.spacing_um, 0.0, 0.0) for k in range(config.positions)],
            "channels": [{"config": config.channel, "exposure": config.exposure_ms}],
            "time_plan": {"interval": interval_s, "loops": loops},
        }
    )


def run_policy_experiment(
    target: lake.Lake,
    *,
    smart: PolicyFactory | None = None,
    policies: Mapping[str, PolicyArm] | None = None,
    seeds: Sequence[int] = (0, 1),
    config: ExperimentConfig | None = None,
    experiment_id: str | None = None,
    plots_dir: str | Path | None = None,
    progress: lake.Progress = lake.null_progress,
) -> ExperimentResult:
    """Run every policy on every seed of the twin, score the runs into `policy_runs`, plot dose vs captures.

    The policies are `default_policies(model=smart)`: fixed-fast, fixed-slow, and smart with `smart` deciding
    (a factory of the model's policy, e.g. ``lambda: RemotePolicy(client)`` for the served model; None: the
    in-process `MitosisPolicy` with the classical detector), unless `policies` names others. Runs one after
    another, about `lead_in_s + duration_s` of wall time each. Re-running an `experiment_id` replaces its rows.
    The plot is `<plots_dir>/policy_experiment_<experiment_id>.png` (default `<lake>/reports/policy_experiments`).

    >>> result = run_policy_experiment(lake.Lake.open(), seeds=(0,))
    >>> print(result.verdict)
    """
    if smart is not None and policies is not None:
        raise lake.InvalidInputError("give the smart policy's model as `smart` or inside `policies`, not both")
    arms = dict(policies) if policies is not None else dict(default_policies(smart))
    config = config or ExperimentConfig()
    seeds = list(dict.fromkeys(int(s) for s in seeds))
    if not arms:
        raise lake.InvalidInputError("the policy experiment needs at least one policy")
    if not seeds or any(s < 0 for s in seeds):
        raise lake.InvalidInputError(f"the policy experiment needs non-negative seeds, got {list(seeds)}")
    for seed in seeds:  # a bad twin setting fails here, before any run
        try:
            twin = config.twin_config(seed)
        except (pydantic.ValidationError, TypeError) as e:
            raise lake.InvalidInputError(f"bad twin settings {config.twin}: {_first_error(e)}") from None
        if twin.time_scale <= 0:
            raise lake.InvalidInputError("the policy experiment needs a running twin clock (time_scale > 0)")
    experiment_id = experiment_id or f"policy-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    runs: list[PolicyRun] = []
    total = len(arms) * len(seeds)
    progress("policy experiment", 0, total)
    for seed in seeds:
        for name, arm in arms.items():
            run = _run_one(target, experiment_id, name, arm, seed, config, progress)
            target.merge("policy_runs", [run.model_dump()], mode="upsert")
            runs.append(run)
            progress("policy experiment", len(runs), total)
    summaries = [summarize(name, [r for r in runs if r.policy == name]) for name in arms]
    claim = verdict(runs)
    folder = Path(plots_dir) if plots_dir is not None else lake.reports_dir(target.root) / "policy_experiments"
    path = plot_experiment(runs, claim, folder / f"policy_experiment_{experiment_id}.png")
    return ExperimentResult(
        experiment_id=experiment_id, config=config, runs=runs, summaries=summaries, verdict=claim, plot=path
    )


def _first_error(e: Exception) -> str:
    if isinstance(e, pydantic.ValidationError):
        err = e.errors()[0]
        return f"{'.'.join(str(p) for p in err['loc']) or 'twin'}: {err['msg']}"
    return str(e).splitlines()[0]


def _run_one(
    target: lake.Lake,
    experiment_id: str,
    name: str,
    arm: PolicyArm,
    seed: int,
    config: ExperimentConfig,
    progress: lake.Progress,
) -> PolicyRun:
    plan = experiment_plan(config, arm.interval_s)
    expected = None if arm.feedback is not None else sum(1 for _ in plan)
    stage = f"{name} (seed {seed})"
    policy = arm.feedback() if arm.feedback is not None else None
    window = config.window_sim_s
    scope = open_twin(config.twin_config(seed))
    sample = scope.sample
    assert sample is not None
    first_sim_s: list[float] = []

    def on_frame(i: int) -> None:
        if not first_sim_s:
            first_sim_s.append(sample.now())
        progress(stage, i + 1, expected)

    try:
        scope.core.setProperty(LIGHT_DEVICE, LIGHT_PROPERTY, arm.light_power)
        agent = Agent(target, scope, microscope_id=MICROSCOPE_ID, policy=policy, on_frame=on_frame)
        result = agent.run(plan)
        health = [sample.health(p.x or 0.0, p.y or 0.0) for p in plan.stage_positions]
    finally:
        scope.close()
    if first_sim_s and first_sim_s[0] > window[0]:
        log.warning(
            "%s (seed %d): the first frame came %.0f sim s into the scored window (lead_in_s too short for this "
            "machine); divisions at its start are under-sampled",
            name,
            seed,
            first_sim_s[0] - window[0],
        )
    n_cells = sum(h["n_cells"] for h in health)
    settings = {
        "policy": arm.settings(),
        "positions": config.positions,
        "spacing_um": config.spacing_um,
        "duration_s": config.duration_s,
        "lead_in_s": config.lead_in_s,
        "channel": config.channel,
        "exposure_ms": config.exposure_ms,
        "twin": config.twin_settings,
    }
    scores = score_run(target, result.run_id, fov_um=config.fov_um, window_sim_s=window, min_frames=config.min_frames)
    run_row = target.read("acquisition_runs", filter=pc.field("run_id") == result.run_id).to_pylist()
    return PolicyRun(
        experiment_id=experiment_id,
        policy=name,
        seed=seed,
        run_id=result.run_id,
        status=result.status,
        settings=json.dumps(settings, sort_keys=True),
        window_start_sim_s=window[0],
        window_end_sim_s=window[1],
        mean_cell_dose=sum(h["mean_dose"] * h["n_cells"] for h in health) / n_cells if n_cells else None,
        max_cell_dose=max((h["max_dose"] for h in health), default=None),
        min_frames=config.min_frames,
        started_at=run_row[0]["started_at"] if run_row else None,
        ended_at=run_row[0]["ended_at"] if run_row else None,
        recorded_at=datetime.now(UTC),
        **scores,
    )


# -------------------------------------------------------------------------------------------------- scoring


def _time_points(frames: pa.Table) -> pa.Table:
    """One row per (position, time index): a z-stack, or several channels, make one time point, at its first plane."""
    if frames.num_rows == 0:
        return frames.select(["p", "t", "x_um", "y_um", "acquired_at"])
    grouped = frames.group_by(["p", "t"]).aggregate([("acquired_at", "min"), ("x_um", "min"), ("y_um", "min")])
    return grouped.rename_columns({"acquired_at_min": "acquired_at", "x_um_min": "x_um", "y_um_min": "y_um"})


def _stored_bytes(image_uris: list[str]) -> int | None:
    """Bytes on storage under the run's images (compressed planes and their pyramid); None when unreadable."""
    total = 0
    for uri in image_uris:
        fs, path = lake.filesystem(uri)  # the lake's own store settings (an s3 endpoint, its keys)
        try:
            total += int(fs.du(path, total=True))
        except FileNotFoundError:
            continue
        except OSError:
            return None
    return total


def _percentiles(values: np.ndarray) -> tuple[float | None, float | None]:
    if values.size == 0:
        return None, None
    p50, p99 = np.percentile(values, [50, 99])  # linear, as SQL's quantile_cont
    return float(p50), float(p99)


def score_run(
    target: lake.Lake,
    run_id: str,
    *,
    fov_um: tuple[float, float],
    window_sim_s: tuple[float, float],
    min_frames: int = 3,
) -> dict[str, Any]:
    """A run's figures, from the lake: divisions caught at high temporal resolution, light, harm, data, latency.

    The divisions counted are those of the twin's ground truth (`twin_events`, the imaged fields only) that
    start and end inside `window_sim_s` on the twin's clock; one is *captured* when at least `min_frames`
    time points of its field were taken while it was under way (a z-stack or a second channel adds frames, not
    time points).
    """
    frames = target.read(
        "frames",
        columns=["p", "t", "x_um", "y_um", "acquired_at", "light_power", "exposure_ms", "shape", "dtype", "image_uri"],
        filter=pc.field("run_id") == run_id,
    )
    events = target.read("twin_events", filter=pc.field("run_id") == run_id)
    decisions = target.read(
        "decisions", columns=["model", "model_version", "latency_ms"], filter=pc.field("run_id") == run_id
    )
    dose = pc.multiply(pc.fill_null(frames["light_power"], 0.0), pc.fill_null(frames["exposure_ms"], 0.0))
    itemsize = [np.dtype(d).itemsize for d in frames["dtype"].to_pylist()]
    pixels = [math.prod(s) for s in frames["shape"].to_pylist()]
    points = _time_points(frames)

    w0, w1 = window_sim_s
    divisions = [
        e
        for e in events.filter(pc.equal(events["kind"], "division")).to_pylist()
        if e["end_sim_time_s"] is not None and e["sim_time_s"] >= w0 and e["end_sim_time_s"] <= w1
    ]
    _, counts = score_divisions(divisions, points, fov_um=fov_um)
    harmed = events.filter(pc.is_in(events["kind"], pa.array(["arrest", "death"])))
    dead = events.filter(pc.equal(events["kind"], "death"))
    p50, p99 = _percentiles(np.asarray(decisions["latency_ms"].drop_null().to_numpy(), dtype=float))
    models = decisions.drop_null().to_pylist()
    n_captured = sum(1 for c in counts if c >= min_frames)
    return {
        "model": models[-1]["model"] if models else None,
        "model_version": models[-1]["model_version"] if models else None,
        "divisions": len(divisions),
        "divisions_imaged": sum(1 for c in counts if c > 0),
        "divisions_captured": n_captured,
        "capture_fraction": n_captured / len(divisions) if divisions else None,
        "light_dose": float(pc.sum(dose).as_py() or 0.0),
        "frames": frames.num_rows,
        "time_points": points.num_rows,
        "bytes_raw": int(sum(p * b for p, b in zip(pixels, itemsize, strict=True))),
        "bytes": _stored_bytes(sorted(set(frames["image_uri"].drop_null().to_pylist()))),
        "cells_harmed": len(set(harmed["cell_id"].to_pylist())),
        "cells_dead": len(set(dead["cell_id"].to_pylist())),
        "decisions": decisions.num_rows,
        "decision_p50_ms": p50,
        "decision_p99_ms": p99,
    }


def _sum_or_none(values: list[int | None]) -> int | None:
    return None if any(v is None for v in values) else sum(v for v in values if v is not None)


def summarize(policy: str, runs: list[PolicyRun]) -> PolicySummary:
    divisions = sum(r.divisions for r in runs)
    captured = sum(r.divisions_captured for r in runs)
    p50 = [r.decision_p50_ms for r in runs if r.decision_p50_ms is not None]
    p99 = [r.decision_p99_ms for r in runs if r.decision_p99_ms is not None]
    return PolicySummary(
        policy=policy,
        runs=len(runs),
        divisions=divisions,
        divisions_captured=captured,
        capture_fraction=captured / divisions if divisions else None,
        light_dose=sum(r.light_dose for r in runs),
        cells_harmed=sum(r.cells_harmed for r in runs),
        max_cell_dose=max((r.max_cell_dose for r in runs if r.max_cell_dose is not None), default=None),
        frames=sum(r.frames for r in runs),
        bytes_raw=sum(r.bytes_raw for r in runs),
        bytes=_sum_or_none([r.bytes for r in runs]),
        decision_p50_ms=float(np.median(p50)) if p50 else None,  # the median run's
        decision_p99_ms=max(p99) if p99 else None,  # the worst run's
    )


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def verdict(runs: list[PolicyRun], *, smart: str = SMART, reference: str = FIXED_FAST) -> ClaimVerdict:
    """Test the claim on the seeds both policies ran, pooled; per-seed ratios for the record."""
    by = {(r.policy, r.seed): r for r in runs}
    seeds = sorted({s for p, s in by if p == smart} & {s for p, s in by if p == reference})
    if not seeds:
        return ClaimVerdict(smart=smart, reference=reference, capture_ratio=None, dose_ratio=None, holds=None)
    s_runs, r_runs = [by[(smart, s)] for s in seeds], [by[(reference, s)] for s in seeds]
    capture = _ratio(sum(r.divisions_captured for r in s_runs), sum(r.divisions_captured for r in r_runs))
    dose = _ratio(sum(r.light_dose for r in s_runs), sum(r.light_dose for r in r_runs))
    per_seed = {
        s: (
            _ratio(by[(smart, s)].divisions_captured, by[(reference, s)].divisions_captured),
            _ratio(by[(smart, s)].light_dose, by[(reference, s)].light_dose),
        )
        for s in seeds
    }
    holds = capture is not None and dose is not None and capture >= CLAIM_CAPTURE and dose <= CLAIM_DOSE
    return ClaimVerdict(
        smart=smart, reference=reference, capture_ratio=capture, dose_ratio=dose, holds=holds, per_seed=per_seed
    )


# -------------------------------------------------------------------------------------------------- the plot


def plot_experiment(runs: list[PolicyRun], claim: ClaimVerdict, path: Path) -> Path:
    """Light dose against divisions captured, one point per policy and seed: absolute (left), and relative to
    the reference policy on the same seed (right) with the claim's region shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    policies = list(dict.fromkeys(r.policy for r in runs))
    colours = {p: f"C{i}" for i, p in enumerate(policies)}
    seeds = sorted({r.seed for r in runs})
    markers = {s: "osD^vP*X"[i % 8] for i, s in enumerate(seeds)}
    ref = {r.seed: r for r in runs if r.policy == claim.reference}
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.4))
    top = 1.5
    for r in runs:
        style = {"color": colours[r.policy], "marker": markers[r.seed], "s": 42, "alpha": 0.85}
        label = f"{r.policy} (seed {r.seed})"
        left.scatter(r.light_dose, r.divisions_captured, label=label, **style)
        base = ref.get(r.seed)
        if base is not None and base.light_dose > 0 and base.divisions_captured > 0:
            x, y = r.light_dose / base.light_dose, r.divisions_captured / base.divisions_captured
            right.scatter(x, y, label=label, **style)
            top = max(top, 1.1 * y)
    left.set_xlabel("light dose (power % x exposure ms, summed over frames)")
    left.set_ylabel(f"divisions captured (>= {runs[0].min_frames if runs else 3} time points)")
    left.set_title("per policy and seed")
    left.legend(loc="best", fontsize=7)
    right.fill_between(
        [0, claim.max_dose_ratio], claim.min_capture_ratio, top, color="tab:green", alpha=0.15, label="the claim"
    )
    right.axvline(claim.max_dose_ratio, color="tab:green", lw=0.8, ls="--")
    right.axhline(claim.min_capture_ratio, color="tab:green", lw=0.8, ls="--")
    right.set_xlim(0, 1.15)
    right.set_ylim(0, top)
    right.set_xlabel(f"light dose / {claim.reference}'s (same seed)")
    right.set_ylabel(f"divisions captured / {claim.reference}'s (same seed)")
    right.set_title(str(claim), fontsize=8, wrap=True)
    right.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)  # a reader never sees half a PNG
    return path
