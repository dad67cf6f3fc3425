"""The science on small arrays: SCL on the 10 m grid, masks, the offset, NDVI range, encodings, statistics."""

import numpy as np
import pytest

from ndvi_worker.ndvi import (
    INT16_NODATA,
    BlockStats,
    compute_ndvi,
    encode_int16,
    ndvi_core,
    scl_alignment,
    scl_mask,
    to_int16,
    upsample_scl,
)


def test_scl_block_repeat_is_exact_nearest_neighbour():
    scl = np.array([[4, 8], [3, 9]], dtype=np.uint8)
    up = upsample_scl(scl, (4, 4))
    assert up.tolist() == [[4, 4, 8, 8], [4, 4, 8, 8], [3, 3, 9, 9], [3, 3, 9, 9]]
    assert upsample_scl(scl, (3, 3)).tolist() == [[4, 4, 8], [4, 4, 8], [3, 3, 9]]
    # class codes survive: nothing between 8 and 9 appears
    assert set(np.unique(up)) <= {3, 4, 8, 9}


def test_block_repeat_matches_gdal_nearest_resampling():
    """An independent implementation: GDAL's nearest-neighbour reprojection onto the 10 m grid."""
    from affine import Affine
    from rasterio.warp import Resampling, reproject

    rng = np.random.default_rng(3)
    scl = rng.integers(0, 12, size=(25, 25), dtype=np.uint8)
    dst = np.zeros((50, 50), dtype=np.uint8)
    t20 = Affine(20, 0, 500000, 0, -20, 6000000)
    t10 = Affine(10, 0, 500000, 0, -10, 6000000)
    reproject(scl, dst, src_transform=t20, dst_transform=t10, src_crs="EPSG:32631", dst_crs="EPSG:32631",
              resampling=Resampling.nearest)  # fmt: skip
    assert np.array_equal(upsample_scl(scl, (50, 50)), dst)


def test_scl_alignment():
    red = (10.0, 0.0, 600000.0, 0.0, -10.0, 5800020.0)
    scl = (20.0, 0.0, 600000.0, 0.0, -20.0, 5800020.0)
    assert scl_alignment(red, (10980, 10980), scl, (5490, 5490)) == 2
    assert scl_alignment(red, (10980, 10980), red, (10980, 10980)) == 1
    shifted = (20.0, 0.0, 600010.0, 0.0, -20.0, 5800020.0)
    assert scl_alignment(red, (10980, 10980), shifted, (5490, 5490)) is None
    odd = (30.0, 0.0, 600000.0, 0.0, -30.0, 5800020.0)
    assert scl_alignment(red, (10980, 10980), odd, (3660, 3660)) == 3
    assert scl_alignment(red, (10980, 10980), scl, (5000, 5490)) is None  # does not cover


def test_scl_mask_always_masks_no_data():
    scl = np.arange(12, dtype=np.uint8).reshape(3, 4)
    m = scl_mask(scl, (1, 3, 8, 9, 10))
    assert np.flatnonzero(m.ravel()).tolist() == [0, 1, 3, 8, 9, 10]
    assert np.flatnonzero(scl_mask(scl, ()).ravel()).tolist() == [0]


def test_ndvi_values_and_masks_on_3x3():
    red = np.array([[500, 0, 1000], [1, 600, 2000], [400, 400, 3000]], dtype=np.uint16)
    nir = np.array([[3500, 3000, 0], [3000, 600, 2000], [4000, 4000, 1000]], dtype=np.uint16)
    scl = np.array([[4, 4, 4], [6, 5, 4], [9, 3, 4]], dtype=np.uint8)
    ndvi, stats = compute_ndvi(red, nir, scl, 0, (0, 1, 3, 8, 9, 10))
    expected = np.array(
        [
            [(3500 - 500) / 4000, np.nan, np.nan],  # DN 0 in red / nir: nodata
            [np.nan, 0.0, 0.0],  # red DN 1: the clamp of offset-applied COGs, masked
            [np.nan, np.nan, (1000 - 3000) / 4000],  # SCL 9 cloud, SCL 3 shadow
        ]
    )
    np.testing.assert_allclose(ndvi, expected, rtol=1e-6, equal_nan=True)
    assert stats.valid == 4 and stats.nodata == 2 and stats.clamped == 1 and stats.scl_masked == 2
    s = stats.summary()
    assert s["valid_fraction"] == pytest.approx(4 / 9)
    assert s["minimum"] == pytest.approx(-0.5) and s["maximum"] == pytest.approx(0.75)
    assert s["mean"] == pytest.approx(np.nanmean(expected))


def test_dn1_clamp_would_otherwise_give_ndvi_near_one():
    red = np.array([[1]], dtype=np.uint16)
    nir = np.array([[150]], dtype=np.uint16)
    naive = (150 - 1) / (150 + 1)
    assert naive > 0.98  # what a pipeline without the rule writes over dark water
    ndvi, stats = compute_ndvi(red, nir, None, 0)
    assert np.isnan(ndvi[0, 0]) and stats.clamped == 1


def test_offset_changes_ndvi_and_negative_reflectance_is_masked():
    red = np.array([[1400, 900]], dtype=np.uint16)  # raw DN of baseline 04.00: +1000
    nir = np.array([[4600, 4600]], dtype=np.uint16)
    ndvi, _ = compute_ndvi(red, nir, None, -1000)
    assert ndvi[0, 0] == pytest.approx((3600 - 400) / (3600 + 400))
    assert np.isnan(ndvi[0, 1])  # red reflectance -0.01 after removing the offset
    wrong, _ = compute_ndvi(red, nir, None, 0)
    assert abs(wrong[0, 0] - ndvi[0, 0]) > 0.15  # ignoring the offset biases NDVI badly


def test_non_positive_denominators_are_masked_and_ndvi_stays_in_range():
    rng = np.random.default_rng(0)
    red = rng.integers(0, 12000, size=(200, 200), dtype=np.uint16)
    nir = rng.integers(0, 12000, size=(200, 200), dtype=np.uint16)
    ndvi, _ = compute_ndvi(red, nir, None, -1000)
    v = ndvi[~np.isnan(ndvi)]
    assert v.size and v.min() >= -1 and v.max() <= 1
    r = red.astype(float) - 1000
    n = nir.astype(float) - 1000
    assert np.all(np.isnan(ndvi[(r + n) <= 0]))


def test_statistics_match_numpy_and_merge():
    rng = np.random.default_rng(1)
    red = rng.integers(0, 5000, size=(300, 300), dtype=np.uint16)
    nir = rng.integers(0, 5000, size=(300, 300), dtype=np.uint16)
    scl = rng.integers(0, 12, size=(300, 300), dtype=np.uint8)
    whole, s_whole = compute_ndvi(red, nir, scl, 0)
    _, a = compute_ndvi(red[:150], nir[:150], scl[:150], 0)
    _, b = compute_ndvi(red[150:], nir[150:], scl[150:], 0)
    merged = (BlockStats() + a + b).summary()
    v = whole[~np.isnan(whole)].astype(np.float64)
    assert merged["valid_pixels"] == v.size == s_whole.valid
    assert merged["mean"] == pytest.approx(v.mean(), abs=1e-6)
    assert merged["std"] == pytest.approx(v.std(), abs=1e-5)
    assert merged["minimum"] == pytest.approx(v.min()) and merged["maximum"] == pytest.approx(v.max())
    counts = np.bincount(scl.ravel(), minlength=256)
    assert merged["scl_class_counts"] == {str(k): int(c) for k, c in enumerate(counts) if c}


def test_int16_encoding():
    ndvi = np.array([[0.12345, -1.0, 1.0, np.nan]], dtype=np.float32)
    q = to_int16(ndvi)
    assert q.tolist() == [[1234, -10000, 10000, INT16_NODATA]] or q.tolist() == [
        [1235, -10000, 10000, INT16_NODATA]
    ]
    red = np.array([[100, 0]], dtype=np.uint16)
    nir = np.array([[300, 300]], dtype=np.uint16)
    nd, inv, _ = ndvi_core(red, nir, None, 0, ())
    assert encode_int16(nd, inv).tolist() == [[5000, INT16_NODATA]]


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape mismatch"):
        compute_ndvi(np.ones((2, 2), np.uint16), np.ones((2, 3), np.uint16), None, 0)


def _reference_chunk(red, nir, cloud, add_dn):
    """Independent whole-array NDVI with the README's rules (float32 operations as the worker's file has them)."""
    r = red.astype(np.int64) + add_dn
    n = nir.astype(np.int64) + add_dn
    invalid = (red == 0) | (nir == 0) | (r <= 1) | (n <= 1)
    if cloud is not None:
        invalid |= cloud
    num = nir.astype(np.float32) - red.astype(np.float32)
    den = nir.astype(np.float32) + red.astype(np.float32) + np.float32(2 * add_dn)
    ndvi = np.where(invalid, np.float32(0), num / np.maximum(den, np.float32(1)))
    q = np.rint(ndvi * np.float32(10000)).astype(np.int16)
    q[invalid] = INT16_NODATA
    return ndvi.astype(np.float32), invalid, q


@pytest.mark.parametrize("add_dn", [0, -1000, 70000, -70000])
@pytest.mark.parametrize(
    ("shape", "strip"), [((300, 260), 128), ((257, 131), 64), ((64, 64), 7), ((1, 5), 128)]
)
def test_ndvi_chunk_in_strips_equals_the_whole_array_rules(add_dn, shape, strip):
    """ndvi_chunk computes strip by strip with reused work arrays: pixels, masks, encodings, level-1 overview sums
    and counts must be those of the whole-array rules, whatever the strip height (odd ones too) and offsets
    (thresholds outside uint16's range)."""
    from ndvi_worker.ndvi import encode_float32, ndvi_chunk
    from ndvi_worker.pyramid import _halve

    rng = np.random.default_rng(7)
    red = rng.integers(0, 6000, size=shape, dtype=np.uint16)
    nir = rng.integers(0, 6000, size=shape, dtype=np.uint16)
    red[rng.random(shape) < 0.05] = 0
    nir[rng.random(shape) < 0.05] = 1
    cloud = rng.random(shape) < 0.2
    kept = cloud.copy()
    counts = [5] * 256
    out = ndvi_chunk(red, nir, None, add_dn, (), cloud=cloud, scl_counts=counts, encode="int16", level1=True,
                     strip_rows=strip)  # fmt: skip
    ndvi, invalid, q = _reference_chunk(red, nir, cloud, add_dn)
    assert np.array_equal(cloud, kept), "the caller's cloud mask is not modified"
    assert np.array_equal(out.invalid, invalid)
    assert np.array_equal(out.ndvi, ndvi)
    assert np.array_equal(out.encoded, q)
    nodata = (red == 0) | (nir == 0)
    assert out.stats.nodata == int(nodata.sum())
    assert out.stats.scl_masked == int((cloud & ~nodata).sum())
    assert out.stats.valid == int((~invalid).sum())
    assert out.stats.scl_counts == counts
    v = ndvi[~invalid].astype(np.float64)
    if v.size:
        assert out.stats.total == pytest.approx(v.sum(), rel=1e-12, abs=1e-9)
        assert out.stats.minimum == v.min() and out.stats.maximum == v.max()
    if shape[0] % 2 or shape[1] % 2:
        assert out.level1 is None
    else:
        total1, count1 = out.level1
        assert np.array_equal(total1, _halve(ndvi))
        assert np.array_equal(count1, _halve((~invalid).view(np.uint8)))
    f32 = ndvi_chunk(
        red, nir, None, add_dn, (), cloud=cloud, scl_counts=counts, encode="float32", strip_rows=strip
    )
    assert np.array_equal(f32.encoded, encode_float32(ndvi, invalid), equal_nan=True)
    # ndvi_core is the same kernel without the encoding
    nd, inv, stats = ndvi_core(red, nir, None, add_dn, (), cloud=cloud, scl_counts=counts)
    assert np.array_equal(nd, ndvi) and np.array_equal(inv, invalid) and stats.valid == out.stats.valid


def test_ndvi_chunk_scl_classes_on_the_grid():
    from ndvi_worker.ndvi import class_counts, ndvi_chunk

    rng = np.random.default_rng(8)
    red = rng.integers(1, 6000, size=(40, 30), dtype=np.uint16)
    nir = rng.integers(1, 6000, size=(40, 30), dtype=np.uint16)
    scl = rng.integers(0, 12, size=(40, 30), dtype=np.uint8)
    out = ndvi_chunk(red, nir, scl, 0, (3, 8, 9), strip_rows=8)
    assert np.array_equal(out.invalid, np.isin(scl, (0, 3, 8, 9)) | (red <= 1) | (nir <= 1))
    assert out.stats.scl_counts == class_counts(scl)


@pytest.mark.parametrize("dtype", [np.uint8, np.bool_])
@pytest.mark.parametrize(
    ("shape", "out"), [((5, 7), (10, 14)), ((5, 7), (9, 13)), ((1, 1), (2, 2)), ((0, 3), (0, 6))]
)
def test_fast_2x2_repeat_equals_numpy_repeat(dtype, shape, out):
    rng = np.random.default_rng(9)
    a = rng.integers(0, 2 if dtype is np.bool_ else 256, size=shape).astype(dtype)
    expected = np.repeat(np.repeat(a, 2, axis=0), 2, axis=1)[: out[0], : out[1]]
    got = upsample_scl(a, out)
    assert got.dtype == a.dtype and np.array_equal(got, expected)
    strided = np.asfortranarray(a)[:, ::1]
    assert np.array_equal(upsample_scl(strided, out), expected)
