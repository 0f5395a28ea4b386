"""unmix.physics.uncertainty: the propagated per-pixel abundance uncertainty, against Monte Carlo FCLS."""
from __future__ import annotations

import numpy as np

from unmix.physics.fcls import fcls
from unmix.physics.uncertainty import propagated_uncertainty


def _endmembers(p: int = 3, bands: int = 40) -> np.ndarray:
    grid = np.linspace(0, 1, bands)
    return np.stack([0.3 + 0.2 * np.sin((k + 1) * 2.5 * grid + k) for k in range(p)])


def test_noise_part_matches_monte_carlo_fcls():
    """Interior pixels: the linearised std equals FCLS's empirical std under white noise (to 10 %)."""
    E = _endmembers()
    rng = np.random.default_rng(0)
    a = np.array([0.5, 0.3, 0.2])
    sigma = 0.01
    draws = fcls(a @ E + rng.normal(0, sigma, (4000, E.shape[1])), E)
    empirical = np.sqrt(np.mean(draws.var(axis=0)))           # RMS over endmembers of the per-endmember std
    predicted = float(propagated_uncertainty(a[None], E, None, sigma)[0])
    assert abs(predicted - empirical) < 0.1 * empirical, (predicted, empirical)


def test_pure_pixels_nan_and_spread():
    E = _endmembers()
    A = np.array([[1.0, 0.0, 0.0], [0.4, 0.6, 0.0], [np.nan, 0.5, 0.5], [0.2, 0.4, 0.4]])
    noise_only = propagated_uncertainty(A, E, None, 0.01)
    assert noise_only[0] == 0.0                  # one free endmember: it cannot move
    assert np.isnan(noise_only[2]) and (noise_only[[1, 3]] > 0).all()
    spread = np.zeros_like(E)
    spread[1] = 0.02                             # the candidates disagree on endmember 2 only
    with_spread = propagated_uncertainty(A, E, spread, 0.01)
    assert with_spread[0] == 0.0
    assert with_spread[1] > noise_only[1] and with_spread[3] > noise_only[3]
    # The pixel richer in the uncertain endmember gains more.
    assert with_spread[1] / noise_only[1] > with_spread[3] / noise_only[3]
    assert propagated_uncertainty(A.reshape(2, 2, 3), E, spread, 0.01).shape == (2, 2)
