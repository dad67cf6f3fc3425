"""Pure helpers on STAC item dicts: MGRS tile, where the item JSON lives in S3, cloud cover, footprint.

Both Earth Search schemas are handled (docs/domain.md section 1): v1 (`grid:code`, `mgrs:*`) and v0 (`sentinel:*`).
"""

from __future__ import annotations

from typing import Any

from launcher.aws import S3Uri
from ndvi_worker.stac import mgrs_tile  # noqa: F401 - re-exported: one MGRS rule for search and worker


def cloud_cover(item: dict[str, Any]) -> float | None:
    value = (item.get("properties") or {}).get("eo:cloud_cover")
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def nodata_percentage(item: dict[str, Any]) -> float | None:
    props = item.get("properties") or {}
    value = props.get("s2:nodata_pixel_percentage")
    if value is None and props.get("sentinel:data_coverage") is not None:
        try:
            return 100.0 - float(props["sentinel:data_coverage"])
        except (TypeError, ValueError):
            return None
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def item_datetime(item: dict[str, Any]) -> str:
    props = item.get("properties") or {}
    return str(props.get("datetime") or props.get("start_datetime") or "")


_RED_ASSETS = ("red", "B04")


def item_location(item: dict[str, Any]) -> S3Uri | None:
    """Where the item's own JSON lives in S3, or None when it lives in no bucket (an API-only item).

    Sources, in order: a `canonical` link into a bucket (Earth Search v1 and v0), `earthsearch:s3_path` plus
    `<id>.json`, then the sentinel-cogs layout (the item JSON sits next to its COGs, named after the item id).
    """
    item_id = item.get("id")
    for link in item.get("links") or []:
        if link.get("rel") == "canonical" and isinstance(link.get("href"), str):
            loc = S3Uri.from_url(link["href"])
            if loc and loc.key.endswith(".json"):
                return loc
    props = item.get("properties") or {}
    s3_path = props.get("earthsearch:s3_path")
    if isinstance(s3_path, str) and item_id:
        loc = S3Uri.from_url(s3_path.rstrip("/") + f"/{item_id}.json")
        if loc:
            return loc
    assets = item.get("assets") or {}
    for name in _RED_ASSETS:
        href = (assets.get(name) or {}).get("href")
        if isinstance(href, str) and item_id and href.lower().endswith(".tif"):
            loc = S3Uri.from_url(href)
            if loc and loc.bucket == "sentinel-cogs" and f"/{item_id}/" in f"/{loc.key}":
                folder = loc.key.rsplit("/", 1)[0]
                return S3Uri(loc.bucket, f"{folder}/{item_id}.json")
    return None


def footprint(item: dict[str, Any]) -> dict[str, Any] | None:
    """The item's geometry (GeoJSON), or its bbox as a polygon."""
    geometry = item.get("geometry")
    if isinstance(geometry, dict) and geometry.get("type"):
        return geometry
    bbox = item.get("bbox")
    if isinstance(bbox, list) and len(bbox) >= 4:
        w, s, e, n = bbox[0], bbox[1], bbox[-2], bbox[-1]
        return {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}
    return None
