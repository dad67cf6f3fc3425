"""Cost scaling of `ndvi-worker mosaic` (docs/products.md, "Cost"): N synthetic tiles spread over the globe (1098 x
1098 noisy int16 COGs at 100 m with overviews, as the product tests write them; the overview read at 0.01 degrees is
~275 px a side, like the 320 m level of a real 10 m tile), mosaicked on the global 0.01-degree grid (36000 x 18000).
Prints per N: wall time, the accumulation (read + reproject every input) and the final pass over the grid.

    .venv/bin/python benchmarks/bench_mosaic.py 50 200 [--workdir /tmp/mosaic-bench]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from pyproj import Transformer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))

from earthmon_testing.products import write_product  # noqa: E402
from ndvi_worker import products_io as pio  # noqa: E402

LAT_BANDS = "CDEFGHJKLMNPQRSTUVWX"


def make_tiles(folder: Path, n: int) -> None:
    rng = np.random.default_rng(n)
    for k in range(n):
        lon, lat = rng.uniform(-177, 177), rng.uniform(-55, 70)
        zone = int((lon + 180) // 6) + 1
        epsg = (32600 if lat >= 0 else 32700) + zone
        x, y = Transformer.from_crs("EPSG:4326", f"EPSG:{epsg}", always_xy=True).transform(lon, lat)
        band = LAT_BANDS[min(19, int((lat + 80) // 8))]
        ndvi = rng.uniform(-0.2, 0.9, (1098, 1098)).astype("float32")
        write_product(folder, f"S2A_{zone:02d}{band}AA_20231203_{k}_L2A", ndvi, "2023-12-03", epsg,
                      (round(x, -2), round(y, -2) + 109800), 100.0)  # fmt: skip


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
    a = parser.parse_args()
    times: dict = {}
    pio._finish_mosaic = timed("final_pass_seconds", pio._finish_mosaic, times)
    pio.write_mosaic_png = timed("png_seconds", pio.write_mosaic_png, times)
    for n in a.tiles:
        folder = a.workdir / f"in{n}"
        if not folder.exists():
            make_tiles(folder, n)
        opts = pio.MosaicOptions(resolution=0.01, bbox=(-180, -90, 180, 90), workers=a.workers)
        t0 = time.monotonic()
        report, status, stats = pio.run_mosaic(folder, a.workdir / f"out{n}", opts, a.workdir / f"s{n}")
        wall = round(time.monotonic() - t0, 1)
        keep = ("accumulate_seconds", "overview_reads", "full_resolution_reads", "covered_fraction")
        print(json.dumps({"tiles": n, "status": status, "wall_seconds": wall, **times,
                          **{k: stats[k] for k in keep}}))  # fmt: skip


if __name__ == "__main__":
    main()
