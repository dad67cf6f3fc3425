"""Shared constants and helpers of the ndvi_worker tests."""

from __future__ import annotations

from earthmon_testing import DATA, free_port, wait_port  # noqa: F401  (re-exported for the tests)
from earthmon_testing import require as need  # noqa: F401

SAMPLE = DATA / "sentinel-cogs-sample" / "S2A_29RKH_20200219_0_L2A"
STAC_ITEMS = DATA / "stac-items"
