"""Synthetic NDVI products shaped exactly like the worker's outputs (``<id>_ndvi.tif`` COG with overviews, int16 x 10000
with nodata -32768 and scale 0.0001, or float32 with NaN; ``<id>_ndvi.json`` built by the worker's own
:func:`ndvi_worker.report.output_item`), for the composite and mosaic tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def write_product(
    folder: Path,
    item_id: str,
    ndvi: np.ndarray,
    date: str,
    epsg: int = 32631,
    origin: tuple[float, float] = (600000.0, 5800020.0),
    pixel: float = 10.0,
    dtype: str = "int16",
    nodata: float | None = None,
    blocksize: int = 256,
    quicklook: bool = False,
) -> Path:
    """Write ``<item_id>_ndvi.tif`` + ``.json`` (NaN in ``ndvi`` = masked); returns the item path.

    ``nodata`` overrides the encoding's nodata (another producer's convention, e.g. -9999 for int16)."""
    import rasterio
    import rasterio.shutil
    from affine import Affine
    from rasterio.warp import transform_bounds

    from ndvi_worker.composite import footprint_geometry
    from ndvi_worker.ndvi import INT16_NODATA, to_int16
    from ndvi_worker.report import output_item

    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{item_id}_ndvi"
    rows, cols = ndvi.shape
    transform = Affine(pixel, 0.0, origin[0], 0.0, -pixel, origin[1])
    if dtype == "int16":
        data = to_int16(ndvi.astype("float32"))
        fill = INT16_NODATA if nodata is None else nodata
        data[np.isnan(ndvi)] = fill
    else:
        data = ndvi.astype("float32")
        fill = float("nan") if nodata is None else nodata
        data[np.isnan(ndvi)] = fill
    profile = {
        "driver": "GTiff",
        "width": cols,
        "height": rows,
        "count": 1,
        "dtype": dtype,
        "crs": f"EPSG:{epsg}",
        "transform": transform,
        "nodata": fill,
    }
    with rasterio.MemoryFile() as mem, mem.open(**profile) as tmp:
        tmp.write(data, 1)
        if dtype == "int16":
            tmp.scales = (0.0001,)
            tmp.offsets = (0.0,)
        rasterio.shutil.copy(
            tmp,
            str(folder / f"{stem}.tif"),
            driver="COG",
            BLOCKSIZE=str(blocksize),
            COMPRESS="ZSTD",
            OVERVIEW_RESAMPLING="AVERAGE",
        )
    if quicklook:
        from ndvi_worker.io import write_quicklook

        write_quicklook(folder / f"{stem}.tif", folder / f"{stem}.png")
    right, bottom = origin[0] + pixel * cols, origin[1] - pixel * rows
    xs = [origin[0], right, right, origin[0]]
    ys = [origin[1], origin[1], bottom, bottom]
    from rasterio.warp import transform as warp_transform

    lons, lats = warp_transform(f"EPSG:{epsg}", "EPSG:4326", xs, ys)
    geometry = footprint_geometry(list(zip(lons, lats, strict=False)))
    bbox = list(transform_bounds(f"EPSG:{epsg}", "EPSG:4326", origin[0], bottom, right, origin[1]))
    tile = item_id.split("_")[1]
    scene_item = {
        "type": "Feature",
        "id": item_id,
        "geometry": geometry,
        "bbox": bbox,
        "properties": {
            "datetime": f"{date}T10:43:21Z",
            "platform": "sentinel-2a",
            "grid:code": f"MGRS-{tile}",
            "eo:cloud_cover": 5.0,
        },
        "links": [],
    }
    valid = ~np.isnan(ndvi)
    v = ndvi[valid].astype("float64")
    stats = {
        "valid_fraction": float(valid.mean()),
        "mean": float(v.mean()) if v.size else None,
        "std": float(v.std()) if v.size else None,
        "minimum": float(v.min()) if v.size else None,
        "maximum": float(v.max()) if v.size else None,
        "valid_pixels": int(valid.sum()),
        "nodata_fraction": float(1 - valid.mean()),
        "scl_masked_fraction": 0.0,
        "clamped_fraction": 0.0,
    }
    item = output_item(
        scene_item,
        item_id,
        f"{stem}.tif",
        (folder / f"{stem}.tif").stat().st_size,
        f"{stem}.png" if quicklook else None,
        f"../items/{item_id}.json",
        stats,
        [0, 1, 3, 8, 9, 10],
        {"add_dn": 0, "applied_by_worker": False, "reason": "test"},
        dtype,
        "block-repeat",
        (rows, cols),
        tuple(transform)[:6],
        epsg,
    )
    path = folder / f"{stem}.json"
    path.write_text(json.dumps(item, indent=2))
    return path


def read_decoded(path: Path, band: int = 1) -> np.ndarray:
    """A product band as float (NaN where nodata), scaled."""
    import rasterio

    with rasterio.open(path) as ds:
        data = ds.read(band).astype("float64")
        nodata = ds.nodata
        scale = ds.scales[band - 1] or 1.0
    if nodata is not None and not np.isnan(nodata):
        data[data == nodata] = np.nan
    return data * scale
