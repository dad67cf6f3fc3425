"""The I/O edge of ``launcher predict``: read an image tile by tile, invoke the model, write the stitched mask.

The tiling itself is pure (:mod:`launcher.model_tiles`). Invokers send one tile and return the response body:
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

from launcher.model_tiles import Tile, max_tile_side, plan_tiles, stitch

TIFF = "image/tiff"
NPY = "application/x-npy"
PNG = "image/png"
REQUEST_TYPES = (TIFF, NPY)
MASK_TYPES = (PNG, TIFF)

Invoker = Callable[[bytes, str, str], bytes]


class PredictError(RuntimeError):
    """A tile the model could not predict (the message says which and why)."""


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
        return response["Body"].read()

    return invoke


def url_invoker(url: str, timeout_s: float = 120.0) -> Invoker:
    """POST to ``URL/invocations`` (an image's ``serve`` reached directly)."""
    import requests

    session = requests.Session()
    target = url.rstrip("/") + "/invocations"

    def invoke(body: bytes, content_type: str, accept: str) -> bytes:
        response = session.post(
            target, data=body, headers={"Content-Type": content_type, "Accept": accept}, timeout=timeout_s
        )
        if response.status_code != 200:
            raise PredictError(f"{target} answered {response.status_code}: {response.text[:500]}")
        return response.content

    return invoke


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


def decode_mask(body: bytes, accept: str) -> np.ndarray:
    """A class-id mask from an ``image/png`` or ``image/tiff`` response (read by GDAL, no Pillow needed)."""
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.io import MemoryFile

    try:
        with warnings.catch_warnings(), MemoryFile(body) as mem:
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with mem.open() as src:
                return src.read(1)
    except Exception as exc:
        raise PredictError(f"the response is not a readable {accept} mask: {exc} ({body[:200]!r})") from exc


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
                        yield tile, decode_mask(body, accept)

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
