"""Shared constants and helpers of the ndvi_worker tests."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from earthmon_testing import DATA, free_port, wait_port  # noqa: F401  (re-exported for the tests)
from earthmon_testing import require as need  # noqa: F401

SAMPLE = DATA / "sentinel-cogs-sample" / "S2A_29RKH_20200219_0_L2A"
STAC_ITEMS = DATA / "stac-items"


class Canary:
    """An HTTP server on loopback that counts every request it receives (it must receive none)."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        canary = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                canary.requests.append(self.path)
                self.send_response(404)
                self.end_headers()

            do_HEAD = do_GET  # noqa: N815

            def log_message(self, *args):
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Canary:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
