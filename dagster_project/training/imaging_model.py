"""The feedback loop's imaging model: the mitosis CNN trained on digital-twin plates, scored on held-out plates
against the classical detector, registered, and promoted when it passes its gate."""

import tempfile

import dagster as dg
from pydantic import Field

from acquisition import detect_mitoses
from acquisition.twin import frozen_plate
from dagster_project.resources import LakeResource
from dagster_project.training.model_assets import record_metadata
from dagster_project.training.training_set import GROUP
from dagster_project.training.upstream import model_failures
from models.imaging import release_detector

__all__ = ["ImagingModelConfig", "model_mitosis_cnn"]


class ImagingModelConfig(dg.Config):
    """How long to train (the defaults take ~1.5 min on 2 cores) and whether a passing model goes to production."""

    n_frames: int = Field(default=240, description="training frames rendered from the twin's plates")
    epochs: int = Field(default=20)
    n_val_frames: int = Field(default=60, description="frames of the validation plate that set the threshold")
    heldout_frames: int = Field(default=20, description="fields per held-out plate and light the gate scores")
    seed: int = Field(default=0)
    promote: bool = Field(default=True, description="make it production when it passes the gate")


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch"},
    description="`mitosis-cnn`: the dividing-cell detector the served Feedback runs, trained on twin frames with "
    "their ground truth; a new `models` version per materialization, promoted past its gate (about as good as "
    "the classical detector in the default light, better in dim light).",
)
def model_mitosis_cnn(
    context: dg.AssetExecutionContext, config: ImagingModelConfig, lake: LakeResource
) -> dg.MaterializeResult:
    target = lake.open()
    # the registry copies the artifact under the lake: the training folder is scratch
    with model_failures(), tempfile.TemporaryDirectory(prefix="mitosis-cnn-") as scratch:
        release = release_detector(
            target,
            f"{scratch}/cnn",
            plates=frozen_plate,
            baseline=detect_mitoses,
            promote=config.promote,
            progress=lambda p: context.log.info(f"epoch {p.epoch}/{p.epochs}: loss {p.loss:.4f}"),
            heldout_frames=config.heldout_frames,
            n_frames=config.n_frames,
            n_val_frames=config.n_val_frames,
            epochs=config.epochs,
            seed=config.seed,
        )
    context.log.info(f"{release.record.ref}: {'passed' if release.passed else 'refused'}: {release.why}")
    scores = {k: v for k, v in release.record.metrics.items() if isinstance(v, int | float)}
    return dg.MaterializeResult(
        data_version=dg.DataVersion(release.record.ref),
        metadata={
            **record_metadata(release.record),
            "gate": "passed" if release.passed else "refused",
            "gate_reason": release.why,
            **{k: dg.MetadataValue.float(float(v)) for k, v in sorted(scores.items())},
        },
    )
