"""Pure NDVI science on numpy arrays: reflectance offset, SCL on the 10 m grid, masks, NDVI, statistics.

Every function takes and returns arrays or small dicts, so each rule can be tested on a 3 x 3 array.

The rules (README "The science"):

* reflectance = (DN + add_dn) / 10000, with ``add_dn`` from :func:`ndvi_worker.stac.decide_offset`;
  NDVI is scale-invariant, so it is computed on ``DN + add_dn`` directly.
* masked: DN 0 in either band (nodata); SCL class in the mask set; SCL 0 (no data) always; reflectance at or
  below 0.0001 in either band (``DN + add_dn <= 1``): the DN-1 clamp of offset-applied COGs and negative
  reflectance after removing the offset are not measurements, and a red value of 1 DN would give a spurious
  NDVI near +1 over water and shadow; non-positive denominators.
* SCL (20 m) reaches the 10 m grid by an exact 2 x 2 block repeat (nearest neighbour); class codes are never
  interpolated.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

DEFAULT_MASK_CLASSES: tuple[int, ...] = (0, 1, 3, 8, 9, 10)
#: DN (after the offset) at or below which a band is treated as clamped / non-physical.
CLAMP_FLOOR_DN = 1
INT16_SCALE = 10000
INT16_NODATA = -32768


def scl_mask(scl: np.ndarray, mask_classes: Iterable[int]) -> np.ndarray:
    """True where the SCL class is in ``mask_classes``; SCL 0 (no data) is always masked.

    A few equality tests OR-ed together: several times faster than a lookup-table gather on large blocks.
    """
    classes = sorted({0, *(int(c) for c in mask_classes)})
    for c in classes:
        if not 0 <= c <= 255:
            raise ValueError(f"SCL class {c} is outside 0-255")
    mask = scl == classes[0]
    for c in classes[1:]:
        mask |= scl == c
    return mask


def upsample_scl(scl: np.ndarray, shape: tuple[int, int], factor: int = 2) -> np.ndarray:
    """Nearest-neighbour upsampling by an integer factor (a block repeat), cropped to ``shape``.

    When the 20 m grid shares the 10 m grid's upper-left corner and has exactly twice its pixel size, this is
    the exact nearest-neighbour resampling: every SCL pixel covers ``factor x factor`` 10 m pixels.
    """
    rows, cols = shape
    if scl.shape[0] * factor < rows or scl.shape[1] * factor < cols:
        raise ValueError(f"SCL block {scl.shape} x{factor} does not cover {shape}")
    out = np.repeat(np.repeat(scl, factor, axis=0), factor, axis=1)
    return out[:rows, :cols]


def scl_alignment(
    red_transform: tuple[float, ...],
    red_shape: tuple[int, int],
    scl_transform: tuple[float, ...],
    scl_shape: tuple[int, int],
    tol: float = 1e-6,
) -> int | None:
    """The integer upsampling factor when the SCL grid nests exactly in the red grid, else ``None``.

    Transforms are GDAL-order affine coefficients ``(a, b, c, d, e, f)`` (pixel width, row rotation, x origin,
    column rotation, pixel height, y origin). Exact nesting: no rotation, same origin, SCL pixel size an integer
    multiple of the red pixel size, and the SCL grid covering the red grid.
    """
    a, b, c, d, e, f = red_transform[:6]
    sa, sb, sc, sd, se, sf = scl_transform[:6]
    if b or d or sb or sd:
        return None
    if abs(c - sc) > tol * max(1.0, abs(a)) or abs(f - sf) > tol * max(1.0, abs(e)):
        return None
    fx, fy = sa / a, se / e
    factor = round(fx)
    if factor < 1 or abs(fx - factor) > tol or abs(fy - factor) > tol:
        return None
    if scl_shape[0] * factor < red_shape[0] or scl_shape[1] * factor < red_shape[1]:
        return None
    return factor


@dataclass
class BlockStats:
    """Additive statistics of one block; ``+`` merges blocks."""

    pixels: int = 0
    valid: int = 0
    nodata: int = 0
    scl_masked: int = 0
    clamped: int = 0
    total: float = 0.0
    total_sq: float = 0.0
    minimum: float = float("inf")
    maximum: float = float("-inf")
    scl_counts: list[int] = field(default_factory=lambda: [0] * 256)

    def __add__(self, other: BlockStats) -> BlockStats:
        return BlockStats(
            pixels=self.pixels + other.pixels,
            valid=self.valid + other.valid,
            nodata=self.nodata + other.nodata,
            scl_masked=self.scl_masked + other.scl_masked,
            clamped=self.clamped + other.clamped,
            total=self.total + other.total,
            total_sq=self.total_sq + other.total_sq,
            minimum=min(self.minimum, other.minimum),
            maximum=max(self.maximum, other.maximum),
            scl_counts=[x + y for x, y in zip(self.scl_counts, other.scl_counts, strict=True)],
        )

    def summary(self) -> dict:
        """NDVI statistics and mask fractions as a JSON-ready dict."""
        out: dict = {
            "pixels": self.pixels,
            "valid_pixels": self.valid,
            "valid_fraction": self.valid / self.pixels if self.pixels else 0.0,
            "nodata_fraction": self.nodata / self.pixels if self.pixels else 0.0,
            "scl_masked_fraction": self.scl_masked / self.pixels if self.pixels else 0.0,
            "clamped_fraction": self.clamped / self.pixels if self.pixels else 0.0,
        }
        if self.valid:
            mean = self.total / self.valid
            var = max(self.total_sq / self.valid - mean * mean, 0.0)
            out.update(
                {
                    "mean": mean,
                    "std": var**0.5,
                    "minimum": float(self.minimum),
                    "maximum": float(self.maximum),
                }
            )
        else:
            out.update({"mean": None, "std": None, "minimum": None, "maximum": None})
        out["scl_class_counts"] = {str(k): v for k, v in enumerate(self.scl_counts) if v}
        return out


def ndvi_core(
    red: np.ndarray,
    nir: np.ndarray,
    scl: np.ndarray | None,
    add_dn: int,
    mask_classes: Iterable[int],
    cloud: np.ndarray | None = None,
    scl_counts: list[int] | None = None,
) -> tuple[np.ndarray, np.ndarray, BlockStats]:
    """NDVI (float32, 0 where invalid), the invalid mask and block statistics, from DN on one grid.

    ``red`` and ``nir`` are integer DN (uint16 in the public COGs), ``scl`` the SCL classes already on the same
    grid (or ``None`` to skip cloud masking), ``add_dn`` the BOA offset in DN. ``cloud`` (the SCL mask on this
    grid) and ``scl_counts`` may be given instead of ``scl`` when the caller computed them more cheaply (on the
    20 m grid). Values where ``invalid`` is True are 0 and meaningless; :func:`compute_ndvi`,
    :func:`encode_int16` and :func:`encode_float32` apply the mask.

    Written with whole-array arithmetic only (no boolean scatter) and as few passes over the pixels as the rules
    allow: the clamp rule is tested on the integer DN (``DN + add_dn <= 1`` is ``DN <= 1 - add_dn``), which also
    covers the denominator (valid pixels have both bands >= 2 after the offset, so ``nir + red >= 4``).
    """
    if red.shape != nir.shape or (scl is not None and scl.shape != red.shape):
        raise ValueError(
            f"shape mismatch: red {red.shape}, nir {nir.shape}, scl {None if scl is None else scl.shape}"
        )
    stats = BlockStats(pixels=int(red.size))
    low = np.minimum(red, nir)  # both rules hold for a pixel when they hold for its lower band
    nodata = low == 0
    threshold = CLAMP_FLOOR_DN - int(add_dn)  # DN + add_dn <= 1  <=>  DN <= 1 - add_dn (integers)
    invalid = _at_most(low, threshold)
    del low
    if threshold < 0:  # only then can DN 0 lie above the clamp floor
        invalid |= nodata
    stats.nodata = int(np.count_nonzero(nodata))
    stats.clamped = int(np.count_nonzero(invalid)) - stats.nodata  # invalid = nodata + clamped, disjoint
    if cloud is None and scl is not None:
        cloud = scl_mask(scl, mask_classes)
    if cloud is not None:
        stats.scl_counts = list(scl_counts) if scl_counts is not None else class_counts(scl)
        cloud &= ~nodata
        stats.scl_masked = int(np.count_nonzero(cloud))
        invalid |= cloud
    # nir - red and nir + red straight from the integer DN into float32 (numpy casts block by block: no float copy
    # of either band); exact, as every value is an integer below 2**24, so the offset cancels in the difference
    # and adds 2 x add_dn to the sum, exactly as (nir + add_dn) +- (red + add_dn)
    ndvi = np.subtract(nir, red, dtype=np.float32)
    den = np.add(nir, red, dtype=np.float32)
    if add_dn:
        den += np.float32(2 * add_dn)
    # valid pixels have denominators >= 4 and |nir - red| < nir + red, so their quotient lies in (-1, 1) after
    # rounding too (nothing to clip); the others get a finite value from a denominator of at least 1, then 0
    np.maximum(den, np.float32(1.0), out=den)
    np.divide(ndvi, den, out=ndvi)
    np.copyto(ndvi, np.float32(0), where=invalid)
    stats.valid = stats.pixels - int(np.count_nonzero(invalid))
    if stats.valid:
        # float32 values summed pairwise in float64 (numpy's default), identical to summing them masked
        stats.total = float(ndvi.sum(dtype=np.float64))
        np.multiply(ndvi, ndvi, out=den)
        stats.total_sq = float(den.sum(dtype=np.float64))
        # invalid pixels hold 0, so a negative minimum (a positive maximum) is a valid pixel's: the masked
        # reduction is needed only otherwise
        all_valid = stats.valid == stats.pixels
        low, high = float(ndvi.min()), float(ndvi.max())
        if not (low < 0 or all_valid) or not (high > 0 or all_valid):
            valid = ~invalid
            if not (low < 0 or all_valid):
                low = float(ndvi.min(where=valid, initial=np.inf))
            if not (high > 0 or all_valid):
                high = float(ndvi.max(where=valid, initial=-np.inf))
        stats.minimum, stats.maximum = low, high
    return ndvi, invalid, stats


def _at_most(dn: np.ndarray, threshold: int) -> np.ndarray:
    """``dn <= threshold`` for an integer array, also when the threshold lies outside the dtype's range."""
    info = np.iinfo(dn.dtype)
    if threshold < info.min:
        return np.zeros(dn.shape, dtype=bool)
    if threshold >= info.max:
        return np.ones(dn.shape, dtype=bool)
    return dn <= dn.dtype.type(threshold)


def compute_ndvi(
    red: np.ndarray,
    nir: np.ndarray,
    scl: np.ndarray | None,
    add_dn: int,
    mask_classes: Iterable[int] = DEFAULT_MASK_CLASSES,
) -> tuple[np.ndarray, BlockStats]:
    """NDVI as float32 with NaN where masked, and the block statistics (see :func:`ndvi_core`)."""
    ndvi, invalid, stats = ndvi_core(red, nir, scl, add_dn, mask_classes)
    return encode_float32(ndvi, invalid), stats


def encode_float32(ndvi: np.ndarray, invalid: np.ndarray) -> np.ndarray:
    return np.where(invalid, np.float32(np.nan), ndvi)


def encode_int16(ndvi: np.ndarray, invalid: np.ndarray) -> np.ndarray:
    """NDVI x 10000 as int16, :data:`INT16_NODATA` where invalid (value = int16 / 10000)."""
    scaled = np.multiply(ndvi, np.float32(INT16_SCALE))
    np.rint(scaled, out=scaled)
    q = scaled.astype(np.int16)
    np.copyto(q, np.int16(INT16_NODATA), where=invalid)
    return q


def class_counts(scl: np.ndarray) -> list[int]:
    """Pixels per SCL class (256 entries), without bincount's int64 copy of the whole block."""
    counts = [0] * 256
    seen = 0
    for c in range(12):
        k = int(np.count_nonzero(scl == c))
        counts[c] = k
        seen += k
    if seen != scl.size:  # codes outside 0-11 (rare): fall back to the general count
        full = np.bincount(scl.ravel(), minlength=256)
        return [int(x) for x in full[:256]]
    return counts


def to_int16(ndvi: np.ndarray) -> np.ndarray:
    """NaN-masked float NDVI to int16 x 10000 with :data:`INT16_NODATA` where NaN."""
    invalid = np.isnan(ndvi)
    return encode_int16(np.where(invalid, np.float32(0), ndvi), invalid)
