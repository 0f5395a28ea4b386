"""Fuzzing the ENVI header parser: whatever the text, parse_header returns a consistent header or raises
EnviError, never another exception. Bounded so the file runs in a few seconds."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from unmix.errors import EnviError  # noqa: E402
from unmix.io.envi import DATA_TYPES, EnviHeader, parse_header, read_cube, write_cube  # noqa: E402

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

VALID = """ENVI
description = {a test
  header}
samples = 4
lines = 3
bands = 2
header offset = 0
file type = ENVI Standard
data type = 12
interleave = bil
byte order = 1
map info = {UTM, 1, 1, 0, 0, 30, 30, 13, North, WGS-84, rotation=10}
coordinate system string = {PROJCS["x",GEOGCS["y"]]}
wavelength units = Micrometers
wavelength = { 0.45 , 0.55 }
fwhm = {0.01, 0.01}
bbl = {1, 0}
band names = {blue, green}
reflectance scale factor = 10000
data ignore value = -9999
"""

KEYS = ["samples", "lines", "bands", "data type", "interleave", "byte order", "header offset",
        "wavelength", "wavelength units", "fwhm", "bbl", "band names", "spectra names", "file type",
        "reflectance scale factor", "data ignore value", "map info", "coordinate system string", "description"]
ATOMS = ["0", "1", "2", "-1", "4", "12", "6", "1e400", "nan", "inf", "bsq", "BIL", "bip", "x", "", " ",
         "{", "}", ",", "=", ";", "\n", "\r", "\x00", "\u00b5m", "um", "nm", "Index", "ENVI", "9" * 30,
         "ENVI Spectral Library"]


def _check(text: str) -> None:
    try:
        header = parse_header(text, "fuzz.hdr")
    except EnviError as exc:
        assert exc.key and str(exc).startswith("fuzz.hdr: key ")
        return
    assert isinstance(header, EnviHeader)
    assert min(header.samples, header.lines, header.bands) >= 1
    assert header.data_type in DATA_TYPES and header.interleave in ("bsq", "bil", "bip")
    assert header.byte_order in (0, 1) and header.header_offset >= 0
    for values in (header.wavelengths, header.fwhm, header.bbl):
        assert values is None or values.shape == (header.channels,)
    assert header.band_names is None or len(header.band_names) == header.channels
    assert header.spectra_names is None or len(header.spectra_names) == header.lines
    if header.wavelengths is not None:
        assert np.all(np.isfinite(header.wavelengths))
    assert header.reflectance_scale is None or header.reflectance_scale > 0


@FUZZ
@given(st.booleans(), st.text(max_size=300))
def test_random_text(prefix, text):
    _check(("ENVI\n" if prefix else "") + text)


@FUZZ
@given(st.data())
def test_mutated_valid_header(data):
    text = VALID
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(text)))
        action = data.draw(st.sampled_from(["delete", "insert", "replace", "duplicate line"]))
        if action == "delete":
            text = text[:position] + text[position + data.draw(st.integers(1, 20)):]
        elif action == "insert":
            text = text[:position] + data.draw(st.sampled_from(ATOMS) | st.text(max_size=5)) + text[position:]
        elif action == "replace":
            text = text[:position] + data.draw(st.sampled_from(ATOMS)) + text[position + 1:]
        else:
            lines = text.split("\n")
            index = position % len(lines)
            lines.insert(index, lines[index])
            text = "\n".join(lines)
    _check(text)


_values = st.one_of(
    st.sampled_from(ATOMS),
    st.integers(-5, 20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.lists(st.sampled_from(ATOMS) | st.floats(0, 3000).map(repr), max_size=6).map(
        lambda items: "{" + ", ".join(items) + "}"),
    st.text(max_size=20),
)


@FUZZ
@given(st.dictionaries(st.sampled_from(KEYS) | st.text(min_size=1, max_size=12), _values, max_size=12))
def test_random_key_value_pairs(pairs):
    _check("ENVI\n" + "".join(f"{key} = {value}\n" for key, value in pairs.items()))


@FUZZ
@given(st.fixed_dictionaries({"samples": st.integers(1, 6), "lines": st.integers(1, 6), "bands": st.integers(1, 4),
                              "data type": st.sampled_from(sorted(DATA_TYPES)),
                              "interleave": st.sampled_from(["bsq", "BIL", "Bip"]),
                              "byte order": st.sampled_from([0, 1])}),
       st.lists(st.sampled_from(KEYS[7:]), max_size=4))
def test_structurally_valid_headers_parse(structure, optional):
    text = "ENVI\n" + "".join(f"{key} = {value}\n" for key, value in structure.items())
    header = parse_header(text, "fuzz.hdr")
    assert (header.samples, header.lines, header.bands) == (structure["samples"], structure["lines"],
                                                            structure["bands"])
    assert header.interleave == structure["interleave"].lower()
    _check(text + "".join(f"{key} = {{1}}\n" for key in optional))


_safe_text = st.text(st.characters(blacklist_characters="{}\r\n", blacklist_categories=("Cs",)),
                     min_size=1, max_size=40).map(str.strip).filter(bool)


@settings(max_examples=60, deadline=None)
@given(_safe_text, _safe_text, st.lists(_safe_text.filter(lambda name: "," not in name), min_size=2, max_size=2))
def test_writer_round_trips_free_text(map_info, coordinate_system, band_names):
    with tempfile.TemporaryDirectory() as folder:
        path = write_cube(Path(folder) / "t", np.zeros((1, 1, 2)), map_info=map_info,
                          coordinate_system=coordinate_system, band_names=band_names)
        scene = read_cube(path)
    assert scene.map_info == map_info and scene.coordinate_system == coordinate_system
    assert scene.band_names == band_names
