"""The linear mixing model Y ≈ A·E and what follows from it (numpy + scipy).

Shapes: endmembers E (p, B), one spectrum per row; abundances A (..., p), e.g. (H, W, p) or (N, p);
spectra Y (..., B), e.g. an (H, W, B) cube or (N, B) pixels.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import nnls


def _check_endmembers(endmembers: np.ndarray, name: str) -> np.ndarray:
    endmembers = np.asarray(endmembers)
    if endmembers.ndim != 2:
        raise ValueError(f"{name}: endmembers must have shape (p, B), got {endmembers.shape}")
    return endmembers


def mix(abundances: np.ndarray, endmembers: np.ndarray) -> np.ndarray:
    """Linear mixture A·E.

    Args:
        abundances: (..., p) abundances.
        endmembers: (p, B) endmember spectra.

    Returns:
        (..., B) mixed spectra, in the endmembers' units, dtype from numpy's promotion rules.
    """
    abundances = np.asarray(abundances)
    endmembers = _check_endmembers(endmembers, "mix")
    if abundances.ndim < 1 or abundances.shape[-1] != endmembers.shape[0]:
        raise ValueError(
            f"mix: abundances must have shape (..., {endmembers.shape[0]}) to match endmembers "
            f"{endmembers.shape}, got {abundances.shape}"
        )
    return abundances @ endmembers


def residual_rmse(cube: np.ndarray, abundances: np.ndarray, endmembers: np.ndarray) -> np.ndarray:
    """Per-pixel root-mean-square reconstruction error over bands, sqrt(mean_b (Y − A·E)²).

    Args:
        cube: (..., B) spectra, e.g. (H, W, B).
        abundances: (..., p) abundances with the same leading shape.
        endmembers: (p, B) endmember spectra.

    Returns:
        (...,) RMSE in the cube's units; NaN where the pixel or its abundances hold a NaN.
    """
    cube = np.asarray(cube)
    recon = mix(abundances, endmembers)
    if recon.shape != cube.shape:
        raise ValueError(f"residual_rmse: cube has shape {cube.shape} but A·E has shape {recon.shape}")
    return np.sqrt(np.mean((cube - recon) ** 2, axis=-1))


def endmembers_from_abundances(AtA: np.ndarray, AtY: np.ndarray) -> np.ndarray:
    """Non-negative least-squares endmembers from the sufficient statistics AᵀA and AᵀY.

    Solves, for every band b independently, min_{e ≥ 0} ||A e − Y[:, b]||², which equals
    min_{e ≥ 0} eᵀ(AᵀA)e − 2 (AᵀY[:, b])ᵀe + const, so the pixels are never needed: statistics
    accumulated tile by tile suffice. The quadratic form is factored once (AᵀA = MᵀM from its
    eigen-decomposition) and each band is an exact p×p NNLS (Lawson–Hanson, scipy.optimize.nnls).

    Args:
        AtA: (p, p) symmetric positive semi-definite Gram matrix of the abundances, Σ_pixels a aᵀ.
        AtY: (p, B) cross products Σ_pixels a yᵀ.

    Returns:
        (p, B) float64 endmembers, E ≥ 0. An endmember with no abundance anywhere (a zero row and
        column of AᵀA) is undetermined and comes back as zeros.
    """
    AtA = np.asarray(AtA, dtype=np.float64)
    AtY = np.asarray(AtY, dtype=np.float64)
    if AtA.ndim != 2 or AtA.shape[0] != AtA.shape[1]:
        raise ValueError(f"endmembers_from_abundances: AtA must be square (p, p), got {AtA.shape}")
    if AtY.ndim != 2 or AtY.shape[0] != AtA.shape[0]:
        raise ValueError(
            f"endmembers_from_abundances: AtY must have shape ({AtA.shape[0]}, B) to match AtA, got {AtY.shape}"
        )
    if not (np.isfinite(AtA).all() and np.isfinite(AtY).all()):
        raise ValueError("endmembers_from_abundances: AtA and AtY must be finite")
    w, V = np.linalg.eigh((AtA + AtA.T) / 2)
    keep = w > w.max(initial=0.0) * AtA.shape[0] * np.finfo(np.float64).eps
    root = np.sqrt(w[keep])
    M = root[:, None] * V[:, keep].T  # (r, p) with MᵀM = AᵀA on its range
    T = (V[:, keep].T @ AtY) / root[:, None]  # (r, B) so that Mᵀ T = AᵀY
    E = np.zeros_like(AtY)
    if M.shape[0] == 0:
        return E
    for band in range(AtY.shape[1]):
        E[:, band] = nnls(M, T[:, band])[0]
    return E
