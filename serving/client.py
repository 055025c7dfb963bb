"""Python clients of the served models, with timeouts and retries.

An in-silico experiment in three lines (the token comes from `$CELLFARM_API_TOKEN`)::

    from serving.client import Client
    vc = Client("http://127.0.0.1:3000")
    print(vc.predict(["STAT1", "JAK2+STAT1"]).top_genes())

A microscope's feedback (what acquisition's `remote` policy uses): `FeedbackClient(url).decide(frame, meta)`
sends the plane as a binary `.npy` body and returns the `FrameDecision`, with short timeouts: a late decision
is worth nothing to a running acquisition.

Retried: connection errors, timeouts, 429 / 502 / 503 / 504 (honouring `Retry-After`), with exponential
backoff; `FeedbackClient` does not retry a shed frame (429 / 503: `UnavailableError` at once). Not retried:
4xx (`RequestError`, `AuthError`: the request itself is wrong) and 500 (`ServingError`).
Light to import: httpx, numpy and pydantic; no BentoML, no torch.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeVar

import httpx
import numpy as np
import numpy.typing as npt
from pydantic import BaseModel

from serving._config import ENV_TOKEN
from serving._frames import FRAME_HEADER, NPY_MEDIA_TYPE, encode_npy, meta_header
from serving._schemas import (
    Context,
    EmbedRequest,
    EmbedResponse,
    FrameDecision,
    FrameMeta,
    GeneProgram,
    PredictRequest,
    PredictResponse,
    ScreenRequest,
    ScreenResponse,
    Status,
)

__all__ = [
    "DEFAULT_URL",
    "ENV_URL",
    "AuthError",
    "Client",
    "FeedbackClient",
    "RequestError",
    "ServingError",
    "UnavailableError",
]

ENV_URL = "CELLFARM_SERVE_URL"
DEFAULT_URL = "http://127.0.0.1:3000"
_RETRY_STATUS = frozenset({429, 502, 503, 504})
_MAX_RETRY_AFTER_S = 10.0
M = TypeVar("M", bound=BaseModel)


class ServingError(Exception):
    """A request the server did not answer with success; `status` is the HTTP status (None: no answer)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class AuthError(ServingError):
    """401: no token, or the wrong one (set CELLFARM_API_TOKEN or pass token=)."""


class RequestError(ServingError):
    """4xx: the request is wrong (unknown gene, bad frame, ...); the message says what."""


class UnavailableError(ServingError):
    """The server could not be reached or stayed overloaded through every retry."""


def _message(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text.strip()[:300] or resp.reason_phrase
    if isinstance(body, list) and body and isinstance(body[0], dict):
        body = body[0]
    if isinstance(body, dict):
        msg = str(body.get("error") or body.get("detail") or body)
        detail = body.get("detail")
        if isinstance(detail, list) and detail and isinstance(detail[0], dict):  # pydantic: name the field
            first = detail[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            msg = f"{msg}: {where}: {first.get('msg', '')}".strip(": ")
        return msg[:500]
    return str(body)[:300]


class _Http:
    def __init__(
        self,
        url: str | None,
        token: str | None,
        timeout_s: float,
        retries: int,
        backoff_s: float,
        retry_status: frozenset[int] = _RETRY_STATUS,
    ) -> None:
        self.retry_status = retry_status
        self.url = (url or os.environ.get(ENV_URL) or DEFAULT_URL).rstrip("/")
        token = token if token is not None else os.environ.get(ENV_TOKEN)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.retries, self.backoff_s = max(int(retries), 0), backoff_s
        self.client = httpx.Client(base_url=self.url, timeout=timeout_s, headers=headers)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        last = ""
        for attempt in range(self.retries + 1):
            wait = self.backoff_s * 2**attempt
            try:
                resp = self.client.request(method, path, **kwargs)
            except httpx.TransportError as exc:  # refused, reset, timed out: worth another try
                last = f"{type(exc).__name__}: {exc}".rstrip(": ")
            else:
                if resp.status_code < 400:
                    return resp
                if resp.status_code == 401:
                    raise AuthError(f"401 from {self.url}{path}: {_message(resp)}", 401)
                if resp.status_code in _RETRY_STATUS and resp.status_code not in self.retry_status:
                    raise UnavailableError(
                        f"{resp.status_code} from {self.url}{path}: {_message(resp)}", resp.status_code
                    )
                if resp.status_code not in self.retry_status:
                    cls = RequestError if resp.status_code < 500 else ServingError
                    raise cls(f"{resp.status_code} from {self.url}{path}: {_message(resp)}", resp.status_code)
                last = f"{resp.status_code}: {_message(resp)}"
                with contextlib.suppress(ValueError):
                    wait = max(wait, min(float(resp.headers.get("retry-after", 0)), _MAX_RETRY_AFTER_S))
            if attempt < self.retries:
                time.sleep(wait)
        raise UnavailableError(f"{self.url}{path}: no answer after {self.retries + 1} tries ({last})")

    def post_model(self, path: str, body: BaseModel, out: type[M]) -> M:
        resp = self.request("POST", path, content=body.model_dump_json(), headers={"content-type": "application/json"})
        return out.model_validate_json(resp.content)

    def status(self) -> Status:
        """`GET /readyz`, not retried: a 503 there is an answer (not ready yet), not an error."""
        try:
            resp = self.client.get("/readyz")
        except httpx.TransportError as exc:
            raise UnavailableError(f"{self.url}/readyz: {type(exc).__name__}: {exc}") from None
        if resp.status_code in (200, 503) and resp.headers.get("content-type", "").startswith("application/json"):
            return Status.model_validate_json(resp.content)
        raise ServingError(f"{resp.status_code} from {self.url}/readyz: {_message(resp)}", resp.status_code)

    def wait_ready(self, timeout_s: float) -> Status:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                status = self.status()
                if status.ready:
                    return status
                why = "; ".join(status.errors) or "not ready"
            except UnavailableError as exc:
                why = str(exc)
            if time.monotonic() > deadline:
                raise UnavailableError(f"{self.url} not ready after {timeout_s:.0f} s: {why}")
            time.sleep(0.25)


class _Base:
    def __init__(self, http: _Http) -> None:
        self._http = http

    @property
    def url(self) -> str:
        return self._http.url

    def status(self) -> Status:
        """What is served (names, versions) and whether it is ready."""
        return self._http.status()

    def wait_ready(self, timeout_s: float = 60.0) -> Status:
        return self._http.wait_ready(timeout_s)

    def ping(self, timeout_s: float = 10.0) -> Status:
        """Ready, and the token accepted (`AuthError` if not): what a caller checks once before relying on it."""
        status = self.wait_ready(timeout_s)
        self.authorize()
        return status

    def authorize(self) -> None:
        """Raise `AuthError` unless the server accepts this client's token."""
        self._http.request("GET", "/docs.json")

    def reload(self) -> Status:
        """Load the registry's production versions now (the server also polls for them)."""
        return self._http.post_model("/reload", _Empty(), Status)

    def close(self) -> None:
        self._http.client.close()

    def __enter__(self: Any) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Empty(BaseModel):
    pass


class Client(_Base):
    """In-silico experiments against `VirtualCell` (served by `cellfarm serve`)."""

    def __init__(
        self,
        url: str | None = None,
        *,
        token: str | None = None,
        timeout_s: float = 60.0,
        retries: int = 3,
        backoff_s: float = 0.25,
    ) -> None:
        super().__init__(_Http(url, token, timeout_s, retries, backoff_s))

    def predict(
        self,
        perturbations: str | Sequence[str],
        *,
        dataset: str = "",
        cell_line: str = "",
        n_cells: int = 0,
        top_k: int = 10,
        include_profile: bool = True,
        seed: int = 0,
    ) -> PredictResponse:
        """Predicted profiles: `perturbations` are gene symbols or Ensembl ids, "A+B" for a combination."""
        perts = [perturbations] if isinstance(perturbations, str) else list(perturbations)
        req = PredictRequest(
            perturbations=perts,
            context=Context(dataset=dataset, cell_line=cell_line, n_cells=n_cells),
            top_k=top_k,
            include_profile=include_profile,
            seed=seed,
        )
        return self._http.post_model("/predict", req, PredictResponse)

    def screen(
        self,
        candidates: Sequence[str],
        program: Sequence[str] | Mapping[str, float],
        *,
        direction: Literal["up", "down", "any"] = "up",
        name: str = "",
        top_k: int = 20,
        dataset: str = "",
    ) -> ScreenResponse:
        """Rank `candidates` by their predicted effect on `program` (genes, or genes -> weights)."""
        if isinstance(program, Mapping):
            genes, weights = list(program), [float(w) for w in program.values()]
        else:
            genes, weights = list(program), []
        req = ScreenRequest(
            candidates=list(candidates),
            program=GeneProgram(name=name, genes=genes, weights=weights, direction=direction),
            context=Context(dataset=dataset),
            top_k=top_k,
        )
        return self._http.post_model("/screen", req, ScreenResponse)

    def embed(self, counts: npt.ArrayLike, genes: Sequence[str] | None = None) -> EmbedResponse:
        """Embeddings of cells (rows of raw `counts`, columns `genes`; default: the model's genes in order)."""
        matrix = np.asarray(counts, dtype=np.float64)
        if matrix.ndim != 2:
            raise RequestError(f"counts must be cells x genes (2-D), not shape {list(matrix.shape)}")
        req = EmbedRequest(counts=matrix.tolist(), genes=list(genes or []))
        return self._http.post_model("/embed", req, EmbedResponse)


class FeedbackClient(_Base):
    """A microscope's client of `Feedback`: one frame in (binary), the recommended actions out."""

    def __init__(
        self,
        url: str | None = None,
        *,
        token: str | None = None,
        timeout_s: float = 2.0,
        retries: int = 1,
        backoff_s: float = 0.05,
    ) -> None:
        # a shed frame (429/503) is not retried: by the time the server could take it, the microscope has
        # moved on; the agent carries on without feedback for that frame
        super().__init__(_Http(url, token, timeout_s, retries, backoff_s, frozenset({502, 504})))

    def decide(self, image: npt.ArrayLike, meta: FrameMeta | Mapping[str, Any] | None = None) -> FrameDecision:
        """Send a 2-D uint16 (or uint8) plane with its metadata (a `FrameMeta`, or a dict of its fields)."""
        info = meta if isinstance(meta, FrameMeta) else FrameMeta.model_validate(dict(meta or {}))
        resp = self._http.request(
            "POST",
            "/decide",
            content=encode_npy(np.asarray(image)),
            headers={"content-type": NPY_MEDIA_TYPE, FRAME_HEADER: meta_header(info)},
        )
        decisions = resp.json()
        if not isinstance(decisions, list) or len(decisions) != 1:
            raise ServingError(f"{self.url}/decide answered {type(decisions).__name__}, not one decision")
        return FrameDecision.model_validate(decisions[0])
