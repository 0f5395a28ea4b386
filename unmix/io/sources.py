"""Where a cube comes from: an ENVI file or a benchmark scene's name.

Every command that takes a cube takes either: a path (anything with a suffix or a path separator, or an
existing file) is read as ENVI; any other word is a benchmark name (:data:`unmix.io.benchmarks.BENCHMARKS`,
read from ``UNMIX_DATA``).
"""
from __future__ import annotations

import os
from pathlib import Path

from unmix.errors import MissingInputError
from unmix.io.scene import Scene

__all__ = ["open_cube"]


def open_cube(source: str | os.PathLike) -> Scene:
    """The Scene of an ENVI path (header or data file) or of a benchmark name such as ``samson``."""
    text = str(source)
    path = Path(text)
    if path.suffix or path.exists() or os.sep in text:
        if not path.exists():
            raise MissingInputError(f"{path}: cube not found")
        from unmix.io.envi import read_cube

        return read_cube(path)
    from unmix.io.benchmarks import load_benchmark

    return load_benchmark(text)
