"""Synthetic Earth Search v1-like item dicts (for the planning benchmark, tests and dry runs of `plan`).

Each item has a distinct MGRS tile, an `eo:cloud_cover`, a footprint near the tile's real zone and latitude band,
and (by default) a canonical link into the sentinel-cogs bucket, like a real Earth Search v1 item.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

BANDS = "CDEFGHJKLMNPQRSTUVWX"
SQUARE_LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"


def tiles() -> Iterator[tuple[int, str, str]]:
    """Distinct (zone, band, square) triples, spread over zones first."""
    for sq1 in SQUARE_LETTERS:
        for sq2 in SQUARE_LETTERS:
            for band in BANDS:
                for zone in range(1, 61):
                    yield zone, band, sq1 + sq2


def synthetic_item(
    zone: int, band: str, square: str, day: int = 3, cloud: float = 5.0, in_bucket: bool = True
):
    item_id = f"S2B_{zone}{band}{square}_202312{day:02d}_0_L2A"
    folder = f"sentinel-s2-l2a-cogs/{zone}/{band}/{square}/2023/12/{item_id}"
    lon = -180 + (zone - 0.5) * 6
    lat = -80 + (BANDS.index(band) + 0.5) * 8
    w, s = lon - 0.5, lat - 0.5
    base = (
        f"https://sentinel-cogs.s3.us-west-2.amazonaws.com/{folder}"
        if in_bucket
        else f"https://example.com/{item_id}"
    )
    links: list[dict[str, Any]] = [{"rel": "self", "href": f"https://example.com/items/{item_id}"}]
    if in_bucket:
        links.append({"rel": "canonical", "href": f"s3://sentinel-cogs/{folder}/{item_id}.json"})
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": item_id,
        "collection": "sentinel-2-l2a",
        "bbox": [w, s, w + 1, s + 1],
        "geometry": {
            "type": "Polygon",
            "coordinates": [[[w, s], [w + 1, s], [w + 1, s + 1], [w, s + 1], [w, s]]],
        },
        "properties": {
            "datetime": f"2023-12-{day:02d}T10:00:00.000000Z",
            "eo:cloud_cover": cloud,
            "grid:code": f"MGRS-{zone}{band}{square}",
            "mgrs:utm_zone": zone,
            "mgrs:latitude_band": band,
            "mgrs:grid_square": square,
            "earthsearch:boa_offset_applied": True,
            "s2:processing_baseline": "05.09",
        },
        "assets": {
            "red": {"href": f"{base}/B04.tif"},
            "nir": {"href": f"{base}/B08.tif"},
            "scl": {"href": f"{base}/SCL.tif"},
        },
        "links": links,
    }


def synthetic_items(n: int, seed: int = 0, in_bucket: bool = True) -> list[dict[str, Any]]:
    """`n` items on `n` distinct tiles with random cloud cover (deterministic for a seed)."""
    rng = random.Random(seed)
    out = []
    for (zone, band, square), _ in zip(tiles(), range(n), strict=False):
        out.append(
            synthetic_item(
                zone,
                band,
                square,
                day=rng.randint(1, 7),
                cloud=round(rng.uniform(0, 10), 3),
                in_bucket=in_bucket,
            )  # fmt: skip
        )
    if len(out) < n:
        raise ValueError(f"at most {len(out)} synthetic tiles")
    return out
