"""The directly assembled COG (ndvi_worker/cog_writer.py) against GDAL's COG driver: same pixels at every level,
same tags, profile and IFD tags, GDAL's COG layout (ghost header, IFDs first, smallest overview's tiles first),
valid for rio-cogeo; for the worker's one-band NDVI and the composites' band-interleaved bands (and the
pixel-interleaved layout the writer also has)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rio_cogeo.cogeo import cog_validate

from ndvi_worker import cog_writer
from ndvi_worker.synthetic import write_scene

ITEM = "S2B_31UFU_20231204_0_L2A"


@pytest.fixture(scope="module")
def scene_1300(tmp_path_factory) -> Path:
    """1300 px: 2 overview levels at 512 (level 1 written from the chunks, level 2 assembled), edge tiles."""
    root = tmp_path_factory.mktemp("scene1300")
    write_scene(root / ITEM, item_id=ITEM, size=1300, seed=3)
    return root


def _run(run_worker, scene: Path, out: Path, *args: str, staging: bool = False) -> Path:
    env = {"NDVI_STAGING_COG": "1"} if staging else {}
    run_worker("--input", str(scene), "--output", str(out), *args, env=env, check_code=0)
    return out / f"{ITEM}_ndvi.tif"


def band_interleaved_copy(reference: Path, dst: Path) -> Path:
    """What GDAL's GTiff driver writes for ``reference`` band-interleaved with its overviews copied (GDAL 3.10's
    COG driver ignores ``INTERLEAVE=BAND``): the tags the band-interleaved direct COG must have."""
    import rasterio.shutil

    with rasterio.open(reference) as ds:
        block = ds.block_shapes[0][0]
        compress = ds.tags(ns="IMAGE_STRUCTURE").get("COMPRESSION", "NONE")
    rasterio.shutil.copy(
        reference, dst, driver="GTiff", TILED="YES", BLOCKXSIZE=block, BLOCKYSIZE=block, COMPRESS=compress,
        COPY_SRC_OVERVIEWS="YES", INTERLEAVE="BAND",
    )  # fmt: skip
    return dst


def assert_same_cog(
    reference: Path, direct: Path, same_tiles: bool = True, tags_reference: Path | None = None
):
    """``same_tiles``: the compressed tiles are byte-identical to GDAL's too (same libzstd, same level, edge
    tiles padded with zeros like GDAL's; not for DEFLATE, where GDAL uses libdeflate and the worker zlib).
    ``tags_reference``: the file whose IFD tags and interleave ``direct`` must have, if not ``reference``'s (a
    band-interleaved direct COG against GDAL's pixel-interleaved COG: :func:`band_interleaved_copy`)."""
    assert cog_validate(str(direct)) == (True, [], [])
    tags_reference = tags_reference or reference
    with rasterio.open(tags_reference) as t:
        interleave = t.tags(ns="IMAGE_STRUCTURE").get("INTERLEAVE")
        profile_interleave = t.profile.get("interleave")
    with rasterio.open(reference) as a, rasterio.open(direct) as b:
        want = {**a.tags(ns="IMAGE_STRUCTURE"), **({"INTERLEAVE": interleave} if interleave else {})}
        assert b.tags(ns="IMAGE_STRUCTURE") == want
        assert b.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        want = {
            **a.profile,
            "nodata": repr(a.nodata),
            **({"interleave": profile_interleave} if interleave else {}),
        }
        assert {**b.profile, "nodata": repr(b.nodata)} == want  # NaN too
        assert (b.tags(), b.scales, b.offsets, b.descriptions) == (
            a.tags(),
            a.scales,
            a.offsets,
            a.descriptions,
        )
        assert [b.tags(k) for k in b.indexes] == [a.tags(k) for k in a.indexes]
        assert [b.overviews(k) for k in b.indexes] == [a.overviews(k) for k in a.indexes] and a.overviews(1)
        levels = len(a.overviews(1))
    for level in [None, *range(levels)]:
        kw = {} if level is None else {"overview_level": level}
        with rasterio.open(reference, **kw) as a, rasterio.open(direct, **kw) as b:
            np.testing.assert_array_equal(b.read(), a.read())
    ref_ifds, new_ifds = cog_writer.read_ifds(tags_reference), cog_writer.read_ifds(direct)
    assert len(new_ifds) == len(ref_ifds)
    for ra, nb in zip(ref_ifds, new_ifds, strict=True):
        assert nb[324][:2] == ra[324][:2] and nb[325][:2] == ra[325][:2]  # as many tiles
        strip = {324} if same_tiles else {324, 325}
        assert {t: v for t, v in nb.items() if t not in strip} == {
            t: v for t, v in ra.items() if t not in strip
        }
    _check_layout(direct)


def _check_layout(path: Path) -> None:
    """GDAL's COG layout: ghost header, IFDs before any tile, tiles of the smallest overview first, each level
    row-major (band by band if band-interleaved: in the order of the tile arrays), every tile framed by its size
    (leader) and its last 4 bytes (trailer)."""
    raw = path.read_bytes()
    ifds = cog_writer.read_ifds(path)
    band = struct.unpack("<H", ifds[0][284][2])[0] == 2
    ghost = cog_writer.GHOST_HEADER_BAND if band else cog_writer.GHOST_HEADER
    assert raw[8 : 8 + len(ghost)] == ghost
    first_tile = min(struct.unpack(f"<{t[324][1]}I", t[324][2])[0] for t in ifds)
    assert struct.unpack("<I", raw[4:8])[0] < first_tile
    previous_end = 0
    for tags in reversed(ifds):  # smallest overview first
        n = tags[324][1]
        offsets = struct.unpack(f"<{n}I", tags[324][2])
        counts = struct.unpack(f"<{n}I", tags[325][2])
        assert list(offsets) == sorted(offsets) and offsets[0] > previous_end
        for off, size in zip(offsets, counts, strict=True):
            assert struct.unpack("<I", raw[off - 4 : off])[0] == size
            assert raw[off + size : off + size + 4] == raw[off + size - 4 : off + size]
        previous_end = offsets[-1] + counts[-1]
    assert previous_end + 4 == len(raw)


def test_direct_cog_matches_gdal_cog_driver(scene_1300, run_worker, tmp_path):
    reference = _run(run_worker, scene_1300, tmp_path / "staging", staging=True)
    direct = _run(run_worker, scene_1300, tmp_path / "direct")
    assert_same_cog(reference, direct)
    # the quicklook is read from the COG: the same PNG
    assert (tmp_path / "direct" / f"{ITEM}_ndvi.png").read_bytes() == (
        tmp_path / "staging" / f"{ITEM}_ndvi.png"
    ).read_bytes()
    assert not list((tmp_path / "direct").glob("*.bin")) and not list(tmp_path.rglob("tiles.bin"))


@pytest.mark.parametrize(
    "args",
    [
        ("--compress", "DEFLATE", "--level", "6"),
        ("--dtype", "float32", "--compress", "NONE"),
        ("--blocksize", "256", "--chunk-size", "512"),  # levels 0-1 from the chunks, 2-3 assembled
    ],
)
def test_direct_cog_other_formats(scene_1300, run_worker, tmp_path, args):
    reference = _run(run_worker, scene_1300, tmp_path / "staging", *args, staging=True)
    direct = _run(run_worker, scene_1300, tmp_path / "direct", *args)
    # byte-identical tiles too, except DEFLATE (libdeflate vs zlib) and 256 tiles, where GDAL's edge tiles carry
    # whatever its block cache held beyond the raster's edge (pixels inside are identical, as checked)
    assert_same_cog(reference, direct, same_tiles="DEFLATE" not in args and "--blocksize" not in args)


def test_formats_the_writer_does_not_handle_go_through_gdal():
    assert cog_writer.supported("ZSTD", None, "int16", (10980, 10980))
    assert not cog_writer.supported("LZW", None, "int16", (10980, 10980))
    assert not cog_writer.supported("ZSTD", 2, "int16", (10980, 10980))
    assert not cog_writer.supported("ZSTD", None, "float32", (40000, 40000))  # BigTIFF


def test_lzw_output_still_valid_through_the_cog_driver(scene_1300, run_worker, tmp_path):
    cog = _run(run_worker, scene_1300, tmp_path / "lzw", "--compress", "LZW", "--predictor", "2")
    assert cog_validate(str(cog))[0]
    with rasterio.open(cog) as ds:
        assert ds.compression.name.upper() == "LZW"


# ------------------------------------------------------------------------------------------------ composites


@pytest.fixture(scope="module")
def composite_inputs(tmp_path_factory) -> Path:
    """Three dates of a 1300 x 1300 tile in the worker's int16 encoding (the raw int16 reduction) and one in float32
    (the decoded float reduction), with holes and a partial footprint: 2 overview levels at 512 (levels 0-1 written
    from the chunks, level 2 assembled), edge tiles."""
    from earthmon_testing.products import write_product

    root = tmp_path_factory.mktemp("composite-inputs")
    rng = np.random.default_rng(5)
    for k, day in enumerate(("03", "08", "13", "18")):
        values = rng.uniform(-0.3, 0.95, size=(1300, 1300)).astype("float32")
        values[rng.random(values.shape) < 0.3] = np.nan
        if k == 1:
            values[:, 700:] = np.nan
        folder = root / ("int16" if k < 3 else "float32")
        write_product(folder, f"S2A_31UFU_202312{day}_0_L2A", values, f"2023-12-{day}", dtype=folder.name)
    return root


def _composite(inputs: Path, out: Path, method: str, **options) -> Path:
    from ndvi_worker.products_io import CompositeOptions, run_composite

    opts = CompositeOptions(method=method, period=None, quicklook=False, **options)
    report, status = run_composite(inputs, out, opts, staging_dir=out.parent / f"{out.name}-staging")
    assert status == 0, report.to_dict()
    [done] = report.done
    return out / done["output"].replace(".json", ".tif")


@pytest.mark.parametrize(
    "folder, method, options, same_tiles",
    [
        # the defaults: int16, ZSTD level 1, 512 blocks. Not byte-identical: GDAL's compressed 3-band tiles (1.5 MB)
        # differ from one-shot ZSTD by a byte here and there (presumably libtiff's codec and ZSTD's 512 KB window at
        # level 1; the worker's one-band tiles are exactly 512 KB and identical); the pixels are identical
        ("int16", "max", {}, False),
        ("int16", "median", {"compress": "DEFLATE", "level": 6}, False),  # zlib here, libdeflate in GDAL
        ("both", "mean", {"dtype": "float32", "compress": "NONE"}, True),  # float path, float32 output
        ("int16", "max", {"blocksize": 256}, False),  # 512 chunks: levels 0-1 direct, 2-3 assembled
    ],
)
def test_composite_direct_cog_matches_gdal_cog_driver(
    composite_inputs, tmp_path, monkeypatch, folder, method, options, same_tiles
):
    """The composite's COG assembled directly (band-interleaved tiles compressed in the compute threads) against
    the same bands and overviews written by GDAL's COG driver from staging GeoTIFFs (the fallback path): same
    pixels of every band at every level, same tags, profile, IFD tags and layout, a valid COG. (Both get their
    overviews from pyramid.band_overviews; those are checked against independent means elsewhere.)"""
    inputs = composite_inputs if folder == "both" else composite_inputs / folder
    direct = _composite(inputs, tmp_path / "direct", method, **options)
    monkeypatch.setenv("NDVI_STAGING_COG", "1")
    reference = _composite(inputs, tmp_path / "staging", method, **options)
    with rasterio.open(reference) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE")["INTERLEAVE"] == "PIXEL"  # GDAL 3.10's COG driver: PIXEL only
    tags_reference = band_interleaved_copy(reference, tmp_path / "gtiff-band.tif")
    assert_same_cog(reference, direct, same_tiles=same_tiles, tags_reference=tags_reference)
    with rasterio.open(direct) as ds:
        assert ds.count == (3 if method == "max" else 2)
        assert ds.tags(ns="IMAGE_STRUCTURE")["INTERLEAVE"] == "BAND"
    assert_band_1_apart(direct)
    assert not list(tmp_path.rglob("tiles.bin")) and not list(tmp_path.rglob("*-staging/*"))


def assert_band_1_apart(path: Path) -> None:
    """In every IFD of a band-interleaved COG, band 1's tiles are one contiguous byte range holding no other
    band's tile: a reader of band 1 only (the mosaic) fetches and decompresses band 1's bytes, a fraction of the
    level's."""
    ifds = cog_writer.read_ifds(path)
    bands = struct.unpack("<H", ifds[0][277][2])[0]
    assert bands > 1 and all(struct.unpack("<H", t[284][2])[0] == 2 for t in ifds)
    for tags in ifds:
        n = tags[324][1]
        offsets = struct.unpack(f"<{n}I", tags[324][2])
        counts = struct.unpack(f"<{n}I", tags[325][2])
        per_band = n // bands
        first = list(zip(offsets[:per_band], counts[:per_band], strict=True))
        for (off, size), (next_off, _) in zip(first, first[1:], strict=False):
            assert next_off == off + size + 8  # trailer + next leader: nothing in between
        start, end = first[0][0], first[-1][0] + first[-1][1]
        assert all(not start <= off < end for off in offsets[per_band:])
        assert sum(counts[:per_band]) < sum(counts)


@pytest.mark.parametrize("dtype, compress", [("int16", "ZSTD"), ("float32", "NONE")])
def test_direct_cog_pixel_and_band_interleaved_hold_the_same_pixels(tmp_path, dtype, compress):
    """The writer's two multi-band layouts: same pixels of every band at every level, both valid COGs that GDAL
    reads as such, the band-interleaved one with band 1's tiles apart."""
    from ndvi_worker import io as wio
    from ndvi_worker.pyramid import band_overviews, overview_count

    shape, block, chunk = (1300, 1100), 256, 512
    rng = np.random.default_rng(9)
    data = rng.integers(-3000, 9000, size=(3, *shape)).astype(dtype)
    data[:, rng.random(shape) < 0.2] = -32768 if dtype == "int16" else np.nan
    fmt = wio.OutputFormat(dtype, compress, None, None, block, "AVERAGE")
    info = wio.BandInfo("", rasterio.crs.CRS.from_epsg(32631), (10.0, 0.0, 600000.0, 0.0, -10.0, 5700000.0),
                        shape, dtype, fmt.nodata, (block, block))  # fmt: skip
    levels = overview_count(shape, block)
    out = {}
    for interleave in ("pixel", "band"):
        work = tmp_path / interleave
        work.mkdir()
        sink = wio.DirectCogSink(
            work, info, fmt, {}, levels, chunk, ("ndvi", "count", "day"), None, interleave
        )
        for r0 in range(0, shape[0], chunk):
            for c0 in range(0, shape[1], chunk):
                part = data[:, r0 : r0 + chunk, c0 : c0 + chunk]
                sink.write_at(part, r0, c0)
                for level, overview in enumerate(band_overviews(part, fmt.nodata, levels), start=1):
                    sink.write_at(overview, r0 >> level, c0 >> level, level)
        out[interleave] = tmp_path / f"{interleave}.tif"
        sink.finish(out[interleave], 1)
        assert cog_validate(str(out[interleave])) == (True, [], [])
        with rasterio.open(out[interleave]) as ds:
            assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
            assert ds.tags(ns="IMAGE_STRUCTURE")["INTERLEAVE"] == interleave.upper()
            assert len(ds.overviews(1)) == levels
        _check_layout(out[interleave])
    for level in [None, *range(levels)]:
        kw = {} if level is None else {"overview_level": level}
        with rasterio.open(out["pixel"], **kw) as a, rasterio.open(out["band"], **kw) as b:
            np.testing.assert_array_equal(b.read(), a.read())
            if level is None:
                np.testing.assert_array_equal(b.read(), data)
                np.testing.assert_array_equal(b.read(1), data[0])  # one band alone
    assert_band_1_apart(out["band"])
    # the same IFD tags as GDAL's GTiff driver gives the pixel-interleaved file band-interleaved
    reference = band_interleaved_copy(out["pixel"], tmp_path / "gtiff-band.tif")
    for ra, nb in zip(cog_writer.read_ifds(reference), cog_writer.read_ifds(out["band"]), strict=True):
        assert nb[324][:2] == ra[324][:2]
        strip = {324} if compress == "NONE" else {324, 325}
        assert {t: v for t, v in nb.items() if t not in strip} == {
            t: v for t, v in ra.items() if t not in strip
        }


def test_composite_overviews_are_exact_means_and_level_1_is_gdals(composite_inputs, tmp_path):
    """Every overview level of every band is the mean of the valid full-resolution pixels under it (int16 rounded
    half away from zero), and level 1 is exactly what GDAL's own AVERAGE overviews give for the full resolution."""
    import rasterio.shutil

    cog = _composite(composite_inputs / "int16", tmp_path / "out", "max")
    with rasterio.open(cog) as ds:
        full = ds.read()
        overviews = ds.overviews(1)
        profile = ds.profile
    valid = full != -32768
    for level in range(len(overviews)):
        f = 2 ** (level + 1)
        with rasterio.open(cog, overview_level=level) as ds:
            got = ds.read()
        rows, cols = got.shape[1:]
        assert (rows, cols) == (-(-full.shape[1] // f), -(-full.shape[2] // f))
        pad = ((0, 0), (0, rows * f - full.shape[1]), (0, cols * f - full.shape[2]))
        total = (
            np.pad(np.where(valid, full, 0).astype(np.int64), pad).reshape(-1, rows, f, cols, f).sum((2, 4))
        )
        count = np.pad(valid, pad).reshape(-1, rows, f, cols, f).sum((2, 4))
        mean = total / np.maximum(count, 1)
        want = np.where(count > 0, np.trunc(mean + np.copysign(0.5, mean)), -32768)
        np.testing.assert_array_equal(got, want)
    # GDAL's own AVERAGE overviews of the full resolution (1300 px: level 1 is an exact halving)
    plain = tmp_path / "plain.tif"
    with rasterio.open(plain, "w", **{**profile, "driver": "GTiff", "compress": "NONE"}) as dst:
        dst.write(full)
    gdal = tmp_path / "gdal.tif"
    rasterio.shutil.copy(plain, gdal, driver="COG", BLOCKSIZE="512", OVERVIEW_RESAMPLING="AVERAGE")
    with rasterio.open(gdal, overview_level=0) as a, rasterio.open(cog, overview_level=0) as b:
        np.testing.assert_array_equal(b.read(), a.read())


def test_tiles_are_written_from_pieces_even_after_short_writes(tmp_path, monkeypatch):
    """DirectCog writes each framed tile with os.pwritev from its pieces (size, compressed view, last 4 bytes):
    a short write continues where it stopped."""
    import os as _os

    from ndvi_worker import cog_writer

    real = _os.pwritev
    monkeypatch.setattr(
        cog_writer.os, "pwritev", lambda fd, bufs, at: real(fd, [bytes(b)[:3] for b in bufs][:1], at)
    )
    path = tmp_path / "f.bin"
    fd = _os.open(path, _os.O_RDWR | _os.O_CREAT)
    try:
        payload = memoryview(bytearray(b"0123456789"))[2:9]
        cog_writer._pwritev_all(fd, [b"\x07\x00\x00\x00", payload, payload[-4:]], 5)
    finally:
        _os.close(fd)
    assert path.read_bytes() == b"\0" * 5 + b"\x07\x00\x00\x00" + b"2345678" + b"5678"


def test_zstd_view_is_the_compressed_tile():
    """compress_view returns a view of the thread's buffer with the same bytes compress returns (a copy)."""
    from ndvi_worker import cog_writer

    zstd = cog_writer._zstd()
    if zstd is None:
        pytest.skip("no libzstd")
    tile = np.arange(512 * 512, dtype=np.int16).reshape(512, 512)
    view = zstd.compress_view(tile, 1)
    assert bytes(view) == zstd.compress(tile, 1)
    assert bytes(view[-4:]) == zstd.compress(tile, 1)[-4:]


def test_allocator_tuning_is_taken_by_glibc():
    import platform

    from ndvi_worker.run import tune_allocator

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    assert tune_allocator() is True
