"""Synthetic abundances and noise with exact ground truth (numpy + scipy).

Everything here is reproducible from an integer seed (numpy ``Generator(PCG64(...))``); the same call
gives the same arrays on every machine. Whole scenes from a spectral library are built from these by
:func:`unmix.io.synthetic.synthetic_scene`.

Conventions (all documented where they are applied):

- **Noise** (:func:`add_noise`): additive white Gaussian noise with HySUPP's SNR definition,
  ``sigma**2 = mean(Y**2) / 10**(SNR/10)`` where the mean runs over every value of the cube; one
  ``sigma`` for all bands and pixels.
- **Purity limit** (``max_purity``): a pixel whose largest abundance ``m`` exceeds ``max_purity`` is
  pulled straight toward the simplex centre ``c = 1/p``: ``a' = c + t (a - c)`` with
  ``t = (max_purity - 1/p) / (m - 1/p)``. The result stays on the simplex (a convex combination of two
  points on it), keeps the order of the abundances, and its largest abundance equals ``max_purity``
  exactly. Pixels already at or below the limit are left unchanged.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from unmix.errors import InputError, UsageError


def _generator(seed: int | Sequence[int] | np.random.Generator) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.Generator(np.random.PCG64(seed))


def add_noise(cube: np.ndarray, snr_db: float | None, seed: int | np.random.Generator = 0) -> np.ndarray:
    """Add white Gaussian noise at ``snr_db`` (HySUPP's definition) and return a float32 copy.

    Args:
        cube: (..., B) reflectance, any shape; NaN values stay NaN and are left out of the signal power.
        snr_db: signal-to-noise ratio in dB, ``10 log10(mean(Y**2) / sigma**2)`` over the whole cube;
            None or ``inf`` adds no noise.
        seed: an integer seed for ``numpy.random.Generator(PCG64(seed))`` (or a Generator).

    Returns:
        float32 array of the same shape: ``cube + sigma * N(0, 1)``.
    """
    data = np.asarray(cube, dtype=np.float64)
    if snr_db is None or np.isposinf(snr_db):
        return data.astype(np.float32)
    if not np.isfinite(snr_db):
        raise UsageError(f"snr_db must be a finite number of dB or None, got {snr_db!r}")
    finite = np.isfinite(data)
    if not finite.any():
        raise InputError("add_noise: the cube has no finite values to measure the signal power on")
    power = float(np.mean(np.square(data[finite])))
    sigma = np.sqrt(power / 10.0 ** (snr_db / 10.0))
    noise = _generator(seed).standard_normal(data.shape)
    return (data + sigma * noise).astype(np.float32)


def measured_snr_db(clean: np.ndarray, noisy: np.ndarray) -> float:
    """SNR in dB of ``noisy`` against ``clean`` with the same definition as :func:`add_noise`."""
    clean = np.asarray(clean, dtype=np.float64)
    noise = np.asarray(noisy, dtype=np.float64) - clean
    return float(10.0 * np.log10(np.mean(clean**2) / np.mean(noise**2)))


def limit_purity(abundances: np.ndarray, max_purity: float | None) -> np.ndarray:
    """Pull pixels whose largest abundance exceeds ``max_purity`` toward the simplex centre.

    Args:
        abundances: (..., p) abundances on the simplex.
        max_purity: the largest abundance any pixel may keep, in ``[1/p, 1]``; None changes nothing.

    Returns:
        float64 array of the same shape; see the module docstring for the rule.
    """
    a = np.asarray(abundances, dtype=np.float64)
    if max_purity is None:
        return a.copy()
    p = a.shape[-1]
    centre = 1.0 / p
    if not centre <= max_purity <= 1.0:
        raise UsageError(f"max_purity must be between 1/p = {centre:.4g} and 1, got {max_purity!r}")
    peak = a.max(axis=-1, keepdims=True)
    over = peak > max_purity
    with np.errstate(divide="ignore", invalid="ignore"):
        shrink = np.where(over, (max_purity - centre) / (peak - centre), 1.0)
    out = centre + shrink * (a - centre)
    # Exactly max_purity at the pulled pixels' peaks (round-off aside), and the sum exactly 1.
    out = np.clip(out, 0.0, None)
    return out / out.sum(axis=-1, keepdims=True)


def dirichlet_abundances(
    h: int,
    w: int,
    p: int,
    alpha: float | Sequence[float] = 1.0,
    max_purity: float | None = None,
    seed: int | np.random.Generator = 0,
) -> np.ndarray:
    """(h, w, p) float64 abundances drawn independently per pixel from Dirichlet(alpha).

    ``alpha`` is one concentration for all endmembers or p of them (< 1: mostly near-pure pixels,
    1: uniform on the simplex, > 1: mostly mixed). No spatial structure. ``max_purity`` applies the
    purity limit of the module docstring.
    """
    _check_size(h, w, p)
    concentration = np.broadcast_to(np.asarray(alpha, dtype=np.float64), (p,))
    if np.any(concentration <= 0):
        raise UsageError(f"alpha must be > 0, got {alpha!r}")
    a = _generator(seed).dirichlet(concentration, size=(h, w))
    return limit_purity(a, max_purity)


def smooth_abundances(
    h: int,
    w: int,
    p: int,
    length_scale: float = 8.0,
    temperature: float = 0.35,
    max_purity: float | None = None,
    seed: int | np.random.Generator = 0,
) -> np.ndarray:
    """(h, w, p) float64 spatially smooth abundances: Gaussian random fields through a softmax.

    Each of the p fields is white noise blurred by a Gaussian of standard deviation ``length_scale``
    pixels (periodic boundary) and standardised to zero mean and unit variance; the abundances are
    ``softmax(fields / temperature)`` over the endmembers. A low temperature gives large near-pure
    regions with sharp transitions, a high one gives mixtures everywhere. ``max_purity`` then applies
    the purity limit of the module docstring.
    """
    from scipy.ndimage import gaussian_filter

    _check_size(h, w, p)
    if length_scale < 0:
        raise UsageError(f"length_scale must be >= 0 pixels, got {length_scale!r}")
    if temperature <= 0:
        raise UsageError(f"temperature must be > 0, got {temperature!r}")
    fields = _generator(seed).standard_normal((h, w, p))
    if length_scale > 0:
        fields = gaussian_filter(fields, sigma=(length_scale, length_scale, 0), mode="wrap")
    fields -= fields.mean(axis=(0, 1), keepdims=True)
    std = fields.std(axis=(0, 1), keepdims=True)
    fields /= np.where(std > 0, std, 1.0)
    logits = fields / temperature
    logits -= logits.max(axis=-1, keepdims=True)
    a = np.exp(logits)
    a /= a.sum(axis=-1, keepdims=True)
    return limit_purity(a, max_purity)


def spectral_angles_deg(spectra: np.ndarray) -> np.ndarray:
    """(n, n) pairwise spectral angles in degrees between the rows of ``spectra`` (n, B)."""
    x = np.asarray(spectra, dtype=np.float64)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    return np.degrees(np.arccos(np.clip(unit @ unit.T, -1.0, 1.0)))


def pick_distinct(spectra: np.ndarray, p: int, min_angle_deg: float = 5.0,
                  seed: int | np.random.Generator = 0) -> np.ndarray:
    """Indices of p rows of ``spectra`` (n, B) whose pairwise spectral angles are all >= min_angle_deg.

    Greedy over a seeded random order of the rows: a row is taken when it is at least
    ``min_angle_deg`` from every row taken so far. Rows with NaN, a negative value or a zero norm are
    never taken. Raises InputError when fewer than p such rows exist.
    """
    x = np.asarray(spectra, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1)
    usable = np.all(np.isfinite(x), axis=1) & np.all(x >= 0, axis=1) & (norms > 0)
    candidates = np.flatnonzero(usable)
    order = _generator(seed).permutation(candidates)
    unit = x / np.where(norms > 0, norms, 1.0)[:, None]
    threshold = np.cos(np.radians(min_angle_deg))
    chosen: list[int] = []
    for index in order:
        if all(unit[index] @ unit[j] <= threshold for j in chosen):
            chosen.append(int(index))
            if len(chosen) == p:
                return np.asarray(chosen)
    raise InputError(
        f"only {len(chosen)} of the {len(x)} spectra are pairwise at least {min_angle_deg:g} degrees apart, "
        f"{p} needed; lower min_angle_deg or ask for fewer endmembers"
    )


def _check_size(h: int, w: int, p: int) -> None:
    if h < 1 or w < 1:
        raise UsageError(f"the scene size must be at least 1 x 1 pixels, got {h} x {w}")
    if p < 1:
        raise UsageError(f"p must be >= 1 endmember, got {p}")
