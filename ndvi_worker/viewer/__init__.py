"""The offline viewer (``index.html``): one self-contained page, scripts and styles inline (no CDN, no tile server),
that draws the mosaic PNG and the products' footprints on an equirectangular SVG map and shows a product's quicklook
and links on click. The page's template is :data:`ndvi_worker.viewer.page.PAGE` (HTML, CSS and JS kept in a Python
module so that every install of the package carries it)."""

from __future__ import annotations

import json

from ndvi_worker.viewer.page import PAGE

DATA_MARKER = "/*__VIEWER_DATA__*/null"


def render_viewer(data: dict) -> str:
    """The page with ``data`` (features, mosaic placement; see products_io) embedded as JSON: a page opened from
    file:// cannot fetch its neighbours, so the data travels inside it."""
    text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    # inside <script>, "</" could close the element and "<!--" open a comment: write <, > and & as JSON \u escapes
    # (still valid JSON, and no markup can form; "<\\!--" would not be valid JSON)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return PAGE.replace(DATA_MARKER, text)
