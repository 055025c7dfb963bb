"""A writer lock kept on the object store itself, for a lake that several machines write (``s3://``).

The local ``flock`` of :mod:`lake._lock` only orders writers on one machine. A lease is one object,
``<lake>/_state/<name>.lease``, holding its owner and an expiry:

- it is created with ``If-None-Match: *``, so of two writers only one can create it;
- its holder renews it from a thread every ttl/3 by compare-and-swap (``If-Match: <etag>``);
- a holder that died stops renewing; a waiter takes an expired lease over, again by compare-and-swap on the
  etag it read, so two waiters can never both take it.

The machines' clocks must agree to well within ``ttl_s`` (NTP does). A holder stalled for longer than the ttl
loses the lease; it finds out at its next renewal and logs it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from lake._errors import LakeBusyError
from lake._storage import filesystem

__all__ = ["lease", "lease_held"]

log = logging.getLogger(__name__)


def _body(owner: str, ttl_s: float) -> bytes:
    return json.dumps({"owner": owner, "expires_at": time.time() + ttl_s}).encode()


class _Lease:
    def __init__(self, uri: str, ttl_s: float) -> None:
        self.fs, path = filesystem(uri)
        self.bucket, self.key = path.split("/", 1)
        self.uri = uri
        self.ttl_s = ttl_s
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.etag: str | None = None
        self._stop = threading.Event()
        self._renewer = threading.Thread(target=self._renew_loop, name="lake-lease", daemon=True)

    def _put(self, **condition: str) -> str | None:
        """One conditional put of a fresh body; the new etag, or None when the condition failed."""
        try:
            out: dict[str, Any] = self.fs.call_s3(
                "put_object", Bucket=self.bucket, Key=self.key, Body=_body(self.owner, self.ttl_s), **condition
            )
        except OSError:  # 412 Precondition Failed (or 409 for a concurrent conditional write): someone else won
            return None
        return str(out["ETag"])

    def _expired_etag(self) -> str | None:
        """The etag of the current lease if it has expired (or vanished: then "" for a plain create)."""
        try:
            info = self.fs.info(f"{self.bucket}/{self.key}", refresh=True)
            body = json.loads(self.fs.cat_file(f"{self.bucket}/{self.key}"))  # read after the etag: never older
        except FileNotFoundError:
            return ""
        except (OSError, ValueError):
            return None
        return str(info["ETag"]) if float(body.get("expires_at", 0)) < time.time() else None

    def acquire(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            self.etag = self._put(IfNoneMatch="*")
            if self.etag is None:
                stale = self._expired_etag()
                if stale == "":
                    continue  # released between our create and our read: create again
                if stale is not None:
                    self.etag = self._put(IfMatch=stale)
                    if self.etag is not None:
                        log.warning("took over the expired lease %s", self.uri)
            if self.etag is not None:
                self._renewer.start()
                return
            if time.monotonic() >= deadline:
                raise LakeBusyError(f"another writer holds {self.uri} for over {timeout_s:.0f} s")
            time.sleep(min(1.0, self.ttl_s / 10))

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            assert self.etag is not None
            etag = self._put(IfMatch=self.etag)
            if etag is None:
                log.error("lost the lease %s (stalled past its ttl); another writer may hold it", self.uri)
                return
            self.etag = etag

    def release(self) -> None:
        self._stop.set()
        if self._renewer.is_alive():
            self._renewer.join()
        try:
            info = self.fs.info(f"{self.bucket}/{self.key}", refresh=True)
            if info["ETag"] == self.etag:  # never delete a lease someone took over
                self.fs.rm_file(f"{self.bucket}/{self.key}")
        except OSError as e:  # an expired lease is taken over anyway; a failed delete only delays the next writer
            log.warning("could not release the lease %s: %s", self.uri, e)


@contextmanager
def lease(uri: str, *, ttl_s: float = 30.0, timeout_s: float = 600.0) -> Iterator[None]:
    """Hold the lease object at ``uri`` (``s3://...``) for the block, across machines."""
    held = _Lease(uri, ttl_s)
    held.acquire(timeout_s)
    try:
        yield
    finally:
        held.release()


def lease_held(uri: str) -> bool:
    """Whether a live holder keeps the lease at ``uri`` (it exists and has not expired)."""
    fs, path = filesystem(uri)
    try:
        body = json.loads(fs.cat_file(path))
    except FileNotFoundError:
        return False
    except ValueError:  # a torn or foreign object: treat as held until it expires by age, never steal it blindly
        return True
    return float(body.get("expires_at", 0)) >= time.time()
