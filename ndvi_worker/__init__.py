"""earthmon NDVI worker: Sentinel-2 L2A STAC items in, NDVI Cloud-Optimized GeoTIFFs out (SageMaker Processing).

Python API (docs/python-api.md): :func:`open_scene_ndvi` (a STAC item's NDVI, with the worker's rules) and
:func:`open_ndvi` (a finished output), both lazy georeferenced ``xarray.DataArray``, and :func:`composite_ndvi` (their
temporal composite, lazy too); refusals raise :class:`ItemError`. They are imported on first use, so ``import ndvi_worker`` (and the CLI's start-up) stays light.
"""

__version__ = "0.1.0"
__all__ = ["ItemError", "composite_ndvi", "open_ndvi", "open_scene_ndvi"]

_API = {
    "open_scene_ndvi": "ndvi_worker.api",
    "open_ndvi": "ndvi_worker.api",
    "composite_ndvi": "ndvi_worker.api",
    "ItemError": "ndvi_worker.stac",
}


def __getattr__(name: str):
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'ndvi_worker' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
