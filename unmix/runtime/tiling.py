"""Overlapping square tiles over an H x W image and their smooth blending (numpy only).

Tile layout along one axis of length ``n`` with tile size ``T`` and overlap ``o`` (``0 <= o < T``):

- ``n <= T``: one tile at 0 of valid length ``n``; the network still sees ``T`` pixels, the missing
  ones filled by repeating the last row/column (:func:`pad_to_tile`) — a small cube is never refused;
- ``n > T``: tiles start at ``0, s, 2s, ...`` with stride ``s = T - o``, the last one moved back to
  ``n - T`` so every tile lies inside the image (the last two may overlap by more than ``o``).

Blending: every tile's output is weighted by the separable window ``w(i) * w(j)`` with
``w(i) = sin^2(pi/2 * (d + 1) / (o + 1))`` for ``d = min(i, T - 1 - i) < o`` and ``1`` otherwise
(``d`` the distance to the tile's nearest edge): a raised-cosine ramp over the overlap, > 0
everywhere, so each pixel is a weighted mean of every tile that covers it and seams fade out where
a tile's network saw the least context. The accumulators are float64, so when every covering tile
gives a pixel the same float32 value, the blend rounded to float32 is exactly that value.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from unmix.errors import UsageError, require_int

__all__ = ["Blender", "Tile", "blend_window", "pad_to_tile", "row_blocks", "tile_grid", "tile_starts"]


def _check(size: int, tile: int, overlap: int) -> None:
    for value, name, minimum in ((size, "image size", 1), (tile, "tile", 1), (overlap, "overlap", 0)):
        require_int(value, name, minimum)
    if overlap >= tile:
        raise UsageError(f"overlap must be smaller than the tile ({tile}), got {overlap}")


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of the tiles along one axis of ``size`` pixels (module docstring)."""
    _check(size, tile, overlap)
    if size <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride))
    starts.append(size - tile)
    return starts


@dataclass(frozen=True)
class Tile:
    """One tile: its top-left pixel and the valid extent inside the image (``<= T`` each way)."""

    row0: int
    col0: int
    height: int
    width: int

    @property
    def rows(self) -> slice:
        """Global row window of the valid part."""
        return slice(self.row0, self.row0 + self.height)

    @property
    def cols(self) -> slice:
        """Global column window of the valid part."""
        return slice(self.col0, self.col0 + self.width)


def tile_grid(height: int, width: int, tile: int, overlap: int) -> list[Tile]:
    """Row-major list of tiles covering an ``height x width`` image."""
    rows = tile_starts(height, tile, overlap)
    cols = tile_starts(width, tile, overlap)
    return [Tile(r, c, min(tile, height), min(tile, width)) for r in rows for c in cols]


def row_blocks(height: int, size: int) -> list[slice]:
    """Consecutive row windows of at most ``size`` rows covering ``height`` rows."""
    return [slice(start, min(start + size, height)) for start in range(0, height, size)]


def blend_window(tile: int, overlap: int) -> np.ndarray:
    """The 1D blend window ``(T,)`` float64 (module docstring); all ones when ``overlap == 0``."""
    _check(tile, tile, overlap)
    distance = np.minimum(np.arange(tile), tile - 1 - np.arange(tile))
    ramp = np.sin(0.5 * math.pi * (distance + 1) / (overlap + 1)) ** 2
    return np.where(distance < overlap, ramp, 1.0)


def pad_to_tile(array: np.ndarray, tile: int) -> np.ndarray:
    """Pad the first two axes of ``(h, w, ...)`` to ``(T, T, ...)`` by repeating the last row/column.

    Returns the array itself when it already is ``T x T``.
    """
    h, w = array.shape[:2]
    if h > tile or w > tile:
        raise UsageError(f"a {h}x{w} window does not fit a {tile}x{tile} tile")
    if (h, w) == (tile, tile):
        return array
    widths = [(0, tile - h), (0, tile - w)] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, widths, mode="edge")


class Blender:
    """Accumulates weighted tile outputs, row band by row band, into an ``(H, W, C)`` image.

    ``add(tile, values)`` takes the tile's valid ``(tile.height, tile.width, C)`` values; tiles come
    in the row-major order of :func:`tile_grid`. Only the ``T`` rows that the current row of tiles
    covers are held (float64 accumulators, ``T x W x C``): when a tile starts lower down, every row
    above it is final and goes to ``sink(rows, mean)`` as the float64 weighted mean of shape
    ``(len(rows), W, C)``. ``finish()`` hands over the rest. Without a sink the rows are collected
    and ``result()`` returns the whole float64 ``(H, W, C)`` image. Memory is then flat in H.
    """

    def __init__(self, height: int, width: int, channels: int, tile: int, overlap: int,
                 sink: Callable[[slice, np.ndarray], None] | None = None):
        window = blend_window(tile, overlap)
        self.weights = np.outer(window, window)
        self.shape = (height, width, channels)
        self._image = None
        if sink is None:
            self._image = np.empty(self.shape, dtype=np.float64)
            sink = self._collect
        self._sink = sink
        band = min(tile, height)
        self._sum = np.zeros((band, width, channels), dtype=np.float64)
        self._weight_sum = np.zeros((band, width), dtype=np.float64)
        self._top = 0         # the first row not yet handed to the sink; the band holds rows top..top+band
        self._finished = False

    def _collect(self, rows: slice, values: np.ndarray) -> None:
        self._image[rows] = values

    def _flush(self, stop: int) -> None:
        """Hand rows ``top .. stop`` to the sink and shift the band up."""
        count = stop - self._top
        if count <= 0:
            return
        weight = self._weight_sum[:count]
        if count > len(weight) or not np.all(weight > 0):
            raise ValueError("some pixels were covered by no tile")
        self._sink(slice(self._top, stop), self._sum[:count] / weight[..., None])
        for array in (self._sum, self._weight_sum):
            array[: len(array) - count] = array[count:]   # numpy copies overlapping views correctly
            array[len(array) - count:] = 0.0
        self._top = stop

    def add(self, tile: Tile, values: np.ndarray) -> None:
        expected = (tile.height, tile.width, self.shape[2])
        if values.shape != expected:
            raise ValueError(f"tile values have shape {values.shape}, expected {expected}")
        if self._finished or tile.row0 < self._top:
            raise ValueError(f"tile at row {tile.row0} comes after rows up to {self._top} were finished; "
                             "tiles must come in row-major order")
        self._flush(tile.row0)
        local = slice(tile.row0 - self._top, tile.row0 - self._top + tile.height)
        weights = self.weights[: tile.height, : tile.width]
        self._sum[local, tile.cols] += weights[..., None] * values
        self._weight_sum[local, tile.cols] += weights

    def finish(self) -> None:
        """Hand every remaining row to the sink (once)."""
        if not self._finished:
            self._flush(self.shape[0])
            self._finished = True

    def result(self) -> np.ndarray:
        """The whole weighted mean, float64 ``(H, W, C)`` (only without a sink)."""
        if self._image is None:
            raise ValueError("this Blender hands its rows to a sink; there is no whole image to return")
        self.finish()
        return self._image
