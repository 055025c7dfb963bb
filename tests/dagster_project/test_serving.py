"""The serving domain against a real `cellfarm serve` on 127.0.0.1: `production_model` promotes a newly evaluated
version and `served_model` has the running service load it (the server's registry poll is off, so only the reload
can have done it); with no server, or the wrong token, `served_model` fails saying what to do."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

import lake
import models
from tests.dagster_project.conftest import metadata_of
from tests.dagster_project.test_training import Env, failure, make_env
from tests.models.conftest import HOLDOUT, free_port
from tests.serving.conftest import Server, run_server


@pytest.fixture(scope="module")
def env(papalexi_lake: lake.Lake, tmp_path_factory: pytest.TempPathFactory) -> Env:
    """A lake whose production model is `perturbation-mean:1` (promoted without the gate, as serving tests do)."""
    env = make_env(papalexi_lake, tmp_path_factory.mktemp("dagster-serving"))
    record = models.train(env.lake, "perturbation-mean", "papalexi2021", holdout=HOLDOUT)
    models.set_stage(env.lake, record, "production")
    return env


@pytest.fixture(scope="module")
def server(env: Env, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Future[Server]]:
    """`cellfarm serve` over the env's lake, its registry poll off, started in the background: a test waits for it
    (`.result()`) when it needs it, so that the server's start overlaps the Dagster run before."""
    home = tmp_path_factory.mktemp("bentoml")
    with ThreadPoolExecutor(1) as pool, contextlib.ExitStack() as stack:
        started = pool.submit(stack.enter_context, run_server(env.lake, home, CELLFARM_SERVE_POLL_S="0"))
        try:
            yield started
        finally:
            started.exception()  # a start still under way finishes first, so that the stack stops the server


def _served(server: Server) -> str:
    return next(f"{m.name}:{m.version}" for m in server.client().status().models if m.service == "VirtualCell")


def test_promote_and_serve_has_the_service_load_the_promoted_version(env: Env, server: Future[Server]) -> None:
    env.perturbation_mean_round(HOLDOUT)  # while the server starts
    srv = server.result()
    assert _served(srv) == "perturbation-mean:1"

    result = env.run(job="promote_and_serve", serving_url=srv.url, token=srv.token, partition=None)
    promoted = metadata_of(result, "production_model")
    assert promoted["model"] == "perturbation-mean:2"
    assert promoted["previous_production"] == "perturbation-mean:1"
    assert promoted["changed"] is True
    assert [(r.ref, r.stage) for r in models.list_models(env.lake)] == [
        ("perturbation-mean:1", "archived"),
        ("perturbation-mean:2", "production"),
    ]
    served = metadata_of(result, "served_model")
    assert served["model"] == "perturbation-mean:2"
    assert served["reloaded"] is True
    # the server itself says so (its poll is off: the reload did it), and answers with that version
    assert _served(srv) == "perturbation-mean:2"
    assert srv.client().predict(["STAT1"]).model.version == "2"

    # again: nothing new to promote, the service already serves it
    again = env.run(job="promote_and_serve", serving_url=srv.url, token=srv.token, partition=None)
    assert metadata_of(again, "production_model")["changed"] is False
    assert metadata_of(again, "served_model")["model"] == "perturbation-mean:2"


def test_served_model_without_a_server_says_how_to_start_one(env: Env) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = env.run("served_model", serving_url=url, partition=None, raise_on_error=False)
    assert failure(result, "served_model") == (
        f"no model service answers at {url}: start it with `cellfarm serve` (with CELLFARM_API_TOKEN set to the "
        "serving resource's token), then materialize served_model again"
    )


def test_served_model_with_the_wrong_token_says_so(env: Env, server: Future[Server]) -> None:
    url, wrong = server.result().url, "not-the-token"
    result = env.run("served_model", serving_url=url, token=wrong, partition=None, raise_on_error=False)
    assert "refused the token" in failure(result, "served_model")
