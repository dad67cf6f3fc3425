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

import threading
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
    if factor == 2 and scl.dtype.itemsize == 1 and scl.ndim == 2:
        return _repeat2(scl)[:rows, :cols]
    out = np.repeat(np.repeat(scl, factor, axis=0), factor, axis=1)
    return out[:rows, :cols]


def _repeat2(a: np.ndarray) -> np.ndarray:
    """The 2 x 2 block repeat of a 1-byte array (classes, masks) in two whole-array passes that release the
    interpreter lock: each byte widened to a uint16 holding it twice (``b * 257``: the two bytes of the pair), then
    every row written twice by a broadcast assignment. ``np.repeat`` copies element by element holding the lock
    (1.9 ms against 0.12 ms for a 512 x 512 block; profiled as 15 % of the lock's time in the worker)."""
    h, w = a.shape
    pairs = np.multiply(np.ascontiguousarray(a).view(np.uint8), np.uint16(257), dtype=np.uint16)
    out = np.empty((h, 2, 2 * w), dtype=np.uint8)
    out[...] = pairs.view(np.uint8)[:, None, :]
    return out.reshape(2 * h, 2 * w).view(a.dtype)


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


#: Rows per pass of :func:`ndvi_chunk`: a strip's arrays (128 x 1024 px: 0.5 MB per float32 array) stay in the
#: core's cache between the kernel's ~20 passes instead of streaming 4 MB arrays through memory each time
#: (measured on a 1024 x 1024 chunk: 14.5 ms for the whole-chunk passes with the int16 encoding, 8.7 ms in
#: 128-row strips; 32-256 rows are within 10 % of each other).
STRIP_ROWS = 128

_scratch = threading.local()


def _scratch_array(name: str, shape: tuple[int, int], dtype) -> np.ndarray:
    """A per-thread reusable work array (no allocation, page faults or zeroing per strip)."""
    size = shape[0] * shape[1]
    buffers = getattr(_scratch, "buffers", None)
    if buffers is None:
        buffers = _scratch.buffers = {}
    key = (name, np.dtype(dtype).str)
    flat = buffers.get(key)
    if flat is None or flat.size < size:
        flat = buffers[key] = np.empty(size, dtype=dtype)
    return flat[:size].reshape(shape)


@dataclass
class ChunkNdvi:
    """What :func:`ndvi_chunk` computes for one chunk."""

    ndvi: np.ndarray  #: float32 NDVI, 0 where ``invalid``
    invalid: np.ndarray  #: bool
    stats: BlockStats
    encoded: np.ndarray | None = None  #: the output encoding ("int16" / "float32") when asked
    #: overview level 1's sums of ``ndvi`` (float32) and valid counts (uint8) over 2 x 2 blocks, when asked and
    #: the chunk's sides are even (what :func:`ndvi_worker.pyramid.chunk_overviews` computes first)
    level1: tuple[np.ndarray, np.ndarray] | None = None


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
    :func:`encode_int16` and :func:`encode_float32` apply the mask. (:func:`ndvi_chunk` also encodes the output
    and starts the overviews in the same passes.)
    """
    out = ndvi_chunk(red, nir, scl, add_dn, mask_classes, cloud=cloud, scl_counts=scl_counts)
    return out.ndvi, out.invalid, out.stats


def ndvi_chunk(
    red: np.ndarray,
    nir: np.ndarray,
    scl: np.ndarray | None,
    add_dn: int,
    mask_classes: Iterable[int],
    cloud: np.ndarray | None = None,
    scl_counts: list[int] | None = None,
    *,
    encode: str | None = None,
    level1: bool = False,
    strip_rows: int = STRIP_ROWS,
) -> ChunkNdvi:
    """:func:`ndvi_core`'s NDVI, mask and statistics, plus the output encoding (``encode``: "int16" as
    :func:`encode_int16`, "float32" as :func:`encode_float32`) and overview level 1's sums (``level1``), computed
    strip by strip (``strip_rows``) so that every pass over a strip finds it in the cache, with per-thread work
    arrays. Pixels are identical to the whole-array functions' (the same float32 operations in the same order);
    the float64 sums behind the mean and standard deviation are summed per strip, so they may differ from a
    single pairwise sum in the last bits.

    Written with whole-array arithmetic only (no boolean scatter) and as few passes over the pixels as the rules
    allow: the clamp rule is tested on the integer DN (``DN + add_dn <= 1`` is ``DN <= 1 - add_dn``), which also
    covers the denominator (valid pixels have both bands >= 2 after the offset, so ``nir + red >= 4``).
    """
    if red.shape != nir.shape or (scl is not None and scl.shape != red.shape):
        raise ValueError(
            f"shape mismatch: red {red.shape}, nir {nir.shape}, scl {None if scl is None else scl.shape}"
        )
    if encode not in (None, "int16", "float32"):
        raise ValueError(f"encode: None, 'int16' or 'float32', not {encode!r}")
    rows, cols = red.shape
    stats = BlockStats(pixels=int(red.size))
    if cloud is None and scl is not None:
        cloud = scl_mask(scl, mask_classes)
    if cloud is not None:
        if cloud.shape != red.shape:
            raise ValueError(f"shape mismatch: red {red.shape}, cloud mask {cloud.shape}")
        stats.scl_counts = list(scl_counts) if scl_counts is not None else class_counts(scl)
    ndvi = np.empty((rows, cols), dtype=np.float32)
    invalid = np.empty((rows, cols), dtype=bool)
    encoded = None if encode is None else np.empty((rows, cols), dtype=np.dtype(encode))
    halve = level1 and not (rows % 2 or cols % 2)
    if halve:
        total1 = np.empty((rows // 2, cols // 2), dtype=np.float32)
        count1 = np.empty((rows // 2, cols // 2), dtype=np.uint8)
    threshold = CLAMP_FLOOR_DN - int(add_dn)  # DN + add_dn <= 1  <=>  DN <= 1 - add_dn (integers)
    info = np.iinfo(red.dtype) if red.dtype.kind in "ui" else None
    offset2 = np.float32(2 * add_dn)
    nodata_n = before_cloud = scl_masked = invalid_n = 0
    total = total_sq = 0.0
    low_z, high_z = np.inf, -np.inf
    step = max(2, strip_rows - strip_rows % 2)
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        n = r1 - r0
        r, g = red[r0:r1], nir[r0:r1]
        # both rules hold for a pixel when they hold for its lower band
        low = np.minimum(r, g, out=_scratch_array("low", (n, cols), red.dtype))
        nodata = np.equal(low, 0, out=_scratch_array("nodata", (n, cols), bool))
        inv = invalid[r0:r1]
        if info is not None and threshold < info.min:
            inv.fill(False)
        elif info is not None and threshold >= info.max:
            inv.fill(True)
        else:
            np.less_equal(low, low.dtype.type(threshold), out=inv)
        if threshold < 0:  # only then can DN 0 lie above the clamp floor
            inv |= nodata
        nodata_n += int(np.count_nonzero(nodata))
        before_cloud += int(np.count_nonzero(inv))  # invalid = nodata + clamped, disjoint
        if cloud is not None:
            c = cloud[r0:r1]
            # cloud and not nodata (True > False only); nodata pixels are already invalid, so OR-ing the whole
            # cloud mask gives the same invalid mask
            masked = np.greater(c, nodata, out=_scratch_array("masked", (n, cols), bool))
            scl_masked += int(np.count_nonzero(masked))
            inv |= c
        invalid_n += int(np.count_nonzero(inv))
        # nir - red and nir + red from the DN cast to float32 once each: exact, as every value is an integer below
        # 2**24, so the offset cancels in the difference and adds 2 x add_dn to the sum, exactly as
        # (nir + add_dn) +- (red + add_dn)
        d = ndvi[r0:r1]
        fr = _scratch_array("red", (n, cols), np.float32)
        np.copyto(fr, r, casting="unsafe")
        den = _scratch_array("den", (n, cols), np.float32)
        np.copyto(den, g, casting="unsafe")
        np.subtract(den, fr, out=d)
        np.add(den, fr, out=den)
        if add_dn:
            den += offset2
        # valid pixels have denominators >= 4 and |nir - red| < nir + red, so their quotient lies in (-1, 1) after
        # rounding too (nothing to clip); the others get a finite value from a denominator of at least 1, then 0
        np.maximum(den, np.float32(1.0), out=den)
        np.divide(d, den, out=d)
        np.copyto(d, np.float32(0), where=inv)
        if n and cols:
            # float32 values summed pairwise in float64 per strip, identical to summing them masked
            total += float(d.sum(dtype=np.float64))
            np.multiply(d, d, out=den)
            total_sq += float(den.sum(dtype=np.float64))
            low_z, high_z = min(low_z, float(d.min())), max(high_z, float(d.max()))
        if encode == "int16":
            np.multiply(d, np.float32(INT16_SCALE), out=den)
            np.rint(den, out=den)
            e = encoded[r0:r1]
            np.copyto(e, den, casting="unsafe")
            np.copyto(e, np.int16(INT16_NODATA), where=inv)
        elif encode == "float32":
            e = encoded[r0:r1]
            np.copyto(e, d)
            np.copyto(e, np.float32(np.nan), where=inv)
        if halve:
            # level 1 of the overviews as pyramid._halve computes it: row pairs first, then column pairs
            pairs = d.reshape(n // 2, 2, cols)
            row_sums = np.add(
                pairs[:, 0, :], pairs[:, 1, :], out=_scratch_array("rows", (n // 2, cols), np.float32)
            )
            np.add(row_sums[:, 0::2], row_sums[:, 1::2], out=total1[r0 // 2 : r1 // 2])
            valid = np.logical_not(inv, out=_scratch_array("valid", (n, cols), bool)).view(np.uint8)
            vpairs = valid.reshape(n // 2, 2, cols)
            vrows = np.add(
                vpairs[:, 0, :], vpairs[:, 1, :], out=_scratch_array("vrows", (n // 2, cols), np.uint8)
            )
            np.add(vrows[:, 0::2], vrows[:, 1::2], out=count1[r0 // 2 : r1 // 2])
    stats.nodata = nodata_n
    stats.clamped = before_cloud - nodata_n
    stats.scl_masked = scl_masked
    stats.valid = stats.pixels - invalid_n
    if stats.valid:
        stats.total, stats.total_sq = total, total_sq
        # invalid pixels hold 0, so a negative minimum (a positive maximum) is a valid pixel's: the masked
        # reduction is needed only otherwise
        all_valid = stats.valid == stats.pixels
        low, high = low_z, high_z
        if not (low < 0 or all_valid) or not (high > 0 or all_valid):
            valid_all = ~invalid
            if not (low < 0 or all_valid):
                low = float(ndvi.min(where=valid_all, initial=np.inf))
            if not (high > 0 or all_valid):
                high = float(ndvi.max(where=valid_all, initial=-np.inf))
        stats.minimum, stats.maximum = low, high
    return ChunkNdvi(ndvi, invalid, stats, encoded, (total1, count1) if halve else None)


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
