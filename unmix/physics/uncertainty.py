"""Per-pixel abundance uncertainty from the noise and the endmembers' uncertainty (numpy only).

The abundance error of a scene comes mostly from its endmembers, and the spread of the diffusion
samples does not see them. This module propagates both sources through the abundance step, linearised
at the solution: for a pixel with abundances ``a`` and free set F (the endmembers with ``a_i > 0``;
the others sit on the constraint and do not move to first order), the sum-to-one least-squares
estimate on F has covariance::

    Cov(a_F) = v * Z (Z^T E_F E_F^T Z)^-1 Z^T,      Z: an orthonormal basis of {d : sum(d) = 0} in R^|F|

where v is the variance per band of what the model does not explain at that pixel: the noise, plus the
endmembers' own uncertainty mixed in by the abundances,
``v = sigma^2 + sum_j a_j^2 mean_b(spread_jb^2)`` (an endmember perturbed by ``dE_j`` moves the pixel's
spectrum by ``a_j dE_j``). ``spread`` is the endmember engine's per-endmember standard deviation over
its candidate sets (:attr:`unmix.physics.endmembers.EndmemberEstimate.spread`), ``sigma`` its noise
estimate. The map is ``sqrt(mean_i Cov_ii)`` over all p endmembers (0 for a pixel with one free
endmember). It ranks pixels by expected error: mixed pixels of endmembers that are hard to tell apart,
or that the candidates disagree on, come first.
"""
from __future__ import annotations

import numpy as np

__all__ = ["propagated_uncertainty"]

#: An abundance counts as free (off its constraint) above this value.
FREE_ABUNDANCE = 1e-6


def propagated_uncertainty(abundances: np.ndarray, endmembers: np.ndarray, spread: np.ndarray | None,
                           noise_std: float) -> np.ndarray:
    """``(...,)`` float32 standard deviation of ``(..., p)`` abundances (module docstring).

    ``endmembers`` (p, B); ``spread`` (p, B) or None (noise only); ``noise_std`` the RMS over bands of
    the noise, in the endmembers' units. Pixels with a non-finite abundance give NaN.
    """
    A = np.asarray(abundances, dtype=np.float64)
    E = np.asarray(endmembers, dtype=np.float64)
    p = E.shape[0]
    if A.shape[-1] != p:
        raise ValueError(f"propagated_uncertainty: abundances have {A.shape[-1]} endmembers, the spectra {p}")
    flat = A.reshape(-1, p)
    finite = np.isfinite(flat).all(axis=1)
    out = np.full(len(flat), np.nan)
    out[finite] = 0.0
    spread_var = np.zeros(p) if spread is None else (np.asarray(spread, dtype=np.float64) ** 2).mean(axis=1)
    free = (flat > FREE_ABUNDANCE) & finite[:, None]
    keys = free.astype(np.int64) @ (1 << np.arange(p, dtype=np.int64)) if p < 62 else None
    if keys is None:   # too many endmembers for a bit key: group by the rows of the free mask
        _, keys = np.unique(free, axis=0, return_inverse=True)
    for key in np.unique(keys[finite]):
        rows = np.nonzero((keys == key) & finite)[0]
        support = np.nonzero(free[rows[0]])[0]
        k = len(support)
        if k <= 1:
            continue
        # An orthonormal basis of the sum-zero directions on the support.
        basis = np.linalg.qr(np.vstack([np.ones(k), np.eye(k)[:-1]]).T)[0][:, 1:]
        gram = basis.T @ E[support] @ E[support].T @ basis
        trace = float(np.trace(basis @ np.linalg.pinv(gram) @ basis.T))
        variance = float(noise_std) ** 2 + flat[rows][:, support] ** 2 @ spread_var[support]
        out[rows] = np.sqrt(variance * trace / p)
    return out.reshape(A.shape[:-1]).astype(np.float32)
