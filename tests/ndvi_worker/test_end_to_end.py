"""The worker end to end, as SageMaker runs it (a subprocess, SAGEMAKER_BASE_DIR), on real and synthetic scenes.

NDVI is checked against an independent numpy computation from the input files, so the tests fail when the
science is wrong (offset, SCL resampling, masks)."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from rio_cogeo.cogeo import cog_validate

MASK = (0, 1, 3, 8, 9, 10)


def expected_ndvi(folder: Path, add_dn: int, mask=MASK) -> np.ndarray:
    """NDVI computed independently of the worker: float64, np.kron for the SCL, the documented masks."""
    with rasterio.open(folder / "B04.tif") as r, rasterio.open(folder / "B08.tif") as n:
        red = r.read(1).astype(np.float64)
        nir = n.read(1).astype(np.float64)
    with rasterio.open(folder / "SCL.tif") as s:
        scl = np.kron(s.read(1), np.ones((2, 2), dtype=np.uint8))[: red.shape[0], : red.shape[1]]
    nodata = (red == 0) | (nir == 0)
    red += add_dn
    nir += add_dn
    bad = nodata | np.isin(scl, [0, *mask]) | (red <= 1) | (nir <= 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ndvi = (nir - red) / (nir + red)
    ndvi[bad] = np.nan
    return ndvi


def read_output(path: Path) -> tuple[np.ndarray, dict]:
    with rasterio.open(path) as ds:
        data = ds.read(1).astype(np.float64)
        info = {
            "crs": ds.crs,
            "transform": ds.transform,
            "nodata": ds.nodata,
            "scale": ds.scales[0],
            "dtype": ds.dtypes[0],
            "overviews": ds.overviews(1),
            "compression": ds.compression,
            "tiled": ds.profile.get("tiled"),
        }
    if info["dtype"] == "int16":
        data[data == info["nodata"]] = np.nan
        data *= info["scale"]
    return data, info


def test_real_scene_matches_independent_numpy(sample_scene, run_worker, tmp_path):
    out = tmp_path / "out"
    proc = run_worker("--input", str(sample_scene.parent.parent), "--output", str(out), check_code=0)
    stem = "S2A_29RKH_20200219_0_L2A_ndvi"
    cog = out / f"{stem}.tif"
    ndvi, info = read_output(cog)
    expected = expected_ndvi(sample_scene.parent, add_dn=0)  # baseline 02.14: no offset
    assert np.array_equal(np.isnan(ndvi), np.isnan(expected))
    valid = ~np.isnan(expected)
    assert valid.mean() > 0.5
    np.testing.assert_allclose(ndvi[valid], expected[valid], atol=0.6e-4)  # int16 quantisation
    # a valid COG on the red band's grid, with overviews, compression and a declared nodata
    is_valid, errors, _ = cog_validate(str(cog))
    assert is_valid, errors
    with rasterio.open(sample_scene.parent / "B04.tif") as red:
        assert info["crs"] == red.crs and info["transform"] == red.transform
    assert info["overviews"] and info["compression"] is not None and info["nodata"] == -32768
    assert info["scale"] == pytest.approx(1e-4)
    # overviews: exact means of the valid full-resolution NDVI under each overview pixel
    with rasterio.open(cog, OVERVIEW_LEVEL=0) as ov:
        level1 = ov.read(1).astype(np.float64)
        level1_nodata = level1 == -32768
        level1 *= 1e-4
    h, w = expected.shape
    pad = np.full((h + h % 2, w + w % 2), np.nan)
    pad[:h, :w] = expected
    blocks = pad.reshape(pad.shape[0] // 2, 2, pad.shape[1] // 2, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks: nodata overview pixels
        ref = np.nanmean(blocks, axis=(1, 3))
    assert np.array_equal(level1_nodata, np.isnan(ref))
    np.testing.assert_allclose(level1[~level1_nodata], ref[~np.isnan(ref)], atol=1.1e-4)
    # the STAC item describing it
    item = pystac.Item.from_file(str(out / f"{stem}.json"))
    assert item.id == stem
    assert item.assets["ndvi"].href.endswith(f"{stem}.tif")
    props = item.properties
    assert props["earthmon:mask_classes"] == list(MASK)
    assert props["earthmon:boa_offset"]["add_dn"] == 0
    assert props["earthmon:scl_resampling"] == "block-repeat"
    assert props["earthmon:valid_fraction"] == pytest.approx(valid.mean(), abs=1e-9)
    assert props["earthmon:statistics"]["mean"] == pytest.approx(np.nanmean(expected), abs=1e-5)
    assert any(link.rel == "derived_from" for link in item.links)
    assert (out / f"{stem}.png").stat().st_size > 1000
    # the per-host report
    report = json.loads(next((out / "_reports").glob("*.json")).read_text())
    assert report["summary"] == {"total": 1, "done": 1, "skipped": 0, "failed": 0}
    scene = report["scenes"][0]
    assert scene["status"] == "done" and scene["bytes_read"] > 0 and scene["error"] is None
    assert "1/1 scenes" in proc.stdout and "ETA" in proc.stdout


def test_synthetic_scenes_offset_rule_and_float_output(synthetic_input, run_worker, tmp_path):
    """Offset-applied v1 items (stale raster:bands offset present) and raw-DN v0 items, float32 output."""
    out = tmp_path / "out"
    run_worker("--input", str(synthetic_input), "--output", str(out), "--dtype", "float32", check_code=0)
    for folder in sorted(p for p in synthetic_input.iterdir() if p.is_dir()):
        item = json.loads((folder / f"{folder.name}.json").read_text())
        applied = item["properties"].get(
            "earthsearch:boa_offset_applied", item["properties"].get("sentinel:boa_offset_applied")
        )
        add = 0 if applied else -1000
        ndvi, info = read_output(out / f"{folder.name}_ndvi.tif")
        assert info["dtype"] == "float32"
        expected = expected_ndvi(folder, add)
        assert np.array_equal(np.isnan(ndvi), np.isnan(expected)), folder.name
        v = ~np.isnan(expected)
        np.testing.assert_allclose(ndvi[v], expected[v], atol=1e-6)
        assert np.nanmin(ndvi) >= -1 and np.nanmax(ndvi) <= 1
        wrong = expected_ndvi(folder, -1000 - add)  # the other offset decision
        assert np.nanmean(np.abs(wrong - expected)) > 0.05, "the test must be able to tell the offsets apart"


def test_clamped_dark_water_never_reaches_ndvi_near_one(synthetic_input, run_worker, tmp_path):
    out = tmp_path / "out"
    run_worker("--input", str(synthetic_input), "--output", str(out), check_code=0)
    folder = next(p for p in sorted(synthetic_input.iterdir()) if p.is_dir())
    with rasterio.open(folder / "B04.tif") as r, rasterio.open(folder / "SCL.tif") as s:
        red = r.read(1)
        scl = np.kron(s.read(1), np.ones((2, 2), dtype=np.uint8))
    clamped = (red == 1) & (scl == 6)
    assert clamped.sum() > 100, "the synthetic scene has DN-1 water pixels"
    ndvi, _ = read_output(out / f"{folder.name}_ndvi.tif")
    assert np.all(np.isnan(ndvi[clamped]))
    item = json.loads((out / f"{folder.name}_ndvi.json").read_text())
    assert item["properties"]["earthmon:mask_fractions"]["clamped"] > 0


def test_custom_mask_classes_and_forced_offset(sample_scene, run_worker, tmp_path):
    out = tmp_path / "out"
    run_worker("--input", str(sample_scene.parent.parent), "--output", str(out), "--mask-classes", "8,9,10,11",
               "--boa-offset", "apply", check_code=0)  # fmt: skip
    ndvi, _ = read_output(out / "S2A_29RKH_20200219_0_L2A_ndvi.tif")
    expected = expected_ndvi(sample_scene.parent, -1000, mask=(8, 9, 10, 11))
    assert np.array_equal(np.isnan(ndvi), np.isnan(expected))
    item = json.loads((out / "S2A_29RKH_20200219_0_L2A_ndvi.json").read_text())
    assert item["properties"]["earthmon:boa_offset"]["reason"] == "forced by --boa-offset apply"


def test_rerun_skips_valid_outputs_and_overwrite_recomputes(synthetic_input, run_worker, tmp_path):
    out = tmp_path / "out"
    run_worker("--input", str(synthetic_input), "--output", str(out), check_code=0)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*_ndvi.tif")}
    assert len(mtimes) == 3
    run_worker("--input", str(synthetic_input), "--output", str(out), check_code=0)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*_ndvi.tif")} == mtimes
    report = json.loads(next((out / "_reports").glob("*.json")).read_text())
    assert report["summary"]["skipped"] == 3
    # a corrupted output (size differs from its STAC item) is recomputed
    victim = sorted(out.glob("*_ndvi.tif"))[0]
    victim.write_bytes(victim.read_bytes()[:1000])
    run_worker("--input", str(synthetic_input), "--output", str(out), check_code=0)
    assert cog_validate(str(victim))[0]
    run_worker("--input", str(synthetic_input), "--output", str(out), "--overwrite", check_code=0)
    report = json.loads(next((out / "_reports").glob("*.json")).read_text())
    assert report["summary"]["done"] == 3


def test_sagemaker_contract_paths_host_and_message(synthetic_input, run_worker, tmp_path):
    """No arguments: /opt/ml/processing/input -> /opt/ml/processing/output under SAGEMAKER_BASE_DIR."""
    base = tmp_path / "opt-ml"
    (base / "processing").mkdir(parents=True)
    synthetic_input.rename(base / "processing" / "input")
    (base / "config").mkdir()
    (base / "config" / "resourceconfig.json").write_text(
        json.dumps({"current_host": "algo-3", "hosts": ["algo-1", "algo-2", "algo-3"]})
    )
    run_worker(base=base, check_code=0)
    out = base / "processing" / "output"
    assert len(list(out.glob("*_ndvi.tif"))) == 3
    report = json.loads((out / "_reports" / "algo-3.json").read_text())
    assert report["host"] == "algo-3" and report["hosts"] == ["algo-1", "algo-2", "algo-3"]
    assert (base / "output" / "message").read_text().startswith("algo-3: 3 done, 0 skipped, 0 failed")
    # nothing but outputs in the output folder: staging lives beside it
    assert {p.suffix for p in out.iterdir() if p.is_file()} == {".tif", ".json", ".png"}


def test_empty_shard_is_success(run_worker, tmp_path):
    base = tmp_path / "opt-ml"
    (base / "processing" / "input").mkdir(parents=True)
    proc = run_worker(base=base, check_code=0)
    out = base / "processing" / "output"
    report = json.loads(next((out / "_reports").glob("*.json")).read_text())
    assert report["summary"]["total"] == 0
    assert "0 done" in (base / "output" / "message").read_text()
    assert proc.returncode == 0
    # SageMaker may not even create the input folder for an instance that got no objects
    base2 = tmp_path / "opt-ml-2"
    run_worker(base=base2, check_code=0)


def test_scenes_as_tasks_on_an_existing_dask_cluster(synthetic_input, run_worker, tmp_path):
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None) as cluster:
        out = tmp_path / "out"
        proc = run_worker(
            "--input", str(synthetic_input), "--output", str(out), "--scheduler", cluster.scheduler_address
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(next((out / "_reports").glob("*.json")).read_text())
    assert report["summary"]["done"] == 3
    for folder in sorted(p for p in synthetic_input.iterdir() if p.is_dir()):
        assert cog_validate(str(out / f"{folder.name}_ndvi.tif"))[0]


def test_scl_grid_that_does_not_nest_is_resampled_by_nearest_neighbour(synthetic_input, run_worker, tmp_path):
    """An SCL shifted by half a 20 m pixel: nearest-neighbour resampling, never interpolation of the codes."""
    from affine import Affine
    from rasterio.warp import Resampling, reproject

    folder = sorted(p for p in synthetic_input.iterdir() if p.is_dir())[0]
    with rasterio.open(folder / "SCL.tif") as ds:
        scl, prof = ds.read(1), ds.profile
    t = prof["transform"]
    prof.update(transform=Affine(t.a, t.b, t.c + 10, t.d, t.e, t.f - 10), driver="GTiff")
    with rasterio.open(folder / "SCL.tif", "w", **prof) as ds:
        ds.write(scl, 1)
    for other in sorted(p for p in synthetic_input.iterdir() if p.is_dir())[1:]:
        shutil.rmtree(other)
    out = tmp_path / "out"
    run_worker("--input", str(synthetic_input), "--output", str(out), "--dtype", "float32", check_code=0)
    item = json.loads((out / f"{folder.name}_ndvi.json").read_text())
    assert item["properties"]["earthmon:scl_resampling"] == "nearest"
    with rasterio.open(folder / "B04.tif") as r, rasterio.open(folder / "B08.tif") as n:
        red, nir, red_prof = r.read(1).astype(np.float64), n.read(1).astype(np.float64), r.profile
    scl10 = np.zeros(red.shape, dtype=np.uint8)
    reproject(scl, scl10, src_transform=prof["transform"], src_crs=prof["crs"], dst_transform=red_prof["transform"],
              dst_crs=red_prof["crs"], resampling=Resampling.nearest, src_nodata=0, dst_nodata=0)  # fmt: skip
    assert set(np.unique(scl10)) <= set(range(12))
    applied = item["properties"]["earthmon:boa_offset"]["add_dn"]
    red += applied
    nir += applied
    bad = (red <= 1) | (nir <= 1) | np.isin(scl10, [0, *MASK]) | (red - applied == 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = np.where(bad, np.nan, (nir - red) / (nir + red))
    ndvi, _ = read_output(out / f"{folder.name}_ndvi.tif")
    assert np.array_equal(np.isnan(ndvi), np.isnan(expected))
    v = ~np.isnan(expected)
    np.testing.assert_allclose(ndvi[v], expected[v], atol=1e-6)
