"""`launcher predict --url` end to end against the image's real server (started from .venv-trainer)."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from earthmon_testing import free_port, require
from launcher.cli import cli

ROOT = Path(__file__).resolve().parents[3]
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


# ----------------------------------------------------------------------------------------------- hostile answers
# No server of the image needed: a loopback server plays a hostile or absent model endpoint.
def _sar_tif(path: Path, bands: int = 2, size: int = 40) -> Path:
    import rasterio

    data = np.random.default_rng(1).random((bands, size, size), dtype=np.float32) + 0.1
    profile = dict(driver="GTiff", width=size, height=size, count=bands, dtype="float32")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
    return path


class HostileServer:
    """Answers every POST with ``answer(port)`` (status 200); records every GET (what GDAL would fetch)."""

    def __init__(self, answer):
        self.fetches: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = answer(server.url)
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):  # noqa: N802
                server.fetches.append(self.path)
                body = SECRET.encode() * 32
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


SECRET = secrets.token_hex(24)


def _vrt(source: str) -> bytes:
    return (
        '<VRTDataset rasterXSize="40" rasterYSize="40"><VRTRasterBand dataType="Byte" band="1" '
        f'subClass="VRTRawRasterBand"><SourceFilename relativetoVRT="0">{source}</SourceFilename>'
        "<ImageOffset>0</ImageOffset><PixelOffset>1</PixelOffset><LineOffset>40</LineOffset>"
        "</VRTRasterBand></VRTDataset>"
    ).encode()


def _wms(url: str) -> bytes:
    return (
        f'<GDAL_WMS><Service name="TMS"><ServerUrl>{url}/t/${{z}}/${{x}}/${{y}}.png</ServerUrl></Service>'
        "<DataWindow><UpperLeftX>0</UpperLeftX><UpperLeftY>40</UpperLeftY><LowerRightX>40</LowerRightX>"
        "<LowerRightY>0</LowerRightY><TileLevel>0</TileLevel><TileCountX>1</TileCountX><TileCountY>1</TileCountY>"
        "</DataWindow><BlockSizeX>40</BlockSizeX><BlockSizeY>40</BlockSizeY><BandsCount>1</BandsCount></GDAL_WMS>"
    ).encode()


def _sparse_tiff(count: int = 500, size: int = 40, dtype: str = "float32") -> bytes:
    from rasterio.io import MemoryFile

    with warnings.catch_warnings(), MemoryFile() as mem:
        warnings.simplefilter("ignore")
        with mem.open(driver="GTiff", width=size, height=size, count=count, dtype=dtype, sparse_ok=True):
            pass
        return mem.read()


@pytest.fixture
def secret_path(tmp_path):
    path = tmp_path / "secret.txt"
    path.write_text(SECRET * 100)
    return path


HOSTILE_ANSWERS = {
    "vrt reading a local file": lambda url, secret: _vrt(str(secret)),
    "vrt reading /proc/self/environ": lambda url, secret: _vrt("/proc/self/environ"),
    "vrt fetching a URL": lambda url, secret: _vrt(f"/vsicurl/{url}/fetch.bin"),
    "gdal wms": lambda url, secret: _wms(url),
    "TIFF signature then a vrt": lambda url, secret: b"II*\x00" + _vrt(f"/vsicurl/{url}/fetch.bin"),
    "PNG signature then a vrt": lambda url, secret: b"\x89PNG\r\n\x1a\n" + _vrt(str(secret)),
    "500 sparse float bands": lambda url, secret: _sparse_tiff(),
    "a mask of the wrong size": lambda url, secret: _sparse_tiff(count=1, size=8, dtype="uint8"),
}


@pytest.mark.parametrize("accept", ["image/tiff", "image/png"])
@pytest.mark.parametrize("name", sorted(HOSTILE_ANSWERS))
def test_predict_refuses_hostile_answers_without_reading_or_fetching(tmp_path, secret_path, name, accept):
    server = HostileServer(lambda url: HOSTILE_ANSWERS[name](url, secret_path))
    try:
        args = ["predict", str(_sar_tif(tmp_path / "in.tif")), "--out", str(tmp_path / "mask.tif")]
        result = CliRunner().invoke(
            cli, [*args, "--url", server.url, "--accept", accept, "--concurrency", "1"]
        )
    finally:
        server.close()
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (
        result.output,
        result.exception,
    )
    assert "Traceback" not in result.output and SECRET not in result.output
    assert "response" in result.output
    assert server.fetches == [], f"predict made GDAL fetch {server.fetches}"
    assert not (tmp_path / "mask.tif").exists()


def test_decode_mask_checks_the_header_before_reading():
    from launcher.model.predict import PredictError, decode_mask

    with pytest.raises(PredictError, match="500 band"):
        decode_mask(_sparse_tiff(), "image/tiff", (40, 40))
    with pytest.raises(PredictError, match="8 x 8 pixels"):
        decode_mask(_sparse_tiff(count=1, size=8, dtype="uint8"), "image/tiff", (40, 40))


def test_decode_mask_keeps_the_users_credentials_out_of_gdal(monkeypatch):
    """The server's answer is read with no AWS session: the user's keys never reach GDAL's configuration while it
    parses bytes from a server the user may not control."""
    import rasterio.session

    from launcher.model.predict import decode_mask

    body = _sparse_tiff(count=1, size=40, dtype="uint8")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAPLANTEDCANARY000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "planted-canary-secret")
    built: list[str] = []
    original = rasterio.session.AWSSession.__init__

    def record(self, *args, **kwargs):
        built.append("AWSSession")
        original(self, *args, **kwargs)

    monkeypatch.setattr(rasterio.session.AWSSession, "__init__", record)
    mask = decode_mask(body, "image/tiff", (40, 40))
    assert mask.shape == (40, 40)
    assert built == []


def test_predict_with_the_server_down_is_one_line(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    args = ["predict", str(_sar_tif(tmp_path / "in.tif")), "--out", str(tmp_path / "mask.tif"), "--url", url]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (
        result.output,
        result.exception,
    )
    assert "cannot connect to" in result.output and "is the server running" in result.output
    assert "Traceback" not in result.output


def test_predict_url_must_be_http(tmp_path):
    args = [
        "predict",
        str(_sar_tif(tmp_path / "in.tif")),
        "--out",
        str(tmp_path / "m.tif"),
        "--url",
        "file:///etc",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and "must start with http://" in result.output


def _interleaved_tiff(count: int, size: int = 64, block: int | None = None) -> bytes:
    """A small deflated TIFF of ``count`` uint8 bands, pixel-interleaved (decoding band 1 decodes them all)."""
    from rasterio.io import MemoryFile

    profile = dict(driver="GTiff", width=size, height=size, count=count, dtype="uint8", interleave="pixel",
                   compress="deflate")  # fmt: skip
    if block:
        profile.update(tiled=True, blockxsize=block, blockysize=block)
    with warnings.catch_warnings(), MemoryFile() as mem:
        warnings.simplefilter("ignore")
        with mem.open(**profile) as dst:
            dst.write(np.zeros((count, size, size), np.uint8))
        return mem.read()


def test_decode_mask_refuses_many_uint8_bands_from_the_header():
    """F5: a pixel-interleaved uint8 TIFF of 4000 bands passed the old check (at least one band, band 1 uint8) and
    cost every band's pixels to decode band 1; a mask has exactly one band."""
    from launcher.model.predict import PredictError, decode_mask

    body = _interleaved_tiff(4000)
    assert len(body) < 2**20
    with pytest.raises(PredictError, match="4000 band\\(s\\) of uint8"):
        decode_mask(body, "image/tiff", (64, 64))
    with pytest.raises(PredictError, match="2 band\\(s\\)"):
        decode_mask(_interleaved_tiff(2), "image/tiff", (64, 64))
    assert decode_mask(_interleaved_tiff(1), "image/tiff", (64, 64)).shape == (64, 64)


def test_decode_mask_caps_the_decoding_cost_of_a_block(monkeypatch):
    """F5: one band of the right size, but blocks far larger than the mask: refused from the header."""
    import launcher.model.predict as mp

    body = _interleaved_tiff(1, size=64, block=1024)  # 1 MiB blocks for a 4 KiB mask
    assert mp.decode_mask(body, "image/tiff", (64, 64)).shape == (64, 64)
    monkeypatch.setattr(mp, "MAX_MASK_BYTES", 2**19)
    with pytest.raises(mp.PredictError, match="blocks of 1024 x 1024"):
        mp.decode_mask(body, "image/tiff", (64, 64))


class _Server:
    """A loopback server whose POST handler is ``handle(handler)``; records every request path."""

    def __init__(self, handle):
        self.paths: list[str] = []
        self.stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                server.paths.append(("POST", self.path, int(self.headers.get("Content-Length") or 0)))
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                handle(self, server)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def _trickle(handler, server):
    """Headers, then one byte every 0.2 s for ever: each read is quick, the answer never ends."""
    handler.send_response(200)
    handler.send_header("Content-Length", str(10**9))
    handler.end_headers()
    while not server.stop.is_set():
        try:
            handler.wfile.write(b"\x00")
            handler.wfile.flush()
        except OSError:
            return
        time.sleep(0.2)


def test_predict_url_has_a_total_deadline_per_tile():
    """F12: the read timeout applied per read, so a server trickling one byte at a time held predict for ever."""
    from launcher.model.predict import PredictError, url_invoker

    server = _Server(_trickle)
    try:
        invoke = url_invoker(server.url, timeout_s=1.0, max_response_bytes=2 * 10**9, deadline_s=1.5)
        outcome: dict = {}

        def call():
            try:
                invoke(b"tile", "image/tiff", "image/png")
            except PredictError as exc:
                outcome["error"] = str(exc)

        worker = threading.Thread(target=call, daemon=True)
        started = time.monotonic()
        worker.start()
        worker.join(15)
        assert not worker.is_alive(), "predict is still reading the trickling answer after 15 s"
        assert time.monotonic() - started < 5
        assert "did not answer in full within 1.5 s" in outcome["error"]
    finally:
        server.close()


def test_predict_url_refuses_redirects_and_sends_the_tile_nowhere_else(tmp_path):
    """F12: a 307/308 from the model server was followed with the tile body, to any host."""
    elsewhere = _Server(
        lambda h, s: (h.send_response(200), h.send_header("Content-Length", "0"), h.end_headers())
    )

    def redirect(handler, server):
        handler.send_response(307)
        handler.send_header("Location", f"{elsewhere.url}/stolen")
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    server = _Server(redirect)
    try:
        args = ["predict", str(_sar_tif(tmp_path / "in.tif")), "--out", str(tmp_path / "mask.tif")]
        result = CliRunner().invoke(cli, [*args, "--url", server.url, "--concurrency", "1"])
    finally:
        server.close()
        elsewhere.close()
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert "answered 307, a redirect to" in result.output and "not followed" in result.output, result.output
    assert "Traceback" not in result.output
    assert elsewhere.paths == [], "the tile was sent to the redirect's host"
    assert server.paths and server.paths[0][:2] == ("POST", "/invocations")
