"""Baselines and the learned model: fit, predict, save, load; corrupt artifacts fail with one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import lake
from models import (
    ArtifactError,
    ControlMean,
    InvalidTrainingDataError,
    LatentShift,
    Linear,
    PerturbationMean,
    build_gene_features,
    load_model,
    load_perturb_data,
    make_split,
    predict_cells,
)
from tests.models.conftest import HOLDOUT


@pytest.fixture(scope="module")
def fitted(papalexi_lake: lake.Lake):  # type: ignore[no-untyped-def]
    data = load_perturb_data(papalexi_lake, "papalexi2021")
    split = make_split(data, holdout=HOLDOUT)
    train, test = split.apply(data)
    feats = build_gene_features(papalexi_lake, data)
    return data, train, test, feats


def test_perturbation_mean_and_control_mean(fitted) -> None:  # type: ignore[no-untyped-def]
    _data, train, _, feats = fitted
    names, deltas = train.deltas()
    pm = PerturbationMean().fit(train, feats)
    seen, _ = pm.predict_delta(["STAT1"])
    assert np.allclose(seen[0], deltas[names.index("STAT1")])
    unseen, fb = pm.predict_delta(["MYC"])  # held out: the mean effect over training perturbations
    counts = np.array([(train.perturbation == p).sum() for p in names])
    assert np.allclose(unseen[0], (deltas * counts[:, None]).sum(0) / counts.sum(), atol=1e-5)
    assert fb == []
    zero, _ = ControlMean().fit(train, feats).predict_delta(HOLDOUT)
    assert not zero.any()


def test_linear_reports_its_fallbacks(fitted) -> None:  # type: ignore[no-untyped-def]
    _, train, _, feats = fitted
    lin = Linear().fit(train, feats)
    pred, fallbacks = lin.predict_delta(HOLDOUT)
    assert fallbacks == ["CUL3"]  # no HPA entry, not in the panel
    assert np.allclose(pred[HOLDOUT.index("CUL3")], lin.mean_delta)
    assert not np.allclose(pred[HOLDOUT.index("MYC")], lin.mean_delta)


def test_predicted_cells_are_shifted_controls(fitted) -> None:  # type: ignore[no-untyped-def]
    _, train, test, feats = fitted
    pm = PerturbationMean().fit(train, feats)
    ctrl = test.X[test.is_control]
    cells, labels, _ = predict_cells(pm, ctrl, {"STAT1": 400, "MYC": 300}, seed=0)
    assert cells.shape == (700, test.n_genes)
    assert labels.count("STAT1") == 400
    assert (cells >= 0).all()
    delta = pm.predict_delta(["STAT1"])[0][0]
    # the mean shift is the delta wherever no value was clipped at zero
    gene = int(np.argmax(ctrl.min(axis=0)))
    assert abs(cells[:400, gene].mean() - ctrl[:, gene].mean() - delta[gene]) < 0.05


@pytest.mark.parametrize("cls", [ControlMean, PerturbationMean, Linear, LatentShift])
def test_save_load_round_trip(cls, fitted, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, train, _, feats = fitted
    model = cls(epochs=2, steps_per_epoch=5) if cls is LatentShift else cls()
    model.fit(train, feats)
    path = model.save(tmp_path / "m")
    again = load_model(path)
    assert type(again) is cls
    assert np.allclose(again.predict_delta(HOLDOUT)[0], model.predict_delta(HOLDOUT)[0], atol=1e-6)


def test_corrupt_artifacts(fitted, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, train, _, feats = fitted
    model = LatentShift(epochs=1, steps_per_epoch=2).fit(train, feats)
    for damage, match in [
        (lambda p: (p / "arrays.npz").write_bytes((p / "arrays.npz").read_bytes()[:100]), "cannot load model"),
        (lambda p: (p / "weights.pt").write_bytes(b"not torch"), "latent-shift weights"),
        (lambda p: (p / "model.json").unlink(), "cannot load model"),
        (lambda p: (p / "model.json").write_text('{"kind": "nope", "format_version": 1}'), "unknown kind"),
    ]:
        path = model.save(tmp_path / "m")
        damage(path)
        with pytest.raises(ArtifactError, match=match):
            load_model(path)


def test_unfitted_and_empty_requests(fitted) -> None:  # type: ignore[no-untyped-def]
    _, train, _, feats = fitted
    with pytest.raises(InvalidTrainingDataError, match="not fitted"):
        ControlMean().predict_delta(["MYC"])
    with pytest.raises(InvalidTrainingDataError, match="no perturbations"):
        ControlMean().fit(train, feats).predict_delta([])
    with pytest.raises(InvalidTrainingDataError, match="no control cells"):
        ControlMean().fit(train.subset(~train.is_control), feats)
