"""The per-scene quicklook (``<id>_ndvi.png``) says its colour range: the NDVI map on top (brown -0.2 to dark green
0.9, transparent where masked) and below it the same legend strip as the mosaic PNG."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from earthmon_testing.products import write_product
from ndvi_worker.io import colorize_ndvi, with_legend, write_quicklook
from ndvi_worker.mosaic import legend_strip


def _read(path: Path) -> np.ndarray:
    import rasterio
    import rasterio.errors

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path) as png:
            return png.read()


@pytest.mark.parametrize(
    "shape, map_shape", [((1098, 1098), (512, 512)), ((600, 1200), (256, 512)), ((300, 150), (300, 150))]
)
def test_quicklook_has_the_map_then_a_legend(tmp_path: Path, shape, map_shape) -> None:
    ndvi = np.tile(np.linspace(-0.2, 0.9, shape[1], dtype="float32"), (shape[0], 1))
    ndvi[: shape[0] // 4] = np.nan  # masked: transparent
    write_product(tmp_path, "S2A_31UFU_20231203_0_L2A", ndvi, "2023-12-03", quicklook=True)
    rgba = _read(tmp_path / "S2A_31UFU_20231203_0_L2A_ndvi.png")
    rows, cols = map_shape
    legend = legend_strip(max(cols, 240), colorize_ndvi)
    assert rgba.shape == (4, rows + legend.shape[1], max(cols, 240))  # the legend strip below the map
    np.testing.assert_array_equal(rgba[:, rows:, :], legend)
    below = rgba[:, rows:, :]
    assert (below[3] == 255).mean() > 0.9 and len(np.unique(below[1])) > 20  # the colour ramp
    top = rgba[:, :rows, :cols]
    assert (top[3, : rows // 4 - 1] == 0).all() and (top[3, rows // 4 + 1 :] == 255).all()
    np.testing.assert_array_equal(top[:3, -1, 0], colorize_ndvi(np.array([-0.2], "float32"))[:3, 0])  # brown
    assert (rgba[:, :rows, cols:] == 0).all()  # a map narrower than the legend: transparent on its right


def test_with_legend_keeps_the_map_and_adds_the_mosaic_legend() -> None:
    rgba_map = colorize_ndvi(np.full((40, 500), 0.5, dtype="float32"))
    out = with_legend(rgba_map)
    np.testing.assert_array_equal(out[:, :40], rgba_map)
    np.testing.assert_array_equal(out[:, 40:], legend_strip(500, colorize_ndvi))


def test_quicklook_is_the_same_for_the_same_cog(tmp_path: Path) -> None:
    ndvi = np.full((256, 256), 0.4, dtype="float32")
    write_product(tmp_path, "S2A_31UFU_20231203_0_L2A", ndvi, "2023-12-03")
    cog = tmp_path / "S2A_31UFU_20231203_0_L2A_ndvi.tif"
    write_quicklook(cog, tmp_path / "a.png")
    write_quicklook(cog, tmp_path / "b.png")
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert not list(tmp_path.glob("*.aux.xml"))
