"""An offline HTML map of the planned scene footprints, coloured by job (``launcher plan --map``).

One self-contained file: the data, CSS and JavaScript are inline and the map is an equirectangular SVG (lon/lat
graticule, no basemap), so it opens from disk with no network at all: no CDN, no tile server. Hover or click a
footprint for its item id, job, tile, date and cloud cover; the legend lists each job with its colour and scene
count (click a job to highlight its footprints). Scroll to zoom, drag to pan, double-click to reset.

Colour rule (:func:`job_colours`): job ``k`` of ``n`` (in plan order) gets the HSL colour with hue ``360 * k / n``
degrees, saturation 70 % and lightness 35 %, 55 % or 72 % for ``k mod 3`` = 0, 1, 2. Hues are evenly spaced
whatever the number of jobs, and consecutive jobs (often neighbours on the ground) also differ in lightness. The
smallest CIELAB distance (Delta E 1976) between two jobs' colours is about 111 for 2 jobs, 30 for 10, 17 for 25
and 11 for 40 (10 is clearly visible side by side); beyond that the legend and the hover details tell jobs apart.

Items are hostile input: every string from them travels as JSON inside a ``<script type="application/json">``
with ``<``, ``>`` and ``&`` escaped as ``\\u003c`` etc. (so neither ``</script>`` nor ``<!--`` can appear), and the
page inserts it with ``textContent`` only; geometries are kept only when every position is two or three finite
numbers in range.
"""

from __future__ import annotations

import colorsys
import json
import math
from collections.abc import Sequence
from typing import Any

from launcher.ndvi.items import cloud_cover, footprint, item_datetime
from launcher.ndvi.plan import Plan

LIGHTNESS = (0.35, 0.55, 0.72)
SATURATION = 0.70
DATA_MARKER = "/*__PLAN_MAP_DATA__*/null"


def job_colours(n: int) -> list[str]:
    """``n`` distinct ``#rrggbb`` colours: evenly spaced hues, lightness cycling through three levels."""
    out = []
    for k in range(n):
        r, g, b = colorsys.hls_to_rgb(k / n, LIGHTNESS[k % len(LIGHTNESS)], SATURATION)
        out.append("#{:02x}{:02x}{:02x}".format(*(round(c * 255) for c in (r, g, b))))
    return out


def job_colour(index: int, n: int) -> str:
    """The colour of job ``index`` of ``n``."""
    return job_colours(n)[index]


def _finite_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _position(p: object) -> bool:
    return (
        isinstance(p, list | tuple)
        and len(p) in (2, 3)
        and all(_finite_number(v) for v in p)
        and -180.0 <= p[0] <= 180.0
        and -90.0 <= p[1] <= 90.0
    )


def split_ring(ring: Sequence[Sequence[float]]) -> list[list[list[float]]]:
    """A closed lon/lat ring as one or two rings that never cross the antimeridian: a ring with a jump of more
    than 180 degrees between consecutive vertices crosses it, and is cut at +/-180 into an east and a west part."""
    from ndvi_worker.composite import footprint_geometry  # the worker's one antimeridian rule

    geometry = footprint_geometry([(p[0], p[1]) for p in ring])
    if geometry["type"] == "Polygon":
        return geometry["coordinates"]
    return [polygon[0] for polygon in geometry["coordinates"]]


def clean_footprint(geometry: object) -> list[list[list[list[float]]]] | None:
    """A Polygon / MultiPolygon as a list of polygons (lists of rings of [lon, lat]) split at the antimeridian,
    or None unless every position is two or three finite numbers in range. A polygon that crosses the
    antimeridian keeps its outer ring only (footprints have no holes in practice)."""
    if not isinstance(geometry, dict) or geometry.get("type") not in ("Polygon", "MultiPolygon"):
        return None
    coords = geometry.get("coordinates")
    polygons = [coords] if geometry["type"] == "Polygon" else coords
    if not isinstance(polygons, list) or not polygons:
        return None
    out: list[list[list[list[float]]]] = []
    for polygon in polygons:
        if not isinstance(polygon, list) or not polygon:
            return None
        for ring in polygon:
            if not isinstance(ring, list) or len(ring) < 4 or not all(_position(p) for p in ring):
                return None
        outer = split_ring(polygon[0])
        if len(outer) == 1:
            out.append(outer + [r for hole in polygon[1:] for r in split_ring(hole)[:1]])
        else:
            out.extend([part] for part in outer)
    return out


def _text(value: object, limit: int = 200) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text[:limit]


def map_data(plan: Plan, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Pure: what the page draws. ``jobs``: name, colour, scene count and footprints drawn, in plan order;
    ``features``: one per planned scene whose item has a usable footprint (item id, tile, job index, datetime,
    cloud cover, polygons split at the antimeridian); ``missing``: planned scenes without one."""
    by_id = {str(item.get("id")): item for item in items if isinstance(item, dict)}
    colours = job_colours(len(plan.jobs))
    jobs = []
    features = []
    missing = 0
    for k, job in enumerate(plan.jobs):
        drawn = 0
        for scene in job.scenes:
            item = by_id.get(scene.item_id)
            polygons = clean_footprint(footprint(item)) if item else None
            if polygons is None:
                missing += 1
                continue
            cloud = cloud_cover(item) if item else None
            features.append(
                {
                    "id": _text(scene.item_id),
                    "tile": _text(scene.tile or ""),
                    "job": k,
                    "datetime": _text(item_datetime(item), 40) if item else "",
                    "cloud_cover": cloud if cloud is not None and math.isfinite(cloud) else None,
                    "polygons": polygons,
                }
            )
            drawn += 1
        jobs.append(
            {"name": _text(job.name), "colour": colours[k], "scenes": job.scene_count, "drawn": drawn}
        )
    return {
        "run_id": _text(plan.run_id),
        "scenes": plan.scene_count,
        "jobs": jobs,
        "features": features,
        "missing": missing,
    }


def feature_collection(plan: Plan, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Pure: the same footprints as GeoJSON (one feature per planned scene with its job, colour and cloud cover;
    geometries split at the antimeridian as RFC 7946 asks)."""
    data = map_data(plan, items)
    features = []
    for f in data["features"]:
        job = data["jobs"][f["job"]]
        polys = f["polygons"]
        geometry = (
            {"type": "Polygon", "coordinates": polys[0]}
            if len(polys) == 1
            else {"type": "MultiPolygon", "coordinates": polys}
        )
        features.append(
            {
                "type": "Feature",
                "geometry": geometry,
                "properties": {
                    "item_id": f["id"],
                    "tile": f["tile"],
                    "job": job["name"],
                    "colour": job["colour"],
                    "cloud_cover": f["cloud_cover"],
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


def script_json(data: object) -> str:
    """JSON that is safe inside a ``<script>`` element: ``<``, ``>`` and ``&`` as unicode escapes, so neither
    ``</script>`` nor ``<!--`` can occur, and the text stays valid JSON."""
    text = json.dumps(data, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def render_map(data: dict[str, Any]) -> str:
    """Pure: the page with ``data`` (from :func:`map_data`) embedded."""
    return PAGE.replace(DATA_MARKER, script_json(data))


def write_map(plan: Plan, items: Sequence[dict[str, Any]], path: str) -> int:
    """Write the map page; returns the number of footprints drawn."""
    data = map_data(plan, items)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(render_map(data))
    return len(data["features"])


PAGE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'">
<title>earthmon plan map</title>
<style>
  :root { --ink: #1d2a1f; --muted: #5b6b5e; --line: #c9d3ca; --panel: #f6f8f5; }
  * { box-sizing: border-box; }
  [hidden] { display: none !important; }
  body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--ink);
         display: grid; grid-template-rows: auto 1fr; height: 100vh; }
  header { padding: 8px 14px; border-bottom: 1px solid var(--line); display: flex; gap: 24px;
           align-items: center; flex-wrap: wrap; }
  header h1 { font-size: 16px; margin: 0; word-break: break-all; }
  main { display: grid; grid-template-columns: 1fr 340px; min-height: 0; }
  #map { width: 100%; height: 100%; background: #e8eef3; cursor: grab; display: block; }
  #map.dragging { cursor: grabbing; }
  .graticule { stroke: #c3cfda; stroke-width: 1; fill: none; vector-effect: non-scaling-stroke; }
  .equator { stroke: #9fb1c2; }
  .glabel { fill: #7a8b9b; }
  .footprint { stroke-width: 2; stroke-linejoin: round; fill-opacity: 0.6; fill-rule: evenodd; vector-effect: non-scaling-stroke;
               cursor: pointer; }
  .footprint:hover, .footprint.hot { fill-opacity: 0.9; stroke: #000; }
  .footprint.dim { fill-opacity: 0.12; stroke-opacity: 0.3; }
  .footprint.selected { stroke: #000; stroke-width: 2.5; }
  aside { border-left: 1px solid var(--line); background: var(--panel); padding: 12px; overflow: auto; }
  aside h2 { font-size: 14px; margin: 12px 0 6px; }
  aside dl { display: grid; grid-template-columns: auto 1fr; gap: 2px 10px; margin: 4px 0 8px; }
  aside dt { color: var(--muted); }
  aside dd { margin: 0; word-break: break-all; }
  #legend { list-style: none; margin: 0; padding: 0; }
  #legend li { display: flex; align-items: center; gap: 8px; padding: 2px 4px; cursor: pointer; border-radius: 3px; }
  #legend li:hover, #legend li.active { background: #e3e9e2; }
  #legend .swatch { width: 22px; height: 14px; border: 1px solid #213322; flex: none; }
  #legend .name { flex: 1; word-break: break-all; }
  #legend .count { color: var(--muted); font-variant-numeric: tabular-nums; }
  .hint { color: var(--muted); }
  #coords { font-variant-numeric: tabular-nums; color: var(--muted); font-size: 12px; }
</style>
</head>
<body>
<header>
  <h1 id="title">plan</h1>
  <span id="summary" class="hint"></span>
  <span id="coords"></span>
</header>
<main>
  <svg id="map" viewBox="-180 -90 360 180" preserveAspectRatio="xMidYMid meet" role="img"
       aria-label="planned scene footprints">
    <rect x="-180" y="-90" width="360" height="180" fill="#e8eef3"></rect>
    <g id="graticule"></g>
    <g id="footprints"></g>
  </svg>
  <aside>
    <h2>Footprint</h2>
    <p class="hint" id="hint">Hover or click a footprint for its details. Scroll to zoom, drag to pan,
      double-click to reset. No basemap: lon/lat lines only.</p>
    <dl id="details" hidden>
      <dt>item</dt><dd id="d-id"></dd>
      <dt>job</dt><dd id="d-job"></dd>
      <dt>tile</dt><dd id="d-tile"></dd>
      <dt>date</dt><dd id="d-date"></dd>
      <dt>cloud</dt><dd id="d-cloud"></dd>
    </dl>
    <h2>Jobs</h2>
    <p class="hint">Click a job to highlight its scenes.</p>
    <ul id="legend"></ul>
  </aside>
</main>
<script id="map-data" type="application/json">/*__PLAN_MAP_DATA__*/null</script>
<script>
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("map-data").textContent) || {jobs: [], features: []};
  var svg = document.getElementById("map");
  var NS = svg.namespaceURI;
  var jobs = data.jobs || [], features = data.features || [];

  function el(name, attrs, parent) {
    var node = document.createElementNS(NS, name);
    for (var k in attrs) { node.setAttribute(k, attrs[k]); }
    if (parent) { parent.appendChild(node); }
    return node;
  }
  function text(id, value) { document.getElementById(id).textContent = value; }

  document.title = "earthmon plan " + data.run_id;
  text("title", "plan " + data.run_id);
  text("summary", features.length + " of " + data.scenes + " planned scenes drawn, " + jobs.length + " jobs" +
    (data.missing ? " (" + data.missing + " without a usable footprint)" : ""));

  // graticule: a step that gives at most about 12 lines across the view, labelled at the view's edges
  var grat = document.getElementById("graticule");
  var STEPS = [30, 10, 5, 2, 1, 0.5, 0.25, 0.1, 0.05, 0.02, 0.01];
  function drawGraticule(v) {
    while (grat.firstChild) { grat.removeChild(grat.firstChild); }
    var step = STEPS.filter(function (s) { return v.w / s <= 12; }).pop() || 30;
    var fs = v.w / 90, lon, lat;
    for (lon = Math.ceil(Math.max(-180, v.x) / step) * step; lon <= Math.min(180, v.x + v.w); lon += step) {
      el("line", {x1: lon, y1: -90, x2: lon, y2: 90, "class": "graticule"}, grat);
      el("text", {x: lon + fs / 4, y: v.y + v.h - fs / 2, "class": "glabel", "font-size": fs}, grat)
        .textContent = +lon.toFixed(2) + "\u00b0";
    }
    for (lat = Math.ceil(Math.max(-90, -(v.y + v.h)) / step) * step; lat <= Math.min(90, -v.y); lat += step) {
      el("line", {x1: -180, y1: -lat, x2: 180, y2: -lat, "class": "graticule" + (lat === 0 ? " equator" : "")}, grat);
      if (-lat < v.y + v.h - 2 * fs) {
        el("text", {x: v.x + fs / 4, y: -lat - fs / 4, "class": "glabel", "font-size": fs}, grat)
          .textContent = +lat.toFixed(2) + "\u00b0";
      }
    }
  }

  // footprints: polygons already split at the antimeridian; one path per scene
  function polygonsPath(polys) {
    return polys.map(function (poly) {
      return poly.map(function (ring) {
        return "M" + ring.map(function (p) { return p[0] + "," + (-p[1]); }).join("L") + "Z";
      }).join("");
    }).join("");
  }
  function cloudText(v) { return typeof v === "number" ? v.toFixed(1) + " %" : "?"; }
  var layer = document.getElementById("footprints");
  var paths = [], selected = null;
  var bounds = [180, 90, -180, -90];
  features.forEach(function (f, index) {
    var job = jobs[f.job];
    var path = el("path", {d: polygonsPath(f.polygons), "class": "footprint", fill: job.colour, stroke: job.colour,
                           "data-job": f.job, "data-index": index}, layer);
    var title = el("title", {}, path);
    title.textContent = f.id + " \u2014 " + job.name + ", cloud " + cloudText(f.cloud_cover);
    path.addEventListener("mouseenter", function () { show(index); });
    path.addEventListener("mouseleave", function () { if (selected !== null) { show(selected); } });
    path.addEventListener("click", function (ev) {
      ev.stopPropagation();
      if (selected !== null) { paths[selected].classList.remove("selected"); }
      selected = index; path.classList.add("selected"); show(index);
    });
    paths.push(path);
    f.polygons.forEach(function (poly) {
      poly[0].forEach(function (p) {
        bounds = [Math.min(bounds[0], p[0]), Math.min(bounds[1], p[1]), Math.max(bounds[2], p[0]),
                  Math.max(bounds[3], p[1])];
      });
    });
  });
  svg.setAttribute("data-footprints", String(paths.length));

  function show(index) {
    var f = features[index];
    document.getElementById("hint").hidden = true;
    document.getElementById("details").hidden = false;
    text("d-id", f.id);
    text("d-job", jobs[f.job].name);
    text("d-tile", f.tile || "?");
    text("d-date", f.datetime || "?");
    text("d-cloud", cloudText(f.cloud_cover));
    document.getElementById("details").setAttribute("data-shown", String(index));
  }

  // legend: one entry per job (colour, name, scene count); click to highlight that job's footprints
  var legend = document.getElementById("legend"), active = null;
  jobs.forEach(function (job, k) {
    var li = document.createElement("li");
    li.setAttribute("data-job", String(k));
    var sw = document.createElement("span"); sw.className = "swatch"; sw.style.background = job.colour;
    var name = document.createElement("span"); name.className = "name"; name.textContent = job.name;
    var count = document.createElement("span"); count.className = "count";
    count.textContent = job.scenes + (job.scenes === 1 ? " scene" : " scenes") +
      (job.drawn !== job.scenes ? " (" + job.drawn + " drawn)" : "");
    li.appendChild(sw); li.appendChild(name); li.appendChild(count);
    li.addEventListener("click", function () {
      active = active === k ? null : k;
      Array.prototype.forEach.call(legend.children, function (c) {
        c.classList.toggle("active", active !== null && c === li);
      });
      paths.forEach(function (p) {
        var mine = Number(p.getAttribute("data-job")) === active;
        p.classList.toggle("hot", active !== null && mine);
        p.classList.toggle("dim", active !== null && !mine);
      });
    });
    legend.appendChild(li);
  });

  // zoom (wheel) and pan (drag) by changing the viewBox; double-click resets
  var home = {x: -180, y: -90, w: 360, h: 180};
  if (paths.length && bounds[2] - bounds[0] < 300) {
    var pad = Math.max(1, 0.1 * Math.max(bounds[2] - bounds[0], bounds[3] - bounds[1]));
    var w0 = Math.min(360, Math.max(bounds[2] - bounds[0], 2 * (bounds[3] - bounds[1])) + 2 * pad);
    home = {w: w0, h: w0 / 2, x: (bounds[0] + bounds[2]) / 2 - w0 / 2, y: -(bounds[1] + bounds[3]) / 2 - w0 / 4};
  }
  var view = {x: home.x, y: home.y, w: home.w, h: home.h};
  function apply() {
    svg.setAttribute("viewBox", view.x + " " + view.y + " " + view.w + " " + view.h);
    drawGraticule(view);
  }
  apply();
  function toMap(ev) {
    var pt = svg.createSVGPoint(); pt.x = ev.clientX; pt.y = ev.clientY;
    return pt.matrixTransform(svg.getScreenCTM().inverse());
  }
  svg.addEventListener("wheel", function (ev) {
    ev.preventDefault();
    var p = toMap(ev), k = ev.deltaY < 0 ? 0.8 : 1.25;
    var w = Math.min(360, Math.max(0.05, view.w * k)), h = w / 2;
    view.x = p.x - (p.x - view.x) * (w / view.w); view.y = p.y - (p.y - view.y) * (h / view.h);
    view.w = w; view.h = h; apply();
  }, {passive: false});
  var drag = null;
  svg.addEventListener("mousedown", function (ev) { drag = {p: toMap(ev)}; });
  window.addEventListener("mousemove", function (ev) {
    var p = toMap(ev);
    text("coords", "lon " + p.x.toFixed(3) + ", lat " + (-p.y).toFixed(3));
    if (!drag) { return; }
    view.x -= p.x - drag.p.x; view.y -= p.y - drag.p.y;
    svg.classList.add("dragging"); apply();
  });
  window.addEventListener("mouseup", function () { drag = null; svg.classList.remove("dragging"); });
  svg.addEventListener("dblclick", function () { view = {x: home.x, y: home.y, w: home.w, h: home.h}; apply(); });
})();
</script>
</body>
</html>
"""
