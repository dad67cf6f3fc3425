"""Cost scaling of `ndvi-worker mosaic` (docs/products.md, "Cost"): N synthetic tiles spread over the globe's UTM zones
(noisy int16 COGs with overviews, as the product tests write them), mosaicked on the global 0.01-degree grid (36000 x
18000). Prints per N: wall time, the accumulation (read + reproject every input), the final pass and the time per
input ("per scene").

The default tile is 1098 x 1098 at 100 m (uniform noise, ~2.9 MB: the overview read at 0.01 degrees is ~275 px a
side, like the 320 m level of a real 10 m tile). ``--small`` writes the "small outputs" of the 8,581-scene run
instead: 549 x 549 at 200 m (the same 400 m overview of ~275 px is read), constant 16-px fields (~35 KB each: the
reads cost GDAL's per-file work, not decompression), so that 8,581 of them take ~0.3 GB and ~60 ms of CPU each to
generate (``--gen-workers`` processes).

    .venv/bin/python benchmarks/bench_mosaic.py 50 200 [--workdir /tmp/mosaic-bench]
    .venv/bin/python benchmarks/bench_mosaic.py 8581 --small --clean
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from pyproj import Transformer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))

from earthmon_testing.products import write_product  # noqa: E402
from ndvi_worker import products_io as pio  # noqa: E402

LAT_BANDS = "CDEFGHJKLMNPQRSTUVWX"


def _write_tiles(folder: Path, n: int, ks: range, small: bool) -> None:
    transformers: dict[int, Transformer] = {}
    size, pixel = (549, 200.0) if small else (1098, 100.0)
    for k in ks:
        rng = np.random.default_rng([n, k])
        zone = k % 60 + 1  # every UTM zone in turn, at a random latitude
        lon, lat = -180 + 6 * (zone - 1) + rng.uniform(0.5, 5.5), rng.uniform(-55, 70)
        epsg = (32600 if lat >= 0 else 32700) + zone
        tr = transformers.setdefault(epsg, Transformer.from_crs("EPSG:4326", f"EPSG:{epsg}", always_xy=True))
        x, y = tr.transform(lon, lat)
        band = LAT_BANDS[min(19, int((lat + 80) // 8))]
        if small:
            cell = 16
            coarse = rng.uniform(-0.2, 0.9, (-(-size // cell),) * 2).astype("float32")
            ndvi = np.repeat(np.repeat(coarse, cell, axis=0), cell, axis=1)[:size, :size]
        else:
            ndvi = rng.uniform(-0.2, 0.9, (size, size)).astype("float32")
        write_product(folder, f"S2A_{zone:02d}{band}AA_20231203_{k}_L2A", ndvi, "2023-12-03", epsg,
                      (round(x, -2), round(y, -2) + size * pixel), pixel)  # fmt: skip


def make_tiles(folder: Path, n: int, small: bool = False, workers: int = 1) -> float:
    """Write the N tiles (in ``workers`` processes); returns the seconds it took."""
    t0 = time.monotonic()
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    if workers <= 1 or n < 100:
        _write_tiles(tmp, n, range(n), small)
    else:
        with ProcessPoolExecutor(workers) as pool:
            futures = [pool.submit(_write_tiles, tmp, n, range(w, n, workers), small) for w in range(workers)]
            for f in futures:
                f.result()
    tmp.rename(folder)  # complete or absent: an interrupted generation is not reused
    return time.monotonic() - t0


def timed(name: str, fn, into: dict):
    def wrapper(*args, **kwargs):
        t0 = time.monotonic()
        try:
            return fn(*args, **kwargs)
        finally:
            into[name] = round(time.monotonic() - t0, 1)

    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tiles", type=int, nargs="+")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mosaic-bench"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--small", action="store_true", help="549 x 549 tiles at 200 m, ~35 KB each")
    parser.add_argument("--gen-workers", type=int, default=2, help="processes generating the tiles")
    parser.add_argument(
        "--clean",
        action="store_true",
        help="delete the generated tiles and outputs at the end (the disk is shared)",
    )
    a = parser.parse_args()
    times: dict = {}
    pio._finish_mosaic = timed("final_pass_seconds", pio._finish_mosaic, times)
    pio.write_mosaic_png = timed("png_seconds", pio.write_mosaic_png, times)
    load0 = os.getloadavg()
    print(
        f"machine: {os.cpu_count()} CPUs, load average {load0[0]:.1f} {load0[1]:.1f} {load0[2]:.1f}",
        flush=True,
    )
    rows = []
    try:
        for n in a.tiles:
            folder = a.workdir / (f"small{n}" if a.small else f"in{n}")
            if not folder.exists():
                gen = make_tiles(folder, n, a.small, a.gen_workers)
                mb = sum(f.stat().st_size for f in folder.iterdir()) / 1e6
                print(f"generated {n} tiles in {gen:.0f} s ({mb:.0f} MB) in {folder}", flush=True)
            opts = pio.MosaicOptions(resolution=0.01, bbox=(-180, -90, 180, 90), workers=a.workers)
            out = a.workdir / f"out{n}"
            t0 = time.monotonic()
            report, status, stats = pio.run_mosaic(folder, out, opts, a.workdir / f"s{n}")
            wall = time.monotonic() - t0
            acc = stats["accumulate_seconds"]
            keep = ("accumulate_seconds", "overview_reads", "full_resolution_reads", "covered_fraction")
            row = {"tiles": n, "status": status, "wall_seconds": round(wall, 1), **times,
                   **{k: stats[k] for k in keep},
                   "ms_per_scene_wall": round(1000 * wall / n, 1),
                   "ms_per_scene_accumulate": round(1000 * acc / n, 1),
                   "ms_per_scene_outside_accumulate_and_final": round(
                       1000 * (wall - acc - times["final_pass_seconds"] - times["png_seconds"]) / n, 1),
                   "load_after": round(os.getloadavg()[0], 1)}  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(a.workdir / f"s{n}", ignore_errors=True)
    finally:
        if a.clean:  # only what this script writes (the work dir may hold other things)
            for n in a.tiles:
                for name in (f"small{n}" if a.small else f"in{n}", f"out{n}", f"s{n}"):
                    shutil.rmtree(a.workdir / name, ignore_errors=True)
                    shutil.rmtree(a.workdir / f"{name}.partial", ignore_errors=True)
    load1 = os.getloadavg()
    print(f"\nload average {load0[0]:.1f} before, {load1[0]:.1f} after; {a.workers} threads; "
          f"{'549 x 549 at 200 m' if a.small else '1098 x 1098 at 100 m'} tiles\n")  # fmt: skip
    print(
        "| tiles | wall | per scene (wall / N) | accumulate | per scene (accumulate / N) | final pass | PNG |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['tiles']} | {r['wall_seconds']:.1f} s | {r['ms_per_scene_wall']:.1f} ms | "
              f"{r['accumulate_seconds']:.1f} s | {r['ms_per_scene_accumulate']:.1f} ms | "
              f"{r['final_pass_seconds']:.1f} s | {r['png_seconds']:.1f} s |")  # fmt: skip


if __name__ == "__main__":
    main()
