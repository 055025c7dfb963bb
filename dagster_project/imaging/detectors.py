"""Which mitosis detector an imaging step uses: what `cellfarm acquire --policy local --detector` would pick."""

from __future__ import annotations

import dagster as dg

import acquisition
import lake

__all__ = ["CLASSICAL", "PRODUCTION", "choose_detector"]

PRODUCTION = ""  # the registry's production `mitosis-cnn` when there is one, else the classical detector
CLASSICAL = "classical"


def choose_detector(target: lake.Lake, ref: str = PRODUCTION) -> acquisition.MitosisDetector:
    """`ref`: `PRODUCTION`, `CLASSICAL`, or a registry reference (`mitosis-cnn:3`, `mitosis-cnn:latest`)."""
    if ref == CLASSICAL:
        return acquisition.ClassicalDetector()
    from models import ModelError, ModelNotFoundError  # torch: imported only when a step needs a detector
    from models.imaging import KIND, load_detector

    try:
        return load_detector(target, ref or f"{KIND}:production")
    except ModelNotFoundError as e:
        if ref == PRODUCTION:
            return acquisition.ClassicalDetector()
        raise dg.Failure(description=f"detector {ref!r}: {e}", allow_retries=False) from None
    except ModelError as e:
        raise dg.Failure(description=f"detector {ref or KIND + ':production'}: {e}", allow_retries=False) from None
