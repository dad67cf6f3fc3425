"""The naive baseline (docs/domain.md section 9): what most public NDVI notebooks do.

Whole-array rioxarray reads, SCL linearly interpolated onto the 10 m grid with xarray ``interp``, clouds masked by
``isin(8, 9, 10)`` on the interpolated codes, raw-DN NDVI, one scene at a time, a plain float32 GeoTIFF.
Usage: python benchmarks/naive_worker.py ITEM.json OUT.tif
"""

import json
import sys
from pathlib import Path

import rioxarray  # noqa: F401 - registers the .rio accessor
import xarray as xr


def href(item_path: Path, asset: dict) -> str:
    h = asset["href"]
    return h if "://" in h or h.startswith("/") else str((item_path.parent / h).resolve())


def main(item_path: Path, out: Path) -> None:
    item = json.loads(item_path.read_text())
    a = item["assets"]
    red = rioxarray.open_rasterio(href(item_path, a["red"])).squeeze("band", drop=True).astype("float32")
    nir = rioxarray.open_rasterio(href(item_path, a["nir"])).squeeze("band", drop=True).astype("float32")
    scl = rioxarray.open_rasterio(href(item_path, a["scl"])).squeeze("band", drop=True)
    scl10 = scl.interp(x=red.x, y=red.y)  # linear interpolation of class codes: the classic mistake
    ndvi = (nir - red) / (nir + red)
    ndvi = ndvi.where(~scl10.isin([8, 9, 10]))
    ndvi.rio.write_crs(red.rio.crs, inplace=True)
    ndvi.rio.to_raster(out, driver="GTiff", dtype="float32")
    xr.Dataset()  # keep xarray imported explicitly, as the notebooks do


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
