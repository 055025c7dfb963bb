"""moto's S3 server on 127.0.0.1 for tests of an `s3://` lake: `moto_s3()` starts it, makes a bucket and points
the standard AWS variables at it; the `s3` fixture of tests/conftest.py gives one to a test module."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_cli

BUCKET = "cellfarm-lake"
SECRET = f"test-secret-{uuid.uuid4().hex}"  # must never appear in any output

# moto's S3 in a process of its own: deltalake calls hold the GIL while they wait for the server, so a server
# thread in the test's process would never answer. moto checks ``If-None-Match`` and then stores the object
# without a lock across its request threads, so two racing conditional puts could both win, where S3, MinIO and
# R2 decide them atomically: serving one request at a time gives moto the same atomicity. Every refused commit
# (a 412 on a ``_delta_log/`` key) is a line on the server's stderr.
_SERVER = """
import logging, sys, threading
from werkzeug.serving import make_server
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app

logging.getLogger("werkzeug").setLevel(logging.WARNING)
app, lock = DomainDispatcherApplication(create_backend_app), threading.Lock()

def one_at_a_time(environ, start_response):
    def start(status, headers, *exc_info):
        if status.startswith("412") and "/_delta_log/" in environ.get("PATH_INFO", ""):
            print("refused commit", environ["PATH_INFO"], file=sys.stderr, flush=True)
        return start_response(status, headers, *exc_info)

    with lock:
        return list(app(environ, start))

server = make_server("127.0.0.1", 0, one_at_a_time, threaded=True, request_handler=MotoRequestHandler)
print(server.server_port, flush=True)
server.serve_forever()
"""


@dataclass
class S3:
    endpoint: str
    log: Path  # the server's stderr
    outputs: list[str] = field(default_factory=list)  # every CLI output, checked for the secret at the end

    def refused_commits(self, table: str) -> int:
        return sum(f"/delta/{table}/_delta_log/" in line for line in self.log.read_text().splitlines())

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")

    def keys(self, prefix: str) -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def cli(self, root: str, *args: str) -> subprocess.CompletedProcess[str]:
        proc = run_cli("--lake", root, *args)
        self.outputs.append(proc.stdout + proc.stderr)
        return proc


@contextmanager
def moto_s3(folder: Path) -> Iterator[S3]:
    """moto's S3 on a free port of 127.0.0.1, the bucket `BUCKET`, and the AWS variables pointing at it (restored
    on exit, as is every other variable set here); the server's log and a fresh `XDG_CACHE_HOME` (a remote
    lake's machine-local state) go under `folder`. On exit: no CLI output of `S3.cli` printed the secret key."""
    log = folder / "server.log"
    with log.open("w") as err:
        server = subprocess.Popen([sys.executable, "-c", _SERVER], stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        assert server.stdout is not None
        endpoint = f"http://127.0.0.1:{int(server.stdout.readline())}"
        with pytest.MonkeyPatch.context() as mp:
            for name in ("AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_PROFILE", "CELLFARM_LAKE"):
                mp.delenv(name, raising=False)
            mp.setenv("AWS_ENDPOINT_URL", endpoint)
            mp.setenv("AWS_ACCESS_KEY_ID", "cellfarm-test")
            mp.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
            mp.setenv("AWS_REGION", "us-east-1")
            mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
            mp.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata probing by the SDKs
            mp.setenv("XDG_CACHE_HOME", str(folder / "cache"))  # a remote lake's local state
            state = S3(endpoint, log)
            state.client().create_bucket(Bucket=BUCKET)
            yield state
    finally:
        server.kill()
        server.wait()
    leaked = [out for out in state.outputs if SECRET in out]
    assert not leaked, "the secret key was printed"
