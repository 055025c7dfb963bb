"""A version promoted while the server runs is served without a restart: by the registry poll (every second
here), or at once through `POST /reload`."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

import models
from acquisition.twin import TwinConfig, TwinSample
from models.imaging import ImagingMitosisDetector, MitosisNet, load_detector, register_detector, render_frames
from serving.client import Client
from tests.serving.conftest import Server


def _served(client: Client, service: str) -> str:
    return next(f"{m.name}:{m.version}" for m in client.status().models if m.service == service)


@pytest.fixture(autouse=True)
def restore(server: Server) -> Iterator[None]:
    """Roll the registry back afterwards (which the server follows too): other modules see the first versions."""
    before = [r for r in models.list_models(server.lake) if r.stage == "production"]
    yield
    for r in models.list_models(server.lake):
        if r.stage == "production" and r not in before:
            models.set_stage(server.lake, r, "archived")
    for r in before:
        models.set_stage(server.lake, r, "production")
    status = server.client().reload()
    assert {f"{r.name}:{r.version}" for r in before} <= {f"{m.name}:{m.version}" for m in status.models}


def test_a_promoted_perturbation_version_is_picked_up_by_the_poll(server: Server) -> None:
    client = server.client()
    record = models.train(server.lake, "perturbation-mean", "papalexi2021", holdout=["STAT1", "IRF1"])
    assert _served(client, "VirtualCell") != record.ref
    models.set_stage(server.lake, record, "production")
    server.wait_for(f"{record.ref} served", lambda: _served(client, "VirtualCell") == record.ref, timeout_s=90)
    out = client.predict(["STAT1"])
    assert out.model.version == str(record.version)
    assert out.predictions[0].fallback  # STAT1 is held out of this version: the mean effect, said so
    expected, _ = record.load().predict_delta(["STAT1"])
    np.testing.assert_allclose(out.predictions[0].delta, expected[0], rtol=1e-5, atol=1e-6)


def test_reload_serves_a_promoted_imaging_model_at_once(server: Server) -> None:
    client = server.client()
    torch.manual_seed(0)
    # an untrained net is enough here: what is checked is which model answers, not how well
    record = register_detector(server.lake, ImagingMitosisDetector(MitosisNet(), version="0", threshold=0.5))
    models.set_stage(server.lake, record, "production")
    status = client.reload()
    assert f"{record.name}:{record.version}" in [f"{m.name}:{m.version}" for m in status.models]
    image = render_frames(
        lambda seed, size: TwinSample(TwinConfig(seed=seed, time_scale=0, width=size, height=size)),
        twin_seed=3,
        n_frames=1,
    ).images[0]
    d = server.feedback().decide(image, {"run_id": "cnn", "bit_depth": 12})
    assert (d.model, d.model_version) == (record.name, str(record.version))
    detector = load_detector(server.lake, record.ref)
    assert [(x.y, x.x) for x in d.detections] == [(x.y, x.x) for x in detector(image)]
    assert d.event_score == pytest.approx(float(detector.heatmap(image).max()), rel=1e-5)
