"""SpaceNet 6 preparation: masks, orientation, the location split, 8-bit rendering, and prepare-sn6 end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
from shapely.geometry import MultiPolygon, Polygon, box

from segmentation_trainer import sn6


def test_ids_and_orientations():
    name = "SN6_Train_AOI_11_Rotterdam_SAR-Intensity_20190804111224_20190804111453_tile_8679.tif"
    assert sn6.image_id(name) == "20190804111224_20190804111453_tile_8679"
    assert sn6.strip_of("20190804111224_20190804111453_tile_8679") == "20190804111224_20190804111453"
    assert sn6.image_id("nothing.tif") is None
    assert sn6.parse_orientations("20190804111224_20190804111453 1\n\n20190804120000_20190804120100 0\n") == {
        "20190804111224_20190804111453": 1,
        "20190804120000_20190804120100": 0,
    }
    with pytest.raises(sn6.PrepareError, match="line 1"):
        sn6.parse_orientations("20190804111224_20190804111453 2")


def test_one_building_is_rasterised():
    # the original workshop returned an empty mask for tiles with exactly one building
    mask = sn6.rasterise([box(2, 3, 6, 8)], 10, 10)
    assert mask.sum() == 4 * 5
    assert mask[3:8, 2:6].all()


def test_many_buildings_multipolygons_and_holes():
    courtyard = Polygon([(0, 0), (10, 0), (10, 10), (0, 10)], [[(3, 3), (7, 3), (7, 7), (3, 7)]])
    two_parts = MultiPolygon([box(12, 0, 14, 4), box(16, 0, 18, 4)])
    mask = sn6.rasterise([courtyard, two_parts, box(0, 12, 5, 14)], 16, 20)
    assert mask[5, 5] == 0  # the hole stays background
    assert mask[1, 1] == 1 and mask[8, 8] == 1
    assert mask[:4, 12:14].all() and mask[:4, 16:18].all() and not mask[:4, 14:16].any()
    assert mask[12:14, 0:5].all()
    assert mask.sum() == 100 - 16 + 8 + 8 + 10


def test_wkt_with_z_and_empty():
    g = sn6.parse_wkt("POLYGON ((1 1 0, 5 1 0, 5 4 0, 1 4 0, 1 1 0))")
    assert g.area == 12 and not g.has_z
    assert sn6.parse_wkt("POLYGON EMPTY") is None


def test_summary_csv_distinguishes_empty_tiles_from_missing(tmp_path):
    p = tmp_path / "SN6_Train_AOI_11_Rotterdam_Buildings.csv"
    p.write_text(
        "ImageId,TileBuildingId,PolygonWKT_Pix\n"
        'a_tile_1,0,"POLYGON ((1 1 0, 5 1 0, 5 4 0, 1 4 0, 1 1 0))"\n'
        'a_tile_1,1,"POLYGON ((6 6 0, 8 6 0, 8 8 0, 6 6 0))"\n'
        "a_tile_2,0,POLYGON EMPTY\n"
    )
    out = sn6.read_summary_csv(p)
    assert len(out["a_tile_1"]) == 2 and out["a_tile_2"] == []
    assert "a_tile_3" not in out


def test_nodata_pixels_are_ignored_in_the_mask():
    image = np.ones((4, 6, 6), np.float32)
    image[:, :, 4:] = 0  # black border
    image[1, 0, 0] = 0  # one band 0 is not nodata
    mask = sn6.make_mask([box(3, 0, 6, 6)], sn6.valid_pixels(image))
    assert (mask[:, 4:] == 255).all()
    assert (mask[:, 3] == 1).all()
    assert mask[0, 0] == 0


def test_geojson_lonlat_to_pixels():
    from rasterio.transform import from_origin
    from rasterio.warp import transform_geom
    from shapely.geometry import mapping

    transform = from_origin(595000.0, 5750100.0, 0.5, 0.5)
    building = box(595010.0, 5750080.0, 595020.0, 5750090.0)  # pixels x 20..40, y 20..40
    lonlat = transform_geom("EPSG:32631", "EPSG:4326", mapping(building))
    feats = [{"type": "Feature", "geometry": lonlat, "properties": {}}]
    for crs in (None, "urn:ogc:def:crs:OGC:1.3:CRS84"):
        (g,) = sn6.geojson_pixel_polygons(feats, transform, "EPSG:32631", crs)
        assert g.bounds == pytest.approx((20, 20, 40, 40), abs=1e-3)
    # already in the raster CRS
    (g,) = sn6.geojson_pixel_polygons([{"geometry": mapping(building)}], transform, "EPSG:32631", None)
    assert g.bounds == pytest.approx((20, 20, 40, 40))


def test_rotation_keeps_georeference():
    from rasterio.transform import from_origin

    h, w = 6, 8
    transform = from_origin(100.0, 200.0, 0.5, 0.5)
    rotated = sn6.rotated_transform(transform, h, w)
    # pixel (row 1, col 2) of the original is pixel (h-1-1, w-1-2) of the rotated image: same ground point
    assert transform @ (2 + 0.5, 1 + 0.5) == pytest.approx(rotated @ (w - 1 - 2 + 0.5, h - 1 - 1 + 0.5))
    (g,) = sn6.rotate_geoms([box(0, 0, 2, 1)], h, w)
    assert g.bounds == (6, 5, 8, 6)


def test_split_by_location_never_overlaps_and_is_deterministic():
    fps = {}
    for loc, x0 in enumerate((0, 1000, 2000)):
        for strip in range(3):
            for i in range(2):
                fps[f"{loc}-{strip}-{i}"] = (
                    x0 + i * 100 + strip * 30,
                    0,
                    x0 + i * 100 + strip * 30 + 100,
                    100,
                )
    s = sn6.split_by_location(fps, 0.33)
    assert sorted(s.train + s.validation + s.excluded) == sorted(fps)
    assert s.excluded == []  # the gap between locations is a free cut
    assert {k.split("-")[0] for k in s.validation} == {"2"}
    for v in s.validation:
        for t in s.train:
            assert not sn6._overlaps(fps[v], fps[t])
    assert sn6.split_by_location(dict(reversed(list(fps.items()))), 0.33).validation == s.validation


def test_split_of_one_connected_area_excludes_only_straddling_tiles():
    # a chain of overlapping tiles: no free cut exists
    fps = {f"t{i:02d}": (i * 50, 0, i * 50 + 100, 100) for i in range(20)}
    s = sn6.split_by_location(fps, 0.2)
    assert s.validation and s.train and s.excluded
    assert len(s.excluded) <= 2
    for v in s.validation:
        for t in s.train:
            assert not sn6._overlaps(fps[v], fps[t])
    assert sn6.split_by_location(fps, 0).validation == []


def test_jpg_rendering_is_a_log_stretch_not_a_clip():
    image = np.zeros((4, 2, 3), np.float32)
    image[:, 0, :] = np.array([1e-3, 1e-2, 1e-1])[None, :]  # -30, -20, -10 dB
    image[:, 1, :2] = 10.0  # +10 dB: above the high percentile, saturates
    db = sn6.to_display_channels(image)
    assert np.isnan(db[:, 1, 2]).all()  # nodata
    out = sn6.stretch_to_uint8(db, [-30, -30, -30], [-10, -10, -10])
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    assert list(out[0, :, 0]) == [1, 128, 255]  # equal steps in dB, not in linear intensity
    assert out[1, 0, 0] == 255 and out[1, 2, 0] == 0


def test_prepare_sn6_end_to_end(sn6_prepared, sn6_generated):
    import rasterio
    from PIL import Image

    report = json.loads((sn6_prepared / "prepare_report.json").read_text())
    g = sn6_generated
    assert report["tiles_found"] == len(g.tiles)
    (bad,) = g.corrupt_tiles
    assert bad in report["failed"]  # reported, not silently dropped
    written = report["written"]["train"] + report["written"]["validation"]
    assert written + len(report["failed"]) + len(report["split"]["excluded_overlapping_both_sides"]) == len(
        g.tiles
    )
    assert report["written"]["validation"] > 0
    assert report["tiles_with_one_building"] >= 1
    assert report["rotated"] > 0
    # the one-building tile has a one-building mask, the empty tile an empty one
    for tid, expect in ((g.single_building_tile, True), (g.empty_tile, False)):
        split = "train" if (sn6_prepared / "train" / f"{tid}.tif").exists() else "validation"
        mask = np.asarray(Image.open(sn6_prepared / f"{split}_annotation" / f"{tid}.png"))
        assert (mask == 1).any() == expect
    # all 4 polarisations, float, nodata 0, georeferenced
    tif = next((sn6_prepared / "train").glob("*.tif"))
    with rasterio.open(tif) as ds:
        assert ds.count == 4 and ds.dtypes[0] == "float32" and ds.nodata == 0
        assert ds.descriptions == ("HH", "HV", "VH", "VV")
        assert ds.crs.to_epsg() == 32631
    labels = json.loads((sn6_prepared / "label_map" / "train_label_map.json").read_text())
    assert labels == {"scale": "1"}
    buildings = json.loads((sn6_prepared / "buildings.json").read_text())
    assert len(buildings[g.single_building_tile]) == 1


def test_masks_match_the_source_polygons_and_rotation(sn6_prepared, sn6_root):
    """Each written mask equals the rasterised CSV polygons, rotated when the orientation file says 1."""
    from PIL import Image

    csv_geoms = sn6.read_summary_csv(next(sn6_root.rglob("*_Buildings.csv")))
    orient = sn6.parse_orientations(next(sn6_root.rglob("SAR_orientations.txt")).read_text())
    checked = {0: 0, 1: 0}
    for png in sorted((sn6_prepared / "train_annotation").glob("*.png")):
        tid = png.stem
        mask = np.asarray(Image.open(png))
        expected = sn6.rasterise(csv_geoms[tid], *mask.shape)
        o = orient[sn6.strip_of(tid)]
        if o == 1:
            expected = expected[::-1, ::-1]
        valid = mask != 255
        assert (mask[valid] == expected[valid]).all(), tid
        checked[o] += 1
    assert checked[0] and checked[1]


def test_prepare_jpg(sn6_prepared_jpg):
    from PIL import Image

    jpg = next((sn6_prepared_jpg / "train").glob("*.jpg"))
    with Image.open(jpg) as im:
        assert im.mode == "RGB"
    report = json.loads((sn6_prepared_jpg / "prepare_report.json").read_text())
    assert report["jpg_stretch_db"]["percentiles"] == [0.5, 99.5]


def test_prepare_errors(tmp_path):
    with pytest.raises(sn6.PrepareError, match="no SAR-Intensity tiles"):
        sn6.prepare_sn6(tmp_path, tmp_path / "out")


def test_bad_annotations_are_a_prepare_error(tmp_path):
    """Invalid WKT in the summary CSV is a PrepareError naming the line, never a shapely traceback."""
    path = tmp_path / "SN6_Buildings.csv"
    path.write_text(
        'ImageId,PolygonWKT_Pix\nx_tile_1,"POLYGON ((0 0, 4 0, 4 4, 0 0))"\nx_tile_2,"POLYGON ((0 0, 1"\n'
    )
    with pytest.raises(sn6.PrepareError, match="line 3: PolygonWKT_Pix is not WKT"):
        sn6.read_summary_csv(path)
