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
import struct
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


# ----------------------------------------------------------------------------------------------- negotiation
def _media_type(header: str) -> str:
    media = header.split(";", 1)[0].strip().lower()
    return _ALIASES.get(media, media)


def parse_content_type(header: str | None) -> str:
    """The request's media type, or UnsupportedMediaType naming the accepted ones."""
    media = _media_type(header or "")
    if media not in REQUEST_TYPES:
        shown = repr(header) if header else "no Content-Type"
        raise UnsupportedMediaType(
            f"unsupported Content-Type {shown}: send one of {', '.join(REQUEST_TYPES)}"
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
    raise NotAcceptable(f"cannot answer Accept {header!r}: ask for one of {', '.join(RESPONSE_TYPES)}")


# ----------------------------------------------------------------------------------------------- decoding
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


def decode_request(body: bytes, media_type: str, bands: int | None = None, max_pixels: int | None = None):
    """Decode a request body into a :class:`DecodedImage`.

    ``bands`` (the model's input band count) picks the colour conversion of JPEG/PNG and the axis order of
    3-D arrays; ``max_pixels`` bounds the decoded size (decompression bombs) with PayloadTooLarge.
    """
    if not body:
        raise BadRequest("empty request body: send the image bytes")
    if media_type in (JPEG, PNG):
        image = _decode_pil(body, media_type, bands, max_pixels)
    elif media_type == TIFF:
        image = _decode_tiff(body, max_pixels)
    elif media_type == NPY:
        image = _decode_npy(body, bands)
    else:  # parse_content_type guards this
        raise UnsupportedMediaType(f"unsupported Content-Type {media_type!r}")
    _check_pixels(image.height, image.width, max_pixels)
    if image.height < 1 or image.width < 1:
        raise BadRequest(f"the image is empty ({image.height} x {image.width} pixels)")
    return image


def _check_pixels(height: int, width: int, max_pixels: int | None) -> None:
    if max_pixels is not None and height * width > max_pixels:
        raise PayloadTooLarge(
            f"image of {width} x {height} pixels exceeds the server's limit of {max_pixels} pixels "
            "(SAGEMAKER_MAX_PIXELS): split it into tiles (launcher predict does this)"
        )


def _decode_pil(body: bytes, media_type: str, bands: int | None, max_pixels: int | None) -> DecodedImage:
    from PIL import Image, ImageFile

    # gluoncv.data (imported with the model zoo) sets this process-wide to True, which makes PIL pad a truncated
    # image with black instead of failing: a corrupt request must be a 400, never a silent prediction.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        img = Image.open(io.BytesIO(body))
        fmt = (img.format or "").upper()
        expected = "JPEG" if media_type == JPEG else "PNG"
        if fmt != expected:
            raise BadRequest(f"Content-Type is {media_type} but the body is {fmt or 'not an image'}")
        _check_pixels(img.height, img.width, max_pixels)
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            array = np.asarray(img)
            array = array.astype(np.uint16 if array.max(initial=0) < 65536 else np.int32)[None]
        else:
            if bands == 1:
                img = img.convert("L")
            elif img.mode != "RGB":
                img = img.convert("RGB")
            array = np.asarray(img)
            array = array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)
    except CodecError:
        raise
    except Image.DecompressionBombError as exc:
        raise PayloadTooLarge(f"image too large to decode: {exc}") from exc
    except Exception as exc:  # PIL raises many types for corrupt data
        raise BadRequest(f"corrupt or truncated {media_type} image: {exc}") from exc
    return DecodedImage(np.ascontiguousarray(array), media_type)


def _decode_tiff(body: bytes, max_pixels: int | None) -> DecodedImage:
    import rasterio
    from rasterio.io import MemoryFile

    try:
        with rasterio.Env(GDAL_PAM_ENABLED="NO"), MemoryFile(body) as mem, mem.open() as src:
            _check_pixels(src.height, src.width, max_pixels)
            array = src.read()
            crs = src.crs
            transform = src.transform if (src.crs is not None or not src.transform.is_identity) else None
            nodata = src.nodata
    except CodecError:
        raise
    except Exception as exc:  # rasterio/GDAL raise several types for unreadable data
        raise BadRequest(f"corrupt or unreadable TIFF: {exc}") from exc
    return DecodedImage(array, TIFF, crs=crs, transform=transform, nodata=nodata)


def _decode_npy(body: bytes, bands: int | None) -> DecodedImage:
    try:
        array = np.load(io.BytesIO(body), allow_pickle=False)
    except Exception as exc:
        raise BadRequest(f"corrupt .npy body: {exc} (write it with numpy.save, no pickled objects)") from exc
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "uif" or array.dtype.itemsize > 8:
        raise BadRequest(f"the .npy array must be numeric (int, uint or float), got {array.dtype}")
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 2:
        array = array[None]
    elif array.ndim == 3:
        channels_last = array.shape[-1] == bands and array.shape[0] != bands
        if channels_last or (bands is None and array.shape[-1] <= 4 < array.shape[0]):
            array = np.moveaxis(array, -1, 0)
    else:
        raise BadRequest(f"the .npy array must be (H, W), (C, H, W) or (H, W, C), got shape {array.shape}")
    return DecodedImage(np.ascontiguousarray(array), NPY)


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
    with rasterio.Env(GDAL_PAM_ENABLED="NO"), MemoryFile() as mem:
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
