"""Training data read from the lake: the same cells and counts as the source file, pinned to a snapshot."""

from __future__ import annotations

import shutil

import anndata as ad
import numpy as np
import pytest

import lake
from lake.synthetic import write_perturbseq_h5ad
from models import (
    CONTROL,
    GeneFeatures,
    InvalidTrainingDataError,
    PerturbData,
    Snapshot,
    build_gene_features,
    iter_cell_batches,
    load_perturb_data,
    make_split,
)
from tests.conftest import PAPALEXI, need


def test_papalexi_reads_back_the_files_cells(papalexi_lake: lake.Lake) -> None:
    src = ad.read_h5ad(need(PAPALEXI))
    data = load_perturb_data(papalexi_lake, "papalexi2021")
    assert data.X.shape == src.shape
    targets = src.obs["target_gene"].astype(str)
    assert int(data.is_control.sum()) == int((targets == "non-targeting").sum())
    assert data.perturbations == sorted(set(targets) - {"non-targeting"})
    assert data.replicates == sorted(set(src.obs["bio_rep"].astype(str)))
    # log1p of counts per 10k: every cell sums back to 10k, and the per-gene totals match the file's
    assert np.allclose(np.expm1(data.X).sum(axis=1), 1e4, rtol=1e-3)
    assert data.snapshot is not None
    assert data.snapshot.delta_versions == {t: papalexi_lake.version(t) for t in data.snapshot.delta_versions}
    assert data.snapshot.soma_timestamp == papalexi_lake.committed_soma_timestamp()


def test_streaming_batches_cover_every_cell_once(papalexi_lake: lake.Lake) -> None:
    data = load_perturb_data(papalexi_lake, "papalexi2021")
    seen: list[int] = []
    for x, ids in iter_cell_batches(papalexi_lake, "papalexi2021", batch_size=1000, block_cells=4096, seed=1):
        assert x.shape == (len(ids), data.n_genes)
        assert np.allclose(np.expm1(x).sum(axis=1), 1e4, rtol=1e-3)
        seen += ids.tolist()
    assert len(seen) == len(set(seen)) == data.n_cells


def test_deltas_are_matched_by_replicate(papalexi_lake: lake.Lake) -> None:
    data = load_perturb_data(papalexi_lake, "papalexi2021")
    names, deltas = data.deltas()
    i = names.index("IFNGR1")
    cells = data.perturbation == "IFNGR1"
    reps, counts = np.unique(data.replicate[cells], return_counts=True)
    ctrl = sum(c * data.control_mean(r) for r, c in zip(reps, counts, strict=True)) / counts.sum()
    assert np.allclose(deltas[i], data.X[cells].mean(axis=0) - ctrl, atol=1e-5)


def test_features_cover_hpa_and_the_panel(papalexi_lake: lake.Lake) -> None:
    data = load_perturb_data(papalexi_lake, "papalexi2021")
    feats = build_gene_features(papalexi_lake, data)
    assert feats.representable("STAT1")  # in the panel and in HPA
    assert feats.representable("BRD4")  # not in the panel: HPA only
    assert not feats.representable("CUL3")  # neither
    f, missing = feats.features(["BRD4", "STAT1+BRD4", "CUL3"], on_missing="zeros")
    assert missing == ["CUL3"]
    assert np.allclose(f[1], feats.features(["STAT1"])[0][0] + f[0])
    with pytest.raises(InvalidTrainingDataError, match="CUL3"):
        feats.features(["CUL3"])
    with pytest.raises(InvalidTrainingDataError, match="NaN"):
        GeneFeatures(("A",), np.array([[np.nan]], np.float32), ("x",))


def test_splits(papalexi_lake: lake.Lake) -> None:
    data = load_perturb_data(papalexi_lake, "papalexi2021")
    a = make_split(data, fraction=0.2, seed=3)
    assert a == make_split(data, fraction=0.2, seed=3)
    assert not set(a.train_perturbations) & set(a.test_perturbations)
    train, test = a.apply(data)
    assert set(train.perturbations) == set(a.train_perturbations)
    assert set(test.perturbations) == set(a.test_perturbations)
    assert train.is_control.sum() == test.is_control.sum() == data.is_control.sum()
    rep = make_split(data, kind="replicate", replicate="rep_2")
    train, test = rep.apply(data)
    assert set(test.replicate.tolist()) == {"rep_2"}
    assert "rep_2" not in set(train.replicate.tolist())
    with pytest.raises(InvalidTrainingDataError, match="not in the dataset: NOPE"):
        make_split(data, holdout=["NOPE"])
    with pytest.raises(InvalidTrainingDataError, match="nothing left to train on"):
        make_split(data, holdout=data.perturbations)


def test_nan_expression_is_refused() -> None:
    with pytest.raises(InvalidTrainingDataError, match="NaN"):
        PerturbData(
            np.array([[np.nan]], np.float32),
            np.array([CONTROL]),
            np.array([""]),
            np.array(["ENSG1"]),
            np.array(["A"]),
        )


def test_a_dataset_without_controls_or_perturbations_is_refused(tmp_path, papalexi_lake: lake.Lake) -> None:  # type: ignore[no-untyped-def]
    target = lake.Lake.open(tmp_path / "lake")
    no_ctrl = write_perturbseq_h5ad(tmp_path / "noctrl.h5ad", n_cells=300, n_genes=50, control_fraction=0.0, seed=1)
    lake.ingest_atlas(target, no_ctrl, name="noctrl")
    with pytest.raises(InvalidTrainingDataError, match="no control cells"):
        load_perturb_data(target, "noctrl")
    plain = ad.read_h5ad(write_perturbseq_h5ad(tmp_path / "p.h5ad", n_cells=300, n_genes=50, seed=2))
    plain.obs = plain.obs.drop(columns=[c for c in ("target_gene", "guide_id") if c in plain.obs])
    plain.write_h5ad(tmp_path / "plain.h5ad")
    lake.ingest_atlas(target, tmp_path / "plain.h5ad", name="plain")
    with pytest.raises(InvalidTrainingDataError, match="no perturbation column"):
        load_perturb_data(target, "plain")
    with pytest.raises(InvalidTrainingDataError, match="no atlas dataset 'missing'"):
        load_perturb_data(target, "missing")


def test_a_pinned_snapshot_reads_what_the_model_saw(tmp_path, papalexi_lake: lake.Lake) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "lake"
    shutil.copytree(papalexi_lake.root, root)
    target = lake.Lake.open(root)
    seen = load_perturb_data(target, "papalexi2021")
    assert seen.snapshot is not None
    pinned = Snapshot.from_dict({**seen.snapshot.to_dict(), "dataset": "papalexi2021", "split": {}})
    assert pinned == seen.snapshot
    # the lake moves on: another screen is ingested, the registry and the SOMA timestamp advance
    lake.ingest_atlas(target, write_perturbseq_h5ad(tmp_path / "more.h5ad", n_cells=300, n_genes=50), name="more")
    now = load_perturb_data(target, "papalexi2021")
    assert now.snapshot is not None
    assert now.snapshot.delta_versions["datasets"] > pinned.delta_versions["datasets"]
    assert now.snapshot.soma_timestamp != pinned.soma_timestamp
    again = load_perturb_data(target, "papalexi2021", at=pinned)
    assert again.snapshot == pinned
    np.testing.assert_array_equal(again.X, seen.X)
    np.testing.assert_array_equal(again.perturbation, seen.perturbation)
    gone = Snapshot(pinned.dataset_ids, pinned.soma_timestamp, {**pinned.delta_versions, "datasets": 10_000})
    with pytest.raises(InvalidTrainingDataError, match="snapshot is no longer readable"):
        load_perturb_data(target, "papalexi2021", at=gone)
