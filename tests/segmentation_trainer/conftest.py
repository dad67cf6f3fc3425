"""Shared fixtures of the trainer tests (.venv-trainer). The serving tests (test_serve*.py) use their own
fixtures; add shared ones here with names that say whose they are.

Trainer fixtures: generated SpaceNet 6-like data (``sn6_root``), its prepared channel layout
(``sn6_prepared``, GeoTIFF; ``sn6_prepared_jpg``), and ``make_job`` which lays out a SageMaker base directory
(``input/config``, ``input/data/<channel>``) for ``run_training``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from earthmon_testing.trainer import make_job_dir


@pytest.fixture(scope="session")
def sn6_root(tmp_path_factory) -> Path:
    """SN6-like tree: 3 locations x 4 strips x 4 tiles of 64 px + a one-building and an empty tile + 1 corrupt."""
    from segmentation_trainer.synthetic import generate_sn6

    root = tmp_path_factory.mktemp("sn6")
    generate_sn6(
        root, locations=3, strips=4, tiles_per_side=2, tile_size=64, buildings_per_location=12, corrupt=1
    )
    return root


@pytest.fixture(scope="session")
def sn6_generated(sn6_root):
    """The generator's description of ``sn6_root`` (regenerated identically: the generator is deterministic)."""
    from segmentation_trainer.synthetic import generate_sn6

    tmp = sn6_root.parent / (sn6_root.name + "-again")
    return generate_sn6(
        tmp, locations=3, strips=4, tiles_per_side=2, tile_size=64, buildings_per_location=12, corrupt=1
    )


@pytest.fixture(scope="session")
def sn6_prepared(sn6_root, tmp_path_factory) -> Path:
    from segmentation_trainer.sn6 import PrepareOptions, prepare_sn6

    dst = tmp_path_factory.mktemp("prepared")
    prepare_sn6(sn6_root, dst, PrepareOptions(progress=False))
    return dst


@pytest.fixture(scope="session")
def sn6_prepared_jpg(sn6_root, tmp_path_factory) -> Path:
    from segmentation_trainer.sn6 import PrepareOptions, prepare_sn6

    dst = tmp_path_factory.mktemp("prepared-jpg")
    prepare_sn6(sn6_root, dst, PrepareOptions(fmt="jpg", progress=False))
    return dst


@pytest.fixture
def make_job():
    return make_job_dir


def pytest_configure(config):
    # rasterio 1.3 composes affines with `*`, which affine 3 deprecates in favour of `@`
    config.addinivalue_line("filterwarnings", "ignore:Use `@` matmul:PendingDeprecationWarning:rasterio.*")
    # GluonCV initialises its heads twice when it builds its own models (the built-in artifact test)
    config.addinivalue_line("filterwarnings", "ignore:Parameter .* is already initialized:UserWarning")
    # MXNet 1.9 / GluonCV 0.10 are retired: their deprecation warnings (distutils, scipy.sparse, onnx.mapping)
    # are not ours to fix
    for module in ("mxnet", "gluoncv"):
        config.addinivalue_line("filterwarnings", f"ignore::DeprecationWarning:{module}.*")
