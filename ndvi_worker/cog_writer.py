"""A Cloud-Optimized GeoTIFF assembled directly from tiles compressed once, in the compute threads.

GDAL's COG driver needs the whole image before it writes anything (its layout puts every IFD first, then the
overviews' tiles, smallest first, then the full resolution's), so the worker used to write the NDVI into
uncompressed staging GeoTIFFs, and the COG driver then read them back and compressed every pixel at the end, alone
(1.2-1.4 s of CPU and wall per full scene, plus 0.6 s of staging writes). Here each chunk task compresses its own
tiles (512 x 512 by default: a 1024 chunk holds 4 full-resolution tiles and exactly one tile of overview level 1)
and appends them, framed as GDAL frames them, to a spill file beside the output; the small levels (2 and up, 1/16
of the pixels) are kept in memory and compressed at the end. :meth:`DirectCog.finish` then writes the file in
GDAL's COG layout: the TIFF header, GDAL's ghost header (``LAYOUT=IFDS_BEFORE_DATA``, ``BLOCK_LEADER=SIZE_AS_UINT4``,
``BLOCK_TRAILER=LAST_4_BYTES_REPEATED``), the IFDs (full resolution, then overviews, largest first) and their tag
values, then the tiles of the smallest overview first, each level in row-major order, copied from the spill file by
the kernel (``copy_file_range``). GDAL reports ``LAYOUT=COG`` for the result, rio-cogeo validates it.

The IFDs' tags (georeferencing, GDAL metadata, scale/offset, nodata...) are GDAL's own: they are taken from a sparse
GeoTIFF of the same profile that GDAL writes without any pixel (a few kB), so they are what GDAL's COG driver writes
(checked tag by tag against it in ``tests/ndvi_worker/test_cog_writer.py``).

Several bands (the temporal composites: NDVI, count, day) are written pixel-interleaved (``INTERLEAVE=PIXEL``, one
tile holds every band, what GDAL's COG driver writes by default) or band-interleaved (``interleave="band"``:
PlanarConfiguration 2, ``INTERLEAVE=BAND``; each tile holds one band, and every IFD's tile arrays list all the tiles of
band 1, then all those of band 2, etc.). Band-interleaved, each level's data is written in that order (increasing tile
index: band 1's tiles row-major, then band 2's...), so one band's tiles are contiguous and a reader of band 1 only
(the mosaic) decompresses band 1 only; the ghost header then also says ``INTERLEAVE=BAND``, as GDAL >= 3.11 writes
it (GDAL 3.10's COG driver ignores ``INTERLEAVE=BAND`` and its GTiff driver writes no ghost header for it; GDAL 3.10
and rio-cogeo read and validate the result as a COG, ``LAYOUT=COG``). In a profile of the composites, ZSTD compressed
three separate bands ~3x faster than the same bands pixel-interleaved, into ~18 % fewer bytes.

Supported: classic TIFF (< 4 GB), ZSTD / DEFLATE / NONE without predictor (the worker's defaults and the common
choices); :func:`supported` says when, and the worker falls back to the staging path + COG driver otherwise.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import struct
import threading
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

#: TIFF compression codes
_COMPRESSION_CODES = {"NONE": 1, "DEFLATE": 8, "ZSTD": 50000}
#: GDAL's default levels when none is given (its GTiff driver's)
_DEFAULT_LEVELS = {"DEFLATE": 6, "ZSTD": 9}
#: GDAL's COG ghost header (gcore/gdal_priv / frmts/gtiff: what its COG driver writes after the TIFF header)
_GHOST_BODY = (
    "LAYOUT=IFDS_BEFORE_DATA\n"
    "BLOCK_ORDER=ROW_MAJOR\n"
    "BLOCK_LEADER=SIZE_AS_UINT4\n"
    "BLOCK_TRAILER=LAST_4_BYTES_REPEATED\n"
    "KNOWN_INCOMPATIBLE_EDITION=NO\n"
    " "  # GDAL pads to an even length
)
GHOST_HEADER = f"GDAL_STRUCTURAL_METADATA_SIZE={len(_GHOST_BODY):06d} bytes\n{_GHOST_BODY}".encode("ascii")
#: band-interleaved: GDAL (>= 3.11, gtiffdataset_write.cpp) adds ``INTERLEAVE=BAND`` before
#: ``KNOWN_INCOMPATIBLE_EDITION``; GDAL's readers look for each item on its own, so 3.10 reads it as a COG too
_GHOST_BODY_BAND = _GHOST_BODY.replace("KNOWN_INCOMPATIBLE", "INTERLEAVE=BAND\nKNOWN_INCOMPATIBLE")
GHOST_HEADER_BAND = (
    f"GDAL_STRUCTURAL_METADATA_SIZE={len(_GHOST_BODY_BAND):06d} bytes\n{_GHOST_BODY_BAND}".encode("ascii")
)

_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 16: 8, 17: 8, 18: 8}
_TILE_OFFSETS, _TILE_BYTE_COUNTS, _NEW_SUBFILE_TYPE = 324, 325, 254
#: the tags GDAL's COG driver writes in overview IFDs (besides their size and tile arrays); 338 (ExtraSamples) only
#: for several bands
_OVERVIEW_TAGS = (258, 259, 262, 277, 284, 317, 322, 323, 338, 339, 42113)
_CLASSIC_LIMIT = 2**32 - 1


def supported(
    compress: str, predictor: int | None, dtype: str, shape: tuple[int, int], bands: int = 1
) -> bool:
    """Whether :class:`DirectCog` can write this format (else the staging path and GDAL's COG driver do)."""
    if compress not in _COMPRESSION_CODES or predictor not in (None, 0, 1):
        return False
    if compress == "ZSTD" and _zstd() is None:
        return False
    # classic TIFF only (GDAL's BIGTIFF=IF_SAFER picks classic TIFF for anything below ~4 GB uncompressed x 1.x)
    raw = shape[0] * shape[1] * max(1, bands) * np.dtype(dtype).itemsize * 4 // 3
    return raw < 2**32 * 0.9


# ----------------------------------------------------------------------------------------------- compression


class _Zstd:
    """libzstd (the copy GDAL itself links, shipped in the rasterio wheel) through ctypes: the calls release the
    GIL, so the compute threads compress in parallel. One compression context per thread."""

    def __init__(self, lib: ctypes.CDLL):
        self.lib = lib
        lib.ZSTD_compressBound.restype = ctypes.c_size_t
        lib.ZSTD_compressBound.argtypes = [ctypes.c_size_t]
        lib.ZSTD_createCCtx.restype = ctypes.c_void_p
        lib.ZSTD_compressCCtx.restype = ctypes.c_size_t
        lib.ZSTD_compressCCtx.argtypes = [
            ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
        ]  # fmt: skip
        lib.ZSTD_isError.restype = ctypes.c_uint
        lib.ZSTD_isError.argtypes = [ctypes.c_size_t]
        self._local = threading.local()

    def compress(self, data: np.ndarray, level: int) -> bytes:
        """``data`` (C-contiguous) compressed, as bytes (a copy of :meth:`compress_view`'s result)."""
        return bytes(self.compress_view(data, level))

    def compress_view(self, data: np.ndarray, level: int) -> memoryview:
        """``data`` (C-contiguous) compressed into this thread's reusable output buffer, returned as a view of it,
        valid until this thread's next call (no copy: ``string_at`` copied every tile into a new bytes object while
        holding the interpreter lock). A fresh buffer per tile (allocated, zeroed, copied whole, freed) cost more
        than the compression when threads compress at once (page faults and unmaps in one process)."""
        local = self._local
        ctx = getattr(local, "ctx", None)
        if ctx is None:
            ctx = local.ctx = self.lib.ZSTD_createCCtx()
            local.out, local.cap = None, 0
        n = data.nbytes
        cap = self.lib.ZSTD_compressBound(n)
        if cap > local.cap:
            local.out, local.cap = ctypes.create_string_buffer(cap), cap
        size = self.lib.ZSTD_compressCCtx(ctx, local.out, cap, data.ctypes.data, n, level)
        if self.lib.ZSTD_isError(size):
            raise RuntimeError("ZSTD compression failed")
        return memoryview(local.out)[:size]


_ZSTD: list = []


def _zstd() -> _Zstd | None:
    if not _ZSTD:
        lib = None
        import rasterio

        here = Path(rasterio.__file__).resolve().parent
        candidates = sorted(glob.glob(str(here.parent / "rasterio.libs" / "libzstd*.so*"))) + ["libzstd.so.1"]
        for name in candidates:
            try:
                lib = _Zstd(ctypes.CDLL(name))
                break
            except OSError:
                continue
        _ZSTD.append(lib)
    return _ZSTD[0]


def compressor(compress: str, level: int | None, view: bool = False):
    """``tile array -> bytes`` for a TIFF compression (GDAL's default level when ``level`` is None). ``view``:
    the result may be a view of a per-thread buffer, valid until the thread's next call (ZSTD: no copy)."""
    level = _DEFAULT_LEVELS.get(compress) if level is None else level
    if compress == "ZSTD":
        zstd = _zstd()
        if view:
            return lambda a: zstd.compress_view(a, level)
        return lambda a: zstd.compress(a, level)
    if compress == "DEFLATE":
        return lambda a: zlib.compress(a.data, level)  # zlib stream, as libtiff's AdobeDeflate expects
    return lambda a: a.tobytes()


# ----------------------------------------------------------------------------------------------- TIFF tags


def read_ifds(path: str | Path) -> list[dict[int, tuple[int, int, bytes]]]:
    """Every IFD of a little-endian classic TIFF: ``{tag: (type, count, value bytes)}``."""
    with open(path, "rb") as f:
        head = f.read(8)
        if head[:4] != b"II*\x00":
            raise ValueError("not a little-endian classic TIFF")
        offset = struct.unpack("<I", head[4:])[0]
        out = []
        while offset:
            f.seek(offset)
            (n,) = struct.unpack("<H", f.read(2))
            entries = [struct.unpack("<HHI4s", f.read(12)) for _ in range(n)]
            (offset,) = struct.unpack("<I", f.read(4))
            tags = {}
            for tag, typ, count, value in entries:
                size = _TYPE_SIZES[typ] * count
                if size > 4:
                    f.seek(struct.unpack("<I", value)[0])
                    data = f.read(size)
                else:
                    data = value[:size]
                tags[tag] = (typ, count, data)
            out.append(tags)
    return out


def template_tags(
    folder: Path,
    profile: dict,
    tags: dict,
    description: str | Sequence[str] | None,
    scale: float | Sequence[float] | None,
) -> dict:
    """The full-resolution IFD's tags as GDAL writes them for this profile (a sparse GeoTIFF: no pixel).
    ``description`` and ``scale``: band 1's, or one per band (offsets 0)."""
    import rasterio

    path = folder / "template.tif"
    with rasterio.open(path, "w", **profile, SPARSE_OK="TRUE") as ds:
        if tags:
            ds.update_tags(**tags)
        descriptions = [description] if isinstance(description, str) else list(description or [])
        for k, text in enumerate(descriptions, start=1):
            if text:
                ds.set_band_description(k, text)
        if scale is not None:
            ds.scales = (scale,) if isinstance(scale, int | float) else tuple(scale)
            ds.offsets = (0.0,) * len(ds.scales)
    try:
        return read_ifds(path)[0]
    finally:
        path.unlink()


def _ifd_bytes(tags: dict[int, tuple[int, int, bytes]], at: int) -> bytes:
    """One IFD at file offset ``at`` followed by its out-of-line values (word-aligned), next-IFD offset 0."""
    entries = sorted(tags.items())
    values_at = at + 2 + 12 * len(entries) + 4
    head, values = [struct.pack("<H", len(entries))], []
    for tag, (typ, count, data) in entries:
        if len(data) <= 4:
            head.append(struct.pack("<HHI", tag, typ, count) + data.ljust(4, b"\0"))
        else:
            if (values_at + sum(map(len, values))) % 2:
                values.append(b"\0")
            head.append(struct.pack("<HHII", tag, typ, count, values_at + sum(map(len, values))))
            values.append(data)
    return b"".join(head) + b"\0\0\0\0" + b"".join(values)


def _long_array(values: list[int]) -> tuple[int, int, bytes]:
    return (4, len(values), struct.pack(f"<{len(values)}I", *values))


def _short(value: int) -> tuple[int, int, bytes]:
    return (3, 1, struct.pack("<H", value))


# ----------------------------------------------------------------------------------------------- the writer


class DirectCog:
    """Collects a COG's compressed tiles from any thread, then writes the file in GDAL's COG layout.

    ``level_shapes[k]`` is level k's (rows, cols) (0: full resolution). ``direct_levels``: the levels whose
    chunk windows are whole tiles (or reach the raster's edge), compressed by :meth:`write` at once; the others
    are assembled in memory and compressed in :meth:`finish`. ``bands`` > 1: :meth:`write` takes (bands, rows,
    cols) arrays, written pixel-interleaved (``interleave="pixel"``: each tile holds every band, as GDAL's
    ``INTERLEAVE=PIXEL``) or band-interleaved (``interleave="band"``: one tile per band, PlanarConfiguration 2 in
    ``base_tags``, as a template written with ``interleave="band"`` has it).
    """

    def __init__(
        self,
        folder: Path,
        level_shapes: list[tuple[int, int]],
        base_tags: dict[int, tuple[int, int, bytes]],
        dtype: str,
        nodata: float,
        blocksize: int,
        compress: str,
        level: int | None,
        chunk_size: int,
        bands: int = 1,
        interleave: str = "pixel",
    ):
        if interleave not in ("pixel", "band"):
            raise ValueError(f"interleave: 'pixel' or 'band', not {interleave!r}")
        self.shapes = level_shapes
        self.bands = bands
        #: tiles per tile position (planes: one per band if band-interleaved) and samples in each tile
        self.planes = bands if interleave == "band" and bands > 1 else 1
        self.samples = bands // self.planes
        planar = 2 if self.planes > 1 else 1
        if bands > 1 and struct.unpack("<H", base_tags[284][2])[0] != planar:
            raise ValueError(f"the template's PlanarConfiguration is not {planar} ({interleave}-interleaved)")
        self.ghost = GHOST_HEADER_BAND if self.planes > 1 else GHOST_HEADER
        self.base_tags = base_tags
        self.dtype = np.dtype(dtype)
        self.nodata = nodata
        self.block = blocksize
        self.compress = compressor(compress, level, view=True)
        self.direct = [(chunk_size >> k) % blocksize == 0 for k in range(len(level_shapes))]
        if not self.direct[0]:
            raise ValueError("the chunk size must be a multiple of the tile size")
        self.grid = [(-(-r // blocksize), -(-c // blocksize)) for r, c in level_shapes]
        #: per level: (plane, tile row, tile col) -> (offset in the spill file, framed size)
        self.records: list[dict[tuple[int, int, int], tuple[int, int]]] = [{} for _ in level_shapes]
        self.memory = {
            k: np.full(shape if bands == 1 else (bands, *shape), nodata, dtype=self.dtype)
            for k, shape in enumerate(level_shapes)
            if not self.direct[k]
        }
        self._spill_path = folder / "tiles.bin"
        self._spill = os.open(self._spill_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        self._end = 0
        self._lock = threading.Lock()

    # ----------------------------------------------------------------------------------------------- tiles

    def _tile(self, data: np.ndarray) -> np.ndarray:
        """A full ``block x block`` contiguous tile (edge tiles padded with zeros, as GDAL pads them: then the
        compressed tiles are byte-identical to GDAL's). Several bands: ``data`` is (bands, rows, cols) and the
        tile (rows, cols, bands), pixel-interleaved band by band (a plain strided copy of the whole is ~5x
        slower). Band-interleaved: ``data`` is one band's (rows, cols)."""
        if self.samples == 1:
            if data.shape == (self.block, self.block):
                return np.ascontiguousarray(data)
            tile = np.zeros((self.block, self.block), dtype=self.dtype)
            tile[: data.shape[0], : data.shape[1]] = data
            return tile
        rows, cols = data.shape[1:]
        full = rows == self.block and cols == self.block
        tile = (np.empty if full else np.zeros)((self.block, self.block, self.samples), dtype=self.dtype)
        for k in range(self.samples):
            tile[:rows, :cols, k] = data[k]
        return tile

    def _frame(self, data: np.ndarray) -> list:
        """A tile as GDAL frames it: its size (4 bytes), the compressed tile, its last 4 bytes again (the pieces,
        the middle one possibly a view of a per-thread buffer: use them before this thread compresses again)."""
        payload = self.compress(self._tile(data))
        return [struct.pack("<I", len(payload)), payload, payload[-4:]]

    def _framed(self, data: np.ndarray) -> bytes:
        return b"".join(self._frame(data))

    def write(self, data: np.ndarray, row_off: int, col_off: int, level: int = 0) -> None:
        """Level ``level``'s pixels at (row_off, col_off): tile-aligned (compressed now) or kept in memory.
        ``data``: (rows, cols), or (bands, rows, cols) for several bands."""
        data = np.asarray(data, dtype=self.dtype)
        if self.bands > 1 and (data.ndim != 3 or data.shape[0] != self.bands):
            raise ValueError(f"expected ({self.bands}, rows, cols), got {data.shape}")
        rows, cols = data.shape[-2:]
        if not self.direct[level]:
            self.memory[level][..., row_off : row_off + rows, col_off : col_off + cols] = data
            return
        b = self.block
        if row_off % b or col_off % b:
            raise ValueError(f"level {level} window at ({row_off}, {col_off}) is not tile-aligned")
        for r in range(0, rows, b):
            for c in range(0, cols, b):
                for p in range(self.planes):
                    window = (
                        data[..., r : r + b, c : c + b] if self.planes == 1 else data[p, r : r + b, c : c + b]
                    )
                    pieces = self._frame(window)
                    size = 8 + len(pieces[1])
                    with self._lock:
                        at = self._end
                        self._end += size
                    _pwritev_all(self._spill, pieces, at)  # no concatenated copy of the tile
                    self.records[level][(p, (row_off + r) // b, (col_off + c) // b)] = (at, size)

    # ----------------------------------------------------------------------------------------------- layout

    def finish(self, dst: Path) -> None:
        """Compress the in-memory levels and write the COG to ``dst``."""
        b = self.block
        planes = self.planes
        small: dict[int, dict[tuple[int, int, int], bytes]] = {}
        for k, array in self.memory.items():
            rows, cols = self.grid[k]
            small[k] = {}
            for p in range(planes):
                plane = array if planes == 1 else array[p]
                for i in range(rows):
                    for j in range(cols):
                        small[k][(p, i, j)] = self._framed(
                            plane[..., i * b : (i + 1) * b, j * b : (j + 1) * b]
                        )
        for k, (rows, cols) in enumerate(self.grid):
            have = small[k] if k in small else self.records[k]
            if len(have) != planes * rows * cols:
                raise RuntimeError(f"level {k}: {len(have)} of {planes * rows * cols} tiles were written")

        def tile_order(k):
            """Level k's tiles in file (and TileOffsets) order: by band, then row-major."""
            rows, cols = self.grid[k]
            return [(p, i, j) for p in range(planes) for i in range(rows) for j in range(cols)]

        def framed_size(k, ij):
            return len(small[k][ij]) if k in small else self.records[k][ij][1]

        # IFDs: full resolution first, then overviews largest first; placeholders for the tile arrays
        ifd_tags = []
        for k, (rows, cols) in enumerate(self.shapes):
            n = planes * self.grid[k][0] * self.grid[k][1]
            if k == 0:
                tags = {
                    t: v for t, v in self.base_tags.items() if t not in (_TILE_OFFSETS, _TILE_BYTE_COUNTS)
                }
            else:
                tags = {t: self.base_tags[t] for t in _OVERVIEW_TAGS if t in self.base_tags}
                tags[_NEW_SUBFILE_TYPE] = (4, 1, struct.pack("<I", 1))
            tags[256] = _short(cols) if cols < 65536 else (4, 1, struct.pack("<I", cols))
            tags[257] = _short(rows) if rows < 65536 else (4, 1, struct.pack("<I", rows))
            tags[_TILE_OFFSETS] = _long_array([0] * n)
            tags[_TILE_BYTE_COUNTS] = _long_array([0] * n)
            ifd_tags.append(tags)
        header_end = 8 + len(self.ghost)
        ifd_at, at = [], header_end
        for tags in ifd_tags:
            at += at % 2
            ifd_at.append(at)
            at += len(_ifd_bytes(tags, at))
        data_start = at
        # tile data: smallest overview first, each level row-major (band by band if band-interleaved: the order of
        # the tile arrays); offsets point after each 4-byte leader
        order = list(range(len(self.shapes)))[::-1]
        pos = data_start
        for k in order:
            offsets, counts = [], []
            for key in tile_order(k):
                size = framed_size(k, key)
                offsets.append(pos + 4)
                counts.append(size - 8)
                pos += size
            ifd_tags[k][_TILE_OFFSETS] = _long_array(offsets)
            ifd_tags[k][_TILE_BYTE_COUNTS] = _long_array(counts)
        if pos > _CLASSIC_LIMIT:
            raise RuntimeError("the COG would exceed 4 GB (classic TIFF)")
        head = bytearray(b"II*\x00" + struct.pack("<I", ifd_at[0]) + self.ghost)
        for k, tags in enumerate(ifd_tags):
            head += b"\0" * (ifd_at[k] - len(head))
            ifd = bytearray(_ifd_bytes(tags, ifd_at[k]))
            if k + 1 < len(ifd_tags):  # the next-IFD pointer right after the entries
                n = len(tags)
                ifd[2 + 12 * n : 2 + 12 * n + 4] = struct.pack("<I", ifd_at[k + 1])
            head += ifd
        assert len(head) == data_start
        with open(dst, "wb") as out:
            out.write(head)
            out.flush()
            fd = out.fileno()
            for k in order:
                if k in small:
                    out.write(b"".join(small[k][key] for key in tile_order(k)))
                    out.flush()
                    continue
                recs = self.records[k]
                for key in tile_order(k):
                    src, size = recs[key]
                    _copy_range(self._spill, fd, src, size)
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._spill)
        with contextlib.suppress(FileNotFoundError):
            self._spill_path.unlink()


def _pwritev_all(fd: int, pieces: list, offset: int) -> None:
    """Write the buffers one after the other at ``offset`` (``os.pwritev``, repeated after a short write)."""
    views = [memoryview(p).cast("B") for p in pieces]
    while views:
        n = os.pwritev(fd, views, offset)
        offset += n
        while views and n >= len(views[0]):
            n -= len(views[0])
            views.pop(0)
        if views and n:
            views[0] = views[0][n:]


def _copy_range(src_fd: int, dst_fd: int, offset: int, size: int) -> None:
    """Append ``size`` bytes of ``src_fd`` from ``offset`` to ``dst_fd`` (in the kernel where it can)."""
    done = 0
    while done < size:
        try:
            n = os.copy_file_range(src_fd, dst_fd, size - done, offset + done)
        except OSError:
            n = 0
        if n <= 0:  # not supported here: through user space
            chunk = os.pread(src_fd, size - done, offset + done)
            os.write(dst_fd, chunk)
            n = len(chunk)
        done += n
