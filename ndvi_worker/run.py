"""Orchestration: find the shard's items, process scenes (several in flight, each chunked), report.

Per scene: open the three bands (retrying transient errors), check the grids, then independent chunk tasks (read
red / nir / SCL windows aligned with the COG blocks -> NDVI and its overviews -> tiles compressed once, in the
compute thread, into a spill file) run through :func:`ndvi_worker.readahead.run_chunks`: many range requests in
flight on I/O threads, a bounded window of chunks ahead of the compute threads, so memory is ``window x chunk``
whatever the scene size and however many reads are in flight; the COG is then assembled in GDAL's COG layout from
the compressed tiles (:mod:`ndvi_worker.cog_writer`; formats it does not write go through uncompressed staging
GeoTIFFs and GDAL's COG driver); the COG, a quicklook PNG and the STAC item are moved into the output folder, the
STAC item last (its presence marks the scene complete).
"""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import logging
import math
import os
import signal
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ndvi_worker import io as wio
from ndvi_worker.config import WorkerConfig
from ndvi_worker.contract import ProcessingPaths
from ndvi_worker.discover import InputItem, find_items
from ndvi_worker.ndvi import (
    BlockStats,
    class_counts,
    encode_float32,
    encode_int16,
    ndvi_chunk,
    scl_alignment,
    scl_mask,
    upsample_scl,
)
from ndvi_worker.pyramid import chunk_overviews, overview_count
from ndvi_worker.readahead import PipelineStats, StripCache, run_chunks
from ndvi_worker.report import SceneRecord, exit_message, host_report, output_item, utcnow
from ndvi_worker.safety import redact
from ndvi_worker.stac import ItemError, Scene, scene_from_item, validate_item_id

log = logging.getLogger("ndvi_worker")


class SetupError(RuntimeError):
    """The shard cannot start (unwritable output, unreachable scheduler...): the message says what is wrong and
    what to do; the CLI prints it on one line and exits 2."""


# ----------------------------------------------------------------------------------------------- one scene


def chunk_windows(shape: tuple[int, int], chunk: int):
    """Windows tiling a raster in ``chunk x chunk`` pieces (aligned with the source's 1024 blocks by default)."""
    from rasterio.windows import Window

    rows, cols = shape
    return [
        Window(c0, r0, min(chunk, cols - c0), min(chunk, rows - r0))
        for r0 in range(0, rows, chunk)
        for c0 in range(0, cols, chunk)
    ]


def check_grids(red: wio.BandInfo, nir: wio.BandInfo, scl: wio.BandInfo) -> int | None:
    """Raise :class:`SceneError` when the bands cannot be combined; return the SCL block factor (or None)."""
    if red.crs != nir.crs:
        raise wio.SceneError(f"CRS mismatch: red is {red.crs}, nir is {nir.crs}")
    if red.shape != nir.shape or not np.allclose(red.transform, nir.transform, rtol=0, atol=1e-6):
        raise wio.SceneError(
            f"grid mismatch: red {red.shape[1]}x{red.shape[0]} at {red.transform}, "
            f"nir {nir.shape[1]}x{nir.shape[0]} at {nir.transform}"
        )
    if scl.crs != red.crs:
        raise wio.SceneError(f"CRS mismatch: scl is {scl.crs}, red is {red.crs}")
    for band, info in (("red", red), ("nir", nir)):
        if np.dtype(info.dtype).kind not in "ui":
            raise wio.SceneError(f"{band} band has data type {info.dtype}; integer DN were expected")
    if np.dtype(scl.dtype).kind not in "ui" or np.dtype(scl.dtype).itemsize != 1:
        raise wio.SceneError(f"scl band has data type {scl.dtype}; uint8 classes were expected")
    return scl_alignment(red.transform, red.shape, scl.transform, scl.shape)


def existing_output_valid(output: Path, stem: str) -> bool:
    """True when a previous run published this scene completely (STAC item present, COG of the recorded size)."""
    item_path = output / f"{stem}.json"
    cog_path = output / f"{stem}.tif"
    try:
        item = json.loads(item_path.read_text())
        expected = item["assets"]["ndvi"]["file:size"]
        return cog_path.stat().st_size == expected
    except (OSError, ValueError, KeyError, TypeError):
        return False


@dataclass
class SceneResult:
    stats: dict
    bytes_read: int
    scl_resampling: str


@dataclass
class OpenBands:
    """The scene's three bands, opened and checked, with the SCL source of each chunk."""

    red: wio.BandReader
    nir: wio.BandReader
    read_scl: object  # window -> the SCL block under it: 20 m (``scl_factor``) or already on the 10 m grid
    scl_factor: int | None  # SCL pixel size / 10 m pixel size when the grids nest, else None (resampled)
    scl_resampling: str
    closers: list

    def close(self) -> None:
        for reader in self.closers:
            reader.close()

    @property
    def bytes_read(self) -> int:
        return sum(r.bytes_read for r in self.closers if isinstance(r, wio.BandReader))


def open_bands(scene: Scene, retries: int) -> OpenBands:
    """Open red, NIR and SCL (retrying transient errors), check the grids, pick the SCL resampling."""
    from rasterio.windows import Window

    # the three opens at once: each is a round trip or two to the object store before any pixel is read
    with ThreadPoolExecutor(3, thread_name_prefix="open") as pool:
        futures = [pool.submit(wio.BandReader, href, retries) for href in (scene.red, scene.nir, scene.scl)]
    closers: list = [f.result() for f in futures if f.exception() is None]
    try:
        for f in futures:
            if f.exception() is not None:
                raise f.exception()  # the first band's error, in band order
        red, nir, scl = closers
        factor = check_grids(red.info, nir.info, scl.info)
    except BaseException:
        for reader in closers:
            reader.close()
        raise
    if factor is None:
        log.info(
            "%s: SCL grid is not nested in the 10 m grid; resampling it by nearest neighbour", scene.item_id
        )
        resampled = wio.ResampledReader(scl, red.info)
        return OpenBands(red, nir, resampled.read, None, "nearest", [*closers, resampled])

    scl_rows, scl_cols = scl.info.shape
    # one read per row of SCL blocks (its blocks are adjacent in the file: one merged range request), shared
    # by the two rows of 10 m chunks under it, instead of one read per chunk and per thread handle
    strips = StripCache(
        lambda r0, r1: scl.read(Window(0, r0, scl_cols, r1 - r0)), scl_rows, max(1, scl.info.block_shape[0])
    )

    def read_scl(window):
        """The 20 m SCL block under a 10 m window (the caller repeats each pixel factor x factor and crops)."""
        r0, c0 = int(window.row_off), int(window.col_off)
        r1, c1 = r0 + int(window.height), c0 + int(window.width)
        sr1 = min(math.ceil(r1 / factor), scl_rows)
        sc1 = min(math.ceil(c1 / factor), scl_cols)
        return strips.rows(r0 // factor, sr1, c0 // factor, sc1)

    return OpenBands(red, nir, read_scl, factor, "block-repeat" if factor > 1 else "identity", closers)


def scl_inputs(block: np.ndarray, window, factor: int | None, mask_classes) -> dict:
    """``ndvi_core`` keyword arguments for a chunk's SCL block: when the 20 m block maps exactly onto the window
    (always, for chunks that are multiples of the factor), the mask and the class counts are computed on the
    20 m pixels (a factor**2 fewer) and the mask alone is repeated; otherwise the classes are repeated and
    cropped, and both are computed on the 10 m grid (same results either way)."""
    if factor is None:
        return {"scl": block}
    r0, c0 = int(window.row_off), int(window.col_off)
    h, w = int(window.height), int(window.width)
    if (
        r0 % factor == 0
        and c0 % factor == 0
        and block.shape == (h // factor, w // factor)
        and not (h | w) % factor
    ):
        counts = [c * factor * factor for c in class_counts(block)]
        cloud = upsample_scl(scl_mask(block, mask_classes), (h, w), factor)
        return {"scl": None, "cloud": cloud, "scl_counts": counts}
    sr0, sc0 = r0 // factor, c0 // factor
    up = upsample_scl(block, (block.shape[0] * factor, block.shape[1] * factor), factor)
    return {"scl": up[r0 - sr0 * factor : r0 - sr0 * factor + h, c0 - sc0 * factor : c0 - sc0 * factor + w]}


def prefetch_window(cfg: WorkerConfig) -> int:
    """Chunks held at once: enough for ``read_concurrency`` band reads in flight (two bands per chunk) plus
    two per compute thread (one being computed, one ready)."""
    return max(1, -(-cfg.read_concurrency // 2)) + 2 * cfg.workers


def compute_to_staging(
    scene: Scene,
    bands: OpenBands,
    cfg: WorkerConfig,
    fmt: wio.OutputFormat,
    work: Path,
    pipeline: PipelineStats | None = None,
) -> tuple[wio.StagingRaster | wio.DirectCogSink, dict]:
    """Run the chunks (read -> NDVI -> overviews -> tiles): reads on ``cfg.read_concurrency`` threads, a bounded
    window of chunks ahead of the ``cfg.workers`` compute threads; return where the tiles went and the scene's
    NDVI statistics. The tiles are compressed once, in the compute threads, into a COG assembled directly
    (:mod:`ndvi_worker.cog_writer`) when the format allows (the defaults do); otherwise they are written into
    uncompressed staging GeoTIFFs that GDAL's COG driver compresses at the end."""
    shape = bands.red.info.shape
    levels = overview_count(shape, cfg.blocksize)
    if cfg.chunk_size % (2**levels):  # chunks must tile every overview level exactly
        raise wio.SceneError(f"--chunk-size must be a multiple of {2**levels} for {levels} overview levels")
    tags = {
        "NDVI_SOURCE_ITEM": scene.item_id,
        "NDVI_MASK_CLASSES": ",".join(map(str, cfg.mask_classes)),
        "NDVI_BOA_ADD_OFFSET_DN": str(scene.offset.add_dn),
        "NDVI_SCALE": "0.0001" if cfg.dtype == "int16" else "1",
    }
    encode = encode_int16 if cfg.dtype == "int16" else encode_float32
    if wio.direct_cog_supported(fmt, shape):
        sink = wio.DirectCogSink(work, bands.red.info, fmt, tags, levels, cfg.chunk_size)
    else:
        sink = wio.StagingRaster(work, bands.red.info, fmt, tags, levels)

    def chunk_task(window, inputs) -> BlockStats:
        red, nir, scl_block = inputs
        extra = scl_inputs(scl_block, window, bands.scl_factor, cfg.mask_classes)
        # NDVI, its output encoding and overview level 1 in one strip-by-strip pass (ndvi_chunk)
        out = ndvi_chunk(red, nir, **extra, add_dn=scene.offset.add_dn, mask_classes=cfg.mask_classes,
                         encode=cfg.dtype, level1=levels > 0)  # fmt: skip
        del red, nir, extra
        r0, c0 = int(window.row_off), int(window.col_off)
        sink.write_at(out.encoded, r0, c0)
        overviews = chunk_overviews(out.ndvi, out.invalid, levels, zeroed=True, level1=out.level1)
        for level, (mean, empty) in enumerate(overviews, start=1):
            sink.write_at(encode(mean, empty), r0 >> level, c0 >> level, level)
        return out.stats

    try:
        parts = run_chunks(
            chunk_windows(shape, cfg.chunk_size),
            (bands.red.read, bands.nir.read, bands.read_scl),
            chunk_task,
            read_concurrency=cfg.read_concurrency,
            compute_threads=cfg.workers,
            ahead=prefetch_window(cfg),
            stats=pipeline,
        )
    except BaseException:
        sink.abort()
        raise
    finally:
        sink.close()
    total = BlockStats()
    for part in parts:
        total = total + part
    return sink, total.summary()


class PhaseClock:
    """Wall and process CPU seconds per phase of a scene (the CPU is the whole process's: with several scenes in
    flight it includes theirs)."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.monotonic(), time.process_time()
        self.phases: list[tuple[str, float, float]] = []

    def mark(self, name: str) -> None:
        wall, cpu = time.monotonic(), time.process_time()
        self.phases.append((name, wall - self.wall, cpu - self.cpu))
        self.wall, self.cpu = wall, cpu

    def summary(self) -> str:
        return ", ".join(f"{name} {wall:.2f}s/{cpu:.2f}s" for name, wall, cpu in self.phases)


def process_scene(
    scene: Scene, cfg: WorkerConfig, staging_root: Path, source_href: str | None
) -> SceneResult:
    """Compute and publish one scene's NDVI. Raises on failure; never leaves a partial file in the output."""
    fmt = wio.OutputFormat(
        dtype=cfg.dtype,
        compress=cfg.compress,
        level=cfg.level,
        predictor=cfg.predictor,
        blocksize=cfg.blocksize,
        overview_resampling="AVERAGE",
        max_z_error=cfg.max_z_error,
    )
    phases = PhaseClock()
    bands = open_bands(scene, cfg.retries)
    phases.mark("open")
    try:
        with wio.scratch_dir(staging_root, scene.output_stem) as work:
            pipeline = PipelineStats()
            sink, stats = compute_to_staging(scene, bands, cfg, fmt, work, pipeline)
            phases.mark("chunks")
            cog_name = f"{scene.output_stem}.tif"
            sink.finish(work / cog_name, threads=cfg.workers)
            phases.mark("cog")
            png_name = None
            if cfg.quicklook:
                png_name = f"{scene.output_stem}.png"
                wio.write_quicklook(work / cog_name, work / png_name)
                phases.mark("quicklook")
            log.info(
                "%s: %s (wall / process CPU; chunks: %d, reads in flight <= %d, chunks held <= %d)",
                scene.item_id,
                phases.summary(),
                pipeline.chunks,
                pipeline.max_reads_in_flight,
                pipeline.max_held,
            )
            info = bands.red.info
            item = output_item(
                scene.item,
                scene.item_id,
                cog_name,
                (work / cog_name).stat().st_size,
                png_name,
                source_href,
                stats,
                list(cfg.mask_classes),
                scene.offset.to_dict(),
                cfg.dtype,
                bands.scl_resampling,
                info.shape,
                info.transform,
                info.crs.to_epsg() if info.crs else None,
            )
            (work / f"{scene.output_stem}.json").write_text(json.dumps(item, indent=2))  # redacted
            out = cfg.output_dir
            wio.publish(work / cog_name, out / cog_name)
            if png_name:
                wio.publish(work / png_name, out / png_name)
            wio.publish(work / f"{scene.output_stem}.json", out / f"{scene.output_stem}.json")
        return SceneResult(stats, bands.bytes_read, bands.scl_resampling)
    finally:
        bands.close()


def scene_record(
    scene: Scene, cfg: WorkerConfig, staging_root: Path, location: str, source: str
) -> SceneRecord:
    """Process one scene and describe the outcome; any exception becomes a failed record, never a crash."""
    t0 = time.monotonic()
    try:
        result = process_scene(scene, cfg, staging_root, location)
    except Exception as exc:  # noqa: BLE001 - one bad scene never fails the shard
        log.debug("scene %s failed", scene.item_id, exc_info=True)
        message = str(exc) if isinstance(exc, wio.SceneError | ItemError) else f"{type(exc).__name__}: {exc}"
        return SceneRecord(
            source, scene.item_id, "failed", seconds=round(time.monotonic() - t0, 3), error=message
        )
    return SceneRecord(
        source,
        scene.item_id,
        "done",
        seconds=round(time.monotonic() - t0, 3),
        bytes_read=result.bytes_read,
        valid_fraction=result.stats["valid_fraction"],
        output=f"{scene.output_stem}.tif",
    )


# ----------------------------------------------------------------------------------------------- the shard


@dataclass
class Planned:
    entry: InputItem
    scene: Scene | None
    record: SceneRecord | None  # already decided (skipped / failed before processing)


def plan_shard(entries: list[InputItem], cfg: WorkerConfig) -> list[Planned]:
    """Decide per input: failed (unreadable, bad item), skipped (duplicate, valid output exists) or to process."""
    planned: list[Planned] = []
    seen: set[str] = set()
    for entry in entries:
        if entry.error:
            planned.append(Planned(entry, None, SceneRecord(entry.source, None, "failed", error=entry.error)))
            continue
        item_id = entry.item.get("id") if isinstance(entry.item, dict) else None
        try:
            scene = scene_from_item(entry.item, entry.location, cfg.boa_offset)
        except ItemError as exc:
            try:  # only a safe id is echoed in the report (consumers build paths from it)
                shown = validate_item_id(item_id)
            except ItemError:
                shown = None
            planned.append(Planned(entry, None, SceneRecord(entry.source, shown, "failed", error=str(exc))))
            continue
        if scene.item_id in seen:
            rec = SceneRecord(
                entry.source, scene.item_id, "skipped", error="duplicate of an item earlier in the shard"
            )
            planned.append(Planned(entry, None, rec))
            continue
        seen.add(scene.item_id)
        if not cfg.overwrite and existing_output_valid(cfg.output_dir, scene.output_stem):
            rec = SceneRecord(entry.source, scene.item_id, "skipped", output=f"{scene.output_stem}.tif")
            planned.append(Planned(entry, scene, rec))
            continue
        planned.append(Planned(entry, scene, None))
    return planned


class Progress:
    """Progress lines for CloudWatch: scenes finished, rate, ETA."""

    def __init__(self, host: str, total: int):
        self.host, self.total = host, total
        self.start = time.monotonic()
        self.finished = 0
        self.processed = 0

    #: No rate (nor ETA) is shown before this many seconds: one instant failure is not a rate.
    MIN_ELAPSED = 1.0

    def update(self, record: SceneRecord, counts: dict, processed: bool = True) -> str:
        """One progress line. ``processed=False`` for records decided before any processing (invalid items,
        duplicates, existing outputs): they count as finished but not in the processing rate."""
        self.finished += 1
        if processed and record.status != "skipped":
            self.processed += 1
        elapsed = time.monotonic() - self.start
        remaining = self.total - self.finished
        rate = self.processed / elapsed if elapsed >= self.MIN_ELAPSED and self.processed else 0.0
        eta = _hms(remaining / rate) if rate else "--:--:--"
        rate_text = f"{rate * 60:.1f} scenes/min" if rate else "-- scenes/min"
        took = f" in {record.seconds:.1f}s" if processed else " (before processing)"
        detail = f"{record.status} {record.item_id or record.source}{took}"
        if record.error and record.status == "failed":
            detail += f" ({record.error})"
        return (
            f"[{self.host}] {self.finished}/{self.total} scenes ({counts['done']} done, {counts['skipped']} skipped, "
            f"{counts['failed']} failed), {rate_text}, ETA {eta} | {detail}"
        )


def _hms(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _staging_root(cfg: WorkerConfig, host: str) -> tuple[Path, bool]:
    """Scratch space on the output's file system but outside the output folder (so a rename publishes), and
    whether this run created it (then it is removed at the end when empty)."""
    if cfg.staging_dir is not None:
        root = cfg.staging_dir
        created = not root.exists()
        _make_writable_dir(root)
    else:
        root = cfg.output_dir.resolve().parent / f".ndvi-staging-{host}"
        created = not root.exists()
        try:
            _make_writable_dir(root)
        except OSError as exc:
            # e.g. a non-root user whose output folder is a mount point in a root-owned /opt/ml/processing
            import tempfile

            fallback = Path(tempfile.gettempdir()) / f"ndvi-staging-{host}-{os.getuid()}"
            log.info("cannot create %s (%s): staging in %s instead", root, exc.strerror or exc, fallback)
            root = fallback
            created = not root.exists()
            _make_writable_dir(root)
    if not wio.same_filesystem(root, cfg.output_dir):
        log.warning(
            "staging folder %s is on another file system than %s: outputs are copied to a hidden .partial file "
            "and renamed (use --staging-dir on the output's file system to make publishing a single rename)",
            root,
            cfg.output_dir,
        )
    return root, created


def _make_writable_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f".write-test-{threading_ident()}"
    probe.write_text("")
    probe.unlink()


def threading_ident() -> int:
    import threading

    return threading.get_ident()


def _prepare_folders(cfg: WorkerConfig, host: str) -> tuple[Path, Path, bool]:
    """Create the output, report and staging folders; :class:`SetupError` saying which and why otherwise."""
    report_dir = cfg.output_dir / "_reports"
    try:
        cfg.output_dir.mkdir(parents=True, exist_ok=True)
        if not os.access(cfg.output_dir, os.W_OK | os.X_OK):  # no probe file: Continuous upload would see it
            raise PermissionError(errno.EACCES, "Permission denied")
        report_dir.mkdir(exist_ok=True)
        probe = report_dir / f".write-test-{host}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise SetupError(
            f"cannot write to the output folder {cfg.output_dir} ({exc.strerror or exc}): "
            "choose a writable --output (or mount it writable for this user)"
        ) from None
    try:
        staging_root, created = _staging_root(cfg, host)
    except OSError as exc:
        where = cfg.staging_dir or cfg.output_dir.resolve().parent
        raise SetupError(
            f"cannot create the staging folder in {where} ({exc.strerror or exc}): give a writable --staging-dir "
            "on the output's file system"
        ) from None
    return report_dir, staging_root, created


def connect_scheduler(address: str, timeout: float = 10.0):
    """A dask.distributed client for ``address``, or :class:`SetupError` at once when nothing listens there
    (distributed itself would keep retrying for its whole timeout, then raise a bare OSError)."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(address)
    if parts.scheme in ("tcp", "tls"):
        try:
            with socket.create_connection((parts.hostname, parts.port), timeout=min(timeout, 5.0)):
                pass
        except OSError as exc:
            raise SetupError(
                f"cannot reach the dask scheduler at {redact(address)} ({exc.strerror or exc}): start it "
                "(`dask scheduler`) or fix --scheduler"
            ) from None
    from distributed import Client

    try:
        return Client(address, timeout=f"{timeout}s")
    except (OSError, TimeoutError, ValueError) as exc:
        raise SetupError(
            f"cannot connect to the dask scheduler at {redact(address)} ({exc}): check that it is a "
            "dask.distributed scheduler and reachable, or fix --scheduler"
        ) from None


#: glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def tune_allocator(mmap_threshold: int = 32 << 20, trim_threshold: int = 256 << 20) -> bool:
    """Keep the chunks' arrays (1-4 MB: decoded blocks, NDVI, masks, encodings) in malloc's arenas once freed,
    instead of glibc's default of returning every such block to the kernel (each block above the dynamic mmap
    threshold is its own mmap, and arenas are trimmed above 2x that threshold), so that the next chunk's
    arrays reuse memory already mapped instead of page-faulting in zeroed pages. Measured on a full scene:
    140 000-380 000 minor page faults and 0.7-1.3 s of system CPU -> ~92 000 and ~0.5 s; peak RSS +50 MB
    (385 -> 435-455 MB). 32 MB is glibc's largest mmap threshold. Returns whether glibc took both settings
    (False elsewhere: musl, macOS; nothing changes then)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) & bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))


def run(cfg: WorkerConfig, paths: ProcessingPaths, contract: bool | None = None) -> int:
    """Process every scene of the shard. Returns the exit status: 0 if no scene failed, 1 otherwise.

    ``contract``: whether this run is under the SageMaker contract, which decides whether the summary is written
    to ``/opt/ml/output/message`` (the job's ExitMessage); ``None`` means "only inside a Processing job" (see
    :meth:`ProcessingPaths.in_processing_job`). Raises :class:`SetupError` when the shard cannot start."""
    started = utcnow()
    if os.environ.get("NDVI_DEFAULT_MALLOC") != "1":  # the allocator's defaults on demand (benchmarks)
        tune_allocator()
    # the objects of every import so far are never garbage: out of the collector's full passes (which otherwise
    # walk them all again every few thousand chunk-task allocations)
    gc.freeze()
    if contract is None:
        contract = paths.in_processing_job()
    host = paths.current_host()
    hosts = [str(h) for h in paths.resource().get("hosts", [])] or [host]
    client = connect_scheduler(cfg.scheduler) if cfg.scheduler else None
    try:
        report_dir, staging_root, staging_created = _prepare_folders(cfg, host)
    except BaseException:
        if client is not None:
            client.close()
        raise
    removed = wio.remove_partials(cfg.output_dir)
    if removed:
        log.info("removed %d partial file(s) left by an interrupted run", removed)

    entries = find_items(cfg.input_dir) if cfg.input_dir.exists() else []
    planned = plan_shard(entries, cfg)
    wio.configure_gdal(
        s3=any(p.scene and p.scene.red.startswith("s3://") for p in planned if p.record is None)
    )
    records: list[SceneRecord | None] = [p.record for p in planned]
    todo = [i for i, p in enumerate(planned) if p.record is None]
    log.info(
        "[%s] %d input item(s) under %s: %d to process, %d skipped (output exists or duplicate), %d invalid; "
        "%d compute thread(s), %d scene(s) in flight, %d read(s) in flight per scene",
        host,
        len(planned),
        cfg.input_dir,
        len(todo),
        sum(1 for r in records if r and r.status == "skipped"),
        sum(1 for r in records if r and r.status == "failed"),
        cfg.workers,
        cfg.scenes_in_flight,
        cfg.read_concurrency,
    )
    progress = Progress(host, len(planned))
    counts = {"done": 0, "skipped": 0, "failed": 0}
    for r in records:
        if r is not None:
            counts[r.status] += 1
            log.info(progress.update(r, counts, processed=False))

    def write_report() -> None:
        final = [r for r in records if r is not None]
        report = host_report(host, hosts, started, final, cfg.to_dict())  # redacted
        wio.write_json_atomic(json.dumps(report, indent=2), report_dir / f"{host}.json", staging_root)

    def one(index: int) -> SceneRecord:
        p = planned[index]
        return scene_record(p.scene, cfg, staging_root, p.entry.location, p.entry.source)

    stop = False
    previous = signal.getsignal(signal.SIGTERM)
    if _in_main_thread():
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        write_report()
        if client is not None:
            _run_distributed(
                client, cfg, todo, planned, records, staging_root, progress, counts, write_report
            )
        else:
            with ThreadPoolExecutor(max_workers=cfg.scenes_in_flight, thread_name_prefix="scene") as pool:
                pending: dict[Future, int] = {}
                queue = list(todo)
                while queue or pending:
                    while queue and not stop and len(pending) < cfg.scenes_in_flight:
                        i = queue.pop(0)
                        pending[pool.submit(one, i)] = i
                    if not pending:
                        break
                    finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        i = pending.pop(fut)
                        rec = fut.result()
                        records[i] = rec
                        counts[rec.status] += 1
                        log.info(progress.update(rec, counts))
                        if rec.status == "failed" and cfg.on_error == "fail":
                            stop = True
                    write_report()
                    if stop and queue:
                        for i in queue:
                            p = planned[i]
                            records[i] = SceneRecord(
                                p.entry.source,
                                p.scene.item_id,
                                "failed",
                                error="not attempted: --on-error fail",
                            )
                            counts["failed"] += 1
                        queue = []
    finally:
        if _in_main_thread():
            signal.signal(signal.SIGTERM, previous)
        for i, r in enumerate(records):
            if r is None:  # interrupted: a scene whose output was published in the meantime is done
                p = planned[i]
                if existing_output_valid(cfg.output_dir, p.scene.output_stem):
                    records[i] = SceneRecord(
                        p.entry.source, p.scene.item_id, "done", output=f"{p.scene.output_stem}.tif"
                    )
                else:
                    records[i] = SceneRecord(p.entry.source, p.scene.item_id, "failed", error="interrupted")
        if client is not None:
            client.close()
        write_report()
        final = [r for r in records if r is not None]
        message = exit_message(final, host)  # redacted, at most 1 KB
        if contract:
            try:
                paths.message_file.parent.mkdir(parents=True, exist_ok=True)
                paths.message_file.write_text(message)
            except OSError as exc:
                log.warning("cannot write %s: %s", paths.message_file, exc)
        if staging_created:
            with contextlib.suppress(OSError):
                staging_root.rmdir()  # only when empty: another run's scratch is never touched
        log.info(message)
    return 1 if any(r.status == "failed" for r in final) else 0


def _run_distributed(
    client, cfg, todo, planned, records, staging_root, progress, counts, write_report
) -> None:
    """Scenes as tasks on an existing dask.distributed cluster (the output folder must be shared with it)."""
    from distributed import as_completed

    futures = {}
    for i in todo:
        p = planned[i]
        fut = client.submit(
            _distributed_scene, p.scene, cfg, staging_root, p.entry.location, p.entry.source, pure=False
        )
        futures[fut] = i
    for fut in as_completed(futures):
        i = futures[fut]
        rec = fut.result()
        records[i] = rec
        counts[rec.status] += 1
        log.info(progress.update(rec, counts))
        write_report()


def _reads_s3(scene: Scene) -> bool:
    return any(href.startswith("s3://") for href in (scene.red, scene.nir, scene.scl))


def _distributed_scene(scene, cfg, staging_root, location, source) -> SceneRecord:
    wio.configure_gdal(s3=_reads_s3(scene))
    return scene_record(scene, cfg, staging_root, location, source)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _raise_keyboard_interrupt(signum, frame):  # noqa: ARG001
    raise KeyboardInterrupt(f"signal {signum}")


class RedactingFormatter(logging.Formatter):
    """Every log line (message, arguments and traceback) goes through :func:`ndvi_worker.safety.redact`."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stdout,
        force=True,
    )
    for handler in logging.getLogger().handlers:
        handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for noisy in ("rasterio", "botocore", "urllib3", "distributed"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
