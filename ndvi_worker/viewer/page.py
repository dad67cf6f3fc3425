"""The viewer page: HTML with its CSS and JavaScript inline. ``/*__VIEWER_DATA__*/null`` is replaced by the data."""

PAGE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>earthmon NDVI</title>
<style>
  :root { --ink: #1d2a1f; --muted: #5b6b5e; --line: #c9d3ca; --panel: #f6f8f5; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--ink);
         display: grid; grid-template-rows: auto 1fr; height: 100vh; }
  header { padding: 8px 14px; border-bottom: 1px solid var(--line); display: flex; gap: 24px;
           align-items: center; flex-wrap: wrap; }
  header h1 { font-size: 16px; margin: 0; }
  .legend { display: flex; align-items: center; gap: 6px; color: var(--muted); font-size: 12px; }
  .ramp { width: 160px; height: 12px; border: 1px solid var(--line); }
  .ramp.ndvi { background: linear-gradient(to right, rgb(140,81,10) 0%, rgb(216,179,101) 18.2%,
     rgb(246,232,195) 36.4%, rgb(199,234,229) 54.5%, rgb(128,205,110) 63.6%, rgb(35,139,69) 81.8%,
     rgb(0,68,27) 100%); }
  .ramp.valid { background: linear-gradient(to right, #d73027, #fee08b 50%, #1a9850); }
  main { display: grid; grid-template-columns: 1fr 340px; min-height: 0; }
  #map { width: 100%; height: 100%; background: #dfe9f3; cursor: grab; display: block; }
  #map.dragging { cursor: grabbing; }
  .graticule { stroke: #b4c4d4; stroke-width: 1; fill: none; vector-effect: non-scaling-stroke; }
  .footprint { stroke: #213322; stroke-width: 1; fill-opacity: 0.35; vector-effect: non-scaling-stroke;
               cursor: pointer; }
  .footprint:hover { fill-opacity: 0.6; }
  .footprint.selected { stroke: #000; stroke-width: 2.5; fill-opacity: 0.15; }
  #mosaic-image { image-rendering: pixelated; }
  aside { border-left: 1px solid var(--line); background: var(--panel); padding: 12px; overflow: auto; }
  aside h2 { font-size: 15px; margin: 0 0 6px; word-break: break-all; }
  aside dl { display: grid; grid-template-columns: auto 1fr; gap: 2px 10px; margin: 8px 0; }
  aside dt { color: var(--muted); }
  aside dd { margin: 0; word-break: break-all; }
  #quicklook { max-width: 100%; border: 1px solid var(--line); background:
     repeating-conic-gradient(#eee 0% 25%, #fff 0% 50%) 50% / 16px 16px; }
  .hint { color: var(--muted); }
  #coords { font-variant-numeric: tabular-nums; color: var(--muted); font-size: 12px; }
</style>
</head>
<body>
<header>
  <h1>earthmon NDVI</h1>
  <span id="summary" class="hint"></span>
  <span class="legend">NDVI -0.2 <span class="ramp ndvi"></span> 0.9</span>
  <span class="legend">footprints: valid 0% <span class="ramp valid"></span> 100%</span>
  <span id="coords"></span>
</header>
<main>
  <svg id="map" xmlns="http://www.w3.org/2000/svg" viewBox="-180 -90 360 180" preserveAspectRatio="xMidYMid meet"
       role="img" aria-label="NDVI map">
    <rect x="-180" y="-90" width="360" height="180" fill="#dfe9f3"></rect>
    <g id="mosaic-layer"></g>
    <g id="graticule"></g>
    <g id="footprints"></g>
  </svg>
  <aside id="panel">
    <p class="hint" id="panel-hint">Click a footprint to see its quicklook and links. Scroll to zoom, drag to pan,
      double-click to reset.</p>
    <div id="details" hidden>
      <h2 id="d-id"></h2>
      <dl>
        <dt>tile</dt><dd id="d-tile"></dd>
        <dt>product</dt><dd id="d-kind"></dd>
        <dt>dates</dt><dd id="d-dates"></dd>
        <dt>valid</dt><dd id="d-valid"></dd>
      </dl>
      <img id="quicklook" alt="quicklook">
      <p><a id="d-cog">COG</a> &middot; <a id="d-item">STAC item</a></p>
    </div>
    <p class="hint"><a id="collection-link" href="collection.json">collection.json</a> &middot;
      <a id="mosaic-link" href="mosaic_ndvi.tif">mosaic_ndvi.tif</a> &middot;
      <a href="mosaic_ndvi.png">mosaic_ndvi.png</a></p>
  </aside>
</main>
<script id="viewer-data" type="application/json">/*__VIEWER_DATA__*/null</script>
<script>
(function () {
  "use strict";
  var SVGNS = "http://www.w3.org/2000/svg";
  var data = JSON.parse(document.getElementById("viewer-data").textContent) || {features: []};
  var svg = document.getElementById("map");
  var features = data.features || [];

  function el(name, attrs, parent) {
    var node = document.createElementNS(SVGNS, name);
    for (var k in attrs) { node.setAttribute(k, attrs[k]); }
    if (parent) { parent.appendChild(node); }
    return node;
  }

  // colour of a valid fraction: red (0) - yellow (0.5) - green (1)
  function validColour(v) {
    if (typeof v !== "number" || !isFinite(v)) { return "#999999"; }
    v = Math.max(0, Math.min(1, v));
    var stops = [[215, 48, 39], [254, 224, 139], [26, 152, 80]];
    var t = v * 2, i = Math.min(1, Math.floor(t)), f = t - i;
    var c = stops[i].map(function (a, k) { return Math.round(a + (stops[i + 1][k] - a) * f); });
    return "rgb(" + c.join(",") + ")";
  }

  // graticule every 30 degrees
  var grat = document.getElementById("graticule");
  for (var lon = -180; lon <= 180; lon += 30) { el("line", {x1: lon, y1: -90, x2: lon, y2: 90, "class": "graticule"}, grat); }
  for (var lat = -90; lat <= 90; lat += 30) { el("line", {x1: -180, y1: -lat, x2: 180, y2: -lat, "class": "graticule"}, grat); }

  // the mosaic PNG, its map part placed on its bounds (the legend strip below it is clipped away)
  var m = data.mosaic;
  if (m) {
    var b = m.bounds;
    var frame = el("svg", {x: b[0], y: -b[3], width: b[2] - b[0], height: b[3] - b[1],
                           viewBox: "0 0 " + m.map_width + " " + m.map_height, preserveAspectRatio: "none",
                           overflow: "hidden"}, document.getElementById("mosaic-layer"));
    var img = el("image", {id: "mosaic-image", x: 0, y: 0, width: m.png_width, height: m.png_height,
                           preserveAspectRatio: "none"}, frame);
    img.addEventListener("load", function () { svg.setAttribute("data-mosaic-loaded", "1"); });
    img.addEventListener("error", function () { svg.setAttribute("data-mosaic-loaded", "error"); });
    img.setAttribute("href", m.href);
  }

  // footprints (Polygon / MultiPolygon; already split at the antimeridian), coloured by valid fraction
  function ringPath(ring) {
    return "M" + ring.map(function (p) { return p[0] + "," + (-p[1]); }).join("L") + "Z";
  }
  function geometryPath(g) {
    if (!g) { return ""; }
    var polys = g.type === "Polygon" ? [g.coordinates] : g.type === "MultiPolygon" ? g.coordinates : [];
    return polys.map(function (poly) { return poly.map(ringPath).join(""); }).join("");
  }
  var layer = document.getElementById("footprints");
  var selected = null;
  features.forEach(function (f, index) {
    var path = el("path", {d: geometryPath(f.geometry), "class": "footprint", fill: validColour(f.valid_fraction),
                           "data-index": index, "data-tile": f.tile || "", "data-id": f.id}, layer);
    var title = el("title", {}, path);
    title.textContent = f.id + (typeof f.valid_fraction === "number" ?
      " (" + Math.round(f.valid_fraction * 100) + "% valid)" : "");
    path.addEventListener("click", function (ev) { ev.stopPropagation(); show(index, path); });
  });
  svg.setAttribute("data-footprints", String(features.length));
  document.getElementById("summary").textContent = features.length + " products" +
    (m ? ", mosaic at " + m.resolution + "\u00b0" : "") + (data.generated ? ", " + data.generated : "");

  function show(index, path) {
    var f = features[index];
    if (selected) { selected.classList.remove("selected"); }
    selected = path; path.classList.add("selected");
    document.getElementById("panel-hint").hidden = true;
    document.getElementById("details").hidden = false;
    document.getElementById("d-id").textContent = f.id;
    document.getElementById("d-tile").textContent = f.tile || "?";
    document.getElementById("d-kind").textContent = f.kind + (f.method ? " (" + f.method + ")" : "");
    document.getElementById("d-dates").textContent = f.start === f.end ? (f.start || "?") :
      (f.start || "?") + " \u2013 " + (f.end || "?");
    document.getElementById("d-valid").textContent = typeof f.valid_fraction === "number" ?
      (f.valid_fraction * 100).toFixed(1) + " %" : "?";
    var ql = document.getElementById("quicklook");
    ql.removeAttribute("data-loaded");
    if (f.quicklook) { ql.hidden = false; ql.src = f.quicklook; } else { ql.hidden = true; ql.removeAttribute("src"); }
    var cog = document.getElementById("d-cog"), item = document.getElementById("d-item");
    if (f.cog) { cog.href = f.cog; } else { cog.removeAttribute("href"); }
    item.href = f.item;
    document.getElementById("details").setAttribute("data-shown", f.id);
  }
  var quick = document.getElementById("quicklook");
  quick.addEventListener("load", function () { quick.setAttribute("data-loaded", "1"); });
  quick.addEventListener("error", function () { quick.setAttribute("data-loaded", "error"); });

  // zoom (wheel) and pan (drag) by changing the viewBox; double-click resets
  var view = {x: -180, y: -90, w: 360, h: 180};
  function apply() { svg.setAttribute("viewBox", view.x + " " + view.y + " " + view.w + " " + view.h); }
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
  svg.addEventListener("mousedown", function (ev) { drag = {p: toMap(ev), moved: false}; });
  window.addEventListener("mousemove", function (ev) {
    var p = toMap(ev);
    document.getElementById("coords").textContent = "lon " + p.x.toFixed(3) + ", lat " + (-p.y).toFixed(3);
    if (!drag) { return; }
    view.x -= p.x - drag.p.x; view.y -= p.y - drag.p.y; drag.moved = true;
    svg.classList.add("dragging"); apply();
  });
  window.addEventListener("mouseup", function () { drag = null; svg.classList.remove("dragging"); });
  svg.addEventListener("dblclick", function () { view = {x: -180, y: -90, w: 360, h: 180}; apply(); });

  // start on the data: zoom to the mosaic's bounds (with a margin)
  if (m) {
    var bb = m.bounds, pad = Math.max(1, 0.1 * Math.max(bb[2] - bb[0], bb[3] - bb[1]));
    var w0 = Math.min(360, Math.max(bb[2] - bb[0], 2 * (bb[3] - bb[1])) + 2 * pad);
    view = {w: w0, h: w0 / 2, x: (bb[0] + bb[2]) / 2 - w0 / 2, y: -(bb[1] + bb[3]) / 2 - w0 / 4};
    apply();
  }
})();
</script>
</body>
</html>
"""
