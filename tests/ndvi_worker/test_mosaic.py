"""The planetary mosaic: pixel placement for known lon/lat in several UTM zones (Europe, zones 1 and 60 across the
antimeridian), nodata where nothing covers, reads from overviews only, the STAC collection through pystac."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pyproj import Transformer

from earthmon_testing.products import write_product
from ndvi_worker.products_io import MosaicOptions, run_mosaic

SIZE = 1098  # 100 m pixels: a real tile's 109.8 km
QUADS = {"nw": 0.1, "ne": 0.3, "sw": 0.5, "se": 0.7}
EU = {"31UFU": (32631, (600000.0, 5800020.0)), "32ULC": (32632, (300000.0, 5800020.0))}


def _quadrants(offset: float = 0.0) -> np.ndarray:
    """NDVI of a tile: a distinct value per quadrant (plus ``offset``), a masked 50-pixel band in the middle."""
    ndvi = np.empty((SIZE, SIZE), dtype="float32")
    h = SIZE // 2
    ndvi[:h, :h], ndvi[:h, h:] = QUADS["nw"] + offset, QUADS["ne"] + offset
    ndvi[h:, :h], ndvi[h:, h:] = QUADS["sw"] + offset, QUADS["se"] + offset
    ndvi[h - 25 : h + 25, :] = np.nan
    return ndvi


def _write(
    folder: Path, tile: str, date: str, offset: float, epsg: int, origin, quicklook: bool = False
) -> None:
    item_id = f"S2A_{tile}_{date.replace('-', '')}_0_L2A"
    write_product(folder, item_id, _quadrants(offset), date, epsg, origin, 100.0, quicklook=quicklook)


def _quadrant_points(epsg: int, origin: tuple[float, float]) -> dict[str, tuple[float, float]]:
    """lon/lat of each quadrant's centre."""
    to_ll = Transformer.from_crs(f"EPSG:{epsg}", "EPSG:4326", always_xy=True)
    x0, y0 = origin
    quarter = SIZE * 100 / 4
    centres = {
        "nw": (x0 + quarter, y0 - quarter),
        "ne": (x0 + 3 * quarter, y0 - quarter),
        "sw": (x0 + quarter, y0 - 3 * quarter),
        "se": (x0 + 3 * quarter, y0 - 3 * quarter),
    }
    return {k: to_ll.transform(*xy) for k, xy in centres.items()}


def _sample(path: Path, lon: float, lat: float) -> float:
    import rasterio

    with rasterio.open(path) as ds:
        row, col = ds.index(lon, lat)
        value = ds.read(1, window=((row, row + 1), (col, col + 1)))[0, 0]
        if value == ds.nodata:
            return float("nan")
        return float(value) * (ds.scales[0] or 1.0)


def test_tiles_across_the_antimeridian_land_in_the_right_place(tmp_path: Path):
    """Zone 1 (a tile reaching west of -180) and zone 60 (a tile reaching east of 180), Fiji's latitudes."""
    folder = tmp_path / "in"
    tiles = {
        "01KAB": (32701, (150000.0, 8300020.0), 0.0),  # about 179.7 E .. 179.2 W
        "60KYF": (32760, (740000.0, 8100020.0), 0.05),  # about 179.2 E .. 179.7 W, further south
    }
    for tile, (epsg, origin, offset) in tiles.items():
        _write(folder, tile, "2023-12-03", offset, epsg, origin)
    out = tmp_path / "out"
    report, status, stats = run_mosaic(
        folder, out, MosaicOptions(resolution=0.01, bbox=(-180, -18.5, 180, -15)), tmp_path / "s"
    )
    assert status == 0, report.to_dict()
    assert stats["overview_reads"] == 2 and stats["full_resolution_reads"] == 0
    assert all(d["overview_level"] is not None for d in report.done)
    cog = out / "mosaic_ndvi.tif"
    for tile, (epsg, origin, offset) in tiles.items():
        points = _quadrant_points(epsg, origin)
        lons = [p[0] for p in points.values()]
        assert min(lons) < 0 < max(lons), f"{tile}'s quadrants straddle the antimeridian"
        for quad, (lon, lat) in points.items():
            assert _sample(cog, lon, lat) == pytest.approx(QUADS[quad] + offset, abs=1e-4), (tile, quad)
    # nothing covers 0 E, nor 179.5 E at 18.4 S: nodata, never 0
    assert np.isnan(_sample(cog, 0.0, -16.0))
    assert np.isnan(_sample(cog, 179.5, -18.4))
    import rasterio

    with rasterio.open(cog) as ds:
        assert ds.crs.to_epsg() == 4326 and ds.res == pytest.approx((0.01, 0.01))
        assert ds.bounds.left == pytest.approx(-180) and ds.bounds.right == pytest.approx(180)
        data = ds.read(1, masked=True)
        assert data.mask.mean() > 0.95 and (data.compressed() != 0).all()
        assert ds.overviews(1)


def test_europe_tiles_collection_and_viewer(tmp_path: Path):
    """Two zones (31, 32) side by side: placement, the masked band stays nodata, collection.json through pystac
    (validated offline against pystac's bundled core schemas), index.html self-contained."""
    folder = tmp_path / "in"
    _write(folder, "31UFU", "2023-12-03", 0.0, *EU["31UFU"])
    _write(folder, "32ULC", "2023-12-05", 0.02, *EU["32ULC"])
    out = tmp_path / "out"
    report, status, stats = run_mosaic(folder, out, MosaicOptions(resolution=0.01), tmp_path / "s")
    assert status == 0, report.to_dict()
    cog = out / "mosaic_ndvi.tif"
    for tile, offset in (("31UFU", 0.0), ("32ULC", 0.02)):
        for quad, (lon, lat) in _quadrant_points(*EU[tile]).items():
            assert _sample(cog, lon, lat) == pytest.approx(QUADS[quad] + offset, abs=1e-4), (tile, quad)
    to_ll = Transformer.from_crs("EPSG:32631", "EPSG:4326", always_xy=True)
    lon, lat = to_ll.transform(600000 + 25000, 5800020 - 54900)  # the masked band through the middle
    assert np.isnan(_sample(cog, lon, lat))

    import pystac

    collection = pystac.Collection.from_file(str(out / "collection.json"))
    items = list(collection.get_items())
    assert sorted(i.id for i in items) == ["S2A_31UFU_20231203_0_L2A_ndvi", "S2A_32ULC_20231205_0_L2A_ndvi"]
    w, s, e, n = collection.extent.spatial.bboxes[0]
    assert 4.3 < w < 4.5 and 7.2 < e < 7.8 and 51 < s < n < 53
    start, end = collection.extent.temporal.intervals[0]
    assert start.date().isoformat() == "2023-12-03" and end.date().isoformat() == "2023-12-05"
    assert collection.summaries.lists["grid:code"] == ["MGRS-31UFU", "MGRS-32ULC"]
    assert set(collection.assets) == {"mosaic", "mosaic_png", "viewer"}
    pytest.importorskip("jsonschema")
    collection.validate()  # the core schema: pystac bundles it, no network needed


def test_mosaic_png_has_a_legend(tmp_path: Path):
    import rasterio

    folder = tmp_path / "in"
    _write(folder, "31UFU", "2023-12-03", 0.0, *EU["31UFU"])
    out = tmp_path / "out"
    run_mosaic(folder, out, MosaicOptions(resolution=0.005), tmp_path / "s")
    with rasterio.open(out / "mosaic_ndvi.tif") as cog:
        map_rows = cog.height
    with rasterio.open(out / "mosaic_ndvi.png") as png:
        rgba = png.read()
    assert rgba.shape[1] > map_rows  # the legend strip below the map
    legend = rgba[:, map_rows:, :]
    assert (legend[3] == 255).mean() > 0.9 and len(np.unique(legend[1])) > 20  # the colour ramp
    html = (out / "index.html").read_text()
    assert "<script src" not in html and "<link" not in html and "https://" not in html


def test_composites_replace_their_sources_in_the_mosaic(tmp_path: Path):
    from ndvi_worker.products_io import CompositeOptions, run_composite

    folder = tmp_path / "in"
    scenes = folder / "scenes"
    for k, date in enumerate(("2023-12-03", "2023-12-08")):
        _write(scenes, "31UFU", date, 0.1 * k, *EU["31UFU"])
    run_composite(scenes, folder / "composites", CompositeOptions("max", None), tmp_path / "s1")
    out = tmp_path / "out"
    report, status, _ = run_mosaic(folder, out, MosaicOptions(resolution=0.01), tmp_path / "s2")
    assert status == 0
    assert {s["source"] for s in report.skipped} == {
        "S2A_31UFU_20231203_0_L2A_ndvi",
        "S2A_31UFU_20231208_0_L2A_ndvi",
    }
    lon, lat = _quadrant_points(*EU["31UFU"])["se"]
    assert _sample(out / "mosaic_ndvi.tif", lon, lat) == pytest.approx(QUADS["se"] + 0.1, abs=1e-4)  # the max
    data = json.loads((out / "collection.json").read_text())
    assert data["summaries"]["earthmon:product"] == ["composite"]


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--bbox", "1,2,3"], "--bbox"),
        (["--bbox", "10,0,5,5"], "--bbox"),
        (["--resolution", "0"], "--resolution"),
        (["--assets-root", "ftp://host/x/"], "--assets-root"),
        (["--assets-root", "http://host/x/"], "--assets-root"),
        (["--assets-root", "s3://bucket/a/../b/"], "--assets-root"),
        (["--assets-root", "https://169.254.169.254/x/"], "--assets-root"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(tmp_path: Path, args, needle):
    (tmp_path / "in").mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "ndvi_worker", "mosaic", "--input", str(tmp_path / "in"), "--output"]
        + [str(tmp_path / "o"), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and needle in lines[0], proc.stderr


# ------------------------------------------------------------------------------------------ reading in place (S3)


class _CountingProxy:
    """A reverse proxy in front of the moto server counting the body bytes of every GET of a .tif: what the
    worker really fetched from S3."""

    def __init__(self, upstream: str):
        import http.client
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import urlsplit

        target = urlsplit(upstream)
        self.tif_bytes: dict[str, int] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # noqa: ANN002
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                path = self.path.split("?", 1)[0]
                outer.requests.append((self.command, path, self.headers.get("Range")))
                if self.command == "GET" and path.endswith(".tif"):
                    outer.tif_bytes[path] = outer.tif_bytes.get(path, 0) + len(data)
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_HEAD = do_PUT = do_POST = _forward  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _noisy(seed: int) -> np.ndarray:
    """Quadrants plus noise: a COG that does not compress to nothing, so bytes read tell levels apart."""
    rng = np.random.default_rng(seed)
    return (_quadrants() + rng.uniform(-0.05, 0.05, (SIZE, SIZE))).astype("float32")


def test_mosaic_reads_cogs_in_place_from_s3_overviews_only(moto_s3, tmp_path: Path, monkeypatch):
    """The launcher's layout: the input folder holds only the items (<job>/<id>_ndvi.json, href ./<id>_ndvi.tif);
    --assets-root s3://... names where the folder's COGs live. The mosaic equals the one built from local files,
    and the bytes fetched at the server are a small fraction of the COGs (overviews, never full resolution)."""
    import boto3
    import rasterio

    from ndvi_worker import io as wio

    local = tmp_path / "local"
    for job, (tile, date, seed) in (
        ("j-000", ("31UFU", "2023-12-03", 1)),
        ("j-001", ("32ULC", "2023-12-05", 2)),
    ):
        write_product(local / job, f"S2A_{tile}_{date.replace('-', '')}_0_L2A", _noisy(seed), date,
                      *EU[tile], 100.0)  # fmt: skip
    ref = tmp_path / "ref"
    report, status, _ = run_mosaic(local, ref, MosaicOptions(resolution=0.01), tmp_path / "s0")
    assert status == 0, report.to_dict()

    s3 = boto3.client("s3", endpoint_url=moto_s3, region_name="us-west-2", aws_access_key_id="testing",
                      aws_secret_access_key="testing")  # fmt: skip
    s3.create_bucket(Bucket="mosaic-in", CreateBucketConfiguration={"LocationConstraint": "us-west-2"})
    items = tmp_path / "items"  # what SageMaker downloads: the items only
    cog_sizes = {}
    for path in sorted(local.rglob("*")):
        if path.is_file():
            rel = path.relative_to(local).as_posix()
            s3.upload_file(str(path), "mosaic-in", f"run/output/{rel}")
            if path.suffix == ".json":
                (items / rel).parent.mkdir(parents=True, exist_ok=True)
                (items / rel).write_text(path.read_text())
            else:
                cog_sizes[f"/mosaic-in/run/output/{rel}"] = path.stat().st_size
    assert not list(items.rglob("*.tif"))

    proxy = _CountingProxy(moto_s3)
    try:
        for key, value in wio.GDAL_DEFAULTS.items():  # configure_gdal sets them: restored after the test
            monkeypatch.setenv(key, __import__("os").environ.get(key, value))
        for key, value in {
            "AWS_S3_ENDPOINT": proxy.endpoint, "AWS_HTTPS": "NO", "AWS_VIRTUAL_HOSTING": "FALSE",
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-west-2",
        }.items():  # fmt: skip
            monkeypatch.setenv(key, value)
        out = tmp_path / "remote"
        opts = MosaicOptions(resolution=0.01, assets_root="s3://mosaic-in/run/output/")
        report, status, stats = run_mosaic(items, out, opts, tmp_path / "s1")
    finally:
        proxy.close()
    assert status == 0, report.to_dict()
    assert stats["overview_reads"] == 2 and stats["full_resolution_reads"] == 0
    with rasterio.open(ref / "mosaic_ndvi.tif") as a, rasterio.open(out / "mosaic_ndvi.tif") as b:
        assert a.bounds == b.bounds and np.array_equal(a.read(1), b.read(1))
    assert set(proxy.tif_bytes) == set(cog_sizes), proxy.requests
    for path, size in cog_sizes.items():
        assert size > 1_000_000
        assert proxy.tif_bytes[path] < size / 10, (path, proxy.tif_bytes[path], size)


def test_assets_root_rules(tmp_path: Path):
    """Relative hrefs stay under the root (no '..' above it, no encoded dots); absolute hrefs keep the
    allowlist; an item outside the input folder has no place under the root."""
    from ndvi_worker.products_io import find_products
    from ndvi_worker.safety import HrefError, check_assets_root, under_assets_root

    root = check_assets_root("s3://bucket/run/output")
    assert root == "s3://bucket/run/output/"
    assert under_assets_root(root, "job-0", "./a_ndvi.tif") == "s3://bucket/run/output/job-0/a_ndvi.tif"
    assert under_assets_root(root, "job-0", "../job-1/b.tif") == "s3://bucket/run/output/job-1/b.tif"
    for href in (
        "../../x.tif",
        "../../../etc/x.tif",
        "/etc/x.tif",
        "%2e%2e/%2e%2e/x.tif",
        "s3://other/x.tif",
    ):
        with pytest.raises(HrefError):
            under_assets_root(root, "job-0", href)
    for bad in ("s3://bucket/a/./b", "https://example.com/x/?q=1", "file:///tmp/", "/tmp/x", "s3://B/x"):
        with pytest.raises(HrefError):
            check_assets_root(bad)
    assert check_assets_root("https://example.com/data") == "https://example.com/data/"

    folder = tmp_path / "in" / "job-0"
    write_product(folder, "S2A_31UFU_20231203_0_L2A", _quadrants(), "2023-12-03", *EU["31UFU"], 100.0)
    item_path = folder / "S2A_31UFU_20231203_0_L2A_ndvi.json"
    item = json.loads(item_path.read_text())
    item["assets"]["ndvi"]["href"] = "../../../elsewhere/x_ndvi.tif"
    item_path.write_text(json.dumps(item))
    products, problems = find_products(tmp_path / "in", root)
    assert not products and "leads out of the assets root" in problems[0].error
    item["assets"]["ndvi"]["href"] = "/proc/self/environ"
    item_path.write_text(json.dumps(item))
    products, problems = find_products(tmp_path / "in", root)
    assert not products and "/proc" in problems[0].error


def _viewer_data(html_text: str) -> dict:
    """The data index.html carries (what render_viewer put in place of the marker)."""
    from ndvi_worker.viewer import DATA_MARKER
    from ndvi_worker.viewer.page import PAGE

    before, after = PAGE.split(DATA_MARKER)
    assert html_text.startswith(before) and html_text.endswith(after)
    return json.loads(html_text[len(before) : len(html_text) - len(after)])


def test_inputs_href_links_the_published_layout(tmp_path: Path):
    """On SageMaker the mosaic's input folder is not uploaded: the inputs live in S3 beside the mosaic's output
    prefix. With --inputs-href the collection's item links and the viewer's quicklook/COG/item links point there:
    copied side by side as in S3, pystac reads every item and every linked file exists."""
    import shutil

    import pystac

    folder = tmp_path / "instance" / "input"
    _write(folder / "run-0000-007", "31UFU", "2023-12-03", 0.0, *EU["31UFU"], quicklook=True)
    _write(folder / "run-0001-002", "32ULC", "2023-12-05", 0.02, *EU["32ULC"], quicklook=True)
    out = tmp_path / "instance" / "output"
    report, status, _ = run_mosaic(
        folder, out, MosaicOptions(resolution=0.05, inputs_href="../"), tmp_path / "s"
    )
    assert status == 0, report.to_dict()
    links = sorted(link["href"] for link in json.loads((out / "collection.json").read_text())["links"]
                   if link["rel"] == "item")  # fmt: skip
    assert links == ["../run-0000-007/S2A_31UFU_20231203_0_L2A_ndvi.json",
                     "../run-0001-002/S2A_32ULC_20231205_0_L2A_ndvi.json"]  # fmt: skip

    published = tmp_path / "s3" / "bucket" / "run"  # the run's output prefix, as SageMaker uploads it
    shutil.copytree(folder, published)
    shutil.copytree(out, published / "run-m0001-000")
    collection = pystac.Collection.from_file(str(published / "run-m0001-000" / "collection.json"))
    assert sorted(i.id for i in collection.get_items()) == [
        "S2A_31UFU_20231203_0_L2A_ndvi",
        "S2A_32ULC_20231205_0_L2A_ndvi",
    ]
    page = published / "run-m0001-000" / "index.html"
    features = _viewer_data(page.read_text())["features"]
    assert len(features) == 2
    for f in features:
        for key in ("quicklook", "cog", "item"):
            assert f[key].startswith("../run-000"), (key, f[key])
            assert (page.parent / f[key]).resolve().is_file(), (key, f[key])

    # without it, the links are the paths between the folders on this machine (local runs keep working)
    run_mosaic(folder, tmp_path / "local-out", MosaicOptions(resolution=0.05), tmp_path / "s2")
    local = _viewer_data((tmp_path / "local-out" / "index.html").read_text())["features"]
    assert all((tmp_path / "local-out" / f["quicklook"]).resolve().is_file() for f in local)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("../", "../"), ("..", "../"), ("../run-0001-002", "../run-0001-002/"), ("./", None),
     ("https://data.example.org/ndvi/run", "https://data.example.org/ndvi/run/")],
)  # fmt: skip
def test_inputs_href_accepts_relative_paths_and_https(value, expected):
    from ndvi_worker.safety import HrefError, check_inputs_href

    if expected is None:
        with pytest.raises(HrefError):
            check_inputs_href(value)
    else:
        assert check_inputs_href(value) == expected


@pytest.mark.parametrize(
    "value",
    ["", "/etc/", "javascript:alert(1)//", "data:text/html,x", "http://example.org/x", "s3://bucket/run/",
     "//evil.example/x", "..//x", '../"><script>', "../</script>", "a b/", "%2e%2e/", "..\\x", "../x?y",
     "https://user@example.org/x", "https://example.org/x?sig=1", "https://example.org/x#f", "https://example.org/\"onload=x",
     "https://example.org/a/../b", "../\nx", "x" * 2000],
)  # fmt: skip
def test_inputs_href_refuses_what_does_not_belong_in_a_page(value):
    from ndvi_worker.safety import HrefError, check_inputs_href

    with pytest.raises(HrefError):
        check_inputs_href(value)


def test_mosaic_cli_refuses_a_bad_inputs_href_in_one_line(tmp_path: Path):
    folder = tmp_path / "in"
    folder.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "ndvi_worker", "mosaic", "--input", str(folder), "--output", str(tmp_path / "o"),
         "--inputs-href", "javascript:alert(1)//"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "--inputs-href" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "text", ["a<!--b", "</script><script>alert(1)</script>", "x&amp;<b>", "-->", "<\\!--"]
)
def test_viewer_data_stays_valid_json_and_inert_markup(text):
    """Item fields reach the page's script: whatever they hold, the embedded data parses back to the same value
    and can neither close the script element nor open a comment ("<!--" broke the JSON before)."""
    from ndvi_worker.viewer import render_viewer

    html_text = render_viewer({"features": [{"id": text, "method": text}]})
    assert _viewer_data(html_text)["features"] == [{"id": text, "method": text}]
    from ndvi_worker.viewer import DATA_MARKER
    from ndvi_worker.viewer.page import PAGE

    before, after = PAGE.split(DATA_MARKER)
    embedded = html_text[len(before) : len(html_text) - len(after)]
    assert "<" not in embedded and ">" not in embedded
