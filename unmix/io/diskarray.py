"""A C-ordered ``(H, W, ...)`` array in a raw file, read and written window by window (numpy only).

``unmix-run`` keeps the scene-sized maps it builds (abundances, RMSE, uncertainty) in these, so its
memory does not grow with the scene: nothing is memory-mapped (touched pages of a mapping count as
resident memory), every access is a positioned read or write of the rows it covers.

Indexing supports what the pipeline and the bundle writer use: ``a[rows]`` and ``a[rows, cols]``
with slices (reads may step, writes may not), and ``np.asarray(a)`` for the whole array.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from unmix.errors import UsageError
from unmix.io.files import read_into, write_at

__all__ = ["DiskArray"]


class DiskArray:
    """A float array of ``shape`` stored row-major in the file ``path`` (created, or truncated)."""

    _file = None

    def __init__(self, path: str | os.PathLike, shape: tuple[int, ...], dtype=np.float32):
        if len(shape) < 2 or any(int(n) < 1 for n in shape):
            raise UsageError(f"a DiskArray needs a shape (H, W, ...) of positive sizes, got {shape}")
        self.path = Path(path)
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self._pixel_bytes = math.prod(self.shape[2:]) * self.dtype.itemsize
        self._row_bytes = self.shape[1] * self._pixel_bytes
        self._file = open(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600), "r+b", buffering=0)
        self._file.truncate(self.shape[0] * self._row_bytes)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __del__(self) -> None:
        self.close()

    def _window(self, key) -> tuple[range, slice]:
        if not isinstance(key, tuple):
            key = (key,)
        if len(key) > 2 or not all(isinstance(k, slice) for k in key):
            raise UsageError(f"{self.path}: a DiskArray takes [rows] or [rows, cols] slices, got {key!r}")
        rows = range(*key[0].indices(self.shape[0]))
        cols = key[1] if len(key) == 2 else slice(None)
        return rows, cols

    def __getitem__(self, key) -> np.ndarray:
        rows, cols = self._window(key)
        if rows.step == 1 and len(rows):      # one read for a run of rows
            data = self._read(rows.start * self._row_bytes, len(rows) * self._row_bytes)
            return data.reshape((len(rows),) + self.shape[1:])[:, cols]
        out = [self._read(r * self._row_bytes, self._row_bytes).reshape(self.shape[1:])[cols] for r in rows]
        if not out:
            return np.empty((0,) + np.empty(self.shape[1:])[cols].shape, dtype=self.dtype)
        return np.stack(out)

    def __setitem__(self, key, values) -> None:
        rows, cols = self._window(key)
        c0, c1, step = cols.indices(self.shape[1])
        if rows.step != 1 or step != 1:
            raise UsageError(f"{self.path}: DiskArray writes take contiguous slices, got {key!r}")
        block = np.ascontiguousarray(np.broadcast_to(np.asarray(values, dtype=self.dtype),
                                                     (len(rows), c1 - c0) + self.shape[2:]))
        if c0 == 0 and c1 == self.shape[1]:
            self._write(rows.start * self._row_bytes, block)
            return
        for i, r in enumerate(rows):
            self._write(r * self._row_bytes + c0 * self._pixel_bytes, block[i])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = self[:]
        return whole if dtype is None else whole.astype(dtype)

    def _read(self, offset: int, size: int) -> np.ndarray:
        buffer = np.empty(size, dtype=np.uint8)
        got = read_into(self._file, buffer, offset)
        if got < size:
            raise OSError(f"{self.path}: short read at byte {offset + got}")
        return buffer.view(self.dtype)

    def _write(self, offset: int, block: np.ndarray) -> None:
        write_at(self._file, memoryview(block).cast("B"), offset)
