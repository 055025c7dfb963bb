"""`production_model`: promote the best evaluated version of the newest training round that passes the gate.

"Best" is the highest gate margin (mean margin over the Virtual Cell Challenge's metrics against control-mean)
among the evaluated perturbation models of the newest training round: the versions trained on the same pinned
snapshot and split as the newest evaluated one. Margins on different held-out perturbations do not compare, and
an older round's winner is not a candidate once a newer round has been evaluated.
"""

import json

import dagster as dg
import pyarrow as pa

import models
from dagster_project._report import markdown_table
from dagster_project.resources import LakeResource
from dagster_project.training import CANDIDATE_KINDS, evaluation_key, model_failures, record_metadata
from lake import Lake

__all__ = ["GROUP", "Candidate", "best_candidate", "newest_round", "production_model"]

GROUP = "serving"

Candidate = tuple[models.ModelRecord, models.GateVerdict]


def _training_set(record: models.ModelRecord) -> str:
    """What a version was trained on, as a key: its data snapshot and its split."""
    pinned = models.Snapshot.from_dict(record.trained_on).to_dict()
    return json.dumps([pinned, record.trained_on.get("split")], sort_keys=True, default=str)


def newest_round(records: list[models.ModelRecord]) -> list[Candidate]:
    """The evaluated perturbation models trained on the same training set as the newest evaluated one, with
    their gate verdicts."""
    evaluated = [r for r in records if r.kind in models.KINDS and r.metrics.get("evaluation")]
    if not evaluated:
        return []
    newest = _training_set(max(evaluated, key=lambda r: r.created_at))
    out = []
    for r in evaluated:
        if _training_set(r) == newest:
            try:
                out.append((r, models.check_gate(r)))
            except models.PromotionRefusedError:  # evaluated without the gate's baseline: no verdict, no candidate
                continue
    return out


def best_candidate(candidates: list[Candidate]) -> Candidate | None:
    """The passing candidate with the highest margin; on a tie, the one already in production (no churn), then the
    simpler kind (`cellfarm train --list` order: baselines first), then the newest."""
    order = {k: i for i, k in enumerate(models.kinds())}
    passing = [c for c in candidates if c[1].passed]
    if not passing:
        return None
    return max(
        passing,
        key=lambda c: (c[1].margin, c[0].stage == "production", -order.get(c[0].kind, len(order)), c[0].created_at),
    )


def _candidates_table(candidates: list[Candidate], chosen: models.ModelRecord | None) -> dg.MetadataValue:
    rows = [
        {
            "model": r.ref,
            "kind": r.kind,
            "gate margin": v.margin,
            "passes": v.passed,
            "stage": "production" if chosen is not None and r.ref == chosen.ref else r.stage,
        }
        for r, v in sorted(candidates, key=lambda c: -c[1].margin)
    ]
    return markdown_table(pa.Table.from_pylist(rows))


def _previous(target: Lake, name: str) -> models.ModelRecord | None:
    try:
        return models.resolve(target, name, stage="production")
    except models.ModelNotFoundError:
        return None


@dg.asset(
    group_name=GROUP,
    deps=[evaluation_key(k) for k in CANDIDATE_KINDS],
    kinds={"delta"},
    description="The production perturbation model: the evaluated version of the newest training round with the "
    "highest margin over control-mean, promoted in the registry (a no-op when it already is production).",
)
def production_model(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
    target = lake.open()
    with model_failures():
        candidates = newest_round(models.list_models(target))
        if not candidates:
            raise dg.Failure(
                description="no evaluated perturbation model in the registry: materialize an evaluation asset first",
                allow_retries=False,
            )
        best = best_candidate(candidates)
        if best is None:
            explained = "; ".join(v.explain().split(";")[0] for _, v in candidates)
            current = ", ".join(r.ref for r in models.list_models(target) if r.stage == "production") or "none"
            raise dg.Failure(
                description=f"no model of the newest training round beats {models.GATE_BASELINE}: {explained}; "
                f"production stays {current}",
                metadata={"candidates": _candidates_table(candidates, None)},
                allow_retries=False,
            )
        record, verdict = best
        previous = _previous(target, record.name)
        changed = record.stage != "production"
        if changed:
            record = models.promote(target, record.ref).record
    context.log.info(f"{'promoted' if changed else 'already production:'} {verdict.explain()}")
    split = record.trained_on.get("split") or {}
    return dg.MaterializeResult(
        data_version=dg.DataVersion(record.ref),
        metadata={
            **record_metadata(record),
            "margin": dg.MetadataValue.float(verdict.margin),
            **{
                f"margin_vs_{b.replace('-', '_')}": dg.MetadataValue.float(m["mean"])
                for b, m in verdict.against.items()
            },
            "verdict": verdict.explain(),
            "changed": dg.MetadataValue.bool(changed),
            "previous_production": previous.ref if previous is not None else "none",
            "dataset": str(record.trained_on.get("dataset", "")),
            "held_out_perturbations": dg.MetadataValue.json(list(split.get("test_perturbations", []))),
            "candidates": _candidates_table(candidates, record),
        },
    )
