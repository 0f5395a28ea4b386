"""Synthetic scenes: noise at the requested SNR, abundances on the simplex, purity, seeds, exact truth."""
from __future__ import annotations

import numpy as np
import pytest

from unmix.errors import InputError, UsageError
from unmix.io.libraries import SpectralLibrary
from unmix.io.synthetic import synthetic_scene
from unmix.physics.synthetic import (
    add_noise,
    dirichlet_abundances,
    limit_purity,
    measured_snr_db,
    pick_distinct,
    smooth_abundances,
    spectral_angles_deg,
)

WAVELENGTHS = np.arange(400.0, 2451.0, 10.0)  # 206 bands


def toy_library(n: int = 40, seed: int = 1) -> SpectralLibrary:
    """Smooth, positive, distinct spectra (sums of random Gaussian bumps)."""
    rng = np.random.default_rng(seed)
    x = (WAVELENGTHS - 400.0) / 2050.0
    spectra = []
    for _ in range(n):
        centres, widths, heights = rng.uniform(0, 1, 3), rng.uniform(0.05, 0.3, 3), rng.uniform(0.1, 0.5, 3)
        bumps = heights[:, None] * np.exp(-0.5 * ((x[None] - centres[:, None]) / widths[:, None]) ** 2)
        spectra.append(0.05 + bumps.sum(axis=0))
    return SpectralLibrary(spectra=np.array(spectra), wavelengths=WAVELENGTHS,
                           names=[f"toy_{i}" for i in range(n)], classes=["toy"] * n, source="toy library")


def assert_on_simplex(a: np.ndarray, atol: float = 1e-12) -> None:
    assert a.min() >= -atol
    np.testing.assert_allclose(a.sum(axis=-1), 1.0, atol=atol)


# ------------------------------------------------------------------------------------------ noise

@pytest.mark.parametrize("snr_db", [40.0, 30.0, 20.0, 10.0])
def test_add_noise_reaches_the_snr(snr_db):
    clean = np.random.default_rng(0).uniform(0.05, 0.6, (64, 64, 200))
    noisy = add_noise(clean, snr_db, seed=3)
    assert noisy.dtype == np.float32 and noisy.shape == clean.shape
    assert measured_snr_db(clean, noisy) == pytest.approx(snr_db, abs=0.1)


def test_add_noise_uses_hysupps_sigma_and_is_seeded():
    clean = np.full((50, 50, 100), 0.5)
    noisy = add_noise(clean, 20.0, seed=0)
    expected_sigma = np.sqrt(0.25 / 10 ** 2)  # mean(Y^2) / 10^(SNR/10)
    assert np.std(noisy - clean) == pytest.approx(expected_sigma, rel=0.01)
    np.testing.assert_array_equal(noisy, add_noise(clean, 20.0, seed=0))
    reference = clean + expected_sigma * np.random.Generator(np.random.PCG64(0)).standard_normal(clean.shape)
    np.testing.assert_array_equal(noisy, reference.astype(np.float32))
    assert not np.array_equal(noisy, add_noise(clean, 20.0, seed=1))


def test_add_noise_none_or_inf_adds_nothing():
    clean = np.random.default_rng(0).uniform(size=(4, 5, 6))
    np.testing.assert_array_equal(add_noise(clean, None), clean.astype(np.float32))
    np.testing.assert_array_equal(add_noise(clean, np.inf), clean.astype(np.float32))
    with pytest.raises(UsageError):
        add_noise(clean, np.nan)


# ------------------------------------------------------------------------------------ abundances

@pytest.mark.parametrize("make", [dirichlet_abundances, smooth_abundances])
def test_abundances_on_simplex_and_reproducible(make):
    a = make(32, 48, 5, seed=7)
    assert a.shape == (32, 48, 5)
    assert_on_simplex(a)
    np.testing.assert_array_equal(a, make(32, 48, 5, seed=7))
    assert not np.array_equal(a, make(32, 48, 5, seed=8))


@pytest.mark.parametrize("make", [dirichlet_abundances, smooth_abundances])
def test_purity_limit_is_respected(make):
    free = make(40, 40, 4, seed=2)
    limited = make(40, 40, 4, max_purity=0.7, seed=2)
    assert_on_simplex(limited)
    peak = limited.max(axis=-1)
    assert peak.max() <= 0.7 + 1e-12
    over = free.max(axis=-1) > 0.7
    assert over.any() and (~over).any()
    np.testing.assert_allclose(peak[over], 0.7, atol=1e-12)            # pulled exactly to the limit
    np.testing.assert_allclose(limited[~over], free[~over], atol=1e-15)  # the rest untouched


def test_limit_purity_rule_moves_toward_the_centre():
    a = np.array([0.9, 0.1, 0.0, 0.0])
    out = limit_purity(a, 0.5)
    # c + t (a - c) with c = 0.25, t = (0.5 - 0.25) / (0.9 - 0.25)
    t = 0.25 / 0.65
    np.testing.assert_allclose(out, 0.25 + t * (a - 0.25))
    assert out.max() == pytest.approx(0.5)
    with pytest.raises(UsageError):
        limit_purity(a, 0.2)  # below 1/p


def test_smooth_abundances_are_spatially_smooth():
    def neighbour_correlation(a):
        return np.corrcoef(a[:, :-1, 0].ravel(), a[:, 1:, 0].ravel())[0, 1]

    assert neighbour_correlation(smooth_abundances(64, 64, 3, length_scale=6, seed=0)) > 0.9
    assert abs(neighbour_correlation(dirichlet_abundances(64, 64, 3, seed=0))) < 0.1


# -------------------------------------------------------------------------------------- scenes

def test_scene_from_given_endmembers_is_exact():
    library = toy_library(3)
    scene = synthetic_scene(library.spectra, size=(20, 30), kind="dirichlet", seed=4, wavelengths=WAVELENGTHS)
    assert scene.shape == (20, 30, WAVELENGTHS.size)
    assert scene.endmembers.shape == (3, WAVELENGTHS.size) and scene.abundances.shape == (20, 30, 3)
    np.testing.assert_array_equal(scene.endmembers, library.spectra.astype(np.float64))
    np.testing.assert_array_equal(scene.wavelengths, WAVELENGTHS)
    assert_on_simplex(scene.abundances)
    cube = scene.read()
    np.testing.assert_allclose(cube, scene.abundances @ scene.endmembers, rtol=1e-6, atol=1e-7)
    assert len(scene.endmember_names) == 3 and scene.notes
    with pytest.raises(UsageError):
        synthetic_scene(library.spectra, p=4)


def test_scene_from_library_picks_distinct_named_spectra_reproducibly():
    library = toy_library()
    scene = synthetic_scene(library, 5, size=(32, 32), seed=11, min_angle_deg=5.0)
    again = synthetic_scene(library, 5, size=(32, 32), seed=11, min_angle_deg=5.0)
    other = synthetic_scene(library, 5, size=(32, 32), seed=12, min_angle_deg=5.0)
    np.testing.assert_array_equal(scene.read(), again.read())
    np.testing.assert_array_equal(scene.abundances, again.abundances)
    assert scene.endmember_names == again.endmember_names
    assert not np.array_equal(scene.abundances, other.abundances)
    assert set(scene.endmember_names) <= set(library.names)
    rows = [library.names.index(name) for name in scene.endmember_names]
    np.testing.assert_array_equal(scene.endmembers, library.spectra[rows].astype(np.float64))
    angles = spectral_angles_deg(scene.endmembers)
    assert angles[~np.eye(5, dtype=bool)].min() >= 5.0
    np.testing.assert_array_equal(scene.wavelengths, WAVELENGTHS)
    np.testing.assert_allclose(scene.read(), scene.abundances @ scene.endmembers, rtol=1e-6, atol=1e-7)
    assert any("seed 11" in note for note in scene.notes)


def test_noise_does_not_change_the_truth_and_reaches_the_snr():
    library = toy_library()
    clean = synthetic_scene(library, 4, size=(64, 64), seed=5, max_purity=0.8)
    noisy = synthetic_scene(library, 4, size=(64, 64), seed=5, max_purity=0.8, snr_db=25.0)
    np.testing.assert_array_equal(clean.abundances, noisy.abundances)
    np.testing.assert_array_equal(clean.endmembers, noisy.endmembers)
    assert noisy.abundances.max() <= 0.8 + 1e-12
    assert measured_snr_db(clean.abundances @ clean.endmembers, noisy.read()) == pytest.approx(25.0, abs=0.1)


def test_variability_scales_pixels_but_keeps_the_clean_truth():
    library = toy_library()
    exact = synthetic_scene(library, 3, size=(32, 32), seed=2)
    varied = synthetic_scene(library, 3, size=(32, 32), seed=2, variability=0.1)
    np.testing.assert_array_equal(exact.endmembers, varied.endmembers)
    np.testing.assert_array_equal(exact.abundances, varied.abundances)
    relative = np.abs(varied.read() - exact.read()) / exact.read()
    assert 0.02 < relative.mean() < 0.15
    assert relative.max() <= 0.3 + 1e-5  # scales clipped to 1 +- 3 v
    assert any("variability" in note for note in varied.notes)


def test_pick_distinct_refuses_when_the_library_is_too_similar():
    base = toy_library(1).spectra[0]
    library = SpectralLibrary(spectra=np.vstack([base, base * 1.1, base + 0.001]), wavelengths=WAVELENGTHS,
                              names=["a", "b", "c"])
    with pytest.raises(InputError, match="degrees apart"):
        synthetic_scene(library, 2, size=(8, 8))
    chosen = pick_distinct(toy_library().spectra, 3, min_angle_deg=5.0, seed=0)
    assert len(set(chosen.tolist())) == 3
    np.testing.assert_array_equal(chosen, pick_distinct(toy_library().spectra, 3, min_angle_deg=5.0, seed=0))


def test_scene_rejects_bad_arguments():
    library = toy_library()
    with pytest.raises(UsageError):
        synthetic_scene(library, 3, kind="checkerboard")
    with pytest.raises(UsageError):
        synthetic_scene(library)  # p required with a library
    with pytest.raises(UsageError):
        synthetic_scene(library, 3, variability=-0.1)
