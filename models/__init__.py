"""Virtual-cell models: data from the lake, baselines and learned models, training and evaluation on Ray, the
registry and its promotion gate.

Imports `lake` only (never bentoml or dagster).
"""

from typing import TYPE_CHECKING, Any

from models._base import KINDS, PerturbationModel, load_model, predict_cells
from models._baselines import Additive, ControlMean, Linear, PerturbationMean
from models._data import CONTROL, PerturbData, Snapshot, iter_cell_batches, load_perturb_data, log_normalize
from models._errors import (
    ArtifactError,
    InvalidTrainingDataError,
    ModelError,
    ModelNotFoundError,
    PromotionRefusedError,
)
from models._evaluate import CELL_MEAN, GATE_BASELINE, SUMMARY_METRICS, Evaluation, evaluate
from models._features import GeneFeatures, build_gene_features, split_targets
from models._gate import GateVerdict, check_gate, promote
from models._latent import LatentShift
from models._registry import ModelRecord, list_models, parse_ref, register, resolve, set_stage
from models._splits import Split, SplitKind, make_split
from models._train import BASELINES, kinds, train
from models._vcc import VCC_METRICS

if TYPE_CHECKING:
    from models._celleval import CellEvalResult, margins, normalized_score, run_cell_eval

_LAZY = {"CellEvalResult", "margins", "normalized_score", "run_cell_eval"}  # cell-eval takes seconds to import


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from models import _celleval

        return getattr(_celleval, name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")


__all__ = [
    "BASELINES",
    "CELL_MEAN",
    "CONTROL",
    "GATE_BASELINE",
    "KINDS",
    "SUMMARY_METRICS",
    "VCC_METRICS",
    "Additive",
    "ArtifactError",
    "CellEvalResult",
    "ControlMean",
    "Evaluation",
    "GateVerdict",
    "GeneFeatures",
    "InvalidTrainingDataError",
    "LatentShift",
    "Linear",
    "ModelError",
    "ModelNotFoundError",
    "ModelRecord",
    "PerturbData",
    "PerturbationMean",
    "PerturbationModel",
    "PromotionRefusedError",
    "Snapshot",
    "Split",
    "SplitKind",
    "build_gene_features",
    "check_gate",
    "evaluate",
    "iter_cell_batches",
    "kinds",
    "list_models",
    "load_model",
    "load_perturb_data",
    "log_normalize",
    "make_split",
    "margins",
    "normalized_score",
    "parse_ref",
    "predict_cells",
    "promote",
    "register",
    "resolve",
    "run_cell_eval",
    "set_stage",
    "split_targets",
    "train",
]
