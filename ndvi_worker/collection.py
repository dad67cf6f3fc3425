"""Pure: the STAC collection of a set of NDVI products (per-scene outputs and composites) and the data the offline
viewer draws. Item dicts in, dicts out (built with pystac); :mod:`ndvi_worker.products_io` writes them."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence

from ndvi_worker.composite import footprint_geometry, geometry_bbox
from ndvi_worker.mosaic import union_bbox
from ndvi_worker.stac import MGRS_TILE, mgrs_tile

COLLECTION_ID = "earthmon-ndvi"


def _parse(value) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _props(item: dict) -> dict:
    props = item.get("properties")
    return props if isinstance(props, dict) else {}


def item_interval(item: dict) -> tuple[dt.datetime | None, dt.datetime | None]:
    props = _props(item)
    start = _parse(props.get("start_datetime")) or _parse(props.get("datetime"))
    end = _parse(props.get("end_datetime")) or _parse(props.get("datetime"))
    return start, end


def product_kind(item: dict) -> str:
    return "composite" if _props(item).get("earthmon:product") == "composite" else "scene"


def item_bbox(item: dict) -> list[float] | None:
    """The item's bbox (from ``bbox``, else its polygon), finite numbers only; None when it has none."""
    bbox = item.get("bbox")
    if isinstance(bbox, list) and len(bbox) in (4, 6) and all(_finite(v) for v in bbox):
        return [float(v) for v in (bbox[:4] if len(bbox) == 4 else [bbox[0], bbox[1], bbox[3], bbox[4]])]
    geometry = clean_geometry(item.get("geometry"))
    if geometry is not None:
        return geometry_bbox(geometry)
    return None


def clean_geometry(geometry: object) -> dict | None:
    """A Polygon / MultiPolygon whose every position is two or three finite numbers (lon, lat in range), else None:
    what the collection and the viewer accept from an item (NaN, strings or nesting would break the page)."""
    if not isinstance(geometry, dict) or geometry.get("type") not in ("Polygon", "MultiPolygon"):
        return None
    coords = geometry.get("coordinates")
    polygons = [coords] if geometry["type"] == "Polygon" else coords
    if not isinstance(polygons, list) or not polygons:
        return None
    clean = []
    for polygon in polygons:
        if not isinstance(polygon, list) or not polygon:
            return None
        rings = []
        for ring in polygon:
            if not isinstance(ring, list) or len(ring) < 4:
                return None
            if not all(_position(p) for p in ring):
                return None
            rings.append([[float(p[0]), float(p[1])] for p in ring])
        clean.append(rings)
    if geometry["type"] == "Polygon":
        return {"type": "Polygon", "coordinates": clean[0]}
    return {"type": "MultiPolygon", "coordinates": clean}


def _position(p: object) -> bool:
    return (
        isinstance(p, list)
        and len(p) in (2, 3)
        and all(_finite(v) for v in p)
        and -180.0 <= p[0] <= 180.0
        and -90.0 <= p[1] <= 90.0
    )


def _finite(value: object) -> bool:
    return _number(value) and math.isfinite(value)  # type: ignore[arg-type]


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
    props = [_props(i) for i, _ in items]
    tiles = sorted({f"MGRS-{t}" for t in (mgrs_tile(i) for i, _ in items) if t and MGRS_TILE.fullmatch(t)})
    summaries: dict = {
        "earthmon:product": sorted({product_kind(i) for i, _ in items}),
        "grid:code": tiles,
        "proj:epsg": sorted(
            {p["proj:epsg"] for p in props if _number(p.get("proj:epsg")) and isinstance(p["proj:epsg"], int)}
        ),
        "platform": sorted({p["platform"] for p in props if isinstance(p.get("platform"), str)}),
        "earthmon:composite_method": sorted(
            {
                p["earthmon:composite_method"]
                for p in props
                if isinstance(p.get("earthmon:composite_method"), str)
            }
        ),
    }
    valid = _range(
        [float(p["earthmon:valid_fraction"]) for p in props if _finite(p.get("earthmon:valid_fraction"))]
    )
    cloud = _range([float(p["eo:cloud_cover"]) for p in props if _finite(p.get("eo:cloud_cover"))])
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
            pystac.Link("item", href, media_type="application/geo+json", title=_text(item.get("id")))
        )
    return collection.to_dict(include_self_link=False, transform_hrefs=False)


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _text(value: object, limit: int = 200) -> str:
    """A field shown as text (an id): strings as they are (shortened), anything else as its repr."""
    text = value if isinstance(value, str) else repr(value)
    return text[:limit]


def viewer_feature(item: dict, item_href: str, base: str) -> dict:
    """What the viewer needs of one product: id, tile, kind, dates, valid fraction, footprint (a GeoJSON
    geometry, split at the antimeridian), and the hrefs of its quicklook, COG and STAC item relative to the
    viewer (``base`` is the item's folder relative to the viewer)."""
    props = _props(item)
    assets = item.get("assets") if isinstance(item.get("assets"), dict) else {}

    def rel(asset_key: str) -> str | None:
        asset = assets.get(asset_key)
        href = asset.get("href") if isinstance(asset, dict) else None
        if not isinstance(href, str):
            return None
        if "://" in href or href.startswith("/"):
            return href
        return f"{base.rstrip('/')}/{href[2:] if href.startswith('./') else href}" if base else href

    geometry = clean_geometry(item.get("geometry"))
    if geometry is not None and geometry["type"] == "Polygon":
        geometry = footprint_geometry([tuple(p[:2]) for p in geometry["coordinates"][0]])
    start, end = item_interval(item)
    valid = props.get("earthmon:valid_fraction")
    method = props.get("earthmon:composite_method")
    return {
        "id": _text(item.get("id")),
        "tile": mgrs_tile(item) or "",
        "kind": product_kind(item),
        "method": method[:40] if isinstance(method, str) else None,
        "start": start.date().isoformat() if start else None,
        "end": end.date().isoformat() if end else None,
        "valid_fraction": valid if _finite(valid) else None,
        "geometry": geometry,
        "quicklook": rel("quicklook"),
        "cog": rel("ndvi"),
        "item": item_href,
    }
