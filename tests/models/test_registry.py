"""The registry: versions, references, stages."""

from __future__ import annotations

import pytest

import lake
from models import (
    ControlMean,
    ModelNotFoundError,
    build_gene_features,
    list_models,
    load_perturb_data,
    parse_ref,
    register,
    resolve,
    set_stage,
)


def test_versions_refs_and_stages(model_lake: lake.Lake) -> None:
    data = load_perturb_data(model_lake, "papalexi2021")
    model = ControlMean().fit(data, build_gene_features(None, data))
    a = register(model_lake, model, name="reg-test", trained_on={"dataset": "papalexi2021"})
    b = register(model_lake, model, name="reg-test", trained_on={"dataset": "papalexi2021"})
    assert (a.version, b.version) == (1, 2)
    assert resolve(model_lake, "reg-test").version == 2
    assert resolve(model_lake, "reg-test:latest").version == 2
    assert resolve(model_lake, "reg-test:1").artifact_uri == a.artifact_uri
    assert resolve(model_lake, "reg-test:1").load().kind == "control-mean"
    set_stage(model_lake, a, "production")
    set_stage(model_lake, b, "production")
    stages = {r.version: r.stage for r in list_models(model_lake, "reg-test")}
    assert stages == {1: "archived", 2: "production"}
    assert resolve(model_lake, "reg-test", stage="production").version == 2
    with pytest.raises(ModelNotFoundError, match="no version 9"):
        resolve(model_lake, "reg-test:9")
    with pytest.raises(ModelNotFoundError, match="no model named 'nope'"):
        resolve(model_lake, "nope")
    with pytest.raises(ModelNotFoundError, match="not a model reference"):
        parse_ref("bad name:1")
