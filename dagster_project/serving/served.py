"""`served_model`: the running service (`cellfarm serve`) told to load the production version, and seen serving it.

With no service at the configured URL the asset fails, saying how to start one: a materialization claims that the
promoted version is being served, and with no server it is not. (A service started later loads the production
version at start, so nothing is lost; materialize `served_model` again once it runs.)
"""

from typing import Any

import dagster as dg

from dagster_project.resources import ServingResource
from dagster_project.serving.production import GROUP, production_model
from dagster_project.training import upstream_metadata
from serving.client import AuthError, ServingError, UnavailableError

__all__ = ["RELOAD_TIMEOUT_S", "SERVICE", "served_model"]

SERVICE = "VirtualCell"  # the service that serves the perturbation models
RELOAD_TIMEOUT_S = 120.0  # a reload reads the model's training data: seconds on a busy machine, not minutes


@dg.asset(
    group_name=GROUP,
    deps=[production_model],
    kinds={"bentoml"},
    description="The running model service (`cellfarm serve`, the serving resource's URL and token) reloaded from "
    "the registry; its `/readyz` confirms it serves the version `production_model` promoted.",
)
def served_model(context: dg.AssetExecutionContext, serving: ServingResource) -> dg.MaterializeResult:
    url = serving.url.rstrip("/")
    with serving.client(timeout_s=RELOAD_TIMEOUT_S) as client:
        try:
            client.reload()  # POST /reload: loads the registry's production versions now
            status = client.status()  # GET /readyz: what is served after the reload
        except UnavailableError as e:
            raise dg.Failure(
                description=f"no model service answers at {url}: start it with `cellfarm serve` (with "
                "CELLFARM_API_TOKEN set to the serving resource's token), then materialize served_model again",
                metadata={"error": str(e)},
                allow_retries=False,
            ) from None
        except AuthError:
            raise dg.Failure(
                description=f"the model service at {url} refused the token: set CELLFARM_API_TOKEN to the token "
                "`cellfarm serve` was started with",
                allow_retries=False,
            ) from None
        except ServingError as e:
            raise dg.Failure(description=f"the model service at {url} failed to reload: {e}") from None
    promoted = upstream_metadata(context, "production_model")
    expected = f"{promoted['name']}:{promoted['version']}"
    served = {m.service: f"{m.name}:{m.version}" for m in status.models}
    listing: list[dict[str, Any]] = [m.model_dump(mode="json") for m in status.models]
    if served.get(SERVICE) != expected:
        why = (
            "; ".join(status.errors)
            or "it serves the newest production version of any name (or CELLFARM_SERVE_MODEL's)"
        )
        raise dg.Failure(
            description=f"{url}: {SERVICE} serves {served.get(SERVICE, 'nothing')}, not the promoted {expected}: {why}",
            metadata={"served": dg.MetadataValue.json(listing)},
            allow_retries=False,
        )
    context.log.info(f"{url}: {SERVICE} serves {expected}")
    return dg.MaterializeResult(
        data_version=dg.DataVersion(expected),
        metadata={
            "url": dg.MetadataValue.url(url),
            "model": expected,
            "reloaded": dg.MetadataValue.bool(True),
            "ready": dg.MetadataValue.bool(status.ready),
            "served": dg.MetadataValue.json(listing),
            "errors": dg.MetadataValue.json(list(status.errors)),
        },
    )
