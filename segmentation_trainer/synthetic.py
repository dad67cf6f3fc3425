"""A generator of SpaceNet 6-like data (the real dataset cannot be downloaded here), for tests and demos.

Writes the SN6 layout under ``ROOT/train/AOI_11_Rotterdam/``: 4-band float32 SAR-Intensity GeoTIFFs
(EPSG:32631, 0.5 m pixels, nodata 0), per-tile GeoJSON buildings (lon/lat, as SpaceNet ships them),
``SummaryData/SN6_Train_AOI_11_Rotterdam_Buildings.csv`` (pixel WKT, ``POLYGON EMPTY`` for tiles without
buildings) and ``SummaryData/SAR_orientations.txt``.

The world: ``locations`` separate areas of buildings (rectangles, L shapes, courtyards = polygons with holes,
two-part multipolygons), imaged by ``strips`` acquisition strips whose tile grids are shifted, so tiles of a
location overlap as in SN6. Pixels: multiplicative gamma speckle (4 looks) over a per-band backscatter;
buildings are brighter (double bounce), with a bright layover edge towards the sensor and a shadow away from
it; the sensor is north of the scene for orientation 0 and south for 1. Strips cover their tiles partly:
black (0) nodata borders along a slanted strip edge. A tile with exactly one building and one with none are
always present; ``corrupt`` tiles are written as garbage bytes (to test error reporting).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

AOI = "AOI_11_Rotterdam"
CRS = "EPSG:32631"
PIXEL = 0.5
BASE_BACKSCATTER = np.array([0.08, 0.02, 0.02, 0.07], dtype=np.float32)  # HH HV VH VV (linear)
BUILDING_GAIN = np.array([5.0, 3.0, 3.0, 4.0], dtype=np.float32)


@dataclass
class GeneratedSN6:
    root: Path
    tiles: list[str]
    orientations: dict[str, int]
    single_building_tile: str
    empty_tile: str
    corrupt_tiles: list[str]
    buildings_per_tile: dict[str, int]


def _building(rng: np.random.Generator, cx: float, cy: float):
    from shapely.geometry import MultiPolygon, Polygon, box

    kind = rng.choice(["rect", "rect", "L", "courtyard", "multi"])
    w, h = rng.uniform(8, 22), rng.uniform(8, 22)
    if kind == "rect":
        return box(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
    if kind == "L":
        a = box(cx - w / 2, cy - h / 2, cx + w / 2, cy - h / 2 + h * 0.4)
        b = box(cx - w / 2, cy - h / 2, cx - w / 2 + w * 0.4, cy + h / 2)
        return a.union(b)
    if kind == "courtyard":
        w, h = max(w, 16), max(h, 16)
        outer = [
            (cx - w / 2, cy - h / 2),
            (cx + w / 2, cy - h / 2),
            (cx + w / 2, cy + h / 2),
            (cx - w / 2, cy + h / 2),
        ]
        inner = [
            (cx - w / 5, cy - h / 5),
            (cx + w / 5, cy - h / 5),
            (cx + w / 5, cy + h / 5),
            (cx - w / 5, cy + h / 5),
        ]
        return Polygon(outer, [inner])
    a = box(cx - w / 2, cy - h / 2, cx - 1.5, cy + h / 2)
    b = box(cx + 1.5, cy - h / 2, cx + w / 2, cy + h / 2)
    return MultiPolygon([a, b])


def _world(rng, locations: int, extent_m: float, gap_m: float, density: int):
    """Buildings (UTM metres) per location; location origins along x, separated by ``gap_m``."""
    from shapely.geometry import box

    x0, y0 = 595000.0, 5750000.0
    areas, buildings = [], []
    for k in range(locations):
        left = x0 + k * (extent_m + gap_m)
        area = box(left, y0, left + extent_m, y0 + extent_m)
        areas.append(area)
        placed = []
        for _ in range(density * 4):
            if len(placed) >= density:
                break
            cx = rng.uniform(left + 10, left + extent_m - 10)
            cy = rng.uniform(y0 + 10, y0 + extent_m - 10)
            b = _building(rng, cx, cy)
            if all(b.distance(p) > 3 for p in placed):
                placed.append(b)
        buildings.extend(placed)
    return areas, buildings


def _render(rng, tile_box, buildings, size: int, orientation: int, border: tuple | None) -> np.ndarray:
    from rasterio import features
    from rasterio.transform import from_origin
    from shapely.affinity import translate

    left, bottom, right, top = tile_box.bounds
    transform = from_origin(left, top, PIXEL, PIXEL)
    inside = [b for b in buildings if b.intersects(tile_box)]
    # the sensor looks from the north (orientation 0) or the south (1): layover towards it, shadow away
    toward = 1.0 if orientation == 0 else -1.0  # +y is north in metres
    foot = np.zeros((size, size), np.uint8)
    layover = np.zeros((size, size), np.uint8)
    shadow = np.zeros((size, size), np.uint8)
    if inside:
        features.rasterize([(b, 1) for b in inside], out=foot, transform=transform)
        features.rasterize(
            [(translate(b, 0, toward * 2.0), 1) for b in inside], out=layover, transform=transform
        )
        features.rasterize(
            [(translate(b, 0, -toward * 4.0), 1) for b in inside], out=shadow, transform=transform
        )
    scene = np.ones((size, size), np.float32)
    scene[(shadow == 1) & (foot == 0)] = 0.25
    scene[foot == 1] = 1.0
    gain = np.ones((4, size, size), np.float32)
    gain[:, foot == 1] = BUILDING_GAIN[:, None]
    gain[:, (layover == 1) & (foot == 0)] = (BUILDING_GAIN * 1.6)[:, None]
    texture = np.exp(rng.normal(0, 0.3, (1, size, size))).astype(np.float32)  # fields, roads, water
    speckle = rng.gamma(4.0, 1.0 / 4.0, (4, size, size)).astype(np.float32)
    image = BASE_BACKSCATTER[:, None, None] * scene * gain * texture * speckle
    if border is not None:
        a, b, c = border
        yy, xx = np.mgrid[0:size, 0:size]
        image[:, a * xx + b * yy > c] = 0.0
    return image.astype(np.float32)


def generate_sn6(
    root: str | Path,
    locations: int = 3,
    strips: int = 4,
    tiles_per_side: int = 2,
    tile_size: int = 128,
    buildings_per_location: int = 40,
    corrupt: int = 0,
    seed: int = 0,
) -> GeneratedSN6:
    """Write an SN6-like tree under ``root``; ``tile_size`` pixels of 0.5 m per tile side."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.warp import transform_geom
    from shapely.geometry import box, mapping

    rng = np.random.default_rng(seed)
    root = Path(root)
    base = root / "train" / AOI
    sar_dir = base / "SAR-Intensity"
    gj_dir = base / "geojson_buildings"
    summary = base / "SummaryData"
    for d in (sar_dir, gj_dir, summary):
        d.mkdir(parents=True, exist_ok=True)
    tile_m = tile_size * PIXEL
    extent = tile_m * tiles_per_side
    areas, buildings = _world(rng, locations, extent, gap_m=tile_m * 2, density=buildings_per_location)
    # an isolated single building, and an empty area, each imaged by one tile of the first strip
    far = areas[-1].bounds[2] + tile_m * 3
    single_box = box(far, 5750000.0, far + tile_m, 5750000.0 + tile_m)
    single = box(
        far + tile_m / 2 - 8, 5750000.0 + tile_m / 2 - 6, far + tile_m / 2 + 8, 5750000.0 + tile_m / 2 + 6
    )
    empty_box = box(far + tile_m * 3, 5750000.0, far + tile_m * 4, 5750000.0 + tile_m)
    buildings.append(single)

    orientations: dict[str, int] = {}
    rows, tiles, counts = [], [], {}
    tile_n = 1000
    start = 20190804111224
    special: dict[str, str] = {}
    for s in range(strips):
        strip = f"{start + s * 10000}_{start + s * 10000 + 229}"
        orientations[strip] = s % 2
        shift = rng.uniform(0, tile_m * 0.5, 2)
        boxes = []
        for area in areas:
            left, bottom, _, _ = area.bounds
            for i in range(tiles_per_side):
                for j in range(tiles_per_side):
                    x = left + i * tile_m + shift[0] - tile_m * 0.25
                    y = bottom + j * tile_m + shift[1] - tile_m * 0.25
                    boxes.append(box(x, y, x + tile_m, y + tile_m))
        if s == 0:
            boxes += [single_box, empty_box]
        for k, tb in enumerate(boxes):
            tile_n += 1
            tid = f"{strip}_tile_{tile_n}"
            if s == 0 and k == len(boxes) - 2:
                special["single"] = tid
            if s == 0 and k == len(boxes) - 1:
                special["empty"] = tid
            border = None
            if rng.random() < 0.35:
                border = (1.0, rng.uniform(-0.6, 0.6), rng.uniform(0.6, 0.95) * tile_size)
            image = _render(rng, tb, buildings, tile_size, orientations[strip], border)
            left, _, _, top = tb.bounds
            transform = from_origin(left, top, PIXEL, PIXEL)
            path = sar_dir / f"SN6_Train_{AOI}_SAR-Intensity_{tid}.tif"
            with rasterio.open(
                path, "w", driver="GTiff", height=tile_size, width=tile_size, count=4, dtype="float32",
                crs=CRS, transform=transform, nodata=0.0,
            ) as dst:  # fmt: skip
                dst.write(image)
            inv = ~transform
            inside = [b.intersection(tb) for b in buildings if b.intersects(tb)]
            inside = [g for g in inside if g.area > 0.5]
            features = [
                {
                    "type": "Feature",
                    "properties": {"TileBuildingId": n},
                    "geometry": transform_geom(CRS, "EPSG:4326", mapping(g)),
                }
                for n, g in enumerate(inside)
            ]
            (gj_dir / f"SN6_Train_{AOI}_Buildings_{tid}.geojson").write_text(
                json.dumps({"type": "FeatureCollection", "features": features})
            )
            from shapely.affinity import affine_transform

            pix = [affine_transform(g, [inv.a, inv.b, inv.d, inv.e, inv.xoff, inv.yoff]) for g in inside]
            if not pix:
                rows.append((tid, 0, "POLYGON EMPTY"))
            for n, g in enumerate(pix):
                rows.append((tid, n, g.wkt))
            counts[tid] = len(pix)
            tiles.append(tid)
    corrupt_ids = []
    for tid in tiles[1 : 1 + corrupt]:
        (sar_dir / f"SN6_Train_{AOI}_SAR-Intensity_{tid}.tif").write_bytes(b"not a tiff" * 10)
        corrupt_ids.append(tid)
    with (summary / f"SN6_Train_{AOI}_Buildings.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ImageId", "TileBuildingId", "PolygonWKT_Pix", "Mean_Building_Height"])
        for tid, n, wkt in rows:
            w.writerow([tid, n, wkt, "9.5"])
    (summary / "SAR_orientations.txt").write_text("".join(f"{k} {v}\n" for k, v in orientations.items()))
    return GeneratedSN6(root, tiles, orientations, special["single"], special["empty"], corrupt_ids, counts)


def generate_rectangles(
    root: str | Path,
    n_train: int = 200,
    n_val: int = 40,
    size: int = 128,
    seed: int = 0,
    max_buildings: int = 6,
) -> Path:
    """Easy data in the built-in algorithm's layout: bright building-like rectangles on speckle.

    ``root/{train,validation}/*.png`` (8-bit RGB) and ``root/{train,validation}_annotation/*.png`` (0 background,
    1 building). Every tile holds 0 to ``max_buildings`` axis-aligned rectangles of 6 to size/4 pixels a side,
    brighter than the gamma-speckled background (the convergence benchmark and the batch-norm tests use it).
    """
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("validation", n_val)):
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / f"{split}_annotation").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            mask = np.zeros((size, size), np.uint8)
            for _ in range(int(rng.integers(0, max_buildings + 1))):
                h, w = (int(v) for v in rng.integers(6, max(7, size // 4), size=2))
                y, x = int(rng.integers(0, size - h)), int(rng.integers(0, size - w))
                mask[y : y + h, x : x + w] = 1
            level = np.where(mask[..., None] == 1, 170.0, 60.0) * np.array([1.0, 0.9, 0.8])
            speckle = rng.gamma(4.0, 1 / 4.0, size=(size, size, 1))
            image = np.clip(level * speckle, 0, 255).astype(np.uint8)
            Image.fromarray(image).save(root / split / f"tile_{i:04d}.png")
            Image.fromarray(mask).save(root / f"{split}_annotation" / f"tile_{i:04d}.png")
    return root
