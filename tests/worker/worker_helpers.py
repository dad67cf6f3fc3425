"""Shared constants and helpers of the worker tests."""

from __future__ import annotations

from pathlib import Path

from earthmon_testing import free_port, wait_port  # noqa: F401  (re-exported for the tests)
from earthmon_testing import require as need  # noqa: F401

DATA = Path(__file__).resolve().parents[1] / "data"
SAMPLE = DATA / "sentinel-cogs-sample" / "S2A_29RKH_20200219_0_L2A"
STAC_ITEMS = DATA / "stac-items"
