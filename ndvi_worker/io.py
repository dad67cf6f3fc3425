"""I/O edge: GDAL settings, band readers (local, https, s3) with retries, COG writing, atomic publishing.

Everything that touches rasterio/GDAL or the file system lives here; the science is in :mod:`ndvi_worker.ndvi`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import stat
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse

import numpy as np

from ndvi_worker import safety

log = logging.getLogger(__name__)
T = TypeVar("T")

#: GDAL settings for cloud-hosted COGs (docs/domain.md section 8); environment variables set by the user win.
GDAL_DEFAULTS = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF,.TIFF",
    # Measured on the benchmark's shaped link (30 ms per request, 60 MB/s per connection, full scene; README
    # "Performance"), counting requests and bytes at the server: CPL_VSIL_CURL_USE_HEAD=NO replaces each band's
    # HEAD by a GET of the whole object that GDAL aborts after the headers (wasted bytes, a dropped
    # connection): rejected. A bigger CPL_VSIL_CURL_CHUNK_SIZE (1 MB) cut requests 265 -> 234 but read 36 %
    # more bytes: rejected. VSI_CACHE=TRUE, GDAL_INGESTED_BYTES_AT_OPEN=64 KB (the header fits the default
    # 16 KB), CPL_VSIL_CURL_CACHE_SIZE=64 MB, GDAL_HTTP_VERSION=1.1 vs 2 and MERGE_CONSECUTIVE_RANGES=NO changed
    # requests by less than the run-to-run spread (+-6), bytes by < 2 %, and added RSS (VSI_CACHE +40 MB,
    # CACHE_SIZE +90 MB): GDAL's defaults are kept (S3 speaks HTTP/1.1: HTTP/2 multiplexing does not apply).
    # What cut requests is the read path itself (one handle pool per band, SCL once per block row).
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_HTTP_MAX_RETRY": "4",
    "GDAL_HTTP_RETRY_DELAY": "1",
    "GDAL_HTTP_TIMEOUT": "60",
    "GDAL_CACHEMAX": "64",  # MB; chunks are read once, so a big block cache only grows RSS
    "GDAL_TIFF_INTERNAL_MASK": "YES",
}


class SceneError(RuntimeError):
    """A scene failed for a reason worth reporting as is (grid mismatch, unreadable band...)."""


def configure_gdal(environ: dict[str, str] | None = None, s3: bool = True) -> dict[str, str]:
    """Set GDAL/AWS defaults in the process environment (GDAL reads them in every thread).

    S3: anonymous requests when no AWS credentials are available (public ``sentinel-cogs``), signed otherwise;
    ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (the standard SDK variables) point GDAL at another S3 server.
    ``s3=False`` skips the credential lookup (a shard without ``s3://`` hrefs). Returns what was set.
    """
    env = os.environ if environ is None else environ
    applied: dict[str, str] = {}
    for key, value in GDAL_DEFAULTS.items():
        if key not in env:
            env[key] = value
            applied[key] = value
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint and "AWS_S3_ENDPOINT" not in env:
        parsed = urlparse(endpoint)
        applied["AWS_S3_ENDPOINT"] = env["AWS_S3_ENDPOINT"] = parsed.netloc or parsed.path
        applied["AWS_HTTPS"] = env["AWS_HTTPS"] = "NO" if parsed.scheme == "http" else "YES"
        applied["AWS_VIRTUAL_HOSTING"] = env["AWS_VIRTUAL_HOSTING"] = "FALSE"
    # the credential lookup imports boto3 (0.2 s): only when the shard reads from S3
    if s3 and "AWS_NO_SIGN_REQUEST" not in env and not _have_aws_credentials(env):
        applied["AWS_NO_SIGN_REQUEST"] = env["AWS_NO_SIGN_REQUEST"] = "YES"
    return applied


def _have_aws_credentials(env) -> bool:
    if env.get("AWS_ACCESS_KEY_ID") or env.get("AWS_PROFILE") or env.get("AWS_WEB_IDENTITY_TOKEN_FILE"):
        return True
    if env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") or env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        return True
    try:
        import boto3

        return boto3.Session().get_credentials() is not None
    except Exception:  # noqa: BLE001 - no boto3 or a broken config means "no credentials"
        return False


def gdal_path(href: str) -> str:
    """The dataset name GDAL opens for an href: built by :func:`ndvi_worker.safety.gdal_path` from a validated
    href (``/vsicurl/<url>``, ``/vsis3/<bucket>/<key>`` or a local path), and for a local path, checked again
    after following symbolic links (a link to ``/proc/self/environ`` is refused too) and required to be a
    regular file. Raises :class:`SceneError` with the reason."""
    try:
        path = safety.gdal_path(href)
        if not path.startswith("/vsi"):
            real = os.path.realpath(path)
            safety.check_local_path(real)
            if os.path.exists(real) and not stat.S_ISREG(os.stat(real).st_mode):
                raise safety.HrefError("not a regular file")
    except (safety.HrefError, ValueError) as exc:
        raise SceneError(f"rejected href {safety.shown(href)!r}: {exc}") from None
    return path


def open_raster(href: str, fresh: bool = False):
    """Open an href with GDAL's GTiff driver only (COGs are GeoTIFFs): no other driver, so a file holding VRT
    XML, or any other format, cannot make GDAL open further files. ``fresh`` bypasses GDAL's cache of remote
    files for this URL (a retry after a network error would otherwise get a cached "does not exist")."""
    import rasterio

    path = gdal_path(href)
    if fresh and path.startswith("/vsi"):
        with rasterio.Env(CPL_VSIL_CURL_NON_CACHED=path):
            return rasterio.open(path, driver="GTiff")
    return rasterio.open(path, driver="GTiff")


# ----------------------------------------------------------------------------------------------- retries

_PERMANENT_MARKERS = (
    "404",
    "403",
    "no such file",
    "does not exist",
    "not recognized as",
    "not a supported file format",
    "access denied",
    "tiffread",
    "tiffreadencoded",
    "read error",
    "ireadblock failed",
    "cannot seek",
)
_TRANSIENT_MARKERS = (
    "http response code: 5",
    "http response code: 429",
    "timed out",
    "timeout",
    "connection",
    "couldn't connect",
    "curl error",
    "temporarily",
    "slow down",
    "throttl",
)


def is_transient(error: BaseException) -> bool:
    """Whether an I/O error may go away on retry (5xx, 429, timeouts, dropped connections)."""
    message = str(error).lower()
    if any(m in message for m in _TRANSIENT_MARKERS):
        return True
    if any(m in message for m in _PERMANENT_MARKERS):
        return False
    return isinstance(error, TimeoutError | ConnectionError)


def with_retries(
    fn: Callable[[], T],
    what: str,
    attempts: int = 4,
    base_delay: float = 0.5,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``fn``; on a transient error retry with exponential backoff (0.5 s, 1 s, 2 s...).

    When a retry fails with GDAL's "does not exist in the file system" after a network error, the network error
    is raised: it is the cause (GDAL caches the failed lookup), and it is what the log showed."""
    first_transient: Exception | None = None
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - classified below
            if first_transient is not None and "does not exist in the file system" in str(exc):
                raise first_transient from exc
            if attempt == attempts or not is_transient(exc):
                raise
            first_transient = first_transient or exc
            delay = base_delay * 2 ** (attempt - 1)
            log.warning(
                "%s: transient error (%s), retry %d/%d in %.1fs",
                safety.shown(what, 300),
                safety.shown(str(exc), 300),
                attempt,
                attempts - 1,
                delay,
            )
            sleep(delay)
    raise AssertionError("unreachable")


# ----------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class BandInfo:
    href: str
    crs: object
    transform: tuple[float, ...]
    shape: tuple[int, int]
    dtype: str
    nodata: float | None
    block_shape: tuple[int, int]


class BandReader:
    """Thread-safe windowed reads of band 1 of a raster from a pool of rasterio handles.

    A read takes a free handle (or opens one when every handle is busy) and gives it back, so there are as many
    handles as reads ever ran at once, all opened early, while GDAL's cache of the remote file still holds its
    header: a handle opened later would fetch the header again. Counts the compressed bytes of the internal
    blocks each read touches (``bytes_read``), which is what a range-request reader fetches from a COG.
    """

    def __init__(self, href: str, retries: int = 4):
        self.href = href
        self.retries = retries
        self._local = threading.local()
        self._handles: list = []
        self._free: list = []
        self._lock = threading.Lock()
        self._counted: set[tuple[int, int]] = set()
        self._last_block: dict[int, int | None] = {}  # id(handle) -> file-order index of its last block read
        self.bytes_read = 0
        self._attempts = 0
        self.info = with_retries(self._describe, f"open {href}", attempts=retries)

    def _new_handle(self, fresh: bool = False):
        ds = open_raster(self.href, fresh=fresh)
        with self._lock:
            self._handles.append(ds)
        return ds

    def _open(self, fresh: bool = False):
        """This thread's own handle (for readers that wrap a handle, e.g. a WarpedVRT per thread)."""
        ds = getattr(self._local, "ds", None)
        if ds is None:
            ds = self._new_handle(fresh)
            self._local.ds = ds
        return ds

    def _take(self, window=None):
        """A free handle (the least recently used, see :meth:`_give_back`), never one whose last read ended
        where this window's first block starts in the file: GDAL's /vsicurl/ doubles the range it fetches on a
        handle that reads consecutive bytes, refetching blocks other handles read (seen under load as a tile
        fetched twice). When every free handle is such a one, a new handle is opened."""
        start = self._first_block(window)
        with self._lock:
            for k, ds in enumerate(self._free):
                if start is None or self._last_block.get(id(ds)) != start - 1:
                    return self._free.pop(k)
        return self._new_handle()

    def _first_block(self, window) -> int | None:
        """The file-order index of a window's first block (row-major tiles), None when unknown."""
        if window is None or not hasattr(self, "info"):
            return None
        by, bx = self.info.block_shape
        per_row = -(-self.info.shape[1] // bx)
        return int(window.row_off) // by * per_row + int(window.col_off) // bx

    def _last_of(self, window) -> int | None:
        if window is None or not hasattr(self, "info"):
            return None
        by, bx = self.info.block_shape
        per_row = -(-self.info.shape[1] // bx)
        r1, c1 = int(window.row_off + window.height) - 1, int(window.col_off + window.width) - 1
        return r1 // by * per_row + c1 // bx

    def _give_back(self, ds) -> None:
        # handles are reused in turn, not last-in first-out: GDAL's /vsicurl/ reads ahead (ever larger ranges)
        # on a handle that reads consecutive blocks, so reusing the last handle for the next block fetched
        # bytes that other handles fetched again (360 MB on the wire for 320 MB of blocks, measured)
        with self._lock:
            self._free.append(ds)

    def _describe(self) -> BandInfo:
        self._attempts += 1
        try:
            ds = self._new_handle(fresh=self._attempts > 1)
        except SceneError:
            raise
        except Exception as exc:
            raise SceneError(f"cannot open {safety.shown(self.href)}: {_short(exc, self.href)}") from exc
        self._give_back(ds)
        return BandInfo(
            href=self.href,
            crs=ds.crs,
            transform=tuple(ds.transform)[:6],
            shape=(ds.height, ds.width),
            dtype=ds.dtypes[0],
            nodata=ds.nodata,
            block_shape=tuple(ds.block_shapes[0]),
        )

    def read(self, window) -> np.ndarray:
        """Read a :class:`rasterio.windows.Window` of band 1, with retries on transient errors."""

        def attempt() -> np.ndarray:
            ds = self._take(window)
            try:
                data = ds.read(1, window=window)
                self._last_block[id(ds)] = self._last_of(window)
            except Exception:
                # a handle that hit an error may be in a bad state: it is not reused
                with contextlib.suppress(Exception):
                    ds.close()
                raise
            try:
                self._count_bytes(window, ds)
            finally:
                self._give_back(ds)
            return data

        try:
            return with_retries(attempt, f"read {self.href}", attempts=self.retries)
        except Exception as exc:
            raise SceneError(
                f"cannot read {safety.shown(self.href)} {_window_str(window)}: {_short(exc)}"
            ) from exc

    @property
    def handles(self) -> int:
        return len(self._handles)

    def _count_bytes(self, window, ds) -> None:
        by, bx = self.info.block_shape
        r0, c0 = int(window.row_off), int(window.col_off)
        r1, c1 = r0 + int(window.height), c0 + int(window.width)
        blocks = [
            (i, j) for i in range(r0 // by, (r1 - 1) // by + 1) for j in range(c0 // bx, (c1 - 1) // bx + 1)
        ]
        total = 0
        for ij in blocks:
            with self._lock:
                if ij in self._counted:
                    continue
                self._counted.add(ij)
            try:
                total += int(ds.block_size(1, *ij) or 0)
            except Exception:  # noqa: BLE001 - block sizes are accounting, never a reason to fail
                total += by * bx * np.dtype(self.info.dtype).itemsize
        with self._lock:
            self.bytes_read += total

    def close(self) -> None:
        with self._lock:
            for ds in self._handles:
                with contextlib.suppress(Exception):
                    ds.close()
            self._handles.clear()
            self._free.clear()
        self._local = threading.local()


class ResampledReader:
    """Reads a class raster (SCL) on another grid by nearest-neighbour resampling (rasterio WarpedVRT)."""

    def __init__(self, reader: BandReader, target: BandInfo):
        self.reader = reader
        self.target = target
        self._local = threading.local()
        self._vrts: list = []
        self._lock = threading.Lock()

    @property
    def bytes_read(self) -> int:
        return self.reader.bytes_read

    def read(self, window) -> np.ndarray:
        from affine import Affine
        from rasterio.enums import Resampling
        from rasterio.vrt import WarpedVRT

        vrt = getattr(self._local, "vrt", None)
        if vrt is None:
            vrt = WarpedVRT(
                self.reader._open(),
                crs=self.target.crs,
                transform=Affine(*self.target.transform),
                width=self.target.shape[1],
                height=self.target.shape[0],
                resampling=Resampling.nearest,
                nodata=0,
            )
            self._local.vrt = vrt
            with self._lock:
                self._vrts.append(vrt)
        try:
            return with_retries(
                lambda: vrt.read(1, window=window), f"read {self.reader.href}", self.reader.retries
            )
        except Exception as exc:
            raise SceneError(
                f"cannot read {safety.shown(self.reader.href)} (resampled): {_short(exc)}"
            ) from exc

    def close(self) -> None:
        with self._lock:
            for vrt in self._vrts:
                with contextlib.suppress(Exception):
                    vrt.close()
            self._vrts.clear()
        self.reader.close()


def _short(exc: BaseException, href: str | None = None) -> str:
    text = str(exc).strip().replace("\n", " ")
    if href:  # GDAL repeats the path: "<path>: No such file or directory"
        with contextlib.suppress(SceneError):
            text = text.replace(f"{gdal_path(href)}: ", "")
        text = text.replace(f"{href}: ", "")
    if "not recognized as being in a supported file format" in text:
        text += " (only GeoTIFF/COG files are read)"
    return safety.shown(text, 300)


def _window_str(window) -> str:
    return (
        f"rows {int(window.row_off)}-{int(window.row_off + window.height)}, cols {int(window.col_off)}-"
        + str(int(window.col_off + window.width))
    )


# ----------------------------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class OutputFormat:
    dtype: str  # "int16" | "float32"
    compress: str  # "ZSTD" | "DEFLATE" | "LZW" | "LERC_ZSTD" | "NONE"
    level: int | None
    predictor: int | None
    blocksize: int
    overview_resampling: str
    max_z_error: float | None = None

    @property
    def nodata(self) -> float:
        from ndvi_worker.ndvi import INT16_NODATA

        return INT16_NODATA if self.dtype == "int16" else float("nan")

    def cog_options(self, threads: int) -> dict[str, str]:
        opts = {
            "BLOCKSIZE": str(self.blocksize),
            "COMPRESS": self.compress,
            "OVERVIEW_RESAMPLING": self.overview_resampling,
            "RESAMPLING": self.overview_resampling,
            "NUM_THREADS": str(max(1, threads)),
            "BIGTIFF": "IF_SAFER",
        }
        if self.level is not None and self.compress in {"ZSTD", "DEFLATE", "LERC_ZSTD", "LERC_DEFLATE"}:
            opts["LEVEL"] = str(self.level)
        if self.predictor and self.compress in {"ZSTD", "DEFLATE", "LZW"}:
            opts["PREDICTOR"] = "YES" if self.predictor in (2, 3) else "NO"
        if self.max_z_error is not None and self.compress.startswith("LERC"):
            opts["MAX_Z_ERROR"] = str(self.max_z_error)
        return opts


class StagingRaster:
    """Uncompressed tiled GeoTIFFs in the staging folder that chunks are written into, from any thread: the full
    resolution and one file per overview level, tied together by a VRT whose explicit overviews GDAL's COG driver
    uses as they are (so it compresses each pixel once and computes no overview itself).

    The staging files live in the page cache, not in the process's memory. ``bands``: the band descriptions (one
    band, ``ndvi``, for a scene; several for a composite, then :meth:`write_at` takes (bands, rows, cols) arrays);
    ``scales``: one per band (default: the int16 NDVI scale on band 1, 1 on the others; none for float32).
    """

    def __init__(
        self,
        folder: Path,
        info: BandInfo,
        fmt: OutputFormat,
        tags: dict[str, str],
        levels: int,
        bands: Sequence[str] = ("ndvi",),
        scales: Sequence[float] | None = None,
    ):
        import rasterio
        from affine import Affine

        from ndvi_worker.pyramid import overview_shape

        self.folder = folder
        self.tags = tags
        self.info = info
        self.fmt = fmt
        self.levels = levels
        self.bands = tuple(bands)
        self.scales = band_scales(fmt.dtype, len(self.bands)) if scales is None else tuple(scales)
        self._locks = [threading.Lock() for _ in range(levels + 1)]
        base = Affine(*info.transform)
        self._datasets = []
        for level in range(levels + 1):
            rows, cols = overview_shape(info.shape, level)
            profile = {
                "driver": "GTiff",
                "width": cols,
                "height": rows,
                "count": len(self.bands),
                "dtype": fmt.dtype,
                "crs": info.crs,
                "transform": base * Affine.scale(info.shape[1] / cols, info.shape[0] / rows),
                "nodata": fmt.nodata,
                "tiled": True,
                "blockxsize": fmt.blocksize,
                "blockysize": fmt.blocksize,
                "compress": "NONE",
                "BIGTIFF": "IF_SAFER",
                "SPARSE_OK": "TRUE",
            }
            ds = rasterio.open(self.path(level), "w", **profile)
            if level == 0:
                ds.update_tags(**tags)
                for k, name in enumerate(self.bands, start=1):
                    ds.set_band_description(k, name)
            if self.scales:
                ds.scales = self.scales
                ds.offsets = (0.0,) * len(self.scales)
            self._datasets.append(ds)

    def path(self, level: int) -> Path:
        return self.folder / ("full.tif" if level == 0 else f"overview-{level}.tif")

    def write(self, data: np.ndarray, window, level: int = 0) -> None:
        with self._locks[level]:
            if data.ndim == 3:
                self._datasets[level].write(data, window=window)
            else:
                self._datasets[level].write(data, 1, window=window)

    def write_at(self, data: np.ndarray, row_off: int, col_off: int, level: int = 0) -> None:
        from rasterio.windows import Window

        self.write(data, Window(col_off, row_off, data.shape[-1], data.shape[-2]), level)

    def close(self) -> None:
        for ds in self._datasets:
            if not ds.closed:
                ds.close()

    def abort(self) -> None:
        """Nothing to do: the scene's scratch folder is removed with the staging files."""

    def finish(self, dst: Path, threads: int) -> None:
        """GDAL's COG driver compresses the staging files into ``dst``; the staging files are removed."""
        write_cog(self.vrt(), dst, self.fmt, threads=threads)
        for level in range(self.levels + 1):
            self.path(level).unlink()

    def vrt(self) -> Path:
        """A VRT of the full resolution with the overview files as its explicit overviews."""
        from affine import Affine

        gdal_type = {"int16": "Int16", "float32": "Float32"}[self.fmt.dtype]
        nodata = "nan" if self.fmt.dtype == "float32" else str(int(self.fmt.nodata))
        rows, cols = self.info.shape
        metadata = "".join(
            f'<MDI key="{_xml_escape(k)}">{_xml_escape(v)}</MDI>' for k, v in self.tags.items()
        )
        bands = []
        for b, name in enumerate(self.bands, start=1):
            overviews = "".join(
                f'<Overview><SourceFilename relativeToVRT="0">{self.path(k)}</SourceFilename>'
                f"<SourceBand>{b}</SourceBand></Overview>"
                for k in range(1, self.levels + 1)
            )
            scale = f"<Offset>0</Offset><Scale>{self.scales[b - 1]!r}</Scale>" if self.scales else ""
            bands.append(
                f'<VRTRasterBand dataType="{gdal_type}" band="{b}"><NoDataValue>{nodata}</NoDataValue>{scale}'
                f"<Description>{_xml_escape(name)}</Description>"
                f'<SimpleSource><SourceFilename relativeToVRT="0">{self.path(0)}</SourceFilename>'
                f"<SourceBand>{b}</SourceBand></SimpleSource>{overviews}</VRTRasterBand>"
            )
        text = (
            f'<VRTDataset rasterXSize="{cols}" rasterYSize="{rows}">'
            f"<Metadata>{metadata}</Metadata>"
            f"<SRS>{_xml_escape(self.info.crs.to_wkt())}</SRS>"
            f"<GeoTransform>{', '.join(repr(v) for v in Affine(*self.info.transform).to_gdal())}</GeoTransform>"
            f"{''.join(bands)}</VRTDataset>"
        )
        path = self.folder / "stack.vrt"
        path.write_text(text)
        return path


def band_scales(dtype: str, bands: int) -> tuple[float, ...]:
    """The scales written with the bands: int16 NDVI's 1/10000 on band 1 and 1 on the others (counts, days);
    none for float32."""
    from ndvi_worker.ndvi import INT16_SCALE

    return (1.0 / INT16_SCALE,) + (1.0,) * (bands - 1) if dtype == "int16" else ()


def direct_cog_supported(fmt: OutputFormat, shape: tuple[int, int], bands: int = 1) -> bool:
    """Whether the COG can be assembled from tiles compressed in the compute threads (:class:`DirectCogSink`)."""
    from ndvi_worker import cog_writer

    if fmt.max_z_error is not None or os.environ.get("NDVI_STAGING_COG") == "1":  # the old path, on demand
        return False
    return cog_writer.supported(fmt.compress, fmt.predictor, fmt.dtype, shape, bands)


class DirectCogSink:
    """The chunks' tiles compressed once, in the compute threads, into a COG assembled directly
    (:class:`ndvi_worker.cog_writer.DirectCog`): no staging GeoTIFF, no second compression pass. ``bands`` and
    ``scales`` as for :class:`StagingRaster`; several bands are written ``interleave``d: "pixel" (every band in each
    tile, what GDAL's COG driver writes) or "band" (one tile per band, PlanarConfiguration 2)."""

    def __init__(
        self,
        folder: Path,
        info: BandInfo,
        fmt: OutputFormat,
        tags: dict[str, str],
        levels: int,
        chunk: int,
        bands: Sequence[str] = ("ndvi",),
        scales: Sequence[float] | None = None,
        interleave: str = "pixel",
    ):
        from affine import Affine

        from ndvi_worker import cog_writer
        from ndvi_worker.pyramid import overview_shape

        self.levels = levels
        bands = tuple(bands)
        scales = band_scales(fmt.dtype, len(bands)) if scales is None else tuple(scales)
        rows, cols = info.shape
        profile = {
            "driver": "GTiff",
            "width": cols,
            "height": rows,
            "count": len(bands),
            "dtype": fmt.dtype,
            "crs": info.crs,
            "transform": Affine(*info.transform),
            "nodata": fmt.nodata,
            "tiled": True,
            "blockxsize": fmt.blocksize,
            "blockysize": fmt.blocksize,
            "compress": fmt.compress,
            "interleave": interleave,
        }
        base = cog_writer.template_tags(folder, profile, tags, bands, scales or None)
        self.cog = cog_writer.DirectCog(
            folder,
            [overview_shape(info.shape, k) for k in range(levels + 1)],
            base,
            fmt.dtype,
            fmt.nodata,
            fmt.blocksize,
            fmt.compress,
            fmt.level,
            chunk,
            bands=len(bands),
            interleave=interleave,
        )

    def write_at(self, data: np.ndarray, row_off: int, col_off: int, level: int = 0) -> None:
        self.cog.write(data, row_off, col_off, level)

    def close(self) -> None:
        """The tiles stay in the spill file until :meth:`finish` (or :meth:`abort`)."""

    def abort(self) -> None:
        self.cog.close()

    def finish(self, dst: Path, threads: int) -> None:  # noqa: ARG002 - same signature as StagingRaster's
        self.cog.finish(dst)


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def write_cog(src: Path, dst: Path, fmt: OutputFormat, threads: int) -> None:
    """Translate the staging data (a VRT with its overviews) into a Cloud-Optimized GeoTIFF with GDAL's COG
    driver."""
    import rasterio.shutil

    rasterio.shutil.copy(str(src), str(dst), driver="COG", **fmt.cog_options(threads))


def write_quicklook(cog: Path, dst: Path, max_size: int = 512) -> None:
    """A small colour PNG of the NDVI (read from the COG's overviews): brown (-0.2) to dark green (0.9),
    transparent where masked (at most ``max_size`` pixels on its longer side), with the mosaic PNG's legend strip
    below it, so the picture says its colour range (:func:`with_legend`)."""
    import rasterio
    import rasterio.errors
    import rasterio.shutil
    from rasterio.enums import Resampling

    with rasterio.open(cog) as ds:
        scale = max(ds.width, ds.height) / max_size
        shape = (max(1, round(ds.height / max(scale, 1))), max(1, round(ds.width / max(scale, 1))))
        data = ds.read(1, out_shape=shape, masked=True, resampling=Resampling.nearest).astype("float32")
        factor = ds.scales[0] or 1.0
    values = data.filled(np.nan) * factor
    rgba = with_legend(colorize_ndvi(values))
    profile = {"driver": "PNG", "width": rgba.shape[2], "height": rgba.shape[1], "count": 4, "dtype": "uint8"}
    with warnings.catch_warnings(), rasterio.MemoryFile() as mem:
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with mem.open(**{**profile, "driver": "GTiff"}) as tmp:
            tmp.write(rgba)
            rasterio.shutil.copy(tmp, str(dst), driver="PNG")
    with contextlib.suppress(FileNotFoundError):
        os.remove(str(dst) + ".aux.xml")


def with_legend(rgba_map: np.ndarray, min_width: int = 240) -> np.ndarray:
    """An RGBA (4, H, W) map with the NDVI legend strip (:func:`ndvi_worker.mosaic.legend_strip`: the ramp from
    -0.2 to 0.9 with ticks, and the transparent 'NO DATA' swatch) below it: (4, H + legend rows, max(W,
    ``min_width``)); the map keeps its top-left corner, and a map narrower than the legend is padded with
    transparent pixels on the right. The mosaic PNG is drawn the same way."""
    from ndvi_worker.mosaic import legend_strip

    rows, cols = rgba_map.shape[1:]
    legend = legend_strip(max(cols, min_width), colorize_ndvi)
    canvas = np.zeros((4, rows + legend.shape[1], legend.shape[2]), dtype=np.uint8)
    canvas[:, :rows, :cols] = rgba_map
    canvas[:, rows:, :] = legend
    return canvas


_RAMP = np.array(
    [  # ndvi, r, g, b
        [-0.2, 140, 81, 10],
        [0.0, 216, 179, 101],
        [0.2, 246, 232, 195],
        [0.4, 199, 234, 229],
        [0.5, 128, 205, 110],
        [0.7, 35, 139, 69],
        [0.9, 0, 68, 27],
    ],
    dtype="float32",
)


def colorize_ndvi(values: np.ndarray) -> np.ndarray:
    """RGBA uint8 (4, H, W) of an NDVI array; NaN is transparent."""
    rgba = np.zeros((4,) + values.shape, dtype=np.uint8)
    nan = np.isnan(values)
    v = np.where(nan, 0, values)
    for k in range(3):
        rgba[k] = np.interp(v, _RAMP[:, 0], _RAMP[:, k + 1]).astype(np.uint8)
    rgba[3] = np.where(nan, 0, 255)
    return rgba


# ----------------------------------------------------------------------------------------------- publishing


def publish(src: Path, dst: Path) -> None:
    """Move a finished file into the output folder atomically.

    Same file system: one ``rename``. Another file system (e.g. only the output folder bind-mounted): copy
    to a hidden ``.<name>.partial`` beside the destination, fsync, then rename, so the final name never
    points at a partial file.
    """
    try:
        os.replace(src, dst)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    partial = dst.with_name(f".{dst.name}.partial")
    with open(src, "rb") as fin, open(partial, "wb") as fout:
        shutil.copyfileobj(fin, fout, 16 * 1024 * 1024)
        fout.flush()
        os.fsync(fout.fileno())
    os.replace(partial, dst)
    os.remove(src)


def write_json_atomic(data: str, dst: Path, staging: Path) -> None:
    staging.mkdir(parents=True, exist_ok=True)
    tmp = staging / f"{dst.name}.{os.getpid()}.{threading.get_ident()}.tmp"
    tmp.write_text(data)
    publish(tmp, dst)


def remove_partials(output: Path) -> int:
    """Remove ``.*.partial`` files a killed run left in the output folder; returns how many."""
    removed = 0
    for p in list(output.glob(".*.partial")) + list(output.glob("_reports/.*.partial")):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            removed += 1
    return removed


@contextlib.contextmanager
def scratch_dir(root: Path, name: str) -> Iterator[Path]:
    """A private folder under ``root`` for one scene, removed afterwards whatever happens. ``name`` comes from
    data (an item id, an MGRS tile): :func:`safety.path_under` refuses it unless it stays under ``root``."""
    path = safety.path_under(root, name)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def same_filesystem(a: Path, b: Path) -> bool:
    try:
        return os.stat(a).st_dev == os.stat(b).st_dev
    except OSError:
        return False
