"""The serving benchmark's peer: a plain FastAPI app with the same model, policy and frame decoding as
`cellfarm serve`, one frame at a time (`uvicorn bench._serving_peer:peer_app --factory`).

It does the work cellfarm does on each request besides batching: the same front door (`serving`'s `Guard`:
the bearer token, the body limits; no in-flight bound, so it never sheds and queues instead), the same
`.npy` decoding and header parsing, the same detector and policy (`decide_batch` on one frame), and one access
log line per request (uvicorn's, where cellfarm writes BentoML's). What it lacks is what BentoML adds:
adaptive batching, admission control, Prometheus metrics and tracing.

No `from __future__ import annotations` here: FastAPI reads the endpoints' annotations at runtime.
"""

import asyncio
import json
import os
import time

import torch
from fastapi import FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool

import lake
from serving._config import Settings
from serving._frames import FRAME_HEADER, Frame, decode_npy, parse_meta_header
from serving._imaging import FeedbackPolicyState, decide_batch, find_detector, load_detector_state
from serving._middleware import Guard, GuardConfig
from serving._perturb import find_production, load_perturb_state, predict
from serving._schemas import PredictRequest

__all__ = ["peer_app"]


def _front_door(settings: Settings) -> GuardConfig:
    return GuardConfig(
        token=settings.token,
        groups={"/decide": "feedback", "/predict": "virtual-cell"},
        inflight={},  # one request at a time, the rest queued: the peer's way
        body_limit={"virtual-cell": settings.max_body_vc, "feedback": settings.max_body_feedback, "": 1 << 20},
    )


def peer_app() -> FastAPI:
    settings = Settings.from_env()
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    target = lake.Lake.open(os.environ["BENCH_SERVING_LAKE"])
    detector = load_detector_state(find_detector(target))
    record = find_production(target, None)
    assert record is not None
    vc = load_perturb_state(target, record)
    policy = FeedbackPolicyState()
    one_at_a_time = asyncio.Lock()
    app = FastAPI()
    app.add_middleware(Guard, config=_front_door(settings))

    @app.get("/readyz")
    def readyz() -> dict[str, bool]:
        return {"ready": True}

    @app.post("/decide")
    async def decide(request: Request) -> Response:
        image = decode_npy(await request.body())
        frame = Frame(parse_meta_header(request.headers.get(FRAME_HEADER)), image, time.perf_counter())
        async with one_at_a_time:
            out = await run_in_threadpool(decide_batch, detector, policy, [frame])
        return Response(json.dumps([d.model_dump(mode="json") for d in out]), media_type="application/json")

    @app.post("/predict")
    def predict_endpoint(req: PredictRequest) -> Response:
        response, _ = predict(vc, req)
        return Response(response.model_dump_json(), media_type="application/json")

    return app
