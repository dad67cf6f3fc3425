"""Pure core of the temporal NDVI composites: periods, grouping of per-scene outputs by MGRS tile, grid checks,
window sizes for a memory budget, the per-pixel reductions (on xarray, numpy- or dask-backed) and the composite's
STAC item. No file I/O here: :mod:`ndvi_worker.products_io` opens the rasters and writes the products.

Conventions (docs/products.md):

* inputs are NDVI rasters decoded to float32 NDVI with NaN where invalid (any input encoding, any nodata);
* band 1 is the composite NDVI, band 2 the number of valid observations, band 3 (``max`` only) the day of the
  chosen observation counted in **days since the period start** (0 = the start day), so periods may span years;
* ``max`` ties go to the earliest observation (inputs are sorted by date, then item id);
* ``median`` of an even count is the mean of the two middle values (numpy's ``nanmedian``).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

METHODS = ("max", "median", "mean")
#: Band names of a composite COG, in band order (``day`` only for ``max``).
BANDS = {"max": ("ndvi", "count", "day"), "median": ("ndvi", "count"), "mean": ("ndvi", "count")}


class CompositeError(ValueError):
    """A tile cannot be composited as asked (inputs on different grids...)."""


# ------------------------------------------------------------------------------------------------ periods


def parse_period(text: str) -> tuple[dt.date, dt.date]:
    """``'2023-12-01/2023-12-31'`` (or ``20231201/20231231``) -> (start, end), both inclusive."""
    parts = text.split("/") if isinstance(text, str) else []
    if len(parts) != 2:
        raise ValueError(f"--period must be START/END (e.g. 2023-12-01/2023-12-31), got {text!r}")
    try:
        start, end = (_parse_date(p.strip()) for p in parts)
    except ValueError:
        raise ValueError(f"--period must be START/END dates (YYYY-MM-DD/YYYY-MM-DD), got {text!r}") from None
    if end < start:
        raise ValueError(f"--period ends before it starts: {text!r}")
    return start, end


def _parse_date(text: str) -> dt.date:
    if re.fullmatch(r"\d{8}", text):
        return dt.date(int(text[:4]), int(text[4:6]), int(text[6:]))
    return dt.date.fromisoformat(text)


def item_date(item: dict) -> dt.date | None:
    """The UTC acquisition date of an output item (``datetime``, else ``start_datetime``)."""
    props = item.get("properties") or {}
    value = props.get("datetime") or props.get("start_datetime")
    if not isinstance(value, str):
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(dt.UTC).date()
    except ValueError:
        return None


def period_stamp(day: dt.date) -> str:
    return day.strftime("%Y%m%d")


def composite_stem(tile: str, start: dt.date, end: dt.date, method: str) -> str:
    """``31UFU_20231201_20231231_ndvi-max`` (the COG, STAC item and quicklook share it). The tile must be a
    normalised MGRS tile (:func:`ndvi_worker.stac.check_tile`): the stem names files and a staging folder."""
    from ndvi_worker.stac import check_tile

    check_tile(tile)
    if method not in BANDS:
        raise ValueError(f"unknown composite method {method!r}")
    return f"{tile}_{period_stamp(start)}_{period_stamp(end)}_ndvi-{method}"


# ------------------------------------------------------------------------------------------------ inputs


@dataclass(frozen=True)
class Grid:
    """A raster grid: CRS (as WKT or 'EPSG:n' text), affine transform (6 numbers) and shape (rows, cols)."""

    crs: str
    transform: tuple[float, ...]
    shape: tuple[int, int]

    def same_as(self, other: Grid, tolerance: float = 1e-6) -> bool:
        return (
            self.crs == other.crs
            and self.shape == other.shape
            and all(
                math.isclose(a, b, abs_tol=tolerance)
                for a, b in zip(self.transform, other.transform, strict=False)
            )
        )

    def describe(self) -> str:
        t = self.transform
        return f"{self.crs} {self.shape[1]}x{self.shape[0]} px of {t[0]:g} m at ({t[2]:g}, {t[5]:g})"


@dataclass(frozen=True)
class ProductInput:
    """One NDVI product to combine: a per-scene output or a composite, with what its item says about it."""

    item_id: str
    item_path: str  # where its STAC item was read from
    cog_path: str
    tile: str | None
    date: dt.date | None
    item: dict = field(repr=False, compare=False)
    grid: Grid | None = None

    @property
    def is_composite(self) -> bool:
        return (self.item.get("properties") or {}).get("earthmon:product") == "composite"


def in_period(date: dt.date | None, period: tuple[dt.date, dt.date] | None) -> bool:
    if period is None:
        return True
    return date is not None and period[0] <= date <= period[1]


def group_by_tile(inputs: Iterable[ProductInput]) -> dict[str, list[ProductInput]]:
    """Inputs per MGRS tile, each list sorted by (date, item id): the order of the time axis."""
    groups: dict[str, list[ProductInput]] = {}
    for p in inputs:
        groups.setdefault(p.tile or "unknown", []).append(p)
    for tile in groups:
        groups[tile].sort(key=lambda p: (p.date or dt.date.min, p.item_id))
    return dict(sorted(groups.items()))


def check_same_grid(inputs: Sequence[ProductInput]) -> Grid:
    """The tile's common grid; :class:`CompositeError` naming the odd inputs when they differ."""
    grids = [p.grid for p in inputs]
    if not inputs or any(g is None for g in grids):
        raise CompositeError("no grid known for some inputs")
    first = grids[0]
    odd = [p for p in inputs if not p.grid.same_as(first)]  # type: ignore[union-attr]
    if odd:
        shown = "; ".join(f"{p.item_id}: {p.grid.describe()}" for p in odd[:3])  # type: ignore[union-attr]
        raise CompositeError(
            f"inputs on different grids: {inputs[0].item_id} is on {first.describe()}, but {shown}"
            + (f" (and {len(odd) - 3} more)" if len(odd) > 3 else "")
            + "; composite only outputs of one tile grid (reprocess them on one grid, or use mosaic)"
        )
    return first  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------------ memory


def window_side(
    dates: int, budget_bytes: int, blocksize: int = 512, minimum: int = 16, maximum: int = 4096
) -> int:
    """Side of the square windows processed at once so that one window's stack across all ``dates`` (float32,
    with about 3 temporaries of its size for decoding and the reductions) fits in ``budget_bytes``.

    A multiple of ``blocksize`` when the budget allows one block or more (the window is then whole blocks of the
    inputs and the output), else a multiple of 16 (at least ``minimum``), at most ``maximum``: memory is bounded
    whatever the number of dates (more dates, smaller windows), and few large windows keep the per-window cost
    small. :func:`ndvi_worker.products_io.composite_tile` gives each of its threads a share of its budget."""
    per_pixel = 4 * max(1, dates) * 4  # 4 B x dates x (the stack + 3 temporaries)
    side = min(maximum, int(math.sqrt(max(1, budget_bytes) / per_pixel)))
    if side >= blocksize:
        return side // blocksize * blocksize
    return max(minimum, side // 16 * 16)


def windows(shape: tuple[int, int], side: int) -> list[tuple[int, int, int, int]]:
    """(row0, row1, col0, col1) windows of at most ``side`` x ``side`` covering ``shape``, row by row."""
    rows, cols = shape
    return [
        (r, min(rows, r + side), c, min(cols, c + side))
        for r in range(0, rows, side)
        for c in range(0, cols, side)
    ]


# ------------------------------------------------------------------------------------------------ reductions


def decode_ndvi(values, nodata: float | None, scale: float = 1.0, offset: float = 0.0):
    """Raw band values (an xarray DataArray or numpy array) to float32 NDVI with NaN where ``nodata`` (or NaN).

    Each input is decoded with its own nodata and scale, so int16 (x 10000, nodata -32768) and float32 (nodata
    NaN) outputs, or any other nodata, combine."""
    import xarray as xr

    as_float = values.astype("float32")
    valid = ~np.isnan(as_float)
    if nodata is not None and not (isinstance(nodata, float) and math.isnan(nodata)):
        valid = valid & (values != nodata)
    decoded = as_float * np.float32(scale) + np.float32(offset)
    if isinstance(values, xr.DataArray):
        return decoded.where(valid)
    return np.where(valid, decoded, np.float32(np.nan)).astype("float32")


def reduce_block(block: np.ndarray, days: Sequence[int], method: str) -> np.ndarray:
    """One block's reduction along time, in numpy, in few passes: ``block`` is (time, y, x) float32 NDVI with NaN
    where there is no valid observation; returns (3, y, x) float32: the composite NDVI (NaN where no observation),
    the count of valid observations and, for ``max``, the day of the first maximum (-1 where none; else -1)."""
    import warnings

    valid = ~np.isnan(block)
    count = valid.sum(axis=0, dtype=np.int16)
    seen = count > 0
    out = np.empty((3, *block.shape[1:]), dtype=np.float32)
    out[1] = count
    out[2] = -1
    if method == "mean":
        total = np.where(valid, block, np.float32(0)).sum(axis=0, dtype=np.float64)
        np.divide(total, count, out=total, where=seen)
        out[0] = np.where(seen, total, np.nan)
    elif method == "median":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels: NaN, as wanted
            out[0] = np.nanmedian(block, axis=0)
    else:
        filled = np.where(valid, block, np.float32(-np.inf))
        index = filled.argmax(axis=0)  # first maximum: the earliest date on ties
        best = np.take_along_axis(filled, index[None], axis=0)[0]
        out[0] = np.where(seen, best, np.nan)
        out[2] = np.where(seen, np.asarray(days, dtype=np.float32)[index], np.float32(-1))
    return out


def check_method(method: str, stack=None) -> None:
    """A composite method, and a stack along ``time`` when one is given, or ValueError saying what is expected."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    if stack is not None and stack.dims[0] != "time":
        raise ValueError("the stack's first dimension must be 'time'")


def composite_stack(stack, days: Sequence[int], method: str):
    """Reduce a (time, y, x) float32 NDVI stack (NaN = no valid observation) along time.

    ``stack`` is an xarray DataArray, numpy- or dask-backed (lazy in, lazy out); ``days`` holds each time step's
    day since the period start. Returns an :class:`xarray.Dataset` with ``ndvi`` (float32, NaN where no
    observation), ``count`` (int16) and, for ``max``, ``day`` (int16, -1 where no observation).

    Each spatial block is reduced by :func:`reduce_block` (dask ``map_blocks`` over blocks holding every date: a
    pixel's dates are reduced at once, blocks in parallel), rather than by a chain of generic xarray reductions,
    each of which was one more pass over the stack and one more layer of tasks."""
    import xarray as xr

    check_method(method, stack)
    data = stack.data
    if stack.chunks:
        whole = data.rechunk({0: -1})  # every date of a block at once (the window's stack, budgeted)
        reduced = whole.map_blocks(
            reduce_block,
            list(days),
            method,
            dtype=np.float32,
            chunks=((3,), *whole.chunks[1:]),
            meta=np.empty((0, 0, 0), dtype=np.float32),
        )
    else:
        reduced = reduce_block(np.asarray(data, dtype=np.float32), days, method)
    dims = stack.dims[1:]
    out = {
        "count": xr.DataArray(reduced[1], dims=dims).astype("int16"),
        "ndvi": xr.DataArray(reduced[0], dims=dims),
    }
    if method == "max":
        out["day"] = xr.DataArray(reduced[2], dims=dims).astype("int16")
    return xr.Dataset(out)


def int16_domain(encodings: Iterable[tuple[str, float | None, float, float]], out_dtype: str) -> bool:
    """Whether a stack of inputs with these (dtype, nodata, scale, offset) encodings can be reduced on their raw
    values (:func:`reduce_block_int16`): every input in the worker's own int16 encoding (x 10000, nodata -32768,
    offset 0) and an int16 output, whose encoding it is too. Anything else is decoded to float first."""
    from ndvi_worker.ndvi import INT16_NODATA, INT16_SCALE

    return out_dtype == "int16" and all(
        dtype == "int16"
        and nodata is not None
        and nodata == INT16_NODATA
        and math.isclose(scale, 1.0 / INT16_SCALE, rel_tol=1e-9)
        and offset == 0
        for dtype, nodata, scale, offset in encodings
    )


def reduce_block_int16(block: np.ndarray, days: Sequence[int], method: str) -> np.ndarray:
    """One block's reduction along time on raw int16 NDVI (x 10000, -32768 where no valid observation: the
    worker's encoding, see :func:`int16_domain`), returning the output bands already encoded, int16 (band count as
    :data:`BANDS`). No float decoding and one vectorised pass per date (and per comparator of a sorting network for
    ``median``): -32768 sorts below every valid value, so it needs no masking for ``max`` and ``median``.

    The same results as decoding to float, :func:`reduce_block` and encoding back: ``max``, the count and the day
    exactly (the int16 encoding is exact on its own values; ties go to the earliest date); ``mean`` and ``median``
    are their exact values rounded once (half to even) from integer sums, where the float route rounds a float32
    approximation, so the two can differ by 1 (1e-4 NDVI) where the exact value is a half."""
    from ndvi_worker.ndvi import INT16_NODATA

    nodata = np.int16(INT16_NODATA)
    block = np.asarray(block, dtype=np.int16)
    t = block.shape[0]
    shape = block.shape[1:]
    if t > 32767:
        raise ValueError("at most 32767 dates")
    count = np.zeros(shape, dtype=np.int16)
    for k in range(t):
        np.add(count, (block[k] != nodata).view(np.int8), out=count, casting="unsafe")
    empty = count == 0
    out = np.empty((len(BANDS[method]), *shape), dtype=np.int16)
    out[1] = count
    if method == "max":
        best = out[0]
        np.copyto(best, block[0])
        for k in range(1, t):
            np.maximum(best, block[k], out=best)  # nodata only where every date is nodata
        # the day of the first date holding the maximum: past every leading date that does not, add the step to
        # the next date's day
        day = np.full(shape, int(days[0]), dtype=np.int16)
        leading = np.ones(shape, dtype=bool)
        for k in range(t - 1):
            np.logical_and(leading, block[k] != best, out=leading)
            step = int(days[k + 1]) - int(days[k])
            if step:
                day += leading.view(np.int8) * np.int16(step)
        np.copyto(day, nodata, where=empty)
        out[2] = day
        return out
    if method == "mean":
        total = np.zeros(shape, dtype=np.int64 if t > 65535 else np.int32)
        for k in range(t):
            np.add(total, block[k], out=total, casting="unsafe")
        total -= (t - count.astype(total.dtype)) * int(INT16_NODATA)  # the nodata values summed are taken out
        mean = total / np.maximum(count, 1)
        np.rint(mean, out=mean)
        out[0] = mean
    else:  # median: sorted along time, nodata first, then the valid values in order
        ordered = _sorted(block)
        first = np.int16(t) - count  # the first valid value's position; t where none
        np.minimum(first, np.int16(t - 1), out=first)
        first += (count - 1) >> 1  # the lower middle (the middle when the count is odd)
        lo = np.take_along_axis(ordered, first[None], axis=0)[0].astype(np.int32)
        first += (count + 1) & 1  # the upper middle when even
        np.minimum(first, np.int16(t - 1), out=first)
        lo += np.take_along_axis(ordered, first[None], axis=0)[0]
        half = lo >> 1  # (lo + hi) / 2 rounded half to even
        half += lo & half & 1
        out[0] = half
    np.copyto(out[0], nodata, where=empty)
    return out


def _sorted(block: np.ndarray) -> np.ndarray:
    """The (time, y, x) block sorted along time: an odd-even transposition network of elementwise min/max for few
    dates (vectorised: ~10x faster than ``np.sort`` along a leading axis), else ``np.sort``."""
    t = block.shape[0]
    if t > 16:
        return np.sort(block, axis=0)
    out = block.copy()
    for rnd in range(t):
        for j in range(rnd % 2, t - 1, 2):
            low = np.minimum(out[j], out[j + 1])
            np.maximum(out[j], out[j + 1], out=out[j + 1])
            out[j] = low
    return out


def encode_reduced(reduced: np.ndarray, method: str, dtype: str) -> np.ndarray:
    """:func:`reduce_block`'s float32 (3, y, x) to the output bands in the output encoding (band count as
    :data:`BANDS`): int16 x 10000 NDVI, counts, days (-32768 where no observation), or float32 (NaN there)."""
    from ndvi_worker.ndvi import INT16_NODATA, to_int16

    count = reduced[1]
    empty = count == 0
    n = len(BANDS[method])
    if dtype == "int16":
        out = np.empty((n, *reduced.shape[1:]), dtype=np.int16)
        out[0] = to_int16(reduced[0])
        out[1] = count
        if n == 3:
            out[2] = np.where(empty, np.int16(INT16_NODATA), reduced[2].astype(np.int16))
        return out
    out = reduced[:n].astype(np.float32, copy=True)
    if n == 3:
        out[2][empty] = np.nan
    return out


def composite_block(
    block: np.ndarray, days: Sequence[int], method: str, dtype: str, raw_int16: bool
) -> np.ndarray:
    """A (time, y, x) block to the composite's bands in the output encoding: on the raw int16 values when
    ``raw_int16`` (:func:`int16_domain`), else from float32 NDVI with NaN (:func:`reduce_block`)."""
    if raw_int16:
        return reduce_block_int16(block, days, method)
    return encode_reduced(reduce_block(np.asarray(block, dtype=np.float32), days, method), method, dtype)


def composite_encoded(stack, days: Sequence[int], method: str, dtype: str, raw_int16: bool = False):
    """The composite of a (time, y, x) :class:`xarray.DataArray` stack (numpy- or dask-backed: lazy in, lazy out) as
    a (band, y, x) DataArray in the output encoding (``band`` coordinates :data:`BANDS`), each spatial block reduced
    by :func:`composite_block` (dask ``map_blocks`` over blocks holding every date). ``raw_int16``: the stack holds
    the inputs' raw int16 values (:func:`int16_domain`); otherwise float32 NDVI with NaN."""
    import xarray as xr

    check_method(method, stack)
    bands = BANDS[method]
    out_dtype = np.dtype(dtype)
    data = stack.data
    if stack.chunks:
        whole = data.rechunk({0: -1}) if len(data.chunks[0]) > 1 else data
        encoded = whole.map_blocks(
            composite_block,
            list(days),
            method,
            dtype,
            raw_int16,
            dtype=out_dtype,
            chunks=((len(bands),), *whole.chunks[1:]),
            meta=np.empty((0, 0, 0), dtype=out_dtype),
        )
    else:
        encoded = composite_block(np.asarray(data), days, method, dtype, raw_int16)
    coords = {name: stack.coords[name] for name in stack.dims[1:] if name in stack.coords}
    return xr.DataArray(encoded, dims=("band", *stack.dims[1:]), coords={"band": list(bands), **coords})


def composite_numpy(stack: np.ndarray, days: Sequence[int], method: str) -> dict[str, np.ndarray]:
    """The same reduction in plain numpy (the reference the tests compare with; also handy for small arrays)."""
    import warnings

    valid = ~np.isnan(stack)
    count = valid.sum(axis=0).astype("int16")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices
        if method == "mean":
            ndvi = np.nanmean(stack.astype("float64"), axis=0).astype("float32")
        elif method == "median":
            ndvi = np.nanmedian(stack, axis=0).astype("float32")
        elif method == "max":
            ndvi = np.nanmax(stack, axis=0).astype("float32")
        else:
            raise ValueError(method)
    out = {"ndvi": ndvi, "count": count}
    if method == "max":
        idx = np.where(valid, stack, -np.inf).argmax(axis=0)
        out["day"] = np.where(count > 0, np.asarray(days, dtype="int16")[idx], -1).astype("int16")
    return out


# ------------------------------------------------------------------------------------------------ statistics


@dataclass
class Tally:
    """Running statistics of a composite, summed over windows."""

    pixels: int = 0
    valid: int = 0
    total: float = 0.0
    total_sq: float = 0.0
    minimum: float = math.inf
    maximum: float = -math.inf
    observations: int = 0

    def add(self, ndvi: np.ndarray, count: np.ndarray) -> None:
        ok = ~np.isnan(ndvi)
        self.pixels += ndvi.size
        n = int(ok.sum())
        if n:
            v = ndvi[ok].astype("float64")
            self.valid += n
            self.total += float(v.sum())
            self.total_sq += float((v * v).sum())
            self.minimum = min(self.minimum, float(v.min()))
            self.maximum = max(self.maximum, float(v.max()))
        self.observations += int(count.astype("int64").sum())

    def add_encoded(self, bands: np.ndarray, dtype: str) -> None:
        """:meth:`add` for output bands already encoded (:func:`composite_block`)."""
        from ndvi_worker.ndvi import INT16_NODATA, INT16_SCALE

        if dtype == "int16":
            ndvi = bands[0]
            ok = ndvi != INT16_NODATA
            self.pixels += ndvi.size
            n = int(np.count_nonzero(ok))
            if n:
                # exact integer sums over every pixel, the nodata ones taken out after (no masked copy)
                gaps = ndvi.size - n
                wide = ndvi.astype(np.int32).ravel()
                self.valid += n
                self.total += (int(ndvi.sum(dtype=np.int64)) - gaps * INT16_NODATA) / INT16_SCALE
                squares = int(np.einsum("i,i->", wide, wide, dtype=np.int64)) - gaps * INT16_NODATA**2
                self.total_sq += squares / INT16_SCALE**2
                # nodata (-32768) is the lowest value: the maximum as is; the minimum of the values less one, where
                # nodata wraps around to the highest (int16 arithmetic), plus one
                lowest = int((ndvi - np.int16(1)).min()) + 1
                self.minimum = min(self.minimum, lowest / INT16_SCALE)
                self.maximum = max(self.maximum, float(ndvi.max()) / INT16_SCALE)
            self.observations += int(bands[1].sum(dtype=np.int64))
        else:
            self.add(bands[0], bands[1])

    def merge(self, other: Tally) -> None:
        self.pixels += other.pixels
        self.valid += other.valid
        self.total += other.total
        self.total_sq += other.total_sq
        self.minimum = min(self.minimum, other.minimum)
        self.maximum = max(self.maximum, other.maximum)
        self.observations += other.observations

    def summary(self) -> dict:
        mean = self.total / self.valid if self.valid else None
        std = math.sqrt(max(0.0, self.total_sq / self.valid - mean * mean)) if self.valid else None
        return {
            "valid_fraction": self.valid / self.pixels if self.pixels else 0.0,
            "valid_pixels": self.valid,
            "mean": mean,
            "std": std,
            "minimum": self.minimum if self.valid else None,
            "maximum": self.maximum if self.valid else None,
            "mean_observations": self.observations / self.pixels if self.pixels else 0.0,
        }


# ------------------------------------------------------------------------------------------------ STAC


def footprint_geometry(ring: Sequence[tuple[float, float]]) -> dict:
    """A GeoJSON geometry of a lon/lat ring; split into a MultiPolygon at the antimeridian when it crosses it
    (a jump of more than 180 degrees between consecutive vertices), as RFC 7946 asks."""
    pts = [(float(x), float(y)) for x, y in ring]
    if pts[0] != pts[-1]:
        pts.append(pts[0])
    crosses = any(abs(b[0] - a[0]) > 180 for a, b in zip(pts, pts[1:], strict=False))
    if not crosses:
        return {"type": "Polygon", "coordinates": [[list(p) for p in pts]]}
    unwrapped = [(x + 360 if x < 0 else x, y) for x, y in pts]  # continuous around 180
    east = _clip_lon(unwrapped, 180.0, keep_below=True)
    west = [(x - 360, y) for x, y in _clip_lon(unwrapped, 180.0, keep_below=False)]
    polys = [[[list(p) for p in part]] for part in (east, west) if len(part) >= 4]
    return {"type": "MultiPolygon", "coordinates": polys}


def _clip_lon(ring: list[tuple[float, float]], lon: float, keep_below: bool) -> list[tuple[float, float]]:
    """Sutherland-Hodgman clip of a closed ring against the meridian ``lon``."""

    def inside(p):
        return p[0] <= lon if keep_below else p[0] >= lon

    out: list[tuple[float, float]] = []
    for a, b in zip(ring, ring[1:], strict=False):
        if inside(a):
            out.append(a)
        if inside(a) != inside(b):
            t = (lon - a[0]) / (b[0] - a[0])
            out.append((lon, a[1] + t * (b[1] - a[1])))
    if out and out[0] != out[-1]:
        out.append(out[0])
    return out


def geometry_bbox(geometry: dict) -> list[float]:
    """[w, s, e, n] of a Polygon / MultiPolygon; w > e for a MultiPolygon split at the antimeridian."""
    polys = [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
    xs = [p[0] for poly in polys for p in poly[0]]
    ys = [p[1] for poly in polys for p in poly[0]]
    if geometry["type"] == "MultiPolygon" and max(xs) >= 180 and min(xs) <= -180:
        east = min(x for x in xs if x > 0)
        west = max(x for x in xs if x < 0)
        return [east, min(ys), west, max(ys)]
    return [min(xs), min(ys), max(xs), max(ys)]


def composite_item(
    tile: str,
    start: dt.date,
    end: dt.date,
    method: str,
    sources: Sequence[ProductInput],
    source_hrefs: Sequence[str],
    geometry: dict,
    grid: Grid,
    epsg: int | None,
    stats: dict,
    dtype: str,
    cog_name: str,
    cog_size: int,
    quicklook_name: str | None,
    software_version: str,
) -> dict:
    """The composite's STAC item (built with pystac, returned as a dict): period, method, band meanings, source
    items (``derived_from`` links, one per source), statistics."""
    import pystac

    from ndvi_worker.ndvi import INT16_NODATA, INT16_SCALE

    created = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    start_dt = dt.datetime.combine(start, dt.time(0, 0), tzinfo=dt.UTC)
    end_dt = dt.datetime.combine(end, dt.time(23, 59, 59), tzinfo=dt.UTC)
    zone, band, square = tile[:2], tile[2:3], tile[3:]
    properties = {
        "created": created,
        "earthmon:product": "composite",
        "earthmon:composite_method": method,
        "earthmon:day_band": "days since start_datetime's date (0 = first day); -1 where count is 0",
        "earthmon:source_items": [s.item_id for s in sources],
        "earthmon:source_count": len(sources),
        "earthmon:valid_fraction": stats["valid_fraction"],
        "earthmon:mean_observations": stats["mean_observations"],
        "earthmon:statistics": {k: stats[k] for k in ("mean", "std", "minimum", "maximum", "valid_pixels")},
        "grid:code": f"MGRS-{tile}",
        "proj:epsg": epsg,
        "proj:shape": list(grid.shape),
        "proj:transform": list(grid.transform),
        "processing:software": {"earthmon-ndvi-worker": software_version},
    }
    if zone.isdigit() and band and len(square) == 2:
        properties.update(
            {"mgrs:utm_zone": int(zone), "mgrs:latitude_band": band, "mgrs:grid_square": square}
        )
    platforms = sorted({(s.item.get("properties") or {}).get("platform") for s in sources} - {None})
    if platforms:
        properties["platform"] = platforms[0] if len(platforms) == 1 else ",".join(platforms)

    def band_meta(name: str, description: str, kind: str) -> dict:
        meta: dict = {"name": name, "description": description, "data_type": dtype}
        if dtype == "int16":
            meta["nodata"] = INT16_NODATA
            if kind == "ndvi":
                meta.update({"scale": 1.0 / INT16_SCALE, "offset": 0.0})
        else:
            meta["nodata"] = "nan"
        return meta

    bands = [band_meta("ndvi", f"{method} NDVI of the valid observations", "ndvi")]
    bands[0]["statistics"] = {
        "mean": stats["mean"],
        "stddev": stats["std"],
        "minimum": stats["minimum"],
        "maximum": stats["maximum"],
        "valid_percent": 100.0 * stats["valid_fraction"],
    }
    bands.append(band_meta("count", "number of valid observations (0 where none)", "count"))
    if method == "max":
        bands.append(band_meta("day", "day of the chosen observation, days since the period start", "day"))
    item = pystac.Item(
        id=composite_stem(tile, start, end, method),
        geometry=geometry,
        bbox=geometry_bbox(geometry),
        datetime=None,
        start_datetime=start_dt,
        end_datetime=end_dt,
        properties=properties,
        stac_extensions=[
            "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
            "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
            "https://stac-extensions.github.io/file/v2.1.0/schema.json",
            "https://stac-extensions.github.io/processing/v1.1.0/schema.json",
        ],
    )
    item.add_asset(
        "ndvi",
        pystac.Asset(
            f"./{cog_name}",
            f"NDVI {method} composite",
            media_type="image/tiff; application=geotiff; profile=cloud-optimized",
            roles=["data"],
            extra_fields={"file:size": cog_size, "raster:bands": bands},
        ),
    )
    if quicklook_name:
        item.add_asset(
            "quicklook", pystac.Asset(f"./{quicklook_name}", media_type="image/png", roles=["overview"])
        )
    for href in source_hrefs:
        item.add_link(pystac.Link("derived_from", href, media_type="application/geo+json"))
    return item.to_dict(include_self_link=False, transform_hrefs=False)
