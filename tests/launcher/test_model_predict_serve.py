"""`launcher predict --url` end to end against the image's real server (started from .venv-trainer)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from earthmon_testing import free_port, require

from launcher.cli import cli

ROOT = Path(__file__).resolve().parents[2]
TRAINER_PYTHON = ROOT / ".venv-trainer" / "bin" / "python"


@pytest.fixture(scope="module")
def served_model(tmp_path_factory):
    require(TRAINER_PYTHON.exists(), f"{TRAINER_PYTHON} is missing (make venv-trainer)")
    base = tmp_path_factory.mktemp("opt-ml")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(
        [str(TRAINER_PYTHON), "-c", "import sys; from segmentation_trainer.export import write_tiny_model_dir; "
         "write_tiny_model_dir(sys.argv[1], num_classes=2, bands=2, crop_size=64, nodata=0.0)", str(base / "model")],
        env=env, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    port = free_port()
    log = (base / "server.log").open("wb")
    proc = subprocess.Popen(
        [str(TRAINER_PYTHON), "-m", "segmentation_trainer.serve", "--host", "127.0.0.1", "--workers", "1"],
        env={**env, "SAGEMAKER_BASE_DIR": str(base), "SAGEMAKER_BIND_TO_PORT": str(port)},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, (base / "server.log").read_text()
        try:
            if urllib.request.urlopen(f"{url}/ping", timeout=2).status == 200:
                break
        except (urllib.error.URLError, ConnectionError):
            pass
        assert time.monotonic() < deadline, (base / "server.log").read_text()
        time.sleep(0.1)
    yield url
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0


def test_predict_url_tiles_and_keeps_georeferencing(served_model, tmp_path):
    import rasterio
    from rasterio.crs import CRS
    from rasterio.transform import from_origin

    data = np.random.default_rng(3).random((2, 260, 310), dtype=np.float32) + 0.1
    data[:, :, :7] = 0  # nodata border
    transform = from_origin(594000.0, 5757000.0, 0.5, 0.5)
    src_path = tmp_path / "sar.tif"
    profile = dict(driver="GTiff", width=310, height=260, count=2, dtype="float32", nodata=0)
    with rasterio.open(src_path, "w", crs=CRS.from_epsg(32631), transform=transform, **profile) as dst:
        dst.write(data)
    out = tmp_path / "mask.tif"
    args = ["predict", str(src_path), "--out", str(out), "--url", served_model, "--max-payload-mb", "0.25"]
    result = CliRunner().invoke(
        cli, [*args, "--margin", "16", "--accept", "image/tiff"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    assert '"tiles":' in result.output and '"tiles": 1,' not in result.output
    with rasterio.open(out) as src:
        assert src.crs.to_epsg() == 32631 and src.transform == transform and src.nodata == 255
        mask = src.read(1)
    assert mask.shape == (260, 310)
    assert (mask[:, :7] == 255).all()  # the server marks nodata pixels, the stitching keeps them
    assert set(np.unique(mask[:, 7:])) <= {0, 1}
