"""The linear mixing model Y ≈ A·E and what follows from it (numpy).

Shapes: endmembers E (p, B), one spectrum per row; abundances A (..., p), e.g. (H, W, p) or (N, p);
spectra Y (..., B), e.g. an (H, W, B) cube or (N, B) pixels.
"""
from __future__ import annotations

import numpy as np


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
    min_{e ≥ 0} eᵀGe − 2 cᵀe + const with G = AᵀA and c = AᵀY[:, b], so the pixels are never needed:
    statistics accumulated tile by tile suffice. Each band is Lawson–Hanson's active-set method on the
    p×p Gram system (:func:`nnls_gram`), exact up to rounding.

    Where AᵀA is singular (abundances that are linearly dependent, e.g. two endmembers always present in
    the same proportion) the minimiser is not unique; this returns the one the active set reaches, where
    an endmember whose column depends on those already in the set stays at zero. The C++ core
    (``nnls_endmembers`` in cpp_bindings/core/pipeline.cpp) takes the same steps in the same order, and
    ``tests/golden/nnls_rank_deficient.json`` pins both to the same numbers.

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
    G = (0.5 * (AtA + AtA.T)).tolist()
    E = np.zeros_like(AtY)
    for band in range(AtY.shape[1]):
        E[:, band] = nnls_gram(G, AtY[:, band].tolist())
    return E


#: Below this an entry of the active-set iterate counts as zero and leaves the passive set.
_ZERO = 1e-300
_EPS = float(np.finfo(np.float64).eps)


def nnls_gram(G: list[list[float]], c: list[float]) -> list[float]:
    """min_{e ≥ 0} eᵀGe − 2 cᵀe for a symmetric positive semi-definite p×p G: Lawson–Hanson.

    The passive set P starts empty. Each outer step takes the index j ∉ P with the largest gradient
    w_j = (c − G x)_j, the first on ties, if it exceeds ``tol = 10 ε p max(|G|, |c|)``, and solves
    G[P,P] z = c[P]; while some z_i ≤ 0 it moves x towards z as far as x stays ≥ 0 and drops the indices
    that reach zero. A G[P,P] that Gaussian elimination finds singular (a pivot ≤ 10⁻¹³ n max|G[P,P]|)
    means column j depends on those in P: j leaves and is not tried again. Each loop stops after
    3p + 3 steps. Plain float arithmetic in the C++ core's order (its ``nnls_gram``), so the two give
    the same bits.

    Args:
        G: p rows of p floats.
        c: p floats.

    Returns:
        p floats e ≥ 0.
    """
    p = len(c)
    passive, dependent, x = [False] * p, [False] * p, [0.0] * p
    largest = max([abs(g) for row in G for g in row] + [abs(v) for v in c], default=0.0)
    tol = 10.0 * _EPS * p * largest
    for _ in range(3 * p + 3):
        best, best_w = -1, 0.0
        for j in range(p):
            w = c[j]
            for k in range(p):
                w -= G[j][k] * x[k]
            if not passive[j] and not dependent[j] and (best < 0 or w > best_w):
                best, best_w = j, w
        if best < 0 or not best_w > tol:
            break
        passive[best] = True
        for _ in range(3 * p + 3):
            subset = [j for j in range(p) if passive[j]]
            z = _solve_subset(G, c, subset)
            if z is None:
                passive[best], dependent[best] = False, True
                break
            if all(v > 0.0 for v in z):
                x = [0.0] * p
                for i, j in enumerate(subset):
                    x[j] = z[i]
                break
            alpha = 1.0
            for i, j in enumerate(subset):
                if z[i] <= 0.0 and x[j] - z[i] > 0.0:
                    alpha = min(alpha, x[j] / (x[j] - z[i]))
            for i, j in enumerate(subset):
                x[j] += alpha * (z[i] - x[j])
                if x[j] <= _ZERO:
                    x[j], passive[j] = 0.0, False
    return [max(v, 0.0) for v in x]


def _solve_subset(G: list[list[float]], c: list[float], subset: list[int]) -> list[float] | None:
    """G[S,S] z = c[S] by Gaussian elimination with partial pivoting (the first largest pivot); None when
    a pivot is ≤ 10⁻¹³ n max|G[S,S]| (singular)."""
    n = len(subset)
    work = [[G[i][j] for j in subset] + [c[i]] for i in subset]
    tiny = max((abs(v) for row in work for v in row[:n]), default=0.0) * 1e-13 * n
    for col in range(n):
        pivot = col
        for r in range(col + 1, n):
            if abs(work[r][col]) > abs(work[pivot][col]):
                pivot = r
        if not abs(work[pivot][col]) > tiny:
            return None
        work[col], work[pivot] = work[pivot], work[col]
        for r in range(col + 1, n):
            f = work[r][col] / work[col][col]
            for k in range(col, n + 1):
                work[r][k] -= f * work[col][k]
    z = [0.0] * n
    for i in range(n - 1, -1, -1):
        total = work[i][n]
        for k in range(i + 1, n):
            total -= work[i][k] * z[k]
        z[i] = total / work[i][i]
    return z
