"""Pure: the STAC collection of a set of NDVI products (per-scene outputs and composites) and the data the offline
viewer draws. Item dicts in, dicts out (built with pystac); :mod:`ndvi_worker.products_io` writes them."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence

from ndvi_worker.composite import footprint_geometry, geometry_bbox
from ndvi_worker.mosaic import union_bbox
from ndvi_worker.stac import mgrs_tile

COLLECTION_ID = "earthmon-ndvi"


def _parse(value) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def item_interval(item: dict) -> tuple[dt.datetime | None, dt.datetime | None]:
    props = item.get("properties") or {}
    start = _parse(props.get("start_datetime")) or _parse(props.get("datetime"))
    end = _parse(props.get("end_datetime")) or _parse(props.get("datetime"))
    return start, end


def product_kind(item: dict) -> str:
    return "composite" if (item.get("properties") or {}).get("earthmon:product") == "composite" else "scene"


def item_bbox(item: dict) -> list[float] | None:
    bbox = item.get("bbox")
    if isinstance(bbox, list) and len(bbox) >= 4:
        return [float(v) for v in (bbox[:4] if len(bbox) == 4 else [bbox[0], bbox[1], bbox[3], bbox[4]])]
    geometry = item.get("geometry")
    if isinstance(geometry, dict) and geometry.get("type") in ("Polygon", "MultiPolygon"):
        return geometry_bbox(geometry)
    return None


def _range(values: list[float]) -> dict | None:
    return {"minimum": min(values), "maximum": max(values)} if values else None


def build_collection(
    items: Sequence[tuple[dict, str]],
    assets: dict[str, dict],
    description: str,
    collection_id: str = COLLECTION_ID,
) -> dict:
    """A STAC collection (dict) linking every item (``(item dict, href relative to the collection)``), with the
    union of their bboxes as spatial extent, their first and last instants as temporal extent, and summaries
    (tiles, products, composite methods, platforms, EPSG codes, valid fraction and cloud cover ranges).
    ``assets``: key -> {href, type, title, roles} (the mosaic, its PNG, the viewer)."""
    import pystac

    boxes = [b for b in (item_bbox(i) for i, _ in items) if b]
    bbox = union_bbox(boxes) or (-180.0, -90.0, 180.0, 90.0)
    starts = [s for s, _ in (item_interval(i) for i, _ in items) if s]
    ends = [e for _, e in (item_interval(i) for i, _ in items) if e]
    interval = [min(starts) if starts else None, max(ends) if ends else None]
    props = [i.get("properties") or {} for i, _ in items]
    tiles = sorted({p["grid:code"] for p in props if isinstance(p.get("grid:code"), str)})
    summaries: dict = {
        "earthmon:product": sorted({product_kind(i) for i, _ in items}),
        "grid:code": tiles,
        "proj:epsg": sorted({p["proj:epsg"] for p in props if isinstance(p.get("proj:epsg"), int)}),
        "platform": sorted({p["platform"] for p in props if isinstance(p.get("platform"), str)}),
        "earthmon:composite_method": sorted(
            {p["earthmon:composite_method"] for p in props if p.get("earthmon:composite_method")}
        ),
    }
    valid = _range(
        [float(p["earthmon:valid_fraction"]) for p in props if _number(p.get("earthmon:valid_fraction"))]
    )
    cloud = _range([float(p["eo:cloud_cover"]) for p in props if _number(p.get("eo:cloud_cover"))])
    if valid:
        summaries["earthmon:valid_fraction"] = valid
    if cloud:
        summaries["eo:cloud_cover"] = cloud
    summaries = {k: v for k, v in summaries.items() if v}
    collection = pystac.Collection(
        id=collection_id,
        description=description,
        title="earthmon NDVI products",
        license="other",
        extent=pystac.Extent(
            pystac.SpatialExtent([list(bbox)]),
            pystac.TemporalExtent([interval]),
        ),
        summaries=pystac.Summaries(summaries),
        keywords=["NDVI", "Sentinel-2", "vegetation"],
    )
    for key, asset in assets.items():
        collection.add_asset(
            key,
            pystac.Asset(
                asset["href"], asset.get("title"), media_type=asset.get("type"), roles=asset.get("roles")
            ),
        )
    for item, href in items:
        collection.add_link(
            pystac.Link("item", href, media_type="application/geo+json", title=str(item.get("id")))
        )
    return collection.to_dict(include_self_link=False, transform_hrefs=False)


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def viewer_feature(item: dict, item_href: str, base: str) -> dict:
    """What the viewer needs of one product: id, tile, kind, dates, valid fraction, footprint (a GeoJSON
    geometry, split at the antimeridian), and the hrefs of its quicklook, COG and STAC item relative to the
    viewer (``base`` is the item's folder relative to the viewer)."""
    props = item.get("properties") or {}
    assets = item.get("assets") or {}

    def rel(asset_key: str) -> str | None:
        href = (assets.get(asset_key) or {}).get("href")
        if not isinstance(href, str):
            return None
        if "://" in href or href.startswith("/"):
            return href
        return f"{base.rstrip('/')}/{href[2:] if href.startswith('./') else href}" if base else href

    geometry = item.get("geometry")
    if isinstance(geometry, dict) and geometry.get("type") == "Polygon":
        geometry = footprint_geometry([tuple(p[:2]) for p in geometry["coordinates"][0]])
    start, end = item_interval(item)
    valid = props.get("earthmon:valid_fraction")
    return {
        "id": item.get("id"),
        "tile": mgrs_tile(item) or "",
        "kind": product_kind(item),
        "method": props.get("earthmon:composite_method"),
        "start": start.date().isoformat() if start else None,
        "end": end.date().isoformat() if end else None,
        "valid_fraction": valid if _number(valid) and math.isfinite(valid) else None,
        "geometry": geometry,
        "quicklook": rel("quicklook"),
        "cog": rel("ndvi"),
        "item": item_href,
    }
