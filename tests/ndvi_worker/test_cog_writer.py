"""The directly assembled COG (ndvi_worker/cog_writer.py) against GDAL's COG driver: same pixels at every level,
same tags, profile and IFD tags, GDAL's COG layout (ghost header, IFDs first, smallest overview's tiles first),
valid for rio-cogeo."""

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


def assert_same_cog(reference: Path, direct: Path, same_tiles: bool = True) -> None:
    """``same_tiles``: the compressed tiles are byte-identical to GDAL's too (same libzstd, same level, edge
    tiles padded with zeros like GDAL's; not for DEFLATE, where GDAL uses libdeflate and the worker zlib)."""
    assert cog_validate(str(direct)) == (True, [], [])
    with rasterio.open(reference) as a, rasterio.open(direct) as b:
        assert b.tags(ns="IMAGE_STRUCTURE") == a.tags(ns="IMAGE_STRUCTURE")
        assert b.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert {**b.profile, "nodata": repr(b.nodata)} == {**a.profile, "nodata": repr(a.nodata)}  # NaN too
        assert (b.tags(), b.tags(1), b.scales, b.offsets, b.descriptions) == (
            a.tags(), a.tags(1), a.scales, a.offsets, a.descriptions
        )  # fmt: skip
        assert b.overviews(1) == a.overviews(1) and a.overviews(1)
        levels = len(a.overviews(1))
    for level in [None, *range(levels)]:
        kw = {} if level is None else {"overview_level": level}
        with rasterio.open(reference, **kw) as a, rasterio.open(direct, **kw) as b:
            np.testing.assert_array_equal(b.read(1), a.read(1))
    ref_ifds, new_ifds = cog_writer.read_ifds(reference), cog_writer.read_ifds(direct)
    assert len(new_ifds) == len(ref_ifds)
    for ra, nb in zip(ref_ifds, new_ifds, strict=True):
        strip = {324} if same_tiles else {324, 325}
        assert {t: v for t, v in nb.items() if t not in strip} == {
            t: v for t, v in ra.items() if t not in strip
        }
    _check_layout(direct)


def _check_layout(path: Path) -> None:
    """GDAL's COG layout: ghost header, IFDs before any tile, tiles of the smallest overview first, each level
    row-major, every tile framed by its size (leader) and its last 4 bytes (trailer)."""
    raw = path.read_bytes()
    assert raw[8 : 8 + len(cog_writer.GHOST_HEADER)] == cog_writer.GHOST_HEADER
    ifds = cog_writer.read_ifds(path)
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
