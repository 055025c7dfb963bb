"""The serving benchmark's peer: a plain FastAPI app with the same model, policy and frame decoding as
`cellfarm serve`, one frame at a time (`uvicorn bench._serving_peer:peer_app --factory`).

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
from serving._frames import FRAME_HEADER, Frame, decode_npy, parse_meta_header
from serving._imaging import FeedbackPolicyState, decide_batch, find_detector, load_detector_state
from serving._perturb import find_production, load_perturb_state, predict
from serving._schemas import PredictRequest

__all__ = ["peer_app"]


def peer_app() -> FastAPI:
    if threads := int(os.environ.get("CELLFARM_SERVE_TORCH_THREADS", "0")):
        torch.set_num_threads(threads)
    target = lake.Lake.open(os.environ["BENCH_SERVING_LAKE"])
    detector = load_detector_state(find_detector(target))
    record = find_production(target, None)
    assert record is not None
    vc = load_perturb_state(target, record)
    policy = FeedbackPolicyState()
    one_at_a_time = asyncio.Lock()
    app = FastAPI()

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
