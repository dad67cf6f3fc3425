"""Regression tests of the red team's endpoint findings (tests/redteam_findings.md: F1, F7, F8, F13), each with the
finding's own crafted body or request against the real app (in process) or the real server (nginx in front of
gunicorn, as in the image).

- F1: a progressive JPEG of 25 000 scans (890 KB) held a worker for 70 s until the watchdog killed it. Now 413 at
  once, from the marker walk, with the worker still running and /ping 200 throughout.
- F7: an 8000 x 8000 x 4 float32 deflate TIFF of 1 MB grew the worker's peak RSS by 2 GB (GDAL's block cache on
  top of the array). Now the growth stays within the documented budget (decoded size + GDAL_CACHEMAX).
- F8: refusals from Flask (405 for GET/PUT/OPTIONS) and from nginx (TRACE, smuggling tricks, long URIs/headers)
  were HTML; a worker dying mid-request answered 502. Now every one is JSON with an "error" key, and 503.
- F13: complex TIFFs, GDAL's in-memory file names, the echoed Content-Type, /ping's load-failure details.
"""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from earthmon_testing import TESTS
from earthmon_testing.serving import make_client
from segmentation_trainer import codecs
from segmentation_trainer.serving.app import create_app
from segmentation_trainer.serving.config import ServeConfig

REPO = Path(__file__).resolve().parents[2]
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)


# ----------------------------------------------------------------------------------------------- crafted bodies
def scan_bomb(scans: int = 25000, size: int = 4096) -> bytes:
    """The finding's JPEG: a progressive grayscale JPEG with its smallest AC-first scan repeated ``scans`` times."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("L", (size, size), 128).save(out, "JPEG", progressive=True)
    data = out.getvalue()
    i, found = 2, []
    while data[i + 1] != 0xD9:
        marker, length = data[i + 1], int.from_bytes(data[i + 2 : i + 4], "big")
        j = i + 2 + length
        if marker == 0xDA:
            while not (data[j] == 0xFF and data[j + 1] != 0 and not 0xD0 <= data[j + 1] <= 0xD7):
                j += 1
            p = 5 + 2 * data[i + 4]
            if data[i + p] > 0 and data[i + p + 2] >> 4 == 0:
                found.append(data[i:j])
        i = j
    scan = min(found, key=len)
    return data[: data.rfind(b"\xff\xd9")] + scan * scans + b"\xff\xd9"


def deflate_bomb_tiff(size: int = 8000, bands: int = 4) -> bytes:
    """The finding's TIFF: size x size x bands float32 of one value, deflate, 512-tiled (about 1 MB)."""
    import rasterio
    from rasterio.io import MemoryFile

    with MemoryFile() as mem:
        with mem.open(driver="GTiff", width=size, height=size, count=bands, dtype="float32", compress="deflate",
                      tiled=True, blockxsize=512, blockysize=512) as dst:  # fmt: skip
            for y in range(0, size, 512):
                h = min(512, size - y)
                dst.write(
                    np.full((bands, h, size), 0.5, np.float32), window=rasterio.windows.Window(0, y, size, h)
                )
        return mem.read()


def jpeg(array: np.ndarray, **options) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(array).save(out, "JPEG", **options)
    return out.getvalue()


# ----------------------------------------------------------------------------------------------- F1 (codec)
def test_f1_jpeg_scans_are_counted_from_the_markers():
    rgb = np.random.default_rng(1).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    assert codecs.jpeg_scan_count(jpeg(rgb)) == 1
    assert 2 <= codecs.jpeg_scan_count(jpeg(rgb, progressive=True)) <= 12
    assert 2 <= codecs.jpeg_scan_count(jpeg(rgb[..., 0], progressive=True, optimize=True)) <= 12
    bomb = scan_bomb(25000, 256)
    started = time.monotonic()
    assert codecs.jpeg_scan_count(bomb, stop_after=10**9) > 25000
    assert codecs.jpeg_scan_count(bomb) == codecs.MAX_JPEG_SCANS + 1  # stops counting past the limit
    assert time.monotonic() - started < 1.0
    # ordinary progressive JPEGs are still decoded
    image = codecs.decode_request(jpeg(rgb, progressive=True), codecs.JPEG, bands=3, max_pixels=2**20)
    assert image.array.shape == (3, 40, 60)


def test_f1_scan_bomb_is_413_before_decoding():
    started = time.monotonic()
    with pytest.raises(codecs.PayloadTooLarge, match="more than 100 scans"):
        codecs.decode_request(scan_bomb(), codecs.JPEG, bands=3, max_pixels=64 * 2**20)
    assert time.monotonic() - started < 1.0
    # under the scan limit, scans x pixels is bounded by the pixel budget
    fifty = scan_bomb(50, 1024)
    with pytest.raises(codecs.PayloadTooLarge, match="passes over the server's pixel limit"):
        codecs.decode_request(fifty, codecs.JPEG, bands=1, max_pixels=1024 * 1024)
    assert codecs.decode_request(fifty, codecs.JPEG, bands=1, max_pixels=8 * 1024 * 1024).width == 1024


def test_f1_the_deadline_is_checked_before_decoding(tmp_path):
    """A request whose deadline has passed while waiting (or whose estimate is too long) is stopped before its
    pixels are decoded, from the header's size."""
    from earthmon_testing.serving import tiny_model
    from segmentation_trainer.predict import Deadline, DeadlineExceeded
    from segmentation_trainer.serving.inference import infer

    model = tiny_model(bands=4)
    config = ServeConfig(model_dir=tmp_path)
    body = deflate_bomb_tiff(2048)
    expired = Deadline(0.001)
    time.sleep(0.01)
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        infer(body, "image/tiff", "application/json", model, config, expired)
    assert time.monotonic() - started < 0.3  # 64 MiB of deflate never decoded
    model.seconds_per_window = 1.0  # a slow model: 2048 x 2048 in windows of 16 takes hours
    with pytest.raises(DeadlineExceeded, match="needs .* windows"):
        infer(body, "image/tiff", "application/json", model, config, Deadline(50))
    assert time.monotonic() - started < 0.6


# ----------------------------------------------------------------------------------------------- F7
F7_PROBE = """
import json, resource, sys, time
sys.path.insert(0, sys.argv[2])
from pathlib import Path
from earthmon_testing.serving import make_client

client = make_client(Path(sys.argv[3]), bands=4, deadline_s=float(sys.argv[4]), timeout_s=60)
body = open(sys.argv[1], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.monotonic()
r = client.post("/invocations", data=body, headers={"Content-Type": "image/tiff", "Accept": "application/json"})
took = time.monotonic() - started
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"status": r.status_code, "type": r.content_type, "error": r.json["error"], "took_s": took,
                  "growth_mb": (after - before) / 1024, "body_bytes": len(body)}))
"""


def f7_probe(tmp_path: Path, body: bytes, deadline_s: float) -> dict:
    path = tmp_path / "bomb.tif"
    path.write_bytes(body)
    proc = subprocess.run(
        [sys.executable, "-c", F7_PROBE, str(path), str(TESTS / "support"), str(tmp_path), str(deadline_s)],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"\nF7 probe: {result}")
    return result


def test_f7_deflate_bomb_tiff_stays_within_the_memory_budget(tmp_path):
    """The finding's 1 MB TIFF decodes to 977 MiB (under the 1 GiB budget of a 4-band model, so it is decoded):
    the worker's peak RSS grows by at most the budget plus GDAL_CACHEMAX (was: 2 GB, the block cache holding a
    second copy). The deadline (1 s) passes during the decode: 504, not a prediction."""
    body = deflate_bomb_tiff()
    assert len(body) < 1.2 * 2**20
    budget_mib = (
        64 * 2**20 * 4 * codecs.BUDGET_BYTES_PER_SAMPLE / 2**20
    )  # EARTHMON_MAX_PIXELS x 4 bands x 4 B
    allowed_mib = budget_mib + codecs.GDAL_CACHE_BYTES / 2**20 + 32  # + interpreter/allocator slack
    result = f7_probe(tmp_path, body, deadline_s=1.0)
    assert result["status"] == 504 and result["type"] == "application/json", result
    assert "decoding the 8000 x 8000 image took the whole request deadline" in result["error"]
    assert result["growth_mb"] < allowed_mib, result


# ----------------------------------------------------------------------------------------------- F13 (codec/app)
def complex_tiff(dtype: str = "complex64") -> bytes:
    from rasterio.io import MemoryFile

    with MemoryFile() as mem:
        with mem.open(driver="GTiff", width=8, height=8, count=1, dtype=dtype) as dst:
            dst.write(
                (np.ones((1, 8, 8)) * (1 + 2j)).astype("complex64" if dtype == "complex_int16" else dtype)
            )
        return mem.read()


@pytest.mark.parametrize("dtype", ["complex64", "complex128", "complex_int16"])
def test_f13_complex_tiff_is_refused_like_complex_npy(tmp_path, dtype):
    client = make_client(tmp_path, bands=1)
    r = client.post("/invocations", data=complex_tiff(dtype), headers={"Content-Type": "image/tiff"})
    assert r.status_code == 400 and "complex" in r.json["error"], r.data


def corrupt_tiffs() -> dict[str, bytes]:
    from rasterio.io import MemoryFile

    with MemoryFile() as mem:
        with mem.open(driver="GTiff", width=64, height=64, count=1, dtype="uint8", compress="deflate") as dst:
            dst.write(np.arange(64 * 64, dtype=np.uint8).reshape(1, 64, 64))
        valid = mem.read()
    return {
        "IFD offset past the end": b"II*\x00" + (10**6).to_bytes(4, "little") + b"\0" * 32,
        "IFD offset zero": b"II*\x00\x00\x00\x00\x00" + b"\0" * 32,
        "truncated in the IFD": valid[:200],
        "truncated in the data": valid[: len(valid) // 2],
        "big-endian garbage": b"MM\x00*" + b"\xff" * 64,
        "bigtiff garbage": b"II+\x00\x08\x00\x00\x00" + b"\x01" * 64,
    }


def test_f13_gdal_in_memory_names_never_reach_the_client(tmp_path):
    client = make_client(tmp_path, bands=1)
    for name, body in corrupt_tiffs().items():
        r = client.post("/invocations", data=body, headers={"Content-Type": "image/tiff"})
        assert 400 <= r.status_code < 500, (name, r.data)
        message = r.json["error"]
        assert not UUID.search(message) and "vsimem" not in message, (name, message)
    assert (
        codecs._strip_vsimem(
            "3f9705b5-1d2c-4e5f-8a9b-0c1d2e3f4a5b.tif: TIFFReadDirectory: failed; "
            "'/vsimem/3f9705b5-1d2c-4e5f-8a9b-0c1d2e3f4a5b/3f9705b5-1d2c-4e5f-8a9b-0c1d2e3f4a5b.tif' not recognized"
        )
        == "the body: TIFFReadDirectory: failed; the body not recognized"
    )


@pytest.mark.parametrize(
    "content_type",
    ["text/html<script>alert(document.domain)</script>", "<script>alert(1)</script>", "x" * 5000,
     "image/gif; q=<script>alert(1)</script>", "image/gif\x7f\x01"],
)  # fmt: skip
def test_f13_the_415_message_does_not_echo_the_content_type(tmp_path, content_type):
    client = make_client(tmp_path)
    r = client.post("/invocations", data=b"x", headers={"Content-Type": content_type})
    assert r.status_code == 415 and r.content_type == "application/json"
    message = r.json["error"]
    assert "<" not in message and "script" not in message and "xxxxxxxxxx" not in message, message
    assert len(message) < 200 and "image/tiff" in message
    shown = client.post("/invocations", data=b"x", headers={"Content-Type": "image/gif; charset=binary"})
    assert "'image/gif'" in shown.json["error"]  # a plain media type is still named
    accept = client.post(
        "/invocations", data=b"x", headers={"Content-Type": "image/png", "Accept": content_type}
    )
    assert (
        accept.status_code == 406 and "<" not in accept.json["error"] and "script" not in accept.json["error"]
    )


def test_f13_ping_does_not_reveal_the_model_directory_or_the_loader_error(tmp_path, caplog):
    secret_dir = tmp_path / "secret-model-location"

    def loader():
        raise FileNotFoundError(f"{secret_dir}/metadata.json: not a model directory (mxnet internals here)")

    app = create_app(ServeConfig(model_dir=secret_dir, model_wait_s=0.05), loader=loader)
    assert app.extensions["earthmon.model"].wait(10)
    client = app.test_client()
    with caplog.at_level("ERROR", logger="segmentation_trainer.serve"):
        ping = client.get("/ping")
    assert ping.status_code == 500 and ping.content_type == "application/json"
    invocation = client.post("/invocations", data=b"x", headers={"Content-Type": "application/x-npy"})
    assert invocation.status_code == 503
    for r in (ping, invocation):
        message = r.json["error"]
        assert "failed to load" in message and "server log" in message
        for leak in (
            str(tmp_path),
            "secret-model-location",
            "not a model directory",
            "FileNotFoundError",
            "mxnet",
        ):
            assert leak not in message, (leak, message)
    assert (
        str(secret_dir) in caplog.text and "not a model directory" in caplog.text
    )  # logged for the operator


# ----------------------------------------------------------------------------------------------- F8 (Flask)
@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/invocations", 405), ("PUT", "/invocations", 405), ("DELETE", "/invocations", 405),
     ("PATCH", "/invocations", 405), ("OPTIONS", "/invocations", 405), ("OPTIONS", "/ping", 405),
     ("POST", "/ping", 405), ("OPTIONS", "/execution-parameters", 405), ("GET", "/nope", 404),
     ("GET", "/../../etc/passwd", 404), ("TRACE", "/invocations", 405)],
)  # fmt: skip
def test_f8_flask_refusals_are_json(tmp_path, method, path, status):
    client = make_client(tmp_path)
    r = client.open(path, method=method)
    assert r.status_code == status and r.content_type == "application/json", (r.status_code, r.data[:200])
    assert r.json["error"] and b"<" not in r.data
    if status == 405:
        assert "POST /invocations" in r.json["error"] and r.headers.get("Allow")


def test_f8_an_unexpected_error_is_json_without_internals(tmp_path):
    from segmentation_trainer.serving.model import LoadedModel

    def forward(batch):
        raise RuntimeError("/opt/ml/model internals: segfault at 0xdeadbeef")

    model = LoadedModel(forward, {"num_classes": 2, "bands": 1, "crop_size": 16, "mean": [0.0], "std": [1.0]})
    client = create_app(ServeConfig(model_dir=tmp_path), loader=lambda: model).test_client()
    out = io.BytesIO()
    np.save(out, np.ones((16, 16), np.float32))
    r = client.post("/invocations", data=out.getvalue(), headers={"Content-Type": "application/x-npy"})
    assert r.status_code == 500 and r.content_type == "application/json"
    assert "0xdeadbeef" not in r.json["error"] and "/opt/ml" not in r.json["error"]


# ----------------------------------------------------------------------------------------------- the server
requests = pytest.importorskip("requests")


def descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        current = todo.pop()
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                if child not in found:
                    found.add(child)
                    todo.append(child)
    return found


@pytest.fixture(scope="module")
def rgb_base_dir(tmp_path_factory):
    pytest.importorskip("mxnet")
    from segmentation_trainer.export import write_tiny_model_dir

    base = tmp_path_factory.mktemp("opt-ml-rgb")
    write_tiny_model_dir(
        base / "model", num_classes=3, bands=3, crop_size=48, mean=[120.0] * 3, std=[60.0] * 3
    )
    return base


@pytest.fixture
def rgb_server(rgb_base_dir, request):
    pytest.importorskip("gunicorn")
    from earthmon_testing.serving import Server

    srv = Server(rgb_base_dir, getattr(request, "param", {}))
    yield srv
    code = srv.stop()
    assert code == 0, srv.log.read_text()[-3000:]


class Pinger:
    """/ping every 50 ms in a thread; records (status, seconds)."""

    def __init__(self, url: str):
        self.url, self.results, self.stop = url, [], threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                status = requests.get(f"{self.url}/ping", timeout=5).status_code
            except requests.RequestException:
                status = 0
            self.results.append((status, time.monotonic() - started))
            time.sleep(0.05)

    def finish(self) -> list[tuple[int, float]]:
        self.stop.set()
        self.thread.join(10)
        return self.results


def test_f1_scan_bomb_is_refused_at_once_and_the_worker_keeps_running(rgb_server):
    bomb = scan_bomb()
    assert len(bomb) < 2**20
    workers = descendants(rgb_server.proc.pid)
    pinger = Pinger(rgb_server.url)
    time.sleep(0.2)
    headers = {"Content-Type": "image/jpeg", "Accept": "application/json"}
    started = time.monotonic()
    r = requests.post(f"{rgb_server.url}/invocations", data=bomb, headers=headers, timeout=10)
    took = time.monotonic() - started
    time.sleep(0.3)
    pings = pinger.finish()
    print(f"\nF1: scan bomb ({len(bomb)} bytes) answered {r.status_code} in {took * 1e3:.0f} ms; "
          f"{len(pings)} pings, max {max(s for _, s in pings) * 1e3:.0f} ms")  # fmt: skip
    assert r.status_code == 413 and r.headers["Content-Type"].startswith("application/json"), r.text[:300]
    assert "more than 100 scans" in r.json()["error"]
    assert took < 1.0, took
    assert pings and all(status == 200 for status, _ in pings), pings
    assert descendants(rgb_server.proc.pid) == workers  # no worker was killed or restarted
    # and the same worker answers a real progressive JPEG
    rgb = np.random.default_rng(2).integers(0, 255, (96, 96, 3), dtype=np.uint8)
    ok = requests.post(
        f"{rgb_server.url}/invocations", data=jpeg(rgb, progressive=True), headers=headers, timeout=30
    )
    assert ok.status_code == 200 and ok.json()["height"] == 96, ok.text[:300]


def raw(port: int, request: bytes, timeout: float = 5) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes; (status, headers, body) of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            if length and len(body) >= int(length.group(1)):
                break
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines and lines[0].startswith("HTTP/") else 0
    headers = dict(line.split(":", 1) for line in lines[1:] if ":" in line)
    return status, {k.strip().lower(): v.strip() for k, v in headers.items()}, body


TRICKS = {
    "GET /invocations": (b"GET /invocations HTTP/1.1\r\nHost: x\r\n\r\n", 405),
    "PUT /invocations": (b"PUT /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 405),
    "OPTIONS /invocations": (b"OPTIONS /invocations HTTP/1.1\r\nHost: x\r\n\r\n", 405),
    "OPTIONS *": (b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "TRACE /invocations": (b"TRACE /invocations HTTP/1.1\r\nHost: x\r\n\r\n", 405),
    "DELETE /ping": (b"DELETE /ping HTTP/1.1\r\nHost: x\r\n\r\n", 405),
    "GET /nope": (b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n", 404),
    "an error page asked for": (b"GET /.earthmon-error/too_large HTTP/1.1\r\nHost: x\r\n\r\n", 404),
    "path traversal": (b"GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "Content-Length and Transfer-Encoding": (
        b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "two Content-Lengths": (
        b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400),
    "bad request line": (b"GET\x01 / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "no Host (HTTP/1.1)": (b"GET /ping HTTP/1.1\r\n\r\n", 400),
    "URI too long": (b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    "header too large": (b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 20000 + b"\r\n\r\n", 400),
    "too many headers": (b"GET /ping HTTP/1.1\r\nHost: x\r\n" + b"X-A: " + b"c" * 8000 + b"\r\n" * 1
                         + b"".join(b"X-%d: %s\r\n" % (i, b"d" * 4000) for i in range(12)) + b"\r\n", 400),
    "body over the limit": (
        b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 99999999\r\n\r\n", 413),
    "unsupported Content-Type": (
        b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: text/<b>\r\nContent-Length: 1\r\n\r\nx", 415),
}  # fmt: skip


def test_f8_every_refusal_from_nginx_or_flask_is_json(rgb_server):
    seen = {}
    for name, (request, status) in TRICKS.items():
        got, headers, body = raw(rgb_server.port, request)
        seen[name] = (got, headers.get("content-type"), body[:120])
        assert got == status, (name, seen[name])
        assert headers.get("content-type", "").startswith("application/json"), (name, seen[name])
        assert json.loads(body)["error"], (name, seen[name])
        assert b"<html" not in body.lower() and b"nginx" not in body.lower(), (name, seen[name])
    print("\nF8: " + "; ".join(f"{k}: {v[0]}" for k, v in seen.items()))
    assert requests.get(f"{rgb_server.url}/ping", timeout=5).status_code == 200


@pytest.mark.parametrize(
    "rgb_server", [{"EARTHMON_REQUEST_DEADLINE_S": "30", "SAGEMAKER_MAX_PAYLOAD_IN_MB": "20"}], indirect=True
)
def test_f8_a_worker_dying_mid_request_is_answered_503_json(rgb_server):
    """The finding: after the F1 restart the client got 502 (nginx kept the upstream's code)."""
    rgb = np.random.default_rng(3).integers(0, 255, (1200, 1200, 3), dtype=np.uint8)
    body = jpeg(rgb, quality=95)
    headers = {"Content-Type": "image/jpeg", "Accept": "application/json"}
    answer: list = []
    thread = threading.Thread(
        target=lambda: answer.append(
            requests.post(f"{rgb_server.url}/invocations", data=body, headers=headers, timeout=60)
        )
    )
    workers = descendants(rgb_server.proc.pid)
    thread.start()
    time.sleep(1.0)  # the inference is running (several seconds of the tiny network here)
    gunicorn_workers = [
        pid for pid in workers
        if "segmentation_trainer" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        and not descendants(pid)
    ]  # fmt: skip
    assert gunicorn_workers, workers
    for pid in gunicorn_workers:
        os.kill(pid, 9)
    thread.join(60)
    r = answer[0]
    print(f"\nF8: worker killed mid-request: {r.status_code} {r.text[:120]}")
    assert r.status_code == 503 and r.headers["Content-Type"].startswith("application/json"), r.text[:300]
    assert "retry" in r.json()["error"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the master starts a fresh worker
        try:
            if requests.get(f"{rgb_server.url}/ping", timeout=2).status_code == 200:
                break
        except requests.RequestException:
            pass
        time.sleep(0.2)
    else:
        raise AssertionError("no worker came back")
