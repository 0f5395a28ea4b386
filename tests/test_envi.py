"""ENVI I/O: round trips against Spectral Python (the oracle) in both directions, header semantics,
file naming, writers, bounded reads, and one EnviError per kind of bad input."""
from __future__ import annotations

import os
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

spectral_envi = pytest.importorskip("spectral.io.envi")

import unmix  # noqa: E402
from tests.conftest import need_data  # noqa: E402
from unmix.errors import EnviError, UsageError  # noqa: E402
from unmix.io.envi import reader  # noqa: E402
from unmix.io.envi import (  # noqa: E402
    CubeWriter,
    find_envi_files,
    open_envi,
    parse_header,
    read_cube,
    read_header,
    read_library,
    write_cube,
    write_library,
)

DTYPES = {1: np.uint8, 2: np.int16, 3: np.int32, 4: np.float32, 5: np.float64, 12: np.uint16, 13: np.uint32}
ROTATED_MAP_INFO = ("UTM, 1.000, 1.000, 500000.0, 4200000.0, 3.0e+01, 3.0e+01, 13, North, WGS-84, "
                    "units=Meters, rotation=23.50000000")
WKT = ('PROJCS["WGS_1984_UTM_Zone_13N",GEOGCS["GCS_WGS_1984",DATUM["D_WGS_1984",'
       'SPHEROID["WGS_1984",6378137.0,298.257223563]],PRIMEM["Greenwich",0.0],UNIT["Degree",0.0174532925199433]],'
       'PROJECTION["Transverse_Mercator"],UNIT["Meter",1.0]]')


def _values(code: int, shape, seed: int = 0) -> np.ndarray:
    """Random values covering the dtype's range (negative ones included where it has them)."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(DTYPES[code])
    if dtype.kind == "f":
        return (rng.standard_normal(shape) * 1000).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)


def _raw_file(tmp_path: Path, header: str, data: bytes = b"", data_name: str = "x.img",
              header_name: str = "x.hdr") -> Path:
    (tmp_path / data_name).write_bytes(data)
    (tmp_path / header_name).write_text(header)
    return tmp_path / header_name


def _header(samples=3, lines=2, bands=2, data_type=4, **more) -> str:
    text = (f"ENVI\nsamples = {samples}\nlines = {lines}\nbands = {bands}\nheader offset = 0\n"
            f"data type = {data_type}\ninterleave = bsq\nbyte order = 0\n")
    return text + "".join(f"{key.replace('_', ' ')} = {value}\n" for key, value in more.items())


# ------------------------------------------------------------------------------ spectral as oracle


@pytest.mark.parametrize("byte_order", [0, 1])
@pytest.mark.parametrize("code", sorted(DTYPES))
@pytest.mark.parametrize("interleave", ["bsq", "bil", "bip"])
def test_reads_what_spectral_writes(tmp_path, interleave, code, byte_order):
    cube = _values(code, (5, 7, 4), seed=code)
    header_path = tmp_path / "cube.hdr"
    spectral_envi.save_image(str(header_path), cube, dtype=DTYPES[code], interleave=interleave,
                             byteorder=byte_order, metadata={"wavelength": [0.45, 0.55, 0.65, 0.85]})
    oracle = spectral_envi.open(str(header_path)).load(dtype=DTYPES[code], scale=False)
    np.testing.assert_array_equal(np.asarray(oracle), cube)  # the oracle agrees with itself

    opened = open_envi(header_path)
    assert opened.header.interleave == interleave and opened.header.byte_order == byte_order
    assert opened.header.data_type == code and opened.shape == (5, 7, 4)
    raw = opened.read_raw(slice(None), slice(None))
    assert raw.dtype == np.dtype(DTYPES[code]) and raw.dtype.isnative
    np.testing.assert_array_equal(raw, cube)
    window = opened.read(slice(1, 4), slice(2, 6), bands=[3, 0, 2])
    assert window.dtype == np.float32
    np.testing.assert_array_equal(window, cube[1:4, 2:6][:, :, [3, 0, 2]].astype(np.float32))
    np.testing.assert_allclose(opened.header.wavelengths, [450, 550, 650, 850])
    scene = read_cube(header_path)
    np.testing.assert_array_equal(scene.read_tile(slice(0, 2), slice(5, 7)),
                                  cube[0:2, 5:7].astype(np.float32))


@pytest.mark.parametrize("interleave", ["bsq", "bil", "bip"])
def test_windows_of_every_shape_match_numpy(tmp_path, interleave):
    cube = _values(2, (9, 11, 6), seed=3)
    header_path = tmp_path / "cube.hdr"
    spectral_envi.save_image(str(header_path), cube, interleave=interleave, byteorder=1)
    opened = open_envi(header_path)
    windows = [(slice(0, 9), slice(0, 11)), (slice(3, 4), slice(10, 11)), (slice(2, 8), slice(0, 11)),
               (slice(-3, None), slice(None, 4)), (slice(5, 50), slice(8, 99)), (slice(4, 4), slice(0, 3))]
    band_sets = [None, slice(1, 5), [5, 0], np.array([True, False, True, True, False, True]), [-1]]
    for rows, cols in windows:
        for bands in band_sets:
            expected = cube[rows, cols]
            if bands is not None:
                expected = expected[:, :, bands]
            np.testing.assert_array_equal(opened.read_raw(rows, cols, bands), expected)


def test_spectral_reads_what_we_write(tmp_path):
    cube = _values(4, (6, 5, 3), seed=1)
    names = ["Band 1 (450 nm)", "red edge", "NIR"]
    header_path = write_cube(tmp_path / "out.hdr", cube, wavelengths=[450.0, 700.5, 850.25], band_names=names,
                             map_info=ROTATED_MAP_INFO, coordinate_system=WKT, description="written by unmix")
    assert header_path == tmp_path / "out.hdr" and (tmp_path / "out.img").stat().st_size == cube.size * 4
    image = spectral_envi.open(str(header_path))
    np.testing.assert_array_equal(np.asarray(image.load()), cube)
    assert image.metadata["band names"] == names
    assert ", ".join(image.metadata["map info"]) == ", ".join(part.strip() for part in ROTATED_MAP_INFO.split(","))
    assert ",".join(image.metadata["coordinate system string"]) == WKT  # spectral splits it; the bytes are intact
    assert image.bands.centers == [450.0, 700.5, 850.25]

    scene = read_cube(header_path)  # and our own round trip keeps everything verbatim
    np.testing.assert_array_equal(scene.read(), cube)
    assert scene.band_names == names and scene.map_info == ROTATED_MAP_INFO and scene.coordinate_system == WKT
    assert read_header(header_path).description == "written by unmix"


def test_spectral_reads_our_library_and_we_read_its(tmp_path):
    spectra = np.random.default_rng(2).random((4, 6)).astype(np.float32)
    names = ["soil 1", "green grass", "asphalt", "water"]
    header_path = write_library(tmp_path / "lib.sli", spectra, wavelengths=np.linspace(400, 900, 6), names=names)
    assert header_path == tmp_path / "lib.sli.hdr" and (tmp_path / "lib.sli").is_file()
    library = spectral_envi.open(str(header_path))
    np.testing.assert_array_equal(library.spectra, spectra)
    assert library.names == names
    np.testing.assert_allclose(library.bands.centers, np.linspace(400, 900, 6))

    ours = read_library(header_path)
    np.testing.assert_array_equal(ours.spectra, spectra)
    assert ours.names == names

    theirs = spectral_envi.SpectralLibrary(spectra, {"wavelength": [0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
                                                     "wavelength units": "Micrometers"})
    theirs.save(str(tmp_path / "theirs"))  # spectral's layout: theirs.hdr + theirs.sli
    read_back = read_library(tmp_path / "theirs.sli")
    np.testing.assert_array_equal(read_back.spectra, spectra)
    np.testing.assert_allclose(read_back.wavelengths, [400, 500, 600, 700, 800, 900])
    assert read_back.names == ["1", "2", "3", "4"]


def test_library_without_names_gets_numbered_names(tmp_path):
    write_library(tmp_path / "plain", np.ones((2, 3)))
    library = read_library(tmp_path / "plain.sli.hdr")
    assert library.names == ["spectrum 1", "spectrum 2"] and library.wavelengths is None


def test_earthlib_library():
    path = need_data("spectral_libraries", "earthlib", "optimized.sli")
    library = read_library(path)
    assert library.spectra.shape == (313, 180) and library.spectra.dtype == np.float32
    assert library.names[0] == "FS15R_FS4281" and len(library.names) == 313
    assert library.wavelengths[0] == pytest.approx(400.0) and library.wavelengths[-1] == pytest.approx(2450.0)
    oracle = spectral_envi.open(str(path.with_name("optimized.sli.hdr")))
    np.testing.assert_array_equal(library.spectra, oracle.spectra)


# ------------------------------------------------------------------------------ header semantics


def test_keys_case_braces_comments_and_raw():
    header = parse_header(
        "ENVI\n; a comment line\nSamples = 4\nLINES=2\nBands   = 3\nData Type = 12\nInterleave = BIP\n"
        "wavelength = {\n  500,\n  600 ,\n 700}\nBand  Names = {a, b,\n c}\ndescription = {two\n  lines}\n"
        "sensor type = Unknown\n",
        "t.hdr",
    )
    assert (header.samples, header.lines, header.bands, header.data_type) == (4, 2, 3, 12)
    assert header.interleave == "bip" and header.byte_order == 0 and header.header_offset == 0
    assert header.dtype == np.dtype("<u2")
    np.testing.assert_array_equal(header.wavelengths, [500, 600, 700])
    assert header.band_names == ["a", "b", "c"]
    assert header.description == "two\n  lines"
    assert header.raw["sensor type"] == "Unknown" and header.raw["band names"] == "a, b,\n c"
    assert set(header.raw) >= {"samples", "lines", "bands", "data type", "interleave", "wavelength"}


@pytest.mark.parametrize("units, values, expected", [
    ("Micrometers", "0.5, 1.25", [500, 1250]),
    ("micrometers", "0.5, 1.25", [500, 1250]),
    ("um", "0.5, 1.25", [500, 1250]),
    ("\u00b5m", "0.5, 1.25", [500, 1250]),
    ("\u03bcm", "0.5, 1.25", [500, 1250]),
    ("Microns", "0.5, 1.25", [500, 1250]),
    ("Nanometers", "500, 1250", [500, 1250]),
    ("nm", "50, 60", [50, 60]),
    ("Millimeters", "0.0005, 0.00125", [500, 1250]),
    (None, "0.5, 1.25", [500, 1250]),  # no units, all < 100: micrometres
    (None, "500, 1250", [500, 1250]),  # no units, large: nanometres
    ("Unknown", "0.5, 2.5", [500, 2500]),
    ("Index", "1, 2", None),  # not a length: no wavelengths in nm
    ("Wavenumber", "4000, 8000", None),
])
def test_wavelength_units(units, values, expected):
    more = {"wavelength": "{" + values + "}", "fwhm": "{" + values + "}"}
    if units is not None:
        more["wavelength_units"] = units
    header = parse_header(_header(**more), "w.hdr")
    if expected is None:
        assert header.wavelengths is None and header.fwhm is None and header.notes
    else:
        np.testing.assert_allclose(header.wavelengths, expected)
        np.testing.assert_allclose(header.fwhm, expected)  # fwhm follows the wavelengths' unit
    if units is None and values.startswith("0.5"):
        assert any("micrometres" in note for note in header.notes)


def test_small_fwhm_in_nanometres_follows_wavelengths_without_units():
    header = parse_header(_header(wavelength="{500, 600}", fwhm="{10, 10}"), "f.hdr")
    np.testing.assert_allclose(header.fwhm, [10, 10])
    alone = parse_header(_header(fwhm="{10, 12.5}"), "f.hdr")
    np.testing.assert_allclose(alone.fwhm, [10, 12.5])
    alone_um = parse_header(_header(fwhm="{0.01, 0.0125}"), "f.hdr")
    np.testing.assert_allclose(alone_um.fwhm, [10, 12.5])


def test_coordinate_system_and_rotated_map_info_verbatim():
    header = parse_header(_header(map_info="{" + ROTATED_MAP_INFO + "}",
                                  coordinate_system_string="{" + WKT + "}"), "m.hdr")
    assert header.map_info == ROTATED_MAP_INFO
    assert header.coordinate_system == WKT


def test_scale_factor_bbl_and_ignore_value(tmp_path):
    stored = np.array([[[100, 5000, 7], [-9999, 2500, 9]]], dtype=np.int16)  # (1, 2, 3)
    header_path = _raw_file(
        tmp_path,
        _header(samples=2, lines=1, bands=3, data_type=2, reflectance_scale_factor="10000",
                data_ignore_value="-9999", bbl="{1, 1, 0}", wavelength="{400, 500, 600}", fwhm="{10, 11, 12}",
                band_names="{blue, green, junk}"),
        np.ascontiguousarray(stored.transpose(2, 0, 1)).astype("<i2").tobytes(),
    )
    scene = unmix.read_cube(header_path)
    assert scene.shape == (1, 2, 2) and scene.reflectance_scale == 10000.0
    np.testing.assert_array_equal(scene.wavelengths, [400, 500])
    np.testing.assert_array_equal(scene.fwhm, [10, 11])
    assert scene.band_names == ["blue", "green"]
    assert any("bbl" in note for note in scene.notes)
    tile = scene.read()
    assert tile.dtype == np.float32
    np.testing.assert_allclose(tile[0, 0], [0.01, 0.5])
    assert np.isnan(tile[0, 1, 0]) and tile[0, 1, 1] == pytest.approx(0.25)


def test_ignore_value_compared_before_scaling(tmp_path):
    stored = np.array([0.0, 1.0, 2.0, 0.5], dtype=np.float32)  # ignore value 1 is raw 1.0, not 1 after scaling
    header_path = _raw_file(tmp_path, _header(samples=4, lines=1, bands=1, reflectance_scale_factor="2",
                                              data_ignore_value="1"), stored.tobytes())
    tile = read_cube(header_path).read()[0, :, 0]
    np.testing.assert_array_equal(np.isnan(tile), [False, True, False, False])
    np.testing.assert_allclose(tile[[0, 2, 3]], [0.0, 1.0, 0.25])


def test_nan_ignore_value_and_float64_becomes_float32(tmp_path):
    stored = np.array([1.5, np.nan, -2.0], dtype=">f8")
    header_path = _raw_file(tmp_path, _header(samples=3, lines=1, bands=1, data_type=5, data_ignore_value="NaN")
                            .replace("byte order = 0", "byte order = 1"), stored.tobytes())
    tile = read_cube(header_path).read()
    assert tile.dtype == np.float32
    np.testing.assert_array_equal(tile[0, :, 0], np.array([1.5, np.nan, -2.0], dtype=np.float32))


def test_header_offset(tmp_path):
    cube = np.arange(24, dtype="<i4").reshape(2, 3, 4)
    header_path = _raw_file(tmp_path, _header(samples=3, lines=2, bands=4, data_type=3).replace(
        "header offset = 0", "header offset = 37").replace("interleave = bsq", "interleave = bip"),
        b"\xff" * 37 + cube.tobytes())
    np.testing.assert_array_equal(open_envi(header_path).read_raw(slice(None), slice(None)), cube)


def test_byte_order_defaults_to_little_endian(tmp_path):
    text = _header(samples=2, lines=1, bands=1, data_type=2).replace("byte order = 0\n", "")
    header_path = _raw_file(tmp_path, text, np.array([1, -2], dtype="<i2").tobytes())
    assert read_header(header_path).byte_order == 0
    np.testing.assert_array_equal(read_cube(header_path).read()[0, :, 0], [1, -2])


@pytest.mark.parametrize("word, layout", [("Bil", "bil"), ("bIp", "bip"), ("BSQ", "bsq")])
def test_mixed_case_interleave_uses_the_right_layout(tmp_path, word, layout):
    # spectral misreads "Bil" as BSQ, so the expected layout is written by hand here
    cube = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4) * 1.5  # (lines, samples, bands)
    order = {"bsq": (2, 0, 1), "bil": (0, 2, 1), "bip": (0, 1, 2)}[layout]
    data = np.ascontiguousarray(cube.transpose(order)).astype("<f4").tobytes()
    header_path = _raw_file(tmp_path, _header(samples=3, lines=2, bands=4).replace("interleave = bsq",
                                                                                    f"interleave = {word}"), data)
    assert read_header(header_path).interleave == layout
    np.testing.assert_array_equal(read_cube(header_path).read(), cube)


def test_single_band_may_omit_interleave(tmp_path):
    text = _header(samples=2, lines=2, bands=1).replace("interleave = bsq\n", "")
    header_path = _raw_file(tmp_path, text, np.arange(4, dtype="<f4").tobytes())
    np.testing.assert_array_equal(read_cube(header_path).read()[:, :, 0], [[0, 1], [2, 3]])


def test_int64_and_uint64(tmp_path):
    for code, dtype in ((14, "<i8"), (15, "<u8")):
        values = np.array([1, 2**40, 7], dtype=dtype)
        header_path = _raw_file(tmp_path, _header(samples=3, lines=1, bands=1, data_type=code), values.tobytes(),
                                data_name=f"t{code}.img", header_name=f"t{code}.hdr")
        np.testing.assert_array_equal(open_envi(header_path).read_raw(slice(None), slice(None))[0, :, 0], values)


# ------------------------------------------------------------------------------ file naming


@pytest.mark.parametrize("header_name, data_name", [
    ("scene.hdr", "scene"),
    ("scene.hdr", "scene.img"),
    ("scene.hdr", "scene.dat"),
    ("scene.hdr", "scene.raw"),
    ("scene.hdr", "scene.bil"),
    ("scene.hdr", "scene.sli"),
    ("scene.hdr", "scene.IMG"),
    ("scene.img.hdr", "scene.img"),
    ("scene.dat.hdr", "scene.dat"),
    ("SCENE.HDR", "SCENE.IMG"),
])
def test_data_file_naming_conventions(tmp_path, header_name, data_name):
    cube = np.arange(12, dtype="<f4")
    text = _header(samples=3, lines=2, bands=2).replace("interleave = bsq", "interleave = bil")
    _raw_file(tmp_path, text, cube.tobytes(), data_name=data_name, header_name=header_name)
    expected = (tmp_path / header_name, tmp_path / data_name)
    assert find_envi_files(tmp_path / header_name) == expected
    assert find_envi_files(tmp_path / data_name) == expected  # given the data file instead
    scene = read_cube(tmp_path / data_name)
    assert scene.name == "scene" if header_name.startswith("scene") else scene.name == "SCENE"
    assert scene.source == str(tmp_path / data_name)
    np.testing.assert_array_equal(scene.read().reshape(-1), cube.reshape(2, 2, 3).transpose(0, 2, 1).reshape(-1))


def test_bare_name_finds_header_and_data(tmp_path):
    _raw_file(tmp_path, _header(), np.zeros(12, "<f4").tobytes(), data_name="cube.img", header_name="cube.hdr")
    assert find_envi_files(tmp_path / "cube") == (tmp_path / "cube.hdr", tmp_path / "cube.img")


def test_missing_data_file(tmp_path):
    (tmp_path / "lonely.hdr").write_text(_header())
    with pytest.raises(EnviError, match="'data file'") as info:
        read_cube(tmp_path / "lonely.hdr")
    assert info.value.key == "data file" and "lonely.img" in str(info.value)


def test_missing_header(tmp_path):
    (tmp_path / "data.img").write_bytes(b"\0" * 48)
    with pytest.raises(EnviError, match="'header file'"):
        read_cube(tmp_path / "data.img")
    with pytest.raises(EnviError, match="'header file'"):
        read_cube(tmp_path / "nothing.hdr")


# ------------------------------------------------------------------------------ writers


@pytest.mark.parametrize("given, header_name, data_name", [
    ("out.hdr", "out.hdr", "out.img"),
    ("out.img", "out.hdr", "out.img"),
    ("out", "out.hdr", "out.img"),
    ("scene.abund", "scene.abund.hdr", "scene.abund.img"),
    ("scene.abund.hdr", "scene.abund.hdr", "scene.abund.img"),
])
def test_write_cube_paths(tmp_path, given, header_name, data_name):
    cube = np.random.default_rng(0).random((3, 4, 2))
    assert write_cube(tmp_path / given, cube) == tmp_path / header_name
    assert (tmp_path / data_name).is_file()
    header = read_header(tmp_path / header_name)
    assert (header.data_type, header.interleave, header.byte_order) == (4, "bsq", 0)
    np.testing.assert_array_equal(read_cube(tmp_path / header_name).read(), cube.astype(np.float32))


def test_cube_writer_streams_tiles(tmp_path):
    cube = np.random.default_rng(1).random((10, 9, 3)).astype(np.float32)
    with CubeWriter(tmp_path / "big.hdr", cube.shape, band_names=["a", "b", "c"]) as writer:
        assert (tmp_path / "big.img").stat().st_size == cube.nbytes  # full size up front
        assert not (tmp_path / "big.hdr").exists()  # the header comes at close
        for rows, cols in [(slice(0, 4), slice(0, 9)), (slice(4, 10), slice(0, 5)), (slice(4, 10), slice(5, 9))]:
            writer.write_tile(rows, cols, cube[rows, cols])
    np.testing.assert_array_equal(read_cube(tmp_path / "big.hdr").read(), cube)
    assert spectral_envi.open(str(tmp_path / "big.hdr")).metadata["band names"] == ["a", "b", "c"]


def test_cube_writer_leaves_no_header_after_an_error(tmp_path):
    with pytest.raises(RuntimeError):
        with CubeWriter(tmp_path / "broken", (2, 2, 1)) as writer:
            writer.write_tile(slice(0, 1), slice(0, 2), np.ones((1, 2, 1)))
            raise RuntimeError("interrupted")
    assert not (tmp_path / "broken.hdr").exists()


def test_cube_writer_refuses_bad_tiles_and_metadata(tmp_path):
    with pytest.raises(UsageError, match="band names"):
        CubeWriter(tmp_path / "a", (2, 2, 2), band_names=["only one"])
    with pytest.raises(UsageError, match="comma"):
        CubeWriter(tmp_path / "a", (2, 2, 2), band_names=["x, y", "z"])
    with pytest.raises(UsageError, match="wavelengths"):
        CubeWriter(tmp_path / "a", (2, 2, 2), wavelengths=[400.0])
    with pytest.raises(UsageError, match="unbalanced"):
        CubeWriter(tmp_path / "a", (2, 2, 2), map_info="UTM, }")
    with pytest.raises(UsageError, match="set by the writer"):
        CubeWriter(tmp_path / "a", (2, 2, 2), extra={"Data Type": 2})
    with pytest.raises(UsageError, match="shape"):
        CubeWriter(tmp_path / "a", (0, 2, 2))
    with CubeWriter(tmp_path / "a", (2, 2, 2)) as writer:
        with pytest.raises(UsageError, match="tile shape"):
            writer.write_tile(slice(0, 2), slice(0, 2), np.zeros((2, 2, 3)))
    with pytest.raises(UsageError, match="closed"):
        writer.write_tile(slice(0, 2), slice(0, 2), np.zeros((2, 2, 2)))


def test_write_cube_metadata_round_trip(tmp_path):
    cube = np.array([[[0.5, np.nan]]], dtype=np.float32)
    header_path = write_cube(tmp_path / "meta.hdr", cube, data_ignore_value=-9999, description="line one\nline two",
                             coordinate_system=WKT, extra={"reflectance scale factor": 2, "sensor type": "AVIRIS",
                                                           "fwhm": [10.0, 12.5], "note": "a, b"})
    stored = np.fromfile(tmp_path / "meta.img", dtype="<f4")
    np.testing.assert_array_equal(stored, [0.5, -9999])  # NaN stored as the ignore value
    scene = read_cube(header_path)
    tile = scene.read()
    assert tile[0, 0, 0] == pytest.approx(0.25) and np.isnan(tile[0, 0, 1])
    header = read_header(header_path)
    assert header.description == "line one\nline two" and header.coordinate_system == WKT
    assert header.raw["sensor type"] == "AVIRIS" and header.raw["note"] == "a, b"
    np.testing.assert_array_equal(header.fwhm, [10.0, 12.5])  # no units, no wavelengths: widths >= 1 are nm


def test_write_cube_accepts_integer_cubes_as_float32(tmp_path):
    stored = np.array([[[1000, -20]]], dtype=np.int16)
    header_path = write_cube(tmp_path / "ints", stored, extra={"reflectance scale factor": "10000"})
    np.testing.assert_allclose(read_cube(header_path).read()[0, 0], [0.1, -0.002])


# ------------------------------------------------------------------------------ bounded reads


def test_tile_of_a_large_file_reads_only_what_it_needs(tmp_path, monkeypatch):
    lines, samples, bands = 1000, 1000, 50  # 200 MB of float32, sparse on disk
    text = _header(samples=samples, lines=lines, bands=bands)
    for layout in ("bsq", "bil", "bip"):
        header_path = _raw_file(tmp_path, text.replace("interleave = bsq", f"interleave = {layout}"),
                                data_name=f"big_{layout}.img", header_name=f"big_{layout}.hdr")
        with open(tmp_path / f"big_{layout}.img", "r+b") as handle:
            handle.truncate(lines * samples * bands * 4)
        scene = read_cube(header_path)
        bytes_read = []
        original = reader.read_into

        def counting(handle, buffer, offset):
            bytes_read.append(buffer.size)
            return original(handle, buffer, offset)

        monkeypatch.setattr(reader, "read_into", counting)
        tracemalloc.start()
        start = time.perf_counter()
        tile = scene.read_tile(slice(500, 508), slice(700, 708))
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        monkeypatch.undo()
        assert tile.shape == (8, 8, 50) and not tile.any()
        assert sum(bytes_read) < 2 * 2**20, (layout, sum(bytes_read))  # of 200 MB
        assert peak < 2 * 2**20, (layout, peak)
        assert elapsed < 1.0, (layout, elapsed)


# ------------------------------------------------------------------------------ bad input


BAD_HEADERS = [
    ("missing samples", _header().replace("samples = 3\n", ""), "samples"),
    ("missing lines", _header().replace("lines = 2\n", ""), "lines"),
    ("missing bands", _header().replace("bands = 2\n", ""), "bands"),
    ("missing data type", _header().replace("data type = 4\n", ""), "data type"),
    ("missing interleave", _header().replace("interleave = bsq\n", ""), "interleave"),
    ("non-numeric samples", _header().replace("samples = 3", "samples = abc"), "samples"),
    ("fractional lines", _header().replace("lines = 2", "lines = 2.5"), "lines"),
    ("zero bands", _header().replace("bands = 2", "bands = 0"), "bands"),
    ("negative samples", _header().replace("samples = 3", "samples = -3"), "samples"),
    ("huge number", _header().replace("samples = 3", "samples = " + "9" * 5000), "samples"),
    ("complex data type", _header(data_type=6), "data type"),
    ("unknown data type", _header(data_type=7), "data type"),
    ("bad interleave", _header().replace("bsq", "bsx"), "interleave"),
    ("bad byte order", _header().replace("byte order = 0", "byte order = 2"), "byte order"),
    ("word byte order", _header().replace("byte order = 0", "byte order = big"), "byte order"),
    ("negative header offset", _header().replace("header offset = 0", "header offset = -4"), "header offset"),
    ("wavelength count", _header(wavelength="{400, 500, 600}"), "wavelength"),
    ("wavelength text", _header(wavelength="{400, red}"), "wavelength"),
    ("wavelength infinite", _header(wavelength="{400, inf}"), "wavelength"),
    ("fwhm count", _header(fwhm="{10}"), "fwhm"),
    ("bbl count", _header(bbl="{1, 1, 1}"), "bbl"),
    ("band names count", _header(band_names="{a, b, c}"), "band names"),
    ("spectra names count", _header(spectra_names="{a}"), "spectra names"),
    ("scale not a number", _header(reflectance_scale_factor="ten"), "reflectance scale factor"),
    ("scale zero", _header(reflectance_scale_factor="0"), "reflectance scale factor"),
    ("ignore not a number", _header(data_ignore_value="none"), "data ignore value"),
    ("not ENVI", _header().replace("ENVI", "IDL", 1), "first line"),
    ("empty", "", "first line"),
    ("unbalanced braces", _header() + "wavelength = {400,\n500\n", "wavelength"),
]


@pytest.mark.parametrize("text, key", [case[1:] for case in BAD_HEADERS], ids=[case[0] for case in BAD_HEADERS])
def test_bad_headers_raise_enverror_naming_the_key(text, key):
    with pytest.raises(EnviError) as info:
        parse_header(text, "bad.hdr")
    assert info.value.key == key
    assert f"key {key!r}" in str(info.value) and str(info.value).startswith("bad.hdr:")


def test_bad_header_on_disk_names_the_file(tmp_path):
    header_path = _raw_file(tmp_path, _header(data_type=9), b"")
    with pytest.raises(EnviError, match=r"x\.hdr: key 'data type'"):
        read_cube(header_path)


def test_truncated_data_file(tmp_path):
    header_path = _raw_file(tmp_path, _header(), b"\0" * 47)  # needs 3*2*2*4 = 48
    with pytest.raises(EnviError, match="expected at least 48 bytes.*got 47") as info:
        open_envi(header_path)
    assert info.value.key == "data file"


def test_absurd_sizes_refused_before_allocation(tmp_path):
    header_path = _raw_file(tmp_path, _header(samples=10**12, lines=10**6, bands=500), b"\0" * 64)
    tracemalloc.start()
    with pytest.raises(EnviError, match="'data file'"):
        read_cube(header_path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 2**20


def test_library_with_several_bands_is_refused(tmp_path):
    header_path = _raw_file(tmp_path, _header(), b"\0" * 48)
    with pytest.raises(EnviError, match="'bands'"):
        read_library(header_path)


def test_all_bands_bad_is_refused(tmp_path):
    header_path = _raw_file(tmp_path, _header(bbl="{0, 0}"), b"\0" * 48)
    with pytest.raises(EnviError, match="'bbl'"):
        read_cube(header_path)


def test_window_arguments_are_checked(tmp_path):
    header_path = _raw_file(tmp_path, _header(), b"\0" * 48)
    opened = open_envi(header_path)
    with pytest.raises(UsageError):
        opened.read(slice(0, 2, 2), slice(None))
    with pytest.raises(UsageError):
        opened.read(slice(None), slice(None), bands=[2])
    with pytest.raises(UsageError):
        opened.read(slice(None), slice(None), bands=np.array([True]))


def test_oversized_header_is_refused_without_reading_it(tmp_path):
    header_path = tmp_path / "huge.hdr"
    with open(header_path, "wb") as handle:
        handle.write(b"ENVI\n")
        handle.truncate(65 * 2**20)  # sparse
    with pytest.raises(EnviError, match="'header file'"):
        read_header(header_path)


def test_non_utf8_header_is_read(tmp_path):
    header_path = tmp_path / "latin.hdr"
    header_path.write_bytes(_header(description="{caf\xe9}").encode("latin-1"))
    (tmp_path / "latin.img").write_bytes(b"\0" * 48)
    assert read_header(header_path).description == "caf\xe9"


def test_write_library_refuses_bad_names(tmp_path):
    with pytest.raises(UsageError):
        write_library(tmp_path / "l", np.ones((2, 3)), names=["a"])
    with pytest.raises(UsageError):
        write_library(tmp_path / "l", np.ones((2, 3)), names=["a{", "b"])


def test_spectral_sees_our_header_keys_it_requires(tmp_path):
    header_path = write_cube(tmp_path / "req", np.zeros((1, 1, 1)))
    assert os.path.getsize(tmp_path / "req.img") == 4
    image = spectral_envi.open(str(header_path))
    assert image.shape == (1, 1, 1)


def test_written_wavelengths_are_rounded_only_where_that_is_the_same_number(tmp_path):
    from unmix.io.envi import read_cube, write_cube

    wavelengths = np.array([2.01 * 1000, 409.41704035874437, 400.0])      # 2009.9999999999998 from a conversion
    write_cube(tmp_path / "c.hdr", np.zeros((1, 1, 3), np.float32), wavelengths=wavelengths)
    text = (tmp_path / "c.hdr").read_text()
    assert "wavelength = {2010, 409.4170403587444, 400}" in text
    np.testing.assert_allclose(read_cube(tmp_path / "c.hdr").wavelengths, wavelengths, rtol=1e-15)
