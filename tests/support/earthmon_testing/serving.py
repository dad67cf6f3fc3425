"""Helpers of the serving tests: a tiny in-process model, a Flask test client of the real app around it, and the real
server process (nginx front + gunicorn) on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import requests

from earthmon_testing import REPO as ROOT
from earthmon_testing import free_port, require
from segmentation_trainer.serving.app import create_app
from segmentation_trainer.serving.config import ServeConfig
from segmentation_trainer.serving.front import find_nginx
from segmentation_trainer.serving.model import LoadedModel


def tiny_model(bands: int = 1) -> LoadedModel:
    def forward(x: np.ndarray) -> np.ndarray:  # class 1 where the first band is above its mean
        return np.stack([np.zeros_like(x[:, 0]), x[:, 0]], axis=1).astype(np.float32)

    metadata = {
        "num_classes": 2,
        "bands": bands,
        "band_names": [f"band_{i + 1}" for i in range(bands)],
        "crop_size": 16,
        "mean": [0.0] * bands,
        "std": [1.0] * bands,
        "class_names": ["background", "building"],
    }
    return LoadedModel(forward, metadata)


def make_client(tmp_path: Path, bands: int = 1, **config):
    model = tiny_model(bands)
    app = create_app(ServeConfig(model_dir=tmp_path, **config), loader=lambda: model)
    holder = app.extensions["earthmon.model"]
    assert holder.wait(10) and holder.ready, holder.error
    return app.test_client()


class Server:
    """``python -m segmentation_trainer.serving`` (the image's `serve`) with nginx in front, on loopback."""

    def __init__(self, base_dir: Path, env: dict[str, str], front: str = "nginx"):
        if front == "nginx":
            require(find_nginx() is not None, "nginx is not installed (apt-get install nginx-light)")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = base_dir / f"server-{self.port}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "segmentation_trainer.serving", "--host", "127.0.0.1", "--front", front],
            env={
                **os.environ,
                "SAGEMAKER_BASE_DIR": str(base_dir),
                "SAGEMAKER_BIND_TO_PORT": str(self.port),
                "SAGEMAKER_MODEL_SERVER_WORKERS": "1",
                "PYTHONPATH": str(ROOT),
                **env,
            },
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if requests.get(f"{self.url}/ping", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise AssertionError(f"server not ready:\n{self.log.read_text()}")

    def ping_s(self) -> float:
        started = time.monotonic()
        response = requests.get(f"{self.url}/ping", timeout=5)
        assert response.status_code == 200
        return time.monotonic() - started

    def invoke(self, body: bytes, timeout: float = 60):
        headers = {"Content-Type": "application/x-npy", "Accept": "application/json"}
        return requests.post(f"{self.url}/invocations", data=body, headers=headers, timeout=timeout)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(40)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                return self.proc.wait()
        return self.proc.returncode
