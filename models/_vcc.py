"""The Virtual Cell Challenge's score, by name: a module of its own so that naming it does not import cell-eval."""

from __future__ import annotations

__all__ = ["VCC_METRICS"]

VCC_METRICS: tuple[str, ...] = ("overlap_at_N", "discrimination_score_l1", "mae")
"""The three metrics of the Virtual Cell Challenge score (DES, PDS, MAE), as cell-eval names them."""
