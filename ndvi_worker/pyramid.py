"""Pure overview pyramid logic: the NDVI overviews computed per chunk, while the full resolution is computed.

GDAL's COG driver spends most of its time building AVERAGE overviews from the full resolution (4 of its 5 s on a
full tile here). Each processing chunk already holds its NDVI, so its share of every overview level is a few
reshapes and sums away; the chunks' overview blocks tile each level exactly because the chunk size is a multiple
of 2**levels (only the last row / column of chunks has odd sizes, and ceil-halving composes). The averages are
exact means of the valid full-resolution pixels under each overview pixel (not averages of averages).
"""

from __future__ import annotations

import numpy as np


def overview_count(shape: tuple[int, int], blocksize: int) -> int:
    """GDAL's COG default: halve until the largest side fits in one block (10980 -> 5 levels at 512)."""
    rows, cols = shape
    count = 0
    while max(rows, cols) > blocksize:
        rows, cols = -(-rows // 2), -(-cols // 2)
        count += 1
    return count


def overview_shape(shape: tuple[int, int], level: int) -> tuple[int, int]:
    rows, cols = shape
    for _ in range(level):
        rows, cols = -(-rows // 2), -(-cols // 2)
    return rows, cols


def _halve(a: np.ndarray) -> np.ndarray:
    """Sum of 2 x 2 blocks, padding odd sides with zeros."""
    h, w = a.shape
    if h % 2 or w % 2:
        a = np.pad(a, ((0, h % 2), (0, w % 2)))
    pairs = a.reshape(a.shape[0] // 2, 2, a.shape[1])
    rows = pairs[:, 0, :] + pairs[:, 1, :]  # contiguous row pairs first, then strided columns:
    return rows[:, 0::2] + rows[:, 1::2]  # ~7x faster than reshape(...).sum(axis=(1, 3))


def chunk_overviews(
    ndvi: np.ndarray,
    invalid: np.ndarray,
    levels: int,
    zeroed: bool = False,
    level1: tuple[np.ndarray, np.ndarray] | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(mean NDVI, invalid) of this chunk at overview levels 1..levels (level k is 2**k times coarser).

    ``zeroed``: ``ndvi`` is already 0 where ``invalid`` (what :func:`ndvi_worker.ndvi.ndvi_core` returns), so it
    is its own masked sum (one pass saved). The valid counts start as bytes (0-4 after the first halving), a
    quarter of the float traffic. ``level1``: the first halving already done (the zeroed NDVI's float32 sums and
    the uint8 valid counts of each 2 x 2 block, as :func:`ndvi_worker.ndvi.ndvi_chunk` computes them while each
    strip is in the cache); ``ndvi`` and ``invalid`` are then not read.
    """
    if level1 is not None:
        total, count = level1[0], level1[1].astype(np.float32)
    else:
        total = ndvi if zeroed else np.where(invalid, np.float32(0), ndvi)
        count = _halve(np.logical_not(invalid).view(np.uint8)).astype(np.float32)
    out = []
    for level in range(levels):
        if level or level1 is None:
            total = _halve(total)
        if level:
            count = _halve(count)
        empty = count == 0
        mean = total / np.maximum(count, np.float32(1.0))
        out.append((mean, empty))
    return out


def band_overviews(bands: np.ndarray, nodata: float, levels: int) -> list[np.ndarray]:
    """AVERAGE overviews of a chunk of encoded output bands (``(bands, rows, cols)``, int16 or float32, ``nodata``
    an int16 value or NaN) at levels 1..levels, each ``(bands, ceil(rows / 2**k), ceil(cols / 2**k))`` in the same
    dtype: per band, the mean of the valid pixels (not ``nodata``) of the full resolution under each overview pixel,
    ``nodata`` where there is none (the composites' bands: NDVI, counts, days).

    int16 means are rounded half away from zero, as GDAL's AVERAGE rounds them: level 1 is then GDAL's own (its
    COG driver computes each level from the previous one, so its deeper levels average rounded averages; these are
    exact means of the full resolution, like :func:`chunk_overviews`). int16 sums are exact integers (int32 up to
    level 7, int64 beyond; the float64 division of two such integers rounds exactly); float32 means are computed in
    float64."""
    integer = bands.dtype == np.int16
    # int32 sums of int16 values hold the 4**7 pixels under a level-7 pixel without overflow; int64 beyond
    acc = np.int32 if levels <= 7 else np.int64
    out: list[list[np.ndarray]] = [[] for _ in range(levels)]
    for band in bands:
        if integer:
            invalid = band == nodata
            count = _halve(np.logical_not(invalid).view(np.uint8)).astype(acc)
            # the raw sum, nodata included, then the nodata taken out of it: no masked copy of the full resolution
            total = _halve(band.astype(acc))
            if invalid.any():
                real = 4 - _padding(band.shape)  # pixels under each level-1 pixel (fewer past an odd edge)
                total -= (real - count) * acc(nodata)
        else:
            valid = ~np.isnan(band)
            total = _halve(np.where(valid, band, np.float32(0)).astype(np.float64))
            count = _halve(valid.view(np.uint8)).astype(np.int32)
        for level in range(levels):
            if level:
                total = _halve(total)
                count = _halve(count)
            empty = count == 0
            mean = total / np.maximum(count, 1)
            if integer:
                mean = np.trunc(mean + np.copysign(0.5, mean))  # half away from zero
                mean = mean.astype(np.int16)
                mean[empty] = np.int16(nodata)
            else:
                mean = mean.astype(np.float32)
                mean[empty] = np.float32(np.nan)
            out[level].append(mean)
    return [np.stack(level) for level in out]


def _padding(shape: tuple[int, int]) -> np.ndarray | int:
    """Per level-1 pixel, how many of its 4 full-resolution pixels lie beyond an odd edge (padding, not data)."""
    rows, cols = shape
    if not (rows % 2 or cols % 2):
        return 0
    pad = np.zeros((-(-rows // 2), -(-cols // 2)), dtype=np.int32)
    if rows % 2:
        pad[-1, :] += 2
    if cols % 2:
        pad[:, -1] += 2
    if rows % 2 and cols % 2:
        pad[-1, -1] -= 1
    return pad
