"""Imaging models for the acquisition's feedback: a CNN that finds dividing cells (mitoses) in frames.

Usage (or `python -m models.imaging train OUT_DIR` and `python -m models.imaging evaluate OUT_DIR`)::

    det = train_mitosis_model("artifacts/mitosis-cnn")  # ~1.5-2 min on 2 CPU cores, saved there
    det = ImagingMitosisDetector.load("artifacts/mitosis-cnn", version="3")
    policy = acquisition.MitosisPolicy(detector=det)  # the `local` policy, with the learned model
    precision, recall, f1 = evaluate(det, frames.images, frames.centroids)

Training data comes from the digital-twin microscope (`acquisition.twin`), imported only when frames are
made; loading and running a saved model needs numpy and torch only (and `acquisition` for the `Detection`s
the detector returns).
"""

from models.imaging._data import MARGIN_UM, LabelledFrames, make_training_frames, render_frames
from models.imaging._detector import ARTIFACT_FORMAT, ImagingMitosisDetector
from models.imaging._evaluate import MATCH_RADIUS_PX, Located, Scores, evaluate, match_detections, scores_from_counts
from models.imaging._net import STRIDE, MitosisNet, Normalisation, find_peaks
from models.imaging._train import (
    DEFAULT_TWIN_SEEDS,
    VALIDATION_TWIN_SEED,
    TrainProgress,
    calibrate_threshold,
    heatmap_targets,
    train_mitosis_model,
)

__all__ = [
    "ARTIFACT_FORMAT",
    "DEFAULT_TWIN_SEEDS",
    "MARGIN_UM",
    "MATCH_RADIUS_PX",
    "STRIDE",
    "VALIDATION_TWIN_SEED",
    "ImagingMitosisDetector",
    "LabelledFrames",
    "Located",
    "MitosisNet",
    "Normalisation",
    "Scores",
    "TrainProgress",
    "calibrate_threshold",
    "evaluate",
    "find_peaks",
    "heatmap_targets",
    "make_training_frames",
    "match_detections",
    "render_frames",
    "scores_from_counts",
    "train_mitosis_model",
]
