"""The services' front door (one ASGI middleware): readiness, bearer-token auth, body limits, load shedding,
and one error shape.

In order, for each HTTP request:
1. `GET /livez`, `/healthz`: passed through, no token. `GET /readyz`: answered here with the served model
   names and versions (JSON; 200 when ready, else 503), no token.
2. Anything else needs `Authorization: Bearer $CELLFARM_API_TOKEN`: 401 otherwise (and always, when the
   server has no token configured: fail closed).
3. Bodies over the route's limit: 413, before the body is read (from Content-Length) or while buffering it
   (chunked uploads).
4. Each API group (the microscope feedback APIs, the VirtualCell APIs) has its own bound on requests in
   flight; beyond it a request is shed at once with 503 and `Retry-After`, before its body is read (a shed
   frame costs next to nothing), so an in-silico screen storm cannot starve the microscopes, and a queue
   never grows without bound. A service may tighten its bound from what it measures (Feedback admits what
   it can decide within its latency budget). BentoML's own shedding (429 from
   `max_concurrency`, 503 from the adaptive batcher when a frame cannot meet its latency budget) gets a
   `Retry-After` too.
5. Error bodies are one JSON object `{"error": "...", ...}` (BentoML answers some 4xx as a one-element list).
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Guard", "GuardConfig"]

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = frozenset({"/livez", "/healthz"})
READY_PATH = "/readyz"
RETRY_AFTER_S = 1


@dataclass(frozen=True)
class GuardConfig:
    token: str | None = field(repr=False)  # never in a log line or a traceback
    groups: dict[str, str]  # API path -> group name
    inflight: dict[str, int]  # group -> requests in flight before shedding
    body_limit: dict[str, int]  # group -> bytes ("" : every other path)
    status: Callable[[], tuple[bool, dict[str, Any]]] | None = None  # readiness: (ready, JSON body)
    unavailable: Callable[[str], str | None] | None = None  # group -> why it cannot answer now (None: it can)
    limit: Callable[[str], int | None] | None = None  # group -> a tighter in-flight bound now (None: the static one)


async def _send_json(send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]]) -> None:
    payload = json.dumps(body, default=str).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class Guard:
    def __init__(self, app: ASGIApp, config: GuardConfig) -> None:
        self.app = app
        self.config = config
        self._token = (config.token or "").encode()
        self._inflight = dict.fromkeys(config.inflight, 0)
        self.shed = dict.fromkeys(config.inflight, 0)
        if not self._token:
            log.error("CELLFARM_API_TOKEN is not set: every request but health and readiness is refused (401)")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        if path in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        if path == READY_PATH:
            await self._ready(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if not self._authorized(headers.get(b"authorization", b"")):
            await _send_json(
                send,
                401,
                {"error": "missing or wrong bearer token: send 'Authorization: Bearer $CELLFARM_API_TOKEN'"},
                [(b"www-authenticate", b'Bearer realm="cellfarm"')],
            )
            return
        group = self.config.groups.get(path, "")
        limit = self.config.body_limit.get(group, self.config.body_limit.get("", 1 << 20))
        receive_body = await self._limited(scope, receive, send, headers, limit)
        if receive_body is None:
            return
        if group and self.config.unavailable is not None and (why := self.config.unavailable(group)):
            await _send_json(send, 503, {"error": why}, [(b"retry-after", str(RETRY_AFTER_S).encode())])
            return
        bound = self.config.inflight.get(group)
        if bound is not None and self.config.limit is not None and (now := self.config.limit(group)) is not None:
            bound = min(bound, now)
        if bound is not None and self._inflight[group] >= bound:
            self.shed[group] += 1
            await _send_json(
                send,
                503,
                {"error": f"overloaded: {bound} {group} requests in flight; retry in {RETRY_AFTER_S} s"},
                [(b"retry-after", str(RETRY_AFTER_S).encode())],
            )
            return
        if bound is not None:
            self._inflight[group] += 1
        try:
            await self.app(scope, receive_body, _ErrorShape(send))
        finally:
            if bound is not None:
                self._inflight[group] -= 1

    def _authorized(self, header: bytes) -> bool:
        scheme, _, token = header.partition(b" ")
        return bool(self._token) and scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self._token)

    async def _ready(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.config.status is None or scope.get("method") not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        try:
            ready, body = self.config.status()
        except Exception as exc:  # not started yet, or shutting down
            ready, body = False, {"ready": False, "models": [], "errors": [str(exc)]}
        await _send_json(send, 200 if ready else 503, body, [])

    async def _limited(
        self, scope: Scope, receive: Receive, send: Send, headers: dict[bytes, bytes], limit: int
    ) -> Receive | None:
        """The `receive` to hand on, or None when a 4xx was sent. A declared length is checked up front; a body
        without one (chunked) is read here up to the limit and replayed."""
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await _send_json(send, 400, {"error": "Content-Length is not a number"}, [])
                return None
            if size > limit:
                await _send_json(send, 413, {"error": f"body of {size} bytes is over this route's {limit}"}, [])
                return None
            return receive
        if scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            return receive
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body = message.get("body", b"")
            total += len(body)
            if total > limit:
                await _send_json(send, 413, {"error": f"body over this route's {limit} bytes"}, [])
                return None
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replayed() -> Message:
            return replay.pop() if replay else await receive()

        return replayed


def _error_body(body: bytes) -> bytes:
    """`{"error": "one line", "detail": "..."}`: the shape the published OpenAPI gives errors (BentoML answers
    some 4xx as a one-element list, and validation errors with a list of pydantic errors as `detail`)."""
    try:
        parsed = json.loads(body) if body else None
    except ValueError:
        return body
    if isinstance(parsed, list) and len(parsed) == 1 and isinstance(parsed[0], dict):
        parsed = parsed[0]
    if not isinstance(parsed, dict):
        return body
    detail = parsed.get("detail")
    if isinstance(detail, list):  # pydantic errors: where and what, in words
        parts = []
        for err in detail[:5]:
            if isinstance(err, dict):
                where = ".".join(str(p) for p in err.get("loc", ())) or "body"
                parts.append(f"{where}: {err.get('msg', 'invalid')}")
        parsed["detail"] = "; ".join(parts)
        if parts:
            parsed["error"] = f"invalid request: {parts[0]}" + (
                f" (and {len(detail) - 1} more)" if len(detail) > 1 else ""
            )
    elif detail is not None and not isinstance(detail, str):
        parsed["detail"] = json.dumps(detail, default=str)
    return json.dumps(parsed).encode()


class _ErrorShape:
    """Adds Retry-After to 429/503 answers and unwraps one-element JSON list error bodies."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.start: Message | None = None
        self.body = b""

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            status = int(message["status"])
            if status < 400:
                await self.send(message)
                return
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"content-length"]
            if status in (429, 503) and not any(k.lower() == b"retry-after" for k, _ in headers):
                headers.append((b"retry-after", str(RETRY_AFTER_S).encode()))
            self.start = {**message, "headers": headers}
            return
        if self.start is None:
            await self.send(message)
            return
        self.body += message.get("body", b"")
        if message.get("more_body", False):
            return
        body = _error_body(self.body)
        start, self.start = self.start, None
        start["headers"] = [*start["headers"], (b"content-length", str(len(body)).encode())]
        await self.send(start)
        await self.send({"type": "http.response.body", "body": body})
