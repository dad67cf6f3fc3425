"""Per-scene records, the per-host report and the STAC item describing each output. Pure: dicts in, dicts out."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass

from ndvi_worker import __version__
from ndvi_worker.ndvi import INT16_NODATA, INT16_SCALE
from ndvi_worker.safety import redact, redact_obj

STATUSES = ("done", "skipped", "failed")


@dataclass
class SceneRecord:
    source: str
    item_id: str | None
    status: str
    seconds: float = 0.0
    bytes_read: int = 0
    valid_fraction: float | None = None
    error: str | None = None
    output: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def utcnow() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def summarize(records: list[SceneRecord]) -> dict:
    counts = {s: 0 for s in STATUSES}
    for r in records:
        counts[r.status] += 1
    return {"total": len(records), **counts}


def host_report(host: str, hosts: list[str], started: str, records: list[SceneRecord], options: dict) -> dict:
    """The per-host report (``_reports/<host>.json``), secrets redacted."""
    return redact_obj(
        {
            "host": host,
            "hosts": hosts,
            "started": started,
            "finished": utcnow(),
            "worker_version": __version__,
            "options": options,
            "summary": summarize(records),
            "bytes_read": sum(r.bytes_read for r in records),
            "scenes": [r.to_dict() for r in records],
        }
    )  # type: ignore[return-value]


def exit_message(records: list[SceneRecord], host: str) -> str:
    """A short summary for /opt/ml/output/message (SageMaker shows the first 1 KB as ExitMessage), secrets
    redacted (before shortening, so no secret is cut in a way the redaction would miss)."""
    s = summarize(records)
    text = f"{host}: {s['done']} done, {s['skipped']} skipped, {s['failed']} failed of {s['total']} scenes."
    failed = [r for r in records if r.status == "failed"]
    if failed:
        text += " Failed: " + "; ".join(f"{r.item_id or r.source}: {r.error}" for r in failed[:5])
        if len(failed) > 5:
            text += f"; and {len(failed) - 5} more (see _reports/{host}.json)"
    return redact(text)[:1024]


def output_item(
    scene_item: dict,
    item_id: str,
    cog_name: str,
    cog_size: int,
    quicklook_name: str | None,
    source_href: str | None,
    stats: dict,
    mask_classes: list[int],
    offset: dict,
    dtype: str,
    scl_resampling: str,
    shape: tuple[int, int],
    transform: tuple[float, ...],
    epsg: int | None,
) -> dict:
    """The STAC item (as a dict, validated by pystac in tests) describing one NDVI output; every string is
    redacted (the source item's links and properties may carry signed URLs)."""
    props_in = scene_item.get("properties") or {}
    keep = (
        "datetime",
        "platform",
        "constellation",
        "instruments",
        "eo:cloud_cover",
        "grid:code",
        "mgrs:utm_zone",
        "mgrs:latitude_band",
        "mgrs:grid_square",
        "s2:processing_baseline",
        "sentinel:processing_baseline",
    )
    properties = {k: props_in[k] for k in keep if k in props_in}
    properties.setdefault("datetime", props_in.get("datetime"))
    properties.update(
        {
            "created": utcnow(),
            "processing:software": {"earthmon-ndvi-worker": __version__},
            "earthmon:mask_classes": mask_classes,
            "earthmon:boa_offset": offset,
            "earthmon:scl_resampling": scl_resampling,
            "earthmon:valid_fraction": stats["valid_fraction"],
            "earthmon:statistics": {
                k: stats[k] for k in ("mean", "std", "minimum", "maximum", "valid_pixels")
            },
            "earthmon:mask_fractions": {
                "nodata": stats["nodata_fraction"],
                "scl": stats["scl_masked_fraction"],
                "clamped": stats["clamped_fraction"],
            },
            "earthmon:scl_class_counts": stats.get("scl_class_counts", {}),
            "proj:epsg": epsg,
            "proj:shape": list(shape),
            "proj:transform": list(transform),
        }
    )
    band: dict = {"data_type": dtype}
    band["statistics"] = {
        "mean": stats["mean"],
        "stddev": stats["std"],
        "minimum": stats["minimum"],
        "maximum": stats["maximum"],
        "valid_percent": 100.0 * stats["valid_fraction"],
    }
    if dtype == "int16":
        band.update({"nodata": INT16_NODATA, "scale": 1.0 / INT16_SCALE, "offset": 0.0})
    else:
        band["nodata"] = "nan"
    assets = {
        "ndvi": {
            "href": f"./{cog_name}",
            "type": "image/tiff; application=geotiff; profile=cloud-optimized",
            "title": "NDVI",
            "roles": ["data"],
            "file:size": cog_size,
            "raster:bands": [band],
        }
    }
    if quicklook_name:
        assets["quicklook"] = {"href": f"./{quicklook_name}", "type": "image/png", "roles": ["overview"]}
    return redact_obj(_stac_item(f"{item_id}_ndvi", scene_item, properties, assets, source_href))  # type: ignore[return-value]


def _stac_item(
    out_id: str, scene_item: dict, properties: dict, assets: dict, source_href: str | None
) -> dict:
    """Assemble the item with pystac (the field's STAC library) and return it as a plain dict."""
    import datetime as _dt

    import pystac

    def parse(value):
        return _dt.datetime.fromisoformat(value.replace("Z", "+00:00")) if isinstance(value, str) else None

    src = scene_item.get("properties") or {}
    item = pystac.Item(
        id=out_id,
        geometry=scene_item.get("geometry"),
        bbox=scene_item.get("bbox"),
        datetime=parse(properties.get("datetime")),
        properties={k: v for k, v in properties.items() if k != "datetime"},
        start_datetime=parse(src.get("start_datetime")),
        end_datetime=parse(src.get("end_datetime")),
        stac_extensions=[
            "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
            "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
            "https://stac-extensions.github.io/file/v2.1.0/schema.json",
            "https://stac-extensions.github.io/processing/v1.1.0/schema.json",
        ],
    )
    for key, asset in assets.items():
        extra = {k: v for k, v in asset.items() if k not in ("href", "type", "title", "roles")}
        item.add_asset(
            key,
            pystac.Asset(
                asset["href"],
                asset.get("title"),
                media_type=asset["type"],
                roles=asset["roles"],
                extra_fields=extra,
            ),
        )
    hrefs = [source_href] if source_href else []
    for link in scene_item.get("links") or []:
        if link.get("rel") in ("self", "canonical") and link.get("href") and link["href"] not in hrefs:
            hrefs.append(link["href"])
    for href in hrefs:
        item.add_link(pystac.Link("derived_from", href, media_type="application/geo+json"))
    return item.to_dict(include_self_link=False, transform_hrefs=False)
