"""A writable copy of the session's Papalexi lake, for tests that register models."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import lake


@pytest.fixture(scope="module")
def model_lake(papalexi_lake: lake.Lake, tmp_path_factory: pytest.TempPathFactory) -> lake.Lake:
    root = tmp_path_factory.mktemp("models") / "lake"
    shutil.copytree(Path(papalexi_lake.root), root)
    return lake.Lake.open(root)


HOLDOUT = ["BRD4", "CUL3", "IFNGR1", "JAK2", "MYC"]  # CUL3: no HPA entry, not in the panel
