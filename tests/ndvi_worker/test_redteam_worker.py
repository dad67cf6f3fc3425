"""Regression tests for the red team's worker findings (tests/redteam_findings.md): F2 (MGRS tile from a product
item names paths), F3 (other spellings of the metadata address), F4 (deeply nested JSON fails the whole run), F6
(NaN in a product item ends the mosaic in a traceback), F9 (redaction gaps), and the products' report host name."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from earthmon_testing.products import write_product
from ndvi_worker.discover import MAX_DEPTH, MAX_DOCUMENT_BYTES, _depth, find_items, parse_document
from ndvi_worker.safety import HrefError, UnsafePath, check_href, path_under, redact
from ndvi_worker.stac import ItemError, mgrs_tile

WORKER = [sys.executable, "-m", "ndvi_worker"]


def _tree(root: Path, skip: tuple[Path, ...] = ()) -> set[str]:
    """Every path under ``root`` (files and folders), except under ``skip``."""
    return {
        str(p.relative_to(root)) for p in root.rglob("*") if not any(p == s or s in p.parents for s in skip)
    }


def _product(folder: Path, item_id: str, date: str, value: float = 0.5) -> Path:
    return write_product(folder, item_id, np.full((64, 64), value, dtype="float32"), date)


# ------------------------------------------------------------------------------------------------ F2


HOSTILE_TILE_FIELDS = [
    {"mgrs:utm_zone": 31, "mgrs:latitude_band": "U/../../../victim/ESCAPED", "mgrs:grid_square": "FU"},
    {"mgrs:utm_zone": 31, "mgrs:latitude_band": "U", "mgrs:grid_square": "../.."},
    {"mgrs:utm_zone": 31, "mgrs:latitude_band": "I", "mgrs:grid_square": "FU"},
    {"mgrs:utm_zone": 31, "mgrs:latitude_band": "U", "mgrs:grid_square": "FO"},
    {"mgrs:utm_zone": 31, "mgrs:latitude_band": "UU", "mgrs:grid_square": "FU"},
    {"mgrs:utm_zone": 61, "mgrs:latitude_band": "U", "mgrs:grid_square": "FU"},
    {"mgrs:utm_zone": "3/", "mgrs:latitude_band": "U", "mgrs:grid_square": "FU"},
    {"mgrs:utm_zone": True, "mgrs:latitude_band": "U", "mgrs:grid_square": "FU"},
    {"mgrs:utm_zone": 31.5, "mgrs:latitude_band": "U", "mgrs:grid_square": "FU"},
    {"mgrs:utm_zone": 31, "mgrs:latitude_band": "U"},
    {"sentinel:utm_zone": 31, "sentinel:latitude_band": "U", "sentinel:grid_square": "FU/../../x"},
    {"grid:code": "MGRS-31U/../../FU"},
    {"grid:code": "MGRS-99UFU"},
    {"s2:mgrs_tile": "31UFU/.."},
]


@pytest.mark.parametrize("fields", HOSTILE_TILE_FIELDS)
def test_f2_malformed_mgrs_fields_refuse_the_item(fields):
    """A malformed tile field refuses the item with the field named (never replaced by the id's tile), and the
    lenient form (for display) never returns anything but a normalised tile."""
    item = {"id": "S2B_31UFU_20231204_0_L2A", "properties": fields}
    with pytest.raises(ItemError, match="malformed MGRS tile"):
        mgrs_tile(item, strict=True)
    lenient = mgrs_tile(item)
    assert lenient is None or lenient == "31UFU"


def test_f2_well_formed_tiles_still_parse():
    for props, tile in [
        ({"mgrs:utm_zone": 9, "mgrs:latitude_band": "u", "mgrs:grid_square": "xa"}, "09UXA"),
        ({"sentinel:utm_zone": "44", "sentinel:latitude_band": "X", "sentinel:grid_square": "NS"}, "44XNS"),
        ({"grid:code": " MGRS-31UFU "}, "31UFU"),
        ({"grid:code": "WRS2-123045"}, "31UFU"),  # not an MGRS code: the id says
        ({"s2:mgrs_tile": "60CWT"}, "60CWT"),
    ]:
        assert mgrs_tile({"id": "S2B_31UFU_20231204_0_L2A", "properties": props}, strict=True) == tile


def test_f2_composite_stem_refuses_a_hostile_tile():
    import datetime as dt

    from ndvi_worker.composite import composite_stem

    day = dt.date(2023, 12, 4)
    assert composite_stem("31UFU", day, day, "max") == "31UFU_20231204_20231204_ndvi-max"
    with pytest.raises(ItemError):
        composite_stem("31U/../../../VICTIM/ESCAPEDFU", day, day, "max")


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ".", ".hidden", "", "a\x00b", "x" * 300, "a\\b"])
def test_f2_path_under_refuses_names_that_leave_the_root(tmp_path: Path, name: str):
    with pytest.raises(UnsafePath):
        path_under(tmp_path, name)


def test_f2_scratch_dir_refuses_a_symlink_out_of_the_staging_root(tmp_path: Path):
    from ndvi_worker.io import scratch_dir

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("precious")
    root = tmp_path / "staging"
    root.mkdir()
    (root / "S2B_31UFU_20231204_0_L2A_ndvi").symlink_to(outside)
    with pytest.raises(UnsafePath), scratch_dir(root, "S2B_31UFU_20231204_0_L2A_ndvi"):
        pytest.fail("the scratch folder must be refused")
    assert (outside / "precious.txt").read_text() == "precious"
    with scratch_dir(root, "ok_ndvi") as work:
        assert work == root / "ok_ndvi" and work.is_dir()
    assert not (root / "ok_ndvi").exists()


def test_f2_red_team_repro_touches_nothing_outside_output_and_staging(tmp_path: Path):
    """The red team's reproduction: a product whose mgrs:latitude_band climbs out of the staging folder, with the
    staging folder's ``31U`` present (second run) and a victim directory named like a composite. The product is
    refused with the field named, the good product is composited, nothing outside --output and the staging folder
    is created or deleted, and there is no traceback."""
    w = tmp_path / "w"
    cin, cout = w / "cin", w / "cout"
    bad = _product(cin, "S2B_31UFU_20231204_0_L2A", "2023-12-04")
    good = _product(cin, "S2A_31UFU_20231205_0_L2A", "2023-12-05")
    doc = json.loads(bad.read_text())
    doc["properties"].pop("grid:code")
    doc["properties"].update(
        {"mgrs:utm_zone": 31, "mgrs:latitude_band": "U/../../../VICTIM/ESCAPED", "mgrs:grid_square": "FU"}
    )
    bad.write_text(json.dumps(doc))
    victim = tmp_path / "VICTIM" / "ESCAPEDFU_20231204_20231204_ndvi-max"
    victim.mkdir(parents=True)
    (victim / "data.txt").write_text("precious")
    staging = w / ".ndvi-staging-test"
    (staging / "31U").mkdir(parents=True)  # what the first run left: makes the '..' path resolve
    before = _tree(tmp_path, skip=(cout, staging))
    proc = subprocess.run(
        [*WORKER, "composite", "--input", "cin", "--output", "cout", "--method", "max"]
        + ["--staging-dir", str(staging), "--workers", "1"],
        cwd=w,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 1, proc.stderr
    assert (victim / "data.txt").read_text() == "precious"
    assert _tree(tmp_path, skip=(cout, staging)) == before
    assert "malformed MGRS tile in mgrs:" in proc.stderr
    report = json.loads(next((cout / "_reports").glob("composite-*.json")).read_text())
    assert [p["source"] for p in report["failed"]] == [bad.name]
    assert [d["output"] for d in report["done"]] == ["31UFU_20231205_20231205_ndvi-max.json"]
    assert sorted(p.name for p in cout.iterdir() if p.is_file()) == [
        "31UFU_20231205_20231205_ndvi-max.json",
        "31UFU_20231205_20231205_ndvi-max.png",
        "31UFU_20231205_20231205_ndvi-max.tif",
    ]
    assert good.exists()


def test_f2_a_user_staging_dir_keeps_its_other_content(tmp_path: Path):
    """The products' staging root used to be rmtree'd at the end, even a user's --staging-dir with other files."""
    from ndvi_worker.products_io import CompositeOptions, run_composite

    _product(tmp_path / "in", "S2A_31UFU_20231205_0_L2A", "2023-12-05")
    staging = tmp_path / "scratch"
    staging.mkdir()
    (staging / "mine.txt").write_text("mine")
    report, status = run_composite(
        tmp_path / "in", tmp_path / "out", CompositeOptions("max", None, workers=1), staging
    )
    assert status == 0 and len(report.done) == 1
    assert (staging / "mine.txt").read_text() == "mine"
    assert [p.name for p in staging.iterdir()] == ["mine.txt"]


# ------------------------------------------------------------------------------------------------ F3

METADATA_SPELLINGS = [
    "http://169.254.169.254/latest/meta-data/x.tif",
    "http://2852039166/latest/x.tif",
    "http://0xa9fea9fe/x.tif",
    "http://0XA9FEA9FE/x.tif",
    "http://0251.0376.0251.0376/x.tif",
    "http://0xa9.0xfe.0xa9.0xfe/x.tif",
    "http://169.254.43518/x.tif",
    "http://169.16689662/x.tif",
    "http://169.254.169.254./x.tif",
    "http://[::ffff:169.254.169.254]/x.tif",
    "http://[::ffff:a9fe:a9fe]/x.tif",
    "http://[::169.254.169.254]/x.tif",
    "http://[64:ff9b::a9fe:a9fe]/x.tif",
    "http://[2002:a9fe:a9fe::]/x.tif",
    "http://[fd00:ec2::254]/x.tif",
    "http://[fd00:ec2:0::254]/x.tif",
    "http://[FD00:0EC2:0000:0000:0000:0000:0000:0254]/x.tif",
    "http://[fd20:ce::254]/x.tif",
    "http://[fe80::1%25eth0]/x.tif",
    "http://100.100.100.200/x.tif",
    "http://instance-data.ec2.internal/x.tif",
    "http://instance-data/x.tif",
    "http://metadata.google.internal./x.tif",
    "http://METADATA.GOOGLE.INTERNAL/x.tif",
    "http://metadata/x.tif",
    "http://0.0.0.0/x.tif",
    "http://0/x.tif",
    "http://[::]/x.tif",
    "http://%31%36%39.254.169.254/x.tif",
    "http://１６９.２５４.１６９.２５４/x.tif",
    "http://169.254.169.254.nip.io.1/x.tif",
    "http://1.2.3.4.5/x.tif",
    "http://2130706433:18090/B04.tif",  # 127.0.0.1, written as the red team's end-to-end fetch
    "http://127.1/x.tif",
    "http://0x7f000001/x.tif",
    "http://017700000001/x.tif",
]


@pytest.mark.parametrize("href", METADATA_SPELLINGS)
def test_f3_every_spelling_of_the_metadata_address_is_refused(href):
    with pytest.raises(HrefError):
        check_href(href)


@pytest.mark.parametrize(
    "href",
    [
        "http://127.0.0.1:8080/a/B04.tif",
        "http://localhost:8080/a/B04.tif",
        "http://[::1]:8080/a/B04.tif",
        "http://10.0.0.5/a/B04.tif",
        "http://172.17.0.1:41234/a/B04.tif",
        "https://sentinel-cogs.s3.us-west-2.amazonaws.com/a/B04.tif",
        "https://8.8.8.8/a/B04.tif",
    ],
)
def test_f3_loopback_and_private_hosts_by_default_and_refused_on_request(href, monkeypatch):
    monkeypatch.delenv("EARTHMON_ALLOW_PRIVATE_HOSTS", raising=False)
    assert check_href(href) == "http"
    monkeypatch.setenv("EARTHMON_ALLOW_PRIVATE_HOSTS", "0")
    if "sentinel-cogs" in href or "8.8.8.8" in href:
        assert check_href(href) == "http"
    else:
        with pytest.raises(HrefError, match="EARTHMON_ALLOW_PRIVATE_HOSTS=0"):
            check_href(href)


def test_f3_decimal_loopback_is_not_fetched_end_to_end(synthetic_input, run_worker, tmp_path):
    """The red team's end-to-end fetch: bands at ``http://2130706433:PORT/`` (127.0.0.1) and the decimal metadata
    address. Both scenes are rejected, the canary server on 127.0.0.1 receives nothing, the others complete."""
    from earthmon_testing.worker import Canary

    items = sorted(synthetic_input.rglob("*.json"))
    with Canary() as canary:
        for path, host in zip(items[:2], (f"2130706433:{canary.port}", "2852039166"), strict=True):
            item = json.loads(path.read_text())
            key = "red" if "red" in item["assets"] else "B04"
            item["assets"][key]["href"] = f"http://{host}/B04.tif"
            path.write_text(json.dumps(item))
        out = tmp_path / "out"
        proc = run_worker("--input", str(synthetic_input), "--output", str(out), check_code=1)
        assert canary.requests == []
    report = json.loads(next((out / "_reports").glob("*.json")).read_text())
    failed = [s for s in report["scenes"] if s["status"] == "failed"]
    assert len(failed) == 2 and all("rejected red href" in s["error"] for s in failed), failed
    assert sum(s["status"] == "done" for s in report["scenes"]) == len(items) - 2
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------------------------ F4


def test_f4_deep_nesting_is_one_failed_entry():
    deep = "[" * 100_000 + "]" * 100_000
    (entry,) = parse_document(deep, "b_deep.json", "/in/b_deep.json", lines=False)
    assert entry.item is None and "malformed JSON" in entry.error and "deep" in entry.error
    nested = '{"type": "Feature", "assets": {}, "properties": {"x": ' + "[" * 200 + "]" * 200 + "}}"
    (entry,) = parse_document(nested, "c.json", "/in/c.json", lines=False)
    assert "deeper than" in entry.error
    good = json.dumps({"type": "Feature", "stac_version": "1.0.0", "id": "a", "assets": {}, "properties": {}})
    entries = parse_document(f"{good}\n{deep}\n{good}\n", "x.jsonl", "/in/x.jsonl", lines=True)
    assert [e.error is None for e in entries] == [True, False, True]


def _walk_depth(doc: object) -> int:
    """Reference: the nesting depth of a parsed document, by recursion."""
    if isinstance(doc, dict):
        return 1 + max(map(_walk_depth, doc.values()), default=0)
    if isinstance(doc, list):
        return 1 + max(map(_walk_depth, doc), default=0)
    return 0


_TRICKY = st.text(alphabet='[]{}"\\/ab\n\u00e9\u2028\x85\U0001f600', max_size=8)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _TRICKY,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TRICKY, inner, max_size=4),
    max_leaves=40,
)


@settings(max_examples=600, deadline=None)
@given(doc=_JSON, indent=st.sampled_from([None, 1]), ascii_only=st.booleans())
def test_f4_depth_from_the_text_equals_the_documents(doc, indent, ascii_only):
    """The skeleton count (`discover._depth`) agrees with a walk of the parsed document, whatever brackets, quotes
    and backslashes the strings (keys included) hold, however the text is spaced and escaped."""
    text = json.dumps(doc, indent=indent, ensure_ascii=ascii_only)
    assert _depth(text) == _walk_depth(doc)
    wrapped = "[" * MAX_DEPTH + text + "]" * MAX_DEPTH  # the cap: one level past it is refused
    assert (_depth(wrapped) > MAX_DEPTH) == (_walk_depth(doc) > 0)


def test_f4_json_lines_split_at_newlines_only(tmp_path: Path):
    """U+2028, U+2029 and U+0085 are legal unescaped inside JSON strings (orjson and `ensure_ascii=False` writers
    leave them): a line holding them is one item, read whole or line by line."""
    items = [
        {"type": "Feature", "stac_version": "1.0.0", "id": f"a{n}", "assets": {}, "properties": {"title": t}}
        for n, t in enumerate(["x\u2028y", "x\u2029y\x85z", "plain"])
    ]
    text = "".join(json.dumps(i, ensure_ascii=False) + "\n" for i in items)
    assert "\u2028" in text
    parsed = parse_document(text, "x.jsonl", "/in/x.jsonl", lines=True)
    assert [e.item for e in parsed] == items
    (tmp_path / "x.jsonl").write_text(text, encoding="utf-8")
    assert [e.item for e in find_items(tmp_path)] == items


def test_f4_oversized_files_are_refused_unread(tmp_path: Path):
    good = {"type": "Feature", "stac_version": "1.0.0", "id": "a", "assets": {}, "properties": {}}
    (tmp_path / "a.json").write_text(json.dumps(good))
    with (tmp_path / "big.json").open("wb") as f:
        f.truncate(MAX_DOCUMENT_BYTES + 1)  # sparse: costs no disk
    with (tmp_path / "lines.jsonl").open("w") as f:
        f.write(json.dumps(good) + "\n" + " " * (MAX_DOCUMENT_BYTES + 10) + "\n" + json.dumps(good) + "\n")
    entries = {e.source: e for e in find_items(tmp_path)}
    assert entries["a.json"].item == good
    assert "larger than 16 MiB" in entries["big.json"].error
    assert "line 2 is larger than 16 MiB" in entries["lines.jsonl#2"].error
    assert entries["lines.jsonl#1"].item == good and entries["lines.jsonl#3"].item == good


def test_f4_red_team_repro_the_run_goes_on_and_reports(synthetic_input, run_worker, tmp_path):
    (synthetic_input / "b_deep.json").write_text("[" * 100_000 + "]" * 100_000)
    out = tmp_path / "out2"
    proc = run_worker("--input", str(synthetic_input), "--output", str(out), check_code=1)
    assert "RecursionError" not in proc.stderr and "Traceback" not in proc.stderr
    report = json.loads(next((out / "_reports").glob("*.json")).read_text())
    failed = [s for s in report["scenes"] if s["status"] == "failed"]
    assert len(failed) == 1 and "malformed JSON" in failed[0]["error"], failed
    assert sum(s["status"] == "done" for s in report["scenes"]) == 3


def test_f4_composite_and_mosaic_discovery_report_the_deep_file(tmp_path: Path):
    from ndvi_worker.products_io import find_products

    _product(tmp_path / "in", "S2A_31UFU_20231205_0_L2A", "2023-12-05")
    (tmp_path / "in" / "b_deep.json").write_text("{" * 50_000)
    (tmp_path / "in" / "c_deep.json").write_text('{"a":' * 50_000 + "1" + "}" * 50_000)
    products, problems = find_products(tmp_path / "in")
    assert [p.item_id for p in products] == ["S2A_31UFU_20231205_0_L2A_ndvi"]
    assert sorted(p.source for p in problems) == ["b_deep.json", "c_deep.json"]


# ------------------------------------------------------------------------------------------------ F6


def _mutate(item: Path, change) -> None:
    doc = json.loads(item.read_text())
    change(doc)
    item.write_text(json.dumps(doc))  # allow_nan: Python writes NaN, as a hostile producer would


MUTATIONS = {
    "method NaN": lambda d: d["properties"].update({"earthmon:composite_method": float("nan")}),
    "method list": lambda d: d["properties"].update({"earthmon:composite_method": ["max", {"a": 1}]}),
    "id NaN": lambda d: d.update({"id": float("nan")}),
    "valid_fraction inf": lambda d: d["properties"].update({"earthmon:valid_fraction": float("inf")}),
    "geometry NaN": lambda d: d["geometry"]["coordinates"][0][0].__setitem__(0, float("nan")),
    "geometry strings": lambda d: d.update({"geometry": {"type": "Polygon", "coordinates": [["a", "b"]]}}),
    "geometry deep": lambda d: d.update({"geometry": {"type": "MultiPolygon", "coordinates": 3}}),
    "bbox NaN": lambda d: d.update({"bbox": [float("nan"), 0, 1, 1]}),
    "cloud NaN": lambda d: d["properties"].update({"eo:cloud_cover": float("nan")}),
    "source_items NaN": lambda d: d["properties"].update(
        {"earthmon:product": "composite", "earthmon:source_items": float("nan")}
    ),
    "platform list": lambda d: d["properties"].update({"platform": ["x"]}),
    "quicklook asset not an object": lambda d: d["assets"].update({"quicklook": "x"}),
    "properties a list": lambda d: d.update({"properties": ["x"]}),
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_f6_odd_fields_in_a_product_never_cost_the_viewer(tmp_path: Path, name: str):
    from ndvi_worker.products_io import MosaicOptions, run_mosaic

    odd = _product(tmp_path / "in", "S2A_31UFU_20231205_0_L2A", "2023-12-05", 0.3)
    _product(tmp_path / "in", "S2B_31UFU_20231206_0_L2A", "2023-12-06", 0.6)
    _mutate(odd, MUTATIONS[name])
    out = tmp_path / "out"
    report, status, _ = run_mosaic(tmp_path / "in", out, MosaicOptions(resolution=0.005, workers=1))
    page = (out / "index.html").read_text()
    collection = json.loads((out / "collection.json").read_text(), parse_constant=pytest.fail)
    assert "NaN" not in page and "Infinity" not in page
    assert len(collection["links"]) >= 1
    assert status in (0, 1) and all(p.error for p in report.failed)


def test_f6_red_team_repro_mosaic_cli_writes_the_viewer(tmp_path: Path):
    item = _product(tmp_path / "min", "S2A_31UFU_20231205_0_L2A", "2023-12-05")
    _mutate(item, lambda d: d["properties"].update({"earthmon:composite_method": None}))
    nan = _product(tmp_path / "min", "S2B_31UFU_20231206_0_L2A", "2023-12-06")
    _mutate(nan, MUTATIONS["method NaN"])  # a NaN literal is not JSON: that product is refused, with a hint
    proc = subprocess.run(
        [*WORKER, "mosaic", "--input", str(tmp_path / "min"), "--output", str(tmp_path / "mout")]
        + ["--resolution", "0.005", "--workers", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 1 and "NaN and Infinity are not JSON: write null" in proc.stderr, proc.stderr
    page = (tmp_path / "mout" / "index.html").read_text()
    assert '"method":null' in page


def test_f6_an_unexpected_error_is_one_line(tmp_path: Path, monkeypatch, capsys):
    """Whatever escapes the per-product handling ends in one line and exit 1, never a traceback."""
    from ndvi_worker import products_io
    from ndvi_worker.products_cli import mosaic_command

    def boom(*args, **kwargs):
        raise RuntimeError("boom https://u:pw@h/x?sig=S3CR3T")

    monkeypatch.setattr(products_io, "run_mosaic", boom)
    (tmp_path / "in").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        mosaic_command.main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unexpected error (RuntimeError: boom" in err[0], err
    assert "pw" not in err[0] and "S3CR3T" not in err[0]


# ------------------------------------------------------------------------------------------------ F9


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("https://h/x.tif?subscription-key=SECRETSUB", "SECRETSUB"),
        ("https://h/x.tif?Ocp-Apim-Subscription-Key=SECRETAPIM", "SECRETAPIM"),
        ("https://h/x.tif?x-api-key=SECRETXAPI", "SECRETXAPI"),
        ("https://h/x.tif?jwt=SECRETJWT", "SECRETJWT"),
        ("https://h/x.tif?state=1&code=SECRETCODE", "SECRETCODE"),
        ("https://h/x.tif?X-Amz-%53ignature=SECRETSIG", "SECRETSIG"),
        ("https://h/x.tif?X-Amz-%2553ignature=SECRETSIG2", "SECRETSIG2"),
        ("https://h/x.tif?%74oken=SECRETTOK", "SECRETTOK"),
        ("https://h/x.tif?X-Amz-Signature%3DSECRETEQ", "SECRETEQ"),
        ("https://h/r?next=https%3A%2F%2Fh%2Fx%3Fsig%3DSECRETNEST%26a%3D1", "SECRETNEST"),
        ("request sent with Bearer SECRETBEARER", "SECRETBEARER"),
        ("token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.SECRETJWTSIG in a message", "SECRETJWTSIG"),
        ("token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.SECRETJWTSIG in a message", "eyJzdWIiOiIxIn0"),
        ("https://user:p@ss@host/x.tif", "ss@host"),
        ("https://user:p@ss@host/x.tif", "p@ss"),
        ("https://user:p@s@s@host/x.tif?a=1", "s@s"),
        ('{"subscription_key": "SECRETJSON"}', "SECRETJSON"),
    ],
)
def test_f9_redact_finds_the_missed_secrets(text, secret):
    out = redact(text)
    assert secret not in out and "***" in out, out
    assert redact(out) == out


def test_f9_redact_keeps_the_host_and_ordinary_text():
    assert redact("https://user:p@ss@host/x.tif") == "https://***@host/x.tif"
    for text in ("HTTP response code: 404", "s3://bucket/key/b.tif", "the item's 31UFU tile"):
        assert redact(text) == text


try:
    from hypothesis import assume, given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover
    pass
else:
    SECRET_NAMES = [
        "X-Amz-Signature", "X-Amz-%53ignature", "X-Amz-Credential", "X-Amz-Security-Token", "Signature", "sig",
        "token", "access_token", "api_key", "apikey", "key", "subscription-key", "jwt", "code", "password",
        "AWS_SECRET_ACCESS_KEY", "GDAL_HTTP_USERPWD", "client_secret",
    ]  # fmt: skip
    FORMS = [
        "https://h.example/a.tif?{name}={secret}",
        "https://h.example/a.tif?x=1&{name}={secret}&y=2",
        "{name}={secret}",
        '{{"{name}": "{secret}"}}',
        "https://user:{secret}@h.example/a.tif",
        "https://{secret}@h.example/a.tif",
        "Authorization: Bearer {secret}",
        "with Bearer {secret} sent",
    ]
    secret_values = st.text(
        alphabet=st.characters(whitelist_categories=("Lu", "Ll", "Nd"), max_codepoint=127)
        | st.sampled_from("-_.~+/@:"),
        min_size=8,
        max_size=40,
    ).filter(lambda s: s[0].isalnum() and s[-1].isalnum() and "@" not in s[:1])
    context = st.text(max_size=30)
    separators = st.sampled_from([" ", "\n", ": ", " (", "\t"])

    @settings(max_examples=400, deadline=None)
    @given(
        form=st.sampled_from(FORMS),
        name=st.sampled_from(SECRET_NAMES),
        secret=secret_values,
        before=context,
        after=context,
        sep1=separators,
        sep2=separators,
    )
    def test_f9_redact_never_leaves_a_planted_secret(form, name, secret, before, after, sep1, sep2):
        if "://user:" in form or "://{secret}" in form:
            secret = secret.replace("/", "").replace(":", "")  # a raw '/' ends the user info (RFC 3986)
            if len(secret) < 8:
                return
        if "Bearer" in form or "{name}" in form:
            secret = secret.replace("@", "").replace(":", "")
            if len(secret) < 8:
                return
        assume(secret not in before + after)  # the secret planted once, in its form only
        text = before + sep1 + form.format(name=name, secret=secret) + sep2 + after
        out = redact(text)
        assert secret not in out, (text, out)
        assert redact(out) == out

    @settings(max_examples=500, deadline=None)
    @given(text=st.text(max_size=200) | st.from_regex(r"[a-z]+://[\w:@%.=&?/-]{0,60}", fullmatch=True))
    def test_f9_redact_is_idempotent(text):
        once = redact(text)
        assert redact(once) == once


# ------------------------------------------------------------------------------------------------ host name


def test_products_reports_are_named_after_the_contract_host(tmp_path: Path, monkeypatch):
    from ndvi_worker.products_io import CompositeOptions, MosaicOptions, run_composite, run_mosaic

    base = tmp_path / "opt-ml"
    (base / "config").mkdir(parents=True)
    (base / "config" / "resourceconfig.json").write_text(
        json.dumps({"current_host": "algo-1", "hosts": ["algo-1"]})
    )
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(base))
    _product(tmp_path / "in", "S2A_31UFU_20231205_0_L2A", "2023-12-05")
    run_composite(tmp_path / "in", tmp_path / "out", CompositeOptions("max", None, workers=1))
    run_mosaic(tmp_path / "out", tmp_path / "mout", MosaicOptions(resolution=0.005, workers=1))
    assert [p.name for p in (tmp_path / "out" / "_reports").iterdir()] == ["composite-algo-1.json"]
    assert [p.name for p in (tmp_path / "mout" / "_reports").iterdir()] == ["mosaic-algo-1.json"]
    assert not (tmp_path / ".ndvi-staging-algo-1").exists()
