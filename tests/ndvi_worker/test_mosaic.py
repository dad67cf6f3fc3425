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


def _write(folder: Path, tile: str, date: str, offset: float, epsg: int, origin) -> None:
    item_id = f"S2A_{tile}_{date.replace('-', '')}_0_L2A"
    write_product(folder, item_id, _quadrants(offset), date, epsg, origin, 100.0)


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
