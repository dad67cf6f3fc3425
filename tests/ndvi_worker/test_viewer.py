"""The offline viewer (index.html) in a real browser: headless Chromium on a file:// URL with networking off. A probe
script appended to a copy of the page (beside it, so relative links resolve) waits for the mosaic image, counts the
footprints, clicks one and waits for its quicklook, then writes what it saw into the DOM that Chromium dumps."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np

from earthmon_testing.products import write_product
from earthmon_testing.worker import need
from ndvi_worker.products_io import MosaicOptions, run_mosaic

PROBE = """<script>
(function () {
  var out = document.createElement("pre"); out.id = "probe-result";
  function finish(result) { out.textContent = JSON.stringify(result); document.body.appendChild(out); }
  var svg = document.getElementById("map"), started = Date.now();
  function waitFor(check, then) {
    (function poll() {
      if (check()) { then(); } else if (Date.now() - started > 8000) { finish({error: "timeout", svg: svg.outerHTML.slice(0, 300)}); }
      else { setTimeout(poll, 50); }
    })();
  }
  window.addEventListener("load", function () {
    waitFor(function () { return svg.getAttribute("data-mosaic-loaded"); }, function () {
      var paths = document.querySelectorAll("#footprints path.footprint");
      var box = svg.getBoundingClientRect();
      var target = paths[0];
      target.dispatchEvent(new MouseEvent("click", {bubbles: true, cancelable: true, view: window}));
      var ql = document.getElementById("quicklook");
      waitFor(function () { return ql.getAttribute("data-loaded"); }, function () {
        finish({
          mosaic: svg.getAttribute("data-mosaic-loaded"),
          footprints: paths.length,
          declared: svg.getAttribute("data-footprints"),
          fills: Array.prototype.map.call(paths, function (p) { return p.getAttribute("fill"); }),
          map_size: [box.width, box.height],
          clicked: target.getAttribute("data-id"),
          shown: document.getElementById("details").getAttribute("data-shown"),
          details_hidden: document.getElementById("details").hidden,
          quicklook: ql.getAttribute("data-loaded"),
          quicklook_size: [ql.naturalWidth, ql.naturalHeight],
          quicklook_src: ql.getAttribute("src"),
          item_href: document.getElementById("d-item").getAttribute("href")
        });
      });
    });
  });
})();
</script>
"""


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_viewer_renders_footprints_and_shows_a_quicklook_on_click(tmp_path: Path):
    exe = _chromium()
    need(exe is not None, "chromium is not installed (apt-get install chromium)")
    folder = tmp_path / "in"
    ndvi = np.full((1098, 1098), 0.6, dtype="float32")
    ndvi[:300] = np.nan  # 73 % valid
    write_product(
        folder / "a",
        "S2A_31UFU_20231203_0_L2A",
        ndvi,
        "2023-12-03",
        32631,
        (600000.0, 5800020.0),
        100.0,
        quicklook=True,
    )
    write_product(
        folder / "b",
        "S2A_32ULC_20231205_0_L2A",
        np.full((1098, 1098), 0.3, "float32"),
        "2023-12-05",
        32632,
        (300000.0, 5800020.0),
        100.0,
        quicklook=True,
    )
    out = tmp_path / "out"
    _, status, _ = run_mosaic(folder, out, MosaicOptions(resolution=0.01), tmp_path / "s")
    assert status == 0
    page = (out / "index.html").read_text()
    probe = out / "probe.html"
    probe.write_text(page.replace("</body>", PROBE + "</body>"))
    profile = tmp_path / "chromium-profile"
    proc = subprocess.run(
        [
            exe,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            "--disable-extensions",
            "--allow-file-access-from-files",
            f"--user-data-dir={profile}",
            "--proxy-server=127.0.0.1:9",  # anything that tried the network would fail
            "--virtual-time-budget=15000",
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
    import html

    result = json.loads(html.unescape(match.group(1)))
    assert "error" not in result, result
    assert result["mosaic"] == "1"
    assert result["footprints"] == 2 and result["declared"] == "2"
    assert result["map_size"][0] > 400 and result["map_size"][1] > 200
    assert len(set(result["fills"])) == 2  # coloured by valid fraction (73 % and 100 %)
    assert result["shown"] == result["clicked"] and result["details_hidden"] is False
    assert result["quicklook"] == "1" and result["quicklook_size"][0] > 0
    assert result["quicklook_src"].endswith(f"{result['clicked']}.png")
    assert (out / result["item_href"]).resolve().exists()
