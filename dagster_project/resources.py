"""Resources shared by every domain: the lake, Ray, the served models and the drop folder.

Each field is read from the environment when its variable is set (``EnvVar``, shown as such in the UI), else it
takes the embedded default of ``make demo``, so ``dagster dev -m dagster_project`` works on a fresh clone.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg

import lake

if TYPE_CHECKING:
    from serving.client import Client

__all__ = ["RESOURCES", "DropFolderResource", "LakeResource", "RayResource", "ServingResource"]

ENV_RAY_ADDRESS = "CELLFARM_RAY_ADDRESS"
ENV_SERVING_URL = "CELLFARM_SERVING_URL"
ENV_API_TOKEN = "CELLFARM_API_TOKEN"
ENV_DROP = "CELLFARM_DROP"
DEFAULT_DROP = ".cellfarm/drop"


class LakeResource(dg.ConfigurableResource):
    """The lake: a local folder or ``s3://bucket/prefix``."""

    root: str = lake.DEFAULT_LAKE

    def open(self) -> lake.Lake:
        return lake.Lake.open(self.root)


class RayResource(dg.ConfigurableResource):
    """Where training and evaluation run: a cluster address, or empty for a local Ray started by the step."""

    address: str = ""
    workers: int = 2

    @property
    def ray_address(self) -> str | None:
        return self.address or None


class ServingResource(dg.ConfigurableResource):
    """The running BentoML services (``cellfarm serve``) and the bearer token they ask for."""

    url: str = "http://127.0.0.1:3000"
    token: str = ""

    def client(self, *, timeout_s: float = 10.0) -> Client:
        from serving.client import Client

        return Client(self.url, token=self.token or None, timeout_s=timeout_s)


class DropFolderResource(dg.ConfigurableResource):
    """Where new source files land: ``atlas/*.h5ad`` and ``hpa/*.tsv`` are picked up by sensors."""

    path: str = DEFAULT_DROP

    def folder(self, kind: str) -> Path:
        return Path(self.path).expanduser() / kind


def _env(name: str, default: str) -> str:
    # An EnvVar only where the variable is set: an unset EnvVar fails the whole code location at load.
    return dg.EnvVar(name) if os.environ.get(name) else default


def _resources() -> dict[str, dg.ConfigurableResource]:
    return {
        "lake": LakeResource(root=_env(lake.ENV_LAKE, lake.DEFAULT_LAKE)),
        "ray": RayResource(address=_env(ENV_RAY_ADDRESS, "")),
        "serving": ServingResource(url=_env(ENV_SERVING_URL, "http://127.0.0.1:3000"), token=_env(ENV_API_TOKEN, "")),
        "drop": DropFolderResource(path=_env(ENV_DROP, DEFAULT_DROP)),
    }


RESOURCES = _resources()
