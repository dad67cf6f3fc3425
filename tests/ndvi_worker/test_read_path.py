"""The read path (issue 13): every range request counted at the server, the read concurrency knob, the bounded
prefetch window, and outputs identical whatever the concurrency."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from ndvi_worker.config import MAX_READ_CONCURRENCY, WorkerConfig
from ndvi_worker.readahead import PipelineStats, StripCache, run_chunks

ROOT = Path(__file__).resolve().parents[2]
ITEM_ID = "S2B_31UFU_20231204_0_L2A"


# ----------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cog_scene(tmp_path_factory) -> Path:
    """A 2196 x 2196 synthetic scene (1024 blocks with partial edge blocks, 4 overview levels, SCL in 512
    blocks): small enough to run in seconds, shaped like the public COGs."""
    from ndvi_worker.synthetic import write_scene

    root = tmp_path_factory.mktemp("readpath")
    write_scene(root / "www" / "scene", item_id=ITEM_ID, size=2196, seed=3)
    return root / "www"


class Link:
    """benchmarks/shaped_link.py on a free port, logging every request."""

    def __init__(self, root: Path, log: Path, latency_ms: float = 0.0):
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "benchmarks" / "shaped_link.py"), str(root), "--latency-ms",
             str(latency_ms), "--rate-mbps", "0", "--log", str(log)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        line = self.proc.stdout.readline()
        self.base = re.search(r"(http://127\.0\.0\.1:\d+)", line).group(1)

    def stats(self) -> dict:
        import urllib.request

        with urllib.request.urlopen(f"{self.base}/_stats?reset=1", timeout=10) as r:
            return json.loads(r.read())

    def requests(self) -> list[tuple[str, str, str, int, int]]:
        out = []
        for line in self.log.read_text().splitlines():
            method, path, rng, status, body = line.split()
            out.append((method, path, rng, int(status), int(body)))
        self.log.write_text("")
        return out

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def link(cog_scene, tmp_path):
    server = Link(cog_scene, tmp_path / "requests.log")
    yield server
    server.close()


def remote_item(cog_scene: Path, base: str, dst: Path) -> Path:
    item = json.loads((cog_scene / "scene" / f"{ITEM_ID}.json").read_text())
    for asset in item["assets"].values():
        asset["href"] = f"{base}/scene/{asset['href'].lstrip('./')}"
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "item.json").write_text(json.dumps(item))
    return dst


def tile_ranges(path: Path) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(full-resolution tiles, overview tiles) as [start, end) byte ranges, from the TIFF's own offsets."""

    def ranges(ds) -> list[tuple[int, int]]:
        out = []
        bh, bw = ds.block_shapes[0]
        for i in range(-(-ds.height // bh)):
            for j in range(-(-ds.width // bw)):
                off = int(ds.get_tag_item(f"BLOCK_OFFSET_{j}_{i}", "TIFF", bidx=1))
                size = int(ds.get_tag_item(f"BLOCK_SIZE_{j}_{i}", "TIFF", bidx=1))
                out.append((off, off + size))
        return out

    with rasterio.open(path) as ds:
        full = ranges(ds)
        levels = len(ds.overviews(1))
    overviews = []
    for level in range(levels):
        with rasterio.open(path, overview_level=level) as ds:
            overviews += ranges(ds)
    return full, overviews


def parse_range(rng: str) -> tuple[int, int]:
    a, b = rng.removeprefix("bytes=").split("-")
    return int(a), int(b) + 1


# ----------------------------------------------------------------------------------------------- requests


def test_a_chunked_remote_read_makes_every_request_count(cog_scene, link, run_worker, tmp_path):
    inp = remote_item(cog_scene, link.base, tmp_path / "in")
    run_worker("--input", str(inp), "--output", str(tmp_path / "out"), check_code=0)
    requests = link.requests()
    stats = link.stats()
    assert all(status in (200, 206) for _, _, _, status, _ in requests), requests
    assert stats["requests"] == len(requests)
    first_tile = {}
    for name in ("B04.tif", "B08.tif", "SCL.tif"):
        full, overviews = tile_ranges(cog_scene / "scene" / name)
        first_tile[name] = min(a for a, _ in full + overviews)
        mine = [r for r in requests if r[1] == f"/scene/{name}"]
        heads = [r for r in mine if r[0] == "HEAD"]
        gets = [parse_range(r[2]) for r in mine if r[0] == "GET"]
        assert len(heads) <= 1, f"{name}: {len(heads)} HEAD requests"
        header = [g for g in gets if g[0] < first_tile[name]]
        assert len(header) == 1, f"{name}: the header is read once, not per thread handle: {header}"
        data = [g for g in gets if g[0] >= first_tile[name]]
        for a, b in data:  # GDAL aligns ranges on its 16 KB chunks: less than a chunk of a neighbour is slack
            overlap = sum(max(0, min(b, oe) - max(a, os_)) for os_, oe in overviews)
            assert overlap < 16384, f"{name}: request {a}-{b} reads {overlap} bytes of overviews"
        fetched = [
            sum(1 for a, b in data if min(b, te) - max(a, ts) > min(16384, (te - ts) // 2)) for ts, te in full
        ]
        assert all(n == 1 for n in fetched), (
            f"{name}: every full-resolution tile fetched exactly once: {fetched}"
        )
        # adjacent tiles needed together are merged: never more requests than tiles
        assert len(data) <= len(full)
        tile_bytes = sum(b - a for a, b in full)
        body = sum(r[4] for r in mine if r[0] == "GET")
        assert body <= tile_bytes + first_tile[name] + 16384 * len(gets), (
            f"{name}: {body} bytes for {tile_bytes}"
        )
    # SCL: one merged request per row of SCL blocks, whatever the number of chunks and thread handles
    scl_data = [r for r in requests if r[1] == "/scene/SCL.tif" and r[0] == "GET"]
    assert len(scl_data) - 1 <= 3  # 1098 px in 512 blocks: 3 block rows
    # outputs identical to reading the local files
    with rasterio.open(tmp_path / "out" / f"{ITEM_ID}_ndvi.tif") as ds:
        remote = ds.read(1)
    local_out = tmp_path / "local-out"
    run_worker("--input", str(cog_scene / "scene"), "--output", str(local_out), check_code=0)
    with rasterio.open(local_out / f"{ITEM_ID}_ndvi.tif") as ds:
        assert np.array_equal(ds.read(1), remote)


@pytest.mark.parametrize("concurrency", [1, 6])
def test_read_concurrency_is_honoured_and_outputs_do_not_change(cog_scene, tmp_path, run_worker, concurrency):
    server = Link(cog_scene, tmp_path / "requests.log", latency_ms=40)
    try:
        inp = remote_item(cog_scene, server.base, tmp_path / "in")
        out = tmp_path / "out"
        run_worker("--input", str(inp), "--output", str(out), "--read-concurrency", str(concurrency),
                   check_code=0)  # fmt: skip
        stats = server.stats()
    finally:
        server.close()
    # data reads never exceed the knob; the three bands' opens run at once (one request each) before them
    assert stats["max_requests_in_flight"] <= max(concurrency, 3)
    if concurrency > 1:
        assert stats["max_requests_in_flight"] >= 3, "reads must overlap on a slow link"
    report = json.loads(next((out / "_reports").glob("*.json")).read_text())
    assert report["options"]["read_concurrency"] == concurrency
    local_out = tmp_path / "local-out"
    run_worker("--input", str(cog_scene / "scene"), "--output", str(local_out), check_code=0)
    assert (out / f"{ITEM_ID}_ndvi.tif").read_bytes() == (local_out / f"{ITEM_ID}_ndvi.tif").read_bytes()


# ----------------------------------------------------------------------------------------------- pipeline


def test_prefetch_window_bounds_chunks_held_and_reads_in_flight():
    lock = threading.Lock()
    live = {"reads": 0, "max_reads": 0, "held": 0, "max_held": 0}
    started: set[int] = set()

    def read(i):
        with lock:
            live["reads"] += 1
            live["max_reads"] = max(live["max_reads"], live["reads"])
            if i not in started:
                started.add(i)
                live["held"] += 1
                live["max_held"] = max(live["max_held"], live["held"])
        time.sleep(0.005)
        with lock:
            live["reads"] -= 1
        return np.full(4, i)

    def compute(i, inputs):
        time.sleep(0.01)  # slower than the reads: the window must stop the reads from running ahead
        with lock:
            live["held"] -= 1
        return int(sum(a.sum() for a in inputs))

    stats = PipelineStats()
    out = run_chunks(list(range(60)), [read, read], compute, read_concurrency=8, compute_threads=2, ahead=5,
                     stats=stats)  # fmt: skip
    assert out == [8 * i for i in range(60)]
    assert live["max_reads"] <= 8 and stats.max_reads_in_flight <= 8
    assert live["max_held"] <= 5 and stats.max_held == 5
    assert stats.chunks == 60 and stats.reads == 120


def test_a_failed_read_stops_new_chunks_and_is_raised():
    calls = []

    def read(i):
        calls.append(i)
        if i == 3:
            raise OSError("HTTP response code: 404")
        return i

    with pytest.raises(OSError, match="404"):
        run_chunks(list(range(100)), [read], lambda w, x: x, read_concurrency=2, compute_threads=1, ahead=4)
    assert max(calls) < 3 + 4 + 2  # nothing started far beyond the window


def test_strip_cache_reads_each_block_row_once():
    reads = []
    full = np.arange(100 * 7).reshape(100, 7)

    def read_rows(r0, r1):
        reads.append((r0, r1))
        return full[r0:r1].copy()

    cache = StripCache(read_rows, height=100, strip=32, keep=2)
    for r0 in range(0, 100, 16):  # two 16-row chunks per 32-row block row, and a straddling read
        assert np.array_equal(cache.rows(r0, min(r0 + 16, 100), 2, 5), full[r0 : r0 + 16, 2:5])
    assert np.array_equal(cache.rows(90, 100, 0, 7), full[90:100])
    assert np.array_equal(cache.rows(20, 40, 0, 7), full[20:40])  # straddles block rows 0 and 1
    assert reads[:4] == [(0, 32), (32, 64), (64, 96), (96, 100)]


# ----------------------------------------------------------------------------------------------- the knob


@pytest.mark.parametrize("value", [0, -1, MAX_READ_CONCURRENCY + 1, True, 2.5, "8"])
def test_config_rejects_a_bad_read_concurrency(value, tmp_path):
    with pytest.raises(ValueError, match="read_concurrency"):
        WorkerConfig(input_dir=tmp_path, output_dir=tmp_path / "o", read_concurrency=value)


def test_cli_and_environment_validate_the_read_concurrency(tmp_path):
    from ndvi_worker.cli import main

    (tmp_path / "in").mkdir()
    runner = CliRunner()
    for args, env in (
        (["--read-concurrency", "0"], {}),
        (["--read-concurrency", "many"], {}),
        ([], {"NDVI_READ_CONCURRENCY": "0"}),
        ([], {"NDVI_READ_CONCURRENCY": "lots"}),
    ):
        res = runner.invoke(main, ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "o"), *args],
                            env=env)  # fmt: skip
        assert res.exit_code == 2, (args, env, res.output)
        assert "read-concurrency" in res.output


def test_environment_sets_the_read_concurrency(tmp_path, run_worker):
    (tmp_path / "in").mkdir()
    out = tmp_path / "out"
    run_worker("--input", str(tmp_path / "in"), "--output", str(out), env={"NDVI_READ_CONCURRENCY": "5"},
               check_code=0)  # fmt: skip
    report = json.loads(next((out / "_reports").glob("*.json")).read_text())
    assert report["options"]["read_concurrency"] == 5
