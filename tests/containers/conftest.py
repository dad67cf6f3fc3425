"""Container tests: the built images on a real Docker engine, run the way SageMaker, SDK local mode, `launcher
local`, a registry and users run them.

Build first (`make build`, or `.ci/containers`, which also installs and starts Docker). The image names come
from EARTHMON_PROCESSING_IMAGE / EARTHMON_TRAINING_IMAGE (default `earthmon-processing:dev` and
`earthmon-training:dev`). Without a Docker engine, an image or a server binary, the tests skip with the reason,
unless EARTHMON_REQUIRE_ALL=1 (CI), where they fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from earthmon_testing.containers import docker, require

REGION = "us-east-1"
BUCKET = "earthmon-test"


@pytest.fixture(scope="session")
def docker_engine() -> None:
    require(
        shutil.which("docker") is not None, "the docker client is not installed (apt-get install docker.io)"
    )
    info = subprocess.run(
        ["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True
    )
    require(
        info.returncode == 0, f"no Docker engine answers ({info.stderr.strip()[:200]}); see .ci/containers"
    )


def _image(env: str, default: str) -> str:
    name = os.environ.get(env, default)
    found = docker("image", "inspect", "--format", "{{.Id}}", name, check=False)
    require(found.returncode == 0, f"image {name} is not built: make build (or set {env})")
    return name


@pytest.fixture(scope="session")
def processing_image(docker_engine) -> str:
    return _image("EARTHMON_PROCESSING_IMAGE", "earthmon-processing:dev")


@pytest.fixture(scope="session")
def training_image(docker_engine) -> str:
    return _image("EARTHMON_TRAINING_IMAGE", "earthmon-training:dev")


@pytest.fixture
def aws(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """AWS pointed at the moto server (fresh state), with a bucket; returns the endpoint."""
    import urllib.request

    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    urllib.request.urlopen(urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST")).read()
    import boto3

    boto3.client("s3", region_name=REGION).create_bucket(Bucket=BUCKET)
    return moto_server


@pytest.fixture
def compose(docker_engine) -> Iterator[set[str]]:
    """SDK local mode's needs: docker-compose present. Yields the containers that existed before the test; the
    ones the test started, running or stopped, are removed afterwards whatever its outcome (a failed endpoint test
    must not keep holding port 8080)."""
    require(
        shutil.which("docker-compose") is not None,
        "docker-compose is not installed (apt-get install docker-compose)",
    )
    import tempfile

    tmp = Path(tempfile.gettempdir())
    tmp_before = {p.name for p in tmp.glob("tmp*")}
    before = set(docker("ps", "-aq").stdout.split())
    yield before
    left = set(docker("ps", "-aq").stdout.split()) - before
    if left:
        docker("rm", "-f", *sorted(left), check=False)
    # local mode writes its downloads under the launcher's scratch folder, removed afterwards: nothing left in /tmp
    leaked = sorted({p.name for p in tmp.glob("tmp*") if p.is_dir()} - tmp_before)
    assert not leaked, f"SageMaker local mode left folders in {tmp}: {leaked}"


class _RangeHandler(SimpleHTTPRequestHandler):
    """Static files with single byte ranges (what GDAL's /vsicurl/ asks for): 206 with Content-Range, 416 when
    the range starts past the end."""

    def log_message(self, *args) -> None:
        pass

    def send_head(self):  # noqa: D102 - SimpleHTTPRequestHandler's hook
        header = self.headers.get("Range")
        path = self.translate_path(self.path)
        if not header or not os.path.isfile(path):
            return super().send_head()
        start_s, _, end_s = header.removeprefix("bytes=").partition("-")
        size = os.path.getsize(path)
        start = int(start_s) if start_s else max(0, size - int(end_s))
        end = min(int(end_s), size - 1) if start_s and end_s else size - 1
        if start >= size:
            self.send_error(416)
            return None
        f = open(path, "rb")  # noqa: SIM115 - closed by copyfile's caller
        f.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", "image/tiff")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        self._remaining = end - start + 1
        return f

    def copyfile(self, source, outputfile) -> None:
        remaining = getattr(self, "_remaining", None)
        if remaining is None:
            return super().copyfile(source, outputfile)
        while remaining > 0:
            chunk = source.read(min(65536, remaining))
            if not chunk:
                break
            outputfile.write(chunk)
            remaining -= len(chunk)
        self._remaining = None


@pytest.fixture
def range_server():
    """Serve a folder over HTTP with Range support on an address of the host that containers on a user-defined
    bridge network (SageMaker local mode's `sagemaker-local`) can reach: that network's gateway."""
    import functools
    import threading

    started: list[ThreadingHTTPServer] = []

    def serve(root: str, network: str = "sagemaker-local") -> str:
        if docker("network", "inspect", network, check=False).returncode != 0:
            docker("network", "create", network)
        gateway = docker(
            "network", "inspect", network, "--format", "{{range .IPAM.Config}}{{.Gateway}}{{end}}"
        ).stdout.strip()
        require(bool(gateway), f"docker network {network} has no gateway address")
        server = ThreadingHTTPServer((gateway, 0), functools.partial(_RangeHandler, directory=root))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        started.append(server)
        return f"http://{gateway}:{server.server_address[1]}"

    yield serve
    for server in started:
        server.shutdown()
        server.server_close()
