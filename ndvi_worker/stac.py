"""Pure STAC logic: an item dict in, a :class:`Scene` (bands, offset decision, ids) out. No I/O.

Handles both Earth Search schemas that live in the ``sentinel-cogs`` bucket (docs/domain.md section 1):

* v1 (``sentinel-2-l2a``): assets ``red`` / ``nir`` / ``scl``, ``s2:processing_baseline``,
  ``earthsearch:boa_offset_applied``;
* v0 (``sentinel-s2-l2a-cogs``): assets ``B04`` / ``B08`` / ``SCL``, ``sentinel:processing_baseline``,
  ``sentinel:boa_offset_applied``;

and, for the offset rule, other catalogues' spellings of the baseline (``sentinel2:``, Planetary Computer).
"""

from __future__ import annotations

import datetime as dt
import posixpath
import re
from dataclasses import dataclass
from urllib.parse import urlparse

from ndvi_worker.safety import HrefError, check_href, shown

#: Asset keys tried for each band, in order (v1 first, then v0, then other catalogues).
BAND_ASSET_KEYS: dict[str, tuple[str, ...]] = {
    "red": ("red", "B04", "b04"),
    "nir": ("nir", "B08", "b08", "nir08"),
    "scl": ("scl", "SCL"),
}

#: ESA's BOA_ADD_OFFSET for processing baseline >= 04.00, in DN.
BOA_ADD_OFFSET_DN = -1000
#: The day ESA started processing baseline 04.00 (used only when an item has no baseline at all).
BASELINE_04_START = dt.date(2022, 1, 25)

OFFSET_FLAG_KEYS = ("earthsearch:boa_offset_applied", "sentinel:boa_offset_applied")
BASELINE_KEYS = (
    "s2:processing_baseline",
    "sentinel:processing_baseline",
    "sentinel2:processing_baseline",
    "processing:version",
)

#: Item ids become file names: ASCII letters, digits, dot, dash, underscore; no path separators, no leading dot.
#: Matched with ``fullmatch`` (``$`` would accept a trailing newline).
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


class ItemError(ValueError):
    """The item cannot be processed (missing asset, hostile id, not a Sentinel-2 L2A item...)."""


@dataclass(frozen=True)
class OffsetDecision:
    """How DN become reflectance: ``reflectance = (DN + add_dn) / 10000``."""

    add_dn: int
    reason: str

    @property
    def applied_by_worker(self) -> bool:
        return self.add_dn != 0

    def to_dict(self) -> dict:
        return {"add_dn": self.add_dn, "applied_by_worker": self.applied_by_worker, "reason": self.reason}


@dataclass(frozen=True)
class Scene:
    """One Sentinel-2 scene to process, with every href resolved."""

    item_id: str
    red: str
    nir: str
    scl: str
    offset: OffsetDecision
    collection: str | None
    datetime: str | None
    mgrs_tile: str | None
    item: dict

    @property
    def output_stem(self) -> str:
        return f"{self.item_id}_ndvi"


def is_stac_item(doc: object) -> bool:
    """True for a dict that looks like a STAC item (a GeoJSON Feature with assets)."""
    return (
        isinstance(doc, dict)
        and doc.get("type") == "Feature"
        and isinstance(doc.get("assets"), dict)
        and ("stac_version" in doc or "properties" in doc)
    )


def items_in_document(doc: object) -> list[dict] | None:
    """The STAC items in a parsed JSON document: an item, an ItemCollection / FeatureCollection,
    or a list of items. ``None`` when the document holds no items at all (other JSON)."""
    if is_stac_item(doc):
        return [doc]  # type: ignore[list-item]
    if isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
        feats = [f for f in doc.get("features") or [] if is_stac_item(f)]
        return feats or None
    if isinstance(doc, list):
        feats = [f for f in doc if is_stac_item(f)]
        return feats or None
    return None


def validate_item_id(item_id: object) -> str:
    """Return the id if it is safe to use in a file name; raise :class:`ItemError` otherwise."""
    if not isinstance(item_id, str) or not item_id:
        raise ItemError("item has no 'id' (a non-empty string is required)")
    if not _SAFE_ID.fullmatch(item_id) or ".." in item_id:
        raise ItemError(
            f"unsafe item id {shown(item_id, 80)!r}: ids name output files, so only letters, digits, '.', '-', '_' "
            "(not starting with '.', no '..', at most 200 characters) are accepted"
        )
    return item_id


def parse_baseline(value: object) -> float | None:
    """``'04.00'`` -> 4.0, ``'05.09'`` -> 5.09, ``'N0400'`` -> 4.0, ``4`` -> 4.0; ``None`` if unreadable."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    m = re.match(r"^N(\d{2})(\d{2})$", text)  # ESA's product-name form: N0400 -> 04.00
    if m:
        return int(m.group(1)) + int(m.group(2)) / 100.0
    m = re.match(r"^(\d{1,2})(?:\.(\d{1,2}))?$", text)
    if not m:
        return None
    major, minor = int(m.group(1)), int(m.group(2) or 0)
    return major + minor / 100.0


def decide_offset(properties: dict, override: str = "auto") -> OffsetDecision:
    """The BOA offset rule of docs/domain.md section 1.

    * ``override='apply'`` forces ``(DN - 1000) / 10000``; ``'skip'`` forces ``DN / 10000``.
    * ``auto``: the ``*:boa_offset_applied`` flag when present (true: the COG producer already removed the
      offset; false: the DN still carry it if the baseline is >= 04.00); else the processing baseline
      (>= 04.00 carries the offset); else the acquisition date (on or after 2022-01-25 means baseline >= 04.00).
    * The ``raster:bands`` offset of v1 items is never used: it is stale for offset-applied COGs.
    """
    if override == "apply":
        return OffsetDecision(BOA_ADD_OFFSET_DN, "forced by --boa-offset apply")
    if override == "skip":
        return OffsetDecision(0, "forced by --boa-offset skip")
    if override != "auto":
        raise ValueError(f"boa offset override must be auto, apply or skip, not {override!r}")

    baseline = None
    baseline_key = None
    for key in BASELINE_KEYS:
        if key in properties:
            baseline = parse_baseline(properties[key])
            if baseline is not None:
                baseline_key = key
                break

    for key in OFFSET_FLAG_KEYS:
        flag = properties.get(key)
        if isinstance(flag, bool):
            if flag:
                return OffsetDecision(0, f"{key}=true: the offset was already removed from the COGs")
            if baseline is not None and baseline >= 4.0:
                return OffsetDecision(
                    BOA_ADD_OFFSET_DN, f"{key}=false and {baseline_key}={properties[baseline_key]} >= 04.00"
                )
            if baseline is not None:
                return OffsetDecision(0, f"{key}=false and {baseline_key}={properties[baseline_key]} < 04.00")
            break  # flag false without a baseline: fall through to the date rule

    if baseline is not None:
        if baseline >= 4.0:
            return OffsetDecision(BOA_ADD_OFFSET_DN, f"{baseline_key}={properties[baseline_key]} >= 04.00")
        return OffsetDecision(0, f"{baseline_key}={properties[baseline_key]} < 04.00")

    date = _item_date(properties)
    if date is not None and date >= BASELINE_04_START:
        return OffsetDecision(
            BOA_ADD_OFFSET_DN,
            f"no baseline or flag; acquired {date} >= {BASELINE_04_START} (baseline 04.00+)",
        )
    if date is not None:
        return OffsetDecision(0, f"no baseline or flag; acquired {date} before {BASELINE_04_START}")
    return OffsetDecision(0, "no baseline, flag or date: assuming no offset")


def _item_date(properties: dict) -> dt.date | None:
    value = properties.get("datetime") or properties.get("start_datetime")
    if not isinstance(value, str):
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).date()
    except ValueError:
        return None


_GRID_CODE = re.compile(r"MGRS-(\d{1,2})([C-HJ-NP-X])([A-HJ-NP-Z]{2})")
_ITEM_ID_TILE = re.compile(r"^S2[A-D]_(?:T)?(\d{1,2})([C-HJ-NP-X])([A-HJ-NP-Z]{2})_")
_PC_TILE = re.compile(r"(\d{1,2})([C-HJ-NP-X])([A-HJ-NP-Z]{2})")
#: A normalised MGRS tile: zone 01-60, latitude band C-X without I and O, 100 km square (two letters, no I/O).
MGRS_TILE = re.compile(r"(?:0[1-9]|[1-5][0-9]|60)[C-HJ-NP-X][A-HJ-NP-Z]{2}")
_BAND = re.compile(r"[C-HJ-NP-X]")
_SQUARE = re.compile(r"[A-HJ-NP-Z]{2}")
_TILE_RULE = "zone 1-60, latitude band C-X without I and O, two-letter grid square"


def _tile(zone: object, band: object, square: object) -> str | None:
    """``31UFU`` from its parts, each checked strictly (the tile names output files and staging folders);
    None when any part is malformed."""
    if isinstance(zone, bool):
        return None
    if isinstance(zone, str) and re.fullmatch(r"[0-9]{1,2}", zone):
        z = int(zone)
    elif isinstance(zone, int):
        z = zone
    else:
        return None
    if not (1 <= z <= 60) or not isinstance(band, str) or not isinstance(square, str):
        return None
    band, square = band.upper(), square.upper()
    if not _BAND.fullmatch(band) or not _SQUARE.fullmatch(square):
        return None
    return f"{z:02d}{band}{square}"


def check_tile(tile: object) -> str:
    """``tile`` if it is a normalised MGRS tile (``31UFU``); :class:`ItemError` otherwise."""
    if not isinstance(tile, str) or not MGRS_TILE.fullmatch(tile):
        raise ItemError(f"malformed MGRS tile {shown(tile, 80)!r} ({_TILE_RULE})")
    return tile


def mgrs_tile(item: dict[str, object], strict: bool = False) -> str | None:
    """The item's MGRS tile, normalised to a zero-padded zone (`09UXA`, `31UFU`), or None if unknown.

    Sources, in order: `grid:code` (v1, when it starts with ``MGRS-``), `mgrs:*` (v1), `sentinel:*` (v0),
    `s2:mgrs_tile` (Planetary Computer), then the item id. Every part is validated (zone 1-60, latitude band C-X
    without I and O, two-letter square): the tile names composite files and staging folders. A malformed source
    is skipped, or with ``strict`` refuses the item (:class:`ItemError` naming the field): a hostile field is never
    silently replaced by another source.
    """
    props = item.get("properties")
    if not isinstance(props, dict):
        props = {}

    def bad(field: str, value: object) -> None:
        if strict:
            raise ItemError(f"malformed MGRS tile in {field}: {shown(value, 80)!r} ({_TILE_RULE})")

    code = props.get("grid:code")
    if isinstance(code, str) and code.strip().upper().startswith("MGRS-"):
        m = _GRID_CODE.fullmatch(code.strip().upper())
        tile = _tile(*m.groups()) if m else None
        if tile:
            return tile
        bad("grid:code", code)
    for prefix in ("mgrs", "sentinel"):
        keys = [f"{prefix}:{k}" for k in ("utm_zone", "latitude_band", "grid_square")]
        values = [props.get(k) for k in keys]
        if all(v is None for v in values):
            continue
        tile = _tile(*values)
        if tile:
            return tile
        bad(f"{prefix}:utm_zone/latitude_band/grid_square", "/".join(str(v) for v in values))
    pc = props.get("s2:mgrs_tile")
    if pc is not None:
        m = _PC_TILE.fullmatch(pc.strip().upper()) if isinstance(pc, str) else None
        tile = _tile(*m.groups()) if m else None
        if tile:
            return tile
        bad("s2:mgrs_tile", pc)
    m = _ITEM_ID_TILE.match(str(item.get("id", "")))
    if m:
        return _tile(*m.groups())
    return None


def resolve_href(href: str, base: str | None) -> str:
    """Resolve an asset href against the item's own location (a local path or URL).

    Absolute URLs (``https://``, ``s3://``...) and absolute paths are returned unchanged; relative hrefs are
    joined to the directory of ``base``.
    """
    if not isinstance(href, str) or not href:
        raise ItemError("asset has no href")
    parsed = urlparse(href)
    if parsed.scheme and len(parsed.scheme) > 1:  # 'C:' style drive letters are not schemes
        return href
    if href.startswith("/"):
        return href
    if base is None:
        raise ItemError(f"relative href {href!r} but the item's location is unknown")
    bparsed = urlparse(base)
    if bparsed.scheme and len(bparsed.scheme) > 1:
        directory = posixpath.dirname(bparsed.path)
        return bparsed._replace(path=posixpath.normpath(posixpath.join(directory, href))).geturl()
    return posixpath.normpath(posixpath.join(posixpath.dirname(base), href))


def checked_href(band: str, href: object, location: str | None) -> str:
    """The band's href resolved against the item's location and checked against the href rules
    (:func:`ndvi_worker.safety.check_href`); :class:`ItemError` saying "rejected" otherwise."""
    try:
        if isinstance(href, str):
            check_href(href) if _absolute(href) else _check_relative(href)
        resolved = resolve_href(href, location)  # type: ignore[arg-type]
        check_href(resolved)
    except ItemError:
        raise
    except (HrefError, ValueError) as exc:  # ValueError: urllib's own (an unclosed IPv6 bracket...)
        raise ItemError(f"rejected {band} href {shown(href)!r}: {exc}") from None
    return resolved


def _absolute(href: str) -> bool:
    parsed = urlparse(href)
    return bool(parsed.scheme and len(parsed.scheme) > 1) or href.startswith("/")


def _check_relative(href: str) -> None:
    """A relative href is checked for what resolution would hide (inline XML, control characters...)."""
    check_href("/" + href if not href.startswith(("<", " ")) else href)


def find_asset(assets: dict, band: str) -> dict:
    for key in BAND_ASSET_KEYS[band]:
        asset = assets.get(key)
        if isinstance(asset, dict) and asset.get("href"):
            return asset
    raise ItemError(
        f"missing asset for {band}: the item has none of {', '.join(BAND_ASSET_KEYS[band])} "
        f"(assets present: {', '.join(sorted(assets)) or 'none'})"
    )


def scene_from_item(item: dict, location: str | None = None, boa_offset: str = "auto") -> Scene:
    """Build a :class:`Scene` from a STAC item dict; ``location`` is where the item was read from."""
    if not is_stac_item(item):
        raise ItemError("not a STAC item (a GeoJSON Feature with 'assets' is required)")
    item_id = validate_item_id(item.get("id"))
    assets = item["assets"]
    props = item.get("properties")
    if props is None:
        props = {}
    if not isinstance(props, dict):
        raise ItemError("the item's 'properties' is not an object")
    raw = {band: find_asset(assets, band)["href"] for band in BAND_ASSET_KEYS}
    for band, href in raw.items():
        if isinstance(href, str) and href.lower().split("?")[0].endswith(".jp2"):
            raise ItemError(
                f"the {band} asset is a JPEG2000 file ({shown(href)}); this worker reads the COG assets "
                "(red/nir/scl or B04/B08/SCL), not the requester-pays *-jp2 twins"
            )
    hrefs = {band: checked_href(band, href, location) for band, href in raw.items()}
    return Scene(
        item_id=item_id,
        red=hrefs["red"],
        nir=hrefs["nir"],
        scl=hrefs["scl"],
        offset=decide_offset(props, boa_offset),
        collection=item.get("collection"),
        datetime=props.get("datetime"),
        mgrs_tile=mgrs_tile(item, strict=True),
        item=item,
    )
