"""Search: tiles and item locations on real items, dedupe, and the CLI against a replayed Earth Search API."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from earthmon_testing.launcher import SEARCH_RESPONSES, V0_ITEM, extra_page_items, fixture_items, load_json
from launcher.aws import S3Uri
from launcher.cli import cli
from launcher.ndvi.items import item_location, mgrs_tile
from launcher.ndvi.search import (
    SearchQuery,
    dedupe,
    geometry_from_geojson,
    geospatial_item_to_stac,
    geospatial_request,
    parse_bbox,
    read_jsonl,
)


def _item(id_: str) -> dict:
    return next(i for i in fixture_items() if i["id"] == id_)


# ------------------------------------------------------------------------------------------ tiles, locations


def test_tile_from_v1_grid_code_and_v0_sentinel_props() -> None:
    assert mgrs_tile(_item("S2B_21PXK_20231110_0_L2A")) == "21PXK"
    v0 = load_json(V0_ITEM)
    assert "grid:code" not in v0["properties"]
    assert mgrs_tile(v0) == "55GDP"


def test_tile_normalises_single_digit_zones_across_schemas() -> None:
    v1 = {"id": "x", "properties": {"grid:code": "MGRS-9UXA"}}
    v0 = {
        "id": "y",
        "properties": {"sentinel:utm_zone": 9, "sentinel:latitude_band": "U", "sentinel:grid_square": "XA"},
    }
    by_id = {"id": "S2A_9UXA_20231201_0_L2A", "properties": {}}
    pc = {"id": "z", "properties": {"s2:mgrs_tile": "09UXA"}}
    assert {mgrs_tile(v1), mgrs_tile(v0), mgrs_tile(by_id), mgrs_tile(pc)} == {"09UXA"}
    assert mgrs_tile({"id": "LC08_L2SP_033032_20231008_02_T1", "properties": {}}) is None


def test_item_location_from_canonical_links() -> None:
    loc = item_location(_item("S2B_21PXK_20231110_0_L2A"))
    assert loc is not None
    assert loc.uri == (
        "s3://sentinel-cogs/sentinel-s2-l2a-cogs/21/P/XK/2023/11/S2B_21PXK_20231110_0_L2A/S2B_21PXK_20231110_0_L2A.json"
    )
    v0 = load_json(V0_ITEM)  # canonical is an https bucket URL
    assert item_location(v0).uri.endswith(
        "55/G/DP/2024/10/S2B_55GDP_20241003_0_L2A/S2B_55GDP_20241003_0_L2A.json"
    )
    assert item_location(v0).bucket == "sentinel-cogs"


def test_item_location_derived_from_cog_hrefs_and_none_for_api_only_items() -> None:
    item = copy.deepcopy(_item("S2B_21PXK_20231110_0_L2A"))
    item["links"] = []
    item["properties"].pop("earthsearch:s3_path")
    loc = item_location(item)
    assert loc is not None and loc.key.endswith("S2B_21PXK_20231110_0_L2A/S2B_21PXK_20231110_0_L2A.json")
    item["assets"] = {"red": {"href": "https://example.com/data/B04.tif"}}
    assert item_location(item) is None


def test_s3_urls() -> None:
    assert S3Uri.from_url("https://sentinel-cogs.s3.us-west-2.amazonaws.com/a/b.json").uri == (
        "s3://sentinel-cogs/a/b.json"
    )
    assert S3Uri.from_url("https://s3.us-west-2.amazonaws.com/bkt/a/b.json").uri == "s3://bkt/a/b.json"
    assert S3Uri.from_url("https://earth-search.aws.element84.com/v1/collections/x/items/y") is None


# ------------------------------------------------------------------------------------------------- dedupe


def test_least_cloudy_keeps_the_clearest_scene_per_tile() -> None:
    kept, stats = dedupe(extra_page_items(), "least-cloudy", collection="sentinel-2-l2a")
    ids = [i["id"] for i in kept]
    assert ids == ["S2B_21PXK_20231110_1_L2A", "S2B_21PYP_20231110_0_L2A", "S2B_22NCN_20231110_0_L2A"]
    assert stats.searched == 5 and stats.duplicates == 2 and stats.kept == 3


def test_first_and_latest_strategies() -> None:
    items = extra_page_items()
    first, _ = dedupe(items, "first")
    assert [i["id"] for i in first] == [
        "S2B_21PXK_20231110_1_L2A",
        "S2B_21PYP_20231110_0_L2A",
        "S2A_22NCN_20231105_0_L2A",
    ]
    latest, _ = dedupe(items, "latest")
    # 21PXK: same datetime, tie broken by id; 22NCN: the 2023-11-10 scene is later than 2023-11-05
    assert [i["id"] for i in latest] == [
        "S2B_21PXK_20231110_0_L2A",
        "S2B_21PYP_20231110_0_L2A",
        "S2B_22NCN_20231110_0_L2A",
    ]


def test_least_cloudy_tie_breaks_on_nodata_then_deterministically() -> None:
    a = {
        "id": "S2A_31UFU_20231201_0_L2A",
        "properties": {"eo:cloud_cover": 5.0, "s2:nodata_pixel_percentage": 60.0},
    }
    b = {
        "id": "S2B_31UFU_20231203_0_L2A",
        "properties": {"eo:cloud_cover": 5.0, "s2:nodata_pixel_percentage": 0.0},
    }
    c = {
        "id": "S2A_31UFU_20231205_0_L2A",
        "properties": {"eo:cloud_cover": 5.0, "s2:nodata_pixel_percentage": 0.0},
    }
    # b and c tie on cloud and no-data: the later acquisition (c) wins, whatever the order
    assert {dedupe(o)[0][0]["id"] for o in ([a, b, c], [c, b, a], [b, a, c])} == {"S2A_31UFU_20231205_0_L2A"}


def test_dedupe_is_independent_of_page_order() -> None:
    items = fixture_items() + extra_page_items()
    expected = [i["id"] for i in dedupe(items)[0]]
    rng = random.Random(7)
    for _ in range(5):
        shuffled = items[:]
        rng.shuffle(shuffled)
        assert [i["id"] for i in dedupe(shuffled)[0]] == expected


def test_dedupe_drops_other_collections_and_rejects_unknown_strategy() -> None:
    page2 = load_json(SEARCH_RESPONSES / "earth-search-v1-search-page2.json")["features"]
    kept, stats = dedupe(page2, collection="sentinel-2-l2a")
    assert [i["id"] for i in kept] == ["S2A_37WDS_20240419_0_L2A", "S2A_38WMA_20240419_0_L2A"]
    assert stats.other_collection == 8
    with pytest.raises(ValueError, match="least-cloudy"):
        dedupe([], "clearest")


def test_query_validation() -> None:
    assert parse_bbox("-179.03,-55.97,179.37,83.78") == (-179.03, -55.97, 179.37, 83.78)
    with pytest.raises(ValueError, match="four numbers"):
        parse_bbox("1,2,3")
    with pytest.raises(ValueError, match="S <= N"):
        SearchQuery(bbox=(0, 10, 1, 5))
    with pytest.raises(ValueError, match="0..100"):
        SearchQuery(bbox=(0, 0, 1, 1), max_cloud=120)
    fc = {"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": {"type": "Point"}}] * 2}
    with pytest.raises(ValueError, match="2 features"):
        geometry_from_geojson(fc)


# -------------------------------------------------------------------------------------- CLI against a server


def test_search_cli_follows_every_page_and_dedupes(stac_server, tmp_path: Path) -> None:
    out = tmp_path / "items.jsonl"
    result = CliRunner().invoke(
        cli,
        [
            "search",
            "--stac-url",
            stac_server.url,
            "--bbox=-60,0,-50,10",
            "--datetime",
            "2023-12-01/2023-12-07",
            "--max-cloud",
            "10",
            "--page-size",
            "10",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    # 3 pages: 10 + 10 real Earth Search features, then 5 built from real items
    assert "found 25 item(s)" in result.output
    assert "dropped 18 item(s) of other collections" in result.output
    kept = read_jsonl(str(out))
    assert [i["id"] for i in kept] == [
        "S2B_21PXK_20231110_1_L2A",
        "S2B_21PYP_20231110_0_L2A",
        "S2B_22NCN_20231110_0_L2A",
        "S2A_37WDS_20240419_0_L2A",
        "S2A_38WMA_20240419_0_L2A",
    ]
    assert "kept 5 scene(s)" in result.output
    first = stac_server.requests[0]
    assert first["collections"] == ["sentinel-2-l2a"]
    assert first["bbox"] == [-60.0, 0.0, -50.0, 10.0]
    assert first["datetime"].startswith("2023-12-01T00:00:00") and "2023-12-07T23:59:59" in first["datetime"]
    assert first["query"] == {"eo:cloud_cover": {"lt": 10.0}}
    assert first["limit"] == 10
    token1 = load_json(SEARCH_RESPONSES / "earth-search-v1-search-page1.json")["links"][0]["body"]["next"]
    assert [r.get("next") for r in stac_server.requests] == [None, token1, "page3-token"]


def test_search_cli_intersects_file_and_usage_errors(stac_server, tmp_path: Path) -> None:
    aoi = tmp_path / "aoi.geojson"
    polygon = {"type": "Polygon", "coordinates": [[[-56, 8], [-55, 8], [-55, 9], [-56, 9], [-56, 8]]]}
    aoi.write_text(
        json.dumps({"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": polygon}]})
    )
    out = tmp_path / "items.jsonl"
    result = CliRunner().invoke(
        cli,
        [
            "search",
            "--stac-url",
            stac_server.url,
            "--intersects",
            str(aoi),
            "--dedupe",
            "first",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert stac_server.requests[0]["intersects"] == polygon
    assert "bbox" not in stac_server.requests[0] and "query" not in stac_server.requests[0]
    result = CliRunner().invoke(cli, ["search", "--stac-url", stac_server.url, "--out", str(out)])
    assert result.exit_code == 2 and "--bbox" in result.output
    result = CliRunner().invoke(cli, ["search", "--bbox", "1,2,3", "--out", str(out)])
    assert result.exit_code == 2 and "four numbers" in result.output


# ------------------------------------------------------------------------------------- SageMaker geospatial


def _geospatial_item(item: dict) -> dict:
    return {
        "Id": item["id"],
        "DateTime": item["properties"]["datetime"],
        "Geometry": {"Type": "Polygon", "Coordinates": item["geometry"]["coordinates"]},
        "Assets": {
            name: {"Href": a["href"]} for name, a in item["assets"].items() if name in ("red", "nir", "scl")
        },
        "Properties": {"EoCloudCover": item["properties"]["eo:cloud_cover"], "Platform": "sentinel-2b"},
    }


def test_geospatial_request_and_conversion() -> None:
    req = geospatial_request(
        SearchQuery(bbox=(-56, 8, -55, 9), datetime="2023-12-01/2023-12-07", max_cloud=10)
    )
    q = req["RasterDataCollectionQuery"]
    assert req["Arn"].startswith("arn:aws:sagemaker-geospatial:us-west-2:")
    assert q["TimeRangeFilter"] == {"StartTime": "2023-12-01T00:00:00Z", "EndTime": "2023-12-07T23:59:59Z"}
    assert q["AreaOfInterest"]["AreaOfInterestGeometry"]["PolygonGeometry"]["Coordinates"][0][0] == [-56, 8]
    assert q["PropertyFilters"]["Properties"][0]["Property"]["EoCloudCover"]["UpperBound"] == 10.0
    with pytest.raises(ValueError, match="closed time range"):
        geospatial_request(SearchQuery(bbox=(0, 0, 1, 1), datetime="2023-12-01/.."))
    stac = geospatial_item_to_stac(_geospatial_item(_item("S2B_21PXK_20231110_0_L2A")))
    assert mgrs_tile(stac) == "21PXK"
    assert item_location(stac).uri.endswith("S2B_21PXK_20231110_0_L2A/S2B_21PXK_20231110_0_L2A.json")


def test_search_cli_sagemaker_geospatial_pages(aws, tmp_path: Path) -> None:
    items = [
        _item("S2B_21PXK_20231110_0_L2A"),
        _item("S2B_21PYP_20231110_0_L2A"),
        _item("S2B_22NCN_20231110_0_L2A"),
    ]
    pages = {
        None: {"Items": [_geospatial_item(i) for i in items[:2]], "NextToken": "t2"},
        "t2": {"Items": [_geospatial_item(items[2])]},
    }
    aws.answer(
        "sagemaker-geospatial", "SearchRasterDataCollection", lambda body: (200, pages[body.get("NextToken")])
    )
    out = tmp_path / "items.jsonl"
    result = CliRunner().invoke(
        cli,
        [
            "search",
            "--source",
            "sagemaker-geospatial",
            "--bbox=-56,8,-55,9",
            "--datetime",
            "2023-11-01/2023-11-30",
            "--max-cloud",
            "20",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    calls = aws.injected("SearchRasterDataCollection")
    assert len(calls) == 2
    time_range = calls[0].body["RasterDataCollectionQuery"]["TimeRangeFilter"]
    # the timestamps go on the wire as epoch seconds: 2023-11-01T00:00:00Z and 2023-11-30T23:59:59Z
    assert (time_range["StartTime"], time_range["EndTime"]) == (1698796800, 1701388799)
    assert "NextToken" not in calls[0].body and calls[1].body["NextToken"] == "t2"
    assert [i["id"] for i in read_jsonl(str(out))] == [i["id"] for i in items]


def test_search_cli_explains_an_unreachable_api(tmp_path: Path) -> None:
    from earthmon_testing.launcher import free_port

    url = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(
        cli, ["search", "--stac-url", url, "--bbox=0,0,1,1", "--out", str(tmp_path / "i.jsonl")]
    )
    assert result.exit_code == 1
    assert f"the STAC search at {url} failed" in result.output and "--stac-url" in result.output


# ------------------------------------------------------------------------------------- a hostile STAC API
class HostileStac:
    """A STAC API on loopback whose search pages are ``page(n, body)`` (n from 1), and a second server ("the
    other host") recording whatever reaches it."""

    def __init__(self, page) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.requests: list[tuple[str, str, dict]] = []
        self.other: list[tuple[str, str, dict]] = []
        owner = self

        def handler(record, respond):
            class Handler(BaseHTTPRequestHandler):
                def log_message(self, *args) -> None:
                    pass

                def _any(self) -> None:
                    length = int(self.headers.get("Content-Length") or 0)
                    body = json.loads(self.rfile.read(length) or b"{}")
                    record.append((self.command, self.path, dict(self.headers)))
                    status, payload = respond(self.path, body)
                    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)

                do_GET = do_POST = _any  # noqa: N815

            return Handler

        def api(path: str, body: dict):
            if path.rstrip("/") == "":
                return 200, self.landing
            owner.n += 1
            return 200, page(owner.n, body)

        self.n = 0
        self.servers = []
        for record, respond in ((self.other, lambda p, b: (200, {"type": "FeatureCollection", "features": []})),
                                (self.requests, api)):  # fmt: skip
            server = ThreadingHTTPServer(("127.0.0.1", 0), handler(record, respond))
            threading.Thread(target=server.serve_forever, daemon=True).start()
            self.servers.append(server)
        self.other_url = f"http://127.0.0.1:{self.servers[0].server_address[1]}"
        self.url = f"http://127.0.0.1:{self.servers[1].server_address[1]}"
        self.landing = {
            "type": "Catalog", "id": "hostile", "stac_version": "1.0.0", "description": "d",
            "conformsTo": ["https://api.stacspec.org/v1.0.0/core", "https://api.stacspec.org/v1.0.0/item-search"],
            "links": [{"rel": "search", "href": f"{self.url}/search", "method": "POST", "type": "application/geo+json"},
                      {"rel": "self", "href": self.url}, {"rel": "root", "href": self.url}],
        }  # fmt: skip

    def close(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()


def _feature(n: int) -> dict:
    item = copy.deepcopy(fixture_items()[0])
    item["id"] = f"S2B_{n:05d}_L2A"
    return item


def _search(api: HostileStac, tmp_path: Path, *extra: str):
    out = tmp_path / "items.jsonl"
    args = ["search", "--stac-url", api.url, "--bbox=0,0,1,1", "--out", str(out), *extra]
    return CliRunner().invoke(cli, args), out


@pytest.fixture
def hostile_stac():
    made: list[HostileStac] = []

    def make(page) -> HostileStac:
        made.append(HostileStac(page))
        return made[-1]

    yield make
    for api in made:
        api.close()


def test_search_stops_an_endless_pagination_at_max_pages(hostile_stac, tmp_path: Path) -> None:
    """F10: a server that always links to one more page held `launcher search` for ever."""
    api = hostile_stac(
        lambda n, body: {
            "type": "FeatureCollection",
            "features": [_feature(n)],
            "links": [
                {
                    "rel": "next",
                    "href": f"{api.url}/search?page={n + 1}",
                    "method": "POST",
                    "body": {"page": n + 1},
                }
            ],
        }
    )
    result, out = _search(api, tmp_path, "--max-pages", "7")
    assert result.exit_code == 1, result.output
    assert "more than 7 pages" in result.output and "--max-pages" in result.output
    assert api.n == 7 and not out.exists()
    assert "Traceback" not in result.output and result.output.count("Error") == 1
    result, _ = _search(api, tmp_path, "--max-pages", "0")
    assert result.exit_code == 2 and "--max-pages" in result.output


def test_search_stops_when_a_next_link_repeats(hostile_stac, tmp_path: Path) -> None:
    api = hostile_stac(
        lambda n, body: {
            "type": "FeatureCollection",
            "features": [_feature(n)],
            "links": [
                {"rel": "next", "href": f"{api.url}/search", "method": "POST", "body": {"token": "same"}}
            ],
        }
    )
    result, out = _search(api, tmp_path)
    assert result.exit_code == 0, result.output
    assert "repeated a next link after 2 page(s)" in result.output
    assert api.n == 2 and len(read_jsonl(str(out))) == 1  # both items are of one tile


def test_search_refuses_a_next_link_to_another_origin_and_ignores_link_headers(
    hostile_stac, tmp_path
) -> None:
    """F10: a next link to another host was fetched, with the method and headers the link chose."""

    def page(n, body):
        links = [{"rel": "next", "href": f"{api.other_url}/B04.tif", "method": "POST", "body": {"a": 1},
                  "headers": {"X-Injected": "1"}}]  # fmt: skip
        if n == 1:  # first a same-origin next link with headers of its own: followed, the headers dropped
            links = [{"rel": "next", "href": f"{api.url}/search", "method": "POST", "body": {"next": "2"},
                      "headers": {"X-Injected": "1", "Authorization": "Bearer stolen"}}]  # fmt: skip
        return {"type": "FeatureCollection", "features": [_feature(n)], "links": links}

    api = hostile_stac(page)
    result, out = _search(api, tmp_path)
    assert result.exit_code == 1, result.output
    assert f"links to another origin ({api.other_url}/B04.tif): not followed" in result.output
    assert api.other == [] and not out.exists()
    assert len(api.requests) == 3  # landing, page 1, page 2
    assert not any("X-Injected" in headers or "Authorization" in headers for _, _, headers in api.requests)
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_search_refuses_a_search_link_to_another_origin(hostile_stac, tmp_path: Path) -> None:
    api = hostile_stac(lambda n, body: {"type": "FeatureCollection", "features": []})
    api.landing["links"][0]["href"] = f"{api.other_url}/search"
    result, _ = _search(api, tmp_path)
    assert result.exit_code == 1 and "another origin" in result.output, result.output
    assert api.other == []


def test_search_caps_the_size_of_a_page(hostile_stac, tmp_path: Path, monkeypatch) -> None:
    import launcher.ndvi.search as search

    monkeypatch.setattr(search, "MAX_PAGE_BYTES", 2**20)
    api = hostile_stac(lambda n, body: {"type": "FeatureCollection", "features": [_feature(n)],
                                        "padding": "x" * (3 * 2**20)})  # fmt: skip
    result, out = _search(api, tmp_path)
    assert result.exit_code == 1, result.output
    assert "more than the 1 MiB allowed" in result.output and not out.exists()


def test_search_caps_the_items_without_max_items(hostile_stac, tmp_path: Path, monkeypatch) -> None:
    import launcher.ndvi.search as search

    monkeypatch.setattr(search, "MAX_ITEMS", 3)
    api = hostile_stac(lambda n, body: {"type": "FeatureCollection", "features": [_feature(n * 10 + i) for i in
                                        range(2)], "links": [{"rel": "next", "href": f"{api.url}/search",
                                        "method": "POST", "body": {"page": n + 1}}]})  # fmt: skip
    result, _ = _search(api, tmp_path)
    assert result.exit_code == 1 and "more than 3 items" in result.output and "--max-items" in result.output
    result, out = _search(api, tmp_path, "--max-items", "5")  # asked for: a truncated search, no error
    assert result.exit_code == 0, result.output
    assert "found 5 item(s)" in result.output
