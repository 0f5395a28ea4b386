"""ENVI header text -> :class:`EnviHeader`: typed values, wavelengths in nanometres.

An ENVI header is ``key = value`` lines after a first line ``ENVI``; keys are case-insensitive,
``{...}`` values may span lines and ``;`` starts a comment. :func:`parse_header` types every value the
reader and the writers use and keeps the rest verbatim in :attr:`EnviHeader.raw`.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from unmix.errors import EnviError, MissingEnviFileError

__all__ = ["DATA_TYPES", "INTERLEAVES", "LIBRARY_FILE_TYPE", "EnviHeader", "find_header", "parse_header",
           "read_header"]

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
_MAX_HEADER_BYTES = 64 * 2**20

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


def find_header(path: Path) -> Path:
    """The header of the ENVI file ``path``: ``path`` itself if it ends in ``.hdr``, else ``X.hdr`` beside it."""
    if path.suffix.lower() == ".hdr":
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


def read_header(path: str | os.PathLike) -> EnviHeader:
    """Read the header of an ENVI file, given the header (``X.hdr``, ``X.img.hdr``) or the data file."""
    header_path = find_header(Path(path))
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
