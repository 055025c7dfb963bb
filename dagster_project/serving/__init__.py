"""The serving domain: the promoted (production) model version, and the running BentoML service told to load it."""

from __future__ import annotations

import dagster as dg

from dagster_project.serving.jobs import promote_and_serve_job
from dagster_project.serving.production import production_model
from dagster_project.serving.served import served_model

__all__ = ["defs"]

defs = dg.Definitions(assets=[production_model, served_model], jobs=[promote_and_serve_job])
