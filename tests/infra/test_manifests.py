"""Every manifest under infra/ parses and passes the schema that exists for it, offline (see infra/README.md).

- Kubernetes objects: the strict JSON schemas of the Kubernetes API that `kubernetes-validate` bundles (an unknown
  or misspelt field fails);
- KubeRay's `RayCluster` (a CRD: no package ships its schema): the spec's fields against KubeRay's v1 types, and
  the head's and every worker group's pod `template` against Kubernetes' `PodTemplateSpec`;
- another CRD: its metadata and every pod template in it, against Kubernetes' schemas;
- the Ray cluster launcher's YAML: Ray's own `ray-schema.json`; `dagster.yaml`: Dagster's instance schema;
- Helm values (no chart schema is packaged): parsed, and every `resources` block against Kubernetes' schema;
- anything else: parsed only.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import referencing
import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
MANIFESTS = sorted(p for p in INFRA.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
K8S_VERSION = "1.33"  # a Kubernetes release current clusters run; the manifests use only GA APIs
POD_TEMPLATE = "io.k8s.api.core.v1.PodTemplateSpec"
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
RESOURCES = "io.k8s.api.core.v1.ResourceRequirements"
# API groups Kubernetes itself serves: anything else is a custom resource
_BUILTIN_GROUP = re.compile(r"^(v1|[a-z]+/v\d\w*|[a-z.]+\.k8s\.io/v\d\w*)$")

# KubeRay's v1 RayCluster types (ray-operator/apis/ray/v1/raycluster_types.go, releases 1.1-1.4)
RAY_SPEC = {
    "headGroupSpec",
    "workerGroupSpecs",
    "rayVersion",
    "enableInTreeAutoscaling",
    "autoscalerOptions",
    "headServiceAnnotations",
    "suspend",
    "managedBy",
    "gcsFaultToleranceOptions",
    "upgradeStrategy",
}
RAY_HEAD = {"serviceType", "headService", "enableIngress", "rayStartParams", "template"}
RAY_WORKER = {
    "groupName",
    "replicas",
    "minReplicas",
    "maxReplicas",
    "numOfHosts",
    "idleTimeoutSeconds",
    "suspend",
    "rayStartParams",
    "template",
    "scaleStrategy",
}
RAY_AUTOSCALER = {
    "resources",
    "image",
    "imagePullPolicy",
    "env",
    "envFrom",
    "volumeMounts",
    "securityContext",
    "idleTimeoutSeconds",
    "upscalingMode",
    "version",
}


def _rel(path: Path) -> str:
    return str(path.relative_to(INFRA))


def _documents(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


@functools.cache
def _k8s_definitions() -> referencing.Registry[Any]:
    """The strict definitions of the Kubernetes API (`io.k8s.api.core.v1.PodTemplateSpec`, ...)."""
    base = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / f"v{K8S_VERSION}.0-local-strict"
    assert base.is_dir(), f"kubernetes-validate {kubernetes_validate.__version__} has no Kubernetes {K8S_VERSION}"
    definitions = referencing.Resource.from_contents(json.loads((base / "_definitions.json").read_text()))
    return definitions @ referencing.Registry()


def _k8s_definition(name: str, data: Any, where: str) -> None:
    """Validate `data` against one definition of the Kubernetes API, strictly (no unknown field)."""
    schema = {"$ref": f"https://kubernetes.io/api/_definitions.json#/$defs/{name}"}
    validator = jsonschema.Draft202012Validator(schema, registry=_k8s_definitions())
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    assert not errors, f"{where}: " + "; ".join(f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def _pod_templates(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every pod template in a custom resource: a `template` whose `spec` has `containers`."""
    if isinstance(node, dict):
        template = node.get("template")
        if isinstance(template, dict) and isinstance(template.get("spec"), dict) and "containers" in template["spec"]:
            yield f"{path}.template", template
        for key, value in node.items():
            if key != "template":
                yield from _pod_templates(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _pod_templates(value, f"{path}[{i}]")


def _unknown(found: dict[str, Any], known: set[str], where: str) -> None:
    extra = sorted(set(found) - known)
    assert not extra, f"{where}: fields KubeRay does not define: {extra}"


def _string_map(value: Any, where: str) -> None:
    assert isinstance(value, dict), f"{where} must be a mapping"
    bad = {k: v for k, v in value.items() if not isinstance(v, str)}
    assert not bad, f"{where}: values must be strings (quote them): {bad}"


def _pinned_ray() -> str:
    pinned = re.search(r"^ray==(\S+)$", (ROOT / "constraints.txt").read_text(), re.MULTILINE)
    assert pinned is not None, "constraints.txt pins no ray"
    return pinned.group(1)


def _ray_cluster(doc: dict[str, Any], where: str) -> None:
    _k8s_definition(OBJECT_META, doc.get("metadata", {}), f"{where}.metadata")
    spec = doc["spec"]
    _unknown(spec, RAY_SPEC, f"{where}.spec")
    assert spec.get("rayVersion") == _pinned_ray(), f"{where}: rayVersion must be constraints.txt's ray"
    head = spec["headGroupSpec"]
    _unknown(head, RAY_HEAD, f"{where}.spec.headGroupSpec")
    _string_map(head["rayStartParams"], f"{where}.spec.headGroupSpec.rayStartParams")
    _k8s_definition(POD_TEMPLATE, head["template"], f"{where}.spec.headGroupSpec.template")
    names = []
    for i, group in enumerate(spec.get("workerGroupSpecs", [])):
        at = f"{where}.spec.workerGroupSpecs[{i}]"
        _unknown(group, RAY_WORKER, at)
        names.append(group["groupName"])
        lo, hi = group.get("minReplicas", 0), group.get("maxReplicas", 2**31 - 1)
        assert all(isinstance(v, int) and v >= 0 for v in (lo, hi, group.get("replicas", lo))), at
        assert lo <= group.get("replicas", lo) <= hi, f"{at}: needs minReplicas <= replicas <= maxReplicas"
        _string_map(group["rayStartParams"], f"{at}.rayStartParams")
        _k8s_definition(POD_TEMPLATE, group["template"], f"{at}.template")
    assert len(names) == len(set(names)), f"{where}: worker group names repeat: {names}"
    options = spec.get("autoscalerOptions") or {}
    _unknown(options, RAY_AUTOSCALER, f"{where}.spec.autoscalerOptions")
    assert options.get("upscalingMode", "Default") in ("Default", "Aggressive", "Conservative"), where
    if "resources" in options:
        _k8s_definition(RESOURCES, options["resources"], f"{where}.autoscalerOptions.resources")


def _custom_resource(doc: dict[str, Any], where: str) -> str:
    if doc["kind"] == "RayCluster" and doc["apiVersion"].startswith("ray.io/"):
        _ray_cluster(doc, where)
        return "RayCluster: KubeRay's fields, pod templates against Kubernetes' schema"
    _k8s_definition(OBJECT_META, doc.get("metadata", {}), f"{where}.metadata")
    templates = list(_pod_templates(doc.get("spec")))
    for at, template in templates:
        _k8s_definition(POD_TEMPLATE, template, f"{where}{at}")
    return f"{doc['kind']} (custom resource): metadata and {len(templates)} pod template(s)"


def _check(doc: Any, path: Path, index: int) -> str:
    """Validate one YAML document; returns how."""
    where = f"{_rel(path)}#{index}"
    if isinstance(doc, dict) and {"apiVersion", "kind"} <= set(doc):
        if not _BUILTIN_GROUP.match(str(doc["apiVersion"])):
            return _custom_resource(doc, where)
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            at = ".".join(str(p) for p in e.path)
            pytest.fail(f"{where} ({doc['kind']} {doc.get('metadata', {}).get('name')}): {at}: {e.message}")
        return f"{doc['kind']}: Kubernetes {K8S_VERSION} strict schema"
    if path.name == "dagster.yaml":
        from dagster._config import validate_config
        from dagster._core.instance.config import dagster_instance_config_schema

        result = validate_config(dagster_instance_config_schema(), doc)
        assert result.success, f"{where}: {[e.message for e in result.errors]}"
        return "Dagster instance schema"
    if isinstance(doc, dict) and {"cluster_name", "provider"} <= set(doc):
        import ray.autoscaler

        schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
        errors = list(jsonschema.Draft7Validator(schema).iter_errors(doc))
        assert not errors, f"{where}: " + "; ".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)
        return "Ray cluster launcher schema"
    if path.name.startswith("values") and isinstance(doc, dict):  # a Helm chart's values (no schema offline)
        blocks = list(_resources(doc))
        for at, block in blocks:
            _k8s_definition(RESOURCES, block, f"{where}{at}")
        return f"Helm values: parsed, {len(blocks)} resources block(s) against Kubernetes' schema"
    return "parsed only (no schema exists offline)"


def _resources(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every `resources:` block of Helm values (requests and limits of some container)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "resources" and isinstance(value, dict) and set(value) & {"requests", "limits"}:
                yield f"{path}.resources", value
            else:
                yield from _resources(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _resources(value, f"{path}[{i}]")


@pytest.mark.parametrize("path", MANIFESTS, ids=[_rel(p) for p in MANIFESTS])
def test_manifest_is_valid(path: Path, record_property: Any) -> None:
    docs = _documents(path)  # a YAML error fails here, naming the line
    assert docs, f"{_rel(path)} holds no document"
    how = [_check(doc, path, i) for i, doc in enumerate(docs)]
    record_property("validated", "; ".join(how))


def test_every_part_of_the_platform_has_manifests_and_the_readme_links_them() -> None:
    readme = (INFRA / "README.md").read_text()
    for part in ("storage", "ray", "dagster", "bentoml"):
        assert f"]({part}/)" in readme, part
    assert {p.relative_to(INFRA).parts[0] for p in MANIFESTS} >= {"ray", "dagster", "bentoml"}


def test_a_wrong_field_fails_validation() -> None:
    """The check can fail: a misspelt field of a Deployment and a RayCluster's are refused."""
    [deployment] = [d for d in _documents(INFRA / "bentoml" / "deployment.yaml") if d["kind"] == "Deployment"][:1]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    ray = {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": "x"},
        "spec": {
            "rayVersion": "0",
            "headGroupSpec": {"rayStartParams": {}, "template": {"spec": {"containers": [{"name": "h", "imag": "x"}]}}},
        },
    }
    with pytest.raises(AssertionError, match="rayVersion"):
        _ray_cluster(ray, "test")
    ray["spec"]["rayVersion"] = _pinned_ray()
    with pytest.raises(AssertionError, match="imag"):
        _ray_cluster(ray, "test")
