"""A shaped HTTP link that behaves like an object store, for the worker benchmark and the read-path tests.

One asyncio process serves a folder over HTTP/1.1 with keep-alive and single Range requests (what S3 does; S3
speaks HTTP/1.1 only and ignores multi-range requests, so this server answers them with the whole object too),
and shapes every connection the way S3 does to one client:

* every request waits ``--latency-ms`` (default 30) before its first byte (S3's time to first byte is tens of
  ms), HEAD requests and 404s included;
* every connection carries at most ``--rate-mbps`` MB/s (default 60; 0 = unlimited): the body is sent in 256 KB
  slices with ``os.sendfile`` and the connection sleeps until its byte budget allows the next slice.

Requests and bytes are counted here, at the server (status line + headers + body of every response, per
method), not from the reader's idea of its block sizes: ``GET /_stats`` returns them as JSON and
``GET /_stats?reset=1`` returns and zeroes them (that request itself is neither shaped nor counted). The CPU the
server itself uses is in ``/proc/<pid>/stat``; the benchmark reports it per run.

    python benchmarks/shaped_link.py ROOT [--port 0] [--latency-ms 30] [--rate-mbps 60] [--log FILE]

prints ``listening on http://127.0.0.1:PORT`` once ready.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email.utils
import json
import re
import time
from pathlib import Path

SLICE = 256 * 1024
RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


class Stats:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.requests: dict[str, int] = {}
        self.statuses: dict[str, int] = {}
        self.bytes_sent = 0
        self.body_bytes = 0
        self.connections = 0
        self.max_open = 0
        self.open = 0
        self.max_in_flight = 0
        self.in_flight = 0

    def as_dict(self) -> dict:
        return {
            "requests": sum(self.requests.values()),
            "by_method": dict(self.requests),
            "by_status": dict(self.statuses),
            "bytes_sent": self.bytes_sent,
            "body_bytes": self.body_bytes,
            "connections": self.connections,
            "max_open_connections": self.max_open,
            "max_requests_in_flight": self.max_in_flight,
        }


class ShapedServer:
    def __init__(self, root: Path, latency: float, rate: float, log: Path | None = None) -> None:
        self.log = open(log, "a", buffering=1) if log else None  # noqa: SIM115 - open for the server's life
        self.root = root.resolve()
        self.latency = latency
        self.rate = rate  # bytes per second per connection; 0 = unlimited
        self.stats = Stats()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        s = self.stats
        s.connections += 1
        s.open += 1
        s.max_open = max(s.max_open, s.open)
        sock = writer.get_extra_info("socket")
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                if not await self.respond(head, writer, sock):
                    return
        except (ConnectionError, asyncio.CancelledError):
            return
        finally:
            s.open -= 1
            writer.close()

    async def respond(self, head: bytes, writer: asyncio.StreamWriter, sock) -> bool:
        lines = head.decode("latin-1").split("\r\n")
        try:
            method, target, _version = lines[0].split(" ", 2)
        except ValueError:
            return False
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        path, _, query = target.partition("?")
        if path == "/_stats":
            body = json.dumps(self.stats.as_dict()).encode()
            if "reset=1" in query:
                self.stats.reset()
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
                + body
            )
            await writer.drain()
            return True
        s = self.stats
        s.requests[method] = s.requests.get(method, 0) + 1
        s.in_flight += 1
        s.max_in_flight = max(s.max_in_flight, s.in_flight)
        try:
            if self.latency:
                await asyncio.sleep(self.latency)  # time to first byte
            return await self._serve(method, path, headers, writer, sock)
        finally:
            s.in_flight -= 1

    async def _serve(self, method: str, path: str, headers: dict, writer, sock) -> bool:
        s = self.stats
        file = (self.root / path.lstrip("/")).resolve()
        if method not in ("GET", "HEAD"):
            return self._status(writer, 405, "Method Not Allowed", head=method == "HEAD")
        if self.root not in file.parents or not file.is_file():
            return self._status(writer, 404, "Not Found", head=method == "HEAD")
        size = file.stat().st_size
        start, end, status = 0, size - 1, 200
        rng = headers.get("range")
        match = RANGE.match(rng) if rng else None
        if match and (match.group(1) or match.group(2)):
            a, b = match.group(1), match.group(2)
            if a:
                start, end = int(a), min(int(b) if b else size - 1, size - 1)
            else:  # suffix range
                start, end = max(0, size - int(b)), size - 1
            if start >= size or start > end:
                return self._status(
                    writer,
                    416,
                    "Range Not Satisfiable",
                    f"Content-Range: bytes */{size}\r\n",
                    method == "HEAD",
                )
            status = 206
        length = end - start + 1
        mtime = email.utils.formatdate(file.stat().st_mtime, usegmt=True)
        lines = [
            f"HTTP/1.1 {status} {'Partial Content' if status == 206 else 'OK'}",
            f"Content-Length: {length}",
            "Accept-Ranges: bytes",
            "Content-Type: image/tiff",
            f"Last-Modified: {mtime}",
            f'ETag: "{size:x}-{int(file.stat().st_mtime):x}"',
        ]
        if status == 206:
            lines.append(f"Content-Range: bytes {start}-{end}/{size}")
        header = ("\r\n".join(lines) + "\r\n\r\n").encode()
        s.statuses[str(status)] = s.statuses.get(str(status), 0) + 1
        self._log(method, path, rng, status, length if method == "GET" else 0)
        writer.write(header)
        s.bytes_sent += len(header)
        if method == "HEAD":
            await writer.drain()
            return True
        loop = asyncio.get_running_loop()
        t0 = time.monotonic()
        sent = 0
        with open(file, "rb") as f:
            while sent < length:
                n = min(SLICE, length - sent)
                await writer.drain()
                n = await loop.sendfile(writer.transport, f, start + sent, n)
                sent += n
                s.bytes_sent += n
                s.body_bytes += n
                if self.rate:
                    due = t0 + sent / self.rate - time.monotonic()
                    if due > 0:
                        await asyncio.sleep(due)
        return True

    def _log(self, method: str, path: str, rng: str | None, status: int, body: int) -> None:
        if self.log:  # one line per request: method path range status body-bytes
            self.log.write(f"{method} {path} {rng or '-'} {status} {body}\n")

    def _status(self, writer, code: int, reason: str, extra: str = "", head: bool = False) -> bool:
        body = f"{code} {reason}\n".encode()
        header = f"HTTP/1.1 {code} {reason}\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode()
        self.stats.statuses[str(code)] = self.stats.statuses.get(str(code), 0) + 1
        self._log("HEAD" if head else "GET", "-", None, code, 0)
        body = b"" if head else body
        self.stats.bytes_sent += len(header) + len(body)
        writer.write(header + body)
        return True


async def serve(root: Path, port: int, latency_ms: float, rate_mbps: float, log: Path | None = None) -> None:
    app = ShapedServer(root, latency_ms / 1000.0, rate_mbps * 1e6, log)
    server = await asyncio.start_server(app.handle, "127.0.0.1", port, backlog=256)
    port = server.sockets[0].getsockname()[1]
    print(f"listening on http://127.0.0.1:{port}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", type=Path)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency-ms", type=float, default=30.0, help="added before each response's first byte")
    ap.add_argument("--rate-mbps", type=float, default=60.0, help="MB/s per connection (0: unlimited)")
    ap.add_argument("--log", type=Path, help="append one line per request: method path range status bytes")
    args = ap.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.root, args.port, args.latency_ms, args.rate_mbps, args.log))


if __name__ == "__main__":
    main()
