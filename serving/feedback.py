"""`Feedback`: the acquisition agents' imaging model over HTTP, with adaptive batching.

- `POST /decide` (batchable): a frame as a `.npy` body (`Content-Type: application/x-npy`, metadata as JSON in
  the `X-Cellfarm-Frame` header), or a JSON list of frames -> per frame: the mitosis detections, the frame's
  event score, and the recommended actions (revisit / lower the light / skip), with the model name and
  version. Frames from many microscopes that arrive together share one model call (up to `MAX_BATCH`), as
  long as each can still be answered within `MAX_LATENCY_MS`; a frame that cannot is shed (503) at once.
- `POST /decide_json`: one frame as a JSON object with a base64 plane (for clients that cannot send binary);
  not batched. Kept for compatibility: new clients use `serving.client.FeedbackClient`.

Serve it alone with `bentoml serve serving.feedback:Feedback`; `cellfarm serve` runs it with `VirtualCell`.
"""

from __future__ import annotations

import os
import time
from typing import Any, ClassVar

import bentoml
from _bentoml_sdk.io_models import IODescriptor, IORootModel
from bentoml.exceptions import BadInput
from pydantic import ValidationError

import models
from serving._base import ServiceBase, guard_config
from serving._frames import (
    FRAME_HEADER,
    NPY_MEDIA_TYPE,
    Frame,
    FrameError,
    decode_json_frame,
    decode_npy,
    parse_meta_header,
)
from serving._imaging import DetectorState, FeedbackPolicyState, decide_batch, find_detector, load_detector_state
from serving._middleware import Guard
from serving._reload import Served
from serving._schemas import FrameDecision, FrameIn, FrameMeta, ServedModel

__all__ = ["FB_ROUTES", "MAX_BATCH", "MAX_LATENCY_MS", "Decisions", "Feedback", "FeedbackAPI", "FrameBatch"]

FB_GROUP = "feedback"
FB_ROUTES = {"/decide": FB_GROUP, "/decide_json": FB_GROUP}
MAX_BATCH = int(os.environ.get("CELLFARM_FEEDBACK_MAX_BATCH", "32"))  # frames per model call; sized per farm
# The microscope's budget: the local policy revisits a dividing cell every 0.25 s, so a decision later than
# that is about a frame the microscope has already moved past; better shed it (the agent carries on without
# feedback for that frame) than answer late. Override with CELLFARM_FEEDBACK_MAX_LATENCY_MS.
MAX_LATENCY_MS = int(os.environ.get("CELLFARM_FEEDBACK_MAX_LATENCY_MS", "250"))
TRAFFIC = {"timeout": 60, "max_concurrency": 512}
_META_FIELDS = set(FrameMeta.model_fields)


def _meta(frame: FrameIn) -> FrameMeta:
    return FrameMeta.model_validate(frame.model_dump(include=_META_FIELDS))


class FrameBatch(IORootModel[list[FrameIn]]):
    """`/decide`'s input: the OpenAPI schema documents the JSON form (a list of `FrameIn`); the `.npy` form is
    parsed here too. Either way the API receives `Frame`s whose pixels are already checked, so a bad frame
    is a 400 for its own request and never reaches a batch."""

    __root_input__: ClassVar[bool] = True

    @classmethod
    async def from_http_request(cls, request: Any, serde: Any) -> IODescriptor:
        received = time.perf_counter()
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        try:
            if media == NPY_MEDIA_TYPE:
                image = decode_npy(await request.body())
                frames = [Frame(parse_meta_header(request.headers.get(FRAME_HEADER)), image, received)]
            else:
                parsed = await super().from_http_request(request, serde)
                listed: list[FrameIn] = parsed.root
                if not listed:
                    raise FrameError("no frames: send one or more")
                frames = [Frame(_meta(f), decode_json_frame(f), received) for f in listed]
        except FrameError as exc:
            raise BadInput(str(exc)) from None
        except ValidationError:
            raise  # BentoML answers it with a 400 naming the fields
        except ValueError:  # not JSON at all (BentoML's root-model parser lets json.loads raise)
            raise BadInput("body is neither JSON nor an application/x-npy frame") from None
        return cls.model_construct(root=frames)


class Decisions(IORootModel[list[FrameDecision]]):
    """`/decide`'s output. Its media type is fixed: otherwise BentoML derives it for every answer from the
    type's JSON schema (a new pydantic `TypeAdapter` and schema per response: ~3 ms, the largest cost of a
    `/decide` request before the model itself)."""

    media_type: ClassVar[str | None] = "application/json"


def _describe(state: DetectorState) -> ServedModel:
    return ServedModel(
        service="Feedback",
        name=state.name,
        version=state.version,
        kind=state.kind,
        stage=state.stage,
        loaded_at=state.loaded_at,
        note=state.note,
    )


class FeedbackAPI(ServiceBase):
    def __init__(self) -> None:
        super().__init__()
        # one thread: frames are decided in arrival order (the policy's per-run memory needs it), and the
        # batch is what parallelism the model gets
        self._fb_pool = self._pool(1, "feedback")
        self._policy = FeedbackPolicyState()
        target = self.lake
        self._fb: Served[models.ModelRecord, DetectorState] = Served(
            "Feedback",
            find=lambda: find_detector(target),
            load=load_detector_state,
            ident=lambda r: r.ref if r is not None else "classical",
        )
        self._serve("Feedback", FB_GROUP, self._fb, _describe)
        self._frame_ms: float | None = None  # moving average of the model's cost per frame

    def _decide(self, state: DetectorState, frames: list[Frame]) -> list[FrameDecision]:
        t0 = time.perf_counter()
        out = decide_batch(state, self._policy, frames)
        per = (time.perf_counter() - t0) * 1000 / max(len(frames), 1)
        self._frame_ms = per if self._frame_ms is None else 0.9 * self._frame_ms + 0.1 * per
        return out

    def inflight_limit(self, group: str) -> int | None:
        """Admit only the frames that can be decided within the budget: the last one admitted waits for the
        ones ahead of it, so in flight x cost per frame must fit; half the budget goes to what the model call
        does not count (HTTP, parsing, the batcher's wait). The rest is shed at the door, cheaply."""
        if group != FB_GROUP or self._frame_ms is None:
            return super().inflight_limit(group)
        return max(2, int(MAX_LATENCY_MS / (2 * self._frame_ms)))

    def _detector(self) -> DetectorState:
        state = self._fb.state
        if state is None:  # never: the classical detector is always there to fall back on
            raise RuntimeError("the feedback detector is not loaded")
        return state

    @bentoml.api(
        route="/decide",
        input_spec=FrameBatch,
        output_spec=Decisions,
        batchable=True,
        max_batch_size=MAX_BATCH,
        max_latency_ms=MAX_LATENCY_MS,
    )
    async def decide(self, frames: list[Frame]) -> list[FrameDecision]:
        """Frames -> mitosis detections, event score and recommended actions (adaptively batched)."""
        return await self._in(self._fb_pool, self._decide, self._detector(), frames)

    @bentoml.api(route="/decide_json")
    async def decide_json(self, frame: FrameIn, /) -> FrameDecision:
        """One frame as JSON with a base64 plane (for clients that cannot send binary); not batched."""
        received = time.perf_counter()
        try:
            image = decode_json_frame(frame)
            meta = _meta(frame)
        except (FrameError, ValidationError) as exc:
            raise BadInput(" ".join(str(exc).split())[:300]) from None
        decisions = await self._in(self._fb_pool, self._decide, self._detector(), [Frame(meta, image, received)])
        return decisions[0]


Feedback = bentoml.service(name="Feedback", traffic=TRAFFIC, workers=1)(FeedbackAPI)
Feedback.add_asgi_middleware(Guard, config=guard_config(FB_ROUTES))
