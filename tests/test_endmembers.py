"""The endmember engine on scenes with known truth: with and without pure pixels, E >= 0, known spectra
kept, no truth among its inputs, and the noise estimate."""
from __future__ import annotations

import inspect

import numpy as np
import pytest

from unmix.io.libraries import load_earthlib
from unmix.io.synthetic import synthetic_scene
from unmix.physics.endmembers import (
    spatial_means,
    MISFIT_RATIO_LIMIT,
    data_criterion,
    estimate_endmembers,
    estimate_noise,
    simplex_criterion,
)
from unmix.physics.metrics import sad_degrees
from unmix.physics.synthetic import add_noise
from unmix.physics.vca import vca


@pytest.fixture(scope="module")
def library():
    return load_earthlib("optimized")


def _scene(library, **settings):
    scene = synthetic_scene(library, 3, size=(40, 40), snr_db=30.0, seed=7, **settings)
    return scene, scene.read().reshape(-1, scene.shape[2])


def _matched_angles(estimate: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-endmember angle (degrees) after the best matching by angle."""
    from scipy.optimize import linear_sum_assignment

    angles = np.array([[sad_degrees(e[None], t[None])[0] for t in truth] for e in estimate])
    rows, cols = linear_sum_assignment(angles)
    return angles[rows, cols]


def test_scene_with_pure_pixels_recovered(library):
    scene, pixels = _scene(library, kind="dirichlet")
    estimate = estimate_endmembers(pixels, 3, starts=3)
    angles = _matched_angles(estimate.endmembers, scene.endmembers)
    assert angles.max() < 1.5, angles           # measured 0.26° at most
    assert (estimate.endmembers >= 0).all()


def test_scene_without_pure_pixels_recovered_beyond_the_data(library):
    scene, pixels = _scene(library, kind="smooth", max_purity=0.8)
    assert scene.abundances.max() <= 0.8 + 1e-9
    estimate = estimate_endmembers(pixels, 3, starts=3)
    assert estimate.mode == "minimum_volume"
    assert estimate.misfit_ratio < MISFIT_RATIO_LIMIT
    angles = _matched_angles(estimate.endmembers, scene.endmembers)
    assert angles.max() < 1.5, angles           # measured 0.49° at most
    # Pixel-based VCA stays inside the data's hull, several times further off.
    vca_angles = _matched_angles(np.maximum(vca(pixels, 3, seed=0)[0], 0.0), scene.endmembers)
    assert vca_angles.mean() > 3 * angles.mean()
    # The chosen set has the smallest criterion of the candidates, and smaller than the truth's
    # neighbourhood would allow only within the noise: the truth itself scores close to it.
    family, value = data_criterion(pixels, estimate.endmembers, seed=0)
    assert family == "minimum_volume" and value == pytest.approx(estimate.criterion, rel=1e-6)
    assert estimate.criterion == pytest.approx(estimate.candidate_criteria.min())
    _, truth_value = data_criterion(pixels, scene.endmembers, seed=0)
    assert abs(truth_value - value) < 0.05 * abs(truth_value) + 0.5


def test_spectral_variability_takes_the_pixel_family(library):
    scene = synthetic_scene(library, 3, size=(40, 40), kind="dirichlet", variability=0.1, snr_db=30.0, seed=7)
    estimate = estimate_endmembers(scene.read().reshape(-1, scene.shape[2]), 3, starts=3)
    assert estimate.misfit_ratio > MISFIT_RATIO_LIMIT
    assert estimate.mode == "pixels"
    assert _matched_angles(estimate.endmembers, scene.endmembers).max() < 4.0   # measured 2.38°


def test_endmembers_never_negative_even_when_the_data_dip_below_zero(library):
    scene = synthetic_scene(library, 3, size=(32, 32), kind="smooth", max_purity=0.7, seed=3)
    cube = add_noise(scene.read().astype(np.float64), 10.0, seed=1)   # noisy enough to go negative
    assert (cube < 0).any() or cube.min() < 0.05
    estimate = estimate_endmembers(cube.reshape(-1, cube.shape[2]), 3, starts=2)
    assert (estimate.endmembers >= 0).all()
    assert (estimate.candidates >= 0).all()
    assert np.isfinite(estimate.endmembers).all()


@pytest.mark.parametrize("kind, purity", [("dirichlet", None), ("smooth", 0.8)])
def test_known_spectra_stay_fixed(library, kind, purity):
    scene, pixels = _scene(library, kind=kind, max_purity=purity)
    known = scene.endmembers[:1] * 1.0
    estimate = estimate_endmembers(pixels, 3, known=known, starts=2)
    assert np.array_equal(estimate.endmembers[0], known[0])
    assert all(np.array_equal(candidate[0], known[0]) for candidate in estimate.candidates)
    assert _matched_angles(estimate.endmembers[1:], scene.endmembers[1:]).max() < 2.0


def test_entry_point_takes_no_truth():
    parameters = set(inspect.signature(estimate_endmembers).parameters)
    assert parameters == {"pixels", "p", "known", "start", "starts", "seed", "sample", "smoothed"}


def test_same_seed_same_answer_and_nan_pixels_skipped(library):
    _, pixels = _scene(library, kind="dirichlet")
    first = estimate_endmembers(pixels, 3, starts=2, seed=4)
    with_nan = pixels.astype(np.float64).copy()
    with_nan = np.vstack([with_nan, np.full((5, pixels.shape[1]), np.nan)])
    second = estimate_endmembers(with_nan, 3, starts=2, seed=4)
    assert np.array_equal(first.endmembers, second.endmembers)


def test_refuses_bad_shapes():
    with pytest.raises(ValueError, match="p must be between 2"):
        estimate_endmembers(np.ones((50, 4)), 5)
    with pytest.raises(ValueError, match="at least 6 finite pixels"):
        estimate_endmembers(np.ones((4, 10)), 3)
    with pytest.raises(ValueError, match="known must be finite"):
        estimate_endmembers(np.random.default_rng(0).random((50, 10)), 3, known=np.ones((1, 9)))


def test_noise_estimate_matches_added_white_noise():
    rng = np.random.default_rng(0)
    endmembers = rng.uniform(0.1, 0.9, (4, 60))
    abundances = rng.dirichlet(np.ones(4), size=5000)
    clean = abundances @ endmembers
    sigma = 0.01
    noise = estimate_noise(clean + sigma * rng.standard_normal(clean.shape))
    assert np.median(noise) == pytest.approx(sigma, rel=0.1)


def test_simplex_criterion_prefers_the_true_simplex_to_a_larger_one():
    rng = np.random.default_rng(1)
    vertices = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = rng.dirichlet(np.ones(3), size=3000) @ vertices + rng.standard_normal((3000, 2))
    assert simplex_criterion(vertices, points) < simplex_criterion(1.5 * vertices - 2.5, points)
    assert simplex_criterion(vertices, points) < simplex_criterion(0.6 * vertices + 1.3, points)


def test_spatial_means_lower_the_noise_and_skip_invalid_pixels(library):
    scene = synthetic_scene(library, 3, size=(24, 24), kind="smooth", snr_db=20.0, seed=5)
    cube = scene.read().astype(np.float64)
    cube[3, 4] = np.nan
    means = spatial_means(cube)
    assert means.shape == (24 * 24, cube.shape[2]) and np.isfinite(means).all()
    clean = (scene.abundances.reshape(-1, 3) @ scene.endmembers).reshape(cube.shape)
    raw_error = np.nanstd(cube - clean)
    mean_error = np.std(means.reshape(cube.shape) - clean)
    assert mean_error < 0.6 * raw_error    # 3 x 3 means: about a third of the noise plus a little blur
