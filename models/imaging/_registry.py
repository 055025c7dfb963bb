"""The mitosis CNN in the model registry: register a trained detector with its held-out scores, load one back.

A registered detector is a `models` row of kind `mitosis-cnn` whose artifact is the folder `save` writes.
Loaded from the registry, the detector's `version` is the registry's (e.g. "3"), which is what the feedback
policy writes into every `decisions` row: an action traces back to the registered model, its `trained_on`
(twin plates and frame counts) and its `metrics`.

An acquisition agent runs in its own process and does not import `models`; `detector_factory` gives it a
picklable recipe (`functools.partial` of the module-level `load_artifact`) that it calls there.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

import lake
from models._errors import ModelNotFoundError
from models._registry import ModelRecord, register, resolve
from models.imaging._data import PlateFactory, render_frames
from models.imaging._detector import KIND, ImagingMitosisDetector
from models.imaging._evaluate import Located, match_detections, scores_from_counts

__all__ = [
    "HELDOUT_LIGHT",
    "HELDOUT_TWIN_SEEDS",
    "PROMOTION_F1_TOLERANCE",
    "detector_factory",
    "detector_gate",
    "heldout_metrics",
    "load_artifact",
    "load_detector",
    "register_detector",
    "resolve_detector",
    "trained_on",
]

# Plates no default training (1000-1007) or validation (1999) run uses, and two lights: the twin's usual
# one, and a dim one (~5 photo-electrons per pixel of an interphase nucleus) where the classical detector
# finds nothing. Metrics: `precision`, `recall`, `f1` in the default light, `dim_precision` etc. in the dim one.
HELDOUT_TWIN_SEEDS: tuple[int, ...] = (99, 123)
HELDOUT_LIGHT: dict[str, tuple[float, float]] = {"default": (20.0, 50.0), "dim": (2.0, 5.0)}  # exposure ms, power %
_STAGES = ("production", "candidate", "archived")

Detector = Callable[[npt.NDArray[Any]], Sequence[Located]]


def _used_seeds(detector: ImagingMitosisDetector) -> set[int]:
    info = detector.info
    return {int(s) for s in info.get("twin_seeds", ())} | (
        {int(info["val_twin_seed"])} if "val_twin_seed" in info else set()
    )


def heldout_metrics(
    detector: ImagingMitosisDetector,
    plates: PlateFactory,
    *,
    seeds: Sequence[int] = HELDOUT_TWIN_SEEDS,
    n_frames: int = 20,
    baseline: Detector | None = None,
) -> dict[str, Any]:
    """Precision, recall and F1 on `n_frames` fields of each held-out plate, per light of `HELDOUT_LIGHT`.

    With a `baseline` detector (e.g. the classical one), its scores on the same frames too, as
    `baseline_<metric>`. Refuses plates the model was trained or calibrated on: their cells are not held out.
    """
    if seen := sorted(_used_seeds(detector) & {int(s) for s in seeds}):
        raise ValueError(f"twin seeds {seen} were used in training: held-out metrics need other plates")
    out: dict[str, Any] = {"heldout_twin_seeds": [int(s) for s in seeds], "heldout_frames_per_light": 0}
    for light, (exposure, power) in HELDOUT_LIGHT.items():
        mine, base = np.zeros(3, np.int64), np.zeros(3, np.int64)
        n = 0
        for seed in seeds:
            data = render_frames(plates, twin_seed=int(seed), n_frames=n_frames, exposure_ms=exposure, power_pct=power)
            n += len(data)
            for img, truth in zip(data.images, data.centroids, strict=True):
                shape = (int(img.shape[0]), int(img.shape[1]))
                mine += match_detections(detector(img), truth, shape)
                if baseline is not None:
                    base += match_detections(baseline(img), truth, shape)
        out["heldout_frames_per_light"] = n
        for prefix, counts in (("", mine), ("baseline_", base)):
            if prefix and baseline is None:
                continue
            where = "" if light == "default" else f"{light}_"
            for metric, value in scores_from_counts(*map(int, counts))._asdict().items():
                out[f"{prefix}{where}{metric}"] = round(float(value), 4)
    return out


def trained_on(detector: ImagingMitosisDetector) -> dict[str, Any]:
    """The registry's `trained_on` of a trained detector: which simulated plates, how many frames."""
    info = detector.info
    keys = ("seed", "twin_seeds", "val_twin_seed", "n_frames", "n_val_frames", "frame_size", "train_mitoses")
    return {"source": "digital-twin", "trained_version": detector.version, **{k: info[k] for k in keys if k in info}}


# How much F1 the CNN may give up to the classical detector in the default light, where the classical one is
# near perfect on the twin (a trained CNN: 0.99 against 1.00 over 80 held-out fields), as long as it wins in
# dim light, where the classical one finds nothing: the trade the feedback loop wants (less light, same calls).
PROMOTION_F1_TOLERANCE = 0.05


def detector_gate(record: ModelRecord) -> tuple[bool, str]:
    """The feedback loop's gate: about as good as the classical detector in the default light, better in dim.

    Returns whether `record` passes and why (one line), from the held-out metrics it was registered with.
    """
    m = record.metrics
    dim, classical_dim = m.get("dim_f1", 0.0), m.get("baseline_dim_f1", 0.0)
    if missing := [k for k in ("f1", "baseline_f1", "dim_f1", "baseline_dim_f1") if k not in m]:
        return False, f"no held-out {', '.join(missing)} (register it with `python -m models.imaging register`)"
    if m["f1"] < m["baseline_f1"] - PROMOTION_F1_TOLERANCE:
        return False, f"F1 {m['f1']:.2f} in the default light, the classical detector's {m['baseline_f1']:.2f}"
    if dim <= classical_dim:
        return False, f"F1 {dim:.2f} in dim light, not above the classical detector's {classical_dim:.2f}"
    return True, f"F1 {m['f1']:.2f} (classical {m['baseline_f1']:.2f}), in dim light {dim:.2f} ({classical_dim:.2f})"


def register_detector(
    target: lake.Lake,
    detector: ImagingMitosisDetector,
    *,
    name: str = KIND,
    metrics: dict[str, Any] | None = None,
) -> ModelRecord:
    """Register `detector` as a new candidate version of `name` (its artifact copied under the lake)."""
    return register(target, detector, name=name, trained_on=trained_on(detector), metrics=metrics or {})


def resolve_detector(target: lake.Lake, ref: str = KIND, *, stage: str | None = None) -> ModelRecord:
    """The registry row of a mitosis detector: `NAME`, `NAME:latest`, `NAME:VERSION` or `NAME:STAGE`.

    `NAME:production` is `NAME` with `stage="production"`. One-line `ModelNotFoundError` when there is no
    such model, version or stage, or when the row is another kind of model.
    """
    name, _, tail = ref.strip().partition(":")
    if tail in _STAGES:
        if stage is not None and stage != tail:
            raise ModelNotFoundError(f"model reference {ref!r} asks for stage {tail}, not {stage}")
        ref, stage = name, tail
    record = resolve(target, ref, stage=stage)
    if record.kind != KIND:
        raise ModelNotFoundError(f"model {record.ref} is a {record.kind!r} model, not a mitosis detector ({KIND!r})")
    return record


def load_artifact(
    path: str, version: str | None = None, device: str = "cpu", threads: int | None = None
) -> ImagingMitosisDetector:
    """`ImagingMitosisDetector.load` as a module-level function (what `detector_factory` pickles).

    `threads` sets torch's CPU threads for the whole process (None: leave them).
    """
    if threads is not None:
        torch.set_num_threads(threads)
    return ImagingMitosisDetector.load(path, version=version, device=device)


def detector_factory(record: ModelRecord, *, threads: int | None = 1) -> functools.partial[ImagingMitosisDetector]:
    """A picklable, argument-free recipe for the registered detector, carrying the registry version.

    One torch thread by default: an agent's process shares the cores with its camera and lake-writer threads
    and with other agents, and torch's default (a busy-waiting thread per core) then slows every party down;
    on 2 busy cores one thread ran a 512 x 512 frame in ~20 ms, two threads in ~70 ms.
    """
    return functools.partial(load_artifact, record.artifact_uri, str(record.version), "cpu", threads)


def load_detector(
    target: lake.Lake, ref: str = KIND, *, stage: str | None = None, device: str = "cpu"
) -> ImagingMitosisDetector:
    """The registered detector `ref` (see `resolve_detector`), its version the registry's."""
    record = resolve_detector(target, ref, stage=stage)
    return load_artifact(record.artifact_uri, str(record.version), device)
