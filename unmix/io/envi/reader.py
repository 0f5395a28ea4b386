"""Reading ENVI rasters and spectral libraries window by window, with positioned reads.

:class:`EnviFile` reads each (rows x cols x bands) window with positioned reads of the contiguous runs
it needs in the file's interleave (no long-lived memmap, whose touched pages would count as resident
memory), so memory stays flat in the cube's size. :func:`read_cube` turns stored values into
reflectance: ``data ignore value`` -> NaN, ``reflectance scale factor`` divided out, bad bands dropped.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unmix.errors import EnviError, MissingEnviFileError, UsageError
from unmix.io.envi.header import EnviHeader, find_header, read_header
from unmix.io.files import read_into
from unmix.io.scene import Scene

__all__ = ["MAX_DIMENSION", "EnviFile", "SpectralLibraryFile", "cube_name", "find_envi_files", "open_envi",
           "read_cube", "read_library"]

# Extensions tried, in this order, for the data file beside ``X.hdr`` (after ``X`` itself).
_DATA_EXTENSIONS = (".img", ".dat", ".raw", ".bsq", ".bil", ".bip", ".sli")
#: Largest ``samples``, ``lines`` or ``bands`` opened (2**31 - 1, what a C int and every ENVI tool holds); a
#: header claiming more is refused at open (after the data-file size check), before anything is allocated.
MAX_DIMENSION = 2**31 - 1
# Reads: runs of a window closer than this many bytes are fetched in one read (a read call costs about
# as much as copying this many bytes), and no single read is larger than _MAX_READ_BYTES.
_GAP_BYTES = 32 * 1024
_MAX_READ_BYTES = 8 * 2**20


def _find_data(header_path: Path, interleave: str) -> Path:
    base = header_path.with_suffix("")  # X.hdr -> X, X.img.hdr -> X.img
    extensions = list(dict.fromkeys(_DATA_EXTENSIONS + ("." + interleave,)))
    candidates = [base] + [base.with_name(base.name + ext) for ext in extensions]
    candidates += [base.with_name(base.name + ext.upper()) for ext in extensions]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    tried = ", ".join(c.name for c in candidates[: len(extensions) + 1])
    raise MissingEnviFileError(header_path, "data file", f"a data file beside the header (tried {tried})")


def find_envi_files(path: str | os.PathLike) -> tuple[Path, Path]:
    """``(header path, data path)`` for an ENVI file given by its header or its data file.

    From ``X.hdr`` the data file is ``X``, ``X.img``, ``X.dat``, ``X.raw``, ``X.bsq``/``.bil``/``.bip``
    or ``X.sli`` (first found, also upper case); ``X.img.hdr`` names ``X.img``. From a data file ``X.img``
    the header is ``X.img.hdr`` or ``X.hdr``. Raises EnviError (key ``header file`` / ``data file``).
    """
    return _locate(Path(path))[:2]


def _locate(path: Path) -> tuple[Path, Path, EnviHeader]:
    header_path = find_header(path)
    header = read_header(header_path)
    if path.suffix.lower() != ".hdr" and path.is_file():
        return header_path, path, header
    return header_path, _find_data(header_path, header.interleave), header


def _window(window: slice, size: int, what: str) -> tuple[int, int]:
    if not isinstance(window, slice):
        raise UsageError(f"{what} must be a slice, got {type(window).__name__}")
    start, stop, step = window.indices(size)
    if step != 1:
        raise UsageError(f"{what} must be a contiguous slice (step 1), got step {step}")
    return start, max(start, stop)


class EnviFile:
    """An ENVI raster on disk, read window by window; nothing is loaded at open.

    Attributes:
        header: the parsed :class:`EnviHeader`.
        header_path, data_path: the two files.
        shape: (lines, samples, bands), i.e. (H, W, B) in the file (every band, bad ones included).
    """

    def __init__(self, header: EnviHeader, header_path: Path, data_path: Path):
        self.header = header
        self.header_path = Path(header_path)
        self.data_path = Path(data_path)
        self.shape = (header.lines, header.samples, header.bands)
        try:
            size = self.data_path.stat().st_size
        except OSError as exc:
            raise EnviError(self.data_path, "data file", "a readable file", exc.strerror or str(exc)) from exc
        if size < header.data_bytes:
            raise EnviError(
                self.data_path, "data file",
                f"at least {header.data_bytes} bytes (header offset {header.header_offset} + "
                f"{header.lines} x {header.samples} x {header.bands} values of {header.dtype.itemsize} "
                f"bytes) as {self.header_path.name} says",
                size,
            )
        for key, count in (("samples", header.samples), ("lines", header.lines), ("bands", header.bands)):
            if count > MAX_DIMENSION:
                raise EnviError(self.header_path, key, f"at most {MAX_DIMENSION} (an absurd size; is the header "
                                "corrupt?)", count)

    def __repr__(self) -> str:
        return (f"EnviFile({str(self.data_path)!r}, shape={self.shape}, data_type={self.header.data_type}, "
                f"interleave={self.header.interleave!r})")

    @property
    def dtype(self) -> np.dtype:
        """The stored values' dtype in native byte order."""
        return self.header.dtype.newbyteorder("=")

    def read(self, rows: slice, cols: slice, bands: Any = None) -> np.ndarray:
        """The (h, w, b) window as native float32 stored values (no scaling, no masking).

        ``rows`` and ``cols`` are slices (clipped to the raster, step 1); ``bands`` is None (all), a slice,
        a sequence of band indices, or a boolean mask of length ``bands``.
        """
        return self.read_raw(rows, cols, bands).astype(np.float32, copy=False)

    def read_raw(self, rows: slice, cols: slice, bands: Any = None) -> np.ndarray:
        """The (h, w, b) window in the stored dtype, native byte order; see :meth:`read`."""
        lines, samples, n_bands = self.shape
        r0, r1 = _window(rows, lines, "rows")
        c0, c1 = _window(cols, samples, "cols")
        band_index = self._band_index(bands)
        out = np.empty((r1 - r0, c1 - c0, len(band_index)), dtype=self.dtype)
        if out.size == 0:
            return out
        interleave = self.header.interleave
        with open(self.data_path, "rb") as handle:
            if interleave == "bsq":  # file axes (band, line, sample)
                for k, band in enumerate(band_index):
                    out[:, :, k] = self._region(handle, band * lines, lines, samples, (r0, r1), (c0, c1))
            else:
                b0, b1 = int(band_index.min()), int(band_index.max()) + 1
                local = band_index - b0
                for i, line in enumerate(range(r0, r1)):
                    if interleave == "bil":  # file axes (line, band, sample)
                        region = self._region(handle, line * n_bands, n_bands, samples, (b0, b1), (c0, c1))
                        out[i] = region[local].T
                    else:  # bip: file axes (line, sample, band)
                        region = self._region(handle, line * samples, samples, n_bands, (c0, c1), (b0, b1))
                        out[i] = region[:, local]
        return out

    def _band_index(self, bands: Any) -> np.ndarray:
        n_bands = self.shape[2]
        if bands is None:
            return np.arange(n_bands)
        if isinstance(bands, slice):
            return np.arange(n_bands)[bands]
        index = np.asarray(bands)
        if index.dtype == bool:
            if index.shape != (n_bands,):
                raise UsageError(f"a band mask must have {n_bands} entries, got shape {index.shape}")
            return np.flatnonzero(index)
        if index.ndim != 1 or not np.issubdtype(index.dtype, np.integer):
            raise UsageError(f"bands must be a slice, band indices or a boolean mask, got {bands!r}")
        if index.size and (index.min() < -n_bands or index.max() >= n_bands):
            raise UsageError(f"band indices must lie in [0, {n_bands}), got {index.min()}..{index.max()}")
        return np.where(index < 0, index + n_bands, index)

    def _region(self, handle, outer: int, n_mid: int, n_inner: int,
                mid: tuple[int, int], inner: tuple[int, int]) -> np.ndarray:
        """Values [mid0:mid1, inner0:inner1] of the (n_mid, n_inner) plane starting at item ``outer*n_inner``."""
        dtype = self.header.dtype
        itemsize = dtype.itemsize
        m0, m1 = mid
        i0, i1 = inner
        width = i1 - i0
        region = np.empty((m1 - m0, width), dtype=dtype)
        row_bytes = n_inner * itemsize
        gap = (n_inner - width) * itemsize
        group = max(1, _MAX_READ_BYTES // row_bytes) if gap <= _GAP_BYTES else 1
        for g0 in range(m0, m1, group):
            g1 = min(m1, g0 + group)
            count = (g1 - g0 - 1) * n_inner + width
            offset = self.header.header_offset + ((outer + g0) * n_inner + i0) * itemsize
            buffer = np.empty(count * itemsize, dtype=np.uint8)
            got = read_into(handle, buffer, offset)
            if got < buffer.size:
                raise EnviError(self.data_path, "data file", f"{offset + buffer.size} bytes or more",
                                f"end of file at {offset + got} bytes (was it truncated while open?)")
            values = buffer.view(dtype)
            region[g0 - m0:g1 - m0] = np.lib.stride_tricks.as_strided(
                values, shape=(g1 - g0, width), strides=(row_bytes, itemsize), writeable=False)
        return region


def open_envi(path: str | os.PathLike) -> EnviFile:
    """Open an ENVI raster given its header or its data file (see :func:`find_envi_files`).

    Checks the data file holds at least ``header offset + lines*samples*bands*itemsize`` bytes, so an
    absurd header is refused before anything is allocated; reads nothing else.
    """
    header_path, data_path, header = _locate(Path(path))
    return EnviFile(header, header_path, data_path)


def _stem(header_path: Path) -> str:
    base = header_path.with_suffix("")
    if base.suffix.lower() in _DATA_EXTENSIONS:
        base = base.with_suffix("")
    return base.name


def cube_name(path: str | os.PathLike) -> str:
    """The name :func:`read_cube` gives the cube at ``path`` (a header or a data file), without opening it."""
    path = Path(path)
    if path.suffix.lower() == ".hdr":
        return _stem(path)
    return path.with_suffix("").name if path.suffix.lower() in _DATA_EXTENSIONS else path.name


def _good_bands(header: EnviHeader) -> np.ndarray | None:
    """Indices of the channels with bbl = 1, or None when every channel is kept."""
    if header.bbl is None or header.bbl.all():
        return None
    good = np.flatnonzero(header.bbl)
    if good.size == 0:
        raise EnviError(header.path, "bbl", "at least one good band (bbl = 1)", "every band marked bad")
    return good


def _to_reflectance(raw: np.ndarray, header: EnviHeader) -> np.ndarray:
    """Stored values -> float32: ignore value (compared on stored values) to NaN, scale divided out."""
    values = raw.astype(np.float32)
    ignore = header.data_ignore_value
    if ignore is not None:
        values[np.isnan(raw) if math.isnan(ignore) else raw == ignore] = np.nan
    if header.reflectance_scale is not None:
        values /= np.float32(header.reflectance_scale)
    return values


def _keep(values, good: np.ndarray | None):
    if values is None or good is None:
        return values
    return [values[i] for i in good] if isinstance(values, list) else values[good]


#: A cube is refused for its byte order when its sample row is this many times rougher in the header's
#: byte order than in the other one (and smooth in the other one): see :func:`_check_byte_order`.
_BYTE_ORDER_RATIO = 5.0
_BYTE_ORDER_SMOOTH = 0.5


def _absurd_fraction(values: np.ndarray, usable: np.ndarray) -> float:
    """Fraction of the usable non-zero values whose magnitude is below 1e-20 or above 1e20."""
    magnitudes = np.abs(values[usable])
    magnitudes = magnitudes[magnitudes > 0]
    if magnitudes.size < 8:
        return math.nan
    return float(np.mean((magnitudes < 1e-20) | (magnitudes > 1e20)))


def _roughness(values: np.ndarray, usable: np.ndarray, axis: int) -> float:
    """Mean |difference of neighbours| over mean |value| along ``axis``, over pairs both ``usable``."""
    pairs = np.take(usable, range(1, usable.shape[axis]), axis) & np.take(usable, range(usable.shape[axis] - 1),
                                                                          axis)
    if pairs.sum() < 8:
        return math.nan
    diffs = np.abs(np.diff(values, axis=axis))[pairs]
    level = np.abs(values[usable]).mean()
    return float(diffs.mean() / level) if level > 0 else math.nan


def _check_byte_order(envi: EnviFile) -> None:
    """Refuse a cube whose ``byte order`` flag is evidently wrong (reads one sample row of <= 64 pixels).

    Spectra are smooth: neighbouring values differ by a small fraction of their level. Read in the wrong
    byte order, the low (noisy) byte becomes the high one and the values jump like noise over many
    orders of magnitude. When the row is at least :data:`_BYTE_ORDER_RATIO` times rougher in the
    header's order than in the other one, and smooth in the other one, or (floating-point types) when
    most of its values are absurd (below 1e-20 or above 1e20 in magnitude) in the header's order and
    none in the other, the header is wrong: EnviError on ``byte order``. Single-byte types and
    inconclusive rows (constant, masked, too small) pass.
    """
    header = envi.header
    if header.dtype.itemsize == 1:
        return
    lines, samples, bands = envi.shape
    raw = envi.read_raw(slice(lines // 2, lines // 2 + 1), slice(0, min(samples, 64)))[0]  # (w, B) native
    with np.errstate(all="ignore"):
        flagged = raw.astype(np.float64)
        swapped = raw.byteswap().astype(np.float64)
        usable = np.isfinite(flagged) & np.isfinite(swapped)
        if header.data_ignore_value is not None:
            usable &= raw != header.data_ignore_value
        axis = 1 if bands >= 3 else 0
        as_flagged = _roughness(flagged, usable, axis)
        as_swapped = _roughness(swapped, usable, axis)
        absurd = header.dtype.kind == "f" and _absurd_fraction(flagged, usable) > 0.5 \
            and _absurd_fraction(swapped, usable) == 0.0
    rough = math.isfinite(as_flagged) and math.isfinite(as_swapped) and as_swapped < _BYTE_ORDER_SMOOTH \
        and as_flagged > _BYTE_ORDER_RATIO * as_swapped
    if rough or absurd:
        other = 1 - header.byte_order
        names = ("little endian", "big endian")
        raise EnviError(envi.header_path, "byte order",
                        f"{other} ({names[other]}): read as {names[header.byte_order]} the data jump like noise "
                        f"(values up to {np.nanmax(np.abs(flagged[usable])):.3g}), read as {names[other]} they are "
                        "smooth spectra; correct the header", header.byte_order)


def read_cube(path: str | os.PathLike, check_byte_order: bool = True) -> Scene:
    """Open an ENVI cube as a lazy :class:`Scene` (``unmix.read_cube``); nothing is read until a tile is.

    ``path`` is the header or the data file. Tiles are float32 with the ``reflectance scale factor``
    divided out, bands with ``bbl = 0`` dropped (wavelengths, fwhm and band names too) and stored values
    equal to ``data ignore value`` set to NaN. Wavelengths are in nanometres.

    The ``byte order`` flag is trusted, except that a cube evidently stored in the other byte order is
    refused (:func:`_check_byte_order` reads one row of at most 64 pixels to tell; ``check_byte_order=False``
    skips it). Raises EnviError (exit 65) for a malformed header or a data file too small for it, and
    MissingEnviFileError (exit 66) when the header or the data file is not there.
    """
    envi = open_envi(path)
    if check_byte_order:
        _check_byte_order(envi)
    header = envi.header
    good = _good_bands(header)
    n_good = header.bands if good is None else len(good)
    notes = list(header.notes)
    if good is not None:
        notes.append(f"dropped {header.bands - n_good} bad bands (bbl = 0) of {header.bands}")

    def reader(rows: slice, cols: slice) -> np.ndarray:
        return _to_reflectance(envi.read_raw(rows, cols, good), header)

    return Scene(
        name=_stem(envi.header_path),
        shape=(header.lines, header.samples, n_good),
        reader=reader,
        wavelengths=_keep(header.wavelengths, good),
        fwhm=_keep(header.fwhm, good),
        band_names=_keep(header.band_names, good),
        map_info=header.map_info,
        coordinate_system=header.coordinate_system,
        reflectance_scale=1.0 if header.reflectance_scale is None else header.reflectance_scale,
        source=str(path),
        notes=notes,
    )


# ---------------------------------------------------------------------------------------- libraries


@dataclass(eq=False)
class SpectralLibraryFile:
    """An ENVI spectral library as read from disk.

    Attributes:
        spectra: (n, C) float32, scale factor divided out, ignore values NaN, bad channels dropped.
        wavelengths: (C,) float64 nanometres, or None.
        names: n names (``spectra names``; ``'spectrum 1'``, ... when the header has none).
        fwhm: (C,) nanometres, or None.
        header: the parsed header.
    """

    spectra: np.ndarray
    wavelengths: np.ndarray | None
    names: list[str]
    fwhm: np.ndarray | None = None
    header: EnviHeader | None = field(default=None, repr=False)


def read_library(path: str | os.PathLike) -> SpectralLibraryFile:
    """Read an ENVI spectral library (``X.sli`` with ``X.sli.hdr`` or ``X.hdr``): one spectrum per line.

    The header must have ``bands = 1``; ``samples`` is the number of channels. Loads the whole file (a
    library is small next to a cube).
    """
    envi = open_envi(path)
    header = envi.header
    if header.bands != 1:
        raise EnviError(envi.header_path, "bands", "1 for a spectral library (one spectrum per line)",
                        header.bands)
    raw = envi.read_raw(slice(None), slice(None))[:, :, 0]
    good = None
    if header.bbl is not None and header.is_library:
        good = _good_bands(header)
    spectra = _to_reflectance(raw, header)
    if good is not None:
        spectra = spectra[:, good]
    names = header.spectra_names or [f"spectrum {i + 1}" for i in range(header.lines)]
    return SpectralLibraryFile(
        spectra=np.ascontiguousarray(spectra),
        wavelengths=_keep(header.wavelengths, good),
        names=list(names),
        fwhm=_keep(header.fwhm, good),
        header=header,
    )
