"""Serving engines (segmentation_trainer.serving.engines): EARTHMON_SERVE_ENGINE=mxnet|onnx|auto, the ONNX file
exported at start-up when a model directory has none, ONNX Runtime's answers equal to MXNet's."""

from __future__ import annotations

import os
import stat
import time

import numpy as np
import pytest

pytest.importorskip("mxnet")
pytest.importorskip("onnxruntime")

from segmentation_trainer.export import write_tiny_model_dir  # noqa: E402
from segmentation_trainer.serving import engines  # noqa: E402
from segmentation_trainer.serving.config import ServeConfig  # noqa: E402
from segmentation_trainer.serving.model import load_model_dir  # noqa: E402


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("engines-model")
    write_tiny_model_dir(directory, num_classes=2, bands=4, crop_size=48, onnx=False)
    return directory


def test_time_engines_alternates_and_keeps_the_fastest():
    calls = []

    def fake(name, seconds):
        def forward(batch):
            calls.append(name)
            time.sleep(seconds)

        return forward

    best = engines.time_engines(
        {"mxnet": fake("mxnet", 0.02), "onnx": fake("onnx", 0.0)}, np.zeros(1), rounds=2
    )
    assert calls == ["mxnet", "onnx"] * 3  # warm-up, then alternating rounds
    assert best["onnx"] < best["mxnet"]
    assert engines.choose("auto", best) == "onnx"


def test_choose_by_setting_and_by_speed():
    assert engines.choose("mxnet", {"mxnet": 2.0, "onnx": 1.0}) == "mxnet"
    assert engines.choose("onnx", {}) == "onnx"
    assert engines.choose("auto", {"mxnet": 2.0, "onnx": 1.0}) == "onnx"
    assert engines.choose("auto", {"mxnet": 1.0, "onnx": 2.0}) == "mxnet"
    assert engines.choose("auto", {"mxnet": 1.0, "onnx": 1.0}) == "mxnet"  # a tie keeps MXNet
    assert engines.choose("auto", {}) == "mxnet"
    with pytest.raises(ValueError, match="EARTHMON_SERVE_ENGINE"):
        engines.choose("tensorrt", {})


def test_engine_setting_from_the_environment(tmp_path):
    assert ServeConfig.from_env({}, model_dir=tmp_path).engine == "auto"
    assert ServeConfig.from_env({"EARTHMON_SERVE_ENGINE": "ONNX"}, model_dir=tmp_path).engine == "onnx"
    with pytest.raises(ValueError, match="EARTHMON_SERVE_ENGINE"):
        ServeConfig.from_env({"EARTHMON_SERVE_ENGINE": "gpu"}, model_dir=tmp_path)


def test_onnx_engine_exports_at_start_and_matches_mxnet(model_dir):
    assert not (model_dir / "model.onnx").exists()
    before = {p.name: p.stat().st_mtime_ns for p in model_dir.iterdir()}
    onnx_model = load_model_dir(model_dir, window_batch=2, engine="onnx")
    assert onnx_model.engine == "onnx"
    assert (model_dir / "model.onnx").is_file()  # exported once, next to the built-in artifacts
    for name in ("model_algo-1", "model_best.params", "metadata.json"):
        assert (model_dir / name).stat().st_mtime_ns == before[name]  # unchanged
    mx_model = load_model_dir(model_dir, window_batch=2, engine="mxnet")
    assert mx_model.engine == "mxnet"
    x = np.random.default_rng(1).normal(size=(3, 4, 48, 48)).astype(np.float32)
    assert np.abs(onnx_model.forward(x) - mx_model.forward(x)).max() < 1e-4
    assert onnx_model.seconds_per_window is not None


@pytest.mark.parametrize("faster", ["onnx", "mxnet"])
def test_auto_serves_with_the_faster_engine(model_dir, monkeypatch, faster):
    def fake_time(forwards, batch, rounds=3):
        assert set(forwards) == {"mxnet", "onnx"} and hasattr(forwards["onnx"], "session")
        return {name: 0.1 if name == faster else 0.3 for name in forwards}

    monkeypatch.setattr(engines, "time_engines", fake_time)
    model = load_model_dir(model_dir, window_batch=2, engine="auto")
    assert model.engine == faster
    assert model.engine_timings == {"mxnet": pytest.approx(0.1 if faster == "mxnet" else 0.3),
                                    "onnx": pytest.approx(0.1 if faster == "onnx" else 0.3)}  # fmt: skip


def test_read_only_model_dir_exports_into_the_cache(tmp_path, monkeypatch):
    if os.geteuid() == 0:
        monkeypatch.setattr(engines.os, "access", lambda path, mode: False)
    directory = tmp_path / "model"
    write_tiny_model_dir(directory, num_classes=2, bands=4, crop_size=48, onnx=False)
    monkeypatch.setenv("EARTHMON_ONNX_CACHE", str(tmp_path / "cache"))
    mode = directory.stat().st_mode
    directory.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        path = engines.onnx_file(
            directory, __import__("json").loads((directory / "metadata.json").read_text())
        )
    finally:
        directory.chmod(mode)
    assert path.is_file() and path.is_relative_to(tmp_path / "cache")
    assert not (directory / "model.onnx").exists()
