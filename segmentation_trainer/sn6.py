"""SpaceNet 6 (Rotterdam SAR) -> the built-in algorithm's channel layout.

Pure functions (ids, polygons, masks, orientation, the location split, the 8-bit rendering) plus
``prepare_sn6``, the orchestration that reads the SN6 tree and writes::

    DST/train/               <image id>.tif (float32, all 4 polarisations HH HV VH VV, nodata 0) or .jpg
    DST/train_annotation/    <image id>.png  (0 background, 1 building, 255 nodata / ignore)
    DST/validation/, DST/validation_annotation/
    DST/label_map/           train_label_map.json, validation_label_map.json ({"scale": "1"}), class_names.json
    DST/buildings.json       building polygons per image (pixel coordinates, after rotation): ground truth
                             for the SpaceNet metric of ``evaluate``
    DST/prepare_report.json  counts, the split (axis, cut, excluded tiles), failures, JPG stretch

What it fixes in the original workshop's preparation: all polarisations are kept as float (GeoTIFF); JPG
output is log-scaled and stretched between documented percentiles instead of clipped; tiles with one building,
multipolygons and polygons with holes are rasterised correctly; the split is by location; unreadable tiles are
reported, never silently dropped.

The split: tiles of different strips overlap (about 20 per location), so a random split leaks. Tiles are cut
along x or y at the tile edge that best gives ``val_fraction`` of tiles on the high side (east / north);
tiles straddling the cut that overlap a validation tile are excluded from both sides and listed in the report.
"""

from __future__ import annotations

import csv
import json
import logging
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

BAND_NAMES = ("HH", "HV", "VH", "VV")
CLASS_NAMES = ("background", "building")
IGNORE = 255
JPG_PERCENTILES = (0.5, 99.5)  # per channel, of the dB values of valid pixels of the tiles prepared
_ID = re.compile(r"(\d{14}_\d{14})_tile_(\d+)")


class PrepareError(ValueError):
    pass


# ----------------------------------------------------------------------------------------------- ids
def image_id(name: str) -> str | None:
    """``<start>_<end>_tile_<N>`` from an SN6 file name (or an ImageId), None if absent."""
    m = _ID.search(name)
    return f"{m.group(1)}_tile_{m.group(2)}" if m else None


def strip_of(image_id_: str) -> str:
    return image_id_.split("_tile_")[0]


def parse_orientations(text: str) -> dict[str, int]:
    """``SAR_orientations.txt``: ``<start>_<end> 0|1`` per line (1 = imaged from the south)."""
    out = {}
    for n, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in ("0", "1"):
            raise PrepareError(f"SAR_orientations.txt line {n} is not '<start>_<end> 0|1': {line!r}")
        out[parts[0]] = int(parts[1])
    return out


# ----------------------------------------------------------------------------------------------- polygons
def parse_wkt(wkt: str):
    """A shapely geometry from WKT (z coordinates dropped); None for an empty geometry."""
    from shapely import force_2d
    from shapely import wkt as shapely_wkt

    geom = shapely_wkt.loads(wkt)
    if geom.is_empty:
        return None
    return force_2d(geom)


def read_summary_csv(path: Path) -> dict[str, list]:
    """ImageId -> building geometries (pixel coordinates) from SN6's summary CSV; tiles listed with
    ``POLYGON EMPTY`` map to an empty list (a tile without buildings, not a missing one)."""
    out: dict[str, list] = {}
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        need = {"ImageId", "PolygonWKT_Pix"}
        if not need <= set(reader.fieldnames or ()):
            raise PrepareError(f"{path.name} lacks columns {sorted(need - set(reader.fieldnames or ()))}")
        for row in reader:
            geoms = out.setdefault((row["ImageId"] or "").strip(), [])
            try:
                geom = parse_wkt(row["PolygonWKT_Pix"] or "")
            except Exception as exc:  # shapely raises its own types for bad WKT
                raise PrepareError(
                    f"{path.name} line {reader.line_num}: PolygonWKT_Pix is not WKT ({' '.join(str(exc).split())})"
                ) from None
            if geom is not None:
                geoms.append(geom)
    return out


def geojson_pixel_polygons(
    features: Sequence[Mapping], transform, raster_crs, geojson_crs: str | None
) -> list:
    """Building geometries of a tile's GeoJSON in pixel coordinates of the tile.

    Coordinates are taken as lon/lat (EPSG:4326) when the file says so or when they fit lon/lat ranges,
    else as the raster's CRS.
    """
    from rasterio.warp import transform_geom
    from shapely.affinity import affine_transform
    from shapely.geometry import shape

    inv = ~transform
    matrix = [inv.a, inv.b, inv.d, inv.e, inv.xoff, inv.yoff]
    out = []
    for feat in features:
        geom = feat.get("geometry")
        if not geom:
            continue
        g = shape(geom)
        if g.is_empty:
            continue
        minx, miny, maxx, maxy = g.bounds
        lonlat = geojson_crs is not None and ("4326" in geojson_crs or "CRS84" in geojson_crs)
        if geojson_crs is None:
            lonlat = -180 <= minx <= maxx <= 180 and -90 <= miny <= maxy <= 90
        if lonlat and raster_crs is not None:
            geom = transform_geom("EPSG:4326", raster_crs, geom)
            g = shape(geom)
        out.append(affine_transform(g, matrix))
    return out


def rasterise(geoms: Sequence, height: int, width: int) -> np.ndarray:
    """(H, W) uint8 mask, 1 inside any building (holes stay 0), from pixel-coordinate geometries."""
    from rasterio import features
    from rasterio.transform import Affine

    mask = np.zeros((height, width), dtype=np.uint8)
    shapes = [(g, 1) for g in geoms if g is not None and not g.is_empty]
    if shapes:
        features.rasterize(shapes, out=mask, transform=Affine.identity(), fill=0, all_touched=False)
    return mask


def rotate_geoms(geoms: Sequence, height: int, width: int) -> list:
    """Rotate pixel-coordinate geometries by 180 degrees within a width x height image."""
    from shapely.affinity import affine_transform

    return [affine_transform(g, [-1, 0, 0, -1, width, height]) for g in geoms]


def rotated_transform(transform, height: int, width: int):
    """The geotransform of an image rotated by 180 degrees (pixel (0,0) is the old bottom-right)."""
    from rasterio.transform import Affine

    return transform @ Affine.translation(width, height) @ Affine.scale(-1, -1)


def valid_pixels(image: np.ndarray) -> np.ndarray:
    """(H, W) True where the SAR tile has data (SN6 nodata is 0 in every band)."""
    return np.isfinite(image).all(axis=0) & (image != 0).any(axis=0)


def make_mask(geoms: Sequence, valid: np.ndarray) -> np.ndarray:
    mask = rasterise(geoms, *valid.shape)
    mask[~valid] = IGNORE
    return mask


# ----------------------------------------------------------------------------------------------- split
@dataclass
class Split:
    train: list[str]
    validation: list[str]
    excluded: list[str] = field(default_factory=list)
    axis: str | None = None
    cut: float | None = None

    def as_dict(self) -> dict:
        return {
            "train": len(self.train),
            "validation": len(self.validation),
            "excluded_overlapping_both_sides": sorted(self.excluded),
            "axis": self.axis,
            "cut": self.cut,
        }


def _overlaps(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def split_by_location(
    footprints: Mapping[str, tuple[float, float, float, float]], val_fraction: float
) -> Split:
    """Deterministic spatial split: no validation tile overlaps a training tile (positive area)."""
    ids = sorted(footprints)
    if not ids:
        return Split([], [])
    if val_fraction <= 0:
        return Split(ids, [])
    if val_fraction >= 1:
        return Split([], ids)
    boxes = np.array([footprints[i] for i in ids], dtype=np.float64)
    n = len(ids)
    best = None
    for axis, lo_col, hi_col in (("x", 0, 2), ("y", 1, 3)):
        lows = np.sort(boxes[:, lo_col])
        highs = np.sort(boxes[:, hi_col])
        for cut in np.unique(np.concatenate([lows, highs])):
            n_val = n - np.searchsorted(lows, cut, side="left")  # min >= cut
            n_train = np.searchsorted(highs, cut, side="right")  # max <= cut
            if n_val == 0 or n_train == 0:
                continue
            frac = n_val / (n_val + n_train)
            score = abs(frac - val_fraction) + 2.0 * (n - n_val - n_train) / n  # losing tiles costs double
            key = (score, axis, float(cut))
            if best is None or key < best[0]:
                best = (key, axis, float(cut), lo_col, hi_col)
    if best is None:
        raise PrepareError(
            "cannot split by location: every cut leaves one side empty (one location only?); "
            "use --val-fraction 0 and a separate validation area"
        )
    _, axis, cut, lo_col, hi_col = best
    val = [i for i, b in zip(ids, boxes, strict=True) if b[lo_col] >= cut]
    train = [i for i, b in zip(ids, boxes, strict=True) if b[hi_col] <= cut]
    val_boxes = [footprints[i] for i in val]
    excluded = []
    for i, b in zip(ids, boxes, strict=True):
        if b[lo_col] < cut < b[hi_col]:
            if any(_overlaps(tuple(b), v) for v in val_boxes):
                excluded.append(i)
            else:
                train.append(i)
    return Split(sorted(train), sorted(val), excluded, axis, cut)


# ----------------------------------------------------------------------------------------------- 8-bit rendering
def to_display_channels(image: np.ndarray) -> np.ndarray:
    """4 polarisations (HH, HV, VH, VV) -> 3 channels (HH, mean of HV and VH, VV), float32 dB (NaN = nodata)."""
    valid = valid_pixels(image)
    three = np.stack([image[0], (image[1] + image[2]) / 2.0, image[3]]).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        db = 10.0 * np.log10(np.where(three > 0, three, np.nan))
    db[:, ~valid] = np.nan
    return db


def stretch_to_uint8(db: np.ndarray, low: Sequence[float], high: Sequence[float]) -> np.ndarray:
    """dB (3, H, W) -> uint8 (H, W, 3): linear from the low to the high percentile onto 1..255; nodata 0."""
    lo = np.asarray(low, np.float32)[:, None, None]
    hi = np.asarray(high, np.float32)[:, None, None]
    scaled = 1.0 + 254.0 * (db - lo) / np.maximum(hi - lo, 1e-6)
    out = np.clip(np.nan_to_num(scaled, nan=0.0), 0, 255)
    out[np.isnan(db)] = 0
    out[~np.isnan(db) & (out < 1)] = 1
    return np.moveaxis(np.round(out).astype(np.uint8), 0, -1)


def percentiles(samples: Iterable[np.ndarray], q=JPG_PERCENTILES) -> tuple[list[float], list[float]]:
    vals = [s.reshape(3, -1) for s in samples]
    stacked = np.concatenate(vals, axis=1)
    lows, highs = [], []
    for ch in stacked:
        ch = ch[np.isfinite(ch)]
        if ch.size == 0:
            lows.append(0.0)
            highs.append(1.0)
            continue
        lo, hi = np.percentile(ch, q)
        lows.append(float(lo))
        highs.append(float(hi))
    return lows, highs


# ----------------------------------------------------------------------------------------------- orchestration
@dataclass
class Tile:
    id: str
    path: Path
    geoms: list | None = None  # None = no annotation found


def find_tiles(src: Path) -> list[Tile]:
    tiles = {}
    for p in sorted(src.rglob("*.tif")):
        if "SAR-Intensity" not in p.as_posix():
            continue
        tid = image_id(p.name)
        if tid:
            tiles.setdefault(tid, Tile(tid, p))
    return list(tiles.values())


def _find_one(src: Path, pattern: str) -> Path | None:
    hits = sorted(src.rglob(pattern))
    return hits[0] if hits else None


@dataclass
class PrepareOptions:
    fmt: str = "geotiff"
    val_fraction: float = 0.2
    orient: bool = True
    progress: bool = True


def prepare_sn6(src: Path, dst: Path, options: PrepareOptions | None = None) -> dict:
    """Convert an SN6 tree into the channel layout; returns (and writes) the report."""
    import rasterio

    opts = options or PrepareOptions()
    if opts.fmt not in ("geotiff", "jpg"):
        raise PrepareError(f"format must be geotiff or jpg, not {opts.fmt!r}")
    if not 0 <= opts.val_fraction < 1:
        raise PrepareError("val-fraction must be in [0, 1)")
    src, dst = Path(src), Path(dst)
    tiles = find_tiles(src)
    if not tiles:
        raise PrepareError(f"no SAR-Intensity tiles (*SAR-Intensity*tile_<N>.tif) under {src}")
    csv_path = _find_one(src, "*_Buildings.csv")
    orient_path = _find_one(src, "SAR_orientations.txt")
    try:
        by_csv = read_summary_csv(csv_path) if csv_path else {}
        orientations = parse_orientations(orient_path.read_text()) if orient_path else {}
    except PrepareError:
        raise
    except (
        OSError,
        UnicodeDecodeError,
        ValueError,
        csv.Error,
    ) as exc:  # shapely's WKT errors are ValueErrors
        name = type(exc).__name__
        raise PrepareError(
            f"cannot read the annotations under {src}: {name}: {' '.join(str(exc).split())}"
        ) from None
    if opts.orient and not orient_path:
        log.warning("no SAR_orientations.txt under %s: tiles are not rotated", src)
    geojsons = {image_id(p.name): p for p in src.rglob("*.geojson") if image_id(p.name)}

    report: dict = {
        "source": str(src),
        "format": opts.fmt,
        "tiles_found": len(tiles),
        "annotations": "summary csv" if csv_path else "geojson",
        "failed": {},
        "missing_annotation": [],
        "rotated": 0,
        "buildings": 0,
        "tiles_with_one_building": 0,
    }
    # pass 1: read headers and annotations, footprints for the split
    footprints: dict[str, tuple] = {}
    meta: dict[str, dict] = {}
    for tile in tiles:
        try:
            with rasterio.open(tile.path) as ds:
                if ds.count != 4:
                    raise PrepareError(f"expected 4 bands (HH, HV, VH, VV), found {ds.count}")
                b = ds.bounds
                footprints[tile.id] = (b.left, b.bottom, b.right, b.top)
                meta[tile.id] = {
                    "transform": ds.transform,
                    "crs": ds.crs,
                    "height": ds.height,
                    "width": ds.width,
                }
            if tile.id in by_csv:
                tile.geoms = by_csv[tile.id]
            elif tile.id in geojsons:
                gj = json.loads(geojsons[tile.id].read_text())
                crs_name = (gj.get("crs") or {}).get("properties", {}).get("name")
                m = meta[tile.id]
                tile.geoms = geojson_pixel_polygons(
                    gj.get("features", []), m["transform"], m["crs"], crs_name
                )
        except Exception as exc:  # one bad tile never fails the run
            report["failed"][tile.id] = f"{type(exc).__name__}: {exc}"
            footprints.pop(tile.id, None)
            continue
        if tile.geoms is None:
            report["missing_annotation"].append(tile.id)
            footprints.pop(tile.id, None)
    split = split_by_location(footprints, opts.val_fraction)
    report["split"] = split.as_dict()
    good = {t.id: t for t in tiles if t.id in footprints}

    # JPG stretch from a sample of training tiles
    stretch = None
    if opts.fmt == "jpg":
        sample_ids = split.train[:: max(1, len(split.train) // 50)] or split.validation[:50]
        samples = []
        for tid in sample_ids:
            with rasterio.open(good[tid].path) as ds:
                db = to_display_channels(ds.read().astype(np.float32))
                samples.append(db[:, ::4, ::4])
        stretch = percentiles(samples)
        report["jpg_stretch_db"] = {
            "percentiles": list(JPG_PERCENTILES),
            "low": stretch[0],
            "high": stretch[1],
        }

    buildings: dict[str, list[str]] = {}
    for split_name, ids in (("train", split.train), ("validation", split.validation)):
        (dst / split_name).mkdir(parents=True, exist_ok=True)
        (dst / f"{split_name}_annotation").mkdir(parents=True, exist_ok=True)
        for n, tid in enumerate(ids, 1):
            tile = good[tid]
            try:
                rotated = _write_tile(
                    tile, meta[tid], dst, split_name, opts, orientations, stretch, buildings
                )
            except Exception as exc:
                report["failed"][tid] = f"{type(exc).__name__}: {exc}"
                continue
            report["rotated"] += int(rotated)
            report["buildings"] += len(tile.geoms)
            report["tiles_with_one_building"] += int(len(tile.geoms) == 1)
            if opts.progress and (n % 100 == 0 or n == len(ids)):
                print(f"prepare-sn6: {split_name} {n}/{len(ids)}", file=sys.stderr, flush=True)
    label_dir = dst / "label_map"
    label_dir.mkdir(parents=True, exist_ok=True)
    for name in ("train", "validation"):
        (label_dir / f"{name}_label_map.json").write_text(json.dumps({"scale": "1"}) + "\n")
    (label_dir / "class_names.json").write_text(json.dumps(list(CLASS_NAMES)) + "\n")
    (dst / "buildings.json").write_text(json.dumps(buildings))
    report["written"] = {
        "train": len([t for t in split.train if t not in report["failed"]]),
        "validation": len([t for t in split.validation if t not in report["failed"]]),
    }
    (dst / "prepare_report.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    return report


def _write_tile(tile, m, dst, split_name, opts, orientations, stretch, buildings) -> bool:
    import rasterio
    from PIL import Image

    with rasterio.open(tile.path) as ds:
        image = ds.read().astype(np.float32)
    h, w = image.shape[1:]
    geoms = list(tile.geoms)
    transform = m["transform"]
    rotate = opts.orient and orientations.get(strip_of(tile.id), 0) == 1
    if rotate:
        image = image[:, ::-1, ::-1]
        geoms = rotate_geoms(geoms, h, w)
        transform = rotated_transform(transform, h, w)
    valid = valid_pixels(image)
    mask = make_mask(geoms, valid)
    if opts.fmt == "geotiff":
        profile = {
            "driver": "GTiff",
            "height": h,
            "width": w,
            "count": 4,
            "dtype": "float32",
            "crs": m["crs"],
            "transform": transform,
            "nodata": 0.0,
            "compress": "deflate",
            "predictor": 3,
            "tiled": True,
            "blockxsize": 256 if w >= 256 else w,
            "blockysize": 256 if h >= 256 else h,
        }
        if w < 256 or h < 256:
            profile.pop("tiled")
            profile.pop("blockxsize")
            profile.pop("blockysize")
        with rasterio.open(dst / split_name / f"{tile.id}.tif", "w", **profile) as out:
            out.write(np.ascontiguousarray(image))
            out.descriptions = BAND_NAMES
    else:
        rgb = stretch_to_uint8(to_display_channels(image), *stretch)
        Image.fromarray(rgb, "RGB").save(dst / split_name / f"{tile.id}.jpg", quality=95)
    Image.fromarray(mask, "L").save(dst / f"{split_name}_annotation" / f"{tile.id}.png")
    buildings[tile.id] = [g.wkt for g in geoms]
    return rotate
