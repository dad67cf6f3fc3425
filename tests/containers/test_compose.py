"""docker-compose.yml as the README says to use it: `docker-compose up` runs the worker on sample scenes, trains on
sample SN6-like data, serves the model (healthcheck on /ping) and offers a local S3 for launcher runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from earthmon_testing.containers import REPO, docker, free_port, http, require

pytestmark = pytest.mark.docker


def _state(container: str) -> dict:
    return json.loads(docker("inspect", container).stdout)[0]["State"]


def test_compose_up_runs_worker_trainer_serve_and_s3(
    processing_image, training_image, tmp_path: Path
) -> None:
    binary = shutil.which("docker-compose")
    require(binary is not None, "docker-compose is not installed (apt-get install docker-compose)")
    moto_image = os.environ.get("EARTHMON_MOTO_IMAGE", "earthmon-moto:dev")
    require(docker("image", "inspect", moto_image, check=False).returncode == 0, "make build-moto first")
    shutil.copy(REPO / "docker-compose.yml", tmp_path / "docker-compose.yml")  # outputs land beside it
    project = f"earthmon-compose-test-{os.getpid()}"
    serve_port, s3_port = free_port(), free_port()
    env = {
        **os.environ,
        "EARTHMON_PROCESSING_IMAGE": processing_image,
        "EARTHMON_TRAINING_IMAGE": training_image,
        "EARTHMON_MOTO_IMAGE": moto_image,
        "EARTHMON_SERVE_PORT": str(serve_port),
        "EARTHMON_S3_PORT": str(s3_port),
    }
    compose = [binary, "-p", project, "-f", str(tmp_path / "docker-compose.yml")]
    up = subprocess.run(
        [*compose, "up", "-d", "--no-build"], env=env, capture_output=True, text=True, timeout=900
    )
    try:
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        out = tmp_path / "demo-output/compose"
        # worker: NDVI for the 3 sample scenes, the broken one reported, exit 1 as a processing job would
        deadline = time.monotonic() + 600
        while _state(f"{project}_worker_1")["Status"] != "exited" and time.monotonic() < deadline:
            time.sleep(2)
        assert _state(f"{project}_worker_1")["ExitCode"] == 1
        tifs = sorted(p.name for p in (out / "processing/output").glob("*_ndvi.tif"))
        assert len(tifs) == 3, tifs
        report = json.loads((out / "processing/output/_reports/algo-1.json").read_text())
        assert [s["status"] for s in report["scenes"] if s["item_id"] == "S2B_00XXX_20231204_0_L2A"] == [
            "failed"
        ]
        # trainer -> serve: healthy once the model from the training job is loaded
        while time.monotonic() < deadline:
            health = _state(f"{project}_serve_1").get("Health", {}).get("Status")
            if health == "healthy" or _state(f"{project}_serve_1")["Status"] == "exited":
                break
            time.sleep(3)
        assert _state(f"{project}_trainer_1")["ExitCode"] == 0
        assert (out / "opt-ml/model/model_algo-1").exists()
        assert health == "healthy", docker("logs", f"{project}_serve_1", check=False).stderr[-3000:]
        assert http(f"http://127.0.0.1:{serve_port}/ping")[0] == 200  # the published port
        assert http(f"http://127.0.0.1:{serve_port}/ping")[1].get("Server") == "nginx"  # the image's front
        bindings = json.loads(docker("inspect", f"{project}_serve_1").stdout)[0]["HostConfig"]["PortBindings"]
        assert [b["HostIp"] for b in bindings["8080/tcp"]] == ["127.0.0.1"]  # this machine only
        # s3: a local S3 for the launcher
        import boto3

        s3 = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{s3_port}",
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        s3.create_bucket(Bucket="earthmon-compose")
        assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["earthmon-compose"]
    finally:
        subprocess.run(
            [*compose, "down", "-v", "--remove-orphans"], env=env, capture_output=True, timeout=300
        )


def _published(env: dict[str, str]) -> dict[str, list[str]]:
    """Published ports per service as `docker-compose config` resolves them ("HOST_IP:PORT:TARGET")."""
    import yaml

    out = subprocess.run(
        [shutil.which("docker-compose"), "-f", str(REPO / "docker-compose.yml"), "config"],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    published = {}
    for name, service in yaml.safe_load(out)["services"].items():
        ports = []
        for port in service.get("ports", []):
            if isinstance(port, dict):  # compose v2's long syntax
                port = f"{port.get('host_ip', '')}:{port['published']}:{port['target']}"
            ports.append(str(port).removesuffix("/tcp"))
        if ports:
            published[name] = ports
    return published


def test_published_ports_listen_on_loopback_unless_told_otherwise() -> None:
    require(shutil.which("docker-compose") is not None, "docker-compose is not installed")
    assert _published({}) == {"s3": ["127.0.0.1:5000:5000"], "serve": ["127.0.0.1:8080:8080"]}
    assert _published({"EARTHMON_BIND": "0.0.0.0", "EARTHMON_SERVE_PORT": "9000"}) == {
        "s3": ["0.0.0.0:5000:5000"],
        "serve": ["0.0.0.0:9000:8080"],
    }
