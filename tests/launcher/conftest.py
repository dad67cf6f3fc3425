"""Launcher test fixtures: a moto server (S3, SageMaker) with a wire recorder, and a STAC API replay server.

moto stores little and validates nothing, so tests assert on the requests the launcher sends: `Wire` hooks the
launcher's boto3 session (`before-send`) and records every request (service, operation, parsed body). It can
also answer chosen operations itself (throttling errors, canned responses for APIs moto lacks), in which case
the request is recorded as `injected` and never reaches moto.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import os
import shutil
import threading
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from earthmon_testing.launcher import SEARCH_RESPONSES, extra_page_items, free_port, load_json

REGION = "us-east-1"
BUCKET = "earthmon-test"


# ------------------------------------------------------------------------------------------------- moto


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body


@dataclass
class Call:
    service: str
    operation: str
    body: Any
    injected: bool = False


@dataclass
class Wire:
    """Records the launcher's AWS requests and injects answers for chosen operations."""

    calls: list[Call] = field(default_factory=list)
    _inject: dict[tuple[str, str], list[Callable[[Any], tuple[int, dict[str, Any]] | None]]] = field(
        default_factory=dict
    )
    lock: threading.Lock = field(default_factory=threading.Lock)

    def sent(self, service: str | None = None, operation: str | None = None) -> list[Call]:
        """Requests that reached the server (not injected)."""
        return [
            c
            for c in self.calls
            if not c.injected
            and (service is None or c.service == service)
            and (operation in (None, c.operation))
        ]

    def injected(self, operation: str | None = None) -> list[Call]:
        return [c for c in self.calls if c.injected and operation in (None, c.operation)]

    def answer(
        self, service: str, operation: str, fn: Callable[[Any], tuple[int, dict[str, Any]] | None]
    ) -> None:
        """`fn(body)` returns (status, json body) to answer instead of the server, or None to let it through."""
        self._inject.setdefault((service, operation), []).append(fn)

    def throttle(self, operation: str, times: int, service: str = "sagemaker", every: int = 1) -> None:
        """The first `times` x `every` calls of `operation`: every `every`-th one answers ThrottlingException."""
        state = {"n": 0, "left": times}

        def fn(_body: Any) -> tuple[int, dict[str, Any]] | None:
            state["n"] += 1
            if state["left"] > 0 and state["n"] % every == 0:
                state["left"] -= 1
                return 400, {"__type": "ThrottlingException", "message": "Rate exceeded"}
            return None

        self.answer(service, operation, fn)

    def handler(self, request: Any, event_name: str, **_: Any) -> Any:
        from botocore.awsrequest import AWSResponse

        _, service, operation = event_name.split(".", 2)
        body: Any = request.body
        if hasattr(body, "read") and hasattr(body, "seek"):  # S3 uploads: a seekable stream
            pos = body.tell()
            data = body.read()
            body.seek(pos)
            body = data
        if isinstance(body, bytes | bytearray):
            try:
                body = json.loads(body) if body else None
            except (ValueError, UnicodeDecodeError):
                body = bytes(body)
        elif isinstance(body, str):
            with contextlib.suppress(ValueError):
                body = json.loads(body) if body else None
        answer = None
        for fn in self._inject.get((service, operation), []):
            answer = fn(body)
            if answer is not None:
                break
        with self.lock:
            self.calls.append(Call(service, operation, body, injected=answer is not None))
        if answer is None:
            return None
        status, payload = answer
        headers = {"x-amzn-requestid": "injected", "content-type": "application/x-amz-json-1.1"}
        if status >= 400:
            headers["x-amzn-errortype"] = str(payload.get("__type", ""))
        return AWSResponse(request.url, status, headers, _Raw(json.dumps(payload).encode()))


@functools.cache
def _shared_loader() -> Any:
    import botocore.loaders

    return botocore.loaders.create_loader()


@pytest.fixture
def aws(
    moto_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Wire]:
    """A clean moto server as the AWS endpoint (env vars, fake credentials), a bucket, and the wire recorder."""
    import launcher.aws as launcher_aws

    empty = tmp_path_factory.mktemp("awscfg")
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    for key in list(os.environ):
        if key.startswith("AWS_ENDPOINT_URL_"):
            monkeypatch.delenv(key)
    env = {
        "AWS_ENDPOINT_URL": moto_server,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "AWS_CONFIG_FILE": str(empty / "config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(empty / "credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "EARTHMON_AWS_MAX_RPS": "0",  # no client-side limit unless a test sets one
        "SAGEMAKER_SUPPRESS_V2_WARNING": "1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    urllib.request.urlopen(urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST")).read()
    launcher_aws.reset_session()
    # a fresh session per test (clean event handlers), sharing one botocore loader: parsing the service models
    # again for every test costs about half a second of CPU each
    launcher_aws.session()._session.register_component("data_loader", _shared_loader())
    wire = Wire()
    launcher_aws.session().events.register("before-send", wire.handler)
    s3 = launcher_aws.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    wire.calls.clear()
    yield wire
    launcher_aws.reset_session()


# ----------------------------------------------------------------------------------------- STAC replay


@dataclass
class StacServer:
    url: str
    requests: list[dict[str, Any]]


@pytest.fixture
def stac_server(tmp_path: Path) -> Iterator[StacServer]:
    """A STAC API replaying the real Earth Search search pages (next links rewritten to this server), then one
    more page built from the real fixture items. Records every search request body."""
    pages_dir = tmp_path / "search-responses"
    shutil.copytree(SEARCH_RESPONSES, pages_dir)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    page1 = load_json(pages_dir / "earth-search-v1-search-page1.json")
    page2 = load_json(pages_dir / "earth-search-v1-search-page2.json")
    token1 = next(link for link in page1["links"] if link["rel"] == "next")["body"]["next"]
    token2 = next(link for link in page2["links"] if link["rel"] == "next")["body"]["next"]
    token3 = "page3-token"
    page3 = {
        "type": "FeatureCollection",
        "features": extra_page_items(),
        "links": [{"rel": "root", "href": url, "type": "application/json"}],
    }

    def rewrite(page: dict[str, Any], next_token: str | None) -> dict[str, Any]:
        page = copy.deepcopy(page)
        links = []
        for link in page.get("links", []):
            link = dict(link)
            link["href"] = link["href"].replace("https://earth-search.aws.element84.com/v1", url)
            if link["rel"] == "next":
                if next_token is None:
                    continue
                link["body"] = {**link.get("body", {}), "next": next_token}
            links.append(link)
        page["links"] = links
        return page

    responses = {None: rewrite(page1, token1), token1: rewrite(page2, token3), token3: page3}
    assert token2  # the real page 2 links on; this replay ends with page 3
    landing = {
        "type": "Catalog",
        "id": "earth-search-replay",
        "stac_version": "1.0.0",
        "description": "replay of real Earth Search v1 responses",
        "conformsTo": [
            "https://api.stacspec.org/v1.0.0/core",
            "https://api.stacspec.org/v1.0.0/item-search",
            "https://api.stacspec.org/v1.0.0/item-search#query",
            "https://api.stacspec.org/v1.0.0/item-search#filter",
            "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
        ],
        "links": [
            {"rel": "self", "href": url, "type": "application/json"},
            {"rel": "root", "href": url, "type": "application/json"},
            {"rel": "search", "href": f"{url}/search", "type": "application/geo+json", "method": "GET"},
            {"rel": "search", "href": f"{url}/search", "type": "application/geo+json", "method": "POST"},
        ],
    }
    recorded: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, status: int, payload: Any) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802
            if self.path.rstrip("/") in ("", "/"):
                self._send(200, landing)
            else:
                self._send(404, {"code": "NotFound", "description": self.path})

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            if not self.path.startswith("/search"):
                self._send(404, {"code": "NotFound"})
                return
            recorded.append(body)
            token = body.get("next")
            if token not in responses:
                self._send(400, {"code": "BadRequest", "description": f"unknown next token {token}"})
                return
            self._send(200, responses[token])

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield StacServer(url=url, requests=recorded)
    server.shutdown()
    server.server_close()
