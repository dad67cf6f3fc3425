"""The floor: the least work that produces the worker's output format, with nothing else.

GDAL reads of the three bands (whole arrays, GDAL_NUM_THREADS=ALL_CPUS), the same numpy NDVI core, and GDAL's COG
driver writing the same format (int16 x 10000, ZSTD level 1, 512 blocks, AVERAGE overviews, all CPUs) from memory.
No retries, no reports, no STAC item, no quicklook, no memory bound.
Usage: python benchmarks/floor_worker.py ITEM.json OUT.tif
"""

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("GDAL_NUM_THREADS", "ALL_CPUS")
os.environ.setdefault("GDAL_DISABLE_READDIR_ON_OPEN", "EMPTY_DIR")

import rasterio  # noqa: E402
import rasterio.shutil  # noqa: E402

from ndvi_worker.ndvi import INT16_NODATA, encode_int16, ndvi_core, upsample_scl  # noqa: E402
from ndvi_worker.stac import scene_from_item  # noqa: E402


def main(item_path: Path, out: Path) -> None:
    scene = scene_from_item(json.loads(item_path.read_text()), str(item_path.resolve()))
    with rasterio.open(scene.red) as ds:
        red = ds.read(1)
        profile = {"crs": ds.crs, "transform": ds.transform, "width": ds.width, "height": ds.height}
    with rasterio.open(scene.nir) as ds:
        nir = ds.read(1)
    with rasterio.open(scene.scl) as ds:
        scl = upsample_scl(ds.read(1), red.shape)
    ndvi, invalid, _ = ndvi_core(red, nir, scl, scene.offset.add_dn, (0, 1, 3, 8, 9, 10))
    data = encode_int16(ndvi, invalid)
    del red, nir, scl, ndvi, invalid
    mem_profile = {"driver": "GTiff", "count": 1, "dtype": "int16", "nodata": INT16_NODATA, **profile}
    with rasterio.MemoryFile() as mem, mem.open(**mem_profile) as tmp:
        tmp.write(data, 1)
        rasterio.shutil.copy(
            tmp, str(out), driver="COG", COMPRESS="ZSTD", LEVEL="1", BLOCKSIZE="512",
            OVERVIEW_RESAMPLING="AVERAGE", NUM_THREADS="ALL_CPUS", BIGTIFF="IF_SAFER",
        )  # fmt: skip


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
