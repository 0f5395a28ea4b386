"""Fully constrained least squares (FCLS) abundances, exact and vectorised over pixels.

For each pixel y (B,) and endmembers E (p, B), FCLS solves the quadratic programme

    minimise ||Eᵀa − y||²   subject to   a ≥ 0,  Σ a = 1.

The problem is first reduced to p dimensions without squaring the condition number: with the
thin QR factorisation Eᵀ = QR, ||Eᵀa − y||² = ||Ra − Qᵀy||² + ||(I − QQᵀ)y||², so only c = Qᵀy
(p values per pixel) is kept. Then:

- ``method="enumerate"`` (the default for p ≤ 5): every support S ⊆ {1..p} has a closed-form
  equality-constrained minimiser (a fixed affine map of c, computed once per support with an SVD).
  The QP optimum is the minimiser of a support whose solution is non-negative and whose objective is
  the smallest: a convex QP attains its minimum at the minimiser of its own support's face, and every
  other non-negative candidate is feasible, hence no better. Supports whose endmembers are affinely
  dependent are skipped (Carathéodory: a smaller support attains the same optimum). Exact, with no
  iteration and no tolerance on the optimality test.
- ``method="active_set"`` (the default for larger p): a primal active-set method (Lawson–Hanson style)
  run in lockstep over pixels. Each iteration groups the pixels by their current support and applies
  that support's closed form (cached), so every solve has the QR form's accuracy; the dual check
  (multipliers of the zero variables ≥ 0) uses gradients computed from the residual, not the Gram
  matrix. Cost grows with the supports met, not with 2**p.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cache
from itertools import combinations

import numpy as np

#: Largest p solved by enumerating the 2**p − 1 supports when ``method="auto"``.
ENUMERATION_MAX_P = 5
#: Largest p for which pixels the active set leaves unconverged are finished by enumeration.
_ENUMERATION_FALLBACK_MAX_P = 12
#: A candidate support's solution counts as non-negative down to this value (abundance units).
_FEASIBILITY_TOL = 1e-12
#: Singular values of a support's reduced matrix below this fraction of R's largest count as zero.
_RANK_RTOL = 1e-12
#: Pixels are reduced to p values in blocks of this many rows (bounds the float64 copy of the cube).
_PROJECTION_ROWS = 8192


@dataclass(frozen=True)
class _Support:
    """The closed-form minimiser on one support: a_S = base + c @ gain.T; residual = (c − d0) @ perp."""

    indices: np.ndarray  # (k,) endmember indices
    base: np.ndarray  # (k,)
    gain: np.ndarray  # (k, m)
    d0: np.ndarray  # (m,)
    perp: np.ndarray  # (m, m) projector onto the complement of the support's reduced directions

    def solve(self, c: np.ndarray) -> np.ndarray:
        """(n, k) minimisers on this support for reduced pixels c (n, m)."""
        return c @ self.gain.T + self.base


def _support(R: np.ndarray, indices: tuple[int, ...], scale: float, degenerate: bool = False) -> _Support | None:
    """Closed form of min ||R_S a − c|| s.t. Σa = 1 on support ``indices``.

    Where the support's endmembers are affinely dependent, returns None, or with ``degenerate=True``
    the minimum-norm minimiser (singular values below the rank threshold dropped).
    """
    k = len(indices)
    idx = np.asarray(indices)
    RS = R[:, idx]  # (m, k)
    m = R.shape[0]
    d0 = RS.mean(axis=1)  # R_S at the support's centroid
    if k == 1:
        return _Support(idx, np.ones(1), np.zeros((1, m)), d0, np.eye(m))
    # Orthonormal basis Z (k, k-1) of {x : Σx = 0}: a_S = 1/k + Z u.
    Z, _ = np.linalg.qr((np.eye(k) - 1.0 / k)[:, : k - 1])
    D = RS @ Z  # (m, k-1)
    U, s, Vt = np.linalg.svd(D, full_matrices=False)
    rank = int((s > _RANK_RTOL * scale).sum())
    if rank < k - 1:  # affinely dependent endmembers on this support
        if not degenerate:
            return None
        U, s, Vt = U[:, :rank], s[:rank], Vt[:rank]
    gain = Z @ (Vt.T / s) @ U.T  # (k, m)
    base = np.full(k, 1.0 / k) - gain @ d0
    perp = np.eye(m) - U @ U.T
    return _Support(idx, base, gain, d0, perp)


def _all_supports(R: np.ndarray, scale: float) -> list[_Support]:
    """The closed forms of every non-degenerate support of the p endmembers (2**p − 1 at most)."""
    p = R.shape[1]
    return [
        sup
        for k in range(1, p + 1)
        for indices in combinations(range(p), k)
        if (sup := _support(R, indices, scale)) is not None
    ]


def _enumerate(c: np.ndarray, supports: list[_Support], p: int, chunk_size: int) -> np.ndarray:
    """Exact FCLS of reduced pixels c (n, m) by support enumeration; returns (n, p) float64."""
    n = c.shape[0]
    out = np.zeros((n, p))
    for start in range(0, n, chunk_size):
        cc = c[start : start + chunk_size]
        best_obj = np.full(cc.shape[0], np.inf)
        best = np.zeros(cc.shape[0], dtype=np.int64)
        for number, sup in enumerate(supports):
            a = sup.solve(cc)
            feasible = (a >= -_FEASIBILITY_TOL).all(axis=1)
            r = (cc - sup.d0) @ sup.perp
            obj = np.einsum("ij,ij->i", r, r)
            better = feasible & (obj < best_obj)
            best_obj[better] = obj[better]
            best[better] = number
        block = out[start : start + chunk_size]
        for number in np.unique(best):
            rows = best == number
            sup = supports[number]
            block[np.ix_(rows, sup.indices)] = sup.solve(cc[rows])
    return out


def _active_set(c: np.ndarray, R: np.ndarray, solve_on, max_iter: int) -> tuple[np.ndarray, np.ndarray]:
    """Primal active-set FCLS in lockstep over pixels; returns (n, p) float64 and the unconverged mask.

    ``solve_on(code)`` gives the closed-form minimiser of the support whose bitmask is ``code``; each
    iteration groups the pixels by their current support, so every solve has the QR form's accuracy.
    """
    n = c.shape[0]
    p = R.shape[1]
    rows = np.arange(n)
    bits = 1 << np.arange(p)
    # Start at the best single endmember: f(e_j) = ||R_j − c||².
    start = np.argmin(np.einsum("mj,mj->j", R, R) - 2 * (c @ R), axis=1)
    a = np.zeros((n, p))
    a[rows, start] = 1.0
    free = np.zeros((n, p), dtype=bool)
    free[rows, start] = True
    stationary = np.ones(n, dtype=bool)  # a is the minimiser on its free set
    active = np.ones(n, dtype=bool)
    norm = np.linalg.norm(R, 2)
    c_max = np.sqrt(np.einsum("ij,ij->i", c, c).max()) if n else 0.0
    dual_tol = 64 * np.finfo(np.float64).eps * norm * (norm + c_max)
    for _ in range(max_iter):
        # Dual check where a is stationary: ν_j = g_j + μ ≥ 0 for the variables held at zero.
        idx = np.flatnonzero(active & stationary)
        if idx.size:
            g = (a[idx] @ R.T - c[idx]) @ R
            f = free[idx]
            mu = -(g * f).sum(axis=1) / f.sum(axis=1)
            nu = np.where(f, np.inf, g + mu[:, None])
            j = np.argmin(nu, axis=1)
            ok = nu[np.arange(j.size), j] >= -dual_tol
            active[idx[ok]] = False
            free[idx[~ok], j[~ok]] = True
        idx = np.flatnonzero(active)
        if not idx.size:
            break
        # The minimiser on each active pixel's free set, one closed form per distinct support.
        z = np.zeros((idx.size, p))
        codes = free[idx] @ bits
        for code in np.unique(codes):
            group = np.flatnonzero(codes == code)
            sup = solve_on(int(code))
            z[np.ix_(group, sup.indices)] = sup.solve(c[idx[group]])
        f = free[idx]
        good = np.where(f, z > 0, True).all(axis=1)
        a[idx[good]] = z[good]
        stationary[idx] = good
        # Infeasible: step toward z until the first free variable hits zero, and fix it there.
        bad = idx[~good]
        if bad.size:
            ab, zb, fb = a[bad], z[~good], free[bad]
            blocking = fb & (zb <= 0)
            step = ab - zb  # > 0 where blocking, unless a_j = z_j = 0 (then the ratio is 0)
            ratio = np.where(blocking, ab / np.where(blocking & (step > 0), step, 1.0), np.inf)
            alpha = np.clip(ratio.min(axis=1), 0.0, 1.0)
            ab = ab + alpha[:, None] * (zb - ab)
            hit = blocking & (ratio <= alpha[:, None])
            ab[hit | ~fb] = 0.0
            a[bad] = ab
            free[bad] = fb & ~hit
    return a, active


def fcls(
    pixels: np.ndarray,
    endmembers: np.ndarray,
    *,
    method: str = "auto",
    chunk_size: int = 65536,
    max_iter: int | None = None,
) -> np.ndarray:
    """Fully constrained least-squares abundances: argmin ||Eᵀa − y|| with a ≥ 0, Σa = 1, per pixel.

    Args:
        pixels: (N, B) spectra or an (H, W, B) cube (any leading shape), same units as ``endmembers``.
        endmembers: (p, B) endmember spectra (rows), finite.
        method: ``"enumerate"`` (exact support enumeration), ``"active_set"`` (lockstep active set),
            or ``"auto"``: enumerate for p ≤ ``ENUMERATION_MAX_P``, active set above.
        chunk_size: pixels solved together (bounds memory: about chunk_size × p × 8 bytes per array).
        max_iter: active-set iteration cap (default 10p + 50).

    Returns:
        (..., p) abundances, float32 for float32 pixels and float64 otherwise, each row on the
        probability simplex. Pixels with any non-finite band give all-NaN abundances.
    """
    pixels = np.asarray(pixels)
    endmembers = np.asarray(endmembers, dtype=np.float64)
    if endmembers.ndim != 2 or endmembers.shape[0] < 1:
        raise ValueError(f"fcls: endmembers must have shape (p, B) with p >= 1, got {endmembers.shape}")
    p, bands = endmembers.shape
    if pixels.ndim < 1 or pixels.shape[-1] != bands:
        raise ValueError(
            f"fcls: pixels must have shape (..., {bands}) to match endmembers {endmembers.shape}, got {pixels.shape}"
        )
    if not np.isfinite(endmembers).all():
        raise ValueError("fcls: endmembers contain NaN or infinite values")
    if method not in ("auto", "enumerate", "active_set"):
        raise ValueError(f"fcls: method must be 'auto', 'enumerate' or 'active_set', got {method!r}")
    if p > 62:
        raise ValueError(f"fcls: at most 62 endmembers are supported, got {p}")
    if chunk_size < 1:
        raise ValueError(f"fcls: chunk_size must be positive, got {chunk_size}")
    out_dtype = np.float32 if pixels.dtype == np.float32 else np.float64
    lead = pixels.shape[:-1]
    flat = pixels.reshape(-1, bands)
    Q, R = np.linalg.qr(endmembers.T)  # Q (B, m), R (m, p), m = min(B, p)

    # Reduce to p values per pixel in float64 blocks; note which pixels are finite.
    c = np.empty((flat.shape[0], Q.shape[1]))
    finite = np.empty(flat.shape[0], dtype=bool)
    for start in range(0, flat.shape[0], _PROJECTION_ROWS):
        block = flat[start : start + _PROJECTION_ROWS].astype(np.float64)
        ok = np.isfinite(block).all(axis=1)
        block[~ok] = 0.0
        c[start : start + _PROJECTION_ROWS] = block @ Q
        finite[start : start + _PROJECTION_ROWS] = ok
    c = c[finite]

    if method == "auto":
        method = "enumerate" if p <= ENUMERATION_MAX_P else "active_set"
    scale = np.linalg.norm(R, 2)
    if method == "enumerate":
        solved = _enumerate(c, _all_supports(R, scale), p, chunk_size)
    else:
        iterations = max_iter if max_iter is not None else 10 * p + 50

        @cache
        def solve_on(code: int) -> _Support:
            indices = tuple(int(i) for i in np.flatnonzero((code >> np.arange(p)) & 1))
            return _support(R, indices, scale, degenerate=True)

        solved = np.zeros((c.shape[0], p))
        stuck = np.zeros(c.shape[0], dtype=bool)
        for s in range(0, c.shape[0], chunk_size):
            solved[s : s + chunk_size], stuck[s : s + chunk_size] = _active_set(
                c[s : s + chunk_size], R, solve_on, iterations
            )
        if stuck.any():  # never seen in practice; finish those pixels exactly or say so
            if p <= _ENUMERATION_FALLBACK_MAX_P:
                solved[stuck] = _enumerate(c[stuck], _all_supports(R, scale), p, chunk_size)
            else:
                warnings.warn(
                    f"fcls: {int(stuck.sum())} pixels did not converge in {iterations} active-set "
                    "iterations; their abundances are feasible but may not be optimal",
                    RuntimeWarning,
                    stacklevel=2,
                )

    solved = np.maximum(solved, 0.0)
    solved /= solved.sum(axis=1, keepdims=True)
    out = np.full((flat.shape[0], p), np.nan, dtype=out_dtype)
    out[finite] = solved
    return out.reshape(lead + (p,))
