"""Where torch runs: the GPU when there is one, else the CPU."""

from __future__ import annotations

import torch

__all__ = ["default_device"]


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
