"""Helpers of the serving tests: a tiny in-process model and a Flask test client of the real app around it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segmentation_trainer.serving.app import create_app
from segmentation_trainer.serving.config import ServeConfig
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
