"""Pure core of the planetary NDVI mosaic: the EPSG:4326 output grid, where each input lands on it (split at the
antimeridian), which overview level to read, the accumulation rule and the PNG legend. Arrays and numbers in and
out; :mod:`ndvi_worker.products_io` does the reading, reprojecting and writing.

The mosaic value of a pixel is the mean of the inputs that cover it with valid NDVI (each input, a scene output or
a composite, weighs one; each input's own value there is the average of its valid pixels under the mosaic pixel).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

EARTH_DEGREE_M = 111_320.0  # metres per degree of latitude (and of longitude at the equator)


@dataclass(frozen=True)
class MosaicGrid:
    """An EPSG:4326 grid: west/north corner, pixel size in degrees, size in pixels."""

    west: float
    north: float
    resolution: float
    width: int
    height: int

    @property
    def east(self) -> float:
        return self.west + self.width * self.resolution

    @property
    def south(self) -> float:
        return self.north - self.height * self.resolution

    @property
    def transform(self) -> tuple[float, ...]:
        return (self.resolution, 0.0, self.west, 0.0, -self.resolution, self.north)

    def pixel(self, lon: float, lat: float) -> tuple[int, int]:
        """(row, col) of the pixel containing (lon, lat)."""
        return (
            int(math.floor((self.north - lat) / self.resolution)),
            int(math.floor((lon - self.west) / self.resolution)),
        )


def parse_bbox(text: str) -> tuple[float, float, float, float]:
    """``'W,S,E,N'`` in degrees -> a tuple; west < east (no wrap: use two mosaics across the antimeridian)."""
    try:
        w, s, e, n = (float(v) for v in text.split(","))
    except (ValueError, AttributeError):
        raise ValueError(f"--bbox must be W,S,E,N in degrees (e.g. -10,35,30,60), got {text!r}") from None
    if not (-180 <= w < e <= 180 and -90 <= s < n <= 90):
        raise ValueError(
            f"--bbox {text!r}: need -180 <= W < E <= 180 and -90 <= S < N <= 90 (W,S,E,N in degrees)"
        )
    return w, s, e, n


def check_resolution(resolution: float) -> float:
    if not (0 < resolution <= 10):
        raise ValueError(f"--resolution must be in degrees, between 0 and 10 (e.g. 0.01), got {resolution}")
    if 360 / resolution * 180 / resolution > 2**34:
        raise ValueError(f"--resolution {resolution} makes a grid too large (over 2^34 pixels)")
    return resolution


def grid_for(bbox: Sequence[float], resolution: float) -> MosaicGrid:
    """The grid covering ``bbox`` snapped outwards to multiples of ``resolution`` (so every mosaic at one
    resolution shares pixel edges), clamped to the globe."""
    w, s, e, n = bbox
    eps = 1e-9
    west = max(-180.0, math.floor(w / resolution + eps) * resolution)
    east = min(180.0, math.ceil(e / resolution - eps) * resolution)
    south = max(-90.0, math.floor(s / resolution + eps) * resolution)
    north = min(90.0, math.ceil(n / resolution - eps) * resolution)
    width = max(1, round((east - west) / resolution))
    height = max(1, round((north - south) / resolution))
    return MosaicGrid(west, north, resolution, width, height)


def lon_ranges(bounds: Sequence[float]) -> list[tuple[float, float]]:
    """The longitude intervals of a lon/lat box in [-180, 180]; a box crossing the antimeridian (west > east,
    as GDAL returns it, or east beyond 180 / west below -180) gives two."""
    w, _, e, _ = bounds
    if w > e:  # GDAL's convention for a box across the antimeridian
        return [(w, 180.0), (-180.0, e)]
    if e > 180:
        return [(w, 180.0), (-180.0, e - 360)]
    if w < -180:
        return [(w + 360, 180.0), (-180.0, e)]
    return [(w, e)]


def union_bbox(boxes: Sequence[Sequence[float]]) -> tuple[float, float, float, float] | None:
    """Union of lon/lat boxes (antimeridian-crossing boxes count as both their parts)."""
    parts = [(a, b, box[1], box[3]) for box in boxes for a, b in lon_ranges(box)]
    if not parts:
        return None
    return (
        min(p[0] for p in parts),
        min(p[2] for p in parts),
        max(p[1] for p in parts),
        max(p[3] for p in parts),
    )


def windows_for(grid: MosaicGrid, bounds: Sequence[float]) -> list[tuple[int, int, int, int]]:
    """(row0, row1, col0, col1) windows of ``grid`` an input with lon/lat ``bounds`` touches, one per side of the
    antimeridian; empty when it lies outside the grid."""
    _, s, _, n = bounds
    r = grid.resolution
    row0 = max(0, int(math.floor((grid.north - n) / r)))
    row1 = min(grid.height, int(math.ceil((grid.north - s) / r)))
    out = []
    for a, b in lon_ranges(bounds):
        col0 = max(0, int(math.floor((a - grid.west) / r)))
        col1 = min(grid.width, int(math.ceil((b - grid.west) / r)))
        if row1 > row0 and col1 > col0:
            out.append((row0, row1, col0, col1))
    return out


def overview_level_for(pixel_m: float, factors: Sequence[int], target_m: float) -> int | None:
    """Which overview to read: the coarsest one whose pixels are still no larger than the target's (so the
    average into the mosaic sees every pixel), and at least the first one (never the full resolution). Returns
    the rasterio ``overview_level`` (0 = the first overview), or None when the file has no overviews."""
    if not factors:
        return None
    best = 0
    for level, factor in enumerate(factors):
        if pixel_m * factor <= target_m:
            best = level
    return best


def target_pixel_m(resolution: float, max_abs_lat: float) -> float:
    """The mosaic pixel's smaller side in metres at the input's most poleward latitude."""
    return resolution * EARTH_DEGREE_M * max(0.01, math.cos(math.radians(min(89.9, abs(max_abs_lat)))))


def accumulate(total: np.ndarray, count: np.ndarray, values: np.ndarray) -> None:
    """Add an input's reprojected NDVI (NaN where it has none) into running sum/count arrays, in place."""
    ok = ~np.isnan(values)
    total[ok] += values[ok]
    count[ok] += 1


def finish(total: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Mean NDVI, NaN where no input covered the pixel (never 0)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan).astype("float32")


# ------------------------------------------------------------------------------------------------ legend

_GLYPHS = {  # 3 x 5 bitmap glyphs, rows top to bottom
    "0": ("111", "101", "101", "101", "111"),
    "1": ("010", "110", "010", "010", "111"),
    "2": ("111", "001", "111", "100", "111"),
    "3": ("111", "001", "111", "001", "111"),
    "4": ("101", "101", "111", "001", "001"),
    "5": ("111", "100", "111", "001", "111"),
    "6": ("111", "100", "111", "101", "111"),
    "7": ("111", "001", "010", "010", "010"),
    "8": ("111", "101", "111", "101", "111"),
    "9": ("111", "101", "111", "001", "111"),
    "-": ("000", "000", "111", "000", "000"),
    ".": ("000", "000", "000", "000", "010"),
    " ": ("000", "000", "000", "000", "000"),
    "N": ("101", "111", "111", "111", "101"),
    "D": ("110", "101", "101", "101", "110"),
    "V": ("101", "101", "101", "101", "010"),
    "I": ("111", "010", "010", "010", "111"),
    "O": ("111", "101", "101", "101", "111"),
    "A": ("010", "101", "111", "101", "101"),
    "T": ("111", "010", "010", "010", "010"),
}


def text_mask(text: str, scale: int = 2) -> np.ndarray:
    """A boolean bitmap of ``text`` (digits, '-', '.', a few capitals) in a 3 x 5 font, ``scale`` x."""
    cols = []
    for ch in text.upper():
        glyph = np.array([[c == "1" for c in row] for row in _GLYPHS.get(ch, _GLYPHS[" "])])
        cols.extend([glyph, np.zeros((5, 1), dtype=bool)])
    bitmap = np.hstack(cols) if cols else np.zeros((5, 1), dtype=bool)
    return np.repeat(np.repeat(bitmap, scale, axis=0), scale, axis=1)


def legend_strip(
    width: int, colorize, ticks: Sequence[float] = (-0.2, 0.0, 0.2, 0.4, 0.6, 0.8)
) -> np.ndarray:
    """An RGBA (4, H, width) legend: the NDVI colour ramp from -0.2 to 0.9 with tick labels, 'NDVI', and a
    'NO DATA' swatch (transparent, like the map's pixels that no input covers)."""
    scale = 2 if width < 900 else 3
    height = 22 * scale
    rgba = np.full((4, height, width), 255, dtype=np.uint8)
    margin = 6 * scale
    label = text_mask("NDVI", scale)
    nodata_label = text_mask("NO DATA", scale)
    bar_x0 = margin + label.shape[1] + margin
    bar_x1 = width - margin - nodata_label.shape[1] - margin - 8 * scale
    bar_y0, bar_y1 = 2 * scale, 10 * scale
    lo, hi = -0.2, 0.9
    if bar_x1 - bar_x0 < 20:  # too narrow for a legend with labels: the ramp alone
        ramp = colorize(np.linspace(lo, hi, width, dtype="float32")[None, :].repeat(height, 0))
        return ramp
    ramp_values = np.linspace(lo, hi, bar_x1 - bar_x0, dtype="float32")[None, :]
    bar = colorize(np.repeat(ramp_values, bar_y1 - bar_y0, axis=0))
    rgba[:, bar_y0:bar_y1, bar_x0:bar_x1] = bar
    _paste(rgba, label, bar_y0, margin)
    for t in ticks:
        x = bar_x0 + int(round((t - lo) / (hi - lo) * (bar_x1 - bar_x0 - 1)))
        rgba[:3, bar_y1 : bar_y1 + 2 * scale, x] = 0
        tick = text_mask(f"{t:g}", scale)
        _paste(rgba, tick, bar_y1 + 3 * scale, max(0, min(width - tick.shape[1], x - tick.shape[1] // 2)))
    sw_x0 = bar_x1 + margin
    rgba[3, bar_y0 + 1 : bar_y1 - 1, sw_x0 + 1 : sw_x0 + 8 * scale - 1] = 0  # transparent, as in the map
    rgba[:3, bar_y0:bar_y1, sw_x0] = rgba[:3, bar_y0:bar_y1, sw_x0 + 8 * scale - 1] = 0
    rgba[:3, bar_y0, sw_x0 : sw_x0 + 8 * scale] = rgba[:3, bar_y1 - 1, sw_x0 : sw_x0 + 8 * scale] = 0
    _paste(rgba, nodata_label, bar_y0, sw_x0 + 10 * scale)
    return rgba


def _paste(rgba: np.ndarray, mask: np.ndarray, y: int, x: int) -> None:
    h = min(mask.shape[0], rgba.shape[1] - y)
    w = min(mask.shape[1], rgba.shape[2] - x)
    if h <= 0 or w <= 0:
        return
    region = rgba[:3, y : y + h, x : x + w]
    region[:, mask[:h, :w]] = 0
