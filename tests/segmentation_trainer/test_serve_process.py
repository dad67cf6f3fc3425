"""`python -m segmentation_trainer.serving` as a real server process (gunicorn workers) on loopback."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from earthmon_testing import free_port

requests = pytest.importorskip("requests")
pytest.importorskip("gunicorn")
pytest.importorskip("mxnet")

ROOT = Path(__file__).resolve().parents[2]


def npy(array) -> bytes:
    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


class Server:
    def __init__(self, base_dir: Path, workers: int = 2, extra_env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "SAGEMAKER_BASE_DIR": str(base_dir),
            "SAGEMAKER_BIND_TO_PORT": str(self.port),
            "SAGEMAKER_MODEL_SERVER_WORKERS": str(workers),
            "PYTHONPATH": str(ROOT),
            **(extra_env or {}),
        }
        self.log = base_dir / f"server-{self.port}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "segmentation_trainer.serving", "--host", "127.0.0.1"],
            env=env,
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 60.0) -> list[int]:
        """Poll /ping until 200; returns the statuses seen before (connection errors as 0)."""
        seen = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                status = requests.get(f"{self.url}/ping", timeout=2).status_code
            except requests.ConnectionError:
                status = 0
            if status == 200:
                return seen
            seen.append(status)
            time.sleep(0.05)
        raise AssertionError(f"server not ready in {timeout} s:\n{self.log.read_text()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return self.proc.wait()
        return self.proc.returncode


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    from segmentation_trainer.export import write_tiny_model_dir

    base = tmp_path_factory.mktemp("opt-ml")
    write_tiny_model_dir(base / "model", num_classes=2, bands=4, crop_size=64, nodata=0.0)
    return base


@pytest.fixture(scope="module")
def server(base_dir):
    srv = Server(base_dir, workers=2)
    srv.wait_ready()
    yield srv
    assert srv.stop() == 0, srv.log.read_text()


def test_contract_over_http(server):
    image = np.random.default_rng(0).random((4, 100, 140), dtype=np.float32)
    response = requests.post(
        f"{server.url}/invocations",
        data=npy(image),
        headers={"Content-Type": "application/x-npy", "Accept": "application/json"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    summary = response.json()
    assert (summary["height"], summary["width"]) == (100, 140)
    assert summary["valid_pixels"] + summary["ignored_pixels"] == 100 * 140
    params = requests.get(f"{server.url}/execution-parameters", timeout=5).json()
    assert params["MaxConcurrentTransforms"] == 2 and params["MaxPayloadInMB"] == 6
    bad = requests.post(
        f"{server.url}/invocations", data=b"x", headers={"Content-Type": "text/csv"}, timeout=5
    )
    assert bad.status_code == 415 and "error" in bad.json()


def test_oversized_body_is_413_without_reading_it(server):
    body = b"\0" * (6 * 1024 * 1024 + 1)
    response = requests.post(
        f"{server.url}/invocations", data=body, headers={"Content-Type": "application/x-npy"}, timeout=30
    )
    assert response.status_code == 413


def served_by(log: Path) -> list[str]:
    """Worker pids of the /invocations lines of the access log, in order."""
    lines = log.read_text().splitlines()
    return [line.split()[1] for line in lines if line.startswith("worker ") and "/invocations" in line]


def gunicorn_workers(pid: int) -> list[str]:
    """The gunicorn workers under `serve` (pid): its children, or with the nginx front (nginx and gunicorn
    children), the gunicorn master's."""

    def children(parent: str) -> list[tuple[str, str]]:
        out = subprocess.run(["ps", "-o", "pid=,args=", "--ppid", parent], capture_output=True, text=True)
        return [tuple(line.split(None, 1)) for line in out.stdout.strip().splitlines()]

    kids = children(str(pid))
    masters = [p for p, args in kids if "--unix-socket" in args]
    return [p for p, _ in children(masters[0])] if masters else [p for p, _ in kids]


def test_a_busy_worker_leaves_new_requests_to_an_idle_one(server):
    workers = gunicorn_workers(server.proc.pid)
    assert len(workers) == 2
    big = npy(np.random.default_rng(1).random((4, 500, 500), dtype=np.float32))
    before = len(served_by(server.log))
    statuses = []

    def call():
        headers = {"Content-Type": "application/x-npy"}
        statuses.append(
            requests.post(f"{server.url}/invocations", data=big, headers=headers, timeout=60).status_code
        )

    threads = [threading.Thread(target=call) for _ in range(2)]
    threads[0].start()
    time.sleep(0.5)  # the first request is being computed by one worker
    threads[1].start()
    for t in threads:
        t.join()
    assert statuses == [200, 200]
    time.sleep(0.2)  # the access log line is written after the response
    pids = served_by(server.log)[before:]
    assert len(pids) == 2 and len(set(pids)) == 2, server.log.read_text()[-2000:]


def test_sigterm_finishes_the_request_in_flight(base_dir):
    srv = Server(base_dir, workers=1, extra_env={"SAGEMAKER_MAX_PAYLOAD_IN_MB": "20"})
    try:
        before = srv.wait_ready()
        assert all(s in (0, 503) for s in before)  # never 200 before the model is loaded
        big = npy(np.random.default_rng(2).random((4, 1000, 1000), dtype=np.float32))
        result = {}

        def call():
            started = time.monotonic()
            r = requests.post(
                f"{srv.url}/invocations", data=big, headers={"Content-Type": "application/x-npy"}, timeout=60
            )
            result.update(status=r.status_code, done=time.monotonic(), started=started, size=len(r.content))

        thread = threading.Thread(target=call)
        thread.start()
        time.sleep(0.5)  # the request is being computed
        t0 = time.monotonic()
        assert requests.get(f"{srv.url}/ping", timeout=2).status_code == 200  # answered beside the inference
        ping_s = time.monotonic() - t0
        signalled = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        port_closed_s = None  # the front stops accepting at once (an orchestrator's kill timeout is ~10 s)
        while time.monotonic() - signalled < 5 and port_closed_s is None:
            try:
                socket.create_connection(("127.0.0.1", srv.port), timeout=0.2).close()
                time.sleep(0.05)
            except OSError:
                port_closed_s = time.monotonic() - signalled
        thread.join(60)
        code = srv.proc.wait(30)
    finally:
        srv.stop()
    assert port_closed_s is not None and port_closed_s < 2.0, port_closed_s
    assert result["status"] == 200 and result["size"] > 0
    assert result["done"] > signalled, "the request finished before SIGTERM: make it bigger"
    assert ping_s < 1.0
    assert code == 0
    log = srv.log.read_text()
    assert "Handling signal: term" in log


def test_missing_model_dir_fails_fast(tmp_path):
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "segmentation_trainer",
            "serve",
        ],  # the image entry point: docker run IMAGE serve
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr and "SAGEMAKER_BASE_DIR" in proc.stderr


def test_the_master_process_never_imports_mxnet():
    """Workers import MXNet after the fork: the module the master runs must not pull it in."""
    code = (
        "import sys; from segmentation_trainer.serving import server; "
        "server.ServeConfig.from_env({}); server.gunicorn_options(server.ServeConfig.from_env({})); "
        "print('mxnet' in sys.modules, 'gluoncv' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False False"
