"""The STAC layer on the real Earth Search items (v0, v1 and contrast items from other catalogues)."""

import json
from pathlib import Path

import pytest

from earthmon_testing.worker import STAC_ITEMS
from ndvi_worker.stac import (
    ItemError,
    decide_offset,
    items_in_document,
    mgrs_tile,
    parse_baseline,
    resolve_href,
    scene_from_item,
    validate_item_id,
)

V1 = sorted((STAC_ITEMS / "earth-search-v1").glob("*.json"))
V0 = sorted((STAC_ITEMS / "earth-search-v0").glob("*.json"))


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def test_fixtures_are_present():
    assert len(V1) == 37 and len(V0) == 11


@pytest.mark.parametrize("path", V1 + V0, ids=lambda p: f"{p.parent.name[-2:]}-{p.stem}")
def test_offset_rule_on_real_items(path):
    item = load(path)
    props = item["properties"]
    flag = props.get("earthsearch:boa_offset_applied", props.get("sentinel:boa_offset_applied"))
    baseline = props.get("s2:processing_baseline") or props.get("sentinel:processing_baseline")
    decision = decide_offset(props)
    if flag is True:
        # the COG producer removed the offset: the stale raster:bands offset (-0.1) must NOT be applied again
        assert decision.add_dn == 0
    elif baseline is not None and float(baseline) >= 4.0:
        assert decision.add_dn == -1000
    else:
        assert decision.add_dn == 0  # old baselines, or pre-2022 items with neither flag nor baseline
    assert decision.reason


def test_v1_items_carry_a_stale_raster_offset_that_is_ignored():
    stale = [p for p in V1 if load(p)["assets"]["red"]["raster:bands"][0].get("offset") == -0.1]
    assert stale, "the fixtures should contain v1 items with raster:bands offset -0.1"
    for p in stale:
        item = load(p)
        assert item["properties"]["earthsearch:boa_offset_applied"] is True
        assert scene_from_item(item).offset.add_dn == 0


def test_contrast_items_from_other_catalogues():
    other = {p.stem: load(p) for p in (STAC_ITEMS / "other").glob("*.json")}
    # the older Earth Search sentinel-s2-l2a (JP2) item: 'sentinel2:' prefix, baseline 04.00, no flag -> offset
    assert decide_offset(other["S2A_52HGH_20221007_0_L2A"]["properties"]).add_dn == -1000
    # Planetary Computer keeps raw DN; baseline 02.12 predates the offset
    pc = next(v for k, v in other.items() if k.startswith("S2A_MSIL2A"))
    assert decide_offset(pc["properties"]).add_dn == 0
    # collection-1 items are not offset-applied: baseline 05.10 -> offset
    c1 = next(v for k, v in other.items() if "T37MGP" in k)
    assert decide_offset(c1["properties"]).add_dn == -1000


def test_flag_false_with_new_baseline_applies_offset_and_overrides_win():
    props = {"earthsearch:boa_offset_applied": False, "s2:processing_baseline": "05.09"}
    assert decide_offset(props).add_dn == -1000
    assert decide_offset(props, "skip").add_dn == 0
    assert decide_offset({"earthsearch:boa_offset_applied": True}, "apply").add_dn == -1000
    with pytest.raises(ValueError):
        decide_offset(props, "maybe")


def test_date_rule_when_nothing_else_is_known():
    assert decide_offset({"datetime": "2022-01-24T10:00:00Z"}).add_dn == 0
    assert decide_offset({"datetime": "2022-01-25T10:00:00Z"}).add_dn == -1000
    assert decide_offset({}).add_dn == 0


@pytest.mark.parametrize(
    ("text", "value"),
    [("04.00", 4.0), ("05.09", 5.09), ("02.14", 2.14), ("N0400", 4.0), (4, 4.0), ("x", None)],
)
def test_parse_baseline(text, value):
    assert parse_baseline(text) == value


def test_both_schemas_resolve_bands():
    v1 = scene_from_item(load(STAC_ITEMS / "earth-search-v1" / "S2A_13TDE_20231008_0_L2A.json"))
    v0 = scene_from_item(load(STAC_ITEMS / "earth-search-v0" / "S2A_44XNS_20230421_0_L2A.json"))
    assert v1.red.endswith("/B04.tif") and v1.nir.endswith("/B08.tif") and v1.scl.endswith("/SCL.tif")
    assert v0.red.endswith("/B04.tif") and v0.nir.endswith("/B08.tif") and v0.scl.endswith("/SCL.tif")
    assert v1.mgrs_tile == "13TDE" and v0.mgrs_tile == "44XNS"
    # outputs are named after the item id, never after the href's parent folder
    assert v1.output_stem == "S2A_13TDE_20231008_0_L2A_ndvi"


def test_mgrs_tile_for_every_real_item():
    for p in V1 + V0:
        item = load(p)
        assert mgrs_tile(item) == item["id"].split("_")[1]


def test_jp2_only_items_are_rejected_clearly():
    item = load(STAC_ITEMS / "other" / "S2A_52HGH_20221007_0_L2A.json")
    with pytest.raises(ItemError, match="JPEG2000"):
        scene_from_item(item)


def test_missing_asset_names_what_is_missing():
    item = load(V1[0])
    del item["assets"]["scl"]
    with pytest.raises(ItemError, match="missing asset for scl"):
        scene_from_item(item)


@pytest.mark.parametrize(
    "bad",
    ["../../etc/passwd", "a/b", "..", ".hidden", "x" * 300, "", "id with spaces", "id\nnewline", None, 42],
)
def test_hostile_item_ids_are_rejected(bad):
    with pytest.raises(ItemError):
        validate_item_id(bad)


def test_resolve_href():
    assert resolve_href("./B04.tif", "/data/a/item.json") == "/data/a/B04.tif"
    assert resolve_href("../b/B04.tif", "/data/a/item.json") == "/data/b/B04.tif"
    assert resolve_href("https://x/y.tif", "/data/a/item.json") == "https://x/y.tif"
    assert resolve_href("s3://bucket/k.tif", None) == "s3://bucket/k.tif"
    assert resolve_href("B04.tif", "https://h/p/item.json") == "https://h/p/B04.tif"
    with pytest.raises(ItemError):
        resolve_href("B04.tif", None)


def test_items_in_documents():
    item = load(V1[0])
    assert items_in_document(item) == [item]
    assert items_in_document({"type": "FeatureCollection", "features": [item, item]}) == [item, item]
    assert items_in_document([item]) == [item]
    assert items_in_document({"type": "Catalog"}) is None
    assert items_in_document({"type": "FeatureCollection", "features": []}) is None
