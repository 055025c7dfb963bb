"""infra/bentoml/deployment.yaml agrees with the code it deploys and with its own sizing arithmetic."""

from __future__ import annotations

import math
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

import serving
from serving._config import ENV_TOKEN
from serving._middleware import OPEN_PATHS, READY_PATH

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "infra" / "bentoml" / "deployment.yaml"
BENTO_SRC = "/home/bentoml/bento/src"  # where BentoML's images put the bento's `include`d sources


@pytest.fixture(scope="module")
def objects() -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(MANIFEST.read_text()) if d}


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


@pytest.mark.parametrize(("name", "service"), [("feedback", "Feedback"), ("virtual-cell", "VirtualCell")])
def test_each_deployment_serves_its_service_behind_the_token(
    objects: dict[tuple[str, str], dict[str, Any]], name: str, service: str
) -> None:
    deployment = objects[("Deployment", f"cellfarm-{name}")]
    container = _container(deployment)
    command = container["command"]
    assert command[:3] == ["bentoml", "serve", command[2]]
    module, _, attr = command[2].partition(":")
    source = (ROOT / (module.replace(".", "/") + ".py")).read_text()
    # the service the module defines and the package exports (not imported here: that loads BentoML and torch)
    assert attr == service
    assert service in serving.__all__
    assert f"\n{service} = bentoml.service(" in source
    assert command[command.index("--working-dir") + 1] == BENTO_SRC
    port = int(command[command.index("--port") + 1])
    assert container["ports"] == [{"name": "http", "containerPort": port}]
    # the Guard answers these without a token, so the kubelet can probe
    assert container["readinessProbe"]["httpGet"]["path"] == READY_PATH
    assert container["livenessProbe"]["httpGet"]["path"] in OPEN_PATHS
    assert container["startupProbe"]["httpGet"]["path"] in OPEN_PATHS
    env = _env(container)
    for secret in ("CELLFARM_LAKE", ENV_TOKEN, "AWS_SECRET_ACCESS_KEY"):  # from the Secret, never inline
        assert env[secret]["secretKeyRef"]["name"] == "cellfarm-serving", secret
    assert container["resources"]["requests"]["cpu"]
    assert container["resources"]["limits"]["memory"]
    svc = objects[("Service", f"cellfarm-{name}")]
    assert svc["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert deployment["spec"]["template"]["metadata"]["labels"] == deployment["spec"]["selector"]["matchLabels"]
    hpa = objects[("HorizontalPodAutoscaler", f"cellfarm-{name}")]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": f"cellfarm-{name}"}


def test_feedback_is_sized_by_its_annotations(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    """The arithmetic of infra/bentoml/README.md ("Sizing Feedback for N microscopes"), redone from the inputs."""
    deployment = objects[("Deployment", "cellfarm-feedback")]
    sizing = {
        k.removeprefix("cellfarm.lab/sizing-"): float(v)
        for k, v in deployment["metadata"]["annotations"].items()
        if k.startswith("cellfarm.lab/sizing-")
    }
    n = int(sizing["microscopes"])
    per_replica = sizing["replica-frames-per-s"] * sizing["target-cpu-percent"] / 100
    peak = math.ceil(n * sizing["peak-frames-per-s"] / per_replica)
    steady = max(2, math.ceil(n * sizing["steady-frames-per-s"] / per_replica))
    env = _env(_container(deployment))
    budget_ms = float(env["CELLFARM_FEEDBACK_MAX_LATENCY_MS"])
    batch = min(math.ceil(n / steady), math.floor(budget_ms / 2 / sizing["model-ms-per-frame"]))
    hpa = objects[("HorizontalPodAutoscaler", "cellfarm-feedback")]["spec"]
    assert deployment["spec"]["replicas"] == peak
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (steady, 2 * peak)
    assert [m["resource"]["target"]["averageUtilization"] for m in hpa["metrics"]] == [sizing["target-cpu-percent"]]
    assert int(env["CELLFARM_FEEDBACK_MAX_BATCH"]) == batch
    assert int(env["CELLFARM_SERVE_MAX_INFLIGHT_FEEDBACK"]) == n
    # the sizing assumes a replica's CPUs: the request the measurement was made on
    assert deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] == "2"


def test_the_documented_build_and_containerize_commands_name_the_bento() -> None:
    bentofile = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    readme = (ROOT / "infra" / "bentoml" / "README.md").read_text()
    assert f"bentoml containerize {bentofile['name']}:" in readme
    assert "bentoml build" in readme
    for line in MANIFEST.read_text().splitlines():
        if "bentoml containerize" in line:
            words = shlex.split(line.split("`")[1])
            assert words[words.index("containerize") + 1].startswith(bentofile["name"] + ":")
