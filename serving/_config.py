"""Server settings, read once per worker process from the environment (`cellfarm serve` sets them).

Environment variables (all optional but the token):
- `CELLFARM_API_TOKEN`: the bearer token every request but health and readiness must carry. Unset: every
  request is refused (fail closed); `cellfarm serve` generates one and prints it.
- `CELLFARM_LAKE`: the lake whose registry is served (the `lake` package's default otherwise).
- `CELLFARM_SERVE_MODEL`: the perturbation model name VirtualCell serves (default: the newest production one).
- `CELLFARM_SERVE_POLL_S`: how often the registry is polled for a newly promoted version (default 10; 0: never,
  `POST /reload` only).
- `CELLFARM_SERVE_LOG_FLUSH_S`: how often `predictions` rows are committed (default 2).
- `CELLFARM_SERVE_MAX_INFLIGHT_VC`, `CELLFARM_SERVE_MAX_INFLIGHT_FEEDBACK`: requests in flight per API group
  before new ones are shed with 503 + Retry-After (defaults 8 and 128).
- `CELLFARM_SERVE_MAX_BODY_MB_VC`, `CELLFARM_SERVE_MAX_BODY_MB_FEEDBACK`: request body limits (16 and 64 MiB).
- `CELLFARM_SERVE_TORCH_THREADS`: torch's CPU threads in the server (default: torch's, one per core; on cores shared
  with other busy processes, 1 is often faster).
- `CELLFARM_FEEDBACK_MAX_LATENCY_MS`: Feedback's adaptive-batching latency budget (250; read at import).
- `CELLFARM_FEEDBACK_MAX_BATCH`: the most frames Feedback decides in one model call (32; read at import; see
  infra/bentoml/README.md for sizing it to a farm).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

__all__ = ["ENV_TOKEN", "Settings"]

ENV_TOKEN = "CELLFARM_API_TOKEN"


def _num(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, not {raw!r}") from None
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {raw}")
    return value


@dataclass(frozen=True)
class Settings:
    token: str | None = field(repr=False)  # never in a log line or a traceback
    lake_root: str | None
    model_name: str | None
    poll_s: float
    log_flush_s: float
    max_inflight_vc: int
    max_inflight_feedback: int
    max_body_vc: int
    max_body_feedback: int
    torch_threads: int | None

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            token=os.environ.get(ENV_TOKEN) or None,
            lake_root=os.environ.get("CELLFARM_LAKE") or None,
            model_name=os.environ.get("CELLFARM_SERVE_MODEL") or None,
            poll_s=_num("CELLFARM_SERVE_POLL_S", 10.0),
            log_flush_s=max(_num("CELLFARM_SERVE_LOG_FLUSH_S", 2.0), 0.05),
            max_inflight_vc=max(int(_num("CELLFARM_SERVE_MAX_INFLIGHT_VC", 8)), 1),
            max_inflight_feedback=max(int(_num("CELLFARM_SERVE_MAX_INFLIGHT_FEEDBACK", 128)), 1),
            max_body_vc=int(_num("CELLFARM_SERVE_MAX_BODY_MB_VC", 16) * 2**20),
            max_body_feedback=int(_num("CELLFARM_SERVE_MAX_BODY_MB_FEEDBACK", 64) * 2**20),
            torch_threads=int(_num("CELLFARM_SERVE_TORCH_THREADS", 0)) or None,
        )
