"""The server stays healthy under hostile or mistaken input (issue 9): a request deadline that answers 504 and
frees the inference slot, /ping within 2 s while every slot is busy and more invocations queue, and slow or
stalled clients (trickled headers, trickled bodies) that cannot hold the server. In-process for the deadline
logic (a real tiny MXNet model whose forward is slowed down), then against the real server process (nginx in
front of gunicorn, as in the image) on loopback."""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from earthmon_testing.serving import Server
from segmentation_trainer.serving.app import create_app
from segmentation_trainer.serving.config import ServeConfig
from segmentation_trainer.serving.model import LoadedModel, load_model_dir

requests = pytest.importorskip("requests")
pytest.importorskip("gunicorn")
pytest.importorskip("mxnet")

ROOT = Path(__file__).resolve().parents[2]
RNG = np.random.default_rng(9)


def npy(array) -> bytes:
    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


def sar(height: int, width: int) -> np.ndarray:
    return RNG.random((4, height, width), dtype=np.float32) + 0.1  # no nodata pixels


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    from segmentation_trainer.export import write_tiny_model_dir

    base = tmp_path_factory.mktemp("opt-ml")
    write_tiny_model_dir(base / "model", num_classes=2, bands=4, crop_size=64, nodata=0.0)
    return base


# ----------------------------------------------------------------------------------------------- in process
class SlowForward:
    """The real network's forward, plus ``delay`` seconds per batch of windows (a big model on a small CPU)."""

    def __init__(self, forward, delay: float):
        self.forward, self.delay, self.calls = forward, delay, 0

    def __call__(self, batch):
        self.calls += 1
        time.sleep(self.delay)
        return self.forward(batch)


def slow_client(base_dir, delay: float, deadline_s: float):
    real = load_model_dir(base_dir / "model")
    slow = SlowForward(real.forward, delay)
    model = LoadedModel(slow, real.metadata)  # no speed measured yet: nothing is refused before it starts
    config = ServeConfig(model_dir=base_dir / "model", timeout_s=60, deadline_s=deadline_s)
    app = create_app(config, loader=lambda: model)
    assert app.extensions["earthmon.model"].wait(30)
    return app.test_client(), slow, model


def post(client, body):
    return client.post(
        "/invocations", data=body, headers={"Content-Type": "application/x-npy", "Accept": "application/json"}
    )


def test_a_slow_prediction_stops_at_its_deadline_and_frees_the_slot(base_dir):
    client, slow, _ = slow_client(base_dir, delay=0.2, deadline_s=1.0)
    big = npy(sar(400, 400))  # 81 windows of 64: 21 batches x 0.2 s = 4 s, over the 1 s deadline
    started = time.monotonic()
    response = post(client, big)
    took = time.monotonic() - started
    assert response.status_code == 504, response.data
    message = response.json["error"]
    assert "EARTHMON_REQUEST_DEADLINE_S" in message and "smaller images or tiles" in message
    assert "windows predicted" in message and "\n" not in message
    assert took < 1.0 + 0.2 + 0.5, took  # the deadline plus at most one batch (cooperative cancellation)
    assert slow.calls < 21
    # the slot is free: the next request is served
    small = post(client, npy(sar(64, 64)))
    assert small.status_code == 200, small.data


def test_an_image_that_cannot_finish_in_time_is_refused_before_it_starts(base_dir):
    client, slow, model = slow_client(base_dir, delay=0.2, deadline_s=1.0)
    assert post(client, npy(sar(150, 150))).status_code == 200  # 9 windows in 0.6 s: the speed is measured
    assert model.seconds_per_window is not None
    calls = slow.calls
    started = time.monotonic()
    response = post(client, npy(sar(400, 400)))  # 81 windows at about 0.07 s each: 5 s
    assert response.status_code == 504
    assert time.monotonic() - started < 0.5 and slow.calls == calls  # refused before any forward pass
    assert "needs 81 windows" in response.json["error"]


def test_deadline_settings_are_validated(tmp_path):
    config = ServeConfig.from_env({"SAGEMAKER_MODEL_SERVER_TIMEOUT": "1"}, model_dir=tmp_path)
    assert config.deadline_s == 1.0  # never past the hard limit
    assert ServeConfig.from_env({}, model_dir=tmp_path).deadline_s == 50.0  # below SageMaker's 60 s
    with pytest.raises(ValueError, match="EARTHMON_REQUEST_DEADLINE_S must be > 0 and at most"):
        ServeConfig.from_env({"EARTHMON_REQUEST_DEADLINE_S": "90"}, model_dir=tmp_path)
    with pytest.raises(ValueError, match="invalid EARTHMON_REQUEST_DEADLINE_S='soon'"):
        ServeConfig.from_env({"EARTHMON_REQUEST_DEADLINE_S": "soon"}, model_dir=tmp_path)
    with pytest.raises(ValueError, match="EARTHMON_SERVE_FRONT must be one of auto, nginx, none"):
        ServeConfig.from_env({"EARTHMON_SERVE_FRONT": "apache"}, model_dir=tmp_path)
    with pytest.raises(ValueError, match="EARTHMON_QUEUE_PER_WORKER must be >= 0"):
        ServeConfig.from_env({"EARTHMON_QUEUE_PER_WORKER": "-1"}, model_dir=tmp_path)


# ----------------------------------------------------------------------------------------------- the process
@pytest.fixture
def server(base_dir, request):
    srv = Server(base_dir, getattr(request, "param", {}))
    yield srv
    code = srv.stop()
    assert code == 0, srv.log.read_text()[-3000:]


@pytest.mark.parametrize(
    "server",
    [{"SAGEMAKER_MODEL_SERVER_TIMEOUT": "1", "SAGEMAKER_MAX_PAYLOAD_IN_MB": "40"}],
    indirect=True,
)
def test_a_request_past_its_deadline_is_answered_504_and_the_next_one_is_served(server):
    """The finding: SAGEMAKER_MODEL_SERVER_TIMEOUT=1 and a large image ran 52 s and got 200."""
    big = npy(sar(1500, 1500))  # 1225 windows of 64 (36 MB): several seconds of the tiny network here
    started = time.monotonic()
    response = server.invoke(big)
    took = time.monotonic() - started
    assert response.status_code == 504, response.text[:500]
    assert response.headers["Content-Type"].startswith("application/json")
    assert "EARTHMON_REQUEST_DEADLINE_S" in response.json()["error"]
    assert took < 1.0 + 1.5, took  # 1 s deadline (decoding 36 MB counts) plus the upload on loopback
    small_started = time.monotonic()
    assert server.invoke(npy(sar(64, 64)), timeout=10).status_code == 200  # the slot is free again
    print(
        f"\n504 after {took:.2f} s (deadline 1 s); next request in {time.monotonic() - small_started:.2f} s"
    )


@pytest.mark.parametrize(
    "server", [{"EARTHMON_REQUEST_DEADLINE_S": "20", "SAGEMAKER_MAX_PAYLOAD_IN_MB": "20"}], indirect=True
)
def test_ping_answers_within_2_s_while_every_slot_is_busy_and_more_queue(server):
    """1 worker: one running inference, EARTHMON_QUEUE_PER_WORKER (2) waiting, 3 more beyond: /ping stays fast
    and the invocations beyond the queue get 503 with what to do, at once."""
    body = npy(sar(700, 700))  # 289 windows: a second or more each here
    results: list[tuple[int, float, str]] = []

    def call():
        started = time.monotonic()
        r = server.invoke(body)
        results.append((r.status_code, time.monotonic() - started, r.text))

    threads = [threading.Thread(target=call) for _ in range(6)]
    for t in threads:
        t.start()
        time.sleep(0.05)
    time.sleep(0.5)  # all six are in: one runs, two wait, three were refused
    pings = [server.ping_s() for _ in range(5)]
    for t in threads:
        t.join(120)
    statuses = sorted(s for s, _, _ in results)
    print(f"\n/ping under load: max {max(pings) * 1e3:.0f} ms; invocations {statuses}")
    assert max(pings) < 2.0, pings
    assert statuses.count(200) >= 3 and statuses.count(503) >= 1, results
    for status, took, text in results:
        if status == 503:
            assert "server busy" in json.loads(text)["error"] and took < 2.0


def _slow_sockets(port: int, count: int, kind: str) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        if kind == "headers":
            s.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\n")
        else:
            s.sendall(
                b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-npy\r\n"
                b"Content-Length: 100000\r\n\r\n"
            )
        socks.append(s)
    return socks


@pytest.mark.parametrize("server", [{"EARTHMON_CLIENT_TIMEOUT_S": "3"}], indirect=True)
def test_trickled_headers_and_bodies_cannot_hold_the_server(server):
    """16 slowloris connections (8 trickling headers, 8 trickling bodies, one byte every 0.5 s) against 1 worker
    of 5 threads: /ping and a real invocation stay fast throughout; headers not complete within
    EARTHMON_CLIENT_TIMEOUT_S and a body that stalls for longer are cut off."""
    headers = _slow_sockets(server.port, 8, "headers")
    bodies = _slow_sockets(server.port, 8, "body")
    stalled = _slow_sockets(server.port, 1, "body")[0]  # sends nothing more
    opened = time.monotonic()
    cut: dict[str, list[float]] = {"headers": [], "body": []}
    live = {"headers": list(headers), "body": list(bodies)}
    pings, invoke_s = [], []
    try:
        for _ in range(12):  # 6 s of trickling
            for kind, socks in live.items():
                for s in list(socks):
                    try:
                        s.sendall(b"X" if kind == "headers" else b"\0")
                    except OSError:  # reset or closed by the server
                        cut[kind].append(time.monotonic() - opened)
                        socks.remove(s)
            pings.append(server.ping_s())
            started = time.monotonic()
            assert server.invoke(npy(sar(64, 64)), timeout=10).status_code == 200
            invoke_s.append(time.monotonic() - started)
            time.sleep(0.5)
        stalled.settimeout(1)
        try:
            answer = stalled.recv(4096)  # stalled for 6 s: cut off after 3 (EARTHMON_CLIENT_TIMEOUT_S)
        except ConnectionResetError:
            answer = b""
        assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer[:200]
    finally:
        for s in [*headers, *bodies, stalled]:
            s.close()
    print(
        f"\n/ping with 16 slow clients: max {max(pings) * 1e3:.0f} ms; invocation max {max(invoke_s):.2f} s; "
        f"trickled headers cut after {min(cut['headers'], default=0):.1f}-{max(cut['headers'], default=0):.1f} s; "
        f"trickled bodies still open: {len(live['body'])}"
    )
    assert max(pings) < 2.0, pings
    assert max(invoke_s) < 2.0, invoke_s
    assert len(cut["headers"]) == 8 and max(cut["headers"]) < 3 + 1.5, cut  # the whole header within 3 s
    assert len(live["body"]) == 8  # a trickling body is read by nginx (no thread held) while it keeps coming
