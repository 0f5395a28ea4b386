"""Writing ENVI files: float32 BSQ little-endian cubes (whole or tile by tile) and spectral libraries.

Every header value is checked before anything is written: text an ENVI header cannot hold (unbalanced
braces, commas or line breaks inside a list item, surrounding white space) is refused with a
:class:`unmix.errors.UsageError` rather than written and read back differently.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from unmix.errors import UsageError, output_error
from unmix.io.envi.header import _BRACES, LIBRARY_FILE_TYPE
from unmix.io.envi.reader import _window
from unmix.io.files import write_at

__all__ = ["CubeWriter", "write_cube", "write_library"]

_WRITE_CHUNK_BYTES = 64 * 2**20

# Keys the writers set themselves; ``extra`` may not carry them.
_STRUCTURAL_KEYS = ("samples", "lines", "bands", "header offset", "file type", "data type", "interleave",
                    "byte order")


def _check_braced(text: str, what: str) -> str:
    depth = 0
    for match in _BRACES.finditer(text):
        depth += 1 if match.group() == "{" else -1
        if depth < 0:
            break
    if depth != 0:
        raise UsageError(f"{what} {text[:60]!r} has unbalanced braces; an ENVI header cannot hold it")
    return text


def _scalar_text(value: str, what: str) -> str:
    text = str(value)
    if text != text.strip():
        raise UsageError(f"{what} {text[:60]!r} starts or ends with white space, which ENVI headers drop")
    return "{" + _check_braced(text, what) + "}"


def _list_text(items: Sequence[Any], what: str) -> str:
    texts = []
    for item in items:
        text = repr(float(item)) if isinstance(item, (float, np.floating)) else str(item)
        if any(ch in text for ch in ",{}\r\n") or text != text.strip():
            raise UsageError(f"{what} {text[:60]!r} contains a comma, a brace, a line break or surrounding "
                             "white space, which an ENVI list cannot hold")
        texts.append(text)
    return "{" + ", ".join(texts) + "}"


def _numbers_text(values: Any, count: int, what: str) -> str:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size != count or not np.all(np.isfinite(array)):
        raise UsageError(f"{what} must be {count} finite numbers, got {array.size} values")
    return "{" + ", ".join(_short_number(float(v)) for v in array) + "}"


def _short_number(value: float) -> str:
    """``value`` with 12 significant digits when that is the same number to rounding (2010, not
    2009.9999999999998 from a unit conversion), else exactly (``repr``)."""
    short = f"{value:.12g}"
    return short if abs(float(short) - value) <= 4 * np.finfo(np.float64).eps * abs(value) else repr(value)


def _value_text(value: Any, key: str) -> str:
    if isinstance(value, str):
        value = value.strip()
        if any(ch in value for ch in ",{}\r\n") or value != value.strip():
            return _scalar_text(value, f"header value for {key!r}")
        return value
    if isinstance(value, (bool, np.bool_)):
        return str(int(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    if isinstance(value, (list, tuple, np.ndarray)):
        return _list_text(list(np.asarray(value).reshape(-1)) if isinstance(value, np.ndarray) else value,
                          f"item of {key!r}")
    raise UsageError(f"header value for {key!r} must be a string, a number or a list, got {type(value).__name__}")


def _header_text(structure: list[tuple[str, Any]], metadata: list[tuple[str, Any]],
                 extra: Mapping[str, Any] | None) -> str:
    entries: dict[str, str] = {}
    for key, value in structure:
        entries[key] = str(value)
    for key, text in metadata:
        if text is not None:
            entries[key] = text
    for key, value in (extra or {}).items():
        name = " ".join(str(key).split()).lower()
        if not name or "=" in name or name.startswith(";") or "{" in name or "}" in name:
            raise UsageError(f"header key {key!r} is not a valid ENVI key")
        if name in _STRUCTURAL_KEYS or name in entries:
            raise UsageError(f"header key {key!r} is set by the writer or by its own argument; "
                             "it cannot come in extra")
        entries[name] = _value_text(value, name)
    return "ENVI\n" + "".join(f"{key} = {text}\n" for key, text in entries.items())


def _output_paths(path: str | os.PathLike, data_ext: str) -> tuple[Path, Path]:
    """``(X.hdr, X<data_ext>)`` from ``X.hdr``, ``X<data_ext>``, ``X<data_ext>.hdr`` or ``X``."""
    base = Path(path)
    if base.suffix.lower() == ".hdr":
        base = base.with_suffix("")
    if base.suffix.lower() == data_ext:
        base = base.with_suffix("")
    if not base.name:
        raise UsageError(f"{path}: expected a file name for the ENVI output")
    return base.with_name(base.name + (".sli.hdr" if data_ext == ".sli" else ".hdr")), \
        base.with_name(base.name + data_ext)


def _cube_metadata(bands: int, wavelengths, band_names, map_info, coordinate_system, description,
                   data_ignore_value) -> list[tuple[str, str | None]]:
    names = None
    if band_names is not None:
        band_names = list(band_names)
        if len(band_names) != bands:
            raise UsageError(f"{len(band_names)} band names for {bands} bands")
        names = _list_text(band_names, "band name")
    ignore = None
    if data_ignore_value is not None:
        ignore = repr(float(data_ignore_value))
    return [
        ("description", None if description is None else "{" + _check_braced(str(description).strip(),
                                                                            "description") + "}"),
        ("map info", None if map_info is None else _scalar_text(map_info, "map info")),
        ("coordinate system string",
         None if coordinate_system is None else _scalar_text(coordinate_system, "coordinate system string")),
        ("wavelength units", None if wavelengths is None else "Nanometers"),
        ("wavelength", None if wavelengths is None else _numbers_text(wavelengths, bands, "wavelengths")),
        ("band names", names),
        ("data ignore value", ignore),
    ]


class CubeWriter:
    """Write a float32 BSQ little-endian ENVI cube tile by tile, for outputs larger than memory.

    ``CubeWriter(path, (H, W, B), **metadata)`` creates ``X.img`` at its full size at once (zeros where
    no tile is written; sparse where the file system allows) and validates the metadata; ``close()``
    (or leaving the ``with`` block without an error) writes ``X.hdr``. After an error inside the block
    the header is not written, so a half-written cube is never mistaken for a finished one.

    ``path`` is ``X.hdr``, ``X.img`` or ``X`` (any other suffix is kept: ``a.abund`` -> ``a.abund.hdr``).
    Metadata as :func:`write_cube`. With ``data_ignore_value`` set, NaN in tiles is stored as that value.
    """

    def __init__(self, path: str | os.PathLike, shape: Sequence[int], wavelengths=None, band_names=None,
                 map_info=None, coordinate_system=None, description=None, data_ignore_value=None,
                 extra: Mapping[str, Any] | None = None):
        shape = tuple(int(n) for n in shape)
        if len(shape) != 3 or min(shape) < 1:
            raise UsageError(f"a cube shape must be (H, W, B) with positive sizes, got {shape}")
        self.shape = shape
        self.header_path, self.data_path = _output_paths(path, ".img")
        height, width, bands = shape
        metadata = _cube_metadata(bands, wavelengths, band_names, map_info, coordinate_system, description,
                                  data_ignore_value)
        structure = [("samples", width), ("lines", height), ("bands", bands), ("header offset", 0),
                     ("file type", "ENVI Standard"), ("data type", 4), ("interleave", "bsq"), ("byte order", 0)]
        self._header_text = _header_text(structure, metadata, extra)
        self._ignore = None if data_ignore_value is None else np.float32(data_ignore_value)
        self._handle = None
        try:
            self._handle = open(self.data_path, "wb")
            self._handle.truncate(height * width * bands * 4)
        except OSError as exc:
            if getattr(self, "_handle", None) is not None:
                self._handle.close()
                self._handle = None
            raise output_error(self.data_path, "create the ENVI data file", exc) from exc

    def __enter__(self) -> "CubeWriter":
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.close()
        elif self._handle is not None:
            self._handle.close()
            self._handle = None

    def write_tile(self, rows: slice, cols: slice, tile: np.ndarray) -> None:
        """Store the (h, w, B) ``tile`` (any real dtype, converted to float32) at the window rows x cols."""
        if self._handle is None:
            raise UsageError(f"{self.data_path}: the writer is closed")
        height, width, bands = self.shape
        r0, r1 = _window(rows, height, "rows")
        c0, c1 = _window(cols, width, "cols")
        tile = np.asarray(tile)
        if tile.shape != (r1 - r0, c1 - c0, bands):
            raise UsageError(f"tile shape {tile.shape} does not fit the window {(r1 - r0, c1 - c0, bands)}")
        block = np.ascontiguousarray(np.moveaxis(tile.astype("<f4"), 2, 0))  # (B, h, w), a fresh copy
        if self._ignore is not None:
            block[np.isnan(block)] = self._ignore
        try:
            for band in range(bands):
                start = (band * height + r0) * width + c0
                if c1 - c0 == width:
                    write_at(self._handle, memoryview(block[band]).cast("B"), start * 4)
                else:
                    for i in range(r1 - r0):
                        write_at(self._handle, memoryview(block[band, i]).cast("B"), (start + i * width) * 4)
        except OSError as exc:
            raise output_error(self.data_path, "write", exc) from exc

    def close(self) -> Path:
        """Finish the data file and write the header; returns the header path. Safe to call twice."""
        if self._handle is not None:
            try:
                self._handle.close()
                self._handle = None
                self.header_path.write_text(self._header_text, encoding="utf-8")
            except OSError as exc:
                raise output_error(self.header_path, "write", exc) from exc
        return self.header_path


def write_cube(path: str | os.PathLike, cube: np.ndarray, wavelengths=None, band_names=None, map_info=None,
               coordinate_system=None, description=None, data_ignore_value=None,
               extra: Mapping[str, Any] | None = None) -> Path:
    """Write an (H, W, B) cube as float32 BSQ little-endian ENVI ``X.hdr`` + ``X.img``; returns the header.

    Args:
        path: ``X.hdr``, ``X.img`` or ``X``.
        cube: (H, W, B) values, any real dtype (stored as float32).
        wavelengths: (B,) band centres in nanometres (written with ``wavelength units = Nanometers``).
        band_names: B names without commas, braces or line breaks.
        map_info, coordinate_system, description: written verbatim inside braces.
        data_ignore_value: written as ``data ignore value``; NaN in ``cube`` is stored as this value.
        extra: more ``key -> value`` pairs (str, number or list), e.g. ``{"reflectance scale factor": 10000}``;
            keys the writer sets (samples, data type, ...) or that have an argument here are refused.
    """
    cube = np.asarray(cube)
    if cube.ndim != 3:
        raise UsageError(f"a cube must have shape (H, W, B), got {cube.shape}")
    height, width, bands = cube.shape
    rows_per_write = max(1, _WRITE_CHUNK_BYTES // max(1, width * bands * 4))
    with CubeWriter(path, cube.shape, wavelengths=wavelengths, band_names=band_names, map_info=map_info,
                    coordinate_system=coordinate_system, description=description,
                    data_ignore_value=data_ignore_value, extra=extra) as writer:
        for r0 in range(0, height, rows_per_write):
            rows = slice(r0, min(height, r0 + rows_per_write))
            writer.write_tile(rows, slice(0, width), cube[rows])
    return writer.header_path


def write_library(path: str | os.PathLike, spectra: np.ndarray, wavelengths=None,
                  names: Sequence[str] | None = None, description: str | None = None) -> Path:
    """Write an ENVI spectral library ``X.sli`` + ``X.sli.hdr`` (earthlib's layout); returns the header.

    ``spectra`` is (n, C): one spectrum per line, ``samples = C``, ``bands = 1``, float32 little endian.
    ``path`` is ``X``, ``X.sli`` or ``X.sli.hdr``. ``wavelengths`` (C,) in nanometres; ``names`` n names
    without commas, braces or line breaks.
    """
    spectra = np.asarray(spectra)
    if spectra.ndim != 2 or min(spectra.shape) < 1:
        raise UsageError(f"library spectra must have shape (n, C) with n, C >= 1, got {spectra.shape}")
    count, channels = spectra.shape
    header_path, data_path = _output_paths(path, ".sli")
    if names is not None:
        names = list(names)
        if len(names) != count:
            raise UsageError(f"{len(names)} names for {count} spectra")
    metadata = [
        ("description", None if description is None else "{" + _check_braced(str(description).strip(),
                                                                            "description") + "}"),
        ("wavelength units", None if wavelengths is None else "Nanometers"),
        ("wavelength", None if wavelengths is None else _numbers_text(wavelengths, channels, "wavelengths")),
        ("spectra names", None if names is None else _list_text(names, "spectrum name")),
    ]
    structure = [("samples", channels), ("lines", count), ("bands", 1), ("header offset", 0),
                 ("file type", LIBRARY_FILE_TYPE), ("data type", 4), ("interleave", "bsq"), ("byte order", 0)]
    text = _header_text(structure, metadata, None)
    try:
        np.ascontiguousarray(spectra, dtype="<f4").tofile(data_path)
        header_path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise output_error(data_path, "write the spectral library", exc) from exc
    return header_path
