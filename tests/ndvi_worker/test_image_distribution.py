"""The processing image installs its own distribution (containers/processing/pyproject.toml): only ndvi_worker and
the ndvi-worker command, at the repository's version, so other images' commands are never created in it."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_processing_distribution_holds_only_the_worker():
    image = tomllib.loads((ROOT / "containers/processing/pyproject.toml").read_text())
    repo = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert image["project"]["version"] == repo["project"]["version"]
    assert image["tool"]["setuptools"]["packages"]["find"]["include"] == ["ndvi_worker*"]
    assert image["project"]["scripts"] == {"ndvi-worker": repo["project"]["scripts"]["ndvi-worker"]}


def test_processing_dockerfile_installs_that_distribution():
    dockerfile = (ROOT / "containers/processing/Dockerfile").read_text()
    assert "COPY containers/processing/pyproject.toml /src/pyproject.toml" in dockerfile
    assert "rm -f /opt/earthmon/bin" not in dockerfile  # never created, not deleted afterwards
