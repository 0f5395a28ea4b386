"""Unmixing metrics with HySUPP's conventions, exposed as ``unmix.evaluate``.

Conventions (README.md, "Metric conventions"): estimated endmembers are matched to the truth by the
Hungarian algorithm on abundance-map distance (RMSE between maps, HySUPP's rule); SAD is the mean
arccos of the cosine between matched spectra; abundance RMSE runs over all pixels and endmembers (a
fraction; x100 also given); PSNR uses peak 1.0 on reflectance.

The small functions take arrays that are already aligned (same endmember order) and check them:
shapes must match and values must be finite, else ValueError. ``evaluate`` aligns first.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

CONVENTIONS = (
    "endmembers matched to the truth by the Hungarian algorithm on abundance-map RMSE (HySUPP's rule); "
    "SAD = mean arccos of the cosine between matched spectra (computed stably), in degrees and radians; "
    "abundance RMSE over all pixels and endmembers (fraction; x100 also given); "
    "eRMSE over all endmembers and bands; SRE = 10 log10(||A||^2 / ||A - A_est||^2) dB; "
    "reconstruction RMSE over all pixels and bands; PSNR with peak 1.0 (reflectance); "
    "pixels with a non-finite estimate (or cube value) are excluded and counted in masked_pixels"
)


def _checked(name: str, **arrays: np.ndarray) -> list[np.ndarray]:
    """float64 copies of ``arrays``; raises ValueError unless all have one shape and are finite."""
    out = [np.asarray(a, dtype=np.float64) for a in arrays.values()]
    labels = list(arrays)
    for label, a in zip(labels, out):
        if a.size == 0:
            raise ValueError(f"{name}: {label} is empty")
        if not np.isfinite(a).all():
            raise ValueError(f"{name}: {label} contains NaN or infinite values")
    for label, a in zip(labels[1:], out[1:]):
        if a.shape != out[0].shape:
            raise ValueError(f"{name}: {labels[0]} has shape {out[0].shape} but {label} has shape {a.shape}")
    return out


def _check_p(name: str, est: np.ndarray, true: np.ndarray) -> None:
    est, true = np.asarray(est), np.asarray(true)
    if est.ndim < 1 or true.ndim < 1 or est.shape[-1] != true.shape[-1]:
        raise ValueError(
            f"{name}: the estimate has {est.shape[-1] if est.ndim else 0} endmembers but the truth has "
            f"{true.shape[-1] if true.ndim else 0} (shapes {est.shape} and {true.shape})"
        )


def align(est_abundances: np.ndarray, true_abundances: np.ndarray) -> np.ndarray:
    """Match estimated endmembers to true ones by the Hungarian algorithm on abundance-map RMSE.

    Args:
        est_abundances: (..., p) estimated abundances, e.g. (H, W, p).
        true_abundances: (..., p) true abundances, same shape.

    Returns:
        (p,) int64 permutation ``perm``: estimated endmember ``perm[j]`` matches true endmember j, so
        ``est_abundances[..., perm]`` and ``est_endmembers[perm]`` are in the truth's order.
    """
    _check_p("align", est_abundances, true_abundances)
    est, true = _checked("align", est_abundances=est_abundances, true_abundances=true_abundances)
    p = est.shape[-1]
    est, true = est.reshape(-1, p), true.reshape(-1, p)
    # cost[j, i] = RMSE between true map j and estimated map i, from inner products (memory p×p).
    squared = (true**2).sum(axis=0)[:, None] + (est**2).sum(axis=0)[None, :] - 2 * true.T @ est
    cost = np.sqrt(np.maximum(squared, 0.0) / est.shape[0])
    rows, cols = linear_sum_assignment(cost)
    return cols[np.argsort(rows)].astype(np.int64)


def sad(est_endmembers: np.ndarray, true_endmembers: np.ndarray) -> np.ndarray:
    """Spectral angle distance per endmember, arccos(<ê, e> / (|ê| |e|)), in radians.

    Computed as 2·atan2(|û − v̂|, |û + v̂|) on the unit vectors, which equals the arccos of the
    (clipped) cosine but keeps full precision near 0 and π, where arccos loses half the digits.

    Args:
        est_endmembers: (p, B) estimated spectra, aligned to the truth.
        true_endmembers: (p, B) true spectra.

    Returns:
        (p,) angles in radians, in [0, π].
    """
    est, true = _checked("sad", est_endmembers=est_endmembers, true_endmembers=true_endmembers)
    if est.ndim != 2:
        raise ValueError(f"sad: endmembers must have shape (p, B), got {est.shape}")
    est_norm = np.linalg.norm(est, axis=1, keepdims=True)
    true_norm = np.linalg.norm(true, axis=1, keepdims=True)
    zero = ((est_norm == 0) | (true_norm == 0))[:, 0]
    if zero.any():
        raise ValueError(f"sad: endmembers {np.flatnonzero(zero).tolist()} have a zero spectrum; the angle is undefined")
    u, v = est / est_norm, true / true_norm
    return 2 * np.arctan2(np.linalg.norm(u - v, axis=1), np.linalg.norm(u + v, axis=1))


def sad_degrees(est_endmembers: np.ndarray, true_endmembers: np.ndarray) -> np.ndarray:
    """(p,) spectral angle distance per endmember in degrees (see ``sad``)."""
    return np.degrees(sad(est_endmembers, true_endmembers))


def _rmse(name: str, **pair: np.ndarray) -> float:
    """sqrt(mean((x − y)²)) over every element of two checked arrays of one shape."""
    x, y = _checked(name, **pair)
    return float(np.sqrt(np.mean((x - y) ** 2)))


def abundance_rmse(est_abundances: np.ndarray, true_abundances: np.ndarray) -> float:
    """Abundance RMSE over all pixels and endmembers, sqrt(mean((Â − A)²)), as a fraction.

    Args:
        est_abundances: (..., p) estimated abundances, aligned to the truth.
        true_abundances: (..., p) true abundances, same shape.
    """
    return _rmse("abundance_rmse", est_abundances=est_abundances, true_abundances=true_abundances)


def endmember_rmse(est_endmembers: np.ndarray, true_endmembers: np.ndarray) -> float:
    """Endmember RMSE (eRMSE) over all endmembers and bands, sqrt(mean((Ê − E)²)), in spectra units.

    Args:
        est_endmembers: (p, B) estimated spectra, aligned to the truth.
        true_endmembers: (p, B) true spectra.
    """
    return _rmse("endmember_rmse", est_endmembers=est_endmembers, true_endmembers=true_endmembers)


def sre_db(est_abundances: np.ndarray, true_abundances: np.ndarray) -> float:
    """Signal-to-reconstruction error of the abundances, 10·log10(||A||² / ||A − Â||²), in dB.

    Args:
        est_abundances: (..., p) estimated abundances, aligned to the truth.
        true_abundances: (..., p) true abundances, same shape.

    Returns:
        dB; +inf when the estimate is exact.
    """
    est, true = _checked("sre_db", est_abundances=est_abundances, true_abundances=true_abundances)
    error = np.sum((true - est) ** 2)
    signal = np.sum(true**2)
    if error == 0:
        return math.inf
    if signal == 0:
        return -math.inf
    return float(10 * np.log10(signal / error))


def reconstruction_rmse(cube: np.ndarray, abundances: np.ndarray, endmembers: np.ndarray) -> float:
    """RMSE between the cube and A·E over all pixels and bands, in the cube's units.

    Args:
        cube: (..., B) spectra, e.g. (H, W, B).
        abundances: (..., p) abundances with the cube's leading shape.
        endmembers: (p, B) spectra.
    """
    abundances = np.asarray(abundances, dtype=np.float64)
    endmembers = np.asarray(endmembers, dtype=np.float64)
    if endmembers.ndim != 2 or abundances.ndim < 1 or abundances.shape[-1] != endmembers.shape[0]:
        raise ValueError(
            f"reconstruction_rmse: abundances {abundances.shape} and endmembers {endmembers.shape} "
            "must have shapes (..., p) and (p, B)"
        )
    return _rmse("reconstruction_rmse", cube=cube, reconstruction=abundances @ endmembers)


def psnr(cube: np.ndarray, recon: np.ndarray, peak: float = 1.0) -> float:
    """Peak signal-to-noise ratio, 10·log10(peak² / MSE), in dB; MSE over all pixels and bands.

    Args:
        cube: (..., B) reference spectra (reflectance 0..1 for the default peak).
        recon: (..., B) reconstruction, same shape.
        peak: the signal's peak value (1.0 for reflectance).

    Returns:
        dB; +inf when the reconstruction is exact.
    """
    if not peak > 0:
        raise ValueError(f"psnr: peak must be positive, got {peak}")
    cube, recon = _checked("psnr", cube=cube, recon=recon)
    mse = np.mean((cube - recon) ** 2)
    return math.inf if mse == 0 else float(10 * np.log10(peak**2 / mse))


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def evaluate(
    abundances: Any,
    endmembers: Any = None,
    truth_abundances: np.ndarray | None = None,
    truth_endmembers: np.ndarray | None = None,
    cube: np.ndarray | None = None,
    names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Score an unmixing against the truth after Hungarian alignment; returns a JSON-ready dict.

    Call it with arrays, ``evaluate(A, E, A_true, E_true, cube=Y)``, or with two objects,
    ``evaluate(result, truth)``, where each has ``abundances`` and ``endmembers`` attributes (a
    Result, a Scene with ground truth); the truth's ``endmember_names`` are used when present.

    Args:
        abundances: (..., p) estimated abundances, e.g. (H, W, p); pixels with a NaN are excluded.
        endmembers: (p, B) estimated spectra, or None to skip the endmember metrics.
        truth_abundances: (..., p) true abundances, same shape as ``abundances``, finite.
        truth_endmembers: (p, B) true spectra, or None to skip the endmember metrics.
        cube: (..., B) the observed spectra, for the reconstruction metrics (optional).
        names: p names of the true endmembers (optional).

    Returns:
        A dict of plain Python values: ``sad_degrees_mean``, ``sad_radians_mean``, ``sad_degrees``
        (per true endmember), ``abundance_rmse``, ``abundance_rmse_x100``,
        ``abundance_rmse_per_endmember``, ``endmember_rmse``, ``sre_db``, ``permutation`` (see
        ``align``), ``pixels``, ``masked_pixels``, ``names``, ``conventions``, and with a cube
        ``reconstruction_rmse`` and ``psnr_db``. Endmember metrics are None when either side has no
        endmembers; ``sre_db`` and ``psnr_db`` are None when the error is exactly zero (infinite dB).
    """
    if all(hasattr(obj, attr) for obj in (abundances, endmembers) for attr in ("abundances", "endmembers")):
        result, truth = abundances, endmembers
        abundances, endmembers = result.abundances, result.endmembers
        truth_abundances, truth_endmembers = truth.abundances, truth.endmembers
        if names is None:
            names = getattr(truth, "endmember_names", None)
    if abundances is None or truth_abundances is None:
        raise ValueError("evaluate: both the estimate and the truth need abundances")
    est_A = np.asarray(abundances, dtype=np.float64)
    true_A = np.asarray(truth_abundances, dtype=np.float64)
    _check_p("evaluate", est_A, true_A)
    if est_A.shape != true_A.shape:
        raise ValueError(f"evaluate: estimated abundances have shape {est_A.shape} but the truth has {true_A.shape}")
    if not np.isfinite(true_A).all():
        raise ValueError("evaluate: the true abundances contain NaN or infinite values")
    p = est_A.shape[-1]
    if names is not None and len(names) != p:
        raise ValueError(f"evaluate: {len(names)} names given for {p} endmembers")
    if endmembers is not None and (np.ndim(endmembers) != 2 or np.shape(endmembers)[0] != p):
        raise ValueError(f"evaluate: estimated endmembers must have shape ({p}, B), got {np.shape(endmembers)}")
    est_A, true_A = est_A.reshape(-1, p), true_A.reshape(-1, p)
    keep = np.isfinite(est_A).all(axis=1)
    if cube is not None:
        cube = np.asarray(cube, dtype=np.float64)
        if cube.shape[:-1] != np.shape(abundances)[:-1]:
            raise ValueError(f"evaluate: cube has shape {cube.shape} but the abundances have {np.shape(abundances)}")
        cube = cube.reshape(-1, cube.shape[-1])
        keep &= np.isfinite(cube).all(axis=1)
    if not keep.any():
        raise ValueError("evaluate: every pixel of the estimate is NaN; nothing to score")
    est_A, true_A = est_A[keep], true_A[keep]

    perm = align(est_A, true_A)
    est_A = est_A[:, perm]
    armse = abundance_rmse(est_A, true_A)
    per_endmember = np.sqrt(np.mean((est_A - true_A) ** 2, axis=0))
    est_E = None if endmembers is None else np.asarray(endmembers, dtype=np.float64)[perm]
    report: dict[str, Any] = {
        "endmembers": p,
        "pixels": int(keep.sum()),
        "masked_pixels": int((~keep).sum()),
        "names": list(names) if names is not None else None,
        "permutation": perm.tolist(),
        "sad_degrees_mean": None,
        "sad_radians_mean": None,
        "sad_degrees": None,
        "abundance_rmse": armse,
        "abundance_rmse_x100": 100 * armse,
        "abundance_rmse_per_endmember": per_endmember.tolist(),
        "endmember_rmse": None,
        "sre_db": _finite_or_none(sre_db(est_A, true_A)),
        "conventions": CONVENTIONS,
    }
    if est_E is not None and truth_endmembers is not None:
        angles = sad(est_E, truth_endmembers)
        report["sad_degrees_mean"] = float(np.degrees(angles.mean()))
        report["sad_radians_mean"] = float(angles.mean())
        report["sad_degrees"] = np.degrees(angles).tolist()
        report["endmember_rmse"] = endmember_rmse(est_E, truth_endmembers)
    if cube is not None:
        if est_E is None:
            raise ValueError("evaluate: the reconstruction metrics need the estimated endmembers")
        recon = est_A @ est_E
        report["reconstruction_rmse"] = _rmse("evaluate", cube=cube[keep], reconstruction=recon)
        report["psnr_db"] = _finite_or_none(psnr(cube[keep], recon, peak=1.0))
    return report
