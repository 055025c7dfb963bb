"""What every service shares: settings, the lake, the served models (hot-swapped), readiness and `/reload`.

Services are built by cooperative inheritance: `VirtualCellAPI` and `FeedbackAPI` each extend `ServiceBase`,
and `CellFarm` (both at once, in one process) extends both; each `__init__` calls `super().__init__()` once, so
the shared part is set up once whatever the combination.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar, TypeVar

import bentoml
from bentoml.exceptions import UnprocessableEntity

import lake
from serving._config import Settings
from serving._middleware import GuardConfig
from serving._reload import Served
from serving._schemas import ServedModel, Status

__all__ = ["ServiceBase", "current_status", "guard_config", "unprocessable"]

log = logging.getLogger(__name__)
T = TypeVar("T")
# uvicorn logs every request a second time after BentoML's own access line (which adds content types, sizes
# and latency): at a farm's frame rate the duplicate costs each /decide request a measurable share of its CPU
_DUPLICATE_ACCESS_LOG = "uvicorn.access"


def unprocessable(exc: Exception) -> UnprocessableEntity:
    return UnprocessableEntity(" ".join(str(exc).split())[:500])


class ServiceBase:
    """Settings, the lake and the registry-backed models every service holds."""

    service_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        logging.getLogger(_DUPLICATE_ACCESS_LOG).setLevel(logging.WARNING)
        self.settings = Settings.from_env()
        if self.settings.torch_threads:
            import torch

            torch.set_num_threads(self.settings.torch_threads)
        self.lake = lake.Lake.open(self.settings.lake_root)
        # (service, API group, what is served, how to describe a loaded state)
        self._served: list[tuple[str, str, Served[Any, Any], Callable[[Any], ServedModel]]] = []
        self._pools: list[ThreadPoolExecutor] = []

    def _serve(
        self, service: str, group: str, served: Served[Any, Any], describe: Callable[[Any], ServedModel]
    ) -> None:
        served.refresh()
        served.start(self.settings.poll_s)
        self._served.append((service, group, served, describe))

    def _pool(self, workers: int, name: str) -> ThreadPoolExecutor:
        pool = ThreadPoolExecutor(workers, thread_name_prefix=name)
        self._pools.append(pool)
        return pool

    @staticmethod
    async def _in(pool: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking model code on the service's own threads: the event loop keeps accepting requests
        (and shedding them) while a model runs."""
        return await asyncio.get_running_loop().run_in_executor(pool, functools.partial(fn, *args))

    def _extra_status(self) -> dict[str, int]:
        return {}

    def status(self) -> Status:
        models, errors, ready = [], [], True
        for service, _, served, describe in self._served:
            state = served.state
            if state is None:
                ready = False
                errors.append(served.error or f"{service}: nothing to serve yet")
                continue
            models.append(describe(state))
            if served.error:
                errors.append(served.error)
        return Status(ready=ready and bool(self._served), models=models, errors=errors, **self._extra_status())

    def unavailable(self, group: str) -> str | None:
        """Why the APIs of `group` cannot answer now (nothing loaded yet), or None."""
        for service, g, served, _ in self._served:
            if g == group and served.state is None:
                return served.error or f"{service} has no model to serve yet: promote one (see GET /readyz)"
        return None

    def inflight_limit(self, group: str) -> int | None:
        """A bound on `group`'s requests in flight tighter than the configured one, from what the service
        measures; None: the configured one. Called by the front door on every request: keep it cheap."""
        del group
        return None

    def __is_ready__(self) -> bool:
        return self.status().ready

    @bentoml.api(route="/reload")
    async def reload(self) -> Status:
        """Load the registry's production versions now (they are also polled); answers what is served."""
        for _, _, served, _ in self._served:
            await asyncio.get_running_loop().run_in_executor(None, served.refresh)
        return self.status()

    @bentoml.on_shutdown
    def _shutdown(self) -> None:
        for _, _, served, _ in self._served:
            served.stop()
        for pool in self._pools:
            pool.shutdown(wait=True, cancel_futures=True)
        self._close()

    def _close(self) -> None:
        """Subclasses flush what they hold (cooperatively: call super)."""


def current_status() -> tuple[bool, dict[str, Any]]:
    """Readiness for the front door (`GET /readyz`): the running service instance's `status()`."""
    svc = bentoml.get_current_service()
    status: Status = svc.status()
    return status.ready, status.model_dump(mode="json")


def guard_config(routes: dict[str, str]) -> GuardConfig:
    """The front door of a service whose API paths map to groups as `routes` says (settings from the env)."""
    s = Settings.from_env()
    return GuardConfig(
        token=s.token,
        groups=routes,
        inflight={"virtual-cell": s.max_inflight_vc, "feedback": s.max_inflight_feedback},
        body_limit={"virtual-cell": s.max_body_vc, "feedback": s.max_body_feedback, "": 1 << 20},
        status=current_status,
        unavailable=_unavailable,
        limit=_limit,
    )


def _limit(group: str) -> int | None:
    try:
        svc = bentoml.get_current_service()
    except Exception:  # not started yet
        return None
    bound: int | None = svc.inflight_limit(group)
    return bound


def _unavailable(group: str) -> str | None:
    try:
        svc = bentoml.get_current_service()
    except Exception:  # not started yet
        return "the service is starting"
    why: str | None = svc.unavailable(group)
    return why
