"""Models on an `s3://` lake (moto's S3 on 127.0.0.1, tests/s3.py): train (the CLI and the API), evaluate, promote.

An artifact is uploaded under `<lake>/models/<name>/<version>` before its registry row commits; a load reads it from
this machine's cache (`XDG_CACHE_HOME`), downloading it once; plots stay on local disk. The module runs in a folder
of its own, which must end up holding no `s3:` folder (what a lake root taken for a local path would make).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

import lake
import models
from models._artifacts import local_artifact
from models.imaging import ImagingMitosisDetector, MitosisNet, detector_factory, load_detector, register_detector
from tests.conftest import GENE_REF, PAPALEXI, need
from tests.models.conftest import HOLDOUT
from tests.s3 import BUCKET, S3

PREFIX = "models-lake"
ROOT = f"s3://{BUCKET}/{PREFIX}"


@dataclass(frozen=True)
class Trained:
    target: lake.Lake
    cwd: Path
    cli_stdout: str
    baseline: models.ModelRecord  # perturbation-mean, trained by `cellfarm --lake s3://... train`
    linear: models.ModelRecord  # trained through the API


@pytest.fixture(scope="module")
def trained(s3: S3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trained]:
    cwd = tmp_path_factory.mktemp("cwd")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)  # the CLI runs here too
        target = lake.Lake.open(ROOT, gene_reference=str(need(GENE_REF)))
        lake.ingest_atlas(target, need(PAPALEXI), name="papalexi2021")
        cli = s3.cli(
            ROOT, *f"train perturbation-mean --dataset papalexi2021 --holdout-perturbations {','.join(HOLDOUT)}".split()
        )
        assert cli.returncode == 0, cli.stderr
        linear = models.train(target, "linear", "papalexi2021", holdout=HOLDOUT)
        baseline = models.resolve(target, "perturbation-mean")
        yield Trained(target, cwd, cli.stdout, baseline, linear)


def _no_s3_folder(cwd: Path) -> None:
    assert not [p for p in cwd.rglob("*") if p.name.startswith("s3:")]


def test_artifacts_are_in_the_bucket(s3: S3, trained: Trained) -> None:
    assert trained.cli_stdout.strip() == "perturbation-mean:1"
    for record in (trained.baseline, trained.linear):
        assert record.artifact_uri == f"{ROOT}/models/{record.name}/{record.version}"
        keys = s3.keys(f"{PREFIX}/models/{record.name}/{record.version}/")
        assert {k.rsplit("/", 1)[-1] for k in keys} == {"model.json", "arrays.npz"}
    _no_s3_folder(trained.cwd)


def test_evaluate_and_promote_then_load_into_an_empty_cache(
    trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = trained.baseline.ref
    # the training process kept its uploaded copy as this machine's cached one: no download to load it here
    kept = local_artifact(trained.baseline.artifact_uri)
    assert kept.is_relative_to(trained.target.settings.cache_dir)
    assert [p.name for p in kept.parent.iterdir()] == [kept.name]  # one copy: the kept one, no staging left
    expected, _ = trained.baseline.load().predict_delta(HOLDOUT)
    expected_linear, _ = trained.linear.load().predict_delta(HOLDOUT)

    # a Ray of this test's own, never another test's; its temp dir short (Ray's socket paths must fit 107 bytes)
    with monkeypatch.context() as mp, tempfile.TemporaryDirectory(prefix="ray-", ignore_cleanup_errors=True) as ray:
        mp.setenv("RAY_TMPDIR", ray)
        mp.setenv("RAY_ADDRESS", "local")
        result = models.evaluate(trained.target, ref, baselines=["control-mean"], profile="vcc")  # the gate's
    assert result.plot is not None
    assert result.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.plot == lake.reports_dir(ROOT) / "evaluations" / "perturbation-mean-v1.png"
    assert result.plot.is_relative_to(trained.cwd / ".cellfarm" / "s3" / BUCKET / PREFIX)
    verdict = models.promote(trained.target, ref)
    assert verdict.record.stage == "production"

    # another machine (an empty cache): the production version is downloaded once, then read from the cache
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    production = models.resolve(trained.target, "perturbation-mean", stage="production")
    got, fallbacks = production.load().predict_delta(HOLDOUT)
    np.testing.assert_array_equal(got, expected)
    assert fallbacks == []
    fresh = local_artifact(production.artifact_uri)
    assert fresh.is_relative_to(cache)
    assert fresh != kept
    assert sorted(p.name for p in fresh.iterdir()) == ["arrays.npz", "model.json"]
    marker = (fresh / "model.json").stat().st_mtime_ns
    assert local_artifact(production.artifact_uri) == fresh
    assert (fresh / "model.json").stat().st_mtime_ns == marker  # not downloaded again
    # and the same model a refit on the recorded split gives
    split = models.Split.from_dict(production.trained_on["split"])
    train_set, _ = split.apply(models.load_perturb_data(trained.target, "papalexi2021"))
    refit, _ = models.PerturbationMean().fit(train_set).predict_delta(HOLDOUT)
    np.testing.assert_allclose(got, refit, rtol=1e-6)

    linear, _ = models.resolve(trained.target, trained.linear.ref).load().predict_delta(HOLDOUT)
    np.testing.assert_array_equal(linear, expected_linear)
    _no_s3_folder(trained.cwd)


def test_a_detector_loads_from_s3(trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    detector = ImagingMitosisDetector(MitosisNet(), version="0", threshold=0.5)  # untrained: what loads is checked
    record = register_detector(trained.target, detector)
    assert record.artifact_uri.startswith(f"{ROOT}/models/")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    image = np.random.default_rng(0).integers(0, 4096, (64, 64)).astype(np.uint16)
    for loaded in (load_detector(trained.target, record.ref), detector_factory(record)()):
        assert loaded.version == str(record.version)
        np.testing.assert_array_equal(loaded.heatmap(image), detector.heatmap(image))
    assert list((tmp_path / "cache").rglob("weights.pt"))


def test_a_missing_artifact_is_one_line(trained: Trained) -> None:
    with pytest.raises(models.ArtifactError, match=r"no model artifact at s3://.*/models/nope/1 \(model.json"):
        models.load_model(f"{ROOT}/models/nope/1")


class _FailingSave:
    kind = "control-mean"
    params: ClassVar[dict[str, Any]] = {}

    def save(self, path: Path, /) -> Path:
        path.mkdir(parents=True)
        (path / "arrays.npz").write_bytes(b"half")
        raise OSError("disk full")


def test_a_failed_save_registers_and_uploads_nothing(s3: S3, trained: Trained) -> None:
    before = trained.target.version("models")
    with pytest.raises(OSError, match="disk full"):
        models.register(trained.target, _FailingSave(), name="half", trained_on={})
    assert trained.target.version("models") == before
    assert s3.keys(f"{PREFIX}/models/half/") == []
    assert not list(trained.target.settings.cache_dir.rglob(".staging-*"))  # the staging folder is gone too
