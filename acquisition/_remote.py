"""The `remote` policy: the same protocol over HTTP, to a served imaging model (see serving/).

Wire format (JSON): POST the frame's metadata plus its plane as base64 little-endian bytes; the answer is
`{"actions": [...]}` with the same pydantic actions the in-process policies return.
"""

from __future__ import annotations

import base64
from typing import Any

import httpx
import numpy as np

from acquisition._policy import FrameView, action_adapter

__all__ = ["RemotePolicy", "frame_payload"]


def frame_payload(frame: FrameView) -> dict[str, Any]:
    img = np.ascontiguousarray(frame.image)
    return {
        "run_id": frame.run_id,
        "frame_id": frame.frame_id,
        "t": frame.t,
        "p": frame.p,
        "c": frame.c,
        "z": frame.z,
        "channel": frame.channel,
        "well": frame.well,
        "x_um": frame.x_um,
        "y_um": frame.y_um,
        "z_um": frame.z_um,
        "exposure_ms": frame.exposure_ms,
        "light_power": frame.light_power,
        "acquired_at": frame.acquired_at.isoformat(),
        "bit_depth": frame.bit_depth,
        "shape": list(img.shape),
        "dtype": img.dtype.newbyteorder("<").str,
        "image_b64": base64.b64encode(img.astype(img.dtype.newbyteorder("<"), copy=False).tobytes()).decode(),
    }


class RemotePolicy:
    def __init__(self, url: str, *, channel: str | None = "GFP", timeout_s: float = 5.0) -> None:
        self.name = "remote"
        self.url = url
        self.channel = channel
        self.version = "remote"
        self._client = httpx.Client(timeout=timeout_s)

    def wants(self, frame: FrameView) -> bool:
        return self.channel is None or frame.channel in (None, self.channel)

    def decide(self, frame: FrameView) -> list[Any]:
        resp = self._client.post(self.url, json=frame_payload(frame))
        resp.raise_for_status()
        body = resp.json()
        # The server names the model and version that decided, for the decisions table.
        self.version = str(body.get("model_version", self.version))
        return list(action_adapter.validate_python(body.get("actions", [])))
