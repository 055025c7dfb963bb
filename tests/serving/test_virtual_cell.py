"""VirtualCell over HTTP on a real server: the served numbers are the registered model's, every call is a
`predictions` row that SQL sees, and bad input is a 4xx that says what is wrong."""

from __future__ import annotations

import json

import numpy as np
import pytest

import models
from serving.client import AuthError, RequestError
from tests.conftest import run_cli
from tests.serving.conftest import Server


def _served_model(server: Server, name: str, version: str) -> models.PerturbationModel:
    return models.resolve(server.lake, f"{name}:{version}").load()


def test_predict_returns_the_registered_models_numbers(server: Server) -> None:
    out = server.client().predict(["STAT1", "ENSG00000115415", "jak2+stat1"], n_cells=3, top_k=5, seed=1)
    model = _served_model(server, out.model.name, out.model.version)
    assert out.model.stage == "production"
    assert out.dataset == "papalexi2021"
    assert out.gene_ids == model.gene_ids
    assert out.genes == model.gene_symbols
    stat1, by_id, combo = out.predictions
    assert stat1.label == by_id.label == "STAT1"
    assert combo.label == "JAK2+STAT1"
    expected, _ = model.predict_delta(["STAT1", "JAK2+STAT1"])
    np.testing.assert_allclose(stat1.delta, expected[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(combo.delta, expected[1], rtol=1e-5, atol=1e-6)
    assert stat1.seen_in_training
    assert not stat1.fallback
    assert combo.fallback  # perturbation-mean has no combinations: it answers the mean effect, and says so
    # the knocked-out gene itself drops the most: STAT1 is in the measured panel
    assert stat1.top_down[0].gene == "STAT1"
    assert stat1.top_down[0].delta == pytest.approx(float(expected[0].min()))
    assert len(stat1.cells) == 3
    assert all(len(c) == len(model.gene_ids) for c in stat1.cells)
    assert min(min(c) for c in stat1.cells) >= 0  # predicted cells are expression: never negative
    assert list(out.top_genes().columns) == ["perturbation", "direction", "rank", "gene", "delta"]


def test_screen_ranks_by_the_program_effect(server: Server) -> None:
    candidates = ["STAT1", "IRF1", "SPI1", "STAT3", "UBE2L6"]
    out = server.client().screen(candidates, ["STAT1", "UBE2L6", "CXCL10"], direction="down", top_k=3)
    model = _served_model(server, out.model.name, out.model.version)
    deltas, _ = model.predict_delta(candidates)
    cols = [model.gene_symbols.index(g) for g in ("STAT1", "UBE2L6")]
    effect = deltas[:, cols].mean(axis=1)
    assert out.program_genes == ["STAT1", "UBE2L6"]
    assert out.unmeasured_genes == ["CXCL10"]
    assert [h.perturbation for h in out.hits] == [candidates[i] for i in np.argsort(effect)[:3]]
    assert out.hits[0].score == pytest.approx(-float(effect.min()), rel=1e-5)
    assert [h.rank for h in out.hits] == [1, 2, 3]
    assert out.n_candidates == 5


def test_embed_maps_counts_to_fixed_size_vectors(server: Server) -> None:
    client = server.client()
    genes = models.resolve(server.lake, "perturbation-mean", stage="production").load().gene_symbols
    counts = np.random.default_rng(0).poisson(2.0, size=(4, len(genes)))
    full = client.embed(counts)
    shuffled = np.random.default_rng(1).permutation(len(genes))
    again = client.embed(counts[:, shuffled], genes=[genes[i] for i in shuffled])  # any column order
    assert full.array().shape == (4, full.dim)
    assert full.genes_used == len(genes)
    np.testing.assert_allclose(again.array(), full.array(), rtol=1e-4, atol=1e-4)
    half = client.embed(counts[:, : len(genes) // 2 + 1], genes=genes[: len(genes) // 2 + 1])
    assert half.genes_missing == len(genes) - len(genes) // 2 - 1


def test_calls_land_in_predictions_and_sql_sees_them(server: Server) -> None:
    out = server.client().predict(["IRF1"], include_profile=False)

    def landed() -> bool:
        proc = run_cli(
            "sql",
            f"SELECT * FROM predictions WHERE request_id = '{out.request_id}'",
            "--format",
            "json",
            lake_dir=server.lake.root,
            check=True,
        )
        rows[:] = json.loads(proc.stdout)
        return bool(rows)

    rows: list[dict[str, object]] = []
    server.wait_for("the predictions row", landed, timeout_s=60)
    [row] = rows
    assert row["model"] == out.model.name
    assert row["version"] == out.model.version
    assert row["perturbations"] == ["IRF1"]
    assert json.loads(str(row["context"]))["api"] == "predict"
    assert "IRF1" in json.loads(str(row["summary"]))


def test_no_token_is_401_everywhere_but_health(server: Server) -> None:
    import httpx

    for path in ("/predict", "/screen", "/embed", "/decide", "/decide_json", "/reload"):
        resp = httpx.post(server.url + path, json={}, timeout=10)
        assert resp.status_code == 401, path
        assert resp.headers["www-authenticate"].startswith("Bearer")
        assert httpx.post(server.url + path, json={}, headers={"Authorization": "Bearer wrong"}).status_code == 401
    for path in ("/docs.json", "/metrics", "/"):
        assert httpx.get(server.url + path, timeout=10).status_code == 401, path
    for path in ("/livez", "/healthz", "/readyz"):
        assert httpx.get(server.url + path, timeout=10).status_code == 200, path
    with pytest.raises(AuthError, match="401"):
        server.client(token="wrong").predict("STAT1")
    with pytest.raises(AuthError, match="401"):
        server.feedback(token="").ping()  # what an agent checks once before its run
    assert server.feedback().ping().ready


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"perturbations": []}, 400, "perturbations: List should have at least 1 item"),
        ({"perturbations": ["NOTAGENE", "STAT1+FOO"]}, 422, "unknown perturbation(s): NOTAGENE, STAT1+FOO"),
        ({"perturbations": ["++"]}, 422, "unknown perturbation"),
        ({"perturbations": "STAT1"}, 400, "perturbations: Input should be a valid array"),
        ({"perturbations": ["STAT1"], "top_k": 0}, 400, "top_k"),
        ({"perturbations": ["STAT1"], "contxt": {}}, 400, "contxt: Extra inputs are not permitted"),
        ({"perturbations": ["STAT1"], "context": {"dataset": "norman2019"}}, 422, "trained on dataset"),
        ({"perturbations": ["STAT1"] * 3, "context": {"n_cells": 1000}}, 422, "predicted cells"),
    ],
)
def test_bad_predict_input_is_a_4xx_that_says_why(server: Server, body: object, status: int, message: str) -> None:
    resp = server.post("/predict", json=body)
    assert resp.status_code == status, resp.text
    assert message in resp.json()["error"] + resp.json().get("detail", "")


def test_bad_screen_and_embed_input(server: Server) -> None:
    cases = [
        ("/screen", {"candidates": ["STAT1"], "program": {"genes": ["NOTAGENE"]}}, 422, "unknown program gene"),
        ("/screen", {"candidates": ["STAT1"], "program": {"genes": ["IFIT1"]}}, 422, "none of the program's genes"),
        ("/screen", {"candidates": ["STAT1"], "program": {"genes": ["STAT1"], "weights": [1, 2]}}, 422, "weights"),
        ("/screen", {"candidates": [], "program": {"genes": ["STAT1"]}}, 400, "candidates"),
        ("/embed", {"counts": []}, 400, "counts"),
        ("/embed", {"counts": [[1, 2], [3]], "genes": ["STAT1", "JAK2"]}, 422, "expected 2"),
        ("/embed", {"counts": [[-1, 2]], "genes": ["STAT1", "JAK2"]}, 400, "greater than or equal to 0"),
        ("/embed", {"counts": [[1, 2]], "genes": ["STAT1", "JAK2"]}, 422, "at least half"),
        ("/embed", {"counts": [[1]], "genes": ["NOTAGENE"]}, 422, "unknown gene"),
    ]
    for path, body, status, message in cases:
        resp = server.post(path, json=body)
        assert resp.status_code == status, (path, body, resp.text)
        assert message in resp.json()["error"] + resp.json().get("detail", ""), resp.text
    with pytest.raises(RequestError, match="unknown perturbation"):
        server.client().predict(["NOTAGENE"])
