"""Metrics on hand-computed cases, alignment, and ``evaluate``'s report."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

import unmix
from unmix.io.scene import Scene
from unmix.physics import (
    abundance_rmse,
    align,
    endmember_rmse,
    evaluate,
    psnr,
    reconstruction_rmse,
    sad,
    sad_degrees,
    sre_db,
)


def test_sad_known_angles():
    est = np.array([[1.0, 0.0], [2.0, 4.0], [1.0, 1.0], [-1.0, 0.0]])
    true = np.array([[0.0, 3.0], [1.0, 2.0], [1.0, 0.0], [1.0, 0.0]])
    np.testing.assert_allclose(sad_degrees(est, true), [90.0, 0.0, 45.0, 180.0], atol=1e-12)
    np.testing.assert_allclose(sad(est, true), [math.pi / 2, 0.0, math.pi / 4, math.pi], atol=1e-14)
    # Equals the arccos of the cosine where arccos is well conditioned.
    rng = np.random.default_rng(0)
    a, b = rng.random((2, 5, 30))
    cosine = np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    np.testing.assert_allclose(sad(a, b), np.arccos(cosine), rtol=1e-10)


def test_sad_checks_input():
    with pytest.raises(ValueError, match="shape"):
        sad(np.ones((2, 3)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="NaN"):
        sad(np.array([[1.0, np.nan]]), np.ones((1, 2)))
    with pytest.raises(ValueError, match="zero spectrum"):
        sad(np.zeros((1, 3)), np.ones((1, 3)))


def test_align_undoes_a_permutation():
    rng = np.random.default_rng(0)
    truth = rng.dirichlet(np.ones(4), size=(6, 5))
    shuffle = np.array([2, 0, 3, 1])
    est = truth[..., shuffle] + 0.01 * rng.standard_normal(truth.shape)
    perm = align(est, truth)
    np.testing.assert_allclose(est[..., perm], truth, atol=0.05)
    np.testing.assert_array_equal(shuffle[perm], np.arange(4))
    with pytest.raises(ValueError, match="3 endmembers but the truth has 4"):
        align(est[..., :3], truth)
    with pytest.raises(ValueError, match="NaN"):
        align(np.full_like(truth, np.nan), truth)


def test_rmse_of_known_offsets():
    truth = np.full((4, 4, 3), 1 / 3)
    assert abundance_rmse(truth + 0.1, truth) == pytest.approx(0.1, abs=1e-12)
    E = np.ones((3, 7))
    assert endmember_rmse(E - 0.25, E) == pytest.approx(0.25, abs=1e-12)
    cube = truth @ E + 0.05
    assert reconstruction_rmse(cube, truth, E) == pytest.approx(0.05, abs=1e-12)
    with pytest.raises(ValueError, match="shape"):
        abundance_rmse(truth[:2], truth)
    with pytest.raises(ValueError, match="shapes"):
        reconstruction_rmse(cube, truth, E[:2])


def test_sre_and_psnr_known_ratios():
    truth = np.ones((10, 2))
    assert sre_db(truth + 0.1, truth) == pytest.approx(20.0, abs=1e-9)  # ||A||²/||err||² = 100
    assert sre_db(truth, truth) == math.inf
    cube = np.full((5, 4), 0.5)
    assert psnr(cube, cube + 0.1) == pytest.approx(20.0, abs=1e-9)  # MSE 0.01, peak 1
    assert psnr(cube, cube + 0.1, peak=2.0) == pytest.approx(10 * math.log10(4 / 0.01), abs=1e-9)
    assert psnr(cube, cube) == math.inf
    with pytest.raises(ValueError, match="peak"):
        psnr(cube, cube, peak=0)


def _truth(rng, h=6, w=5, p=3, bands=9):
    E = rng.random((p, bands)) + 0.1
    A = rng.dirichlet(np.ones(p), size=(h, w))
    return A, E, A @ E


def test_evaluate_perfect_permuted_estimate():
    rng = np.random.default_rng(1)
    A, E, cube = _truth(rng)
    shuffle = np.array([1, 2, 0])
    report = evaluate(A[..., shuffle], E[shuffle], A, E, cube=cube, names=["soil", "tree", "water"])
    json.dumps(report, allow_nan=False)
    assert shuffle[report["permutation"]].tolist() == [0, 1, 2]
    assert report["sad_degrees_mean"] == 0 and report["sad_radians_mean"] == 0
    assert report["sad_degrees"] == [0, 0, 0]
    assert report["abundance_rmse"] == 0 and report["abundance_rmse_x100"] == 0
    assert report["abundance_rmse_per_endmember"] == [0, 0, 0]
    assert report["endmember_rmse"] == 0
    assert report["sre_db"] is None and report["psnr_db"] is None  # exact: infinite dB
    assert report["reconstruction_rmse"] == pytest.approx(0.0, abs=1e-12)
    assert report["names"] == ["soil", "tree", "water"]
    assert report["masked_pixels"] == 0 and report["pixels"] == 30
    for phrase in ("Hungarian", "abundance-map RMSE", "mean arccos", "all pixels and endmembers", "peak 1.0"):
        assert phrase in report["conventions"]


def test_evaluate_known_errors_and_masked_pixels():
    rng = np.random.default_rng(2)
    A, E, cube = _truth(rng)
    est_A = A + 0.02
    est_A[0, 0] = np.nan
    est_E = 2 * E  # same angles, eRMSE = RMS of E
    report = evaluate(est_A, est_E, A, E, cube=cube)
    json.dumps(report, allow_nan=False)
    assert report["masked_pixels"] == 1 and report["pixels"] == 29
    assert report["abundance_rmse"] == pytest.approx(0.02)
    assert report["abundance_rmse_x100"] == pytest.approx(2.0)
    assert report["abundance_rmse_per_endmember"] == pytest.approx([0.02] * 3)
    assert report["sad_degrees_mean"] == pytest.approx(0.0, abs=1e-12)
    assert report["sad_radians_mean"] == pytest.approx(0.0, abs=1e-14)
    assert report["endmember_rmse"] == pytest.approx(np.sqrt(np.mean(E**2)))
    keep = np.ones((6, 5), bool)
    keep[0, 0] = False
    expected_sre = 10 * np.log10(np.sum(A[keep] ** 2) / np.sum(0.02**2 * np.ones_like(A[keep])))
    assert report["sre_db"] == pytest.approx(expected_sre)
    recon_rmse = np.sqrt(np.mean((est_A[keep] @ est_E - cube[keep]) ** 2))
    assert report["reconstruction_rmse"] == pytest.approx(recon_rmse)
    assert report["psnr_db"] == pytest.approx(-20 * np.log10(recon_rmse))


def test_evaluate_accepts_result_and_scene():
    rng = np.random.default_rng(3)
    A, E, cube = _truth(rng)
    scene = Scene.from_array(cube, abundances=A, endmembers=E, endmember_names=["a", "b", "c"])
    result = SimpleNamespace(abundances=A[..., ::-1], endmembers=E[::-1])
    report = unmix.evaluate(result, scene)
    assert report["permutation"] == [2, 1, 0]
    assert report["names"] == ["a", "b", "c"]
    assert report["abundance_rmse"] == 0
    assert "reconstruction_rmse" not in report


def test_evaluate_rejects_mismatches():
    rng = np.random.default_rng(4)
    A, E, _ = _truth(rng)
    with pytest.raises(ValueError, match="2 endmembers but the truth has 3"):
        evaluate(A[..., :2], E[:2], A, E)
    with pytest.raises(ValueError, match="shape"):
        evaluate(A.transpose(1, 0, 2), E, A, E)
    with pytest.raises(ValueError, match="every pixel"):
        evaluate(np.full_like(A, np.nan), E, A, E)
    with pytest.raises(ValueError, match="names"):
        evaluate(A, E, A, E, names=["one"])
