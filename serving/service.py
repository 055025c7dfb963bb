"""`CellFarm`: both services in one process behind one port, what `cellfarm serve` and `bentoml build` run.

One process rather than BentoML's entry-service-plus-dependencies layout: a frame or a prediction then takes no
extra hop between processes (the feedback latency budget is tens of milliseconds), and a 2-core machine runs one
copy of torch, not three. Each half keeps its own threads and its own load-shedding bound, so an in-silico
screen storm cannot starve the microscopes. For separate scaling, serve `serving.virtual_cell:VirtualCell` and
`serving.feedback:Feedback` as two deployments: the APIs and the client are the same.
"""

from __future__ import annotations

import bentoml

from serving._base import guard_config
from serving._middleware import Guard
from serving.feedback import FB_ROUTES, TRAFFIC, FeedbackAPI
from serving.virtual_cell import VC_ROUTES, VirtualCellAPI

__all__ = ["CellFarm", "CellFarmAPI"]


class CellFarmAPI(VirtualCellAPI, FeedbackAPI):
    """The in-silico experiment APIs and the microscope feedback APIs (see their modules)."""


CellFarm = bentoml.service(name="CellFarm", traffic=TRAFFIC, workers=1)(CellFarmAPI)
CellFarm.add_asgi_middleware(Guard, config=guard_config({**VC_ROUTES, **FB_ROUTES}))
