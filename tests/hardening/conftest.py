"""Fixtures for the fault and concurrency tests: child processes forked from a server that imported the lake once."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Iterator
from multiprocessing.context import ForkServerContext
from typing import Any

import pytest

WORKERS = "tests.hardening._workers"


@pytest.fixture(scope="session")
def forkserver() -> ForkServerContext:
    """A forkserver context whose server has imported the lake and the workers (a fork costs milliseconds; a fresh
    interpreter importing the lake costs seconds). The server imports but never opens a Delta table or a SOMA
    array, so no runtime thread exists yet when it forks."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([WORKERS])
    return ctx


@pytest.fixture
def children(forkserver: ForkServerContext) -> Iterator[Callable[..., Any]]:
    """Start a child on a function of `_workers`; every child still alive at the end of the test is killed."""
    started: list[Any] = []

    def start(target: Callable[..., None], *args: Any, **kwargs: Any) -> Any:
        proc = forkserver.Process(target=target, args=args, kwargs=kwargs, daemon=True)
        proc.start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.is_alive():
            proc.kill()
        proc.join(timeout=10)
