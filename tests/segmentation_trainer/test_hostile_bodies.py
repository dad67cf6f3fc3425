"""Hostile and mistaken request bodies against the real Flask app and every body decoder (issue 9).

- GDAL descriptions (VRT reading a local file or a URL, GDAL_WMS, vsicurl paths) sent as image/tiff or any other
  type: refused with a 4xx, a planted secret never appears in any answer, a canary HTTP server on loopback is
  never contacted.
- A sparse TIFF declaring 1024 x 1024 x 500 float32 bands (3 KB on the wire, 2 GB decoded): refused from its
  header, the worker's peak RSS measured in a fresh process.
- Property-based fuzzing (hypothesis) of each decoder: random bytes and mutated valid TIFF/PNG/JPEG/npy bodies
  raise only CodecError with a 4xx status, in bounded memory.

No MXNet: the app gets a tiny numpy "model" whose classes depend on the pixel values (so a decoded secret would
show in the masks).
"""

from __future__ import annotations

import io
import json
import resource
import secrets
import subprocess
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from earthmon_testing import TESTS
from earthmon_testing.serving import make_client, tiny_model  # noqa: F401  (tiny_model: used by the probes)
from segmentation_trainer import codecs

REPO = Path(__file__).resolve().parents[2]
PNG_MAGIC, JPEG_MAGIC, NPY_MAGIC = b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"\x93NUMPY"
REQUEST_TYPES = ("image/tiff", "image/tif", "image/geotiff", "image/png", "image/jpeg", "application/x-npy")


# ----------------------------------------------------------------------------------------------- the canary
class Canary:
    """An HTTP server on loopback that records every request and answers with the secret."""

    def __init__(self, secret: str):
        self.requests: list[str] = []
        canary = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                canary.requests.append(self.path)
                body = (secret * 64).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_HEAD = do_GET  # noqa: N815

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def secret_file(tmp_path):
    secret = secrets.token_hex(32)
    path = tmp_path / "secret.txt"
    path.write_text(secret * 4)
    return path, secret


@pytest.fixture
def canary(secret_file):
    c = Canary(secret_file[1])
    yield c
    c.close()


def _raw_vrt(source: str, size: int = 16) -> bytes:
    return textwrap.dedent(f"""\
        <VRTDataset rasterXSize="{size}" rasterYSize="{size}">
          <VRTRasterBand dataType="Byte" band="1" subClass="VRTRawRasterBand">
            <NoDataValue>7</NoDataValue>
            <SourceFilename relativetoVRT="0">{source}</SourceFilename>
            <ImageOffset>0</ImageOffset><PixelOffset>1</PixelOffset><LineOffset>{size}</LineOffset>
          </VRTRasterBand>
        </VRTDataset>""").encode()


def _simple_vrt(source: str) -> bytes:
    return textwrap.dedent(f"""\
        <VRTDataset rasterXSize="16" rasterYSize="16">
          <VRTRasterBand dataType="Byte" band="1">
            <SimpleSource>
              <SourceFilename relativeToVRT="0">{source}</SourceFilename>
              <SourceBand>1</SourceBand>
            </SimpleSource>
          </VRTRasterBand>
        </VRTDataset>""").encode()


def _wms(url: str) -> bytes:
    return textwrap.dedent(f"""\
        <GDAL_WMS>
          <Service name="TMS"><ServerUrl>{url}/tiles/${{z}}/${{x}}/${{y}}.png</ServerUrl></Service>
          <DataWindow><UpperLeftX>-180</UpperLeftX><UpperLeftY>90</UpperLeftY><LowerRightX>180</LowerRightX>
            <LowerRightY>-90</LowerRightY><TileLevel>0</TileLevel><TileCountX>1</TileCountX>
            <TileCountY>1</TileCountY></DataWindow>
          <BlockSizeX>16</BlockSizeX><BlockSizeY>16</BlockSizeY><BandsCount>1</BandsCount>
        </GDAL_WMS>""").encode()


def hostile_bodies(secret_path: Path, canary_url: str) -> dict[str, bytes]:
    vsicurl = f"/vsicurl/{canary_url}/data.tif"
    pickled = io.BytesIO()
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return {
        "vrt reading the secret": _raw_vrt(str(secret_path)),
        "vrt reading /proc/self/environ": _raw_vrt("/proc/self/environ"),
        "vrt reading the secret, utf-8 BOM and blank lines first": b"\xef\xbb\xbf\n  "
        + _raw_vrt(str(secret_path)),
        "vrt with a vsicurl source": _simple_vrt(vsicurl),
        "vrt with an http source": _simple_vrt(f"{canary_url}/data.tif"),
        "vrt with a WMS source": _simple_vrt(f"WMS:{canary_url}/wms?"),
        "gdal wms": _wms(canary_url),
        "a vsicurl path": vsicurl.encode(),
        "a vrt:// connection string": f"vrt://{vsicurl}".encode(),
        "TIFF signature then a vrt": b"II*\x00" + _raw_vrt(str(secret_path)),
        "big-endian TIFF signature then a vrt": b"MM\x00*" + _simple_vrt(vsicurl),
        "npy with pickled objects": pickled.getvalue(),
        "npy signature then a vrt": b"\x93NUMPY" + _raw_vrt(str(secret_path)),
    }


def test_hostile_bodies_are_refused_without_reading_or_fetching(tmp_path, secret_file, canary):
    secret_path, secret = secret_file
    client = make_client(tmp_path)
    answers = {}
    for name, body in hostile_bodies(secret_path, canary.url).items():
        for content_type in REQUEST_TYPES:
            for accept in ("image/png", "application/json", "image/tiff"):
                r = client.post(
                    "/invocations", data=body, headers={"Content-Type": content_type, "Accept": accept}
                )
                answers[(name, content_type, accept)] = r
                assert secret.encode() not in r.data, (name, content_type, r.data[:300])
                assert 400 <= r.status_code < 500, (name, content_type, r.status_code, r.data[:300])
                assert b"Traceback" not in r.data and b"/vsimem/" not in r.data
    assert canary.requests == [], f"the server fetched {canary.requests}"
    # the messages say what the body was and what to send
    r = answers[("vrt reading the secret", "image/tiff", "image/png")]
    assert "XML" in r.json["error"] and "TIFF" in r.json["error"]


def test_a_real_geotiff_is_still_answered(tmp_path):
    from rasterio.io import MemoryFile

    client = make_client(tmp_path, bands=2)
    data = np.random.default_rng(0).random((2, 20, 24), dtype=np.float32)
    with MemoryFile() as mem:
        with mem.open(driver="GTiff", width=24, height=20, count=2, dtype="float32") as dst:
            dst.write(data)
        body = mem.read()
    r = client.post(
        "/invocations", data=body, headers={"Content-Type": "image/tiff", "Accept": "application/json"}
    )
    assert r.status_code == 200, r.data
    assert r.json["height"] == 20 and r.json["width"] == 24


def test_wrong_band_count_names_the_bands_and_what_to_send(tmp_path):
    client = make_client(tmp_path, bands=4)
    png = io.BytesIO()
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(png, format="PNG")
    r = client.post("/invocations", data=png.getvalue(), headers={"Content-Type": "image/png"})
    assert r.status_code == 400
    message = r.json["error"]
    assert "takes 4 band(s) (band_1, band_2, band_3, band_4)" in message and "has 3" in message
    assert "image/tiff or application/x-npy" in message
    assert "(4)" not in message


# ----------------------------------------------------------------------------------------------- sparse bands
def sparse_tiff(width: int, height: int, count: int, dtype: str = "float32", **options) -> bytes:
    """A TIFF whose tiles are all absent (SPARSE_OK): a few KB declaring width x height x count pixels."""
    from rasterio.io import MemoryFile

    profile = dict(driver="GTiff", width=width, height=height, count=count, dtype=dtype, tiled=True)
    profile.update(blockxsize=256, blockysize=256, interleave="pixel", sparse_ok=True, **options)
    with MemoryFile() as mem:
        with mem.open(**profile):
            pass
        return mem.read()


SPARSE_PROBE = """
import json, resource, sys
import numpy as np
sys.path.insert(0, sys.argv[2])
from earthmon_testing.serving import make_client
from pathlib import Path
from rasterio.io import MemoryFile

client = make_client(Path(sys.argv[3]), bands=4)
with MemoryFile() as mem:  # warm up: a valid request, so only the hostile one's cost is measured
    with mem.open(driver="GTiff", width=32, height=32, count=4, dtype="float32") as dst:
        dst.write(np.ones((4, 32, 32), np.float32))
    warm = client.post("/invocations", data=mem.read(), headers={"Content-Type": "image/tiff"})
assert warm.status_code == 200, warm.data
body = open(sys.argv[1], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
r = client.post("/invocations", data=body, headers={"Content-Type": "image/tiff"})
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"status": r.status_code, "error": r.json["error"], "before_kb": before, "after_kb": after,
                  "body_bytes": len(body)}))
"""

MAX_RSS_GROWTH_MB = 64


def _probe(tmp_path: Path, body: bytes) -> dict:
    path = tmp_path / "hostile.tif"
    path.write_bytes(body)
    proc = subprocess.run(
        [sys.executable, "-c", SPARSE_PROBE, str(path), str(TESTS / "support"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["growth_mb"] = (result["after_kb"] - result["before_kb"]) / 1024
    print(f"sparse TIFF probe: {result}")
    return result


def test_sparse_band_bomb_is_refused_from_its_header(tmp_path):
    body = sparse_tiff(1024, 1024, 500)
    assert len(body) < 64 * 1024
    result = _probe(tmp_path, body)
    assert result["status"] == 400 and "takes 4 band(s)" in result["error"] and "has 500" in result["error"]
    assert result["growth_mb"] < MAX_RSS_GROWTH_MB, result


@pytest.mark.parametrize(
    ("width", "height", "dtype", "words"),
    [
        (30000, 30000, "float32", "EARTHMON_MAX_PIXELS"),  # 900 Mi pixels
        (
            8000,
            8000,
            "float64",
            "would take",
        ),  # 64 M pixels (under the pixel limit) x 4 bands x 8 B = 1.9 GiB
    ],
)
def test_sparse_size_bombs_are_413_from_the_header(tmp_path, width, height, dtype, words):
    result = _probe(tmp_path, sparse_tiff(width, height, 4, dtype))
    assert result["status"] == 413 and words in result["error"], result
    assert result["growth_mb"] < MAX_RSS_GROWTH_MB, result


def test_npy_header_declaring_a_huge_array_is_refused_before_loading():
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": (4, 8000, 8000)}
    )
    with pytest.raises(codecs.PayloadTooLarge, match="would take"):
        codecs.decode_request(header.getvalue() + b"\0" * 64, codecs.NPY, bands=4, max_pixels=64 * 2**20)
    with pytest.raises(codecs.BadRequest, match="takes 3 band.* has 4"):
        codecs.decode_request(header.getvalue(), codecs.NPY, bands=3, max_pixels=64 * 2**20)


def test_png_declaring_a_huge_image_is_refused_before_decoding():
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)  # 20000 x 20000 RGB
    body = (
        PNG_MAGIC + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b"")
    )
    with pytest.raises(codecs.PayloadTooLarge):
        codecs.decode_request(body, codecs.PNG, bands=3, max_pixels=64 * 2**20)


# ----------------------------------------------------------------------------------------------- fuzzing
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FUZZ_EXAMPLES = 500
FUZZ_MAX_PIXELS = 1 << 20  # 1 Mi pixels: the decoded-size budget is 1 Mi x 3 bands x 4 B = 12 MiB
FUZZ_LIMIT_MB = 128
FUZZ_COUNTS: dict[str, int] = {}


def _valid_bodies() -> dict[str, bytes]:
    from PIL import Image
    from rasterio.io import MemoryFile

    rng = np.random.default_rng(5)
    out = {}
    for fmt, media in (("PNG", codecs.PNG), ("JPEG", codecs.JPEG)):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(buf, format=fmt)
        out[media] = buf.getvalue()
    buf = io.BytesIO()  # the scan counter walks every marker of a progressive JPEG (red-team F1)
    Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(
        buf, format="JPEG", progressive=True
    )
    out[f"{codecs.JPEG}+progressive"] = buf.getvalue()
    for compress in (None, "deflate"):
        with MemoryFile() as mem:
            options = {"compress": compress} if compress else {}
            with mem.open(driver="GTiff", width=10, height=12, count=3, dtype="float32", **options) as dst:
                dst.write(rng.random((3, 12, 10), dtype=np.float32))
            out[f"{codecs.TIFF}+{compress}"] = mem.read()
    buf = io.BytesIO()
    np.save(buf, rng.random((3, 12, 10), dtype=np.float32))
    out[codecs.NPY] = buf.getvalue()
    return out


VALID = _valid_bodies()


@st.composite
def mutated(draw, base: bytes):
    """A valid body with a few bytes replaced (mostly in the header) and maybe truncated or extended."""
    body = bytearray(base)
    for _ in range(draw(st.integers(1, 8))):
        span = len(body) if draw(st.booleans()) else min(len(body), 256)
        position = draw(st.integers(0, span - 1))
        if draw(st.booleans()):
            body[position] = draw(st.integers(0, 255))
        else:  # a 32-bit field set to an extreme (sizes, offsets, counts)
            value = draw(st.sampled_from([0, 1, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 500, 65536]))
            body[position : position + 4] = value.to_bytes(4, draw(st.sampled_from(["little", "big"])))
    cut = draw(st.one_of(st.none(), st.integers(0, len(body))))
    if cut is not None:
        body = body[:cut]
    return bytes(body)


def _check_decode(body: bytes, media: str, counter: str) -> None:
    FUZZ_COUNTS[counter] = FUZZ_COUNTS.get(counter, 0) + 1
    try:
        image = codecs.decode_request(body, media, bands=3, max_pixels=FUZZ_MAX_PIXELS)
    except codecs.CodecError as exc:
        assert 400 <= exc.status < 500, (exc.status, exc)
        assert "/vsimem/" not in str(exc) and len(str(exc)) < 1000
        return
    assert image.array.ndim == 3 and image.array.shape[0] == 3
    assert image.array.nbytes <= FUZZ_MAX_PIXELS * 3 * 8


FUZZ_SETTINGS = settings(
    max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)


@pytest.fixture(scope="module")
def rss_budget():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    yield
    growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    print(f"fuzzing: {FUZZ_COUNTS} examples, peak RSS growth {growth:.1f} MB")
    assert growth < FUZZ_LIMIT_MB, f"fuzzing grew the peak RSS by {growth:.0f} MB"


@pytest.mark.parametrize("media", [codecs.TIFF, codecs.PNG, codecs.JPEG, codecs.NPY])
def test_fuzz_random_bytes(media, rss_budget):
    magic = {codecs.TIFF: b"II*\x00", codecs.PNG: PNG_MAGIC, codecs.JPEG: JPEG_MAGIC}.get(media, NPY_MAGIC)

    @FUZZ_SETTINGS
    @given(st.binary(max_size=2048), st.booleans())
    def run(data, with_magic):
        _check_decode((magic + data) if with_magic else data, media, f"random {media}")

    run()


@pytest.mark.parametrize("name", sorted(VALID))
def test_fuzz_mutated_valid_bodies(name, rss_budget):
    media = name.split("+")[0]

    @FUZZ_SETTINGS
    @given(mutated(VALID[name]))
    def run(body):
        _check_decode(body, media, f"mutated {name}")

    run()
