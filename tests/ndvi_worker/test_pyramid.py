"""Overviews computed per chunk assemble into GDAL's overview grid with exact averages of valid pixels."""

import numpy as np
import pytest

from ndvi_worker.pyramid import chunk_overviews, overview_count, overview_shape


@pytest.mark.parametrize(("size", "count"), [(10980, 5), (1098, 2), (512, 0), (513, 1), (5490, 4)])
def test_overview_count_matches_gdal_cog_default(size, count):
    assert overview_count((size, size), 512) == count


def exact_level(ndvi: np.ndarray, invalid: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference: mean of the valid full-resolution pixels under each level-k pixel (plain loops over blocks)."""
    f = 2**k
    rows, cols = overview_shape(ndvi.shape, k)
    mean = np.zeros((rows, cols))
    empty = np.zeros((rows, cols), dtype=bool)
    for i in range(rows):
        for j in range(cols):
            block = ndvi[i * f : (i + 1) * f, j * f : (j + 1) * f]
            ok = ~invalid[i * f : (i + 1) * f, j * f : (j + 1) * f]
            empty[i, j] = not ok.any()
            mean[i, j] = block[ok].mean() if ok.any() else 0
    return mean, empty


def test_chunks_tile_every_level_exactly():
    rng = np.random.default_rng(0)
    shape, chunk, levels = (100, 70), 32, 3  # odd-sized last chunks, like 10980 = 10 x 1024 + 740
    ndvi = rng.uniform(-1, 1, size=shape).astype(np.float32)
    invalid = rng.random(shape) < 0.3
    invalid[:20, :20] = True  # a fully masked corner
    assembled = [
        (np.full(overview_shape(shape, k), np.nan), np.zeros(overview_shape(shape, k), bool))
        for k in range(1, levels + 1)
    ]
    for r0 in range(0, shape[0], chunk):
        for c0 in range(0, shape[1], chunk):
            parts = chunk_overviews(
                ndvi[r0 : r0 + chunk, c0 : c0 + chunk], invalid[r0 : r0 + chunk, c0 : c0 + chunk], levels
            )
            for k, (mean, empty) in enumerate(parts, start=1):
                f = 2**k
                rr, cc = r0 // f, c0 // f
                assembled[k - 1][0][rr : rr + mean.shape[0], cc : cc + mean.shape[1]] = mean
                assembled[k - 1][1][rr : rr + mean.shape[0], cc : cc + mean.shape[1]] = empty
    for k in range(1, levels + 1):
        mean, empty = assembled[k - 1]
        ref_mean, ref_empty = exact_level(ndvi, invalid, k)
        assert not np.isnan(mean).any(), "every overview pixel is written by exactly one chunk"
        assert np.array_equal(empty, ref_empty)
        np.testing.assert_allclose(mean[~empty], ref_mean[~empty], atol=1e-5)


def _exact_means(band: np.ndarray, valid: np.ndarray, level: int) -> tuple[np.ndarray, np.ndarray]:
    """Independent reference: sum and count of the valid full-resolution pixels under each pixel of ``level``."""
    f = 2**level
    rows, cols = -(-band.shape[0] // f), -(-band.shape[1] // f)
    pad = ((0, rows * f - band.shape[0]), (0, cols * f - band.shape[1]))
    total = np.pad(np.where(valid, band, 0).astype(np.float64), pad).reshape(rows, f, cols, f).sum((1, 3))
    count = np.pad(valid, pad).reshape(rows, f, cols, f).sum((1, 3))
    return total, count


@pytest.mark.parametrize("shape", [(37, 53), (64, 64), (1, 7)])
def test_band_overviews_float32_are_exact_means_with_nan(shape) -> None:
    from ndvi_worker.pyramid import band_overviews

    rng = np.random.default_rng(11)
    bands = rng.uniform(-1, 1, size=(2, *shape)).astype(np.float32)
    bands[rng.random(bands.shape) < 0.4] = np.nan
    levels = 3
    got = band_overviews(bands, float("nan"), levels)
    for level in range(1, levels + 1):
        for b in range(2):
            total, count = _exact_means(bands[b], ~np.isnan(bands[b]), level)
            want = np.where(count > 0, total / np.maximum(count, 1), np.nan).astype(np.float32)
            np.testing.assert_allclose(got[level - 1][b], want, rtol=1e-6, equal_nan=True)


def test_band_overviews_int16_deep_levels_do_not_overflow() -> None:
    """Past level 7 the int16 sums need more than int32: extreme values over a 512-px chunk, 9 levels."""
    from ndvi_worker.pyramid import band_overviews

    band = np.full((1, 512, 512), 32767, dtype=np.int16)
    band[0, ::7, ::5] = -32768  # nodata
    got = band_overviews(band, -32768, 9)
    assert got[8].shape == (1, 1, 1) and got[8][0, 0, 0] == 32767
    total, count = _exact_means(band[0], band[0] != -32768, 9)
    assert got[8][0, 0, 0] == np.trunc(total / count + 0.5)
