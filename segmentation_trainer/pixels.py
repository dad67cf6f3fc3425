"""Pixels to network inputs: the one normalisation used by training, evaluation and serving (pure numpy, no MXNet).

Training and serving must see the same numbers for the same pixels, so there is one rule: a pixel is invalid when any
band is not finite or when every band equals the nodata value; ``(pixel * scale - mean) / std`` per band; invalid
pixels become 0 in every band (the training mean).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def valid_mask(image: np.ndarray, nodata: float | None) -> np.ndarray:
    """(H, W) True where every band is finite and the pixel is not nodata in all bands."""
    ok = np.ones(image.shape[1:], dtype=bool)
    if np.issubdtype(image.dtype, np.floating):
        ok &= np.isfinite(image).all(axis=0)
    if nodata is not None and not (isinstance(nodata, float) and math.isnan(nodata)):
        ok &= ~(image == nodata).all(axis=0)
    return ok


def normalise(
    image: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    scale: float = 1.0,
    nodata: float | None = None,
) -> np.ndarray:
    """(C, H, W) raw pixels -> float32 ``(image * scale - mean) / std`` per band (a zero std counts as 1), invalid
    pixels (see :func:`valid_mask`) 0 in every band."""
    channels = image.shape[0]
    mean_arr = np.asarray(mean, dtype=np.float32).reshape(-1, 1, 1)
    std_arr = np.asarray(std, dtype=np.float32).reshape(-1, 1, 1)
    if mean_arr.shape[0] != channels or std_arr.shape[0] != channels:
        raise ValueError(f"normalisation has {mean_arr.shape[0]} bands, the image {channels}")
    valid = valid_mask(image, nodata)
    out = image.astype(np.float32)
    if scale != 1.0:
        out *= np.float32(scale)
    out -= mean_arr
    out /= np.where(std_arr == 0, 1, std_arr)
    if not valid.all():
        out[:, ~valid] = 0.0
    np.nan_to_num(out, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    return out
