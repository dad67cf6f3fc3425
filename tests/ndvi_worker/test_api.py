"""The public Python API (ndvi_worker.api, docs/python-api.md): a scene's NDVI from an item, or a finished output,
as a lazy georeferenced xarray.DataArray, equal to what the worker itself writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

import ndvi_worker
from ndvi_worker import ItemError, open_ndvi, open_scene_ndvi
from ndvi_worker.stac import scene_from_item

# 0.5 of the int16 step (rounding), plus float32 rounding of the decoded value
INT16_TOLERANCE = 0.5e-4 + 1e-6


def _read(path: Path) -> tuple[np.ndarray, object, object]:
    with rasterio.open(path) as ds:
        return ds.read(1), ds.crs, ds.transform


def _worker_float32(run_worker, input_dir: Path, out: Path, *args: str) -> None:
    run_worker("--input", str(input_dir), "--output", str(out), "--dtype", "float32", *args, check_code=0)


# ----------------------------------------------------------------------------------------------- values


def test_real_scene_equals_the_worker_float32_output(sample_scene, run_worker, tmp_path):
    """The real downsampled scene (baseline 02.14, no offset): bit-identical to the worker's float32 COG, whatever
    the chunks (odd ones included), with the same CRS and transform."""
    out = tmp_path / "out"
    _worker_float32(run_worker, sample_scene.parent.parent, out)
    expected, crs, transform = _read(out / "S2A_29RKH_20200219_0_L2A_ndvi.tif")
    for chunks in (1024, 300, (512, 256)):
        da = open_scene_ndvi(sample_scene, chunks=chunks)
        got = da.values
        assert got.dtype == np.float32
        assert np.array_equal(got, expected, equal_nan=True), chunks
    assert np.isnan(expected).any() and (~np.isnan(expected)).any()
    assert da.rio.crs == crs and da.rio.transform() == transform
    assert da.attrs["item_id"] == "S2A_29RKH_20200219_0_L2A"
    assert da.attrs["boa_add_offset_dn"] == 0 and da.attrs["scl_resampling"] == "block-repeat"


def test_offset_rule_and_mask_classes_follow_the_worker(synthetic_input, run_worker, tmp_path):
    """Synthetic v1 offset-applied and v0 raw-DN (baseline 05.09: offset -1000) items, with custom mask classes and
    an item dict (not a path) with ``location``: equal to the worker's output for each scene."""
    out = tmp_path / "out"
    _worker_float32(run_worker, synthetic_input, out, "--mask-classes", "3,8,9")
    items = sorted(synthetic_input.rglob("*.json"))
    assert len(items) == 3
    offsets = set()
    for item_path in items:
        item = json.loads(item_path.read_text())
        da = open_scene_ndvi(item, location=str(item_path), mask_classes=(3, 8, 9), chunks=256)
        expected, crs, transform = _read(out / f"{item['id']}_ndvi.tif")
        assert np.array_equal(da.values, expected, equal_nan=True), item["id"]
        assert da.rio.crs == crs and da.rio.transform() == transform
        offsets.add(da.attrs["boa_add_offset_dn"])
        assert da.attrs["mask_classes"] == "3,8,9"
    assert offsets == {0, -1000}  # both branches of the offset rule were exercised


def test_not_nested_scl_is_resampled_like_the_worker(synthetic_input, run_worker, tmp_path):
    """An SCL whose grid does not nest in the 10 m grid (origin shifted by 30 m): nearest-neighbour resampling,
    as the worker's ResampledReader, equal to the worker's output."""
    from affine import Affine

    scene = sorted(p for p in synthetic_input.iterdir() if p.is_dir())[0]
    for other in [p for p in synthetic_input.iterdir() if p.is_dir() and p != scene]:
        for f in other.iterdir():
            f.unlink()
        other.rmdir()
    scl_path = next(p for p in scene.iterdir() if p.name.lower().startswith("scl"))
    with rasterio.open(scl_path) as src:
        profile, data = src.profile, src.read(1)
    t = profile["transform"]
    profile.update(transform=Affine(t.a, t.b, t.c + 30, t.d, t.e, t.f - 30), driver="GTiff")
    scl_path.unlink()
    with rasterio.open(scl_path, "w", **profile) as dst:
        dst.write(data, 1)
    out = tmp_path / "out"
    _worker_float32(run_worker, synthetic_input, out)
    item_path = next(scene.glob("*.json"))
    da = open_scene_ndvi(item_path, chunks=200)
    assert da.attrs["scl_resampling"] == "nearest"
    expected, _, _ = _read(out / f"{json.loads(item_path.read_text())['id']}_ndvi.tif")
    assert np.array_equal(da.values, expected, equal_nan=True)


# ----------------------------------------------------------------------------------------------- laziness


def test_opening_reads_no_pixel_until_compute(sample_scene, monkeypatch):
    """Dask-backed; the worker's NDVI core (run once per chunk) has not run before .compute()."""
    import dask.array

    from ndvi_worker import ndvi

    calls = []
    real = ndvi.ndvi_core
    monkeypatch.setattr(ndvi, "ndvi_core", lambda *a, **k: calls.append(1) or real(*a, **k))
    da = open_scene_ndvi(sample_scene, chunks=512)
    assert isinstance(da.data, dask.array.Array)
    reduced = da.mean()  # still lazy
    assert isinstance(reduced.data, dask.array.Array)
    assert calls == []
    assert np.isfinite(float(reduced.compute()))
    assert len(calls) == 9  # 3 x 3 chunks of 512 on 1098 px


def test_opening_from_http_fetches_only_headers(sample_scene, nginx):
    """Served with Range support: opening reads each band's header (ranges from byte 0); the tiles are fetched
    only by .compute()."""
    root, base, log = nginx
    folder = root / "api-lazy"
    folder.mkdir()
    item = json.loads(sample_scene.read_text())
    for key, name in (("red", "B04.tif"), ("nir", "B08.tif"), ("scl", "SCL.tif")):
        (folder / name).write_bytes((sample_scene.parent / name).read_bytes())
        item["assets"][key]["href"] = f"{base}/api-lazy/{name}"

    def requests() -> list[tuple[str, str, str]]:
        # log format: status method uri range
        parts = [line.split(" ") for line in log.read_text().splitlines() if "/api-lazy/" in line]
        return [(p[1], p[2], p[3] if len(p) > 3 else "") for p in parts]

    da = open_scene_ndvi(item, chunks=512)
    before = requests()
    assert before, "the headers are read at open"
    for method, _uri, rng in before:
        assert method == "HEAD" or rng.startswith("bytes=0-"), before
    ndvi = da.values
    after = requests()[len(before) :]
    tiles = [r for r in after if r[0] == "GET" and not r[2].startswith("bytes=0-")]
    assert {uri.rsplit("/", 1)[1] for _m, uri, _r in tiles} >= {"B04.tif", "B08.tif"}
    assert np.isfinite(ndvi).any()


def test_package_import_stays_light():
    """``import ndvi_worker`` (the CLI's start-up) and even looking the API up import no raster stack."""
    code = (
        "import sys, ndvi_worker\n"
        "heavy = {'xarray', 'rioxarray', 'dask', 'rasterio'}\n"
        "assert not heavy & set(sys.modules), heavy & set(sys.modules)\n"
        "ndvi_worker.open_scene_ndvi, ndvi_worker.open_ndvi, ndvi_worker.ItemError\n"
        "assert not heavy & set(sys.modules), heavy & set(sys.modules)\n"
        "assert 'open_ndvi' in dir(ndvi_worker)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    with pytest.raises(AttributeError):
        ndvi_worker.no_such_name  # noqa: B018


# ----------------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "href",
    [
        "/proc/self/environ",
        "../../../../../../../../proc/self/environ",
        '<VRTDataset rasterXSize="1" rasterYSize="1"><VRTRasterBand band="1"><SimpleSource>'
        "<SourceFilename>/etc/passwd</SourceFilename></SimpleSource></VRTRasterBand></VRTDataset>",
        "file:///proc/self/environ",
        "file://evil.example.com/data/B04.tif",
        "/vsicurl/http://169.254.169.254/latest/meta-data/B04.tif",
        "http://169.254.169.254/latest/B04.tif",
        "GTIFF_DIR:1:/data/B04.tif",
        "/etc/passwd",
    ],
)
def test_hostile_hrefs_are_refused_like_the_worker(sample_scene, href):
    """The same refusal (type and message) as the worker's own item parsing, before anything is opened."""
    item = json.loads(sample_scene.read_text())
    item["assets"]["red"]["href"] = href
    with pytest.raises(ItemError) as worker:
        scene_from_item(item, str(sample_scene))
    with pytest.raises(ItemError) as api:
        open_scene_ndvi(item, location=sample_scene)
    assert str(api.value) == str(worker.value)
    assert "rejected red href" in str(api.value)


def test_symlink_to_proc_and_missing_assets_are_refused(sample_scene):
    """A .tif that links to /proc/self/environ is refused at open (real path checked, as the worker does); a
    missing asset, a non-item and a document of several items are refused with what to do."""
    link = sample_scene.parent / "B04.tif"
    link.unlink()
    link.symlink_to("/proc/self/environ")
    with pytest.raises(ItemError, match=r"cannot open the red band .*rejected href.*/proc"):
        open_scene_ndvi(sample_scene)

    item = json.loads(sample_scene.read_text())
    del item["assets"]["scl"]
    with pytest.raises(ItemError, match="missing asset for scl"):
        open_scene_ndvi(item, location=sample_scene)
    with pytest.raises(ItemError, match="not a STAC item"):
        open_scene_ndvi({"type": "Feature"})
    collection = sample_scene.parent / "two.json"
    collection.write_text(json.dumps({"type": "FeatureCollection", "features": [item, item]}))
    with pytest.raises(ItemError, match=r"holds 2 items; pass one"):
        open_scene_ndvi(collection)
    with pytest.raises(ItemError, match="cannot read an item from"):
        open_scene_ndvi("ftp://example.com/item.json")
    with pytest.raises(ItemError, match="rejected href"):
        open_ndvi("/proc/self/environ")
    with pytest.raises(ItemError, match="cannot open"):
        open_ndvi(sample_scene.parent / "missing_ndvi.tif")


# ----------------------------------------------------------------------------------------------- outputs


def test_open_ndvi_round_trips_the_worker_outputs(sample_scene, run_worker, tmp_path):
    """int16 (x 10000, nodata -32768) within the encoding's precision, float32 exactly; NaN at nodata; the
    output's CRS and transform; the source item in attrs; lazy."""
    import dask.array

    run_worker("--input", str(sample_scene.parent.parent), "--output", str(tmp_path / "i16"), check_code=0)
    _worker_float32(run_worker, sample_scene.parent.parent, tmp_path / "f32")
    name = "S2A_29RKH_20200219_0_L2A_ndvi.tif"
    scene = open_scene_ndvi(sample_scene).values

    i16 = open_ndvi(tmp_path / "i16" / name, chunks=512)
    assert isinstance(i16.data, dask.array.Array) and i16.dtype == np.float32
    raw, crs, transform = _read(tmp_path / "i16" / name)
    values = i16.values
    assert np.array_equal(np.isnan(values), raw == -32768)
    assert np.array_equal(np.isnan(values), np.isnan(scene))
    assert np.nanmax(np.abs(values - scene)) <= INT16_TOLERANCE
    assert i16.rio.crs == crs and i16.rio.transform() == transform
    assert i16.attrs["item_id"] == i16.attrs["source_item"] == "S2A_29RKH_20200219_0_L2A"
    assert i16.attrs["scale"] == pytest.approx(1e-4) and i16.attrs["encoded_dtype"] == "int16"

    f32 = open_ndvi(str(tmp_path / "f32" / name))
    assert np.array_equal(f32.values, scene, equal_nan=True)
    assert f32.rio.crs == crs and f32.rio.transform() == transform


def test_written_with_rioxarray_reads_back(sample_scene, tmp_path):
    """The notebook's last cell: a reduced or clipped result written with rioxarray keeps its georeferencing."""
    da = open_scene_ndvi(sample_scene, chunks=512)
    part = da.isel(y=slice(100, 400), x=slice(200, 600))
    dst = tmp_path / "part.tif"
    part.rio.to_raster(dst, driver="COG", dtype="float32")
    back = open_ndvi(dst)
    assert np.array_equal(back.values, part.values, equal_nan=True)
    assert back.rio.transform() == part.rio.transform() and back.rio.crs == da.rio.crs


@pytest.mark.parametrize("method", ["max", "median", "mean"])
def test_composite_is_lazy_and_equals_the_numpy_reduction(tmp_path, method):
    """`ndvi_worker.composite_ndvi` of `open_ndvi` arrays: dask-backed until computed, georeferenced like its inputs,
    and the same values as an independent numpy reduction of the decoded inputs (counts and max exact)."""
    import ndvi_worker
    from earthmon_testing.products import read_decoded, write_product
    from ndvi_worker.composite import composite_numpy

    rng = np.random.default_rng(5)
    paths = []
    for k, (dtype, nodata) in enumerate([("int16", None), ("float32", None), ("int16", -9999)]):
        values = rng.uniform(-0.3, 0.95, size=(200, 260)).astype("float32")
        values[rng.random(values.shape) < 0.3] = np.nan
        if k == 2:
            values[:, 150:] = np.nan  # a partial footprint
        item_id = f"S2A_31UFU_2023120{k + 1}_0_L2A"
        write_product(tmp_path, item_id, values, f"2023-12-0{k + 1}", dtype=dtype, nodata=nodata)
        paths.append(tmp_path / f"{item_id}_ndvi.tif")
    arrays = [ndvi_worker.open_ndvi(p, chunks=64) for p in paths]
    result = ndvi_worker.composite_ndvi(arrays, method, days=[0, 1, 2])
    assert result["ndvi"].chunks is not None and result["count"].chunks is not None  # nothing read yet
    assert result.rio.crs == arrays[0].rio.crs and result.rio.transform() == arrays[0].rio.transform()
    stack = np.stack([read_decoded(p) for p in paths]).astype("float32")
    expected = composite_numpy(stack, [0, 1, 2], method)
    np.testing.assert_array_equal(result["count"].values, expected["count"])
    np.testing.assert_allclose(result["ndvi"].values, expected["ndvi"], atol=1e-6, equal_nan=True)
    if method == "max":
        np.testing.assert_array_equal(result["day"].values, expected["day"])


def test_composite_refuses_arrays_of_different_grids(tmp_path):
    import ndvi_worker
    from earthmon_testing.products import write_product

    values = np.zeros((64, 64), dtype="float32")
    write_product(tmp_path, "S2A_31UFU_20231201_0_L2A", values, "2023-12-01")
    write_product(tmp_path, "S2A_31UFU_20231202_0_L2A", values, "2023-12-02", origin=(600010.0, 5800020.0))
    a, b = (tmp_path / f"S2A_31UFU_2023120{d}_0_L2A_ndvi.tif" for d in (1, 2))
    with pytest.raises(ndvi_worker.ItemError, match="not on the grid of array 0"):
        ndvi_worker.composite_ndvi([ndvi_worker.open_ndvi(a), ndvi_worker.open_ndvi(b)])
    with pytest.raises(ndvi_worker.ItemError, match="one day per array"):
        ndvi_worker.composite_ndvi([ndvi_worker.open_ndvi(a)], days=[0, 1])
    with pytest.raises(ValueError, match="method must be one of"):
        ndvi_worker.composite_ndvi([ndvi_worker.open_ndvi(a)], "greenest")
    one = ndvi_worker.open_ndvi(a)
    with pytest.raises(ndvi_worker.ItemError, match="not one array"):
        ndvi_worker.composite_ndvi(one)  # a DataArray would iterate its rows
    with pytest.raises(ndvi_worker.ItemError, match=r"dims \('band', 'y', 'x'\)"):
        ndvi_worker.composite_ndvi([one.expand_dims(band=[1])])  # rioxarray's default (band, y, x)
    with pytest.raises(ndvi_worker.ItemError, match="days must be from 0 to 32766"):
        ndvi_worker.composite_ndvi([one], days=[40000])  # would wrap in the int16 day band
