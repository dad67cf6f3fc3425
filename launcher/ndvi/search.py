"""Scene search: a STAC API search (pystac-client, all pages) or SageMaker geospatial, then one scene per tile.

`dedupe` and the geospatial-to-STAC conversion are pure; `search_stac` and `search_geospatial` are the I/O edge.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from launcher.ndvi.items import cloud_cover, item_datetime, mgrs_tile, nodata_percentage

EARTH_SEARCH_V1 = "https://earth-search.aws.element84.com/v1"
DEFAULT_COLLECTION = "sentinel-2-l2a"
DEDUPE_STRATEGIES = ("least-cloudy", "first", "latest")
# The Sentinel-2 L2A COG collection of SageMaker geospatial (us-west-2 only, closed to new customers).
GEOSPATIAL_SENTINEL2_ARN = (
    "arn:aws:sagemaker-geospatial:us-west-2:378778860802:raster-data-collection/public/nmqj48dcu3g7ayw8"
)


@dataclass
class DedupeStats:
    searched: int = 0
    other_collection: int = 0
    duplicates: int = 0
    no_tile: int = 0
    kept: int = 0
    per_collection: dict[str, int] = field(default_factory=dict)


def _rank_least_cloudy(item: dict[str, Any]) -> tuple:
    # Least cloud first; ties: less no-data, then the later acquisition, then the item id. Unknown values rank last.
    cloud = cloud_cover(item)
    nodata = nodata_percentage(item)
    dt = item_datetime(item)
    return (
        math.inf if cloud is None else cloud,
        math.inf if nodata is None else nodata,
        _neg_str(dt),
        str(item.get("id", "")),
    )


def _neg_str(s: str) -> tuple:
    # Sort key for "descending string" inside an ascending tuple sort.
    return tuple(-ord(c) for c in s) + (1,)


def _rank_latest(item: dict[str, Any]) -> tuple:
    return (_neg_str(item_datetime(item)), str(item.get("id", "")))


def dedupe(
    items: Iterable[dict[str, Any]], strategy: str = "least-cloudy", collection: str | None = None
) -> tuple[list[dict[str, Any]], DedupeStats]:
    """One scene per MGRS tile, sorted by (tile, id). Pure and deterministic whatever the page order.

    - `least-cloudy`: lowest `eo:cloud_cover`; ties broken by lower no-data percentage, later datetime, item id.
    - `first`: the first item seen per tile (what the reference pipeline did).
    - `latest`: the most recent acquisition; ties broken by item id.
    Items of another collection than `collection` (when given) are dropped and counted. Items without a tile
    are kept, each as its own key (counted in `no_tile`). Duplicate item ids count once.
    """
    if strategy not in DEDUPE_STRATEGIES:
        raise ValueError(
            f"unknown dedupe strategy {strategy!r}: choose one of {', '.join(DEDUPE_STRATEGIES)}"
        )
    stats = DedupeStats()
    best: dict[str, tuple[tuple, dict[str, Any]]] = {}
    seen_ids: set[str] = set()
    for order, item in enumerate(items):
        stats.searched += 1
        coll = str(item.get("collection", ""))
        stats.per_collection[coll] = stats.per_collection.get(coll, 0) + 1
        if collection and item.get("collection") not in (None, collection):
            stats.other_collection += 1
            continue
        item_id = str(item.get("id", ""))
        if item_id in seen_ids:
            stats.duplicates += 1
            continue
        seen_ids.add(item_id)
        tile = mgrs_tile(item)
        if tile is None:
            stats.no_tile += 1
            key = f"~{item_id}"
        else:
            key = tile
        if strategy == "first":
            rank: tuple = (order,)
        elif strategy == "latest":
            rank = _rank_latest(item)
        else:
            rank = _rank_least_cloudy(item)
        current = best.get(key)
        if current is None:
            best[key] = (rank, item)
        else:
            stats.duplicates += 1
            if rank < current[0]:
                best[key] = (rank, item)
    kept = [best[k][1] for k in sorted(best)]
    stats.kept = len(kept)
    return kept, stats


# ------------------------------------------------------------------------------------------------ STAC API


@dataclass(frozen=True)
class SearchQuery:
    collection: str = DEFAULT_COLLECTION
    bbox: tuple[float, float, float, float] | None = None
    intersects: dict[str, Any] | None = None
    datetime: str | None = None
    max_cloud: float | None = None
    page_size: int = 500
    max_items: int | None = None

    def __post_init__(self) -> None:
        if self.bbox is not None and self.intersects is not None:
            raise ValueError("give either a bbox or an intersects geometry, not both")
        if self.bbox is not None:
            w, s, e, n = self.bbox
            if not (-180 <= w <= 180 and -180 <= e <= 180 and -90 <= s <= n <= 90):
                raise ValueError(f"bbox must be W,S,E,N in degrees with S <= N, got {self.bbox}")
        if self.max_cloud is not None and not (0 <= self.max_cloud <= 100):
            raise ValueError(f"max cloud cover must be within 0..100 %, got {self.max_cloud}")
        if self.page_size < 1:
            raise ValueError("page size must be >= 1")


def parse_bbox(text: str) -> tuple[float, float, float, float]:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 4:
        raise ValueError(f"bbox must be four numbers W,S,E,N, got {text!r}")
    try:
        w, s, e, n = (float(p) for p in parts)
    except ValueError as exc:
        raise ValueError(f"bbox must be four numbers W,S,E,N, got {text!r}") from exc
    return (w, s, e, n)


def geometry_from_geojson(obj: dict[str, Any]) -> dict[str, Any]:
    """A single geometry out of a GeoJSON geometry, Feature or one-feature FeatureCollection."""
    if not isinstance(obj, dict):
        raise ValueError(f"not a GeoJSON geometry, Feature or FeatureCollection (a {type(obj).__name__})")
    kind = obj.get("type")
    if kind == "FeatureCollection":
        features = obj.get("features") or []
        if len(features) != 1:
            raise ValueError(
                f"the FeatureCollection has {len(features)} features: give one (dissolve them first, e.g. with "
                "shapely.unary_union) or use --bbox"
            )
        return geometry_from_geojson(features[0])
    if kind == "Feature":
        geometry = obj.get("geometry")
        if not isinstance(geometry, dict):
            raise ValueError("the Feature has no geometry")
        return geometry
    if kind in {"Polygon", "MultiPolygon", "Point", "MultiPoint", "LineString", "MultiLineString"}:
        return obj
    raise ValueError(f"not a GeoJSON geometry, Feature or FeatureCollection (type {kind!r})")


# Bounds of a search (the server decides how many pages there are and what each holds): defaults of the CLI's
# --max-pages and --max-items, and what one request may cost.
MAX_PAGES = 2000
MAX_ITEMS = 500_000
MAX_PAGE_BYTES = 64 * 2**20  # a page of 500 Earth Search items is about 8 MB
REQUEST_DEADLINE_S = 300.0  # one page, all of it (a server trickling bytes cannot hold the search)
READ_TIMEOUT_S = 60.0


def bounded_stac_io(api_url: str) -> Any:
    """A pystac-client StacApiIO that stays on the API's origin and bounds every request.

    Every request (the landing page, the search, each ``next`` link) must go to the scheme, host and port of
    ``api_url``: a link elsewhere ends the search with one line, nothing is sent there. A link's ``method`` may be
    GET or POST; its ``headers`` are ignored (paging needs none: a POST page sends the link's ``body`` as JSON).
    Each answer is read within MAX_PAGE_BYTES and REQUEST_DEADLINE_S; redirects are followed only within the
    origin."""
    import requests
    from pystac import Link
    from pystac_client.exceptions import APIError
    from pystac_client.stac_api_io import StacApiIO

    from launcher.errors import ResponseError
    from launcher.http import fetch, origin, short

    api_origin = origin(api_url)

    class BoundedStacApiIO(StacApiIO):
        def read_text(self, source: Any, *args: Any, **kwargs: Any) -> str:
            if not isinstance(source, Link):
                return super().read_text(source, *args, **kwargs)
            link = source.to_dict()
            method = str(link.get("method") or "GET").upper()
            if method not in ("GET", "POST"):
                raise ResponseError(
                    f"a next link of {api_url} asks for method {short(method, 20)}: not followed"
                )
            body = link.get("body") or {}
            if not isinstance(body, dict):
                raise ResponseError(f"a next link of {api_url} has a body that is not a JSON object")
            parameters: dict[str, Any] = {}
            if method == "POST":
                parameters = {**(kwargs.get("parameters") or {}), **body} if link.get("merge") else body
            return self.request(str(link.get("href") or ""), method=method, parameters=parameters)

        def request(
            self,
            href: str,
            method: str | None = None,
            headers: dict[str, str] | None = None,
            parameters: dict[str, Any] | None = None,
        ) -> str:
            if origin(href) != api_origin:
                raise ResponseError(
                    f"{api_url} links to another origin ({short(href)}): not followed, the search stops"
                )
            method = (method or "GET").upper()
            sent = (
                {"json": parameters}
                if method in ("POST", "PUT", "PATCH")
                else {"params": dict(parameters or {})}
            )
            try:
                answer = fetch(
                    self.session,
                    method,
                    href,
                    max_bytes=MAX_PAGE_BYTES,
                    deadline_s=REQUEST_DEADLINE_S,
                    read_timeout_s=READ_TIMEOUT_S,
                    same_origin_redirects=True,
                    headers=headers,
                    **sent,
                )
            except requests.RequestException as exc:
                raise APIError(str(exc)) from None
            if not 200 <= answer.status < 300:
                raise APIError(
                    f"{short(href)} answered {answer.status}: {short(answer.body.decode('utf-8', 'replace'))}"
                )
            try:
                return answer.body.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise APIError(str(exc)) from None

    return BoundedStacApiIO(max_retries=3)


def _next_link(page: dict[str, Any]) -> str | None:
    """What identifies a page's ``next`` link (href, method and body), or None when there is none."""
    for link in page.get("links") or []:
        if isinstance(link, dict) and link.get("rel") == "next":
            return json.dumps(
                [link.get("href"), link.get("method"), link.get("body")], sort_keys=True, default=str
            )
    return None


def search_stac(
    url: str,
    query: SearchQuery,
    on_page: Callable[[int, int], None] | None = None,
    max_pages: int = MAX_PAGES,
    notes: list[str] | None = None,
) -> Iterator[dict[str, Any]]:
    """Every item of a STAC API search, all pages, as dicts. `on_page(pages, items)` reports progress.

    Bounded: at most ``max_pages`` pages and, without ``query.max_items``, MAX_ITEMS items (more is an error
    saying which option to raise: a search that big is a mistake or a server that never ends); the search stops
    when a ``next`` link repeats one already followed (said in ``notes``); requests stay on the API's origin
    (:func:`bounded_stac_io`)."""
    from pystac_client import Client

    from launcher.errors import ResponseError

    client = Client.open(url, stac_io=bounded_stac_io(url))
    kwargs: dict[str, Any] = {"collections": [query.collection], "limit": query.page_size}
    if query.bbox is not None:
        kwargs["bbox"] = list(query.bbox)
    if query.intersects is not None:
        kwargs["intersects"] = query.intersects
    if query.datetime:
        kwargs["datetime"] = query.datetime
    if query.max_cloud is not None:
        kwargs["query"] = {"eo:cloud_cover": {"lt": query.max_cloud}}
    if query.max_items is not None:
        kwargs["max_items"] = query.max_items
    search = client.search(**kwargs)
    count = 0
    followed: set[str] = set()
    for pages, page in enumerate(search.pages_as_dicts(), start=1):
        features = page.get("features") or []
        count += len(features)
        if query.max_items is None and count > MAX_ITEMS:
            raise ResponseError(
                f"the search at {url} returned more than {MAX_ITEMS} items: narrow it (--bbox, --datetime, "
                "--max-cloud) or raise --max-items"
            )
        if on_page:
            on_page(pages, count)
        yield from features
        link = _next_link(page)
        if link is None:
            return
        if link in followed:
            if notes is not None:
                notes.append(f"{url} repeated a next link after {pages} page(s): the search stopped there")
            return
        followed.add(link)
        if pages >= max_pages:
            raise ResponseError(
                f"the search at {url} has more than {max_pages} pages: narrow it or raise --max-pages"
            )


# --------------------------------------------------------------------------------------- SageMaker geospatial


def geospatial_request(query: SearchQuery, collection_arn: str = GEOSPATIAL_SENTINEL2_ARN) -> dict[str, Any]:
    """The SearchRasterDataCollection request for a query (pure)."""
    if not query.datetime or "/" not in query.datetime:
        raise ValueError("SageMaker geospatial needs a closed time range: --datetime START/END")
    start, end = query.datetime.split("/", 1)
    if start in ("", "..") or end in ("", ".."):
        raise ValueError("SageMaker geospatial needs a closed time range: --datetime START/END")
    start, end = _as_timestamp(start, end_of_day=False), _as_timestamp(end, end_of_day=True)
    if query.intersects is not None:
        geometry = query.intersects
        if geometry.get("type") != "Polygon":
            raise ValueError("SageMaker geospatial takes a Polygon area of interest (or use --bbox)")
        coordinates = geometry.get("coordinates")
        if not isinstance(coordinates, list) or not coordinates:
            raise ValueError("the Polygon of --intersects has no coordinates")
    elif query.bbox is not None:
        w, s, e, n = query.bbox
        coordinates = [[[w, s], [e, s], [e, n], [w, n], [w, s]]]
    else:
        raise ValueError("SageMaker geospatial needs an area of interest: --bbox or --intersects")
    rdc_query: dict[str, Any] = {
        "AreaOfInterest": {"AreaOfInterestGeometry": {"PolygonGeometry": {"Coordinates": coordinates}}},
        "TimeRangeFilter": {"StartTime": start, "EndTime": end},
    }
    if query.max_cloud is not None:
        rdc_query["PropertyFilters"] = {
            "Properties": [
                {"Property": {"EoCloudCover": {"LowerBound": 0.0, "UpperBound": float(query.max_cloud)}}}
            ],
            "LogicalOperator": "AND",
        }
    return {"Arn": collection_arn, "RasterDataCollectionQuery": rdc_query}


def _as_timestamp(text: str, end_of_day: bool) -> str:
    text = text.strip()
    if "T" in text:
        return text
    return f"{text}T23:59:59Z" if end_of_day else f"{text}T00:00:00Z"


def geospatial_item_to_stac(item: dict[str, Any], collection: str = DEFAULT_COLLECTION) -> dict[str, Any]:
    """A SearchRasterDataCollection item as a STAC-like item dict (pure)."""
    props_in = item.get("Properties") or {}
    dt = item.get("DateTime")
    if hasattr(dt, "isoformat"):
        dt = dt.isoformat()
    properties: dict[str, Any] = {"datetime": dt}
    if props_in.get("EoCloudCover") is not None:
        properties["eo:cloud_cover"] = props_in["EoCloudCover"]
    for src, dst in (("Platform", "platform"), ("ViewOffNadir", "view:off_nadir")):
        if props_in.get(src) is not None:
            properties[dst] = props_in[src]
    geometry = item.get("Geometry") or {}
    assets = {
        name: {"href": a.get("Href")} for name, a in (item.get("Assets") or {}).items() if a.get("Href")
    }
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": item.get("Id"),
        "collection": collection,
        "geometry": {"type": geometry.get("Type", "Polygon"), "coordinates": geometry.get("Coordinates")},
        "properties": properties,
        "assets": assets,
        "links": [],
    }


def search_geospatial(
    query: SearchQuery, on_page: Callable[[int, int], None] | None = None
) -> Iterator[dict[str, Any]]:
    """Every item of a SageMaker geospatial SearchRasterDataCollection, as STAC-like dicts."""
    from launcher.aws import client

    gs = client("sagemaker-geospatial", region="us-west-2")
    request = geospatial_request(query)
    token = None
    pages = count = 0
    while True:
        kwargs = dict(request)
        if token:
            kwargs["NextToken"] = token
        response = gs.search_raster_data_collection(**kwargs)
        pages += 1
        items = response.get("Items") or []
        count += len(items)
        if on_page:
            on_page(pages, count)
        for item in items:
            yield geospatial_item_to_stac(item, query.collection)
        token = response.get("NextToken")
        if not token or (query.max_items is not None and count >= query.max_items):
            return


def write_jsonl(items: Iterable[dict[str, Any]], path: str) -> int:
    """Items as JSON Lines that `plan` and the worker read: strict JSON (a NaN or Infinity an API sent, which
    `json.dumps` would write as it is and strict readers refuse, is written as null), one item per line."""
    from launcher.ndvi.store import item_bytes

    n = 0
    with open(path, "wb") as f:
        for item in items:
            f.write(item_bytes(item) + b"\n")
            n += 1
    return n


def read_items(path: str) -> list[dict[str, Any]]:
    """The STAC items of a file, read the way the worker reads its input (ndvi_worker.discover): a JSON item, an
    ItemCollection / FeatureCollection or a list of items, or JSON lines (one item per line; `launcher search`
    writes those). ValueError naming the file and line for anything that is not an item."""
    from ndvi_worker.discover import JSON_SUFFIXES, LINES_SUFFIXES, parse_document

    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a UTF-8 text file of STAC items") from None
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    suffix = os.path.splitext(path)[1].lower()
    lines = suffix in LINES_SUFFIXES
    if not lines and suffix not in JSON_SUFFIXES:  # any other name: one JSON document, else JSON lines
        try:
            json.loads(text)
        except (ValueError, RecursionError):
            lines = True
    try:
        entries = parse_document(text, path, path, lines)
    except RecursionError:
        raise ValueError(f"{path} is nested too deeply to hold STAC items") from None
    if entries is None:
        raise ValueError(
            f"{path} holds JSON but no STAC item (a Feature with assets), item collection or JSON lines"
        )
    errors = [f"{e.source.replace('#', ':')}: {e.error}" for e in entries if e.error]
    if errors:
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        raise ValueError("; ".join(errors[:3]) + more)
    return [e.item for e in entries if e.item is not None]


def check_datetime(text: str) -> str:
    """A STAC `datetime` filter checked before it is sent: an RFC 3339 date or date-time, or a range START/END
    (either end may be open: `..` or empty) with START <= END. Returns it unchanged; ValueError saying what is
    wrong otherwise."""
    import datetime as dt

    def parse(part: str, end: bool) -> dt.datetime | None:
        if part in ("", ".."):
            return None
        try:
            if len(part) == 10:
                day = dt.date.fromisoformat(part)
                value = dt.datetime.combine(day, dt.time.max if end else dt.time.min)
            else:
                if "T" not in part.upper():
                    raise ValueError
                value = dt.datetime.fromisoformat(part.replace("z", "Z").replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(
                f"--datetime: {part!r} is not a date (YYYY-MM-DD) or date-time (YYYY-MM-DDTHH:MM:SSZ); give "
                "START/END, e.g. 2023-12-01/2023-12-07"
            ) from None
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)

    parts = text.split("/")
    if len(parts) > 2:
        raise ValueError(f"--datetime takes one date or START/END, got {text!r}")
    if len(parts) == 1:
        if parse(parts[0], end=False) is None:
            raise ValueError("--datetime needs a date or a range START/END, e.g. 2023-12-01/2023-12-07")
        return text
    start, end = parse(parts[0], end=False), parse(parts[1], end=True)
    if start is None and end is None:
        raise ValueError("--datetime ../.. is no range: give at least one end, e.g. 2023-12-01/..")
    if start is not None and end is not None and start > end:
        raise ValueError(f"--datetime {text}: the start is after the end (give START/END in that order)")
    return text


def read_jsonl(path: str) -> list[dict[str, Any]]:
    items = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not a JSON line ({exc.msg})") from exc
            if not isinstance(item, dict) or "id" not in item:
                raise ValueError(f"{path}:{lineno}: not a STAC item (no 'id')")
            items.append(item)
    return items
