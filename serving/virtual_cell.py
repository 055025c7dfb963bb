"""`VirtualCell`: in-silico experiments on the registry's production perturbation model.

- `POST /predict`: perturbations (symbols or Ensembl ids, "A+B" combinations) in a context -> each one's
  predicted mean profile, change against control, top up/down genes, and on request sampled predicted cells.
- `POST /screen`: candidate perturbations and a target gene program -> candidates ranked by predicted effect.
- `POST /embed`: cells (raw counts) -> embeddings (the model's encoder, or a PCA of its control cells).

Every answer names the model version; every call becomes a `predictions` row (committed in batches, off the
request path). Serve it alone with `bentoml serve serving.virtual_cell:VirtualCell`; `cellfarm serve` runs it
together with `Feedback` (see `serving.service`).
"""

from __future__ import annotations

from typing import Any

import bentoml
from bentoml.exceptions import ServiceUnavailable

import models
from serving import _perturb
from serving._base import ServiceBase, guard_config, unprocessable
from serving._genes import UnknownGenesError
from serving._middleware import Guard
from serving._perturb import InvalidRequestError, PerturbState, find_production, load_perturb_state
from serving._predlog import PredictionLog
from serving._reload import Served
from serving._schemas import (
    EmbedRequest,
    EmbedResponse,
    PredictRequest,
    PredictResponse,
    ScreenRequest,
    ScreenResponse,
    ServedModel,
)

__all__ = ["VC_ROUTES", "VirtualCell", "VirtualCellAPI"]

VC_GROUP = "virtual-cell"
VC_ROUTES = {"/predict": VC_GROUP, "/screen": VC_GROUP, "/embed": VC_GROUP}
TRAFFIC = {"timeout": 300, "max_concurrency": 512}  # BentoML's hard ceiling; the Guard sheds well before it


def _describe(state: PerturbState) -> ServedModel:
    return ServedModel(
        service="VirtualCell", **state.info.model_dump(), loaded_at=state.loaded_at, dataset=state.dataset
    )


class VirtualCellAPI(ServiceBase):
    def __init__(self) -> None:
        super().__init__()
        self._vc_pool = self._pool(2, "virtual-cell")
        self._predlog = PredictionLog(self.lake, flush_s=self.settings.log_flush_s)
        target, name = self.lake, self.settings.model_name
        self._vc: Served[models.ModelRecord, PerturbState] = Served(
            "VirtualCell",
            find=lambda: find_production(target, name),
            load=lambda r: load_perturb_state(target, r) if r is not None else None,
            ident=lambda r: r.ref if r is not None else "none",
        )
        self._serve("VirtualCell", VC_GROUP, self._vc, _describe)

    def _extra_status(self) -> dict[str, int]:
        return {
            **super()._extra_status(),
            "predictions_logged": self._predlog.logged,
            "predictions_pending": self._predlog.pending,
            "predictions_dropped": self._predlog.dropped,
        }

    def _close(self) -> None:
        self._predlog.close()
        super()._close()

    def _state(self) -> PerturbState:
        state = self._vc.state  # read once: the whole request runs on this version
        if state is None:
            raise ServiceUnavailable("no production perturbation model: promote one (cellfarm promote NAME:VERSION)")
        return state

    async def _call(self, fn: Any, request: Any, api: str, perturbations: list[str]) -> Any:
        state = self._state()
        try:
            response, summary = await self._in(self._vc_pool, fn, state, request)
        except (UnknownGenesError, InvalidRequestError, models.InvalidTrainingDataError) as exc:
            raise unprocessable(exc) from None
        # the request minus its bulk (the perturbations have their own column; counts and gene lists are data)
        context = request.model_dump(mode="json", exclude={"perturbations", "candidates", "counts", "genes"})
        self._predlog.log(
            response.request_id,
            model=state.record.name,
            version=str(state.record.version),
            perturbations=perturbations,
            context={"api": api, **context},
            summary=summary,
        )
        return response

    @bentoml.api(route="/predict")
    async def predict(self, request: PredictRequest, /) -> PredictResponse:
        """Predicted expression profiles of perturbations (single genes or "A+B" combinations)."""
        out: PredictResponse = await self._call(_perturb.predict, request, "predict", list(request.perturbations))
        return out

    @bentoml.api(route="/screen")
    async def screen(self, request: ScreenRequest, /) -> ScreenResponse:
        """Candidate perturbations ranked by their predicted effect on a gene program."""
        out: ScreenResponse = await self._call(_perturb.screen, request, "screen", list(request.candidates))
        return out

    @bentoml.api(route="/embed")
    async def embed(self, request: EmbedRequest, /) -> EmbedResponse:
        """Cells (raw counts) -> embeddings."""
        out: EmbedResponse = await self._call(_perturb.embed, request, "embed", [])
        return out


VirtualCell = bentoml.service(name="VirtualCell", traffic=TRAFFIC, workers=1)(VirtualCellAPI)
VirtualCell.add_asgi_middleware(Guard, config=guard_config(VC_ROUTES))
