"""ENVI cubes and spectral libraries, numpy only: header parsing, tile reads, streaming writes.

An ENVI raster is a plain binary data file beside a text header (``X.hdr`` for ``X``, ``X.img``, ...).
Reading never loads a whole file: :class:`EnviFile` reads each window with positioned reads of the
contiguous runs it needs (no long-lived memmap, whose touched pages would count as resident memory),
so memory stays flat in the cube's size.

- :func:`read_header` / :func:`parse_header` -> :class:`EnviHeader` (typed fields, wavelengths in nm).
- :func:`open_envi` -> :class:`EnviFile` (raw window reads in the file's layout and byte order).
- :func:`read_cube` -> :class:`unmix.io.scene.Scene` (``unmix.read_cube``): reflectance scale factor
  divided out, bad bands (``bbl``) dropped, ``data ignore value`` turned into NaN, float32.
- :func:`write_cube` / :class:`CubeWriter`: float32 BSQ little-endian ``X.hdr`` + ``X.img``.
- :func:`read_library` / :func:`write_library`: ENVI spectral libraries (``X.sli`` + ``X.sli.hdr``).

Every malformed input raises :class:`unmix.errors.EnviError` naming the file, the key and what was
expected; bad arguments to the writers raise :class:`unmix.errors.UsageError`.

:mod:`~unmix.io.envi.header` parses headers, :mod:`~unmix.io.envi.reader` reads rasters and libraries,
:mod:`~unmix.io.envi.writer` writes them; every public name is importable from ``unmix.io.envi``.
"""
from unmix.io.envi.header import DATA_TYPES, INTERLEAVES, LIBRARY_FILE_TYPE, EnviHeader, parse_header, read_header
from unmix.io.envi.reader import (
    MAX_DIMENSION,
    EnviFile,
    SpectralLibraryFile,
    cube_name,
    find_envi_files,
    open_envi,
    read_cube,
    read_library,
)
from unmix.io.envi.writer import CubeWriter, write_cube, write_library

__all__ = [
    "DATA_TYPES",
    "INTERLEAVES",
    "LIBRARY_FILE_TYPE",
    "MAX_DIMENSION",
    "EnviHeader",
    "EnviFile",
    "SpectralLibraryFile",
    "CubeWriter",
    "parse_header",
    "read_header",
    "find_envi_files",
    "open_envi",
    "cube_name",
    "read_cube",
    "write_cube",
    "read_library",
    "write_library",
]
