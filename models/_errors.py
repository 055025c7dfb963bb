"""One error base for the models package; the CLI prints any of them as one line."""

from __future__ import annotations

__all__ = ["ArtifactError", "InvalidTrainingDataError", "ModelError", "ModelNotFoundError", "PromotionRefusedError"]


class ModelError(Exception):
    """Base of every error the models package raises on purpose."""


class InvalidTrainingDataError(ModelError, ValueError):
    """The data cannot train or evaluate this model: no controls, no perturbation column, NaN features, ..."""


class ModelNotFoundError(ModelError, LookupError):
    """No such model or version in the registry."""


class ArtifactError(ModelError):
    """A saved model cannot be read back: missing, truncated or corrupt."""


class PromotionRefusedError(ModelError):
    """The promotion gate said no; the message carries the numbers."""
