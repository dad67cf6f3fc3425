"""Request and response encodings of the inference server.

Pure functions over bytes and numpy arrays. The only optional imports are the decoders of image formats
(Pillow for JPEG/PNG, rasterio for GeoTIFF), loaded when a request needs them.

Requests (``Content-Type``):
  ``image/jpeg``, ``image/png``   8- or 16-bit images, as the built-in algorithm takes them
  ``image/tiff``                  a (Geo)TIFF with any number of bands and any dtype (e.g. 4-band float32 SAR)
  ``application/x-npy``           a numpy array: (H, W), (C, H, W) or (H, W, C) (by the model's bands)

Responses (``Accept``):
  ``image/png``                   indexed PNG of class ids, same size as the input (the built-in's default)
  ``application/x-recordio-protobuf``, ``application/x-protobuf``
                                  class probabilities as one RecordIO-wrapped ``aialgs.data.Record`` with
                                  ``features["target"].float32_tensor`` (values, shape [1, C, H, W]) and
                                  ``features["shape"].int32_tensor`` ([1, C, H, W]), as the built-in answers
  ``image/tiff``                  a GeoTIFF class-id mask keeping the input's CRS and transform
  ``application/json``            a summary: class pixel counts and fractions, building count

Errors carry the HTTP status the server answers with (``CodecError.status``).
"""

from __future__ import annotations

import io
import json
import math
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# ----------------------------------------------------------------------------------------------- media types
JPEG = "image/jpeg"
PNG = "image/png"
TIFF = "image/tiff"
NPY = "application/x-npy"
JSON = "application/json"
RECORDIO_PROTOBUF = "application/x-recordio-protobuf"
PROTOBUF = "application/x-protobuf"

REQUEST_TYPES = (JPEG, PNG, TIFF, NPY)
RESPONSE_TYPES = (PNG, RECORDIO_PROTOBUF, PROTOBUF, TIFF, JSON)
DEFAULT_ACCEPT = PNG  # what the built-in answers when the client does not say
_ALIASES = {"image/jpg": JPEG, "image/tif": TIFF, "image/geotiff": TIFF, "application/npy": NPY}

IGNORE_CLASS = 255  # mask value where the input is nodata (the built-in's "ignore" label)
RECORDIO_MAGIC = 0xCED7230A
_RECORDIO_MAX_LENGTH = (1 << 29) - 1  # the length field has 29 bits; the top 3 are the continuation flag


class CodecError(Exception):
    """A request the server refuses; ``status`` is the HTTP status code to answer with."""

    status = 400

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        if status is not None:
            self.status = status


class UnsupportedMediaType(CodecError):
    status = 415


class BadRequest(CodecError):
    status = 400


class PayloadTooLarge(CodecError):
    status = 413


class NotAcceptable(CodecError):
    status = 406


class _BeforeDecodeRaised(BaseException):  # noqa: N818 - carries Limits.before_decode's exception
    """Carries an exception of ``before_decode`` past the decoders' ``except Exception`` (which turn library
    errors into 400s); :func:`decode_request` raises the original."""


# ----------------------------------------------------------------------------------------------- negotiation
def _media_type(header: str) -> str:
    media = header.split(";", 1)[0].strip().lower()
    return _ALIASES.get(media, media)


_TOKEN = r"[A-Za-z0-9!#$&^_.+-]{1,40}"
_SHOWN_MEDIA_TYPE = re.compile(rf"{_TOKEN}/{_TOKEN}")


def _shown(header: str | None, name: str) -> str:
    """A client's header for a message: its media type alone if it is a short, plain ``type/subtype`` token,
    else a description (the client's text is never echoed whole)."""
    if not header or not header.strip():
        return f"{name} (none sent)"
    media = header.split(";", 1)[0].split(",", 1)[0].strip()
    if _SHOWN_MEDIA_TYPE.fullmatch(media):
        return f"{name} {media.lower()!r}" + (" (and more)" if media != header.strip() else "")
    return f"{name} (not a plain type/subtype; not shown)"


def parse_content_type(header: str | None) -> str:
    """The request's media type, or UnsupportedMediaType naming the accepted ones."""
    media = _media_type(header or "")
    if media not in REQUEST_TYPES:
        raise UnsupportedMediaType(
            f"unsupported {_shown(header, 'Content-Type')}: send one of {', '.join(REQUEST_TYPES)}"
        )
    return media


def negotiate_accept(header: str | None) -> str:
    """The response type for an ``Accept`` header (q-values honoured; none or ``*/*`` -> image/png)."""
    if not header or not header.strip():
        return DEFAULT_ACCEPT
    candidates: list[tuple[float, int, str]] = []
    for order, part in enumerate(header.split(",")):
        if not part.strip():
            continue
        pieces = [p.strip() for p in part.split(";")]
        media = _ALIASES.get(pieces[0].lower(), pieces[0].lower())
        q = 1.0
        for param in pieces[1:]:
            if param.lower().startswith("q="):
                try:
                    q = float(param[2:])
                except ValueError:
                    q = 0.0
        if q > 0:
            candidates.append((-q, order, media))
    for _, _, media in sorted(candidates):
        if media in RESPONSE_TYPES:
            return media
        if media in ("*/*", "image/*"):
            return DEFAULT_ACCEPT
        if media == "application/*":
            return RECORDIO_PROTOBUF
    raise NotAcceptable(
        f"cannot answer {_shown(header, 'Accept')}: ask for one of {', '.join(RESPONSE_TYPES)}"
    )


# ----------------------------------------------------------------------------------------------- decoding
# GDAL settings for every decode: no sidecar files are listed or read (.aux.xml, .ovr, .msk, world files), no PAM,
# georeferencing from the TIFF's own tags only, no network access by any path, and a small block cache (GDAL's
# default is 5 % of the RAM, which a decompression bomb fills on top of the decoded array).
GDAL_CACHE_BYTES = 64 * 2**20
SAFE_GDAL_OPTIONS = {
    "GDAL_CACHEMAX": GDAL_CACHE_BYTES,  # bytes (rasterio sets it with GDALSetCacheMax64)
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_PAM_ENABLED": "NO",
    "GDAL_GEOREF_SOURCES": "INTERNAL",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".earthmon-no-remote-access",
    "GDAL_HTTP_MAX_RETRY": "0",
}
TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
NPY_MAGIC = b"\x93NUMPY"
BUDGET_BYTES_PER_SAMPLE = 4  # the decoded-size budget: max_pixels x bands x float32 (see decode_request)
# progressive JPEGs: libjpeg has no limit on the scans of one image, and every scan walks the whole coefficient
# buffer (a 1 MB body of 25 000 scans decodes for minutes). Encoders write at most a dozen or so; GDAL's own
# GDAL_JPEG_MAX_ALLOWED_SCAN_NUMBER is 100. Scans x pixels is also bounded by the pixel budget.
MAX_JPEG_SCANS = 100
JPEG_SCAN_WORK_FACTOR = 32  # scans x height x width <= EARTHMON_MAX_PIXELS x this
_MESSAGE_LIMIT = 300  # library error messages are cut to this (they never carry more than a diagnosis)


@dataclass
class DecodedImage:
    """A request image: ``array`` is (C, H, W) in the input's dtype; GeoTIFFs keep their georeferencing."""

    array: np.ndarray
    media_type: str
    crs: Any = None  # rasterio CRS (GeoTIFF inputs only)
    transform: Any = None  # affine.Affine (GeoTIFF inputs only)
    nodata: float | None = None
    extra: dict = field(default_factory=dict)

    @property
    def height(self) -> int:
        return int(self.array.shape[1])

    @property
    def width(self) -> int:
        return int(self.array.shape[2])

    def nodata_mask(self) -> np.ndarray | None:
        """True where every band equals the declared nodata value (None when no nodata is declared)."""
        if self.nodata is None:
            return None
        if np.isnan(self.nodata):
            return np.isnan(self.array).all(axis=0) if self.array.dtype.kind == "f" else None
        if self.array.dtype.kind in "ui":
            info = np.iinfo(self.array.dtype)
            if not (info.min <= self.nodata <= info.max and float(self.nodata).is_integer()):
                return None  # a nodata value the pixels cannot hold marks nothing
        return (self.array == self.array.dtype.type(self.nodata)).all(axis=0)


@dataclass(frozen=True)
class Limits:
    """What a request may cost, checked from its header before any pixel is decoded."""

    bands: int | None = None  # the model's band count (None: any)
    band_names: tuple[str, ...] | None = None  # for the band-count message
    max_pixels: int | None = None  # height x width
    max_bytes: int | None = None  # bands x height x width x item size (+ the decoder's working buffers)
    # called with (height, width) once the header passed every check, before any pixel is decoded (the
    # server checks its request deadline and its time estimate there)
    before_decode: Callable[[int, int], None] | None = None

    @classmethod
    def of(cls, bands, band_names, max_pixels, max_bytes, before_decode=None) -> Limits:
        if max_bytes is None and max_pixels is not None:
            max_bytes = max_pixels * max(bands or 4, 1) * BUDGET_BYTES_PER_SAMPLE
        names = tuple(str(n) for n in band_names) if band_names else None
        return cls(bands, names, max_pixels, max_bytes, before_decode)

    def check_bands(self, count: int, media_type: str) -> None:
        if self.bands is None or count == self.bands:
            return
        names = (
            f" ({', '.join(self.band_names)})"
            if self.band_names and len(self.band_names) == self.bands
            else ""
        )
        hint = (
            "send image/tiff or application/x-npy"
            if media_type in (JPEG, PNG) and self.bands not in (1, 3)
            else "send an image"
        )
        raise BadRequest(
            f"the model takes {self.bands} band(s){names}; this {media_type} body has {count}: "
            f"{hint} with the {self.bands} band(s) the model was trained on"
        )

    def check_size(self, height: int, width: int, count: int, itemsize: int, extra: int = 0) -> None:
        _check_pixels(height, width, self.max_pixels)
        need = count * height * width * itemsize + extra
        if self.max_bytes is not None and need > self.max_bytes:
            raise PayloadTooLarge(
                f"decoding this image ({width} x {height} pixels, {count} band(s) of {itemsize} byte(s)) "
                f"would take {_mib(need)}, over the server's limit of {_mib(self.max_bytes)} "
                "(EARTHMON_MAX_PIXELS x the model's bands x 4 bytes): send fewer pixels (split the image into "
                "tiles; launcher predict does this) or float32 instead of float64"
            )
        if self.before_decode is not None:
            try:
                self.before_decode(height, width)
            except CodecError:
                raise
            except Exception as exc:
                raise _BeforeDecodeRaised() from exc


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= _MESSAGE_LIMIT else text[: _MESSAGE_LIMIT - 3] + "..."


def _sniff(body: bytes) -> str:
    """What a body looks like, for messages (never echoes the body itself)."""
    head = body[:64].lstrip(b"\xef\xbb\xbf \t\r\n")
    if body.startswith(TIFF_MAGICS):
        return "a TIFF"
    if body.startswith(PNG_MAGIC):
        return "a PNG"
    if body.startswith(JPEG_MAGIC):
        return "a JPEG"
    if body.startswith(NPY_MAGIC):
        return "a .npy array"
    if head.startswith(b"<"):
        return "XML/HTML text (GDAL VRT, WMS and other XML descriptions are refused)"
    if head[:1] in (b"{", b"["):
        return "JSON text"
    return "not a recognised image"


def decode_request(
    body: bytes,
    media_type: str,
    bands: int | None = None,
    max_pixels: int | None = None,
    *,
    band_names=None,
    max_bytes: int | None = None,
    before_decode: Callable[[int, int], None] | None = None,
):
    """Decode a request body into a :class:`DecodedImage`, by the format its media type names and no other.

    ``bands`` (the model's input band count) picks the colour conversion of JPEG/PNG and the axis order of
    3-D arrays, and is checked against the header before decoding (400 naming ``band_names``); ``max_pixels``
    bounds height x width and ``max_bytes`` (default ``max_pixels`` x ``bands`` x 4 bytes) the decoded size
    (decompression bombs, sparse files), both from the header, with PayloadTooLarge (413).
    TIFF bodies must start with a TIFF signature and are opened by GDAL's GTiff driver alone, with no sidecar
    or network access. A JPEG with more than MAX_JPEG_SCANS scans is refused (413) before decoding.
    ``before_decode(height, width)`` is called after the header checks, before any pixel is decoded (its
    exceptions propagate). Every other failure is a :class:`CodecError` (4xx).
    """
    if not body:
        raise BadRequest("empty request body: send the image bytes")
    limits = Limits.of(bands, band_names, max_pixels, max_bytes, before_decode)
    try:
        if media_type in (JPEG, PNG):
            image = _decode_pil(body, media_type, limits)
        elif media_type == TIFF:
            image = _decode_tiff(body, limits)
        elif media_type == NPY:
            image = _decode_npy(body, limits)
        else:  # parse_content_type guards this
            raise UnsupportedMediaType(f"unsupported {_shown(media_type, 'Content-Type')}")
    except _BeforeDecodeRaised as carried:
        raise carried.__cause__ from None
    _check_pixels(image.height, image.width, max_pixels)
    if image.height < 1 or image.width < 1:
        raise BadRequest(f"the image is empty ({image.height} x {image.width} pixels)")
    return image


def _check_pixels(height: int, width: int, max_pixels: int | None) -> None:
    if max_pixels is not None and height * width > max_pixels:
        raise PayloadTooLarge(
            f"image of {width} x {height} pixels exceeds the server's limit of {max_pixels} pixels "
            "(EARTHMON_MAX_PIXELS): split it into tiles (launcher predict does this)"
        )


# bytes per pixel of Pillow's modes (an unknown mode counts 8, more than any)
_PIL_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "LA": 2, "PA": 2, "La": 2, "RGB": 3, "YCbCr": 3, "LAB": 3, "HSV": 3,
                   "RGBA": 4, "RGBa": 4, "RGBX": 4, "CMYK": 4, "I": 4, "F": 4, "I;16": 2, "I;16L": 2,
                   "I;16B": 2, "I;16N": 2}  # fmt: skip
_PIL_16BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


# a marker after entropy-coded data: 0xFF (fill bytes allowed) then a code other than 0x00 (stuffing) and RSTn
_JPEG_NEXT_MARKER = re.compile(rb"\xff+[^\x00\xff\xd0-\xd7]")


def jpeg_scan_count(body: bytes, stop_after: int = MAX_JPEG_SCANS) -> int:
    """The number of scans (SOS markers, 0xFFDA) of a JPEG, counted by walking its marker segments and skipping
    the entropy-coded data, without decoding; stops counting once past ``stop_after``. Bytes that are not a
    marker where one is expected are skipped up to the next marker, as libjpeg does."""
    i, n, scans = 2, len(body), 0  # after SOI
    while i + 1 < n:
        if body[i] != 0xFF:  # garbage: libjpeg skips to the next marker
            found = _JPEG_NEXT_MARKER.search(body, i)
            if found is None:
                break
            i = found.start()
        while i < n and body[i] == 0xFF:  # fill bytes
            i += 1
        if i >= n:
            break
        code = body[i]
        i += 1
        if code == 0xD9:  # EOI
            break
        if code == 0x01 or 0xD0 <= code <= 0xD8:  # standalone markers (TEM, RSTn, SOI)
            continue
        if i + 2 > n:
            break
        i += int.from_bytes(body[i : i + 2], "big")  # the length counts its own two bytes
        if code == 0xDA:
            scans += 1
            if scans > stop_after:
                break
            found = _JPEG_NEXT_MARKER.search(body, i)  # skip the scan's entropy-coded data
            if found is None:
                break
            i = found.start()
    return scans


def _check_jpeg_scans(body: bytes, height: int, width: int, max_pixels: int | None) -> None:
    scans = jpeg_scan_count(body)
    if scans > MAX_JPEG_SCANS:
        raise PayloadTooLarge(
            f"this JPEG has more than {MAX_JPEG_SCANS} scans (progressive JPEG encoders write about 10; each scan "
            "costs a pass over the whole image): re-encode it as a baseline JPEG, or send PNG or TIFF"
        )
    if max_pixels is not None and scans * height * width > max_pixels * JPEG_SCAN_WORK_FACTOR:
        raise PayloadTooLarge(
            f"this {width} x {height} progressive JPEG has {scans} scans: decoding it would cost more than "
            f"{JPEG_SCAN_WORK_FACTOR} passes over the server's pixel limit (EARTHMON_MAX_PIXELS = {max_pixels}): "
            "re-encode it as a baseline JPEG with fewer pixels, or send PNG or TIFF"
        )


def _decode_pil(body: bytes, media_type: str, limits: Limits) -> DecodedImage:
    from PIL import Image, ImageFile

    expected = "JPEG" if media_type == JPEG else "PNG"
    magic = JPEG_MAGIC if media_type == JPEG else PNG_MAGIC
    if not body.startswith(magic):
        raise BadRequest(f"Content-Type is {media_type} but the body is {_sniff(body)}")
    # gluoncv.data (imported with the model zoo) sets this process-wide to True, which makes PIL pad a truncated
    # image with black instead of failing: a corrupt request must be a 400, never a silent prediction.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        # only the expected format's plugin may open the body (Pillow would otherwise try every format)
        img = Image.open(io.BytesIO(body), formats=[expected])
        fmt = (img.format or "").upper()
        if fmt != expected:
            raise BadRequest(f"Content-Type is {media_type} but the body is {fmt or 'not an image'}")
        sixteen = img.mode in _PIL_16BIT
        out_bands = 1 if sixteen or limits.bands == 1 else 3
        limits.check_bands(out_bands, media_type)
        decoded = img.height * img.width * _PIL_MODE_BYTES.get(img.mode, 8)  # before the conversion
        if media_type == JPEG:  # before any decoding: the scans of a progressive JPEG multiply its cost
            _check_jpeg_scans(body, img.height, img.width, limits.max_pixels)
        limits.check_size(
            img.height, img.width, out_bands, 4 if img.mode == "I" else 2 if sixteen else 1, decoded
        )
        if sixteen:
            array = np.asarray(img)
            array = array.astype(np.uint16 if array.max(initial=0) < 65536 else np.int32)[None]
        else:
            if out_bands == 1:
                img = img.convert("L")
            elif img.mode != "RGB":
                img = img.convert("RGB")
            array = np.asarray(img)
            array = array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)
    except CodecError:
        raise
    except Image.DecompressionBombError as exc:
        raise PayloadTooLarge(f"image too large to decode: {_short(exc)}") from None
    except Exception as exc:  # PIL raises many types for corrupt data
        raise BadRequest(f"corrupt or truncated {media_type} image: {_short(exc)}") from None
    return DecodedImage(np.ascontiguousarray(array), media_type)


def _decode_tiff(body: bytes, limits: Limits) -> DecodedImage:
    if not body.startswith(TIFF_MAGICS):
        raise BadRequest(f"Content-Type is image/tiff but the body is {_sniff(body)}: send a (Geo)TIFF file")
    import rasterio
    from rasterio.io import MemoryFile
    from rasterio.session import DummySession

    try:
        # driver="GTiff": GDAL's list of allowed drivers, so nothing but the TIFF reader opens the body.
        # DummySession: no cloud credentials in GDAL's configuration while it reads a caller's bytes (rasterio would
        # otherwise build a boto3 session per request from the container's environment: ~50-150 ms, and the keys).
        with (
            rasterio.Env(session=DummySession(), **SAFE_GDAL_OPTIONS),
            MemoryFile(body, ext=".tif") as mem,
            mem.open(driver="GTiff") as src,
        ):
            if src.driver != "GTiff":  # pragma: no cover - GDAL honours the list
                raise BadRequest("the body is not a TIFF")
            limits.check_bands(src.count, TIFF)
            if any("complex" in d for d in src.dtypes):
                raise BadRequest(
                    f"the TIFF's bands are complex ({src.dtypes[0]}): send real-valued bands (e.g. the "
                    "amplitude, float32)"
                )
            if len(set(src.dtypes)) > 1:  # pragma: no cover - GTiff has one sample format per file
                raise BadRequest(
                    f"the TIFF's bands have different types ({', '.join(sorted(set(src.dtypes)))})"
                )
            itemsize = max(np.dtype(d).itemsize for d in src.dtypes) if src.count else 1
            block_h, block_w = src.block_shapes[0] if src.count else (1, 1)
            pixel_interleaved = (src.interleaving is None) or src.interleaving.name == "PIXEL"
            block = block_h * block_w * itemsize * (src.count if pixel_interleaved else 1)
            limits.check_size(src.height, src.width, src.count, itemsize, extra=block)
            # one copy: GDAL decodes straight into this array (its block cache is GDAL_CACHE_BYTES at most)
            array = np.empty((src.count, src.height, src.width), dtype=src.dtypes[0])
            src.read(out=array)
            crs = src.crs
            transform = src.transform if (src.crs is not None or not src.transform.is_identity) else None
            nodata = src.nodata
    except CodecError:
        raise
    except MemoryError:
        raise PayloadTooLarge("the TIFF is too large to decode: send a smaller image") from None
    except Exception as exc:  # rasterio/GDAL raise several types for unreadable data
        raise BadRequest(f"corrupt or unreadable TIFF: {_short(_strip_vsimem(str(exc)))}") from None
    if array.ndim != 3 or array.shape[0] < 1:
        raise BadRequest("the TIFF has no bands")
    return DecodedImage(array, TIFF, crs=crs, transform=transform, nodata=nodata)


_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"


def _strip_vsimem(message: str) -> str:
    """GDAL's in-memory file names (``/vsimem/...`` paths, the bare ``<uuid>.tif``) replaced by "the body"."""
    message = re.sub(r"'?/vsimem/[^\s':]*'?", "the body", message)
    return re.sub(rf"'?(?:[\w./-]*/)?{_UUID}(?:\.\w+)?'?", "the body", message)


def npy_header(body: bytes) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """``(shape, fortran_order, dtype, data offset)`` of a .npy body, read without loading the array."""
    from numpy.lib import format as npformat

    if not body.startswith(NPY_MAGIC):
        raise BadRequest(f"Content-Type is application/x-npy but the body is {_sniff(body)}")
    fp = io.BytesIO(body)
    try:
        version = npformat.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = npformat.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, fortran, dtype = npformat.read_array_header_2_0(fp)
        else:
            raise ValueError(f"format version {version} is not supported (numpy.save writes 1.0)")
    except Exception as exc:
        raise BadRequest(
            f"corrupt .npy header: {_short(exc)} (write it with numpy.save, no pickled objects)"
        ) from None
    return tuple(int(n) for n in shape), bool(fortran), np.dtype(dtype), fp.tell()


def _decode_npy(body: bytes, limits: Limits) -> DecodedImage:
    shape, fortran, dtype, offset = npy_header(body)
    if dtype.hasobject or dtype.kind not in "uif" or dtype.itemsize > 8 or dtype.fields is not None:
        raise BadRequest(f"the .npy array must be numeric (int, uint or float), got {dtype}")
    if len(shape) == 4 and shape[0] == 1:
        shape = shape[1:]
        squeeze = True
    else:
        squeeze = False
    if len(shape) == 2:
        chw, move = (1, *shape), False
    elif len(shape) == 3:
        channels_last = shape[-1] == limits.bands and shape[0] != limits.bands
        move = channels_last or (limits.bands is None and shape[-1] <= 4 < shape[0])
        chw = (shape[2], shape[0], shape[1]) if move else shape
    else:
        raise BadRequest(f"the .npy array must be (H, W), (C, H, W) or (H, W, C), got shape {shape}")
    if any(n < 0 for n in shape):
        raise BadRequest(f"the .npy header declares a negative dimension: {shape}")
    limits.check_bands(chw[0], NPY)
    limits.check_size(chw[1], chw[2], chw[0], dtype.itemsize)
    count = math.prod(shape)
    if len(body) - offset != count * dtype.itemsize:
        raise BadRequest(
            f"the .npy body holds {len(body) - offset} data bytes, its header declares {count * dtype.itemsize} "
            f"({shape} {dtype}): the file is truncated or padded"
        )
    array = np.frombuffer(body, dtype=dtype, count=count, offset=offset)
    array = array.reshape((1, *shape) if squeeze else shape, order="F" if fortran else "C")
    if squeeze:
        array = array[0]
    if array.ndim == 2:
        array = array[None]
    elif move:
        array = np.moveaxis(array, -1, 0)
    return DecodedImage(np.array(array, order="C", dtype=dtype.newbyteorder("=")), NPY)


# ----------------------------------------------------------------------------------------------- encoding
def _palette(num_classes: int) -> list[int]:
    """A fixed, distinguishable colour per class id (class 0 black, 1 white, then a spread); 255 grey."""
    base = [(0, 0, 0), (255, 255, 255), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200)]
    colours = []
    for i in range(256):
        if i < len(base):
            colours.append(base[i])
        elif i == IGNORE_CLASS:
            colours.append((128, 128, 128))
        else:
            colours.append(((i * 67) % 256, (i * 131) % 256, (i * 197) % 256))
    return [c for rgb in colours for c in rgb]


def encode_png(mask: np.ndarray, num_classes: int) -> bytes:
    """Indexed (palette) PNG whose pixel values are the class ids."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8), mode="P")
    img.putpalette(_palette(num_classes))
    out = io.BytesIO()
    img.save(out, format="PNG", optimize=False, compress_level=1)
    return out.getvalue()


def encode_geotiff(
    mask: np.ndarray, crs: Any = None, transform: Any = None, class_names: list[str] | None = None
) -> bytes:
    """Single-band uint8 GeoTIFF of class ids (nodata 255), keeping the input's CRS and transform."""
    import rasterio
    from rasterio.io import MemoryFile
    from rasterio.session import DummySession

    height, width = mask.shape
    profile = {
        "driver": "GTiff",
        "height": height,
        "width": width,
        "count": 1,
        "dtype": "uint8",
        "nodata": IGNORE_CLASS,
        "compress": "deflate",
    }
    if height >= 256 and width >= 256:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    if crs is not None:
        profile["crs"] = crs
    if transform is not None:
        profile["transform"] = transform
    with rasterio.Env(session=DummySession(), GDAL_PAM_ENABLED="NO"), MemoryFile() as mem:
        with mem.open(**profile) as dst:
            dst.write(np.asarray(mask, dtype=np.uint8), 1)
            palette = _palette(256)
            dst.write_colormap(1, {i: (*palette[3 * i : 3 * i + 3], 255) for i in range(256)})
            if class_names:
                dst.update_tags(1, class_names=json.dumps(list(class_names)))
        return mem.read()


def summarize(
    mask: np.ndarray,
    num_classes: int,
    class_names: list[str] | None = None,
    building_class: int | None = None,
    min_building_pixels: int = 0,
) -> dict:
    """Class pixel counts and fractions over valid pixels, and the number of buildings (connected components
    of ``building_class``, 4-connected, ignoring those under ``min_building_pixels``)."""
    counts = np.bincount(mask.ravel(), minlength=256)
    valid = int(counts[:num_classes].sum())
    names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
    classes = [
        {
            "id": i,
            "name": names[i] if i < len(names) else str(i),
            "pixels": int(counts[i]),
            "fraction": (float(counts[i]) / valid) if valid else 0.0,
        }
        for i in range(num_classes)
    ]
    summary: dict[str, Any] = {
        "height": int(mask.shape[0]),
        "width": int(mask.shape[1]),
        "valid_pixels": valid,
        "ignored_pixels": int(counts[IGNORE_CLASS]),
        "classes": classes,
    }
    if building_class is not None:
        summary["building_class"] = building_class
        summary["building_count"] = count_components(mask == building_class, min_building_pixels)
        summary["min_building_pixels"] = min_building_pixels
    return summary


def count_components(binary: np.ndarray, min_pixels: int = 0) -> int:
    """Number of 4-connected components of a boolean mask with at least ``min_pixels`` pixels."""
    from scipy import ndimage

    labels, n = ndimage.label(binary)
    if n == 0 or min_pixels <= 1:
        return int(n)
    sizes = np.bincount(labels.ravel())[1:]
    return int((sizes >= min_pixels).sum())


def encode_json(summary: dict) -> bytes:
    return json.dumps(summary, separators=(",", ":")).encode()


# ----------------------------------------------------------------------------------------------- protobuf
def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


def _packed_varints(number: int, values) -> bytes:
    return _field(number, b"".join(_varint(int(v) & 0xFFFFFFFFFFFFFFFF) for v in values))


def _feature_entry(key: str, value: bytes) -> bytes:
    """One entry of ``map<string, Value> features = 1``."""
    return _field(1, _field(1, key.encode()) + _field(2, value))


def encode_record(probabilities: np.ndarray) -> bytes:
    """Serialise (C, H, W) probabilities as one protobuf ``aialgs.data.Record`` (SageMaker's record.proto).

    features["target"] = Value{float32_tensor = Float32Tensor{values (packed), shape [1, C, H, W]}}
    features["shape"]  = Value{int32_tensor = Int32Tensor{values [1, C, H, W]}}
    """
    probabilities = np.asarray(probabilities, dtype="<f4")
    shape = (1, *probabilities.shape)
    tensor = _field(1, probabilities.tobytes(order="C")) + _packed_varints(3, shape)
    target = _field(2, tensor)  # Value.float32_tensor = 2
    shape_value = _field(7, _packed_varints(1, shape))  # Value.int32_tensor = 7 {values = 1}
    return _feature_entry("shape", shape_value) + _feature_entry("target", target)


def recordio_wrap(payload: bytes) -> bytes:
    """One RecordIO record (MXNet / SageMaker framing): magic, length, payload, zero padding to 4 bytes."""
    if len(payload) > _RECORDIO_MAX_LENGTH:
        raise PayloadTooLarge(
            f"class probabilities of {len(payload) / 2**20:.0f} MiB exceed one RecordIO record (512 MiB): "
            "ask for image/png or image/tiff, or send a smaller image"
        )
    pad = (-len(payload)) % 4
    return struct.pack("<II", RECORDIO_MAGIC, len(payload)) + payload + b"\x00" * pad


def encode_probabilities(probabilities: np.ndarray) -> bytes:
    """The built-in's probability response: a RecordIO-wrapped Record (see :func:`encode_record`)."""
    return recordio_wrap(encode_record(probabilities))


def read_recordio(data: bytes) -> list[bytes]:
    """Split RecordIO framing into record payloads (for clients and tests)."""
    records, offset = [], 0
    while offset < len(data):
        if len(data) - offset < 8:
            raise ValueError("truncated RecordIO header")
        magic, length = struct.unpack_from("<II", data, offset)
        if magic != RECORDIO_MAGIC:
            raise ValueError(f"bad RecordIO magic {magic:#x} at byte {offset}")
        length &= _RECORDIO_MAX_LENGTH
        start = offset + 8
        if start + length > len(data):
            raise ValueError("truncated RecordIO record")
        records.append(data[start : start + length])
        offset = start + length + ((-length) % 4)
    return records
