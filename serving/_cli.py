"""`cellfarm serve`: the `CellFarm` service (VirtualCell + Feedback) on one host and port, until stopped."""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket
from pathlib import Path
from typing import Protocol

import lake
from serving._config import ENV_TOKEN

__all__ = ["SERVICE", "check_address", "serve"]

SERVICE = "serving.service:CellFarm"
ROOT = Path(__file__).resolve().parents[1]  # the folder holding the `serving` package: BentoML's working dir


class _Console(Protocol):
    def print(self, *objects: object, highlight: bool | None = None, soft_wrap: bool | None = None) -> None: ...


def check_address(host: str, port: int) -> str:
    """The address to bind (an IP: BentoML takes no host names), checked free; one-line errors otherwise."""
    host = "127.0.0.1" if host == "localhost" else host
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        raise lake.InvalidInputError(f"--host must be an IP address (e.g. 127.0.0.1), not {host!r}") from None
    if not 1 <= port <= 65535:
        raise lake.InvalidInputError(f"--port must be 1-65535, not {port}")
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise lake.InvalidInputError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
    return host


def serve(target: lake.Lake, *, host: str, port: int, console: _Console) -> None:
    """Serve the lake's production models; blocks until SIGINT / SIGTERM."""
    host = check_address(host, port)
    # The worker processes BentoML starts read their settings from the environment they inherit.
    os.environ[lake.ENV_LAKE] = target.root
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")  # no usage reports from a lab's server
    if not os.environ.get(ENV_TOKEN):
        os.environ[ENV_TOKEN] = secrets.token_urlsafe(32)
        console.print(
            f"{ENV_TOKEN}={os.environ[ENV_TOKEN]} (generated: clients send it as a bearer token; "
            f"set {ENV_TOKEN} to choose it)",
            highlight=False,
            soft_wrap=True,
        )
    console.print(
        f"serving the production models of {target.root} on http://{host}:{port} "
        "(VirtualCell: /predict /screen /embed; Feedback: /decide; GET /readyz)",
        highlight=False,
        soft_wrap=True,
    )
    import bentoml

    bentoml.serve(SERVICE, working_dir=str(ROOT), host=host, port=port, blocking=True)
