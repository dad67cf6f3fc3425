"""The I/O edge of ``launcher predict``: read an image tile by tile, invoke the model, write the stitched mask.

The tiling itself is pure (:mod:`launcher.model.tiles`). Invokers send one tile and return the response body:
a SageMaker endpoint (``sagemaker-runtime`` InvokeEndpoint), an HTTP server (``--url``, e.g. the image's
``serve`` on this machine) or SageMaker SDK local mode (``--local``: the endpoint ``launcher deploy --local``
started on localhost:8080).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from launcher.errors import PredictError
from launcher.model.tiles import Tile, max_tile_side, plan_tiles, stitch

TIFF = "image/tiff"
NPY = "application/x-npy"
PNG = "image/png"
REQUEST_TYPES = (TIFF, NPY)
MASK_TYPES = (PNG, TIFF)

Invoker = Callable[[bytes, str, str], bytes]


# ----------------------------------------------------------------------------------------------- invokers
def endpoint_invoker(runtime_client: Any, endpoint_name: str) -> Invoker:
    """InvokeEndpoint on a SageMaker endpoint (the client comes from launcher.aws: retries, rate limit)."""

    def invoke(body: bytes, content_type: str, accept: str) -> bytes:
        try:
            response = runtime_client.invoke_endpoint(
                EndpointName=endpoint_name, ContentType=content_type, Accept=accept, Body=body
            )
        except Exception as exc:
            if type(exc).__name__ == "ModelError" or "ModelError" in str(exc):
                raise PredictError(f"the model answered with an error: {exc}") from exc
            raise
        content = response["Body"].read(MAX_RESPONSE_BYTES + 1)
        if len(content) > MAX_RESPONSE_BYTES:
            raise PredictError(
                f"{endpoint_name} sent more than {MAX_RESPONSE_BYTES // 2**20} MiB for one tile"
            )
        return content

    return invoke


MAX_RESPONSE_BYTES = 256 * 2**20  # a mask of the largest tile is a few MB; more is not a mask


DEADLINE_S = 300.0  # one tile, all of it: connecting, sending, the model's work, the answer


def url_invoker(
    url: str,
    timeout_s: float = 120.0,
    max_response_bytes: int = MAX_RESPONSE_BYTES,
    deadline_s: float = DEADLINE_S,
) -> Invoker:
    """POST to ``URL/invocations`` (an image's ``serve`` reached directly): ``timeout_s`` per read, ``deadline_s``
    for the whole request (a server trickling bytes cannot hold it), redirects refused (the tile would go there)."""
    import requests

    from launcher.errors import ResponseError
    from launcher.http import fetch

    if not url.startswith(("http://", "https://")):
        raise PredictError(f"--url {url!r} must start with http:// or https:// (e.g. http://localhost:8080)")
    session = requests.Session()
    target = url.rstrip("/") + "/invocations"

    def invoke(body: bytes, content_type: str, accept: str) -> bytes:
        try:
            answer = fetch(
                session,
                "POST",
                target,
                data=body,
                headers={"Content-Type": content_type, "Accept": accept},
                max_bytes=max_response_bytes,
                deadline_s=deadline_s,
                read_timeout_s=timeout_s,
            )
        except ResponseError as exc:
            raise PredictError(str(exc)) from None
        except requests.ConnectionError as exc:
            raise PredictError(
                f"cannot connect to {target}: is the server running? (start it with `segmentation-trainer serve` "
                f"or `docker run IMAGE serve`) ({_printable(str(exc), 200)})"
            ) from None
        except requests.Timeout:
            raise PredictError(f"{target} did not answer within {timeout_s:g} s") from None
        except requests.RequestException as exc:
            raise PredictError(f"request to {target} failed: {_printable(str(exc), 300)}") from None
        if answer.status != 200:
            raise PredictError(
                f"{target} answered {answer.status}: {_printable(answer.body.decode('utf-8', 'replace'), 500)}"
            )
        return answer.body

    return invoke


def _printable(text: str, limit: int) -> str:
    """A server's text made safe for a terminal: no control characters (escape sequences), cut to ``limit``."""
    flat = "".join(c if c.isprintable() else " " for c in text)
    flat = " ".join(flat.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def local_invoker(endpoint_name: str = "local") -> Invoker:  # pragma: no cover - needs Docker
    """SageMaker SDK local mode's runtime client (the container ``launcher deploy --local`` runs)."""
    from sagemaker.local import LocalSagemakerRuntimeClient

    return endpoint_invoker(LocalSagemakerRuntimeClient(), endpoint_name)


# ----------------------------------------------------------------------------------------------- encodings
def encode_tile(array: np.ndarray, content_type: str) -> bytes:
    """A (C, H, W) tile as an uncompressed TIFF (predictable size) or a .npy array."""
    if content_type == NPY:
        out = io.BytesIO()
        np.save(out, np.ascontiguousarray(array), allow_pickle=False)
        return out.getvalue()
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.io import MemoryFile

    count, height, width = array.shape
    with warnings.catch_warnings(), MemoryFile() as mem:
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with mem.open(
            driver="GTiff",
            width=width,
            height=height,
            count=count,
            dtype=array.dtype.name,
            interleave="pixel",
        ) as dst:
            dst.write(array)
        return mem.read()


TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# GDAL settings for decoding answers: no sidecar files, no PAM, georeferencing from the file itself
SAFE_GDAL_OPTIONS = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_PAM_ENABLED": "NO",
    "GDAL_GEOREF_SOURCES": "INTERNAL",
}


def decode_mask(body: bytes, accept: str, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A class-id mask from an ``image/png`` or ``image/tiff`` response (read by GDAL, no Pillow needed).

    The answer is decoded only as the format asked for (signature checked, then GDAL's PNG or GTiff driver
    alone: never VRT, WMS or any description that reads files or URLs), and its header must declare exactly one
    8-bit band of ``shape`` (height, width), at a decoding cost within MAX_MASK_BYTES, before any pixel is read.
    """
    from rasterio.env import Env
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.io import MemoryFile
    from rasterio.session import DummySession

    driver, magics = ("PNG", (PNG_MAGIC,)) if accept == PNG else ("GTiff", TIFF_MAGICS)
    if accept not in MASK_TYPES or not body.startswith(magics):
        raise PredictError(
            f"the response is not a readable {accept} mask: wrong signature ({len(body)} bytes starting {body[:16]!r})"
        )
    try:
        # DummySession: the user's cloud credentials stay out of GDAL's configuration while it reads the answer
        with (
            warnings.catch_warnings(),
            Env(session=DummySession(), **SAFE_GDAL_OPTIONS),
            MemoryFile(body) as mem,
        ):
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with mem.open(driver=driver) as src:
                check_mask_header(src, accept, shape)
                return src.read(1)
    except PredictError:
        raise
    except Exception as exc:
        raise PredictError(
            f"the response is not a readable {accept} mask: {_printable(str(exc), 300)}"
        ) from None


MAX_MASK_BYTES = 256 * 2**20  # what decoding one answer may cost: the mask of a tile, and one block of it


def check_mask_header(
    src: Any, accept: str, shape: tuple[int, int] | None, budget: int | None = None
) -> None:
    """The header of an answer, before any pixel is decoded: exactly one uint8 band (a pixel-interleaved TIFF
    decodes every band of a block to give band 1), the tile's size, and a decoding cost (the mask plus one block)
    within ``budget`` bytes [default: MAX_MASK_BYTES]."""
    budget = MAX_MASK_BYTES if budget is None else budget
    dtype = src.dtypes[0] if src.count else "-"
    if src.count != 1 or dtype != "uint8":
        raise PredictError(
            f"the {accept} response has {src.count} band(s) of {dtype}: a mask has one uint8 band of class ids"
        )
    if shape is not None and (src.height, src.width) != tuple(shape):
        raise PredictError(
            f"the {accept} response is {src.width} x {src.height} pixels, the tile sent was "
            f"{shape[1]} x {shape[0]}"
        )
    block_h, block_w = src.block_shapes[0]
    cost = src.height * src.width + block_h * block_w
    if cost > budget:
        raise PredictError(
            f"the {accept} response would take {cost / 2**20:.0f} MiB to decode ({src.width} x {src.height} "
            f"pixels in blocks of {block_w} x {block_h}): more than the {budget // 2**20} MiB a mask may cost"
        )


# ----------------------------------------------------------------------------------------------- the run
@dataclass(frozen=True)
class PredictSummary:
    source: str
    out: str
    height: int
    width: int
    bands: int
    tiles: int
    tile_side: int
    class_pixels: dict[int, int]

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "class_pixels": {str(k): v for k, v in self.class_pixels.items()}}


def predict_file(
    source: str | Path,
    out: str | Path,
    invoke: Invoker,
    content_type: str = TIFF,
    accept: str = PNG,
    max_payload_mb: float = 6.0,
    margin: int = 64,
    concurrency: int = 2,
    on_tile: Callable[[int, int], None] | None = None,
) -> PredictSummary:
    """Predict a raster of any size: tiles within the payload limit, ``concurrency`` requests in flight,
    the mask written as a GeoTIFF with the source's CRS and transform (255 = not predicted / nodata)."""
    import rasterio

    if content_type not in REQUEST_TYPES:
        raise ValueError(f"content type must be one of {REQUEST_TYPES}, got {content_type!r}")
    if accept not in MASK_TYPES:
        raise ValueError(f"accept must be one of {MASK_TYPES}, got {accept!r}")
    with rasterio.open(source) as src:
        dtype = np.dtype(src.dtypes[0])
        side = max_tile_side(src.count, dtype.itemsize, max_payload_mb)
        tiles = plan_tiles(src.height, src.width, side, margin)
        profile = {
            "driver": "GTiff",
            "height": src.height,
            "width": src.width,
            "count": 1,
            "dtype": "uint8",
            "nodata": 255,
            "compress": "deflate",
            "crs": src.crs,
            "transform": src.transform,
        }
        if src.height >= 256 and src.width >= 256:
            profile.update(tiled=True, blockxsize=256, blockysize=256)
        height, width, bands = src.height, src.width, src.count

        def read(tile: Tile) -> bytes:
            from rasterio.windows import Window

            w = tile.read
            return encode_tile(src.read(window=Window(w.col, w.row, w.width, w.height)), content_type)

        def results() -> Iterator[tuple[Tile, np.ndarray]]:
            done = 0
            with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
                pending: dict[Future, Tile] = {}
                queue = iter(tiles)
                while True:
                    while len(pending) < 2 * max(1, concurrency):
                        tile = next(queue, None)
                        if tile is None:
                            break
                        pending[pool.submit(invoke, read(tile), content_type, accept)] = tile
                    if not pending:
                        return
                    finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in finished:
                        tile = pending.pop(future)
                        try:
                            body = future.result()
                        except PredictError as exc:
                            raise PredictError(
                                f"tile {tile.index + 1}/{len(tiles)} ({tile.read}): {exc}"
                            ) from exc
                        done += 1
                        if on_tile:
                            on_tile(done, len(tiles))
                        yield tile, decode_mask(body, accept, (tile.read.height, tile.read.width))

        mask = stitch(height, width, results())
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.write(mask, 1)
    tmp.replace(out)
    counts = np.bincount(mask.ravel(), minlength=256)
    return PredictSummary(
        source=str(source),
        out=str(out),
        height=height,
        width=width,
        bands=bands,
        tiles=len(tiles),
        tile_side=side,
        class_pixels={i: int(c) for i, c in enumerate(counts) if c},
    )
