"""Helpers shared by every test suite (a package on pytest's ``pythonpath``, tests/support): the skip-or-fail rule
for a missing tool or server, free ports, waiting for a listener, the repository's paths. Standard library and pytest only: the suites run in
different environments (.venv for worker, launcher and containers; .venv-trainer for the trainer)."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

#: tests/, the repository root and the one fixture tree (real STAC items, search responses, a downsampled scene)
TESTS = Path(__file__).resolve().parents[2]
REPO = TESTS.parent
DATA = TESTS / "data"

# Hyperparameters of a seconds-long training run (the built-in algorithm's names; the tiny backbone stands in for
# ResNet): the trainer tests and the training image's container tests both use them.
TINY_TRAINING_HP = {
    "num_classes": "2",
    "backbone": "tiny",
    "use_pretrained_model": "False",
    "crop_size": "48",
    "base_size": "64",
    "epochs": "2",
    "mini_batch_size": "4",
    "validation_mini_batch_size": "4",
    "learning_rate": "0.01",
}


def require(condition: bool, reason: str) -> None:
    """Skip when a test dependency is missing, or fail when EARTHMON_REQUIRE_ALL=1 (CI must run everything)."""
    if condition:
        return
    if os.environ.get("EARTHMON_REQUIRE_ALL") == "1":
        pytest.fail(f"{reason} (EARTHMON_REQUIRE_ALL=1)")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> None:
    """Return once something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")
