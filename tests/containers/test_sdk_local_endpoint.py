"""`launcher deploy --local` and `launcher predict --local`: the training image's `serve` hosted by SageMaker SDK
2.x local mode (Debian's docker-compose 1.29) from a model.tar.gz in a moto S3, a GeoTIFF predicted through the
SDK's local runtime client in several tiles, the mask compared with the same image served by plain `docker run`,
and the endpoint stopped by Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from earthmon_testing.containers import docker, free_port, http, require, wait_http

pytestmark = pytest.mark.docker

BUCKET = "earthmon-test"
LOCAL_PORT = 8080  # SDK local mode serves on localhost:8080 (sagemaker.local default)
ROLE = "arn:aws:iam::000000000000:role/local"


@pytest.fixture
def model_dir(training_image: str, tmp_path: Path) -> Path:
    """A complete 4-band model directory (tiny untrained DeepLab) written by the image's own package."""
    out = tmp_path / "model"
    out.mkdir()
    docker(
        "run", "--rm", "-v", f"{out}:/out", training_image, "python", "-c",
        "from segmentation_trainer.export import write_tiny_model_dir; "
        "write_tiny_model_dir('/out', num_classes=2, bands=4, crop_size=64, seed=3)",
    )  # fmt: skip
    names = sorted(p.name for p in out.iterdir())
    assert {"model_algo-1", "metadata.json"} <= set(names), names
    return out


def _scene(path: Path) -> None:
    """A 4-band uint16 GeoTIFF (UTM 31N) large enough to need several tiles at a 0.2 MB payload limit."""
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(7)
    data = rng.integers(0, 3000, size=(4, 300, 260), dtype=np.uint16)
    data[:, 100:180, 90:200] += 4000  # a bright block, so the classes differ across the image
    profile = dict(driver="GTiff", width=260, height=300, count=4, dtype="uint16", crs="EPSG:32631",
                   transform=from_origin(600000, 5700000, 10, 10))  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)


def _launcher(*args: str) -> list[str]:
    return [sys.executable, "-m", "launcher", *args]


def _port_free(port: int) -> bool:
    """Whether a server could listen on ``port`` now: bind with SO_REUSEADDR, as every server does (nginx,
    gunicorn, docker-proxy). A plain bind is not the question: it also fails for the 60 s a closed connection of
    the port spends in TIME-WAIT (the SDK's own health-check connection ends when the endpoint stops), while
    nothing listens."""
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _port_diagnostics(port: int) -> str:
    """What holds ``port``: its sockets (listening or not, with their process), docker-proxy processes and every
    container with its compose labels, for the failure message."""
    out = []
    for cmd in (["ss", "-tanp", f"( sport = :{port} or dport = :{port} )"], ["pgrep", "-a", "docker-proxy"],
                ["docker", "ps", "-a", "--format",
                 '{{.ID}} {{.Status}} {{.Ports}} {{.Label "com.docker.compose.project.working_dir"}}'],
                ["docker", "network", "ls"]):  # fmt: skip
        try:
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
            out.append(f"$ {' '.join(cmd)}\n{run.stdout}{run.stderr}")
        except (OSError, subprocess.SubprocessError) as exc:
            out.append(f"$ {' '.join(cmd)}: {exc}")
    return "\n".join(out)


def test_deploy_and_predict_in_sdk_local_mode(
    training_image: str, model_dir: Path, aws: str, tmp_path: Path, compose: set[str]
) -> None:
    import boto3
    import rasterio

    require(_port_free(LOCAL_PORT), f"port {LOCAL_PORT} (SDK local mode's endpoint port) is taken")
    tarball = tmp_path / "model.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        for p in sorted(model_dir.iterdir()):
            tar.add(p, arcname=p.name)
    boto3.client("s3").upload_file(str(tarball), BUCKET, "models/tiny/model.tar.gz")
    scene = tmp_path / "scene.tif"
    _scene(scene)
    before = compose

    # deploy --local blocks until Ctrl-C: run it as the user would, in its own process group.
    deploy_log = tmp_path / "deploy.log"
    with open(deploy_log, "wb") as log:
        deploy = subprocess.Popen(
            _launcher("deploy", "--local", "--name", "tiny-local", "--image", training_image, "--role", ROLE,
                      "--model-data", f"s3://{BUCKET}/models/tiny/model.tar.gz",
                      "--env", "SAGEMAKER_MODEL_SERVER_WORKERS=1"),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=os.environ.copy(),
        )  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{LOCAL_PORT}/ping", timeout=300)
        serving = [c for c in docker("ps", "-q").stdout.split() if c not in before]
        assert serving, "no new container serves the local endpoint"
        images = docker("inspect", "--format", "{{.Config.Image}}", *serving).stdout.split()
        assert images == [training_image], images

        out_local = tmp_path / "mask-local.tif"
        predict = subprocess.run(
            _launcher("predict", str(scene), "--out", str(out_local), "--local", "--max-payload-mb", "0.2",
                      "--margin", "16", "--concurrency", "2"),
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert predict.returncode == 0, predict.stdout[-3000:] + predict.stderr[-3000:]
        summary = json.loads(predict.stdout[predict.stdout.index("{") :])
        assert summary["tiles"] > 1, summary
        assert (summary["height"], summary["width"], summary["bands"]) == (300, 260, 4)
        assert sum(summary["class_pixels"].values()) == 300 * 260

        # A corrupt body through the same local endpoint: a client error, not a crash of the endpoint.
        status, _, body = http(
            f"http://127.0.0.1:{LOCAL_PORT}/invocations", b"II*\x00garbage", {"Content-Type": "image/tiff"}
        )
        assert 400 <= status < 500, (status, body[:300])
        assert wait_http(f"http://127.0.0.1:{LOCAL_PORT}/ping", timeout=10) == 200
    finally:
        # Ctrl-C: deploy --local deletes the endpoint and stops the container
        deploy.send_signal(signal.SIGINT)
        try:
            deploy.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(deploy.pid, signal.SIGKILL)
            deploy.wait()
        log_text = deploy_log.read_text(errors="replace")
        print(log_text[-4000:])
    assert deploy.returncode == 0, log_text[-4000:]
    assert "serving on http://localhost:8080" in log_text
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not _port_free(LOCAL_PORT):
        time.sleep(1)
    if not _port_free(LOCAL_PORT):
        pytest.fail("the local endpoint still listens after Ctrl-C\n" + _port_diagnostics(LOCAL_PORT))
    left = set(docker("ps", "-aq").stdout.split()) - before
    assert not left, f"containers left after Ctrl-C (running or stopped): {left}"

    # The same model served by plain `docker run IMAGE serve`: the SDK path must give the same mask.
    port = free_port()
    name = f"earthmon-serve-compare-{port}"
    docker(
        "run", "-d", "--name", name, "--network", "host", "-e", f"SAGEMAKER_BIND_TO_PORT={port}",
        "-e", "SAGEMAKER_MODEL_SERVER_WORKERS=1", "-v", f"{model_dir}:/opt/ml/model:ro", training_image, "serve",
    )  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", timeout=240)
        out_url = tmp_path / "mask-url.tif"
        direct = subprocess.run(
            _launcher("predict", str(scene), "--out", str(out_url), "--url", f"http://127.0.0.1:{port}",
                      "--max-payload-mb", "0.2", "--margin", "16"),
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert direct.returncode == 0, direct.stdout[-3000:] + direct.stderr[-3000:]
    finally:
        docker("rm", "-f", name, check=False)
    with rasterio.open(out_local) as a, rasterio.open(out_url) as b, rasterio.open(scene) as src:
        assert a.crs == src.crs and a.transform == src.transform and a.shape == src.shape
        mask_local, mask_url = a.read(1), b.read(1)
    np.testing.assert_array_equal(mask_local, mask_url)
    assert set(np.unique(mask_local)) <= {0, 1}
