"""`cellfarm acquire`: one agent in process, or a farm of N agent processes, with progress and a summary."""

from __future__ import annotations

import functools
import signal
from dataclasses import replace
from typing import Any

from rich.console import Console

import lake
from acquisition import (
    AgentSpec,
    DetectorFactory,
    FeedbackClientFactory,
    PolicyName,
    RunResult,
    load_plan,
    run_agent,
    run_farm,
)
from acquisition._plan import default_plan
from cellfarm._progress import RichProgress

__all__ = ["CLASSICAL", "choose_detector", "choose_feedback", "run_acquire"]

CLASSICAL = "classical"  # `--detector classical`: the built-in detector, whatever the registry holds


def choose_detector(target: lake.Lake, policy: PolicyName, ref: str | None, console: Console) -> DetectorFactory | None:
    """The `local` policy's detector for `--detector REF`, as a factory the agent processes call; None: classical.

    Without `--detector`, the registry's production `mitosis-cnn` when the lake has one, else the classical
    detector, with a one-line notice. Only production, never the latest candidate: an unvetted model does not
    steer a microscope unless the operator names it (`--detector mitosis-cnn:latest`, or a version). The
    detector is loaded here once, so a bad reference or a broken artifact fails with one line before anything
    runs. This layer may import `models`; `acquisition` may not, hence the factory.
    """
    if ref is not None and policy != "local":
        raise lake.InvalidInputError(f"--detector is for --policy local, not --policy {policy}")
    if policy != "local" or ref == CLASSICAL:
        return None
    from models import ModelNotFoundError
    from models.imaging import KIND, detector_factory, resolve_detector

    try:
        record = resolve_detector(target, ref if ref is not None else f"{KIND}:production")
    except ModelNotFoundError as e:
        if ref is not None:
            raise
        console.print(
            f"--policy local: the classical detector ({e}; name one with --detector)", highlight=False, soft_wrap=True
        )
        return None
    factory = detector_factory(record)
    factory()  # fails now, with one line, rather than in every agent
    console.print(f"--policy local: detector {record.ref} ({record.stage})", highlight=False, soft_wrap=True)
    return factory


def choose_feedback(policy: PolicyName, url: str | None, console: Console) -> FeedbackClientFactory | None:
    """The `remote` policy's client of the served Feedback at `url` (`cellfarm serve`'s base URL), as a factory
    the agent processes call; the token comes from `CELLFARM_API_TOKEN` in each. The server is asked once here,
    so a dead server or a wrong token fails with one line before anything runs."""
    if url is not None and policy != "remote":
        raise lake.InvalidInputError(f"--policy-url is for --policy remote, not --policy {policy}")
    if policy != "remote":
        return None
    if not url:
        raise lake.InvalidInputError(
            "--policy remote needs --policy-url (e.g. http://127.0.0.1:3000, `cellfarm serve`)"
        )
    from serving.client import FeedbackClient, ServingError

    factory = functools.partial(FeedbackClient, url)
    try:
        with factory() as client:
            models = [m for m in client.status().models if m.service == "Feedback"]
            client.authorize()
    except ServingError as e:
        raise lake.InvalidInputError(f"--policy-url {url}: {e}") from None
    if not models:
        raise lake.InvalidInputError(f"--policy-url {url} serves no Feedback (is it `cellfarm serve`?)")
    console.print(
        f"--policy remote: {models[0].name}:{models[0].version} served at {url}", highlight=False, soft_wrap=True
    )
    return factory


def _expected_frames(spec: AgentSpec) -> int:
    plan = load_plan(spec.plan) if spec.plan else default_plan()
    return sum(1 for _ in plan)


def _sigterm_as_interrupt() -> None:
    # An operator's `kill` ends the run as `aborted` (with its frames committed), like Ctrl-C.
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def _describe(mid: str, result: RunResult | str, console: Console) -> bool:
    if isinstance(result, str):
        console.print(f"[bold red]{mid} error:[/] {result}", highlight=False)
        return False
    s = result.summary
    colour = "green" if result.status == "completed" else "red"
    parts = [
        f"run_id={result.run_id}",
        f"frames={result.n_frames}",
        f"frames_per_s={s.get('frames_per_s')}",
        f"commits_per_s={s.get('commits_per_s')}",
        f"backpressure_s={s.get('backpressure_s')}",
    ]
    if "events_injected" in s and s.get("policy"):
        parts.append(f"feedback_time_points={s['events_injected']}")
    twin = s.get("twin") or {}
    if twin:
        parts.append(f"divisions_imaged={twin.get('divisions_imaged')}/{twin.get('divisions')}")
        parts.append(f"healthy={twin.get('health_fraction_healthy')}")
    console.print(f"[bold {colour}]{result.status}[/] {mid}: " + ", ".join(parts), highlight=False, soft_wrap=True)
    if result.error:
        console.print(f"[bold red]error:[/] {result.error}", highlight=False)
    return result.status == "completed"


def run_acquire(spec: AgentSpec, *, microscopes: int, console: Console) -> bool:
    """Run and report; True when every run completed. Bad input raises `lake.LakeError` before anything runs."""
    total = _expected_frames(spec)
    _sigterm_as_interrupt()
    with RichProgress(console) as progress:
        if microscopes == 1:
            result: RunResult | str = run_agent(spec, on_frame=lambda i: progress(spec.microscope_id, i + 1, total))
            return _describe(spec.microscope_id, result, console)
        prefix = spec.microscope_id
        specs = [replace(spec, microscope_id=f"{prefix}-{k}", seed=spec.seed + k) for k in range(microscopes)]
        results = run_farm(specs, on_progress=lambda mid, n: progress(mid, n, total))
    ok = [_describe(mid, results[mid], console) for mid in sorted(results)]
    return all(ok)


def check_microscopes(n: int) -> None:
    if n < 1:
        raise lake.InvalidInputError(f"--microscopes must be at least 1, got {n}")
