"""Fixtures for the imaging farm: the demo Micro-Manager configuration and small plans."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

import lake
from tests.conftest import SHARED, need

MM_CONFIG = SHARED / "microscopy" / "micromanager" / "MMConfig_demo.cfg"


@pytest.fixture
def mm_config() -> Path:
    return need(MM_CONFIG)


def versions(target: lake.Lake, *tables: str) -> dict[str, int]:
    return {t: target.version(t) for t in tables}


def frames_of(target: lake.Lake, run_id: str) -> pa.Table:
    return lake.query(target, f"SELECT * FROM frames WHERE run_id = '{run_id}' ORDER BY frame_id")
