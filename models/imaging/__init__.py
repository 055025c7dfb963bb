"""Imaging models for the acquisition's feedback: a CNN that finds dividing cells (mitoses) in frames.

Usage (or `python -m models.imaging train OUT_DIR [--lake URI --promote]`, `register`, `evaluate`)::

    det = train_mitosis_model("artifacts/mitosis-cnn", plates=twin_plate)  # ~1.5 min on 2 CPU cores
    record = register_detector(lake, det, metrics=heldout_metrics(det, twin_plate))  # a `mitosis-cnn` version
    det = load_detector(lake, "mitosis-cnn:production")  # its `version` is the registry's
    policy = acquisition.MitosisPolicy(detector=det)  # the `local` policy, with the learned model
    precision, recall, f1 = evaluate(det, frames.images, frames.centroids)

`models` does not import `acquisition` (DESIGN.md): training data comes from plates that the caller hands in
(`plates`, a `PlateFactory`: the digital twin's `TwinSample`, as `python -m models.imaging` and the tests
wire it), and the detector returns its own `MitosisDetection`s, which satisfy the acquisition's structural
`MitosisDetector` protocol. An acquisition agent gets a registered detector as `detector_factory(record)`, a
picklable recipe that loads it in the agent's process.
"""

from models.imaging._data import MARGIN_UM, LabelledFrames, Plate, PlateFactory, make_training_frames, render_frames
from models.imaging._detector import ARTIFACT_FORMAT, KIND, FrameDetections, ImagingMitosisDetector, MitosisDetection
from models.imaging._evaluate import MATCH_RADIUS_PX, Located, Scores, evaluate, match_detections, scores_from_counts
from models.imaging._net import STRIDE, MitosisNet, Normalisation, find_peaks
from models.imaging._registry import (
    HELDOUT_LIGHT,
    HELDOUT_TWIN_SEEDS,
    PROMOTION_F1_TOLERANCE,
    detector_factory,
    detector_gate,
    heldout_metrics,
    load_artifact,
    load_detector,
    register_detector,
    resolve_detector,
    trained_on,
)
from models.imaging._release import DetectorRelease, release_detector
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
    "HELDOUT_LIGHT",
    "HELDOUT_TWIN_SEEDS",
    "KIND",
    "MARGIN_UM",
    "MATCH_RADIUS_PX",
    "PROMOTION_F1_TOLERANCE",
    "STRIDE",
    "VALIDATION_TWIN_SEED",
    "DetectorRelease",
    "FrameDetections",
    "ImagingMitosisDetector",
    "LabelledFrames",
    "Located",
    "MitosisDetection",
    "MitosisNet",
    "Normalisation",
    "Plate",
    "PlateFactory",
    "Scores",
    "TrainProgress",
    "calibrate_threshold",
    "detector_factory",
    "detector_gate",
    "evaluate",
    "find_peaks",
    "heatmap_targets",
    "heldout_metrics",
    "load_artifact",
    "load_detector",
    "make_training_frames",
    "match_detections",
    "register_detector",
    "release_detector",
    "render_frames",
    "resolve_detector",
    "scores_from_counts",
    "train_mitosis_model",
    "trained_on",
]
