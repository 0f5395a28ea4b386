"""The mixing model, simplex projection, FCLS, VCA and NNLS endmembers, against independent references."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import minimize, nnls

from unmix.physics import endmembers_from_abundances, fcls, mix, project_simplex, residual_rmse, sad_degrees, vca


# ---------------------------------------------------------------------------------------------------
# Independent references
# ---------------------------------------------------------------------------------------------------
def reference_fcls(y: np.ndarray, E: np.ndarray, dual_tol: float = 1e-9) -> np.ndarray:
    """FCLS of one pixel by brute force over supports in the Gram (normal-equation) form.

    For each support S, solve the KKT system [G_SS 1; 1ᵀ 0][a; λ] = [Ey_S; 1] and keep the point that
    satisfies every KKT condition (a ≥ 0 and multipliers of the zero variables ≥ 0); this is a
    different formulation and selection rule from the library's (QR form, smallest objective).
    """
    p = E.shape[0]
    G, b = E @ E.T, E @ y
    scale = np.abs(G).max() + np.abs(b).max()
    for k in range(1, p + 1):
        for S in map(list, itertools.combinations(range(p), k)):
            K = np.zeros((k + 1, k + 1))
            K[:k, :k] = G[np.ix_(S, S)]
            K[:k, k] = K[k, :k] = 1.0
            try:
                sol = np.linalg.solve(K, np.r_[b[S], 1.0])
            except np.linalg.LinAlgError:
                continue
            a = np.zeros(p)
            a[S] = sol[:k]
            if (a < -1e-12).any():
                continue
            g = G @ a - b  # gradient of ½||Eᵀa − y||²
            nu = g - g[S].mean()  # multipliers of a ≥ 0 (zero on S at the optimum)
            if (nu >= -dual_tol * scale).all():
                return a
    raise AssertionError("no support satisfies the KKT conditions")


def kkt_violation(A: np.ndarray, E: np.ndarray, Y: np.ndarray) -> float:
    """Largest violation of FCLS's optimality conditions by abundances A (N, p), relative to scale."""
    G, B = E @ E.T, Y @ E.T
    g = A @ G - B
    support = A > 1e-10
    mu = (g * support).sum(axis=1) / support.sum(axis=1)
    nu = g - mu[:, None]
    scale = np.abs(G).max() + np.abs(B).max()
    return max(
        -A.min(),
        np.abs(A.sum(axis=1) - 1).max(),
        np.abs(np.where(support, nu, 0)).max() / scale,  # stationarity on the support
        -np.where(support, 0, nu).min() / scale,  # dual feasibility off it
    )


def random_problem(rng, p: int, bands: int, n: int, spread: float = 1.6, noise: float = 0.05):
    """Endmembers in [0, 1) and pixels mixed with abundances partly outside the simplex, plus noise."""
    E = rng.random((p, bands))
    A = rng.dirichlet(np.ones(p), n) * spread - (spread - 1) / p
    return E, A @ E + noise * rng.standard_normal((n, bands))


# ---------------------------------------------------------------------------------------------------
# Simplex projection
# ---------------------------------------------------------------------------------------------------
def test_project_simplex_known_values():
    x = np.array([[0.5, 0.5], [2.0, 0.0], [0.0, 0.0], [-1.0, 3.0], [0.2, 0.3]])
    expected = np.array([[0.5, 0.5], [1.0, 0.0], [0.5, 0.5], [0.0, 1.0], [0.45, 0.55]])
    np.testing.assert_allclose(project_simplex(x), expected, atol=1e-15)
    np.testing.assert_allclose(project_simplex(np.ones(3)), np.full(3, 1 / 3), atol=1e-15)


@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_project_simplex_on_simplex_and_idempotent(axis):
    x = np.random.default_rng(0).normal(size=(5, 6, 7)) * 3
    a = project_simplex(x, axis=axis)
    assert a.shape == x.shape
    assert a.min() >= 0
    np.testing.assert_allclose(a.sum(axis=axis), 1.0, atol=1e-12)
    np.testing.assert_allclose(project_simplex(a, axis=axis), a, atol=1e-15)


def test_project_simplex_equals_qp():
    """The projection is FCLS with identity endmembers: compare with the brute-force KKT solution."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 5)) * 2
    expected = np.array([reference_fcls(v, np.eye(5)) for v in x])
    np.testing.assert_allclose(project_simplex(x), expected, atol=1e-12)
    np.testing.assert_allclose(fcls(x, np.eye(5)), expected, atol=1e-12)


def test_project_simplex_dtypes_and_nan():
    x = np.array([[0.3, 0.9, -0.2], [np.nan, 0.1, 0.2]])
    assert project_simplex(x.astype(np.float32)).dtype == np.float32
    assert project_simplex(x).dtype == np.float64
    assert project_simplex(np.array([[1, 3]])).dtype == np.float64
    out = project_simplex(x)
    assert np.isnan(out[1]).all() and np.isfinite(out[0]).all()
    np.testing.assert_allclose(project_simplex(x.astype(np.float32))[0], out[0], atol=1e-6)


# ---------------------------------------------------------------------------------------------------
# Mixing model
# ---------------------------------------------------------------------------------------------------
def test_mix_and_residual_rmse_known_offset():
    rng = np.random.default_rng(2)
    E = rng.random((3, 8))
    A = rng.dirichlet(np.ones(3), size=(4, 5))
    Y = mix(A, E)
    assert Y.shape == (4, 5, 8)
    np.testing.assert_allclose(Y[1, 2], A[1, 2] @ E)
    rmse = residual_rmse(Y + 0.1, A, E)
    assert rmse.shape == (4, 5)
    np.testing.assert_allclose(rmse, 0.1, atol=1e-12)
    with pytest.raises(ValueError, match="abundances must have shape"):
        mix(A[..., :2], E)
    with pytest.raises(ValueError, match="cube has shape"):
        residual_rmse(Y[:, :3], A, E)


@pytest.mark.parametrize("p", [2, 4, 7])
def test_endmembers_from_abundances_equals_scipy_nnls(p):
    rng = np.random.default_rng(p)
    A = rng.dirichlet(np.ones(p), 300)
    Y = A @ rng.random((p, 60)) + 0.1 * rng.standard_normal((300, 60)) - 0.05  # some bands go negative
    expected = np.array([nnls(A, Y[:, band])[0] for band in range(60)]).T
    E = endmembers_from_abundances(A.T @ A, A.T @ Y)
    assert E.shape == (p, 60) and E.min() >= 0
    assert (expected == 0).any()  # the constraint is active somewhere
    np.testing.assert_allclose(E, expected, atol=1e-8)


def test_endmembers_from_abundances_rank_deficient_golden():
    """Singular AᵀA (tests/golden/nnls_rank_deficient.json, also read by the C++ core's test): the
    minimiser is not unique, so the file pins which one comes back, bit for bit; each is a minimiser
    (the KKT conditions hold to rounding)."""
    cases = json.loads((Path(__file__).parent / "golden" / "nnls_rank_deficient.json").read_text())["cases"]
    assert len(cases) >= 5
    for case in cases:
        AtA, AtY, expected = (np.array(case[key]) for key in ("AtA", "AtY", "endmembers"))
        assert np.linalg.matrix_rank(AtA) < AtA.shape[0], case["name"]
        E = endmembers_from_abundances(AtA, AtY)
        np.testing.assert_array_equal(E, expected, err_msg=case["name"])
        gradient = AtA @ E - AtY  # half the objective's gradient
        scale = np.abs(AtY).max()
        assert np.abs(gradient[E > 0]).max() <= 1e-12 * scale, case["name"]
        assert gradient[E == 0].min() >= -1e-10 * scale, case["name"]


def test_endmembers_from_abundances_unused_endmember_and_errors():
    rng = np.random.default_rng(3)
    E_true = rng.random((3, 20))
    A = rng.dirichlet(np.ones(3), 100)
    A[:, 1] = 0  # endmember 1 never present: undetermined, returned as zeros
    A /= A.sum(axis=1, keepdims=True)
    E = endmembers_from_abundances(A.T @ A, A.T @ (A @ E_true))
    np.testing.assert_allclose(E[[0, 2]], E_true[[0, 2]], atol=1e-10)
    np.testing.assert_array_equal(E[1], 0)
    with pytest.raises(ValueError, match="AtY must have shape"):
        endmembers_from_abundances(np.eye(3), np.ones((2, 5)))
    with pytest.raises(ValueError, match="finite"):
        endmembers_from_abundances(np.eye(2) * np.nan, np.ones((2, 5)))


# ---------------------------------------------------------------------------------------------------
# FCLS
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["enumerate", "active_set"])
@pytest.mark.parametrize("p", [2, 3, 6])
def test_fcls_equals_reference_qp(p, method):
    rng = np.random.default_rng(10 + p)
    E, Y = random_problem(rng, p, 30, 150)
    A = fcls(Y, E, method=method)
    expected = np.array([reference_fcls(y, E) for y in Y])
    np.testing.assert_allclose(A, expected, atol=1e-9)
    assert kkt_violation(A, E, Y) < 1e-9


@pytest.mark.parametrize("method", ["enumerate", "active_set"])
def test_fcls_ill_conditioned_endmembers(method):
    """Nearly collinear endmembers (condition number ~4e3): still within 1e-6 of the reference."""
    rng = np.random.default_rng(20)
    base = rng.random(40)
    E = base + 2e-3 * rng.random((5, 40))
    assert np.linalg.cond(E) > 1e3
    A_true = rng.dirichlet(np.ones(5), 120) * 1.4 - 0.08
    Y = A_true @ E + 1e-5 * rng.standard_normal((120, 40))
    A = fcls(Y, E, method=method)
    expected = np.array([reference_fcls(y, E) for y in Y])
    np.testing.assert_allclose(A, expected, atol=1e-6)
    assert ((A > 0) & (A < 1)).any(axis=1).mean() > 0.5  # mostly interior solutions: a real test


def test_fcls_agrees_with_slsqp():
    rng = np.random.default_rng(21)
    E, Y = random_problem(rng, 4, 25, 15)
    A = fcls(Y, E)
    for y, a in zip(Y, A):
        res = minimize(
            lambda x: 0.5 * np.sum((x @ E - y) ** 2),
            np.full(4, 0.25),
            jac=lambda x: (x @ E - y) @ E.T,
            bounds=[(0, 1)] * 4,
            constraints={"type": "eq", "fun": lambda x: x.sum() - 1, "jac": lambda x: np.ones_like(x)},
            method="SLSQP",
            options={"ftol": 1e-15, "maxiter": 500},
        )
        assert res.success
        np.testing.assert_allclose(a, res.x, atol=1e-6)


def test_fcls_exact_on_noise_free_mixtures_and_pure_pixels():
    rng = np.random.default_rng(22)
    E = rng.random((4, 50))
    A_true = np.vstack([np.eye(4), rng.dirichlet(np.ones(4), 50)])
    np.testing.assert_allclose(fcls(A_true @ E, E), A_true, atol=1e-12)


def test_fcls_cube_shapes_dtypes_and_nan():
    rng = np.random.default_rng(23)
    E, Y = random_problem(rng, 3, 12, 6 * 7)
    cube = Y.reshape(6, 7, 12).astype(np.float32)
    cube[2, 3, 5] = np.nan
    A = fcls(cube, E)
    assert A.shape == (6, 7, 3) and A.dtype == np.float32
    assert np.isnan(A[2, 3]).all()
    finite = np.isfinite(A).all(axis=-1)
    assert finite.sum() == 41
    np.testing.assert_allclose(A[finite].sum(axis=-1), 1.0, atol=1e-6)
    assert A[finite].min() >= 0
    reference = fcls(cube.astype(np.float64).reshape(-1, 12), E).reshape(6, 7, 3)
    assert reference.dtype == np.float64
    np.testing.assert_allclose(A[finite], reference[finite], atol=1e-6)


def test_fcls_active_set_matches_enumeration_and_falls_back():
    rng = np.random.default_rng(24)
    E, Y = random_problem(rng, 9, 40, 400)
    exact = fcls(Y, E, method="enumerate")
    np.testing.assert_allclose(fcls(Y, E), exact, atol=1e-10)  # auto: active set for p = 9
    np.testing.assert_allclose(fcls(Y, E, chunk_size=37), exact, atol=1e-10)
    # One iteration cannot converge: the unconverged pixels are finished by enumeration.
    np.testing.assert_allclose(fcls(Y, E, method="active_set", max_iter=1), exact, atol=1e-10)
    assert kkt_violation(exact, E, Y) < 1e-9


def test_fcls_more_endmembers_than_bands():
    """p > B + 1: affinely dependent endmembers, non-unique abundances; the optimum value is exact."""
    rng = np.random.default_rng(25)
    E, Y = random_problem(rng, 6, 3, 40, noise=0.2)
    G = E @ E.T
    best = np.full(len(Y), np.inf)  # brute force: feasible minimisers of affinely independent supports
    for k in range(1, 5):
        for S in map(list, itertools.combinations(range(6), k)):
            if np.linalg.matrix_rank(np.vstack([E[S].T, np.ones(k)])) < k:
                continue
            K = np.block([[G[np.ix_(S, S)], np.ones((k, 1))], [np.ones((1, k)), np.zeros((1, 1))]])
            a = np.linalg.solve(K, np.hstack([Y @ E[S].T, np.ones((len(Y), 1))]).T).T[:, :k]
            value = np.sum((a @ E[S] - Y) ** 2, axis=1)
            best = np.where((a >= -1e-12).all(axis=1), np.minimum(best, value), best)
    for method in ("enumerate", "active_set"):
        A = fcls(Y, E, method=method)
        assert A.min() >= 0
        np.testing.assert_allclose(A.sum(axis=1), 1.0, atol=1e-12)
        np.testing.assert_allclose(np.sum((A @ E - Y) ** 2, axis=1), best, rtol=1e-9, atol=1e-12)


def test_fcls_rejects_bad_input():
    E = np.random.default_rng(0).random((3, 5))
    with pytest.raises(ValueError, match="pixels must have shape"):
        fcls(np.ones((4, 6)), E)
    with pytest.raises(ValueError, match="endmembers contain NaN"):
        fcls(np.ones((4, 5)), E * np.nan)
    with pytest.raises(ValueError, match="method"):
        fcls(np.ones((4, 5)), E, method="fast")


# ---------------------------------------------------------------------------------------------------
# VCA
# ---------------------------------------------------------------------------------------------------
def pure_pixel_scene(rng, p=5, bands=80, n=1500):
    E = rng.random((p, bands)) + 0.1
    A = rng.dirichlet(np.ones(p), n)
    pure = rng.choice(n, size=p, replace=False)
    A[pure] = np.eye(p)
    return E, A @ E, pure


@pytest.mark.parametrize("snr", [None, 0.0])  # None: estimated (noise free: projective); 0 dB: the other branch
def test_vca_recovers_pure_pixels(snr):
    rng = np.random.default_rng(30)
    E, Y, pure = pure_pixel_scene(rng)
    Y[7] = np.nan  # skipped, and the indices still count it
    found, indices = vca(Y, 5, seed=0, snr=snr)
    assert found.shape == (5, 80) and indices.shape == (5,)
    assert sorted(indices) == sorted(pure)
    order = [int(np.flatnonzero(pure == i)[0]) for i in indices]
    np.testing.assert_allclose(found, E[order], atol=1e-10)
    assert sad_degrees(found, E[order]).max() < 1e-8


def test_vca_deterministic_and_checks_input():
    rng = np.random.default_rng(31)
    E, Y, _ = pure_pixel_scene(rng)
    Y = Y + 0.01 * rng.standard_normal(Y.shape)
    first = vca(Y, 5, seed=3)
    second = vca(Y, 5, seed=3)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    with pytest.raises(ValueError, match="between 2 and the band count"):
        vca(Y, 1)
    with pytest.raises(ValueError, match="shape"):
        vca(Y.reshape(30, 50, 80), 5)
