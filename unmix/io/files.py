"""Files, numpy only: positioned reads and writes, and files replaced whole or not at all.

- :func:`read_into` / :func:`write_at`: ``pread``/``pwrite`` loops at a byte offset (seek + read/write
  where the platform has no positioned calls); no file position is shared, nothing is memory-mapped.
"""
from __future__ import annotations

import os

import numpy as np

__all__ = ["read_into", "write_at"]


def read_into(handle, buffer: np.ndarray, offset: int) -> int:
    """Fill the uint8 ``buffer`` from ``offset``; returns the bytes read (fewer only at end of file)."""
    view = memoryview(buffer)
    total = 0
    while total < len(view):
        if hasattr(os, "preadv"):
            count = os.preadv(handle.fileno(), [view[total:]], offset + total)
        else:
            handle.seek(offset + total)
            count = handle.readinto(view[total:])
        if not count:
            break
        total += count
    return total


def write_at(handle, data: memoryview, offset: int) -> None:
    """Write all of ``data`` at byte ``offset`` of the open file ``handle``."""
    written = 0
    while written < len(data):
        if hasattr(os, "pwrite"):
            count = os.pwrite(handle.fileno(), data[written:], offset + written)
        else:
            handle.seek(offset + written)
            count = handle.write(data[written:])
        written += count
