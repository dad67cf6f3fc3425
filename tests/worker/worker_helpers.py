"""Shared constants and helpers of the worker tests."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1] / "data"
SAMPLE = DATA / "sentinel-cogs-sample" / "S2A_29RKH_20200219_0_L2A"
STAC_ITEMS = DATA / "stac-items"
REQUIRE_ALL = os.environ.get("EARTHMON_REQUIRE_ALL") == "1"


def need(condition: bool, reason: str) -> None:
    """Skip when a tool is missing, except in CI (EARTHMON_REQUIRE_ALL=1), where that is a failure."""
    if not condition:
        if REQUIRE_ALL:
            pytest.fail(f"{reason} (EARTHMON_REQUIRE_ALL=1)")
        pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")
