"""HTTP requests to servers the launcher does not control (a model server for ``predict --url``, a STAC API for
``search``), bounded: a total deadline per request (not only per read: a server trickling a byte at a time cannot
hold a command forever), a cap on the body read, and redirects refused, or followed only within the origin asked.

Requests raises its own errors for refused connections and read timeouts; the bounds raise
:class:`launcher.errors.ResponseError` with one line saying which bound and where.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

from launcher.errors import ResponseError

MAX_REDIRECTS = 5


def origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of a URL, the port made explicit for http and https."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port or {"http": 80, "https": 443}.get(scheme)
    except ValueError:
        raise ResponseError(f"{short(url)} has an invalid port") from None
    return scheme, (parts.hostname or "").lower(), port


def short(text: str, limit: int = 200) -> str:
    """Text from a server made safe for one terminal line: no control characters, cut to ``limit``."""
    flat = " ".join("".join(c if c.isprintable() else " " for c in str(text)).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    url: str


def fetch(
    session: Any,
    method: str,
    url: str,
    *,
    max_bytes: int,
    deadline_s: float,
    read_timeout_s: float,
    same_origin_redirects: bool = False,
    **kwargs: Any,
) -> Answer:
    """One request (``session.request(method, url, **kwargs)``), its body read whole within ``max_bytes`` and all of
    it (connecting, sending, the headers, the body, any redirects) within ``deadline_s`` seconds.

    Redirects: refused, or with ``same_origin_redirects`` followed (at most MAX_REDIRECTS) when they stay on the
    origin of ``url``; a redirect elsewhere is refused (the request, its body and headers would go there)."""
    state: dict[str, Any] = {}
    done = threading.Event()
    current: dict[str, Any] = {}

    def run() -> None:
        try:
            state["answer"] = _follow(session, method, url, max_bytes, read_timeout_s, same_origin_redirects,
                                      current, kwargs)  # fmt: skip
        except BaseException as exc:  # handed to the caller's thread
            state["error"] = exc
        finally:
            done.set()

    worker = threading.Thread(target=run, name="launcher-http", daemon=True)
    worker.start()
    if not done.wait(deadline_s):
        _abort(current.get("response"))
        raise ResponseError(f"{short(url)} did not answer in full within {deadline_s:g} s")
    if "error" in state:
        raise state["error"]
    return state["answer"]


def _follow(
    session, method, url, max_bytes, read_timeout_s, same_origin_redirects, current, kwargs
) -> Answer:
    start = origin(url)
    for _ in range(MAX_REDIRECTS + 1):
        with session.request(
            method, url, timeout=read_timeout_s, stream=True, allow_redirects=False, **kwargs
        ) as response:
            current["response"] = response
            if response.is_redirect:
                location = urljoin(url, response.headers.get("Location", ""))
                if not same_origin_redirects or origin(location) != start:
                    raise ResponseError(
                        f"{short(url)} answered {response.status_code}, a redirect to {short(location)}: not "
                        "followed (the request would go there); give the final URL instead"
                    )
                if response.status_code == 303 or (response.status_code in (301, 302) and method != "GET"):
                    method = "GET"
                    kwargs = {k: v for k, v in kwargs.items() if k not in ("data", "json")}
                url = location
                continue
            body = read_capped(response, max_bytes, url)
            return Answer(response.status_code, dict(response.headers), body, url)
    raise ResponseError(f"{short(url)}: more than {MAX_REDIRECTS} redirects")


def read_capped(response: Any, limit: int, url: str) -> bytes:
    """The body of a streamed response, refused beyond ``limit`` bytes (Content-Length first, then as it comes)."""
    declared = response.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ResponseError(f"{short(url)} sends {int(declared)} bytes, more than the {_size(limit)} allowed")
    chunks, size = [], 0
    for chunk in response.iter_content(chunk_size=1 << 16):
        size += len(chunk)
        if size > limit:
            raise ResponseError(f"{short(url)} sent more than the {_size(limit)} allowed")
        chunks.append(chunk)
    return b"".join(chunks)


def _size(n: int) -> str:
    return f"{n / 2**20:g} MiB" if n >= 2**20 else f"{n} bytes"


def _abort(response: Any) -> None:
    """Wake the worker blocked on a socket read (shutdown, unlike close, interrupts a blocked recv)."""
    connection = getattr(getattr(response, "raw", None), "connection", None)
    sock = getattr(connection, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
