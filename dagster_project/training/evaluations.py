"""`evaluation_<kind>`: cell-eval on the held-out perturbations for the version `model_<kind>` registered, against
every baseline (`evaluations` rows, `models.metrics["evaluation"]`, a PNG), and the promotion gate as a blocking
check.

control-mean has no evaluation asset: it is the gate's bar, evaluated as a baseline beside every other model, and
it cannot pass a gate that asks to beat itself (a check that always failed would block every promotion).
"""

import base64
import warnings
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa
from pydantic import Field

import models
from dagster_project._report import delta_versions, log_progress, markdown_table
from dagster_project.partitions import ATLAS_DATASETS
from dagster_project.resources import LakeResource, RayResource
from dagster_project.training.model_assets import RAY_POOL, model_key
from dagster_project.training.training_set import GROUP
from dagster_project.training.upstream import model_failures, upstream_metadata

__all__ = [
    "CANDIDATE_KINDS",
    "EVALUATION_ASSETS",
    "GATE_CHECK",
    "GATE_CHECKS",
    "EvaluationConfig",
    "evaluation_asset",
    "evaluation_key",
    "gate_check",
]

CANDIDATE_KINDS = [k for k in models.kinds() if k != models.GATE_BASELINE]
"""The kinds that can be promoted: every kind but the gate's own baseline."""
GATE_CHECK = "beats_" + models.GATE_BASELINE.replace("-", "_")


class EvaluationConfig(dg.Config):
    """The baselines the model is compared with (control-mean, the gate's, is always among them)."""

    baselines: list[str] = Field(default=list(models.BASELINES), description="baselines to compare with")


def evaluation_key(kind: str) -> str:
    return "evaluation_" + kind.replace("-", "_")


def _png(path: Path, alt: str) -> dg.MetadataValue:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{data})")


def _comparison(summary: dict[str, Any]) -> dg.MetadataValue:
    """The model and each baseline on the summary metrics, with the model's gate-style margin against each."""
    rows: list[dict[str, Any]] = [{"predictor": "model", **summary["summary"], "model's margin": None}]
    for name, b in summary["baselines"].items():
        rows.append({"predictor": name, **b["summary"], "model's margin": b["margin"]["mean"]})
    columns = ["predictor", *[m for m in models.SUMMARY_METRICS if m in summary["summary"]], "model's margin"]
    return markdown_table(pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in rows]))


def _evaluation_metadata(evaluation: models.Evaluation, verdict: models.GateVerdict) -> dict[str, Any]:
    summary = evaluation.summary
    metrics = {
        m: dg.MetadataValue.float(float(v))
        for m in models.SUMMARY_METRICS
        if (v := summary["summary"].get(m)) is not None
    }
    score = summary.get("normalized_score")
    plot = {"plot": _png(evaluation.plot, f"{evaluation.record.ref} vs baselines")} if evaluation.plot else {}
    return {
        "model": evaluation.record.ref,
        **metrics,
        **({"normalized_score": dg.MetadataValue.float(float(score))} if score is not None else {}),
        "gate_passed": dg.MetadataValue.bool(verdict.passed),
        "gate_margin": dg.MetadataValue.float(verdict.margin),
        "verdict": verdict.explain(),
        **{f"margin_vs_{b.replace('-', '_')}": dg.MetadataValue.float(m["mean"]) for b, m in verdict.against.items()},
        "comparison": _comparison(summary),
        "held_out_perturbations": dg.MetadataValue.json(list(evaluation.perturbations)),
        "fallbacks": dg.MetadataValue.json(summary.get("fallbacks", [])),
        "evaluations_rows": dg.MetadataValue.int(evaluation.rows_written),
        "wall_time_s": dg.MetadataValue.float(round(evaluation.wall_time_s, 2)),
        **plot,
    }


def evaluation_asset(kind: str) -> dg.AssetsDefinition:
    upstream = model_key(kind)

    @dg.asset(
        name=evaluation_key(kind),
        group_name=GROUP,
        partitions_def=ATLAS_DATASETS,
        deps=[upstream],
        kinds={"ray", "delta"},
        pool=RAY_POOL,
        description=f"cell-eval of the `{kind}` version `{upstream}` registered, on the perturbations it never saw, "
        "against each baseline: `evaluations` rows, the summary and gate verdict in `models.metrics`, a plot.",
    )
    def _evaluation(
        context: dg.AssetExecutionContext, config: EvaluationConfig, lake: LakeResource, ray: RayResource
    ) -> dg.MaterializeResult:
        ref = str(upstream_metadata(context, upstream, context.partition_key)["model"])
        target = lake.open()
        with model_failures({"model": ref}):
            evaluation = models.evaluate(
                target, ref, baselines=config.baselines, ray_address=ray.ray_address, progress=log_progress(context.log)
            )
            verdict = models.check_gate(evaluation.record)
        context.log.info(verdict.explain())
        return dg.MaterializeResult(
            data_version=dg.DataVersion(f"{ref}@{evaluation.summary['evaluated_at']}"),
            metadata={**_evaluation_metadata(evaluation, verdict), **delta_versions(target, "evaluations", "models")},
        )

    return _evaluation


def gate_check(kind: str) -> dg.AssetChecksDefinition:
    """The promotion gate on `evaluation_<kind>`'s partition, blocking: a run in which a model does not beat
    control-mean does not go on to promote (`production_model` downstream is not executed)."""
    key = evaluation_key(kind)
    with warnings.catch_warnings():
        # a partitioned check is preview in Dagster 1.13; it is what gives the gate its partition's model
        warnings.simplefilter("ignore", dg.PreviewWarning)

        @dg.asset_check(
            asset=key,
            name=GATE_CHECK,
            blocking=True,
            partitions_def=ATLAS_DATASETS,
            description=f"The evaluated `{kind}` version beats {models.GATE_BASELINE} on its held-out perturbations "
            "(mean margin over the Virtual Cell Challenge's DES, PDS and MAE > 0).",
        )
        def _gate(context: dg.AssetCheckExecutionContext, lake: LakeResource) -> dg.AssetCheckResult:
            ref = str(upstream_metadata(context, key, context.partition_key)["model"])
            try:
                verdict = models.check_gate(models.resolve(lake.open(), ref))
            except models.ModelError as e:  # not evaluated (any more): no verdict is not a pass
                return dg.AssetCheckResult(passed=False, description=str(e), metadata={"model": ref})
            return dg.AssetCheckResult(
                passed=verdict.passed,
                description=verdict.explain(),
                metadata={
                    "model": ref,
                    "margin": dg.MetadataValue.float(verdict.margin),
                    "against": dg.MetadataValue.json(verdict.against),
                },
            )

    return _gate


EVALUATION_ASSETS = [evaluation_asset(kind) for kind in CANDIDATE_KINDS]
GATE_CHECKS = [gate_check(kind) for kind in CANDIDATE_KINDS]
