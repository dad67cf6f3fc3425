"""I/O edge of the NDVI products (temporal composites, the planetary mosaic, the collection and its viewer):
finding the per-scene outputs and composites in a folder, opening them as dask-backed xarray stacks
(rioxarray), writing COGs, quicklooks, STAC JSON and the viewer. The rules are in :mod:`ndvi_worker.composite`,
:mod:`ndvi_worker.mosaic` and :mod:`ndvi_worker.collection`; COG writing, quicklooks, colours and atomic publishing
come from :mod:`ndvi_worker.io`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ndvi_worker import __version__
from ndvi_worker import composite as core
from ndvi_worker import io as wio
from ndvi_worker import mosaic as mcore
from ndvi_worker.collection import build_collection, viewer_feature
from ndvi_worker.contract import ProcessingPaths
from ndvi_worker.ndvi import INT16_NODATA, INT16_SCALE, to_int16
from ndvi_worker.safety import path_under, redact, redact_obj, shown

log = logging.getLogger(__name__)

COG_MEDIA = "image/tiff; application=geotiff; profile=cloud-optimized"


@dataclass
class Problem:
    """An input that was skipped, or a tile that failed, and why."""

    source: str
    error: str

    def to_dict(self) -> dict:
        return {"source": self.source, "error": self.error}


@dataclass
class ProductsReport:
    done: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    failed: list[Problem] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "finished": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "worker_version": __version__,
            "done": self.done,
            "skipped": self.skipped,
            "failed": [p.to_dict() for p in self.failed],
        }


# ------------------------------------------------------------------------------------------------ finding inputs


def find_products(
    input_dir: Path, assets_root: str | None = None
) -> tuple[list[core.ProductInput], list[Problem]]:
    """Every NDVI product (a STAC item with an ``ndvi`` asset: per-scene outputs and composites) under
    ``input_dir``, with its grid read from its COG header; unreadable items or COGs become problems.

    ``assets_root`` (checked by :func:`ndvi_worker.safety.check_assets_root`): the URL the input folder mirrors.
    A relative COG href of the item ``<input_dir>/<folder>/<item>.json`` is then read in place from
    ``<assets_root><folder>/<href>`` (never from the input folder, which holds only the items), and cannot leave
    the root; absolute hrefs go through the href allowlist as always."""
    from ndvi_worker.discover import find_items
    from ndvi_worker.stac import ItemError, mgrs_tile

    products: list[core.ProductInput] = []
    problems: list[Problem] = []
    for entry in find_items(input_dir):
        if entry.error:
            problems.append(Problem(entry.source, entry.error))
            continue
        item = entry.item or {}
        asset = (item.get("assets") or {}).get("ndvi")
        if not isinstance(asset, dict) or not asset.get("href"):
            log.debug("skipping %s: not an NDVI product (no 'ndvi' asset)", entry.source)
            continue
        if not isinstance(item.get("properties") or {}, dict):
            problems.append(Problem(entry.source, "its 'properties' is not an object"))
            continue
        try:
            tile = mgrs_tile(
                item, strict=True
            )  # names files and folders: a malformed tile refuses the product
        except ItemError as exc:
            problems.append(Problem(entry.source, str(exc)))
            continue
        try:
            cog = wio.gdal_path(_cog_href(asset["href"], entry.location, input_dir, assets_root))
            grid = read_grid(cog)
        except Exception as exc:  # noqa: BLE001 - reported per input, the rest goes on
            problems.append(Problem(entry.source, f"cannot open its COG: {_short(exc)}"))
            continue
        products.append(
            core.ProductInput(
                item_id=shown(item.get("id"), 200),
                item_path=entry.location,
                cog_path=cog,
                tile=tile,
                date=core.item_date(item),
                item=item,
                grid=grid,
            )
        )
    return products, problems


def _cog_href(href: object, location: str, input_dir: Path, assets_root: str | None) -> str:
    """The COG's href: resolved against the item's file, or for a relative href under ``assets_root``, against
    the same folder under the root (:func:`ndvi_worker.safety.under_assets_root`)."""
    from ndvi_worker.safety import HrefError, under_assets_root
    from ndvi_worker.stac import resolve_href

    if assets_root is None or not isinstance(href, str) or _is_absolute(href):
        return resolve_href(href, location)  # type: ignore[arg-type]
    folder = os.path.relpath(os.path.dirname(location), input_dir.resolve()).replace(os.sep, "/")
    if folder.startswith("../") or folder == "..":
        raise HrefError(
            "the item lies outside the input folder (a symbolic link): no place under the assets root"
        )
    folder = "" if folder == "." else folder
    return under_assets_root(assets_root, folder, href)


def _is_absolute(href: str) -> bool:
    from urllib.parse import urlparse

    parsed = urlparse(href)
    return bool(parsed.scheme and len(parsed.scheme) > 1) or href.startswith("/")


def read_grid(path: str) -> core.Grid:
    import rasterio

    with rasterio.open(path) as ds:
        if ds.crs is None:
            raise ValueError("no CRS")
        return core.Grid(ds.crs.to_string(), tuple(ds.transform)[:6], (ds.height, ds.width))


def _short(exc: BaseException) -> str:
    text = redact(str(exc).strip().replace("\n", " ")) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


# ------------------------------------------------------------------------------------------------ composites


@dataclass(frozen=True)
class CompositeOptions:
    method: str
    period: tuple[dt.date, dt.date] | None
    dtype: str = "int16"
    memory_mb: int = 256
    workers: int = 2
    blocksize: int = 512
    compress: str = "ZSTD"
    level: int = 1
    quicklook: bool = True


def open_inputs(inputs: list[core.ProductInput]) -> list:
    """Every input's band 1 opened lazily with rioxarray, with what decodes it: (lazy DataArray, dtype, nodata,
    scale, offset) per input. Nothing is read yet; a window's :meth:`~xarray.DataArray.isel` reads only its pixels.

    ``lock=False``: rioxarray then gives every thread its own rasterio handle of each file (a thread-local
    ``URIManager``; GDAL handles are never shared between threads), so the compute threads read and decompress in
    parallel; its default lock serialises every read of every file behind one process-wide lock. ``cache=False``:
    nothing read is kept."""
    import rioxarray

    opened = []
    for p in inputs:
        da = rioxarray.open_rasterio(p.cog_path, mask_and_scale=False, lock=False, cache=False).isel(
            band=0, drop=True
        )
        nodata = da.rio.nodata
        scale = float(da.attrs.get("scale_factor", 1.0) or 1.0)
        offset = float(da.attrs.get("add_offset", 0.0) or 0.0)
        opened.append((da, str(da.dtype), nodata, scale, offset))
    return opened


def window_stack(
    opened: list, inputs: list[core.ProductInput], window: tuple[int, int, int, int], raw_int16: bool
):
    """The (time, y, x) :class:`xarray.DataArray` of one window across all inputs along a ``time`` coordinate (the
    dates), read now (this window's pixels only, in this thread): the inputs' raw int16 values when ``raw_int16``
    (:func:`core.int16_domain`), else float32 NDVI with NaN where invalid, each input decoded with its own nodata
    and scale (any encodings combine). The inputs' grids were checked equal (:func:`core.check_same_grid`).

    Plain reads into one array, not a dask graph per window: for the ~121 windows of a tile, building and running
    the graphs cost more than the reads (measured: 25-50 ms a window of 6 dates, the reads 35-40 ms)."""
    import pandas as pd
    import xarray as xr

    r0, r1, c0, c1 = window
    stack = np.empty((len(opened), r1 - r0, c1 - c0), dtype=np.int16 if raw_int16 else np.float32)
    for k, (da, _dtype, nodata, scale, offset) in enumerate(opened):
        values = da.isel(y=slice(r0, r1), x=slice(c0, c1)).values
        stack[k] = values if raw_int16 else core.decode_ndvi(values, nodata, scale, offset)
    times = pd.DatetimeIndex([pd.Timestamp(p.date) if p.date else pd.NaT for p in inputs], name="time")
    return xr.DataArray(stack, dims=("time", "y", "x"), coords={"time": times})


def chunk_side(blocksize: int, levels: int) -> int:
    """The side of the output chunks encoded and written at once: whole tiles at full resolution and at overview
    level 1 (twice the block), and a multiple of 2**levels, so that every chunk's overview pixels tile every
    level exactly."""
    return math.lcm(2 * blocksize, 2**levels)


def composite_tile(
    tile: str,
    inputs: list[core.ProductInput],
    opts: CompositeOptions,
    output_dir: Path,
    staging_root: Path,
    on_window: Callable[[int, int], None] | None = None,
) -> dict:
    """Compute and publish one tile's composite (COG, quicklook, STAC item, the item last). Returns a summary
    (stem, inputs, window side, seconds, statistics). Raises :class:`core.CompositeError` for inputs on
    different grids and :class:`BadInputs` when some inputs cannot be read (the caller drops them and retries).

    The inputs are opened lazily by rioxarray; the tile is cut into output chunks (whole tiles at full resolution
    and overview level 1, :func:`chunk_side`) computed on ``opts.workers`` threads with no barrier between them.
    In a chunk, each window (sized so that its stack across all dates fits the memory budget, split between the
    threads) is read into an xarray stack along time (:func:`window_stack`) and reduced by one numpy kernel
    (:func:`core.composite_encoded`: on the raw int16 values when every input is in the worker's encoding); then
    the chunk's statistics, its AVERAGE overviews (:func:`ndvi_worker.pyramid.band_overviews`) and its tiles,
    compressed in the same thread into a COG assembled directly (:class:`ndvi_worker.io.DirectCogSink`,
    band-interleaved: one tile per band, so a reader of the NDVI alone decompresses the NDVI alone), or for formats
    that writer does not handle, into staging GeoTIFFs that GDAL's COG driver compresses at the end
    (:class:`ndvi_worker.io.StagingRaster`; pixel-interleaved: GDAL 3.10's COG driver writes no other layout; the
    same pixels).
    ``on_window(rows, cols)`` is called for every window reduced."""
    import rasterio

    from ndvi_worker.pyramid import band_overviews, overview_count

    t0 = time.monotonic()
    grid = core.check_same_grid(inputs)
    dates = [p.date for p in inputs if p.date]
    start, end = opts.period or (min(dates), max(dates))
    days = [(p.date - start).days if p.date else 0 for p in inputs]
    bands = core.BANDS[opts.method]
    stem = core.composite_stem(tile, start, end, opts.method)
    nodata = INT16_NODATA if opts.dtype == "int16" else float("nan")
    levels = overview_count(grid.shape, opts.blocksize)
    chunk = chunk_side(opts.blocksize, levels)
    workers = max(1, opts.workers)
    side = min(
        chunk, core.window_side(len(inputs), opts.memory_mb * 2**20 // workers, blocksize=opts.blocksize)
    )
    while chunk % side:  # windows tile the chunks exactly
        side -= 16
    fmt = wio.OutputFormat(
        dtype=opts.dtype,
        compress=opts.compress,
        level=opts.level,
        predictor=None,
        blocksize=opts.blocksize,
        overview_resampling="AVERAGE",
    )
    tags = {
        "NDVI_COMPOSITE_METHOD": opts.method,
        "NDVI_PERIOD": f"{start.isoformat()}/{end.isoformat()}",
        "NDVI_DAY_BAND": "days since the period start" if opts.method == "max" else "none",
        "NDVI_SOURCE_ITEMS": ",".join(p.item_id for p in inputs)[:30000],
    }
    info = wio.BandInfo(
        href="",
        crs=rasterio.crs.CRS.from_string(grid.crs),
        transform=grid.transform,
        shape=grid.shape,
        dtype=opts.dtype,
        nodata=nodata,
        block_shape=(opts.blocksize, opts.blocksize),
    )
    opened = open_inputs(inputs)
    raw_int16 = core.int16_domain([o[1:] for o in opened], opts.dtype)
    rows, cols = grid.shape
    chunks = [(r0, c0) for r0 in range(0, rows, chunk) for c0 in range(0, cols, chunk)]
    tally = core.Tally()
    with wio.scratch_dir(staging_root, stem) as work:
        if wio.direct_cog_supported(fmt, grid.shape, len(bands)):
            sink = wio.DirectCogSink(work, info, fmt, tags, levels, chunk, bands=bands, interleave="band")
        else:
            sink = wio.StagingRaster(work, info, fmt, tags, levels, bands=bands)

        def run_chunk(r0: int, c0: int) -> core.Tally:
            # this chunk's windows one after the other, read and reduced in this thread: a thread holds one
            # window's stack at a time, and no thread waits for the others
            r1, c1 = min(rows, r0 + chunk), min(cols, c0 + chunk)
            block = np.empty((len(bands), r1 - r0, c1 - c0), dtype=opts.dtype)
            for a0, a1, b0, b1 in core.windows((r1 - r0, c1 - c0), side):
                window = (r0 + a0, r0 + a1, c0 + b0, c0 + b1)
                try:
                    stack = window_stack(opened, inputs, window, raw_int16)
                except Exception as exc:
                    raise _WindowUnreadable(window) from exc
                encoded = core.composite_encoded(stack, days, opts.method, opts.dtype, raw_int16)
                block[:, a0:a1, b0:b1] = encoded.values
                if on_window:
                    on_window(a1 - a0, b1 - b0)
            part = core.Tally()
            part.add_encoded(block, opts.dtype)
            sink.write_at(block, r0, c0)
            for level, overview in enumerate(band_overviews(block, nodata, levels), start=1):
                sink.write_at(overview, r0 >> level, c0 >> level, level)
            return part

        cog_name, png_name, json_name = f"{stem}.tif", f"{stem}.png", f"{stem}.json"
        try:
            pool = ThreadPoolExecutor(workers, thread_name_prefix="composite")
            try:
                for part in pool.map(run_chunk, *zip(*chunks, strict=True)):
                    tally.merge(part)
            except _WindowUnreadable as failed:
                pool.shutdown(cancel_futures=True)
                cause = failed.__cause__ or failed
                raise BadInputs(_find_bad_inputs(inputs, failed.window), cause) from cause
            finally:
                pool.shutdown()
                sink.close()
            sink.finish(work / cog_name, threads=workers)
        except BaseException:
            sink.abort()
            raise
        if opts.quicklook:
            wio.write_quicklook(work / cog_name, work / png_name)
        crs = rasterio.crs.CRS.from_string(grid.crs)
        item = core.composite_item(
            tile,
            start,
            end,
            opts.method,
            inputs,
            [_relative_href(p.item_path, output_dir) for p in inputs],
            grid_footprint(grid),
            grid,
            crs.to_epsg(),
            tally.summary(),
            opts.dtype,
            cog_name,
            (work / cog_name).stat().st_size,
            png_name if opts.quicklook else None,
            __version__,
        )
        (work / json_name).write_text(json.dumps(item, indent=2))
        output_dir.mkdir(parents=True, exist_ok=True)
        wio.publish(work / cog_name, path_under(output_dir, cog_name))
        if opts.quicklook:
            wio.publish(work / png_name, path_under(output_dir, png_name))
        wio.publish(work / json_name, path_under(output_dir, json_name))
    return {
        "tile": tile,
        "output": json_name,
        "inputs": len(inputs),
        "window": side,
        "seconds": round(time.monotonic() - t0, 3),
        "valid_fraction": tally.summary()["valid_fraction"],
    }


class _WindowUnreadable(RuntimeError):
    def __init__(self, window: tuple[int, int, int, int]):
        super().__init__(f"window {window} could not be read")
        self.window = window


class BadInputs(RuntimeError):
    def __init__(self, bad: list[tuple[core.ProductInput, str]], cause: BaseException):
        super().__init__(f"reading failed ({_short(cause)})")
        self.bad = bad
        self.cause = cause


def _find_bad_inputs(
    inputs: list[core.ProductInput], window: tuple[int, int, int, int]
) -> list[tuple[core.ProductInput, str]]:
    """Which inputs fail to read a window (a truncated or corrupt COG fails only when its blocks are read)."""
    import rasterio
    from rasterio.windows import Window

    r0, r1, c0, c1 = window
    bad = []
    for p in inputs:
        try:
            with rasterio.open(p.cog_path) as ds:
                for a0, a1, b0, b1 in core.windows((r1 - r0, c1 - c0), 2048):  # bounded memory
                    ds.read(1, window=Window(c0 + b0, r0 + a0, b1 - b0, a1 - a0))
        except Exception as exc:  # noqa: BLE001 - the reason is reported
            bad.append((p, _short(exc)))
    return bad


def grid_footprint(grid: core.Grid) -> dict:
    """The grid's outline in lon/lat (21 points a side), as a GeoJSON geometry split at the antimeridian."""
    from rasterio.warp import transform

    rows, cols = grid.shape
    a, _, c, _, e, f = grid.transform[:6]
    xs0, xs1 = c, c + a * cols
    ys0, ys1 = f, f + e * rows
    n = 21
    lin = [k / (n - 1) for k in range(n)]
    xs = [xs0 + (xs1 - xs0) * t for t in lin] + [xs1] * n + [xs1 - (xs1 - xs0) * t for t in lin] + [xs0] * n
    ys = [ys0] * n + [ys0 + (ys1 - ys0) * t for t in lin] + [ys1] * n + [ys1 - (ys1 - ys0) * t for t in lin]
    lons, lats = transform(grid.crs, "EPSG:4326", xs, ys)
    return core.footprint_geometry(list(zip(lons, lats, strict=False)))


def _item_href(path: str, out: Path, inputs: tuple[Path, str | None] | None) -> str:
    """The link from the output folder to an input item: under ``--inputs-href`` when given (and the item is in
    the input folder), else the relative path on this machine."""
    if inputs is not None and inputs[1]:
        rel = _relative_href(path, inputs[0])
        if not os.path.isabs(rel) and not rel.startswith(".."):
            return inputs[1] + Path(rel).as_posix()
    return _relative_href(path, out)


def _relative_href(path: str, base_dir: Path) -> str:
    try:
        return os.path.relpath(path, base_dir.resolve())
    except ValueError:
        return path


def run_composite(
    input_dir: Path, output_dir: Path, opts: CompositeOptions, staging_dir: Path | None = None
) -> tuple[ProductsReport, int]:
    """Composite every tile found under ``input_dir``. Returns the report and the exit status (0 all done,
    1 when an input or a tile failed: the rest is written anyway)."""
    report = ProductsReport()
    products, problems = find_products(input_dir)
    report.failed.extend(problems)
    for p in problems:
        log.error("skipping input %s: %s", p.source, p.error)
    selected = []
    for p in products:
        if not core.in_period(p.date, opts.period):
            report.skipped.append({"source": p.item_id, "reason": "outside the period"})
            continue
        if p.tile is None:
            report.failed.append(Problem(p.item_id, "no MGRS tile in its item (grid:code, mgrs:*) or id"))
            continue
        selected.append(p)
    staging_root = staging_dir or output_dir.parent / f".ndvi-staging-{current_host()}"
    groups = core.group_by_tile(selected)
    log.info(
        "%d products in %d tiles (%d skipped, %d unreadable)",
        len(selected),
        len(groups),
        len(report.skipped),
        len(problems),
    )
    for tile, inputs in groups.items():
        while inputs:
            try:
                summary = composite_tile(tile, inputs, opts, output_dir, staging_root)
            except core.CompositeError as exc:
                report.failed.append(Problem(f"tile {tile}", str(exc)))
                log.error("tile %s: %s", tile, exc)
            except BadInputs as exc:
                if not exc.bad:  # not an input's fault: the tile fails
                    report.failed.append(Problem(f"tile {tile}", str(exc)))
                    log.error("tile %s: %s", tile, exc)
                    break
                for p, why in exc.bad:
                    report.failed.append(Problem(p.item_path, f"unreadable COG {p.cog_path}: {why}"))
                    log.error("tile %s: skipping unreadable input %s: %s", tile, p.item_id, why)
                dropped = {id(p) for p, _ in exc.bad}
                inputs = [p for p in inputs if id(p) not in dropped]
                continue
            except Exception as exc:  # noqa: BLE001 - one tile's failure never stops the others
                report.failed.append(Problem(f"tile {tile}", _short(exc)))
                log.exception("tile %s failed", tile)
            else:
                report.done.append(summary)
                log.info(
                    "tile %s: %s from %d inputs in %.1fs",
                    tile,
                    summary["output"],
                    len(inputs),
                    summary["seconds"],
                )
            break
    _remove_if_empty(staging_root)
    _write_report(report, output_dir, "composite")
    return report, 1 if report.failed else 0


def current_host() -> str:
    """The contract's host name (``algo-1`` under SageMaker, from resourceconfig.json), else the machine's: the
    same name stage 1 gives its report and staging folder."""
    return ProcessingPaths.from_env().current_host()


def _remove_if_empty(folder: Path) -> None:
    """Remove the staging root only when empty: each tile's scratch folder is already gone, and another run's (or
    the user's own files in a --staging-dir) are never touched."""
    with contextlib.suppress(OSError):
        folder.rmdir()


def _write_report(report: ProductsReport, output_dir: Path, name: str) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    folder = output_dir / "_reports"
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}-{current_host()}.json"
    tmp = folder / f".{path.name}.tmp"
    tmp.write_text(json.dumps(redact_obj(report.to_dict()), indent=2))
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------ mosaic


@dataclass(frozen=True)
class MosaicOptions:
    resolution: float = 0.01
    bbox: tuple[float, float, float, float] | None = None
    dtype: str = "int16"
    workers: int = 2
    blocksize: int = 512
    png_max_width: int = 4096
    viewer: bool = True
    assets_root: str | None = None  # checked s3:// or https:// root the input folder mirrors (read in place)
    # checked base of the links to the inputs where both folders are published (safety.check_inputs_href);
    # None: the path from the output folder to the input folder on this machine
    inputs_href: str | None = None


@dataclass
class PlacedInput:
    product: core.ProductInput
    bounds: tuple[float, float, float, float]  # lon/lat, west > east across the antimeridian


def lonlat_bounds(product: core.ProductInput) -> tuple[float, float, float, float]:
    from rasterio.warp import transform_bounds

    grid = product.grid
    rows, cols = grid.shape
    a, _, c, _, e, f = grid.transform[:6]
    left, right = sorted((c, c + a * cols))
    bottom, top = sorted((f, f + e * rows))
    return tuple(transform_bounds(grid.crs, "EPSG:4326", left, bottom, right, top, densify_pts=21))


def run_mosaic(
    input_dir: Path, output_dir: Path, opts: MosaicOptions, staging_dir: Path | None = None
) -> tuple[ProductsReport, int, dict]:
    """Build ``mosaic_ndvi.tif``, ``mosaic_ndvi.png``, ``collection.json`` and ``index.html`` from every product
    under ``input_dir``. Returns the report, the exit status and the mosaic's statistics."""
    import rasterio

    report = ProductsReport()
    if opts.assets_root:
        wio.configure_gdal(s3=opts.assets_root.startswith("s3://"))
    products, problems = find_products(input_dir, opts.assets_root)
    report.failed.extend(problems)
    for p in problems:
        log.error("skipping input %s: %s", p.source, p.error)
    # a composite in the input already holds its source scenes: do not count them twice
    covered = {
        s
        for p in products
        if p.is_composite
        for s in _str_list((p.item.get("properties") or {}).get("earthmon:source_items"))
    }
    placed: list[PlacedInput] = []
    for p in products:
        if not p.is_composite and p.item_id in covered:
            report.skipped.append({"source": p.item_id, "reason": "its composite is in the input"})
            continue
        try:
            placed.append(PlacedInput(p, lonlat_bounds(p)))
        except Exception as exc:  # noqa: BLE001
            report.failed.append(Problem(p.item_path, f"cannot place it on the globe: {_short(exc)}"))
    bbox = opts.bbox or mcore.union_bbox([pl.bounds for pl in placed])
    output_dir.mkdir(parents=True, exist_ok=True)
    stats: dict = {"inputs": len(placed), "overview_reads": 0, "full_resolution_reads": 0}
    if bbox is None:
        log.warning("no NDVI products found under %s: nothing to mosaic", input_dir)
        _write_report(report, output_dir, "mosaic")
        return report, 1 if report.failed else 0, stats
    grid = mcore.grid_for(bbox, opts.resolution)
    stats["grid"] = {
        "width": grid.width,
        "height": grid.height,
        "bounds": [grid.west, grid.south, grid.east, grid.north],
    }
    staging_root = staging_dir or output_dir.parent / f".ndvi-staging-{current_host()}"
    t0 = time.monotonic()
    with wio.scratch_dir(staging_root, "mosaic") as work:
        accumulator = work / "sum_count.tif"
        acc_profile = {
            "driver": "GTiff",
            "width": grid.width,
            "height": grid.height,
            "count": 2,
            "dtype": "float32",
            "crs": "EPSG:4326",
            "transform": rasterio.Affine(*grid.transform),
            "tiled": True,
            "blockxsize": 256,
            "blockysize": 256,
            "compress": "NONE",
            "interleave": "band",
            "BIGTIFF": "YES",
            "SPARSE_OK": "TRUE",
        }
        with rasterio.open(accumulator, "w+", **acc_profile) as acc:
            for pl in placed:
                if not mcore.windows_for(grid, pl.bounds):
                    report.skipped.append(
                        {"source": pl.product.item_id, "reason": "outside the mosaic's bbox"}
                    )
                    continue
                try:
                    level = _accumulate_input(acc, grid, pl, opts)
                except Exception as exc:  # noqa: BLE001 - reported, the rest goes on
                    report.failed.append(Problem(pl.product.item_path, f"cannot read its COG: {_short(exc)}"))
                    log.error("skipping %s: %s", pl.product.item_id, _short(exc))
                    continue
                key = "full_resolution_reads" if level is None else "overview_reads"
                stats[key] += 1
                report.done.append({"source": pl.product.item_id, "overview_level": level})
        stats["accumulate_seconds"] = round(time.monotonic() - t0, 3)
        cog = work / "mosaic_ndvi.tif"
        stats.update(_finish_mosaic(accumulator, work, cog, grid, opts))
        accumulator.unlink()
        png = work / "mosaic_ndvi.png"
        map_shape = write_mosaic_png(cog, png, opts.png_max_width)
        wio.publish(cog, output_dir / "mosaic_ndvi.tif")
        wio.publish(png, output_dir / "mosaic_ndvi.png")
    _remove_if_empty(staging_root)
    included = [pl.product for pl in placed if any(d["source"] == pl.product.item_id for d in report.done)]
    report.failed.extend(
        write_collection_and_viewer(
            included, output_dir, grid, map_shape, opts.viewer, inputs=(input_dir, opts.inputs_href)
        )
    )
    stats["seconds"] = round(time.monotonic() - t0, 3)
    _write_report(report, output_dir, "mosaic")
    return report, 1 if report.failed else 0, stats


def _accumulate_input(acc, grid: mcore.MosaicGrid, pl: PlacedInput, opts: MosaicOptions) -> int | None:
    """Reproject one input, read from an overview level, into its windows of the accumulator (sum, count)."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.warp import reproject
    from rasterio.windows import Window

    windows = mcore.windows_for(grid, pl.bounds)
    path = pl.product.cog_path
    with rasterio.open(path) as full:
        factors = full.overviews(1)
        pixel_m = abs(full.transform.a)
        nodata = full.nodata
        scale = (full.scales[0] or 1.0) if full.scales else 1.0
        offset = (full.offsets[0] or 0.0) if full.offsets else 0.0
    max_lat = max(abs(pl.bounds[1]), abs(pl.bounds[3]))
    level = mcore.overview_level_for(pixel_m, factors, mcore.target_pixel_m(opts.resolution, max_lat))
    if level is None:
        log.warning("%s has no overviews: reading its full resolution", path)
    kwargs = {} if level is None else {"overview_level": level}
    with rasterio.open(path, **kwargs) as src:
        source = src.read(1)
        src_transform, src_crs = src.transform, src.crs
    decoded = core.decode_ndvi(source, nodata, scale, offset)
    del source
    for r0, r1, c0, c1 in windows:
        values = np.full((r1 - r0, c1 - c0), np.nan, dtype="float32")
        dst_transform = rasterio.Affine(*grid.transform) * rasterio.Affine.translation(c0, r0)
        reproject(
            decoded,
            values,
            src_transform=src_transform,
            src_crs=src_crs,
            src_nodata=np.nan,
            dst_transform=dst_transform,
            dst_crs="EPSG:4326",
            dst_nodata=np.nan,
            resampling=Resampling.average,
            num_threads=opts.workers,
        )
        window = Window(c0, r0, c1 - c0, r1 - r0)
        total, count = acc.read(window=window)
        mcore.accumulate(total, count, values)
        acc.write(np.stack([total, count]), window=window)
    return level


def _finish_mosaic(
    accumulator: Path, work: Path, cog: Path, grid: mcore.MosaicGrid, opts: MosaicOptions
) -> dict:
    """sum / count block by block into the output encoding, then GDAL's COG driver."""
    import rasterio
    from rasterio.windows import Window

    nodata = INT16_NODATA if opts.dtype == "int16" else float("nan")
    staging = work / "mosaic_full.tif"
    profile = {
        "driver": "GTiff",
        "width": grid.width,
        "height": grid.height,
        "count": 1,
        "dtype": opts.dtype,
        "crs": "EPSG:4326",
        "transform": rasterio.Affine(*grid.transform),
        "nodata": nodata,
        "tiled": True,
        "blockxsize": opts.blocksize,
        "blockysize": opts.blocksize,
        "compress": "NONE",
        "BIGTIFF": "IF_SAFER",
    }
    covered = 0
    with rasterio.open(accumulator) as acc, rasterio.open(staging, "w", **profile) as dst:
        dst.set_band_description(1, "ndvi")
        dst.update_tags(
            NDVI_MOSAIC="mean of the inputs covering each pixel", NDVI_RESOLUTION_DEG=str(opts.resolution)
        )
        if opts.dtype == "int16":
            dst.scales = (1.0 / INT16_SCALE,)
            dst.offsets = (0.0,)
        b = opts.blocksize
        for r0 in range(0, grid.height, b):
            for c0 in range(0, grid.width, b):
                window = Window(c0, r0, min(b, grid.width - c0), min(b, grid.height - r0))
                total, count = acc.read(window=window)
                mean = mcore.finish(total, count)
                covered += int((count > 0).sum())
                dst.write(to_int16(mean) if opts.dtype == "int16" else mean, 1, window=window)
    fmt = wio.OutputFormat(
        dtype=opts.dtype,
        compress="ZSTD",
        level=1,
        predictor=None,
        blocksize=opts.blocksize,
        overview_resampling="AVERAGE",
    )
    wio.write_cog(staging, cog, fmt, threads=opts.workers)
    staging.unlink()
    return {"covered_fraction": covered / (grid.width * grid.height)}


def write_mosaic_png(cog: Path, dst: Path, max_width: int) -> tuple[int, int, int, int]:
    """The mosaic as a colour PNG (at most ``max_width`` pixels wide, read from the COG's overviews; no-data
    transparent) with a colour legend strip below. Returns (map height, map width, PNG height, PNG width)."""
    import rasterio
    import rasterio.errors
    from rasterio.enums import Resampling

    with rasterio.open(cog) as ds:
        factor = max(1.0, ds.width / max_width)
        shape = (max(1, round(ds.height / factor)), max(1, round(ds.width / factor)))
        data = ds.read(1, out_shape=shape, masked=True, resampling=Resampling.average).astype("float32")
        scale = ds.scales[0] or 1.0
    rgba_map = wio.colorize_ndvi(data.filled(np.nan) * scale)
    legend = mcore.legend_strip(max(shape[1], 240), wio.colorize_ndvi)
    width = legend.shape[2]
    canvas = np.zeros((4, shape[0] + legend.shape[1], width), dtype=np.uint8)
    canvas[:, : shape[0], : shape[1]] = rgba_map
    canvas[:, shape[0] :, :] = legend
    _write_png(canvas, dst)
    return shape[0], shape[1], canvas.shape[1], canvas.shape[2]


def _write_png(rgba: np.ndarray, dst: Path) -> None:
    import rasterio
    import rasterio.errors
    import rasterio.shutil

    profile = {
        "driver": "GTiff",
        "width": rgba.shape[2],
        "height": rgba.shape[1],
        "count": 4,
        "dtype": "uint8",
    }
    with warnings.catch_warnings(), rasterio.MemoryFile() as mem:
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with mem.open(**profile) as tmp:
            tmp.write(rgba)
            rasterio.shutil.copy(tmp, str(dst), driver="PNG")
    aux = Path(str(dst) + ".aux.xml")
    if aux.exists():
        aux.unlink()


# ------------------------------------------------------------------------------------------------ collection, viewer


def write_collection_and_viewer(
    products: list[core.ProductInput],
    output_dir: Path,
    grid: mcore.MosaicGrid | None,
    map_shape: tuple[int, int, int, int] | None,
    viewer: bool = True,
    inputs: tuple[Path, str | None] | None = None,
) -> list[Problem]:
    """``collection.json`` (every product's item linked, relative to the output folder) and ``index.html``.
    ``inputs`` = (the input folder, the checked ``--inputs-href``): with an href, an item's link is that base + its
    path in the input folder (where the two folders are published, e.g. side by side in S3) instead of the path
    between the folders on this machine. Returns the products left out of the viewer (a field it cannot draw): each
    is reported, the page is written."""
    from ndvi_worker.viewer import render_viewer

    out = output_dir.resolve()
    entries = [(p.item, _item_href(p.item_path, out, inputs)) for p in products]
    assets = {
        "mosaic": {
            "href": "./mosaic_ndvi.tif",
            "type": COG_MEDIA,
            "title": "NDVI mosaic (EPSG:4326)",
            "roles": ["data"],
        },
        "mosaic_png": {
            "href": "./mosaic_ndvi.png",
            "type": "image/png",
            "title": "NDVI mosaic with legend",
            "roles": ["overview"],
        },
    }
    if viewer:
        assets["viewer"] = {
            "href": "./index.html",
            "type": "text/html",
            "title": "Offline map viewer",
            "roles": ["metadata"],
        }
    text = json.dumps(
        build_collection(
            entries,
            assets,
            "NDVI from Sentinel-2 L2A: per-scene outputs, temporal composites and their mosaic.",
        ),
        indent=2,
    )
    tmp = out / ".collection.json.tmp"
    tmp.write_text(text)
    os.replace(tmp, out / "collection.json")
    if not viewer:
        return []
    features, problems = [], []
    for p, (_, href) in zip(products, entries, strict=False):
        try:
            features.append(viewer_feature(p.item, href, os.path.dirname(href)))
        except Exception as exc:  # noqa: BLE001 - one odd item never costs the page
            problems.append(Problem(p.item_path, f"left out of the viewer: {_short(exc)}"))
            log.error("viewer: leaving out %s: %s", p.item_id, _short(exc))
    data = {
        "features": features,
        "mosaic": None
        if grid is None or map_shape is None
        else {
            "href": "mosaic_ndvi.png",
            "cog": "mosaic_ndvi.tif",
            "bounds": [grid.west, grid.south, grid.east, grid.north],
            "map_height": map_shape[0],
            "map_width": map_shape[1],
            "png_height": map_shape[2],
            "png_width": map_shape[3],
            "resolution": grid.resolution,
        },
        "collection": "collection.json",
        "generated": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    tmp = out / ".index.html.tmp"
    tmp.write_text(render_viewer(data))
    os.replace(tmp, out / "index.html")
    return problems


def _str_list(value) -> list[str]:
    """The strings of a list field (``earthmon:source_items``); anything else in it is ignored."""
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def is_finite(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)
