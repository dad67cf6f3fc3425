"""Temporal composites: real rasters in (shaped like the worker's outputs, or made by the worker itself), real numbers
out, checked per pixel against numpy on the decoded stack; mixed encodings and nodata, partial footprints, periods,
grids, corrupt inputs, memory bounded by windows, the CLI's usage errors."""

from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from earthmon_testing.products import read_decoded, write_product
from ndvi_worker import composite as core
from ndvi_worker.ndvi import to_int16
from ndvi_worker.products_io import CompositeOptions, run_composite

SHAPE = (300, 420)  # not a multiple of the windows


def _ndvi(seed: int, shape=SHAPE, holes: float = 0.3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = rng.uniform(-0.3, 0.95, size=shape).astype("float32")
    values[rng.random(shape) < holes] = np.nan
    return values


@pytest.fixture
def tile_inputs(tmp_path: Path):
    """Five dates of tile 31UFU: int16 (-32768), float32 (NaN), int16 with another producer's nodata (-9999), a
    partial footprint (another orbit: only the western 40 % of the tile), and one outside December."""
    folder = tmp_path / "scenes"
    arrays = {}
    specs = [
        ("S2A_31UFU_20231203_0_L2A", "2023-12-03", "int16", None),
        ("S2B_31UFU_20231205_0_L2A", "2023-12-05", "float32", None),
        ("S2A_31UFU_20231210_0_L2A", "2023-12-10", "int16", -9999),
        ("S2B_31UFU_20231215_0_L2A", "2023-12-15", "int16", None),
        ("S2A_31UFU_20240110_0_L2A", "2024-01-10", "int16", None),
    ]
    for k, (item_id, date, dtype, nodata) in enumerate(specs):
        values = _ndvi(k)
        if k == 3:  # partial footprint
            values[:, int(SHAPE[1] * 0.4) :] = np.nan
        arrays[item_id] = values
        write_product(folder, item_id, values, date, dtype=dtype, nodata=nodata)
    return folder, arrays


def _expected_stack(folder: Path, ids: list[str]) -> np.ndarray:
    """The inputs as stored (quantised), decoded independently of the code under test."""
    return np.stack([read_decoded(folder / f"{i}_ndvi.tif") for i in ids]).astype("float32")


@pytest.mark.parametrize("method", ["max", "median", "mean"])
def test_composite_matches_numpy_on_the_stack(tile_inputs, tmp_path: Path, method: str):
    folder, arrays = tile_inputs
    out = tmp_path / "out"
    opts = CompositeOptions(method=method, period=core.parse_period("2023-12-01/2023-12-31"), memory_mb=8)
    report, status = run_composite(folder, out, opts, staging_dir=tmp_path / "staging")
    assert status == 0, report.to_dict()
    assert [s["source"] for s in report.skipped] == ["S2A_31UFU_20240110_0_L2A_ndvi"]
    stem = f"31UFU_20231201_20231231_ndvi-{method}"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{stem}.tif", f"{stem}.json", f"{stem}.png", "_reports"]
    )
    ids = sorted((i for i in arrays if "2023" in i), key=lambda i: i.split("_")[2])
    stack = _expected_stack(folder, ids)
    days = [3 - 1, 5 - 1, 10 - 1, 15 - 1]  # days since 2023-12-01
    expected = core.composite_numpy(stack, days, method)

    import rasterio

    with rasterio.open(out / f"{stem}.tif") as ds:
        assert ds.count == (3 if method == "max" else 2)
        assert ds.dtypes[0] == "int16" and ds.nodata == -32768 and ds.scales[0] == pytest.approx(1e-4)
        assert ds.descriptions[:2] == ("ndvi", "count")
        ndvi, count = ds.read(1), ds.read(2)
        day = ds.read(3) if method == "max" else None
    want = to_int16(expected["ndvi"])
    diff = np.abs(ndvi.astype(int) - want.astype(int))
    assert diff.max() <= (0 if method == "max" else 1)  # float64 vs float32 rounding at .5 only
    np.testing.assert_array_equal(ndvi == -32768, np.isnan(expected["ndvi"]))
    np.testing.assert_array_equal(count, expected["count"])
    assert count.max() == 4 and count.min() == 0
    # the partial footprint contributes only in its western 40 %
    east = slice(int(SHAPE[1] * 0.4), None)
    assert count[:, east].max() == 3
    if method == "max":
        np.testing.assert_array_equal(day[count > 0], expected["day"][count > 0])
        assert (day[count == 0] == -32768).all()
        assert set(np.unique(day[count > 0])) == set(days)

    item = json.loads((out / f"{stem}.json").read_text())
    import pystac

    parsed = pystac.Item.from_dict(item)
    assert parsed.properties["start_datetime"].startswith("2023-12-01")
    assert parsed.properties["end_datetime"].startswith("2023-12-31")
    derived = [link.href for link in parsed.links if link.rel == "derived_from"]
    assert sorted(Path(h).name for h in derived) == sorted(f"{i}_ndvi.json" for i in ids)
    assert all((out / h).resolve().exists() for h in derived)
    assert item["properties"]["earthmon:source_count"] == 4
    assert item["properties"]["grid:code"] == "MGRS-31UFU"
    valid = (count > 0).mean()
    assert item["properties"]["earthmon:valid_fraction"] == pytest.approx(valid)


def test_float32_output_and_default_period(tile_inputs, tmp_path: Path):
    folder, arrays = tile_inputs
    out = tmp_path / "out"
    report, status = run_composite(
        folder, out, CompositeOptions(method="mean", period=None, dtype="float32"), tmp_path / "s"
    )
    assert status == 0
    stem = "31UFU_20231203_20240110_ndvi-mean"  # the tile's first and last dates
    ids = sorted(arrays, key=lambda i: i.split("_")[2])
    expected = core.composite_numpy(_expected_stack(folder, ids), [0] * 5, "mean")
    got = read_decoded(out / f"{stem}.tif")
    np.testing.assert_allclose(got, expected["ndvi"], atol=1e-6, equal_nan=True)
    np.testing.assert_array_equal(read_decoded(out / f"{stem}.tif", 2), expected["count"])


def test_inputs_on_different_grids_are_rejected_and_other_tiles_go_on(tmp_path: Path):
    folder = tmp_path / "in"
    write_product(folder, "S2A_31UFU_20231203_0_L2A", _ndvi(1), "2023-12-03")
    write_product(folder, "S2A_31UFU_20231208_0_L2A", _ndvi(2), "2023-12-08", origin=(600010.0, 5800020.0))
    write_product(folder, "S2A_32ULC_20231203_0_L2A", _ndvi(3), "2023-12-03", epsg=32632)
    report, status = run_composite(folder, tmp_path / "out", CompositeOptions("max", None), tmp_path / "s")
    assert status == 1
    [problem] = report.failed
    assert problem.source == "tile 31UFU"
    assert "different grids" in problem.error and "S2A_31UFU_20231208_0_L2A_ndvi" in problem.error
    assert [d["tile"] for d in report.done] == ["32ULC"]
    assert not list((tmp_path / "out").glob("31UFU*"))


def test_corrupt_inputs_are_reported_and_skipped(tile_inputs, tmp_path: Path):
    folder, arrays = tile_inputs
    # a truncated COG (header readable, blocks missing) and a malformed item
    cog = folder / "S2B_31UFU_20231215_0_L2A_ndvi.tif"
    data = cog.read_bytes()
    cog.write_bytes(data[: len(data) // 3])
    (folder / "broken_ndvi.json").write_text("{not json")
    out = tmp_path / "out"
    report, status = run_composite(folder, out, CompositeOptions("max", None), tmp_path / "s")
    assert status == 1
    sources = {p.source for p in report.failed}
    assert "broken_ndvi.json" in sources
    assert any("S2B_31UFU_20231215_0_L2A_ndvi" in s for s in sources)
    [done] = report.done
    assert done["inputs"] == 4  # the other four dates
    item = json.loads((out / f"{done['output']}").read_text())
    assert "S2B_31UFU_20231215_0_L2A_ndvi" not in item["properties"]["earthmon:source_items"]
    saved = json.loads(next((out / "_reports").glob("composite-*.json")).read_text())
    assert len(saved["failed"]) == 2


def test_window_side_shrinks_with_dates():
    budget = 64 * 2**20
    sides = [core.window_side(n, budget) for n in (1, 10, 100, 1000, 10000)]
    assert sides == sorted(sides, reverse=True)
    for n, side in zip((1, 10, 100, 1000, 10000), sides, strict=False):
        assert side % 16 == 0
        assert n * side * side * 4 * 4 <= budget or side == 16


def test_memory_stays_bounded_whatever_the_number_of_dates(tmp_path: Path):
    """4 then 16 dates of 512 x 512 (a 16 MB decoded stack) with a 1 MB budget: every window respects the budget
    (each of the 2 threads reduces windows of half of it),
    and the peak of Python-side memory (numpy arrays, dask graphs: tracemalloc, after a warm-up run) does not grow
    with the number of dates (the fixed part is the tile-sized quicklook and statistics)."""
    from ndvi_worker.products_io import composite_tile, find_products

    folder = tmp_path / "in"
    shape = (512, 512)
    dates = 16
    for k in range(dates):
        write_product(folder, f"S2A_31UFU_202312{k + 1:02d}_0_L2A", _ndvi(k, shape), f"2023-12-{k + 1:02d}")
    products, problems = find_products(folder)
    assert not problems and len(products) == dates
    budget = 1 * 2**20
    opts = CompositeOptions("median", None, memory_mb=1, workers=2)
    composite_tile("31UFU", products[:2], opts, tmp_path / "warm", tmp_path / "s")  # imports, GDAL caches
    peaks = {}
    for n in (4, dates):
        windows = []
        tracemalloc.start()
        try:
            composite_tile(
                "31UFU",
                products[:n],
                opts,
                tmp_path / f"out{n}",
                tmp_path / "s",
                lambda h, w, seen=windows: seen.append(h * w),
            )
            peaks[n] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert max(windows) * n * 4 * 4 <= budget
    stack_bytes = dates * shape[0] * shape[1] * 4
    side = core.window_side(dates, budget // opts.workers)  # the budget is split between the threads
    assert side == 32 and len(windows) == (shape[0] // side) ** 2  # 16 dates: 32-pixel windows
    print(
        f"peak traced {peaks[4] / 2**20:.1f} MB (4 dates), {peaks[dates] / 2**20:.1f} MB ({dates} dates, stack {stack_bytes / 2**20:.0f} MB)"
    )
    # 4x the dates, same peak (give or take the dask graph's per-date objects): bounded by the budget, not the stack
    assert peaks[dates] < 1.3 * peaks[4] + 2**20
    assert peaks[dates] < stack_bytes


def test_worker_outputs_composite_through_the_cli(synthetic_dir: Path, tmp_path: Path):
    """Three dates of one tile made by the worker itself (synthetic scenes: clouds differ per date), then
    ``ndvi-worker composite`` through the entry point's dispatch."""
    from ndvi_worker.synthetic import write_scene

    items = tmp_path / "items"
    for k, day in enumerate(("04", "09", "14")):
        item_id = f"S2B_31UFU_202312{day}_0_L2A"
        write_scene(items / item_id, item_id=item_id, size=512, seed=10 + k)
    scenes = tmp_path / "scenes"
    run = [sys.executable, "-m", "ndvi_worker"]
    proc = subprocess.run(
        [*run, "--input", str(items), "--output", str(scenes), "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "composites"
    proc = subprocess.run(
        [
            *run,
            "composite",
            "--input",
            str(scenes),
            "--output",
            str(out),
            "--method",
            "max",
            "--period",
            "2023-12-01/2023-12-15",
            "--workers",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    stem = "31UFU_20231201_20231215_ndvi-max"
    ids = [f"S2B_31UFU_202312{d}_0_L2A" for d in ("04", "09", "14")]
    stack = _expected_stack(scenes, ids)
    expected = core.composite_numpy(stack, [3, 8, 13], "max")
    got = read_decoded(out / f"{stem}.tif")
    np.testing.assert_allclose(got, expected["ndvi"], atol=1e-4, equal_nan=True)
    np.testing.assert_array_equal(read_decoded(out / f"{stem}.tif", 2), expected["count"])
    assert (expected["count"] == 3).any() and (expected["count"] < 3).any()  # clouds differ per date
    assert (out / f"{stem}.png").stat().st_size > 0


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--method", "max", "--period", "december"], "--period"),
        (["--method", "mode"], "--method"),
        (["--method", "max", "--period", "2023-12-31/2023-12-01"], "ends before it starts"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(tmp_path: Path, args, needle):
    (tmp_path / "in").mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ndvi_worker",
            "composite",
            "--input",
            str(tmp_path / "in"),
            "--output",
            str(tmp_path / "out"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr, proc.stderr


def test_missing_input_folder_is_a_usage_error(tmp_path: Path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ndvi_worker",
            "composite",
            "--input",
            str(tmp_path / "nope"),
            "--output",
            str(tmp_path / "out"),
            "--method",
            "max",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.parametrize("dates", [1, 2, 5, 6, 17])
@pytest.mark.parametrize("method", ["max", "median", "mean"])
def test_int16_reduction_matches_the_float_reduction_and_numpy(method: str, dates: int):
    """The reduction on raw int16 values (inputs in the worker's encoding) against the float route (decode, reduce,
    encode) and the independent numpy reduction: count and day exact, max exact, median and mean within one unit of
    the encoding (1e-4 NDVI: the exact value rounded once vs a float32 value rounded) and exact where the exact
    value is not a half; ties go to the earliest date; nodata where no observation; 17 dates sort with np.sort."""
    rng = np.random.default_rng(dates)
    raw = rng.integers(-10000, 10001, size=(dates, 64, 48)).astype(np.int16)
    raw[rng.random(raw.shape) < 0.4] = -32768
    raw[:, :4, :4] = -32768  # never observed
    raw[:, 10, 10] = 5000  # a tie on every date
    raw[: dates // 2, 11, 11] = -32768  # observed late only
    decoded = np.where(raw == -32768, np.nan, raw.astype(np.float32) * np.float32(1e-4)).astype(np.float32)
    days = [3 * k + 1 for k in range(dates)]
    fast = core.composite_block(raw, days, method, "int16", raw_int16=True)
    slow = core.composite_block(decoded, days, method, "int16", raw_int16=False)
    want = core.composite_numpy(decoded, days, method)
    count = want["count"]
    np.testing.assert_array_equal(fast[1], count)
    np.testing.assert_array_equal(fast[0] == -32768, count == 0)
    diff = np.abs(fast[0].astype(int) - to_int16(want["ndvi"]).astype(int))
    if method == "max":
        assert diff.max() == 0
        np.testing.assert_array_equal(fast, slow)
        np.testing.assert_array_equal(fast[2][count > 0], want["day"][count > 0])
        assert (fast[2][count == 0] == -32768).all() and fast[2][10, 10] == days[0]
    else:
        assert diff.max() <= 1
        # where the exact value is not a half, the two routes agree
        if method == "mean":
            total = np.where(raw == -32768, 0, raw.astype(np.int64)).sum(axis=0)
            exact = total / np.maximum(count, 1)
        else:
            exact = np.nanmedian(np.where(raw == -32768, np.nan, raw.astype(np.float64)), axis=0)
        whole = (count > 0) & (np.abs(np.nan_to_num(exact) % 1 - 0.5) > 1e-9)
        np.testing.assert_array_equal(fast[0][whole], slow[0][whole])


def test_composite_encoded_is_lazy_on_dask_backed_stacks():
    """A dask-backed (time, y, x) stack (e.g. outputs opened with ndvi_worker.open_ndvi and concatenated along
    time) stays lazy and gives the same bands as the numpy-backed stack, block by block."""
    import xarray as xr

    rng = np.random.default_rng(3)
    raw = rng.integers(-10000, 10001, size=(4, 300, 200)).astype(np.int16)
    raw[rng.random(raw.shape) < 0.3] = -32768
    stack = xr.DataArray(raw, dims=("time", "y", "x"))
    for method in core.METHODS:
        lazy = core.composite_encoded(
            stack.chunk({"time": 1, "y": 128, "x": 96}), range(4), method, "int16", True
        )
        assert lazy.chunks is not None and list(lazy.band.values) == list(core.BANDS[method])
        eager = core.composite_encoded(stack, range(4), method, "int16", True)
        np.testing.assert_array_equal(lazy.values, eager.values)
