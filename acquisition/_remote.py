"""The `remote` policy: the served imaging model decides (see serving/), through a client the agent is handed.

`acquisition` never imports `serving`: the command line builds the client (`serving.client.FeedbackClient`)
from `--policy-url` and hands the agent a picklable factory of it, as it does for the `local` policy's detector.
Anything with a `decide(image, meta) -> reply` method fits, where the reply names the model and version that
decided and carries the actions (pydantic models of the same shapes as the in-process policies' actions).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from acquisition._policy import FrameView, action_adapter

__all__ = ["FeedbackClient", "FeedbackClientFactory", "FeedbackReply", "RemotePolicy", "frame_meta"]

_SHED = frozenset({429, 503})  # the server had no room for this frame: no feedback for it, not an error


class _Dumpable(Protocol):
    def model_dump(self) -> dict[str, Any]: ...


class FeedbackReply(Protocol):
    @property
    def model(self) -> str: ...

    @property
    def model_version(self) -> str: ...

    @property
    def actions(self) -> Sequence[_Dumpable]: ...


class FeedbackClient(Protocol):
    def decide(self, image: np.ndarray, meta: Mapping[str, Any]) -> FeedbackReply: ...


FeedbackClientFactory = Callable[[], FeedbackClient]
"""Builds the client in the agent's process (a spawned agent gets the factory, pickled, not a live connection)."""

_META = (
    "run_id",
    "frame_id",
    "t",
    "p",
    "c",
    "z",
    "channel",
    "well",
    "x_um",
    "y_um",
    "z_um",
    "exposure_ms",
    "light_power",
    "acquired_at",
    "bit_depth",
)


def frame_meta(frame: FrameView) -> dict[str, Any]:
    """What travels with the pixels: the frame's position in the run and how it was taken."""
    return {k: getattr(frame, k) for k in _META}


class RemotePolicy:
    def __init__(self, client: FeedbackClient, *, channel: str | None = "GFP") -> None:
        self.name = "remote"
        self.version = "remote"
        self.channel = channel
        self.shed = 0  # frames the server had no room for
        self._client = client

    def wants(self, frame: FrameView) -> bool:
        return self.channel is None or frame.channel in (None, self.channel)

    def decide(self, frame: FrameView) -> list[Any]:
        try:
            reply = self._client.decide(frame.image, frame_meta(frame))
        except Exception as e:
            if getattr(e, "status", None) in _SHED:
                self.shed += 1
                return []
            raise
        # the server names the model and version that decided: they go to the decisions table
        self.name, self.version = reply.model, reply.model_version
        return list(action_adapter.validate_python([a.model_dump() for a in reply.actions]))
