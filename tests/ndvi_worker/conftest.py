"""Fixtures for the NDVI worker tests: real and synthetic scenes, an nginx server with Range support, a moto S3."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from earthmon_testing.worker import SAMPLE, free_port, need, wait_port


@pytest.fixture
def sample_scene(tmp_path: Path) -> Path:
    """The real downsampled S2A_29RKH_20200219_0_L2A scene with its real item, hrefs made relative."""
    dst = tmp_path / "input" / SAMPLE.name
    shutil.copytree(SAMPLE, dst)
    for p in dst.iterdir():
        p.chmod(0o644)
    item_path = dst / f"{SAMPLE.name}.json"
    item = json.loads(item_path.read_text())
    for key, name in (("red", "B04.tif"), ("nir", "B08.tif"), ("scl", "SCL.tif")):
        item["assets"][key]["href"] = f"./{name}"
    item_path.write_text(json.dumps(item))
    return item_path


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    """Three small synthetic scenes (v1 offset-applied, v0 raw DN, v1 offset-applied), generated once."""
    from ndvi_worker.synthetic import write_scenes

    root = tmp_path_factory.mktemp("synthetic")
    write_scenes(root, count=3, size=512)
    return root


@pytest.fixture
def synthetic_input(synthetic_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "input"
    shutil.copytree(synthetic_dir, dst)
    return dst


@pytest.fixture
def run_worker(tmp_path: Path):
    """Run ``python -m ndvi_worker`` in a subprocess with SAGEMAKER_BASE_DIR under tmp_path."""

    def _run(*args: str, base: Path | None = None, env: dict | None = None, check_code: int | None = None):
        base = base or tmp_path / "opt-ml"
        full_env = {**os.environ, "SAGEMAKER_BASE_DIR": str(base), **(env or {})}
        proc = subprocess.run(
            [sys.executable, "-m", "ndvi_worker", "--workers", "2", *args],
            env=full_env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if check_code is not None:
            assert proc.returncode == check_code, proc.stdout + proc.stderr
        return proc

    return _run


@pytest.fixture(scope="session")
def nginx(tmp_path_factory):
    """Start nginx serving a folder on 127.0.0.1 (Range requests supported); yields (root, base_url, log)."""
    exe = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    need(exe is not None, "nginx is not installed (apt-get install nginx-light)")
    work = tmp_path_factory.mktemp("nginx")
    root = work / "www"
    root.mkdir()
    port = free_port()
    conf = work / "nginx.conf"
    conf.write_text(
        ("user root;\n" if os.geteuid() == 0 else "")
        + f"""daemon off; worker_processes 1; pid {work}/nginx.pid; error_log {work}/error.log;
events {{ worker_connections 128; }}
http {{
  log_format ranges '$status $request_method $uri $http_range';
  access_log {work}/access.log ranges;
  client_body_temp_path {work}; proxy_temp_path {work}; fastcgi_temp_path {work};
  uwsgi_temp_path {work}; scgi_temp_path {work};
  server {{ listen 127.0.0.1:{port}; root {root};
    location /flaky/ {{ return 503; }} }}
}}
"""
    )
    proc = subprocess.Popen([exe, "-c", str(conf), "-e", str(work / "error.log")])
    try:
        wait_port(port)
        yield root, f"http://127.0.0.1:{port}", work / "access.log"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="session")
def moto_s3(moto_server: str) -> str:
    """The shared moto server (tests/conftest.py), used here for its S3 API."""
    return moto_server
