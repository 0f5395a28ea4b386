"""The endmember engine: endmember spectra from the data alone, with or without pure pixels (numpy + scipy).

One entry point, :func:`estimate_endmembers`; it never sees a ground truth.

**Model.** Pixels y = Eᵀa + ε, a on the simplex, E (p, B) ≥ 0, ε Gaussian with a per-band standard
deviation σ_b. Projected onto the signal's (p − 1)-dimensional affine subspace and whitened by the
noise there, the noise is N(0, I): distances in that space are in units of the noise.

**Noise.** σ_b by multiple regression (HySime, Bioucas-Dias & Nascimento, IEEE TGRS 46(8), 2008):
the part of band b the other bands cannot predict is noise; with R = YᵀY its residual sum of
squares is 1 / (R⁻¹)_bb. The signal subspace is that of the data covariance less the noise's.

**Which family.** The misfit ratio (:func:`misfit_ratio`) compares what the (p − 1)-dimensional
subspace leaves out with the noise: ≈ 1 when the scene is a simplex plus noise (linear mixtures,
white noise; synthetic earthlib scenes give 0.98–1.3 even with 10 % endmember scaling), well above
1 when spectral variability or nonlinear mixing spread the materials (Samson and Jasper Ridge: 5.0
and 2.8). Up to :data:`MISFIT_RATIO_LIMIT` the minimum-volume family is used, above it the pixel family.

**Minimum-volume family (the data criterion L).** With abundances uniform on the simplex S, a pixel's
likelihood is (1 / vol S) ∫_S φ(x − s) ds ≈ Π_i Φ(d_i(x)) / vol S, d_i the signed distance of x to
facet i in noise units (positive inside; the product is exact for one facet and good where the
facets are further apart than the noise). The negative log-likelihood per pixel,

    L(S) = log vol(S) − (1/N) Σ_n Σ_i log Φ(d_i(x_n)),

is a minimum-volume criterion whose weight comes from the noise: the volume term pulls every facet
in, pixels beyond a facet push it out by their distance in noise units. No weight is tuned per
scene; the reconstruction error (which every large enough simplex drives to the noise floor) is not
used. Each VCA start is refined by SLSQP on the vertices under E ≥ 0 (linear in the subspace
coordinates), known spectra held fixed; the candidate with the smallest L is chosen.

**Pixel family.** Archetypal analysis (Cutler & Breiman 1994; E = B·H, each endmember a convex
combination of extreme pixels H, abundances by exact FCLS) in the leading principal components,
started from each VCA set; the candidate with the smallest mean squared residual is chosen.
Where the materials vary, the archetypes stay with the data's pure pixels instead of chasing the
spread outward as a minimum-volume simplex would.

The candidates of the chosen family whose criterion is within :data:`CANDIDATE_MARGIN` of the best
give ``spread``: how well the data pin each spectrum down (the runtime's uncertainty uses it).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
from scipy import optimize, special

from unmix.physics.vca import vca

__all__ = ["EndmemberEstimate", "data_criterion", "estimate_endmembers", "estimate_noise", "misfit_ratio",
           "simplex_criterion", "spatial_means"]

#: Pixels drawn (without replacement, seeded) for the criterion and the noise estimate.
DEFAULT_SAMPLE = 6000
#: VCA seeds, each a starting simplex for the refinement.
DEFAULT_STARTS = 6
#: Largest misfit ratio (:func:`misfit_ratio`) at which the scene counts as a simplex plus noise and the
#: minimum-volume family is used; above it the pixel family. Linear mixtures with white noise give
#: 0.98–1.0 and with 10 % per-pixel endmember scaling up to 1.3 (synthetic earthlib scenes).
MISFIT_RATIO_LIMIT = 1.5
#: Random directions whose extreme pixels are the archetypes' candidates.
EXTREME_DIRECTIONS = 2000
#: Window of :func:`spatial_means` (pixels). Synthetic earthlib scenes without pure pixels (smooth,
#: purity <= 0.75, seeds 21/22, 64 x 64): p = 5 mean angle 3.41° / 1.34° at 20 dB and 1.62° / 0.61° at
#: 30 dB on the pixels, 1.68° / 0.71° and 0.96° / 0.38° on 3 x 3 means, p = 3 unchanged (0.14-0.39°);
#: 5 x 5 means were worse for p = 3 (0.30-0.68°).
SPATIAL_WINDOW = 3
#: Candidates within this relative margin of the best criterion form the spread.
CANDIDATE_MARGIN = 0.05
#: The noise estimate is floored at this fraction of the data's largest value (noise-free scenes).
_NOISE_FLOOR = 1e-5
#: The minimum-volume criterion measures distances in units of at least this fraction of the data's
#: largest value (a ~45 dB noise level). Below it the facet term becomes a hard wall and the fit
#: stalls on noise-free scenes: synthetic earthlib scenes (p = 5, smooth, purity <= 0.75, seeds
#: 21/22) gave 1.98° / 1.80° mean angle noise-free against 0.49° / 0.34° at 40 dB; with this floor
#: 0.32° / 0.23°, and the 40 dB and 30 dB scenes and p = 3 unchanged.
CRITERION_RESOLUTION = 5e-3


@dataclass
class EndmemberEstimate:
    """What :func:`estimate_endmembers` found.

    Attributes:
        endmembers: (p, B) float64 ≥ 0, the chosen spectra (known spectra first, unchanged).
        criterion: L of the chosen set per pixel (the module docstring; smaller is better).
        noise: (B,) float64 per-band noise standard deviation estimated from the data.
        candidates: (C, p, B) every refined candidate, aligned to ``endmembers`` (same row order).
        candidate_criteria: (C,) L per pixel of each candidate.
        spread: (p, B) standard deviation over the candidates within :data:`CANDIDATE_MARGIN` of the
            best criterion (zeros when only one is): how well the data pin each spectrum down.
        mode: ``"minimum_volume"`` or ``"pixels"``, the family chosen by the misfit ratio.
        misfit_ratio: :func:`misfit_ratio` of the scene.
        details: what was done (counts, seconds, the start each candidate came from).
    """

    endmembers: np.ndarray
    criterion: float
    noise: np.ndarray
    candidates: np.ndarray
    candidate_criteria: np.ndarray
    spread: np.ndarray
    mode: str
    misfit_ratio: float
    details: dict = field(default_factory=dict)


def estimate_noise(pixels: np.ndarray) -> np.ndarray:
    """(B,) per-band noise standard deviation of (N, B) pixels by multiple regression (HySime).

    Band b is regressed on every other band over the pixels; its residual is noise. The residual
    sum of squares is 1 / (R⁻¹)_bb with R = YᵀY (a ridge of 1e-6·trace(R)/B keeps R invertible).
    """
    Y = np.asarray(pixels, dtype=np.float64)
    n, bands = Y.shape
    R = Y.T @ Y
    R[np.diag_indices(bands)] += 1e-6 * np.trace(R) / bands
    inverse = np.linalg.inv(R)
    rss = 1.0 / np.diag(inverse)
    # n − (B − 1) degrees of freedom per band regression.
    dof = max(n - bands + 1, 1)
    sigma = np.sqrt(np.maximum(rss, 0.0) / dof)
    return np.maximum(sigma, _NOISE_FLOOR * max(float(np.abs(Y).max()), 1e-12))


@dataclass
class _Subspace:
    """The whitened affine signal subspace: x = W (y − mean), y ≈ mean + U x."""

    mean: np.ndarray   # (B,)
    W: np.ndarray      # (p-1, B)  y -> x
    U: np.ndarray      # (B, p-1)  x -> y

    def to(self, spectra: np.ndarray) -> np.ndarray:
        return (np.asarray(spectra, dtype=np.float64) - self.mean) @ self.W.T

    def back(self, points: np.ndarray) -> np.ndarray:
        return self.mean + points @ self.U.T


def _criterion_points(Y: np.ndarray, noise: np.ndarray, p: int, smoothed: np.ndarray | None, seed: int,
                      sample: int) -> tuple[_Subspace, np.ndarray]:
    """The minimum-volume criterion's whitened subspace and points: ``smoothed`` (sampled like the pixels,
    its own noise estimate) when given, else ``Y`` with ``noise``; the noise floored at
    CRITERION_RESOLUTION of the data's largest value."""
    if smoothed is not None:
        Y = _sample(smoothed, p, seed, sample)[0]
        noise = estimate_noise(Y)
    sub = _subspace(Y, np.maximum(noise, CRITERION_RESOLUTION * max(float(np.abs(Y).max()), 1e-12)), p)
    return sub, sub.to(Y)


def _subspace(Y: np.ndarray, noise: np.ndarray, p: int) -> _Subspace:
    """The (p − 1)-dimensional signal subspace (signal covariance = data − noise, HySime), whitened."""
    mean = Y.mean(axis=0)
    centred = Y - mean
    covariance = centred.T @ centred / len(Y) - np.diag(noise**2)
    values, vectors = np.linalg.eigh(covariance)
    V = vectors[:, ::-1][:, : p - 1]                      # (B, p-1) orthonormal
    noise_cov = (V.T * noise**2) @ V                     # (p-1, p-1)
    L = np.linalg.cholesky(noise_cov)
    Linv = np.linalg.inv(L)
    return _Subspace(mean=mean, W=Linv @ V.T, U=V @ L)


def _log_cdf(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log Φ(d) and its derivative φ(d) / Φ(d), stable for large negative d."""
    value = special.log_ndtr(d)
    return value, np.exp(-0.5 * d**2 - 0.5 * math.log(2 * math.pi) - value)


def _barycentric(vertices: np.ndarray, points: np.ndarray):
    """Barycentric coordinates (N, p) of points (N, p-1) in the simplex of vertices (p, p-1), the
    facet heights' inverses ||∇a_i|| (p,) and log|det M|; None when the simplex is degenerate."""
    p = vertices.shape[0]
    M = np.vstack([vertices.T, np.ones((1, p))])        # (p, p): M a = [x; 1]
    sign, logdet = np.linalg.slogdet(M)
    if sign == 0 or not np.isfinite(logdet):
        return None
    Minv = np.linalg.inv(M)                              # a = Minv [x; 1]
    coords = points @ Minv[:, :-1].T + Minv[:, -1]
    gradient_norm = np.linalg.norm(Minv[:, :-1], axis=1)  # 1 / facet height, per vertex
    return coords, gradient_norm, logdet


def simplex_criterion(vertices: np.ndarray, points: np.ndarray) -> float:
    """L per pixel for a simplex (p, p-1) and whitened points (N, p-1) (module docstring)."""
    parts = _barycentric(vertices, points)
    if parts is None:
        return math.inf
    coords, gradient_norm, logdet = parts
    distances = coords / gradient_norm                  # signed distance to each facet, noise units
    return float(logdet - _log_cdf(distances)[0].sum(axis=1).mean())


def _criterion_and_gradient(vertices: np.ndarray, points: np.ndarray) -> tuple[float, np.ndarray]:
    """L per pixel and its gradient with respect to the vertices (p, p-1)."""
    p = vertices.shape[0]
    M = np.vstack([vertices.T, np.ones((1, p))])
    sign, logdet = np.linalg.slogdet(M)
    if sign == 0 or not np.isfinite(logdet):
        return math.inf, np.zeros_like(vertices)
    Minv = np.linalg.inv(M)
    G = Minv[:, :-1]                                     # (p, p-1): ∇ of each barycentric coordinate
    coords = points @ G.T + Minv[:, -1]                  # (N, p)
    norms = np.linalg.norm(G, axis=1)                    # (p,)
    distances = coords / norms
    logcdf, ratio = _log_cdf(distances)
    value = logdet - logcdf.sum(axis=1).mean()
    dd = -ratio / len(points)                            # (N, p) dL/d distances
    # distances_ni = (Minv [x_n; 1])_i / ||G_i||; dL/dMinv:
    homog = np.hstack([points, np.ones((len(points), 1))])  # (N, p)
    scaled = dd / norms                                   # (N, p)
    dMinv = scaled.T @ homog                              # (p, p) from the numerator
    # from the norm: d(1/||G_i||) / dG_i = -G_i / ||G_i||^3, times Σ_n dd_ni coords_ni
    weight = (dd * coords).sum(axis=0)                    # (p,)
    dMinv[:, :-1] += -(weight / norms**3)[:, None] * G
    # d logdet / dM = Minv^T; dL/dM = Minv^T + (-Minv^T dMinv Minv^T)
    dM = Minv.T - Minv.T @ dMinv @ Minv.T
    return float(value), dM[:-1, :].T.copy()             # vertices = M[:-1, :].T


def _extreme_pixels(points: np.ndarray, directions: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of pixels extreme along random directions (both ends): the hull's pixels, approximately."""
    dim = points.shape[1]
    u = rng.normal(size=(directions, dim))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    proj = points @ u.T
    return np.unique(np.concatenate([proj.argmax(axis=0), proj.argmin(axis=0)]))


def _archetypes(points: np.ndarray, hull: np.ndarray, B: np.ndarray, fixed_rows: int = 0, iterations: int = 100,
                inner: int = 50) -> tuple[np.ndarray, float]:
    """Archetypal analysis: min ||X − A (B H)||² over row-stochastic A (N, p) and B (p, h).

    ``points`` X (N, d), ``hull`` H (h, d) candidate pixels, ``B`` the start; its first ``fixed_rows``
    rows stay as given (known spectra). Alternates exact FCLS for A with accelerated projected
    gradient for B. Returns B and the mean squared residual per pixel (the pixel family's criterion).
    """
    from unmix.physics.fcls import fcls
    from unmix.physics.simplex import project_simplex

    lift = np.full((len(points), 1), 10.0 * max(float(np.abs(points).max()), 1.0))
    Xl = np.hstack([points, lift])
    HHt = hull @ hull.T
    XHt = points @ hull.T                                 # (N, h)
    loss = math.inf
    for _ in range(iterations):
        A = fcls(Xl, np.hstack([B @ hull, lift[: len(B)]]))
        # B-step: accelerated projected gradient on ||X − A B H||² (rows of B on the simplex).
        AtA = A.T @ A
        AtXHt = A.T @ XHt
        step = 1.0 / max(np.linalg.norm(AtA, 2) * np.linalg.norm(HHt, 2), 1e-300)
        previous, momentum, t_k = B, B, 1.0
        for _ in range(inner):
            gradient = AtA @ momentum @ HHt - AtXHt
            current = project_simplex(momentum - step * gradient, axis=-1)
            current[:fixed_rows] = B[:fixed_rows]
            t_next = (1.0 + math.sqrt(1.0 + 4.0 * t_k * t_k)) / 2.0
            momentum = current + ((t_k - 1.0) / t_next) * (current - previous)
            previous, t_k = current, t_next
        B = previous
        new_loss = float(((A @ (B @ hull) - points) ** 2).sum(axis=1).mean())
        if new_loss > loss * (1 - 1e-7):
            loss = min(loss, new_loss)
            break
        loss = new_loss
    return B, loss


def _order_like(reference: np.ndarray, spectra: np.ndarray) -> np.ndarray:
    """Rows of ``spectra`` permuted to best match ``reference`` by spectral angle (Hungarian)."""
    from scipy.optimize import linear_sum_assignment

    a = reference / np.maximum(np.linalg.norm(reference, axis=1, keepdims=True), 1e-12)
    b = spectra / np.maximum(np.linalg.norm(spectra, axis=1, keepdims=True), 1e-12)
    cost = -a @ b.T
    rows, cols = linear_sum_assignment(cost)
    order = np.empty(len(reference), dtype=int)
    order[rows] = cols
    return spectra[order]


def _minimum_volume(start: np.ndarray, points: np.ndarray, sub: _Subspace, fixed: np.ndarray) -> np.ndarray:
    """Minimise L over the free vertices (whitened, (p, p-1)) subject to E = mean + U z ≥ 0, by SLSQP
    from ``start`` (an infeasible start is first pulled toward the data mean, which is ≥ 0)."""
    p, dim = start.shape
    free = np.flatnonzero(~fixed)
    size = max(float(np.abs(sub.mean).max()), 1e-12)
    # E ≥ 0 for every band of every free vertex: A_ineq z + b_ineq ≥ 0 (rows in units of the data's size).
    A_ineq = np.kron(np.eye(len(free)), sub.U / size)
    b_ineq = np.tile(sub.mean / size, len(free))
    vertices = start.copy()
    z = vertices[free].ravel()
    shrink = 1.0
    while (A_ineq @ (z * shrink) + b_ineq).min() < 0 and shrink > 1e-3:
        shrink *= 0.9
    z = z * shrink

    def fun(zs: np.ndarray):
        trial = vertices.copy()
        trial[free] = zs.reshape(len(free), dim)
        value, gradient = _criterion_and_gradient(trial, points)
        if not np.isfinite(value):
            return 1e10, np.zeros_like(zs)
        return value, gradient[free].ravel()

    constraint = {"type": "ineq", "fun": lambda zs: A_ineq @ zs + b_ineq, "jac": lambda zs: A_ineq}
    with np.errstate(over="ignore", invalid="ignore"):
        result = optimize.minimize(fun, z, jac=True, method="SLSQP", constraints=[constraint],
                                   options={"maxiter": 300, "ftol": 1e-10})
    if np.isfinite(result.fun) and result.fun < 1e10:
        z = result.x
    vertices[free] = z.reshape(len(free), dim)
    return vertices


def estimate_endmembers(pixels: np.ndarray, p: int, *, known: np.ndarray | None = None,
                        start: np.ndarray | None = None, starts: int = DEFAULT_STARTS, seed: int = 0,
                        sample: int = DEFAULT_SAMPLE, smoothed: np.ndarray | None = None) -> EndmemberEstimate:
    """Endmembers (p, B) of (N, B) pixels, from the data alone (module docstring).

    Args:
        pixels: (N, B) spectra; rows holding a NaN or inf are skipped.
        p: the number of endmembers, 2 <= p <= B.
        known: (k, B) spectra known to be present; kept as the first k endmembers, unchanged.
        start: (p, B) spectra to start one more candidate from (e.g. a model's endmembers on a new cube).
        starts: VCA seeds, each the start of one candidate of each family.
        seed: the first VCA seed and the pixel sample's seed.
        sample: at most this many pixels are used (a seeded draw).
        smoothed: optional (M, B) spatially averaged pixels of the same scene (e.g. 3 x 3 means,
            :func:`spatial_means`): the minimum-volume family is fitted to them (a third of the noise,
            the same simplex where abundances vary smoothly); the family choice and the pixel family
            use ``pixels``.

    Returns:
        An :class:`EndmemberEstimate`. Nothing about the truth enters: the choice is made by the
        misfit ratio and each family's own data criterion.
    """
    started = time.perf_counter()
    Y, rng = _sample(pixels, p, seed, sample)
    bands = Y.shape[1]
    k = 0
    if known is not None:
        known = np.asarray(known, dtype=np.float64)
        if known.ndim != 2 or known.shape[1] != bands or len(known) > p or not np.isfinite(known).all():
            raise ValueError(f"estimate_endmembers: known must be finite with shape (k <= {p}, {bands}), "
                             f"got {known.shape}")
        k = len(known)
    fixed = np.arange(p) < k

    # Noise, the whitened signal subspace, and how far the data stray from a (p-1)-simplex model.
    noise = estimate_noise(Y)
    sub = _subspace(Y, noise, p)
    points = sub.to(Y)
    ratio = misfit_ratio(Y, sub, noise)
    mode = "minimum_volume" if ratio <= MISFIT_RATIO_LIMIT else "pixels"

    # Starting sets: VCA's pixels over several seeds (and the caller's start).
    starting_sets: list[tuple[str, np.ndarray]] = []
    for run in range(max(1, starts)):
        candidates, _ = vca(Y, p, seed=seed + run)
        candidates = np.maximum(candidates, 0.0)
        if k:
            angles = _angles(candidates, known).min(axis=1)
            candidates = np.concatenate([known, candidates[np.argsort(-angles)[: p - k]]])
        starting_sets.append((f"vca seed {seed + run}", candidates))
    if start is not None:
        start = np.asarray(start, dtype=np.float64)
        if start.shape != (p, bands) or not np.isfinite(start).all():
            raise ValueError(f"estimate_endmembers: start must be finite with shape ({p}, {bands}), got {start.shape}")
        if k:
            start = np.concatenate([known, start[k:]])
        starting_sets.append(("start", np.maximum(start, 0.0)))

    if mode == "minimum_volume":
        sub, points = _criterion_points(Y, noise, p, smoothed, seed, sample)
        family, criteria = [], []
        for _, E in starting_sets:
            vertices = _minimum_volume(sub.to(E), points, sub, fixed)
            refined = np.maximum(sub.back(vertices), 0.0)
            if k:
                refined[:k] = known
            family.append(refined)
            criteria.append(simplex_criterion(sub.to(refined), points))
    else:
        family, criteria = _pixel_family(Y, starting_sets, known, rng)
    criteria = np.asarray(criteria, dtype=np.float64)
    best = int(np.argmin(criteria))
    chosen = family[best]
    aligned = np.stack([_order_like_fixed(chosen, E, k) for E in family])
    # The spread over the candidates whose criterion is within a relative CANDIDATE_MARGIN of the best.
    margin = CANDIDATE_MARGIN * max(abs(float(criteria[best])), 1e-12)
    close = criteria <= criteria[best] + margin
    spread = aligned[close].std(axis=0) if close.sum() > 1 else np.zeros_like(chosen)
    details = {"mode": mode, "misfit_ratio": ratio, "pixels_used": int(len(Y)), "candidates": int(len(family)),
               "candidates_in_spread": int(close.sum()), "chosen": best, "seconds": time.perf_counter() - started,
               "noise_mean": float(noise.mean())}
    return EndmemberEstimate(endmembers=chosen, criterion=float(criteria[best]), noise=noise, candidates=aligned,
                             candidate_criteria=criteria, spread=spread, mode=mode, misfit_ratio=ratio,
                             details=details)


def _pixel_family(Y: np.ndarray, starting_sets: list[tuple[str, np.ndarray]], known: np.ndarray | None,
                  rng: np.random.Generator) -> tuple[list[np.ndarray], list[float]]:
    """Archetypal analysis from each starting set, in the leading principal components (Euclidean,
    reflectance units): the endmembers and each one's mean squared residual per pixel."""
    p, bands = starting_sets[0][1].shape
    k = 0 if known is None else len(known)
    pca_mean, basis = _principal(Y, p)
    X = (Y - pca_mean) @ basis
    hull_rows = _extreme_pixels(X, EXTREME_DIRECTIONS, rng)
    hull = X[hull_rows]
    if k:
        hull = np.vstack([(known - pca_mean) @ basis, hull])
    pixel_sets, pixel_losses = [], []
    for _, spectra in starting_sets:
        projected = (spectra - pca_mean) @ basis
        B = np.zeros((p, len(hull)))
        for row, point in enumerate(projected):
            B[row, row if row < k else int(np.argmin(((hull[k:] - point) ** 2).sum(axis=1))) + k] = 1.0
        B, _ = _archetypes(X, hull, B, fixed_rows=k)
        E = np.maximum(pca_mean + (B @ hull) @ basis.T, 0.0)
        if k:
            E[:k] = known
        pixel_sets.append(E)
        pixel_losses.append(_pixel_residual(X, (E - pca_mean) @ basis))   # of the clipped spectra

    return pixel_sets, pixel_losses


def _sample(pixels: np.ndarray, p: int, seed: int, sample: int) -> tuple[np.ndarray, np.random.Generator]:
    """The finite pixels (float64), at most ``sample`` of them (a seeded draw), and the generator after it."""
    Y = np.asarray(pixels, dtype=np.float64)
    if Y.ndim != 2:
        raise ValueError(f"endmember engine: pixels must have shape (N, B), got {Y.shape}")
    Y = Y[np.isfinite(Y).all(axis=1)]
    n, bands = Y.shape
    if not 2 <= p <= bands:
        raise ValueError(f"endmember engine: p must be between 2 and the band count {bands}, got {p}")
    if n < 2 * p:
        raise ValueError(f"endmember engine: needs at least {2 * p} finite pixels, got {n}")
    rng = np.random.default_rng(seed)
    if n > sample:
        Y = Y[np.sort(rng.choice(n, sample, replace=False))]
    return Y, rng


def _principal(Y: np.ndarray, p: int) -> tuple[np.ndarray, np.ndarray]:
    """The mean (B,) and the leading max(p + 4, 8) principal directions (B, D) of the pixels."""
    mean = Y.mean(axis=0)
    _, _, Vt = np.linalg.svd(Y - mean, full_matrices=False)
    return mean, Vt[: min(Y.shape[1], max(p + 4, 8))].T


def _pixel_residual(X: np.ndarray, spectra_pc: np.ndarray) -> float:
    """Mean squared residual per pixel of FCLS with (p, D) spectra on (N, D) principal coordinates."""
    from unmix.physics.fcls import fcls

    lift = 10.0 * max(float(np.abs(X).max()), float(np.abs(spectra_pc).max()), 1.0)
    A = fcls(np.hstack([X, np.full((len(X), 1), lift)]), np.hstack([spectra_pc, np.full((len(spectra_pc), 1), lift)]))
    return float(((A @ spectra_pc - X) ** 2).sum(axis=1).mean())


def data_criterion(pixels: np.ndarray, endmembers: np.ndarray, *, seed: int = 0,
                   sample: int = DEFAULT_SAMPLE, smoothed: np.ndarray | None = None) -> tuple[str, float]:
    """The engine's data criterion of any (p, B) endmembers on (N, B) pixels: ``(family, value)``.

    The family is the one :func:`estimate_endmembers` chooses on these pixels (same ``seed`` and
    ``sample``); the value is L per pixel (minimum volume) or the FCLS mean squared residual in the
    leading principal components (pixels). Smaller is better; values of different families do not
    compare.
    """
    E = np.asarray(endmembers, dtype=np.float64)
    p = E.shape[0]
    Y, _ = _sample(pixels, p, seed, sample)
    noise = estimate_noise(Y)
    sub = _subspace(Y, noise, p)
    if misfit_ratio(Y, sub, noise) <= MISFIT_RATIO_LIMIT:
        sub, points = _criterion_points(Y, noise, p, smoothed, seed, sample)
        return "minimum_volume", simplex_criterion(sub.to(E), points)
    mean, basis = _principal(Y, p)
    return "pixels", _pixel_residual((Y - mean) @ basis, (E - mean) @ basis)


def spatial_means(cube: np.ndarray, size: int = SPATIAL_WINDOW) -> np.ndarray:
    """(M, B) means of every pixel's ``size`` x ``size`` neighbourhood of an (H, W, B) cube, over the
    neighbours finite in every band (pixels with none are left out): the ``smoothed`` input of
    :func:`estimate_endmembers`."""
    from scipy.ndimage import uniform_filter

    X = np.asarray(cube, dtype=np.float64)
    if X.ndim != 3:
        raise ValueError(f"spatial_means: cube must have shape (H, W, B), got {X.shape}")
    valid = np.isfinite(X).all(axis=2)
    weight = uniform_filter(valid.astype(np.float64), size=size, mode="constant")
    total = uniform_filter(np.where(valid[..., None], X, 0.0), size=(size, size, 1), mode="constant")
    keep = weight > 0.5 / size**2
    return total[keep] / weight[keep][:, None]


def misfit_ratio(Y: np.ndarray, sub: _Subspace, noise: np.ndarray) -> float:
    """RMS over bands of what the (p-1)-dimensional affine subspace leaves out of the pixels (scaled
    by each band's share of that complement), over the RMS noise: ≈ 1 when the pixels are a
    (p-1)-simplex plus noise, larger when spectral variability or nonlinear mixing adds structure."""
    residual = Y - sub.back(sub.to(Y))
    Q, _ = np.linalg.qr(sub.U)
    leverage = np.clip(1.0 - (Q**2).sum(axis=1), 1e-3, 1.0)
    misfit = (residual**2).mean(axis=0) / leverage
    return float(np.sqrt(misfit.mean() / (noise**2).mean()))


def _order_like_fixed(reference: np.ndarray, spectra: np.ndarray, k: int) -> np.ndarray:
    if k == 0:
        return _order_like(reference, spectra)
    return np.concatenate([spectra[:k], _order_like(reference[k:], spectra[k:])])


def _angles(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return np.arccos(np.clip(a @ b.T, -1.0, 1.0))
