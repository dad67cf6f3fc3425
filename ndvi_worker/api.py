"""A small public Python API for other pipelines: a scene's NDVI, or a finished output, as a lazy, georeferenced
:class:`xarray.DataArray` (dims ``y``/``x``, float32 NDVI, NaN where masked or nodata, rioxarray CRS and transform,
dask-backed: nothing is read until ``.compute()``, ``.load()``, a plot or ``.rio.to_raster``).

* :func:`open_scene_ndvi` computes NDVI from a Sentinel-2 L2A STAC item with the worker's own rules, not a copy of
  them: the item is parsed and its hrefs resolved and checked by :func:`ndvi_worker.stac.scene_from_item` (asset
  selection, BOA offset by processing baseline, href allowlist), each band is opened through
  :func:`ndvi_worker.io.gdal_path` (the GDAL path built from a validated href, symbolic links checked) with the
  GTiff driver only, the grids are checked by :func:`ndvi_worker.run.check_grids`, and every chunk goes through
  :func:`ndvi_worker.run.scl_inputs` (SCL repeated 2 x 2 onto the 10 m grid) and :func:`ndvi_worker.ndvi.ndvi_core`
  then :func:`ndvi_worker.ndvi.encode_float32`, exactly as the worker's chunk task: the values are bit-identical to
  the worker's ``--dtype float32`` output.
* :func:`open_ndvi` opens a finished output (``<id>_ndvi.tif`` in int16 x 10000 or float32, a composite's band 1,
  the mosaic) decoded by :func:`ndvi_worker.composite.decode_ndvi`, as the composite and mosaic commands decode their
  inputs.

Every refusal at open time (not a STAC item, a missing asset, an href the allowlist refuses, a band that cannot be
opened, grids that do not combine) raises :class:`ndvi_worker.stac.ItemError` (a ``ValueError``) whose message says
what is wrong. Errors while reading pixels (a network failure during ``.compute()``) come from rasterio.
See docs/python-api.md.
"""

from __future__ import annotations

import math
import os
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ndvi_worker.ndvi import DEFAULT_MASK_CLASSES
from ndvi_worker.stac import ItemError

__all__ = [
    "DEFAULT_CHUNK",
    "DEFAULT_MASK_CLASSES",
    "ItemError",
    "composite_ndvi",
    "open_ndvi",
    "open_scene_ndvi",
]

#: Default chunk side in 10 m pixels: the worker's default ``--chunk-size`` (a multiple of the COG blocks).
DEFAULT_CHUNK = 1024

Chunks = int | tuple[int, int] | Mapping[str, int]


# ----------------------------------------------------------------------------------------------- public


def open_scene_ndvi(
    item: Any,
    *,
    chunks: Chunks = DEFAULT_CHUNK,
    mask_classes: Iterable[int] = DEFAULT_MASK_CLASSES,
    boa_offset: str = "auto",
    location: str | os.PathLike | None = None,
    configure_gdal: bool = True,
):
    """A scene's NDVI as a lazy float32 :class:`xarray.DataArray` on the 10 m grid, NaN where masked.

    ``item``: a STAC item dict (e.g. one feature of a STAC API search response), a :class:`pystac.Item`, or the
    path / ``https://`` URL of its JSON. Relative asset hrefs resolve against ``location`` (default: where the
    item was read from, or a pystac item's self href). ``chunks``: the dask chunk side in 10 m pixels (an int, a
    ``(y, x)`` pair or ``{"y": .., "x": ..}``), rounded up to a multiple of the SCL factor (2). ``mask_classes``:
    the SCL classes masked (SCL 0 always is), as ``--mask-classes``; ``boa_offset``: ``auto`` / ``apply`` /
    ``skip``, as ``--boa-offset``. ``configure_gdal`` sets the worker's GDAL defaults
    (:func:`ndvi_worker.io.configure_gdal`: only variables not set already) in the process environment, where GDAL
    reads them in every thread.

    Opening reads the three bands' headers (their grids are checked) and no pixel. The result has the red band's
    CRS and transform (``da.rio.crs``, ``da.rio.transform()``), nodata NaN and ``attrs``: ``item_id``,
    ``source_item``, ``mask_classes``, ``boa_add_offset_dn``, ``boa_offset_reason``, ``scl_resampling``.
    Raises :class:`ItemError` when the item, an href or a band's grid is refused.
    """
    from ndvi_worker import io as wio
    from ndvi_worker.config import parse_mask_classes
    from ndvi_worker.stac import scene_from_item

    doc, where = _load_item(item)
    if location is not None:
        where = str(location)
    classes = _mask_classes(mask_classes, parse_mask_classes)
    scene = scene_from_item(doc, where, boa_offset)  # id, assets, jp2, offset rule, href allowlist
    if configure_gdal:
        wio.configure_gdal(s3=any(h.startswith("s3:") for h in (scene.red, scene.nir, scene.scl)))
    cy, cx = _chunk_sides(chunks)
    red = _open_band(scene.red, "red", cy, cx)
    nir = _open_band(scene.nir, "nir", cy, cx)
    scl = _open_band(scene.scl, "scl", -(-cy // 2), -(-cx // 2))
    factor = _check_grids(red, nir, scl)
    if factor is None:  # not nested: nearest-neighbour onto the 10 m grid, as the worker's ResampledReader
        scl = _open_resampled_scl(scene.scl, red, cy, cx)
        scl_resampling = "nearest"
    else:
        scl_resampling = "block-repeat" if factor > 1 else "identity"
    data = _ndvi_blocks(red, nir, scl, factor, cy, cx, scene.offset.add_dn, classes, scene.item_id)
    attrs = {
        "long_name": "ndvi",
        "item_id": scene.item_id,
        "source_item": where if where is not None else scene.item_id,
        "mask_classes": ",".join(map(str, classes)),
        "boa_add_offset_dn": scene.offset.add_dn,
        "boa_offset_reason": scene.offset.reason,
        "scl_resampling": scl_resampling,
    }
    return _georeferenced(data, red, attrs)


def open_ndvi(
    path_or_href: str | os.PathLike,
    *,
    chunks: Chunks = DEFAULT_CHUNK,
    band: int = 1,
    configure_gdal: bool = True,
):
    """A finished NDVI raster as a lazy float32 :class:`xarray.DataArray`, NaN at nodata.

    ``path_or_href``: a local path, ``https://`` or ``s3://`` URL of the worker's ``<id>_ndvi.tif`` (int16 x 10000
    with nodata -32768, or float32 with nodata NaN), a composite (band 1 is the NDVI) or the mosaic; the same href
    rules as the worker's inputs apply (:func:`ndvi_worker.io.gdal_path`). Each value is decoded with the file's
    own scale, offset and nodata (:func:`ndvi_worker.composite.decode_ndvi`, as the products decode their inputs).
    ``attrs``: ``item_id``, ``source_item`` (the worker's ``NDVI_SOURCE_ITEM`` tag, or a composite's source ids),
    ``scale``, ``add_offset``, ``encoded_nodata``, ``encoded_dtype``, ``href`` and the file's ``NDVI_*`` tags.
    Raises :class:`ItemError` when the href is refused or the file cannot be opened.
    """
    from ndvi_worker import io as wio
    from ndvi_worker.composite import decode_ndvi

    href = _href_of(path_or_href)
    cy, cx = _chunk_sides(chunks)
    if configure_gdal:
        wio.configure_gdal(s3=href.startswith("s3:"))
    try:
        with wio.open_raster(href) as ds:
            if not 1 <= band <= ds.count:
                raise ItemError(f"{_shown(href)} has {ds.count} band(s); band {band} does not exist")
            nodata = ds.nodatavals[band - 1]
            scale = float(ds.scales[band - 1] or 1.0)
            offset = float(ds.offsets[band - 1] or 0.0)
            tags = {k: v for k, v in ds.tags().items() if k.startswith("NDVI_")}
            encoded = ds.dtypes[band - 1]
    except ItemError:
        raise
    except Exception as exc:  # noqa: BLE001 - SceneError (refused href) or rasterio's (unreadable file)
        raise ItemError(f"cannot open {_shown(href)}: {_short(exc)}") from None
    raw = _open_band(href, "ndvi", cy, cx, band=band)
    data = raw.data.map_blocks(
        decode_ndvi,
        nodata,
        scale,
        offset,
        dtype="float32",
        meta=np.empty((0, 0), dtype="float32"),
        name=f"ndvi-decode-{raw.data.name}",
    )
    stem = Path(str(href).split("?")[0]).name
    item_id = tags.get("NDVI_SOURCE_ITEM") or (
        stem[: -len("_ndvi.tif")] if stem.endswith("_ndvi.tif") else stem
    )
    attrs = {
        "long_name": "ndvi",
        "item_id": item_id,
        "source_item": tags.get("NDVI_SOURCE_ITEM") or tags.get("NDVI_SOURCE_ITEMS"),
        "scale": scale,
        "add_offset": offset,
        "encoded_nodata": nodata,
        "encoded_dtype": encoded,
        "href": href,
        **tags,
    }
    return _georeferenced(data, raw, {k: v for k, v in attrs.items() if v is not None})


def composite_ndvi(ndvi: Iterable[Any], method: str = "max", days: Iterable[int] | None = None):
    """The temporal composite of NDVI arrays on one grid, lazily: dask-backed in, dask-backed out.

    ``ndvi``: (y, x) float32 NDVI DataArrays with NaN where there is no valid observation, on the same grid (same
    shape, CRS and transform), e.g. :func:`open_ndvi` of a tile's per-date outputs or :func:`open_scene_ndvi` of its
    items. They are stacked along a new ``time`` dimension and each spatial chunk is reduced over all dates at once
    by the composite command's float kernel (:func:`ndvi_worker.composite.composite_stack`; the command reduces
    inputs in its own int16 encoding on their raw values, where a mean or median can differ by one encoding step,
    1e-4, and writes nodata where this returns NaN or -1). ``method``: ``max``
    (greenest pixel), ``median`` or ``mean``. ``days``: each array's day since the period start (default 0, 1, ...):
    what ``day`` reports for ``max``. Returns an :class:`xarray.Dataset` on the inputs' grid (rioxarray CRS and
    transform): ``ndvi`` (float32, NaN where no observation), ``count`` (int16, valid observations) and, for
    ``max``, ``day`` (int16, -1 where no observation). Nothing is read until it is computed. Raises
    :class:`ItemError` for arrays that are not on one grid, and ``ValueError`` for an unknown method.
    """
    import xarray as xr

    from ndvi_worker.composite import check_method, composite_stack

    if isinstance(ndvi, xr.DataArray):
        raise ItemError("give a list of (y, x) NDVI arrays, one per date, not one array")
    arrays = list(ndvi)
    check_method(method)
    if not arrays:
        raise ItemError("composite needs at least one NDVI array")
    for k, da in enumerate(arrays):
        if not isinstance(da, xr.DataArray) or tuple(da.dims) != ("y", "x"):
            dims = tuple(da.dims) if isinstance(da, xr.DataArray) else type(da).__name__
            raise ItemError(
                f"array {k} has dims {dims}: give (y, x) NDVI arrays (open_ndvi, open_scene_ndvi; a rioxarray "
                "(band, y, x) array: select its band first, e.g. da.sel(band=1, drop=True))"
            )
    when = list(range(len(arrays))) if days is None else [int(d) for d in days]
    if len(when) != len(arrays):
        raise ItemError(f"{len(when)} day(s) for {len(arrays)} array(s): give one day per array")
    if any(not 0 <= d <= 32766 for d in when):
        raise ItemError(f"days must be from 0 to 32766 (days since the period start), got {when}")
    first = arrays[0]
    for k, da in enumerate(arrays[1:], start=1):
        if (
            da.shape != first.shape
            or da.rio.crs != first.rio.crs
            or da.rio.transform() != first.rio.transform()
        ):
            raise ItemError(
                f"array {k} is not on the grid of array 0 ({da.shape}, {da.rio.crs}, {tuple(da.rio.transform())[:6]}"
                f" vs {first.shape}, {first.rio.crs}, {tuple(first.rio.transform())[:6]}): composite one tile's "
                "arrays at a time"
            )
    stack = xr.concat(
        [da.astype("float32") for da in arrays], dim="time", coords="minimal", compat="override"
    )
    reduced = composite_stack(stack, when, method)
    reduced = reduced.assign_coords({k: first.coords[k] for k in ("y", "x") if k in first.coords})
    reduced = reduced.rio.write_crs(first.rio.crs).rio.write_transform(first.rio.transform())
    reduced.attrs.update(method=method, days=when)
    return reduced


# ----------------------------------------------------------------------------------------------- items


def _load_item(item: Any) -> tuple[dict, str | None]:
    """The item dict and where it was read from (relative hrefs resolve against it)."""
    if isinstance(item, dict):
        return item, None
    if hasattr(item, "to_dict") and hasattr(item, "get_self_href"):  # a pystac.Item
        return item.to_dict(), item.get_self_href()
    if isinstance(item, str | os.PathLike):
        text = str(item)
        if text.startswith(("http://", "https://")):
            return _one_item(_fetch_json(text), text), text
        if "://" in text:
            raise ItemError(
                f"cannot read an item from {_shown(text)}: give a local path, an http(s):// URL or the item dict "
                "(e.g. read it with pystac.Item.from_file and pass it)"
            )
        path = Path(text).expanduser().absolute()
        return _one_item(_read_json(path), str(path)), str(path)
    raise ItemError(
        f"item must be a STAC item dict, a pystac.Item or the path/URL of its JSON, not {type(item).__name__}"
    )


def _read_json(path: Path) -> str:
    from ndvi_worker.discover import MAX_DOCUMENT_BYTES

    try:
        with path.open("rb") as f:
            raw = f.read(MAX_DOCUMENT_BYTES + 1)
    except OSError as exc:
        raise ItemError(f"cannot read the item {_shown(str(path))}: {exc.strerror or exc}") from None
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise ItemError(
            f"the item {_shown(str(path))} is larger than {MAX_DOCUMENT_BYTES >> 20} MiB (not read)"
        )
    return raw.decode("utf-8", errors="replace")


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Redirects are followed only to URLs the href rules accept (no metadata address, no other scheme)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        from ndvi_worker.safety import HrefError, check_href

        try:
            if check_href(newurl) != "http":
                raise HrefError("a redirect may only lead to another http(s):// URL")
        except (HrefError, ValueError) as exc:
            raise ItemError(
                f"refused redirect of {_shown(req.full_url)} to {_shown(newurl)}: {exc}"
            ) from None
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _fetch_json(url: str) -> str:
    from ndvi_worker.discover import MAX_DOCUMENT_BYTES
    from ndvi_worker.safety import HrefError, check_href

    try:
        check_href(url)  # host rules: no link-local / metadata address, ...
    except (HrefError, ValueError) as exc:
        raise ItemError(f"refused item URL {_shown(url)}: {exc}") from None
    opener = urllib.request.build_opener(_CheckedRedirects)
    try:
        with opener.open(
            urllib.request.Request(url, headers={"Accept": "application/json"}), timeout=60
        ) as r:
            raw = r.read(MAX_DOCUMENT_BYTES + 1)
    except ItemError:
        raise
    except Exception as exc:  # noqa: BLE001 - HTTP and network errors
        raise ItemError(f"cannot fetch the item {_shown(url)}: {_short(exc)}") from None
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise ItemError(f"the item at {_shown(url)} is larger than {MAX_DOCUMENT_BYTES >> 20} MiB")
    return raw.decode("utf-8", errors="replace")


def _one_item(text: str, where: str) -> dict:
    """The worker's own parsing of an input document (nesting and size caps); exactly one item expected."""
    from ndvi_worker.discover import parse_document

    entries = parse_document(text, where, where, lines=False)
    if entries is None:
        raise ItemError(f"{_shown(where)} holds no STAC item")
    if entries[0].error:
        raise ItemError(f"{_shown(where)}: {entries[0].error}")
    if len(entries) != 1:
        raise ItemError(
            f"{_shown(where)} holds {len(entries)} items; pass one of them (e.g. doc['features'][0]) as a dict"
        )
    return entries[0].item  # type: ignore[return-value]


def _mask_classes(classes: Iterable[int] | str, parse) -> tuple[int, ...]:
    try:
        if isinstance(classes, str):
            return parse(classes)
        out = tuple(int(c) for c in classes)
    except (TypeError, ValueError) as exc:
        raise ItemError(f"mask_classes must be SCL classes 0-255 (e.g. (0, 1, 3, 8, 9, 10)): {exc}") from None
    if any(not 0 <= c <= 255 for c in out):
        raise ItemError(f"mask_classes must be SCL classes 0-255, not {list(out)}")
    return out


# ----------------------------------------------------------------------------------------------- rasters


def _chunk_sides(chunks: Chunks) -> tuple[int, int]:
    if isinstance(chunks, Mapping):
        sides = (chunks.get("y"), chunks.get("x"))
    elif isinstance(chunks, int) and not isinstance(chunks, bool):
        sides = (chunks, chunks)
    elif isinstance(chunks, tuple | list) and len(chunks) == 2:
        sides = tuple(chunks)
    else:
        raise ValueError(f"chunks must be an int, a (y, x) pair or {{'y': .., 'x': ..}}, not {chunks!r}")
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 2 for s in sides):
        raise ValueError(f"chunk sides must be integers >= 2, not {chunks!r}")
    return -(-sides[0] // 2) * 2, -(-sides[1] // 2) * 2  # whole SCL pixels per chunk


def _href_of(path_or_href: str | os.PathLike) -> str:
    text = os.fspath(path_or_href)
    if "://" in text or text.startswith("/"):
        return text
    return str(Path(text).expanduser().absolute())


def _open_band(href: str, band_name: str, cy: int, cx: int, band: int = 1):
    """Band ``band`` of an href opened lazily with rioxarray (dask chunks ``cy`` x ``cx``, raw values), through
    the worker's href checks and with the GTiff driver only. Reads the header, no pixel."""
    import rioxarray

    from ndvi_worker import io as wio

    try:
        path = wio.gdal_path(href)  # validated again; a local path's real path is checked (symbolic links)
        da = rioxarray.open_rasterio(
            path, chunks={"band": 1, "y": cy, "x": cx}, mask_and_scale=False, lock=None, driver="GTiff"
        )
    except Exception as exc:  # noqa: BLE001 - SceneError (refused) or rasterio's (missing, not a GeoTIFF...)
        raise ItemError(f"cannot open the {band_name} band {_shown(href)}: {_short(exc)}") from None
    return da.isel(band=band - 1, drop=True)


def _info(da, href: str):
    from ndvi_worker import io as wio

    return wio.BandInfo(
        href=href,
        crs=da.rio.crs,
        transform=tuple(da.rio.transform())[:6],
        shape=(da.sizes["y"], da.sizes["x"]),
        dtype=str(da.dtype),
        nodata=da.rio.nodata,
        block_shape=(1, 1),
    )


def _check_grids(red, nir, scl) -> int | None:
    """The worker's grid checks (:func:`ndvi_worker.run.check_grids`), as an :class:`ItemError`."""
    from ndvi_worker import io as wio
    from ndvi_worker.run import check_grids

    try:
        return check_grids(_info(red, "red"), _info(nir, "nir"), _info(scl, "scl"))
    except wio.SceneError as exc:
        raise ItemError(f"the item's bands cannot be combined: {exc}") from None


def _open_resampled_scl(href: str, red, cy: int, cx: int):
    """SCL resampled by nearest neighbour onto the red grid (a WarpedVRT, as :class:`ndvi_worker.io.
    ResampledReader`), lazily."""
    import rioxarray
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    from ndvi_worker import io as wio

    try:
        with wio.open_raster(href) as src:
            vrt = WarpedVRT(
                src,
                crs=red.rio.crs,
                transform=red.rio.transform(),
                width=red.sizes["x"],
                height=red.sizes["y"],
                resampling=Resampling.nearest,
                nodata=0,
            )
            da = rioxarray.open_rasterio(
                vrt, chunks={"band": 1, "y": cy, "x": cx}, mask_and_scale=False, lock=None, driver="GTiff"
            )
    except Exception as exc:  # noqa: BLE001
        raise ItemError(f"cannot open the scl band {_shown(href)}: {_short(exc)}") from None
    return da.isel(band=0, drop=True)


def _ndvi_blocks(red, nir, scl, factor, cy, cx, add_dn, classes, item_id):
    """The dask array of the worker's float NDVI: one task per 10 m chunk running the worker's chunk rules."""
    rows, cols = red.sizes["y"], red.sizes["x"]
    f = factor or 1
    if factor is not None and (cy % f or cx % f):  # whole SCL pixels per chunk (factor 2 always holds)
        cy, cx = -(-cy // f) * f, -(-cx // f) * f
    r = red.data.rechunk((cy, cx))
    n = nir.data.rechunk((cy, cx))
    # the SCL pixels under the 10 m grid (the worker reads no more), chunked so block (i, j) lies under 10 m
    # block (i, j)
    s = scl.data[: math.ceil(rows / f), : math.ceil(cols / f)].rechunk((cy // f, cx // f))
    return r.map_blocks(
        _chunk_ndvi,
        n,
        s,
        factor=factor,
        add_dn=add_dn,
        mask_classes=classes,
        dtype="float32",
        meta=np.empty((0, 0), dtype="float32"),
        chunks=r.chunks,
        enforce_ndim=True,  # also passes align_arrays=False: the 20 m SCL blocks are half the 10 m ones
        name=f"ndvi-{item_id}-{r.name}",
    )


def _chunk_ndvi(red, nir, scl_block, *, factor, add_dn, mask_classes, block_info=None):
    """One chunk, as the worker's chunk task: SCL to the 10 m window (:func:`ndvi_worker.run.scl_inputs`), then
    :func:`ndvi_worker.ndvi.ndvi_core` and :func:`ndvi_worker.ndvi.encode_float32`."""
    from rasterio.windows import Window

    from ndvi_worker import ndvi
    from ndvi_worker.run import scl_inputs

    (r0, r1), (c0, c1) = (
        block_info[0]["array-location"] if block_info else ((0, red.shape[0]), (0, red.shape[1]))
    )
    window = Window(c0, r0, c1 - c0, r1 - r0)
    extra = scl_inputs(scl_block, window, factor, mask_classes)
    values, invalid, _ = ndvi.ndvi_core(red, nir, **extra, add_dn=add_dn, mask_classes=mask_classes)
    return ndvi.encode_float32(values, invalid)


def _georeferenced(data, like, attrs: dict):
    """A (y, x) DataArray of ``data`` on ``like``'s grid: its coordinates, CRS and transform; nodata NaN."""
    import xarray as xr

    coords = {k: like.coords[k] for k in ("y", "x")}
    out = xr.DataArray(data, dims=("y", "x"), coords=coords, attrs=attrs, name="ndvi")
    out = out.rio.write_crs(like.rio.crs).rio.write_transform(like.rio.transform())
    return out.rio.write_nodata(np.float32(np.nan), encoded=False)


def _shown(text: str, limit: int = 160) -> str:
    from ndvi_worker.safety import shown

    return shown(text, limit)


def _short(exc: BaseException) -> str:
    from ndvi_worker.safety import shown

    text = str(exc).strip().replace("\n", " ")
    if "not recognized as being in a supported file format" in text:
        text += " (only GeoTIFF/COG files are read)"
    return shown(text, 300)
