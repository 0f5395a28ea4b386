"""Euclidean projection onto the probability simplex (numpy, vectorised)."""
from __future__ import annotations

import numpy as np


def project_simplex(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Project each vector along ``axis`` onto the probability simplex {a : a >= 0, sum(a) = 1}.

    The sort-based algorithm (Held, Wolfe & Crowder 1974; Duchi et al. 2008), vectorised over every
    other axis: ``argmin_a ||a - x||`` subject to ``a >= 0, sum(a) = 1``.

    Args:
        x: array of any shape; the simplex runs along ``axis`` (e.g. (H, W, p) abundances, axis -1).
        axis: the axis holding the p components.

    Returns:
        An array of the same shape. float32 and float64 inputs keep their dtype; other inputs come
        back as float64. A vector holding a NaN comes back all NaN.
    """
    x = np.asarray(x)
    dtype = x.dtype if x.dtype in (np.float32, np.float64) else np.dtype(np.float64)
    v = np.moveaxis(x.astype(dtype, copy=False), axis, -1)
    p = v.shape[-1]
    if p == 0:
        raise ValueError("project_simplex: the simplex axis has length 0; expected at least one component")
    u = -np.sort(-v, axis=-1)  # descending
    css = np.cumsum(u, axis=-1) - 1
    k = np.arange(1, p + 1, dtype=dtype)
    # rho = the largest k with u_k > (css_k) / k; at least k = 1 always satisfies it.
    support = u * k > css
    rho = p - 1 - np.argmax(support[..., ::-1], axis=-1)
    theta = np.take_along_axis(css, rho[..., None], axis=-1) / (rho[..., None] + 1).astype(dtype)
    out = np.maximum(v - theta, 0)
    nan = np.isnan(v).any(axis=-1)
    if nan.any():
        out[nan] = np.nan
    return np.moveaxis(out, -1, axis)
