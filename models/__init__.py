"""Virtual-cell models: data from the lake, baselines and learned models, training and evaluation on Ray, the
registry and its promotion gate.

Imports `lake` only (never bentoml or dagster).
"""

from models._base import KINDS, PerturbationModel, load_model, predict_cells
from models._baselines import Additive, ControlMean, Linear, PerturbationMean
from models._celleval import VCC_METRICS, CellEvalResult, normalized_score, run_cell_eval
from models._data import CONTROL, PerturbData, Snapshot, iter_cell_batches, load_perturb_data, log_normalize
from models._errors import (
    ArtifactError,
    InvalidTrainingDataError,
    ModelError,
    ModelNotFoundError,
    PromotionRefusedError,
)
from models._features import GeneFeatures, build_gene_features, split_targets
from models._latent import LatentShift
from models._registry import ModelRecord, list_models, parse_ref, register, resolve, set_stage
from models._splits import Split, SplitKind, make_split
from models._train import BASELINES, kinds, train

__all__ = [
    "BASELINES",
    "CONTROL",
    "KINDS",
    "VCC_METRICS",
    "Additive",
    "ArtifactError",
    "CellEvalResult",
    "ControlMean",
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
    "iter_cell_batches",
    "kinds",
    "list_models",
    "load_model",
    "load_perturb_data",
    "log_normalize",
    "make_split",
    "normalized_score",
    "parse_ref",
    "predict_cells",
    "register",
    "resolve",
    "run_cell_eval",
    "set_stage",
    "split_targets",
    "train",
]
