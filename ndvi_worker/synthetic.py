"""Synthetic Sentinel-2 L2A scenes laid out like the public ``sentinel-cogs`` files, for the demo, tests and
benchmarks: B04 / B08 uint16 at 10 m and SCL uint8 at 20 m with the same upper-left corner, 1024 x 1024 DEFLATE
blocks, nodata 0, overviews, and a STAC item beside them with relative hrefs.

The content is meant to exercise every rule: fields of vegetation and bare soil, water (negative NDVI, and DN-1
clamped pixels in offset-applied scenes), clouds (SCL 8, 9), thin cirrus (10), cloud shadows (3), snow (11) and a
nodata wedge (DN 0, SCL 0). A full-size scene is ``size=10980``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Surface reflectance x 10000 (red, nir) per land cover; SCL class of each.
COVER = {
    "vegetation": ((450, 3600), 4),
    "soil": ((1900, 2600), 5),
    "water": ((260, 140), 6),
    "urban": ((1400, 1700), 5),
}
CLOUD_RED_NIR = (6800, 7100)


@dataclass(frozen=True)
class SyntheticScene:
    item_path: Path
    item_id: str
    red: Path
    nir: Path
    scl: Path


def _cover_map(rng: np.random.Generator, shape: tuple[int, int], cell: int) -> np.ndarray:
    """Land-cover codes 0..3 in rectangular 'fields' of about ``cell`` pixels."""
    gy, gx = -(-shape[0] // cell), -(-shape[1] // cell)
    coarse = rng.choice(4, size=(gy, gx), p=[0.5, 0.25, 0.12, 0.13]).astype(np.uint8)
    return np.repeat(np.repeat(coarse, cell, axis=0), cell, axis=1)[: shape[0], : shape[1]]


def _blobs(rng: np.random.Generator, shape: tuple[int, int], count: int, radius: float) -> np.ndarray:
    """A boolean mask of ``count`` random ellipses of about ``radius`` pixels."""
    mask = np.zeros(shape, dtype=bool)
    for _ in range(count):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        ry, rx = radius * rng.uniform(0.5, 1.5), radius * rng.uniform(0.5, 1.5)
        y0, y1 = max(0, int(cy - ry)), min(shape[0], int(cy + ry) + 1)
        x0, x1 = max(0, int(cx - rx)), min(shape[1], int(cx + rx) + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.ogrid[y0:y1, x0:x1]
        mask[y0:y1, x0:x1] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    return mask


def scene_arrays(size: int = 1098, seed: int = 0, offset_applied: bool = True, baseline: float = 5.09):
    """(red, nir, scl) arrays: red/nir uint16 (size x size), scl uint8 (size/2 x size/2)."""
    if size % 2:
        raise ValueError("size must be even (SCL pixels cover 2 x 2 10 m pixels)")
    rng = np.random.default_rng(seed)
    half = (size // 2, size // 2)
    cover = _cover_map(rng, half, max(4, size // 60))
    codes = list(COVER)
    red20 = np.zeros(half, dtype=np.float32)
    nir20 = np.zeros(half, dtype=np.float32)
    scl = np.zeros(half, dtype=np.uint8)
    for k, name in enumerate(codes):
        (r, n), cls = COVER[name]
        sel = cover == k
        red20[sel], nir20[sel], scl[sel] = r, n, cls

    radius = max(3.0, size / 40)
    cloud = _blobs(rng, half, 6, radius)
    thick = cloud & _blobs(rng, half, 10, radius * 0.6)
    cirrus = _blobs(rng, half, 3, radius * 0.8) & ~cloud
    shift = max(2, int(radius * 0.8))
    shadow = np.zeros(half, dtype=bool)
    shadow[shift:, shift:] = cloud[:-shift, :-shift]
    shadow &= ~cloud
    snow = _blobs(rng, half, 2, radius * 0.5) & ~cloud & ~shadow

    red20[shadow] *= 0.35
    nir20[shadow] *= 0.35
    scl[shadow] = 3
    red20[cirrus] += 900
    nir20[cirrus] += 900
    scl[cirrus] = 10
    red20[cloud], nir20[cloud] = CLOUD_RED_NIR
    scl[cloud] = 8
    scl[thick] = 9
    red20[snow], nir20[snow] = 8500, 8200
    scl[snow] = 11

    # nodata wedge in the lower-left corner (outside the swath)
    yy, xx = np.ogrid[: half[0], : half[1]]
    wedge = xx < (yy - half[0] * 0.55) * 0.8
    scl[wedge] = 0

    def to10(a20: np.ndarray) -> np.ndarray:
        return np.repeat(np.repeat(a20, 2, axis=0), 2, axis=1)

    noise = rng.normal(1.0, 0.06, size=(size, size)).astype(np.float32)
    red = to10(red20) * noise
    noise = rng.normal(1.0, 0.06, size=(size, size)).astype(np.float32)
    nir = to10(nir20) * noise
    # very dark water: reflectance at or below zero (what offset-applied COGs clamp to DN 1)
    dark = (to10(cover) == codes.index("water")) & (rng.random((size, size)) < 0.08)
    red[dark] = -rng.uniform(0, 200, size=int(dark.sum()))

    add = 1000 if (baseline >= 4.0 and not offset_applied) else 0
    out = []
    for band in (red, nir):
        dn = np.rint(band + add)
        dn = np.clip(dn, 1, 65535)  # the producer's clamp: dark pixels become DN 1, never 0 (0 is nodata)
        dn = dn.astype(np.uint16)
        dn[to10(wedge)] = 0
        out.append(dn)
    return out[0], out[1], scl


def _write_cog(path: Path, data: np.ndarray, transform, epsg: int, block: int, resampling: str) -> None:
    import rasterio
    import rasterio.shutil
    from rasterio.crs import CRS

    profile = {
        "driver": "GTiff",
        "width": data.shape[1],
        "height": data.shape[0],
        "count": 1,
        "dtype": data.dtype.name,
        "crs": CRS.from_epsg(epsg),
        "transform": transform,
        "nodata": 0,
    }
    with rasterio.MemoryFile() as mem, mem.open(**profile) as tmp:
        tmp.write(data, 1)
        rasterio.shutil.copy(
            tmp,
            str(path),
            driver="COG",
            BLOCKSIZE=str(block),
            COMPRESS="DEFLATE",
            PREDICTOR="YES",
            OVERVIEW_RESAMPLING=resampling,
            OVERVIEW_COUNT="4",
            NUM_THREADS="ALL_CPUS",
        )


def write_scene(
    dst_dir: Path,
    item_id: str = "S2B_31UFU_20231204_0_L2A",
    size: int = 1098,
    seed: int = 0,
    offset_applied: bool = True,
    baseline: str = "05.09",
    schema: str = "v1",
    epsg: int = 32631,
    origin: tuple[float, float] = (600000.0, 5800020.0),
    block: int = 1024,
) -> SyntheticScene:
    """Write ``B04.tif``, ``B08.tif``, ``SCL.tif`` and ``<item_id>.json`` into ``dst_dir``."""
    from affine import Affine
    from rasterio.warp import transform_bounds

    dst_dir.mkdir(parents=True, exist_ok=True)
    red, nir, scl = scene_arrays(size, seed, offset_applied, float(baseline))
    t10 = Affine(10.0, 0.0, origin[0], 0.0, -10.0, origin[1])
    t20 = Affine(20.0, 0.0, origin[0], 0.0, -20.0, origin[1])
    block = min(block, 1024) if size >= 1024 else 256
    _write_cog(dst_dir / "B04.tif", red, t10, epsg, block, "AVERAGE")
    _write_cog(dst_dir / "B08.tif", nir, t10, epsg, block, "AVERAGE")
    _write_cog(dst_dir / "SCL.tif", scl, t20, epsg, max(128, block // 2), "NEAREST")

    right, bottom = origin[0] + 10.0 * size, origin[1] - 10.0 * size
    w, s, e, n = transform_bounds(f"EPSG:{epsg}", "EPSG:4326", origin[0], bottom, right, origin[1])
    tile = item_id.split("_")[1] if item_id.count("_") >= 2 else "31UFU"
    date = item_id.split("_")[2] if item_id.count("_") >= 3 else "20231204"
    datetime = f"{date[:4]}-{date[4:6]}-{date[6:8]}T10:43:21.024000Z"
    raster_band = {
        "nodata": 0,
        "data_type": "uint16",
        "scale": 0.0001,
        "offset": -0.1 if offset_applied else 0,
    }
    if schema == "v1":
        keys = {"red": "red", "nir": "nir", "scl": "scl"}
        props = {
            "s2:processing_baseline": baseline,
            "earthsearch:boa_offset_applied": offset_applied,
            "grid:code": f"MGRS-{tile}",
            "mgrs:utm_zone": int(tile[:2]),
            "mgrs:latitude_band": tile[2],
            "mgrs:grid_square": tile[3:],
        }
        collection = "sentinel-2-l2a"
    elif schema == "v0":
        keys = {"red": "B04", "nir": "B08", "scl": "SCL"}
        props = {
            "sentinel:processing_baseline": baseline,
            "sentinel:boa_offset_applied": offset_applied,
            "sentinel:utm_zone": int(tile[:2]),
            "sentinel:latitude_band": tile[2],
            "sentinel:grid_square": tile[3:],
        }
        collection = "sentinel-s2-l2a-cogs"
    else:
        raise ValueError("schema must be v1 or v0")
    props.update({"datetime": datetime, "platform": "sentinel-2b", "eo:cloud_cover": 12.5, "proj:epsg": epsg})

    def asset(name: str, title: str, shape: int, transform, dtype: str) -> dict:
        a = {
            "href": f"./{name}",
            "type": "image/tiff; application=geotiff; profile=cloud-optimized",
            "title": title,
            "proj:shape": [shape, shape],
            "proj:transform": list(transform)[:6],
            "roles": ["data"],
        }
        if schema == "v1":
            a["raster:bands"] = (
                [{**raster_band, "data_type": dtype}]
                if dtype == "uint16"
                else [{"nodata": 0, "data_type": "uint8"}]
            )
        return a

    item = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": item_id,
        "collection": collection,
        "bbox": [w, s, e, n],
        "geometry": {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]},
        "properties": props,
        "assets": {
            keys["red"]: asset("B04.tif", "Red (band 4) - 10m", size, t10, "uint16"),
            keys["nir"]: asset("B08.tif", "NIR 1 (band 8) - 10m", size, t10, "uint16"),
            keys["scl"]: asset("SCL.tif", "Scene classification map (SCL)", size // 2, t20, "uint8"),
        },
        "links": [],
    }
    item_path = dst_dir / f"{item_id}.json"
    item_path.write_text(json.dumps(item, indent=2))
    return SyntheticScene(item_path, item_id, dst_dir / "B04.tif", dst_dir / "B08.tif", dst_dir / "SCL.tif")


def write_scenes(dst_dir: Path, count: int = 3, size: int = 1098, seed: int = 0) -> list[SyntheticScene]:
    """``count`` scenes in ``dst_dir/<item id>/``, alternating offset-applied v1 and raw-DN v0 items."""
    scenes = []
    tiles = ["31UFU", "31UGU", "32ULC", "32UMC", "31UFT", "31UGT", "32ULB", "32UMB"]
    for k in range(count):
        tile = tiles[k % len(tiles)] if k < len(tiles) else f"3{k % 10}UFU"
        item_id = f"S2B_{tile}_20231204_{k // len(tiles)}_L2A"
        v1 = k % 2 == 0
        scenes.append(
            write_scene(
                dst_dir / item_id,
                item_id=item_id,
                size=size,
                seed=seed + k,
                offset_applied=v1,
                baseline="05.09",
                schema="v1" if v1 else "v0",
                origin=(600000.0 + 10.0 * size * (k % 2), 5800020.0 - 10.0 * size * (k // 2)),
            )
        )
    return scenes
