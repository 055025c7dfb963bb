"""The farm: N agents at once, one process each, into one lake."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import useq

import lake
from acquisition._agent import Agent, RunResult
from acquisition._microscope import Microscope, open_config, open_twin
from acquisition._plan import default_plan, load_plan
from acquisition._policy import DetectorFactory, FeedbackPolicy, MitosisPolicy
from acquisition._remote import FeedbackClientFactory, RemotePolicy
from acquisition._runs import fail_dead_runs

__all__ = ["AgentSpec", "PolicyName", "make_policy", "run_agent", "run_farm"]

PolicyName = Literal["none", "local", "remote"]
ORPHANED = "the farm's supervisor died: aborted"


def make_policy(
    name: PolicyName, *, detector: DetectorFactory | None = None, feedback: FeedbackClientFactory | None = None
) -> FeedbackPolicy | None:
    """The policy an agent runs: `detector` builds the `local` policy's detector (None: the classical one),
    `feedback` the `remote` policy's client of the served model."""
    if detector is not None and name != "local":
        raise lake.InvalidInputError(f"a mitosis detector is for --policy local, not --policy {name}")
    if feedback is not None and name != "remote":
        raise lake.InvalidInputError(f"a feedback client is for --policy remote, not --policy {name}")
    if name == "none":
        return None
    if name == "local":
        return MitosisPolicy(detector=detector() if detector is not None else None)
    if feedback is None:
        raise lake.InvalidInputError("--policy remote needs --policy-url (the served imaging model)")
    return RemotePolicy(feedback())


@dataclass(frozen=True)
class AgentSpec:
    """Everything one agent process needs; plain data so that it crosses a process boundary."""

    lake_root: str
    microscope_id: str
    config: str | None = None  # a Micro-Manager configuration; None: the digital twin
    plan: str | None = None
    policy: PolicyName = "none"
    # The `remote` policy's client of the served model, built in the agent's process; the command line makes it
    # from `--policy-url` (acquisition does not import serving).
    feedback: FeedbackClientFactory | None = None
    # The `local` policy's detector, built in the agent's process (a picklable factory: see `DetectorFactory`);
    # None: the classical one. The command line resolves `--detector REF` from the model registry into it.
    detector: DetectorFactory | None = None
    seed: int = 0
    twin_options: tuple[tuple[str, Any], ...] = ()

    def open_microscope(self) -> Microscope:
        if self.config:
            return open_config(self.config)
        from acquisition.twin import TwinConfig

        return open_twin(TwinConfig(seed=self.seed, **dict(self.twin_options)))

    def load_plan(self) -> useq.MDASequence:
        return load_plan(self.plan) if self.plan else default_plan()


def run_agent(
    spec: AgentSpec,
    *,
    on_frame: Callable[[int], None] | None = None,
    on_agent: Callable[[Agent], None] | None = None,
) -> RunResult:
    """Run one agent to the end of its plan; `on_agent` gets the agent before it starts (to abort it from
    another thread: see `Agent.abort`)."""
    target = lake.Lake.open(spec.lake_root)
    plan = spec.load_plan()  # parse errors first: nothing is opened or written for a bad plan
    policy = make_policy(spec.policy, detector=spec.detector, feedback=spec.feedback)
    microscope = spec.open_microscope()
    try:
        agent = Agent(target, microscope, microscope_id=spec.microscope_id, policy=policy, on_frame=on_frame)
        if on_agent is not None:
            on_agent(agent)
        return agent.run(plan)
    finally:
        microscope.close()


class _Stop:
    """Ends an agent process's run early, the clean way (`Agent.abort`: the MDA finishes its event, every frame
    acquired is delivered and committed) rather than by a KeyboardInterrupt inside the MDA, which skips its
    teardown and leaves its relay thread running (the process then never exits). Signal handlers only record
    why: the abort takes locks the interrupted main thread may hold, so a thread of its own does it."""

    def __init__(self) -> None:
        self.reason = ""
        self._requested = threading.Event()

    def __call__(self, reason: str) -> None:
        if not self._requested.is_set():
            self.reason = reason
            self._requested.set()

    def on_signals(self) -> None:
        signal.signal(signal.SIGINT, lambda *_: self("interrupted"))
        signal.signal(signal.SIGTERM, lambda *_: self("terminated"))

    def attach(self, agent: Agent) -> None:
        threading.Thread(target=self._abort, args=(agent,), daemon=True).start()

    def _abort(self, agent: Agent) -> None:
        self._requested.wait()
        agent.abort(self.reason)


def _stop_when_orphaned(supervisor: int, messages: Any, stop: _Stop) -> None:
    """An agent outlives a supervisor killed by SIGKILL (nothing signals it): it then aborts its run rather than
    run on unsupervised, and exits without waiting to deliver messages that nobody reads any more."""
    while os.getppid() == supervisor:
        time.sleep(0.5)
    messages.cancel_join_thread()
    stop(ORPHANED)


def _child(spec: AgentSpec, messages: Any) -> None:
    stop = _Stop()
    stop.on_signals()  # Ctrl-C reaches every process of the farm; the supervisor forwards its SIGTERM
    supervisor = mp.parent_process()
    if supervisor is not None and supervisor.pid is not None:
        threading.Thread(target=_stop_when_orphaned, args=(supervisor.pid, messages, stop), daemon=True).start()
    last = [0.0]

    def tick(frame_id: int) -> None:
        now = time.monotonic()
        if now - last[0] > 0.2:  # progress is advisory: a few messages a second is plenty
            last[0] = now
            messages.put(("frame", spec.microscope_id, frame_id + 1))

    try:
        result = run_agent(spec, on_frame=tick, on_agent=stop.attach)
        messages.put(("done", spec.microscope_id, asdict(result)))
    except lake.LakeError as exc:
        messages.put(("error", spec.microscope_id, str(exc)))


def run_farm(
    specs: list[AgentSpec], *, on_progress: Callable[[str, int], None] | None = None
) -> dict[str, RunResult | str]:
    """Run the agents in separate processes; returns each one's result, or its one-line error."""
    ctx = mp.get_context("spawn")
    messages = ctx.Queue()
    procs = {s.microscope_id: ctx.Process(target=_child, args=(s, messages), name=s.microscope_id) for s in specs}
    for p in procs.values():
        p.start()
    results: dict[str, RunResult | str] = {}
    try:
        while len(results) < len(procs):
            try:
                kind, mid, payload = messages.get(timeout=0.5)
            except queue.Empty:
                for mid, p in procs.items():
                    if mid not in results and not p.is_alive() and p.exitcode not in (0, None):
                        results[mid] = f"agent process exited with code {p.exitcode}"
                continue
            if kind == "frame" and on_progress is not None:
                on_progress(mid, payload)
            elif kind == "done":
                results[mid] = RunResult(**payload)
            elif kind == "error":
                results[mid] = payload
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM (see cellfarm acquire): every agent aborts its run
        for p in procs.values():
            p.terminate()
        deadline = time.monotonic() + 120
        while any(p.is_alive() for p in procs.values()) and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                messages.get(timeout=0.2)  # keep the pipe drained: an agent exits once its messages are out
        raise
    for p in procs.values():
        p.join(timeout=30)
    if any(p.exitcode not in (0, None) for p in procs.values()):
        # A killed agent's run is still `running`: mark it failed now rather than at the next start.
        with contextlib.suppress(lake.LakeError):
            fail_dead_runs(lake.Lake.open(specs[0].lake_root, create=False))
    return results
