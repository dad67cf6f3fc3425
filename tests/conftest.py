"""Fixtures shared by the test suites: a real moto server (HTTP on loopback) for every AWS API the tests call."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from earthmon_testing import free_port, require, wait_port


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """A moto server on a free port for the whole session; yields its endpoint URL. Tests reset its state
    (POST /moto-api/reset) in their own `aws` fixtures."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:  # pragma: no cover - the trainer environment has no moto
        require(False, "moto[server] is not installed (make venv)")
        raise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        wait_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
