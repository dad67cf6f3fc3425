"""The SageMaker Processing contract's paths, resolved lazily.

``SAGEMAKER_BASE_DIR`` (default ``/opt/ml``, the training toolkit's convention) relocates every path, for tests and
runs outside a container. Nothing else in the package reads ``/opt/ml`` or the environment for paths; the launcher
builds its requests and its simulated instances (``launcher local``) from this module too (``CONTAINER``,
``ProcessingPaths.tree_dirs``). Importable without the worker's dependencies (no numpy, GDAL).
"""

from __future__ import annotations

import json
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

DEFAULT_BASE_DIR = "/opt/ml"


@dataclass(frozen=True)
class ProcessingPaths:
    base: Path

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> ProcessingPaths:
        env = os.environ if environ is None else environ
        return cls(Path(env.get("SAGEMAKER_BASE_DIR") or DEFAULT_BASE_DIR))

    @property
    def processing_dir(self) -> Path:
        """Where a Processing job's inputs and outputs are mounted (every LocalPath lies under it)."""
        return self.base / "processing"

    @property
    def input_dir(self) -> Path:
        return self.base / "processing" / "input"

    @property
    def output_dir(self) -> Path:
        return self.base / "processing" / "output"

    @property
    def resource_config(self) -> Path:
        return self.base / "config" / "resourceconfig.json"

    @property
    def processing_job_config(self) -> Path:
        return self.base / "config" / "processingjobconfig.json"

    @property
    def message_file(self) -> Path:
        """Text written here (first 1 KB) becomes the job's ExitMessage."""
        return self.base / "output" / "message"

    def tree_dirs(self) -> tuple[Path, ...]:
        """The folders an instance's tree has before the container starts (input, output, config, output/)."""
        return (self.input_dir, self.output_dir, self.resource_config.parent, self.message_file.parent)

    def in_processing_job(self) -> bool:
        """True inside a SageMaker Processing job (SageMaker, its local mode and ``launcher local`` all write
        ``config/processingjobconfig.json``)."""
        return self.processing_job_config.is_file()

    def under_contract(self, explicit_paths: bool) -> bool:
        """Whether this run follows the SageMaker contract, i.e. writes ``output/message`` (the ExitMessage):
        inside a Processing job, or when neither ``--input`` nor ``--output`` was given (the contract's
        default paths). ``ndvi-worker --input X --output Y`` on a laptop writes nothing under /opt/ml."""
        return self.in_processing_job() or not explicit_paths

    def resource(self) -> dict:
        """``resourceconfig.json`` as a dict, or ``{}`` outside SageMaker (or when unreadable)."""
        try:
            data = json.loads(self.resource_config.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def current_host(self) -> str:
        """The instance's host name (``algo-3``) from resourceconfig.json, else this machine's host name."""
        host = self.resource().get("current_host") or socket.gethostname() or "localhost"
        return safe_host(str(host))


#: The paths inside the container (SageMaker mounts the job there; the launcher's requests name them).
CONTAINER = ProcessingPaths(Path(DEFAULT_BASE_DIR))


def safe_host(host: str) -> str:
    """A host name usable as a file name."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", host).lstrip(".")
    return cleaned[:100] or "host"
