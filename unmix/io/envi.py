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
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from unmix.errors import EnviError, MissingEnviFileError, UsageError, output_error
from unmix.io.scene import Scene

__all__ = [
    "DATA_TYPES",
    "EnviHeader",
    "EnviFile",
    "SpectralLibraryFile",
    "CubeWriter",
    "parse_header",
    "read_header",
    "find_envi_files",
    "open_envi",
    "read_cube",
    "write_cube",
    "read_library",
    "write_library",
]

#: ENVI ``data type`` codes read and written here (6 and 9 complex, 10-11 are not supported).
DATA_TYPES: dict[int, np.dtype] = {
    1: np.dtype(np.uint8),
    2: np.dtype(np.int16),
    3: np.dtype(np.int32),
    4: np.dtype(np.float32),
    5: np.dtype(np.float64),
    12: np.dtype(np.uint16),
    13: np.dtype(np.uint32),
    14: np.dtype(np.int64),
    15: np.dtype(np.uint64),
}
INTERLEAVES = ("bsq", "bil", "bip")
LIBRARY_FILE_TYPE = "ENVI Spectral Library"

# Extensions tried, in this order, for the data file beside ``X.hdr`` (after ``X`` itself).
_DATA_EXTENSIONS = (".img", ".dat", ".raw", ".bsq", ".bil", ".bip", ".sli")
_MAX_HEADER_BYTES = 64 * 2**20
#: Largest ``samples``, ``lines`` or ``bands`` opened (2**31 - 1, what a C int and every ENVI tool holds); a
#: header claiming more is refused at open (after the data-file size check), before anything is allocated.
MAX_DIMENSION = 2**31 - 1
# Reads: runs of a window closer than this many bytes are fetched in one read (a read call costs about
# as much as copying this many bytes), and no single read is larger than _MAX_READ_BYTES.
_GAP_BYTES = 32 * 1024
_MAX_READ_BYTES = 8 * 2**20
_WRITE_CHUNK_BYTES = 64 * 2**20

# wavelength units -> factor to nanometres; None: a unit that is not a length (no wavelengths in nm).
_LENGTH_UNITS = {
    **dict.fromkeys(("nanometers", "nanometer", "nanometres", "nanometre", "nm"), 1.0),
    **dict.fromkeys(("micrometers", "micrometer", "micrometres", "micrometre", "microns", "micron",
                     "um", "\u00b5m", "\u03bcm"), 1000.0),
    **dict.fromkeys(("millimeters", "millimeter", "millimetres", "millimetre", "mm"), 1e6),
    **dict.fromkeys(("centimeters", "centimeter", "centimetres", "centimetre", "cm"), 1e7),
    **dict.fromkeys(("meters", "meter", "metres", "metre", "m"), 1e9),
    **dict.fromkeys(("angstroms", "angstrom", "\u00e5"), 0.1),
}
_UNKNOWN_UNITS = ("", "unknown", "<unspecified>")
_INT_PATTERN = re.compile(r"\+?[0-9]{1,18}")
_BRACES = re.compile(r"[{}]")
_LINE_BREAKS = re.compile(r"\r\n|\r|\n")


# ------------------------------------------------------------------------------------------ header


@dataclass(eq=False)
class EnviHeader:
    """An ENVI header's values, typed.

    Attributes:
        path: the header file (for messages).
        samples, lines, bands: columns, rows and bands of the raster (for a spectral library: channels,
            spectra and 1).
        data_type: the ENVI code (see :data:`DATA_TYPES`).
        interleave: ``'bsq'``, ``'bil'`` or ``'bip'`` (any case in the file). May be absent only when
            ``bands == 1``, where the three layouts are the same; it is then ``'bsq'``.
        byte_order: 0 little endian, 1 big endian. ENVI does not require the key; when absent it is 0
            (little endian, what nearly every writer produces).
        header_offset: bytes to skip at the start of the data file (0 when absent).
        reflectance_scale: ``reflectance scale factor`` (stored = reflectance x factor), or None.
        wavelengths: (C,) float64 band centres in nanometres, or None. ``wavelength units`` micrometres
            (``Micrometers``, ``um``, ``µm``, ``microns``) are multiplied by 1000; nanometres kept; other
            lengths converted. Without units (or ``Unknown``) values all below 100 are taken as
            micrometres, otherwise as nanometres (a note says so). With a unit that is not a length
            (``Index``, ``Wavenumber``, ``GHz``...) this is None and the raw text stays in ``raw``.
        fwhm: (C,) band widths in nanometres, converted with the same factor as the wavelengths. Without
            units and without wavelengths, widths all below 1 are taken as micrometres, others as nm.
        bbl: (C,) bool, True for good bands, or None.
        data_ignore_value: the stored value that means "no data", or None.
        band_names: C names (split on commas), or None.
        map_info: ``map info`` verbatim (text inside the braces, e.g. with ``rotation=...``), or None.
        coordinate_system: ``coordinate system string`` verbatim, commas and all, or None.
        file_type: e.g. ``'ENVI Standard'`` or ``'ENVI Spectral Library'``, or None.
        description: ``description`` text, or None.
        spectra_names: ``lines`` names for a spectral library, or None.
        wavelength_units: the ``wavelength units`` text as written, or None.
        raw: every key (lower case, spaces collapsed) -> its text, braces removed, surrounding space
            stripped.
        notes: what reading assumed (e.g. the unit guess).

    C, the channel count, is ``bands`` for an image and ``samples`` for a spectral library.
    """

    path: str
    samples: int
    lines: int
    bands: int
    data_type: int
    interleave: str = "bsq"
    byte_order: int = 0
    header_offset: int = 0
    reflectance_scale: float | None = None
    wavelengths: np.ndarray | None = None
    fwhm: np.ndarray | None = None
    bbl: np.ndarray | None = None
    data_ignore_value: float | None = None
    band_names: list[str] | None = None
    map_info: str | None = None
    coordinate_system: str | None = None
    file_type: str | None = None
    description: str | None = None
    spectra_names: list[str] | None = None
    wavelength_units: str | None = None
    raw: dict[str, str] = field(default_factory=dict, repr=False)
    notes: list[str] = field(default_factory=list, repr=False)

    @property
    def dtype(self) -> np.dtype:
        """The data file's numpy dtype, with its byte order."""
        return DATA_TYPES[self.data_type].newbyteorder("<" if self.byte_order == 0 else ">")

    @property
    def is_library(self) -> bool:
        """True for an ENVI spectral library (``file type = ENVI Spectral Library``)."""
        return _is_library(self.file_type, self.path)

    @property
    def channels(self) -> int:
        """How many wavelengths a spectrum has: ``samples`` for a library, else ``bands``."""
        return self.samples if self.is_library else self.bands

    @property
    def data_bytes(self) -> int:
        """Bytes the data file needs: header offset plus every value."""
        return self.header_offset + self.lines * self.samples * self.bands * self.dtype.itemsize


def _is_library(file_type: str | None, path: str) -> bool:
    if file_type is not None:
        return file_type.strip().lower() == LIBRARY_FILE_TYPE.lower()
    return path.lower().endswith(".sli.hdr")


def _entries(text: str, path: str) -> dict[str, str]:
    """Split header text into key -> value text (braces removed, stripped); keys lower case."""
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = _LINE_BREAKS.split(text)  # not splitlines(): form feeds etc. inside a value are kept
    first = lines[0].strip() if lines else ""
    if first.upper() != "ENVI":
        raise EnviError(path, "first line", "'ENVI' (the first line of every ENVI header)", first)
    entries: dict[str, str] = {}
    index = 1
    while index < len(lines):
        line = lines[index]
        index += 1
        stripped = line.strip()
        if not stripped or stripped.startswith(";") or "=" not in line:
            continue  # blank, comment, or a line ENVI itself ignores
        key, _, value = line.partition("=")
        key = " ".join(key.split()).lower()
        value = value.strip()
        if not key:
            continue
        if value.startswith("{"):
            depth, scanned = 0, 0
            while True:
                close = None
                for match in _BRACES.finditer(value, scanned):
                    depth += 1 if match.group() == "{" else -1
                    if depth == 0:
                        close = match.start()
                        break
                if close is not None:
                    value = value[1:close]
                    break
                if index >= len(lines):
                    raise EnviError(path, key, "a closing '}' for the value's opening '{'",
                                    value[:40])
                scanned = len(value)
                value = value + "\n" + lines[index]
                index += 1
            value = value.strip()
        entries[key] = value
    return entries


def _require(entries: Mapping[str, str], key: str, path: str) -> str:
    if key not in entries:
        raise EnviError(path, key, "a value (the key is required)")
    return entries[key]


def _integer(entries: Mapping[str, str], key: str, path: str, minimum: int,
             default: int | None = None) -> int:
    if key not in entries and default is not None:
        return default
    text = _require(entries, key, path).strip()
    if not _INT_PATTERN.fullmatch(text) or int(text) < minimum:
        kind = "a positive integer" if minimum > 0 else "a non-negative integer"
        raise EnviError(path, key, kind, text)
    return int(text)


def _number(entries: Mapping[str, str], key: str, path: str) -> float | None:
    if key not in entries:
        return None
    text = entries[key].strip()
    try:
        return float(text)
    except ValueError:
        raise EnviError(path, key, "a number", text) from None


def _split(text: str) -> list[str]:
    return [item.strip() for item in text.split(",")]


def _numbers(entries: Mapping[str, str], key: str, path: str, count: int) -> np.ndarray | None:
    if key not in entries:
        return None
    items = _split(entries[key])
    if items and not items[-1]:
        items.pop()  # "{1, 2, 3, }": a trailing comma
    values = np.empty(len(items), dtype=np.float64)
    for position, item in enumerate(items):
        try:
            values[position] = float(item)
        except ValueError:
            raise EnviError(path, key, f"numbers separated by commas (item {position + 1})", item) from None
    if not np.all(np.isfinite(values)):
        raise EnviError(path, key, "finite numbers", entries[key][:60])
    if len(values) != count:
        raise EnviError(path, key, f"{count} values (one per channel)", f"{len(values)} values")
    return values


def _names(entries: Mapping[str, str], key: str, path: str, count: int, what: str) -> list[str] | None:
    if key not in entries:
        return None
    names = _split(entries[key])
    if len(names) != count:
        raise EnviError(path, key, f"{count} comma-separated names (one per {what})", f"{len(names)} names")
    return names


def parse_header(text: str, path: str | os.PathLike = "<header>") -> EnviHeader:
    """Parse ENVI header text into an :class:`EnviHeader`; ``path`` is only used in messages.

    Keys are case-insensitive; ``{...}`` values may span lines; lines starting with ``;`` are comments;
    the first line must be ``ENVI``. Raises EnviError naming the key for any missing or malformed value.
    """
    path = str(path)
    entries = _entries(text, path)
    samples = _integer(entries, "samples", path, 1)
    lines = _integer(entries, "lines", path, 1)
    bands = _integer(entries, "bands", path, 1)
    data_type = _integer(entries, "data type", path, 0)
    if data_type not in DATA_TYPES:
        codes = ", ".join(str(code) for code in DATA_TYPES)
        raise EnviError(path, "data type", f"one of {codes} (complex types are not supported)",
                        entries["data type"].strip())
    if "interleave" in entries:
        interleave = entries["interleave"].strip().lower()
        if interleave not in INTERLEAVES:
            raise EnviError(path, "interleave", "bsq, bil or bip", entries["interleave"].strip())
    elif bands == 1:
        interleave = "bsq"  # one band: the three layouts are the same bytes
    else:
        raise EnviError(path, "interleave", "bsq, bil or bip (the key is required when bands > 1)")
    byte_order = _integer(entries, "byte order", path, 0, default=0)
    if byte_order not in (0, 1):
        raise EnviError(path, "byte order", "0 (little endian) or 1 (big endian)", entries["byte order"].strip())
    header_offset = _integer(entries, "header offset", path, 0, default=0)

    scale = _number(entries, "reflectance scale factor", path)
    if scale is not None and not (math.isfinite(scale) and scale > 0):
        raise EnviError(path, "reflectance scale factor", "a positive finite number",
                        entries["reflectance scale factor"].strip())
    ignore = _number(entries, "data ignore value", path)

    file_type = entries.get("file type")
    library = _is_library(file_type, path)
    channels = samples if library else bands
    notes: list[str] = []
    wavelengths = _numbers(entries, "wavelength", path, channels)
    fwhm = _numbers(entries, "fwhm", path, channels)
    units = entries.get("wavelength units")
    unit_key = "" if units is None else units.strip().lower()
    if unit_key in _LENGTH_UNITS:
        factor: float | None = _LENGTH_UNITS[unit_key]
    elif unit_key in _UNKNOWN_UNITS:
        # widths are far smaller than centres: alone, they are micrometres only when all below 1
        reference, limit = (wavelengths, 100.0) if wavelengths is not None else (fwhm, 1.0)
        factor = 1.0
        if reference is not None and len(reference) and float(np.max(reference)) < limit:
            factor = 1000.0
            notes.append(f"no wavelength units given and every value is below {limit:g}: read as micrometres")
    else:
        factor = None
        if wavelengths is not None or fwhm is not None:
            notes.append(f"wavelength units {units.strip()!r} are not a length: wavelengths left unset")
    if factor is None:
        wavelengths = fwhm = None
    else:
        wavelengths = None if wavelengths is None else wavelengths * factor
        fwhm = None if fwhm is None else fwhm * factor

    bbl = _numbers(entries, "bbl", path, channels)
    return EnviHeader(
        path=path,
        samples=samples,
        lines=lines,
        bands=bands,
        data_type=data_type,
        interleave=interleave,
        byte_order=byte_order,
        header_offset=header_offset,
        reflectance_scale=scale,
        wavelengths=wavelengths,
        fwhm=fwhm,
        bbl=None if bbl is None else bbl != 0,
        data_ignore_value=ignore,
        band_names=_names(entries, "band names", path, channels, "channel"),
        map_info=entries.get("map info"),
        coordinate_system=entries.get("coordinate system string"),
        file_type=file_type,
        description=entries.get("description"),
        spectra_names=_names(entries, "spectra names", path, lines, "spectrum (line)"),
        wavelength_units=units,
        raw=entries,
        notes=notes,
    )


# ------------------------------------------------------------------------------------------- files


def _is_hdr(path: Path) -> bool:
    return path.suffix.lower() == ".hdr"


def _find_header(path: Path) -> Path:
    if _is_hdr(path):
        if not path.is_file():
            raise MissingEnviFileError(path, "header file", "an existing ENVI header file")
        return path
    candidates = [path.with_name(path.name + ".hdr"), path.with_name(path.name + ".HDR")]
    if path.suffix:
        candidates += [path.with_suffix(".hdr"), path.with_suffix(".HDR")]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    names = " or ".join(dict.fromkeys(c.name for c in candidates if c.suffix == ".hdr"))
    raise MissingEnviFileError(path, "header file", f"an ENVI header beside it ({names})")


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


def read_header(path: str | os.PathLike) -> EnviHeader:
    """Read the header of an ENVI file, given the header (``X.hdr``, ``X.img.hdr``) or the data file."""
    header_path = _find_header(Path(path))
    return _read_header_file(header_path)


def _read_header_file(header_path: Path) -> EnviHeader:
    try:
        with open(header_path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > _MAX_HEADER_BYTES:
                raise EnviError(header_path, "header file", f"a text header of at most {_MAX_HEADER_BYTES} bytes",
                                size)
            data = handle.read()
    except OSError as exc:
        raise EnviError(header_path, "header file", "a readable file", exc.strerror or str(exc)) from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    return parse_header(text, header_path)


def find_envi_files(path: str | os.PathLike) -> tuple[Path, Path]:
    """``(header path, data path)`` for an ENVI file given by its header or its data file.

    From ``X.hdr`` the data file is ``X``, ``X.img``, ``X.dat``, ``X.raw``, ``X.bsq``/``.bil``/``.bip``
    or ``X.sli`` (first found, also upper case); ``X.img.hdr`` names ``X.img``. From a data file ``X.img``
    the header is ``X.img.hdr`` or ``X.hdr``. Raises EnviError (key ``header file`` / ``data file``).
    """
    return _locate(Path(path))[:2]


def _locate(path: Path) -> tuple[Path, Path, EnviHeader]:
    header_path = _find_header(path)
    header = _read_header_file(header_path)
    if not _is_hdr(path) and path.is_file():
        return header_path, path, header
    return header_path, _find_data(header_path, header.interleave), header


def _window(window: slice, size: int, what: str) -> tuple[int, int]:
    if not isinstance(window, slice):
        raise UsageError(f"{what} must be a slice, got {type(window).__name__}")
    start, stop, step = window.indices(size)
    if step != 1:
        raise UsageError(f"{what} must be a contiguous slice (step 1), got step {step}")
    return start, max(start, stop)


def _read_into(handle, buffer: np.ndarray, offset: int) -> int:
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
            got = _read_into(handle, buffer, offset)
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


# ------------------------------------------------------------------------------------------ writing

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
    return "{" + ", ".join(repr(float(v)) for v in array) + "}"


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


def _write_at(handle, data: memoryview, offset: int) -> None:
    written = 0
    while written < len(data):
        if hasattr(os, "pwrite"):
            count = os.pwrite(handle.fileno(), data[written:], offset + written)
        else:
            handle.seek(offset + written)
            count = handle.write(data[written:])
        written += count


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
                    _write_at(self._handle, memoryview(block[band]).cast("B"), start * 4)
                else:
                    for i in range(r1 - r0):
                        _write_at(self._handle, memoryview(block[band, i]).cast("B"), (start + i * width) * 4)
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
