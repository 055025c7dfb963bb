"""`cellfarm promote MODEL:VERSION`: the promotion gate.

The field's lesson (the 2025 Virtual Cell Challenge, and benchmarks where deep models lost to the mean): a model
earns `production` only by beating the control-mean baseline on perturbations it never saw. The gate reads the
evaluation that `cellfarm evaluate` recorded in the model's row and asks for a positive mean margin over the
Challenge's metrics (DES `overlap_at_N`, PDS `discrimination_score_l1`, `mae`) against control-mean; the margins
are cell-eval's normalisation without its clipping, so a loss on one metric counts against a win on another.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lake
from models._errors import PromotionRefusedError
from models._evaluate import GATE_BASELINE
from models._registry import ModelRecord, resolve, set_stage
from models._vcc import VCC_METRICS

__all__ = ["GateVerdict", "check_gate", "promote"]


@dataclass(frozen=True)
class GateVerdict:
    record: ModelRecord
    passed: bool
    margin: float
    """Mean signed margin over `VCC_METRICS` against control-mean (> 0 passes)."""
    against: dict[str, dict[str, float]]
    """baseline -> metric -> signed margin, and `mean`."""

    def explain(self) -> str:
        """One line: the verdict, then the margin against each baseline."""
        verdict = "beats" if self.passed else "does not beat"
        parts = [
            f"{b} {m['mean']:+.3f} ({', '.join(f'{k} {m[k]:+.3f}' for k in VCC_METRICS if k in m)})"
            for b, m in self.against.items()
        ]
        return f"{self.record.ref} {verdict} {GATE_BASELINE} (margin {self.margin:+.3f}); vs " + "; ".join(parts)


def check_gate(record: ModelRecord) -> GateVerdict:
    """The gate's verdict from the evaluation recorded in `record` (refused when there is none)."""
    evaluation: dict[str, Any] | None = record.metrics.get("evaluation")
    if not evaluation:
        raise PromotionRefusedError(f"{record.ref} has not been evaluated: run `cellfarm evaluate {record.ref}` first")
    baselines: dict[str, dict[str, Any]] = evaluation.get("baselines", {})
    if GATE_BASELINE not in baselines:
        raise PromotionRefusedError(f"{record.ref} was evaluated without the {GATE_BASELINE} baseline; re-evaluate it")
    order = [GATE_BASELINE, *sorted(b for b in baselines if b != GATE_BASELINE)]
    against = {b: {k: float(v) for k, v in baselines[b]["margin"].items()} for b in order}
    margin = against[GATE_BASELINE]["mean"]
    return GateVerdict(record=record, passed=margin > 0, margin=margin, against=against)


def promote(target: lake.Lake, ref: str) -> GateVerdict:
    """Move `ref` to `production` if it passes the gate (archiving the name's previous production version)."""
    verdict = check_gate(resolve(target, ref))
    if not verdict.passed:
        raise PromotionRefusedError("refused: " + verdict.explain())
    promoted = set_stage(target, verdict.record, "production")
    return GateVerdict(record=promoted, passed=True, margin=verdict.margin, against=verdict.against)
