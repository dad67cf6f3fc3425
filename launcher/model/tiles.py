"""Pure tiling for ``launcher predict``: split an image too big for one request into overlapping tiles whose
payload fits the endpoint's limit (6 MB for real-time endpoints), and stitch the predicted masks back.

Each tile is its *core* (the pixels it owns; the cores partition the image) grown by a *margin* of context on
every side that stays inside the image. Only the core of each predicted tile is kept, so the model always sees
``margin`` pixels of context around the pixels it decides (tile seams do not show).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from launcher.errors import ArgumentError

MB = 1024 * 1024
REALTIME_PAYLOAD_MB = 6.0
HEADER_ALLOWANCE = 64 * 1024  # TIFF/npy header and tags


@dataclass(frozen=True)
class Window:
    row: int
    col: int
    height: int
    width: int

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.row, self.row + self.height), slice(self.col, self.col + self.width)


@dataclass(frozen=True)
class Tile:
    index: int
    read: Window  # what is sent (core + margin, clipped to the image)
    core: Window  # what is kept

    @property
    def core_in_read(self) -> tuple[slice, slice]:
        """The core's position inside the read window."""
        r, c = self.core.row - self.read.row, self.core.col - self.read.col
        return slice(r, r + self.core.height), slice(c, c + self.core.width)


def max_tile_side(bands: int, itemsize: int, max_payload_mb: float = REALTIME_PAYLOAD_MB) -> int:
    """The largest square tile (with margins) whose uncompressed payload fits the limit."""
    budget = max_payload_mb * MB * 0.97 - HEADER_ALLOWANCE
    side = int(math.isqrt(max(0, int(budget // (bands * itemsize)))))
    if side < 64:
        raise ArgumentError(
            f"a payload limit of {max_payload_mb} MB leaves tiles of {side} px for {bands} band(s) of "
            f"{itemsize} byte(s): raise --max-payload-mb"
        )
    return side


def plan_tiles(height: int, width: int, tile_side: int, margin: int = 64) -> list[Tile]:
    """Tiles covering a ``height`` x ``width`` image; read windows are at most ``tile_side`` square."""
    if height < 1 or width < 1:
        raise ValueError(f"empty image ({height} x {width})")
    if tile_side >= height and tile_side >= width:
        whole = Window(0, 0, height, width)
        return [Tile(0, whole, whole)]
    margin = max(0, min(margin, (tile_side - 16) // 2))
    core_side = tile_side - 2 * margin
    tiles = []
    for row in range(0, height, core_side):
        for col in range(0, width, core_side):
            core = Window(row, col, min(core_side, height - row), min(core_side, width - col))
            r0, c0 = max(0, row - margin), max(0, col - margin)
            r1 = min(height, row + core.height + margin)
            c1 = min(width, col + core.width + margin)
            tiles.append(Tile(len(tiles), Window(r0, c0, r1 - r0, c1 - c0), core))
    return tiles


def stitch(
    height: int, width: int, results: Iterator[tuple[Tile, np.ndarray]], fill: int = 255
) -> np.ndarray:
    """Assemble per-tile masks (each the size of its read window) into the full mask."""
    mask = np.full((height, width), fill, dtype=np.uint8)
    covered = np.zeros((height, width), dtype=bool)
    for tile, tile_mask in results:
        if tile_mask.shape != (tile.read.height, tile.read.width):
            raise ValueError(
                f"tile {tile.index}: the endpoint returned a {tile_mask.shape} mask for a "
                f"{tile.read.height} x {tile.read.width} tile"
            )
        mask[tile.core.slices] = tile_mask[tile.core_in_read]
        covered[tile.core.slices] = True
    if not covered.all():
        raise ValueError(f"{int((~covered).sum())} pixels were not predicted")
    return mask
