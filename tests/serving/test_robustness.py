"""Overload, oversized bodies and generated inputs: the server sheds and recovers, refuses early, never 500s,
and its answers match its published OpenAPI schema."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from serving.client import UnavailableError
from tests.serving.conftest import Server

# hypothesis keeps caches in ./.hypothesis unless told otherwise: not in the repository
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(tempfile.gettempdir(), "cellfarm-hypothesis"))

HEAVY = {"perturbations": ["STAT1", "IRF1", "SPI1", "STAT3", "SMAD4"] * 4, "context": {"n_cells": 100}}


def test_overload_is_shed_with_retry_after_then_served(server: Server) -> None:
    with ThreadPoolExecutor(12) as pool:  # 12 heavy requests at once; the server takes 2 at a time here
        answers = list(pool.map(lambda _: server.post("/predict", json=HEAVY), range(12)))
    codes = sorted(r.status_code for r in answers)
    assert set(codes) == {200, 503}, codes
    shed = [r for r in answers if r.status_code == 503]
    assert all(r.headers["retry-after"] == "1" and "overloaded" in r.json()["error"] for r in shed)
    # the client honours Retry-After: the same burst through it is eventually all answered
    with ThreadPoolExecutor(6) as pool:
        outs = list(pool.map(lambda _: server.client(retries=20).predict(HEAVY["perturbations"], n_cells=20), range(6)))
    assert all(len(o.predictions) == 20 for o in outs)
    assert server.client().status().ready


def test_oversized_bodies_are_refused_before_reading(server: Server) -> None:
    big = b"[" + b"0," * (9 * 2**20) + b"0]"  # 18 MiB: over VirtualCell's 16 MiB
    resp = server.post("/embed", content=big, headers={"content-type": "application/json"})
    assert resp.status_code == 413
    assert "over this route" in resp.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while reading
        for _ in range(18):
            yield b" " * 2**20

    resp = server.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    assert resp.status_code == 413
    assert server.post("/reload", content=b"x" * (2 * 2**20)).status_code == 413  # 1 MiB elsewhere


def test_generated_requests_never_500_and_match_the_schema(server: Server) -> None:
    spec = httpx.get(server.url + "/docs.json", headers=server.auth, timeout=30).json()
    schema = schemathesis.openapi.from_dict(spec)
    operations = [r.ok() for r in schema.get_all_operations()]
    posts = [op for op in operations if op.method.upper() == "POST"]
    assert {op.path for op in posts} >= {"/predict", "/screen", "/embed", "/decide", "/decide_json", "/reload"}
    checks = [not_a_server_error, response_schema_conformance, content_type_conformance]
    for op in posts:

        @settings(
            max_examples=int(os.environ.get("SERVING_FUZZ_EXAMPLES", "12")),
            deadline=None,
            database=None,  # nothing written into the repository
            phases=[Phase.explicit, Phase.generate],  # no shrinking: bounded time, the failing case is shown
            suppress_health_check=list(HealthCheck),
        )
        @given(case=op.as_strategy())
        def run(case: schemathesis.Case) -> None:
            case.call_and_validate(base_url=server.url, headers=server.auth, checks=checks, timeout=60)

        run()


def test_feedback_admits_what_it_can_decide_in_time_and_sheds_the_rest(server: Server) -> None:
    from serving._frames import FRAME_HEADER, NPY_MEDIA_TYPE, encode_npy

    body = encode_npy(np.random.default_rng(0).poisson(100, (512, 512)).astype(np.uint16))

    def post(i: int) -> httpx.Response:
        headers = {"content-type": NPY_MEDIA_TYPE, FRAME_HEADER: f'{{"run_id": "burst", "frame_id": {i}}}'}
        return server.post("/decide", content=body, headers=headers)

    server.feedback().decide(np.zeros((64, 64), np.uint16))  # the service has measured its cost per frame
    with ThreadPoolExecutor(64) as pool:
        answers = list(pool.map(post, range(64)))
    codes = [r.status_code for r in answers]
    assert set(codes) == {200, 503}, codes
    assert all(r.headers["retry-after"] == "1" for r in answers if r.status_code == 503)
    # the microscope's client does not retry a shed frame: it says so at once. One client for 64 threads sending 4
    # frames each: a burst the service cannot decide in time however the box's load varies (64 clients of one
    # frame each, every one opening its own connection, once arrived slowly enough to be all admitted)
    client = server.feedback()
    frame = np.zeros((512, 512), np.uint16)
    with pytest.raises(UnavailableError, match="503"), ThreadPoolExecutor(64) as pool:
        list(pool.map(lambda _: [client.decide(frame) for _ in range(4)], range(64)))
