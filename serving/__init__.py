"""Model serving: BentoML services for in-silico experiments (`VirtualCell`) and microscope feedback
(`Feedback`), served together as `CellFarm` by `cellfarm serve`, and their Python client.

Importing `serving` (or `serving.client`) is light: no BentoML, no torch. The services load on first use of
their names (`serving.CellFarm`), in the server's process.

    from serving.client import Client
    vc = Client("http://127.0.0.1:3000")  # token from $CELLFARM_API_TOKEN
    print(vc.predict(["STAT1", "JAK2+STAT1"]).table())
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from serving._frames import FRAME_HEADER, NPY_MEDIA_TYPE
from serving._schemas import (
    Context,
    EmbedRequest,
    EmbedResponse,
    FrameDecision,
    FrameMeta,
    GeneProgram,
    ModelInfo,
    PredictRequest,
    PredictResponse,
    ScreenRequest,
    ScreenResponse,
    Status,
)
from serving.client import AuthError, Client, FeedbackClient, RequestError, ServingError, UnavailableError

if TYPE_CHECKING:
    from serving.feedback import Feedback
    from serving.service import CellFarm
    from serving.virtual_cell import VirtualCell

__all__ = [
    "FRAME_HEADER",
    "NPY_MEDIA_TYPE",
    "AuthError",
    "CellFarm",
    "Client",
    "Context",
    "EmbedRequest",
    "EmbedResponse",
    "Feedback",
    "FeedbackClient",
    "FrameDecision",
    "FrameMeta",
    "GeneProgram",
    "ModelInfo",
    "PredictRequest",
    "PredictResponse",
    "RequestError",
    "ScreenRequest",
    "ScreenResponse",
    "ServingError",
    "Status",
    "UnavailableError",
    "VirtualCell",
]

_SERVICES = {"CellFarm": "serving.service", "VirtualCell": "serving.virtual_cell", "Feedback": "serving.feedback"}


def __getattr__(name: str) -> Any:
    # the services pull in BentoML and torch: only a server process needs them
    if name in _SERVICES:
        return getattr(importlib.import_module(_SERVICES[name]), name)
    raise AttributeError(f"module 'serving' has no attribute {name!r}")
