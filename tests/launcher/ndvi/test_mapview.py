"""`launcher plan --map`: the pure parts (job colours, footprints split at the antimeridian, data for the page,
JSON safe inside <script>) and the page itself in headless Chromium with every host name unresolvable."""

from __future__ import annotations

import copy
import dataclasses
import html
import itertools
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from earthmon_testing import require as need
from earthmon_testing.launcher import fixture_items, synthetic_items
from launcher.ndvi.mapview import (
    clean_footprint,
    feature_collection,
    job_colours,
    map_data,
    render_map,
    script_json,
    split_ring,
    write_map,
)
from launcher.ndvi.plan import make_plan

HOSTILE = "</script><img src=x onerror=alert(1)>"


def _lab(colour: str) -> tuple[float, float, float]:
    """CIELAB (D65) of a #rrggbb colour."""
    rgb = [int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    r, g, b = (c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb)
    x = (0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.95047
    y = 0.2126 * r + 0.7152 * g + 0.0722 * b
    z = (0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.08883

    def f(t: float) -> float:
        return t ** (1 / 3) if t > 0.008856 else 7.787 * t + 16 / 116

    return 116 * f(y) - 16, 500 * (f(x) - f(y)), 200 * (f(y) - f(z))


def _min_delta_e(colours: list[str]) -> float:
    labs = [_lab(c) for c in colours]
    return min(math.dist(a, b) for a, b in itertools.combinations(labs, 2))


def _plan(items, jobs: int):
    plan, _, _ = make_plan(
        items, run_id="run", created="t", s3_prefix="s3://b/p", jobs=jobs, instances_per_job=1
    )
    return plan


# --------------------------------------------------------------------------------------------- colours


@pytest.mark.parametrize("n", [1, 2, 3, 10, 25, 40, 100])
def test_every_job_gets_its_own_colour(n: int) -> None:
    colours = job_colours(n)
    assert len(colours) == n and len(set(colours)) == n
    assert all(re.fullmatch(r"#[0-9a-f]{6}", c) for c in colours)


@pytest.mark.parametrize("n, floor", [(2, 60), (10, 25), (25, 15), (40, 10)])
def test_job_colours_stay_far_apart(n: int, floor: float) -> None:
    # CIELAB Delta E 1976: about 2.3 is just noticeable, 10 is clearly different side by side
    assert _min_delta_e(job_colours(n)) >= floor


def test_consecutive_jobs_are_further_apart() -> None:
    # consecutive jobs (often neighbours on the ground) differ in lightness as well as hue
    colours = job_colours(25)
    assert min(math.dist(_lab(a), _lab(b)) for a, b in itertools.pairwise(colours)) >= 18


# ------------------------------------------------------------------------------------------ footprints


def test_a_ring_across_the_antimeridian_is_split_in_two() -> None:
    ring = [[179.5, -17.0], [-179.5, -17.0], [-179.5, -16.0], [179.5, -16.0], [179.5, -17.0]]
    parts = split_ring(ring)
    assert len(parts) == 2
    east, west = parts
    assert all(179.5 <= p[0] <= 180.0 for p in east) and all(-180.0 <= p[0] <= -179.5 for p in west)
    for part in parts:
        assert part[0] == part[-1]
        assert all(abs(b[0] - a[0]) <= 180 for a, b in itertools.pairwise(part))
    assert {p[0] for p in east} >= {180.0} and {p[0] for p in west} >= {-180.0}


def test_a_ring_away_from_the_antimeridian_is_kept() -> None:
    ring = [[10, 0], [11, 0], [11, 1], [10, 1]]
    assert split_ring(ring) == [[[10.0, 0.0], [11.0, 0.0], [11.0, 1.0], [10.0, 1.0], [10.0, 0.0]]]


@pytest.mark.parametrize(
    "geometry",
    [
        None,
        "POLYGON",
        {"type": "Point", "coordinates": [0, 0]},
        {"type": "Polygon", "coordinates": []},
        {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [0, 0]]]},
        {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], ["x", 0]]]},
        {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [float("nan"), 0]]]},
        {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 91]]]},
        {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [True, 0]]]},
        {"type": "MultiPolygon", "coordinates": [[[[0, 0], [1, 0], [1, 1], [[0], 0]]]]},
    ],
)
def test_unusable_geometries_are_left_out(geometry) -> None:
    assert clean_footprint(geometry) is None


def test_map_data_colours_by_job_and_counts_scenes() -> None:
    items = synthetic_items(60)
    plan = _plan(items, 25)
    data = map_data(plan, items)
    assert len(data["jobs"]) == 25 and len({j["colour"] for j in data["jobs"]}) == 25
    assert [j["name"] for j in data["jobs"]] == [j.name for j in plan.jobs]
    assert [j["scenes"] for j in data["jobs"]] == [j.scene_count for j in plan.jobs]
    assert sum(j["drawn"] for j in data["jobs"]) == len(data["features"]) == 60 and data["missing"] == 0
    job_of = {s.item_id: k for k, j in enumerate(plan.jobs) for s in j.scenes}
    assert all(f["job"] == job_of[f["id"]] for f in data["features"])
    cloud = {i["id"]: i["properties"]["eo:cloud_cover"] for i in items}
    assert all(f["cloud_cover"] == cloud[f["id"]] for f in data["features"])
    fc = feature_collection(plan, items)
    assert len(fc["features"]) == 60
    assert {f["properties"]["colour"] for f in fc["features"]} == {j["colour"] for j in data["jobs"]}


def test_map_data_splits_antimeridian_footprints_and_skips_bad_ones() -> None:
    items = synthetic_items(3)
    items[0]["geometry"]["coordinates"] = [
        [[179.5, -17], [-179.5, -17], [-179.5, -16], [179.5, -16], [179.5, -17]]
    ]
    items[1]["geometry"] = {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, "1"], [0, 0]]]}
    items[1].pop("bbox")
    data = map_data(_plan(items, 1), items)
    assert data["missing"] == 1 and len(data["features"]) == 2
    crossing = next(f for f in data["features"] if f["id"] == items[0]["id"])
    assert len(crossing["polygons"]) == 2
    fc = feature_collection(_plan(items, 1), items)
    kinds = {f["properties"]["item_id"]: f["geometry"]["type"] for f in fc["features"]}
    assert kinds[items[0]["id"]] == "MultiPolygon" and kinds[items[2]["id"]] == "Polygon"


def test_a_bbox_across_the_antimeridian_is_split() -> None:
    items = synthetic_items(1)
    items[0].pop("geometry")
    items[0]["bbox"] = [179.5, -17, -179.5, -16]  # west > east: crosses
    (feature,) = map_data(_plan(items, 1), items)["features"]
    assert len(feature["polygons"]) == 2


def test_json_in_the_page_cannot_close_the_script_or_open_a_comment() -> None:
    value = {"id": HOSTILE + "<!-- & -->", "x": "</SCRIPT >"}
    text = script_json(value)
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == value


def _hostile_plan():
    items = synthetic_items(3)
    plan = _plan(items, 2)
    hostile_items = copy.deepcopy(items)
    old = plan.jobs[0].scenes[0].item_id
    for item in hostile_items:
        if item["id"] == old:
            item["id"] = HOSTILE
            item["properties"]["datetime"] = "<!--"
    scene = dataclasses.replace(plan.jobs[0].scenes[0], item_id=HOSTILE, tile="<b>t</b>")
    job = dataclasses.replace(plan.jobs[0], name="job</script><script>alert(2)</script>",
                              scenes=(scene, *plan.jobs[0].scenes[1:]))  # fmt: skip
    return dataclasses.replace(plan, jobs=(job, *plan.jobs[1:]), run_id="<!--run"), hostile_items


def test_hostile_strings_stay_inside_the_data() -> None:
    plan, items = _hostile_plan()
    page = render_map(map_data(plan, items))
    assert (
        HOSTILE not in page
        and "<img" not in page
        and "alert(2)</script>" not in page
        and "<!--run" not in page
    )
    assert page.count("<script") == 2 and page.count("</script>") == 2
    data = json.loads(
        re.search(r'<script id="map-data" type="application/json">(.*?)</script>', page, re.S)[1]
    )
    assert data["features"][0]["id"] == HOSTILE


def test_the_page_is_self_contained(tmp_path: Path) -> None:
    items = fixture_items()
    page_path = tmp_path / "plan.html"
    assert write_map(_plan(items, 5), items, str(page_path)) == 25
    page = page_path.read_text()
    assert not re.search(r"https?:|//[a-z]|<link|src=|url\(|@import", page, re.I)


# ---------------------------------------------------------------------------------------- in a browser

PROBE = """<script>
(function () {
  window.addEventListener("load", function () {
    var out = document.createElement("pre"); out.id = "probe-result";
    var paths = document.querySelectorAll("#footprints path.footprint");
    var svg = document.getElementById("map"), box = svg.getBoundingClientRect();
    var hostile = null;
    Array.prototype.forEach.call(paths, function (p, i) {
      var t = p.querySelector("title").textContent;
      if (t.indexOf("onerror") >= 0) { hostile = i; }
    });
    var shown = null, legendHot = null;
    if (hostile !== null) {
      paths[hostile].dispatchEvent(new MouseEvent("click", {bubbles: true, cancelable: true, view: window}));
      shown = document.getElementById("d-id").textContent;
    }
    var items = document.querySelectorAll("#legend li");
    if (items.length) {
      items[0].dispatchEvent(new MouseEvent("click", {bubbles: true}));
      legendHot = document.querySelectorAll("#footprints path.hot").length;
    }
    out.textContent = JSON.stringify({
      footprints: paths.length,
      declared: svg.getAttribute("data-footprints"),
      subpaths: Array.prototype.map.call(paths, function (p) { return (p.getAttribute("d").match(/M/g) || []).length; }),
      path_boxes: Array.prototype.map.call(paths, function (p) { var b = p.getBBox(); return [b.x, b.width]; }),
      fills: Array.prototype.map.call(paths, function (p) { return p.getAttribute("fill"); }),
      legend: Array.prototype.map.call(items, function (li) {
        return [li.querySelector(".name").textContent, li.querySelector(".swatch").style.backgroundColor,
                li.querySelector(".count").textContent];
      }),
      legend_hot: legendHot,
      map_size: [box.width, box.height],
      shown: shown,
      title: document.getElementById("title").textContent,
      imgs: document.querySelectorAll("img").length,
      scripts: document.querySelectorAll("script").length,
      resources: performance.getEntriesByType("resource").map(function (e) { return e.name; }),
      alerted: window.__alerted || false
    });
    document.body.appendChild(out);
  });
})();
</script>
"""


def _browse(page: Path, tmp_path: Path) -> dict:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    need(exe is not None, "chromium is not installed (apt-get install chromium)")
    probe = page.with_name("probe.html")
    # alert() is recorded (a script injected by an item would call it) and the probe runs after the page
    guard = "<script>window.alert = function () { window.__alerted = true; };</script>"
    probe.write_text(
        page.read_text().replace("<head>", "<head>" + guard, 1).replace("</body>", PROBE + "</body>")
    )
    proc = subprocess.run(
        [
            exe,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            "--disable-extensions",
            "--no-proxy-server",
            "--host-resolver-rules=MAP * ~NOTFOUND",  # no host name resolves: the page must need none
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            "--virtual-time-budget=5000",
            "--window-size=1280,800",
            "--dump-dom",
            probe.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    match = re.search(r'<pre id="probe-result">(.*?)</pre>', proc.stdout, re.S)
    assert match, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    return json.loads(html.unescape(match.group(1)))


def _rgb(colour: str) -> str:
    return "rgb({}, {}, {})".format(*(int(colour[i : i + 2], 16) for i in (1, 3, 5)))


def test_the_map_draws_25_jobs_in_25_colours_offline(tmp_path: Path) -> None:
    items = synthetic_items(50)
    items[0]["geometry"]["coordinates"] = [
        [[179.5, -17], [-179.5, -17], [-179.5, -16], [179.5, -16], [179.5, -17]]
    ]
    plan = _plan(items, 25)
    page = tmp_path / "plan.html"
    assert write_map(plan, items, str(page)) == 50
    result = _browse(page, tmp_path)
    assert result["footprints"] == 50 and result["declared"] == "50"
    assert result["map_size"][0] > 400 and result["map_size"][1] > 200
    assert len(set(result["fills"])) == 25
    assert sorted(result["subpaths"]) == [1] * 49 + [2]  # the antimeridian footprint: two parts, one path
    crossing = result["subpaths"].index(2)
    x, width = result["path_boxes"][crossing]
    assert x == pytest.approx(-180, abs=1e-3) and width == pytest.approx(360, abs=1e-3)  # at both edges
    assert all(w <= 1.0001 for k, (_, w) in enumerate(result["path_boxes"]) if k != crossing)
    data = map_data(plan, items)
    assert result["legend"] == [[j["name"], _rgb(j["colour"]), f"{j['scenes']} scenes"] for j in data["jobs"]]
    assert result["legend_hot"] == plan.jobs[0].scene_count
    assert result["resources"] == [] and result["imgs"] == 0


def test_a_hostile_item_id_is_shown_as_text(tmp_path: Path) -> None:
    plan, items = _hostile_plan()
    page = tmp_path / "plan.html"
    write_map(plan, items, str(page))
    result = _browse(page, tmp_path)
    assert result["shown"] == HOSTILE  # found in a footprint's title, shown in the details as text
    assert result["legend"][0][0] == "job</script><script>alert(2)</script>"
    assert result["title"] == "plan <!--run"
    assert result["imgs"] == 0 and result["alerted"] is False and result["resources"] == []
    assert result["scripts"] == 4  # the guard, the data, the page's script and the probe
    assert result["footprints"] == 3
