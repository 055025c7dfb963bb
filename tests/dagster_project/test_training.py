"""The training domain on the real Papalexi Perturb-seq: a training set pinned, baselines trained and evaluated with
cell-eval on a local Ray, the gate as a blocking check, and `production_model` promoting the best of the round.

A second round holds out the knock-downs with the weakest effects: predicting the mean training effect for them
is worse than predicting none, so perturbation-mean loses to control-mean there, its gate check fails, and the
promotion downstream does not run.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow.compute as pc
import pytest

import lake
import models
from dagster_project import serving, training
from dagster_project.partitions import ATLAS_DATASETS
from dagster_project.resources import LakeResource, RayResource, ServingResource
from dagster_project.training import GATE_CHECK, EvaluationConfig, TrainingSetConfig
from tests.dagster_project.conftest import metadata_of
from tests.models.conftest import HOLDOUT

DATASET = "papalexi2021"  # the name `papalexi_lake` ingests it under
WEAK = ["ATF2", "CD86", "ETV7", "MARCH8"]  # the four knock-downs with the smallest mean |effect| in this subset
KINDS = ["control-mean", "perturbation-mean", "linear"]  # latent-shift trains for minutes: left to the models tests
BASELINES = ["control-mean", "perturbation-mean"]
UPSTREAM = [dg.AssetSpec(k, partitions_def=ATLAS_DATASETS) for k in ("soma_experiment", "cells", "genes")]
DEFS: list[Any] = [*UPSTREAM, dg.AssetSpec("hpa_subcellular")]
JOBS: list[Any] = []
for domain in (training.defs, serving.defs):
    DEFS += [*(domain.assets or []), *(domain.asset_checks or [])]
    JOBS += list(domain.jobs or [])


@dataclass
class Env:
    lake_dir: Path
    instance: dg.DagsterInstance

    @property
    def lake(self) -> lake.Lake:
        return lake.Lake.open(self.lake_dir)

    def run(
        self,
        *keys: str,
        job: str | None = None,
        config: dict[str, dg.Config] | None = None,
        serving_url: str = "http://127.0.0.1:9",
        token: str = "",
        partition: str | None = DATASET,
        raise_on_error: bool = True,
    ) -> dg.ExecuteInProcessResult:
        """Materialize `keys` (with their checks) in one run, or run one of the domains' jobs."""
        resources = {
            "lake": LakeResource(root=str(self.lake_dir)),
            "ray": RayResource(workers=1),
            "serving": ServingResource(url=serving_url, token=token),
        }
        run_config = dg.RunConfig(ops=dict(config or {}))
        if job is not None:
            defs = dg.Definitions(assets=DEFS, jobs=JOBS, resources=resources)
            return defs.resolve_job_def(job).execute_in_process(
                run_config, instance=self.instance, partition_key=partition, raise_on_error=raise_on_error
            )
        return dg.materialize(
            DEFS,
            selection=dg.AssetSelection.assets(*keys),
            instance=self.instance,
            partition_key=partition,
            run_config=run_config,
            resources=resources,
            raise_on_error=raise_on_error,
        )

    def perturbation_mean_round(
        self, holdout: list[str], *more: str, raise_on_error: bool = True
    ) -> dg.ExecuteInProcessResult:
        """One run: a training set holding `holdout` out, perturbation-mean trained on it and evaluated (against
        control-mean only, the gate's baseline), and the assets `more`."""
        return self.run(
            "training_set",
            "model_perturbation_mean",
            "evaluation_perturbation_mean",
            *more,
            config={
                "training_set": TrainingSetConfig(holdout_perturbations=holdout),
                "evaluation_perturbation_mean": EvaluationConfig(baselines=[models.GATE_BASELINE]),
            },
            raise_on_error=raise_on_error,
        )


def make_env(papalexi_lake: lake.Lake, root: Path) -> Env:
    """A writable copy of the Papalexi lake and a Dagster instance that knows its partition."""
    shutil.copytree(Path(papalexi_lake.root), root / "lake")
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(str(ATLAS_DATASETS.name), [DATASET])
    return Env(root / "lake", instance)


def checks(result: dg.ExecuteInProcessResult) -> dict[tuple[str, str], dg.AssetCheckEvaluation]:
    """(asset, check) -> the run's evaluation of it."""
    return {(c.asset_key.to_user_string(), c.check_name): c for c in result.get_asset_check_evaluations()}


def failure(result: dg.ExecuteInProcessResult, step: str) -> str:
    """The one-line reason step `step` failed with."""
    [event] = [e for e in result.get_step_failure_events() if e.step_key == step]
    data = event.step_failure_data
    return data.user_failure_data.description if data.user_failure_data else data.error.message  # type: ignore[union-attr,return-value]


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """One local Ray for the module's evaluations (each would otherwise start and stop its own)."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def env(papalexi_lake: lake.Lake, tmp_path_factory: pytest.TempPathFactory) -> Env:
    return make_env(papalexi_lake, tmp_path_factory.mktemp("dagster-training"))


@pytest.fixture(scope="module")
def first_round(env: Env, local_ray: None) -> dg.ExecuteInProcessResult:
    """Training set (HOLDOUT), three kinds, the evaluations of the two candidates, and the promotion, in one run."""
    evaluated = [training.evaluation_key(k) for k in KINDS if k != models.GATE_BASELINE]
    return env.run(
        "training_set",
        *[training.model_key(k) for k in KINDS],
        *evaluated,
        "production_model",
        config={
            "training_set": TrainingSetConfig(holdout_perturbations=HOLDOUT),
            **{key: EvaluationConfig(baselines=BASELINES) for key in evaluated},
        },
    )


def test_training_set_pins_the_data_and_the_split(env: Env, first_round: dg.ExecuteInProcessResult) -> None:
    meta = metadata_of(first_round, "training_set")
    assert meta["held_out_perturbations"] == sorted(HOLDOUT)
    assert meta["split"]["test_perturbations"] == sorted(HOLDOUT)
    snapshot = meta["snapshot"]
    target = env.lake
    assert snapshot["soma_timestamp"] == target.committed_soma_timestamp()
    for table in ("datasets", "cells", "dataset_genes", "hpa_subcellular"):
        assert snapshot["delta_versions"][table] == target.version(table) == meta[f"{table}_version"]
    # controls are on both sides of a held-out-perturbation split
    assert meta["n_train_cells"] + meta["n_test_cells"] == meta["n_cells"] + meta["n_control_cells"]
    assert meta["n_perturbations"] == 25


def test_each_model_asset_registers_a_version_trained_on_the_pinned_set(
    env: Env, first_round: dg.ExecuteInProcessResult
) -> None:
    pinned = metadata_of(first_round, "training_set")
    for kind in KINDS:
        meta = metadata_of(first_round, training.model_key(kind))
        record = models.resolve(env.lake, meta["model"])
        assert (record.kind, record.name, record.version) == (kind, kind, meta["version"])
        assert models.Snapshot.from_dict(record.trained_on).to_dict() == pinned["snapshot"]
        assert record.trained_on["split"] == pinned["split"]
        assert meta["trained_on"] == record.trained_on
    models_checks = {k: c.passed for k, c in checks(first_round).items() if k[1].startswith("models_")}
    assert len(models_checks) == 3 * len(KINDS)
    assert all(models_checks.values()), models_checks


def test_evaluations_are_written_and_gated(env: Env, first_round: dg.ExecuteInProcessResult) -> None:
    target = env.lake
    found = checks(first_round)
    for kind in ("perturbation-mean", "linear"):
        key = training.evaluation_key(kind)
        meta = metadata_of(first_round, key)
        record = models.resolve(target, meta["model"])
        verdict = models.check_gate(record)
        assert meta["gate_passed"] is verdict.passed is True
        assert meta["gate_margin"] == pytest.approx(verdict.margin)
        assert meta["margin_vs_control_mean"] == pytest.approx(verdict.margin)
        assert verdict.margin > 0
        assert "margin_vs_perturbation_mean" in meta
        assert meta["plot"].startswith("![")
        assert "data:image/png;base64,iVBOR" in meta["plot"]  # a PNG, inline
        rows = target.read("evaluations", filter=(pc.field("name") == kind) & (pc.field("version") == record.version))
        assert rows.num_rows == meta["evaluations_rows"] > 0
        assert set(rows["perturbation"].to_pylist()) == set(HOLDOUT)
        assert set(rows["baseline"].to_pylist()) == set(BASELINES)
        gate = found[(key, GATE_CHECK)]
        assert gate.passed
        assert gate.metadata["model"].value == record.ref
        assert all(found[(key, f"evaluations_{c}")].passed for c in ("schema", "rows", "keys_unique"))


def test_production_model_promotes_the_best_candidate_of_the_round(
    env: Env, first_round: dg.ExecuteInProcessResult
) -> None:
    meta = metadata_of(first_round, "production_model")
    target = env.lake
    candidates = {
        r.ref: models.check_gate(r).margin
        for r in models.list_models(target)
        if r.kind != models.GATE_BASELINE and "evaluation" in r.metrics
    }
    assert len(candidates) == 2
    best = max(candidates, key=lambda ref: candidates[ref])
    assert meta["model"] == best
    assert meta["margin"] == pytest.approx(candidates[best])
    assert meta["changed"] is True
    assert meta["previous_production"] == "none"
    assert models.resolve(target, best).stage == "production"
    assert [r.ref for r in models.list_models(target) if r.stage == "production"] == [best]


def test_a_model_that_loses_to_control_mean_blocks_the_promotion(
    env: Env, first_round: dg.ExecuteInProcessResult
) -> None:
    before = [r.ref for r in models.list_models(env.lake) if r.stage == "production"]
    result = env.perturbation_mean_round(WEAK, "production_model", raise_on_error=False)
    assert not result.success
    meta = metadata_of(result, "evaluation_perturbation_mean")
    assert meta["gate_passed"] is False
    assert meta["gate_margin"] < 0
    gate = checks(result)[("evaluation_perturbation_mean", GATE_CHECK)]
    assert not gate.passed
    assert gate.blocking
    assert f"{meta['model']} does not beat control-mean" in (gate.description or "")
    logged = [e.dagster_event for e in env.instance.all_logs(result.run_id) if e.dagster_event is not None]
    production = {e.event_type_value for e in logged if e.step_key == "production_model"}
    assert production == {"ASSET_MATERIALIZATION_PLANNED"}  # planned, never started
    assert [r.ref for r in models.list_models(env.lake) if r.stage == "production"] == before

    # on its own, production_model looks at the newest round only, where nothing passes: it says so, and keeps
    alone = env.run("production_model", partition=None, raise_on_error=False)
    reason = failure(alone, "production_model")
    assert reason.startswith("no model of the newest training round beats control-mean: ")
    assert f"{meta['model']} does not beat control-mean" in reason
    assert f"production stays {before[0]}" in reason
    assert [r.ref for r in models.list_models(env.lake) if r.stage == "production"] == before


def test_bad_input_fails_in_one_line_and_leaves_the_lake_as_it_was(env: Env) -> None:
    versions = {t: env.lake.version(t) for t in ("models", "evaluations")}
    bad = env.run(
        "training_set",
        config={"training_set": TrainingSetConfig(holdout_perturbations=["NOT_A_GENE"])},
        raise_on_error=False,
    )
    assert failure(bad, "training_set") == "held-out perturbation(s) not in the dataset: NOT_A_GENE (have 25)"

    env.instance.add_dynamic_partitions(str(ATLAS_DATASETS.name), ["never-pinned"])
    unpinned = env.run("model_control_mean", partition="never-pinned", raise_on_error=False)
    assert failure(unpinned, "model_control_mean") == (
        "training_set has not been materialized for partition 'never-pinned': materialize it first"
    )
    assert {t: env.lake.version(t) for t in versions} == versions


def test_the_project_wires_the_domains() -> None:
    """The whole project's definitions: every kind has its assets, the deps resolve to the atlas assets, the jobs
    exist."""
    from dagster_project import defs

    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {training.model_key(k) for k in models.kinds()} <= keys
    assert {training.evaluation_key(k) for k in training.CANDIDATE_KINDS} <= keys
    assert training.evaluation_key(models.GATE_BASELINE) not in keys
    parents = {p.to_user_string() for p in graph.get(dg.AssetKey("training_set")).parent_keys}
    assert parents == {"cells", "genes", "hpa_subcellular", "soma_experiment"}
    assert all(graph.get(dg.AssetKey(p)).is_materializable for p in parents)
    production = {p.to_user_string() for p in graph.get(dg.AssetKey("production_model")).parent_keys}
    assert production == {training.evaluation_key(k) for k in training.CANDIDATE_KINDS}
    assert {job.name for job in defs.resolve_all_job_defs()} >= {"train_and_evaluate", "promote_and_serve"}
