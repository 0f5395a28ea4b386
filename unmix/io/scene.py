"""The Scene: a lazy hyperspectral cube with its metadata and optional ground truth.

Every part of unmix reads cubes through this one contract. A Scene never holds the whole cube unless
it was built from an in-memory array; ``read_tile`` returns float32 reflectance for a window with the
reflectance scale factor divided out, bad bands dropped and ignore values turned into NaN.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

TileReader = Callable[[slice, slice], np.ndarray]


@dataclass
class Scene:
    """A hyperspectral cube of shape (H, W, B) read tile by tile.

    Attributes:
        name: a short name (file stem or benchmark name).
        shape: (H, W, B) after bad bands are dropped.
        reader: ``reader(rows, cols) -> (h, w, B) float32`` reflectance, already scaled and masked.
        wavelengths: (B,) band centres in nanometres, or None when unknown.
        fwhm: (B,) band widths in nanometres, or None.
        band_names: B names, or None.
        map_info: the ENVI ``map info`` value verbatim (without braces), or None.
        coordinate_system: the ENVI ``coordinate system string`` verbatim, or None.
        reflectance_scale: the factor the stored values were divided by (1.0 when none).
        endmembers: (p, B) true endmember spectra on the cube's scale, or None.
        abundances: (H, W, p) true abundance maps, or None.
        endmember_names: p names for the truth (or for the user's known spectra), or None.
        source: where the data came from (a path or a description).
        notes: free-form provenance notes (e.g. which ground truth, approximate wavelengths).
    """

    name: str
    shape: tuple[int, int, int]
    reader: TileReader = field(repr=False)
    wavelengths: np.ndarray | None = None
    fwhm: np.ndarray | None = None
    band_names: list[str] | None = None
    map_info: str | None = None
    coordinate_system: str | None = None
    reflectance_scale: float = 1.0
    endmembers: np.ndarray | None = None
    abundances: np.ndarray | None = None
    endmember_names: list[str] | None = None
    source: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def height(self) -> int:
        return self.shape[0]

    @property
    def width(self) -> int:
        return self.shape[1]

    @property
    def bands(self) -> int:
        return self.shape[2]

    @property
    def has_truth(self) -> bool:
        return self.endmembers is not None and self.abundances is not None

    def read_tile(self, rows: slice, cols: slice) -> np.ndarray:
        """Return the (h, w, B) float32 reflectance of a window given by row and column slices."""
        rows = _clip(rows, self.shape[0])
        cols = _clip(cols, self.shape[1])
        tile = self.reader(rows, cols)
        expected = (rows.stop - rows.start, cols.stop - cols.start, self.shape[2])
        if tile.shape != expected:  # a reader bug, never a user error
            raise AssertionError(f"tile reader returned {tile.shape}, expected {expected}")
        return tile

    def read(self) -> np.ndarray:
        """Return the whole (H, W, B) float32 cube. Loads everything: for small scenes and tests."""
        return self.read_tile(slice(0, self.shape[0]), slice(0, self.shape[1]))

    def tiles(self, size: int) -> list[tuple[slice, slice]]:
        """Non-overlapping (rows, cols) windows of at most ``size`` x ``size`` covering the cube."""
        return [
            (slice(r, min(r + size, self.shape[0])), slice(c, min(c + size, self.shape[1])))
            for r in range(0, self.shape[0], size)
            for c in range(0, self.shape[1], size)
        ]

    @classmethod
    def from_array(
        cls,
        cube: np.ndarray,
        name: str = "array",
        wavelengths: Sequence[float] | np.ndarray | None = None,
        **metadata,
    ) -> "Scene":
        """Wrap an in-memory (H, W, B) reflectance array (copied to float32) as a Scene."""
        data = np.asarray(cube, dtype=np.float32)
        if data.ndim != 3:
            raise ValueError(f"a cube must have shape (H, W, B), got {data.shape}")
        data = np.ascontiguousarray(data)

        def reader(rows: slice, cols: slice) -> np.ndarray:
            return data[rows, cols].copy()

        wl = None if wavelengths is None else np.asarray(wavelengths, dtype=np.float64)
        if wl is not None and wl.shape != (data.shape[2],):
            raise ValueError(f"wavelengths must have shape ({data.shape[2]},), got {wl.shape}")
        return cls(name=name, shape=tuple(data.shape), reader=reader, wavelengths=wl, **metadata)


def _clip(window: slice, size: int) -> slice:
    start, stop, step = window.indices(size)
    if step != 1:
        raise ValueError("tile windows must be contiguous (step 1)")
    return slice(start, max(start, stop))
