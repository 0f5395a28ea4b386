"""Vertex Component Analysis (Nascimento & Bioucas-Dias, IEEE TGRS 43(4), 2005), numpy only."""
from __future__ import annotations

import numpy as np


def estimate_snr(pixels: np.ndarray, mean: np.ndarray, projected: np.ndarray) -> float:
    """VCA's SNR estimate in dB from the data power and the power in the p-dimensional subspace.

    Args:
        pixels: (N, B) spectra.
        mean: (B,) mean spectrum.
        projected: (N, p) zero-mean pixels projected onto the leading p principal directions.

    Returns:
        10·log10((P_x − p/B·P_y) / (P_y − P_x)); +inf when the data lie in the subspace (noise free),
        −inf when the signal estimate is not positive.
    """
    n, bands = pixels.shape
    p = projected.shape[1]
    power_y = np.sum(pixels**2) / n
    power_x = np.sum(projected**2) / n + np.sum(mean**2)
    signal = power_x - p / bands * power_y
    noise = power_y - power_x
    if signal <= 0:
        return -np.inf
    if noise <= 0:
        return np.inf
    return float(10 * np.log10(signal / noise))


def vca(pixels: np.ndarray, p: int, seed: int = 0, snr: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Extract p endmembers as the purest pixels by Vertex Component Analysis.

    Steps (after the paper and its reference code): estimate the SNR; above 15 + 10·log10(p) dB
    project the data onto the leading p singular directions and apply the projective projection
    y / (uᵀy), below it project the zero-mean data onto p − 1 principal directions and lift it by a
    constant coordinate; then, p times, pick the pixel with the largest |fᵀy| along a random
    direction f orthogonal to the endmembers found so far.

    Args:
        pixels: (N, B) spectra (any units); pixels holding a NaN or inf are skipped.
        p: number of endmembers, 2 ≤ p ≤ B.
        seed: seed of the random directions; the same seed gives the same result.
        snr: the SNR in dB, if known; estimated from the data when None.

    Returns:
        endmembers: (p, B) float64, the chosen pixels after the subspace projection (the paper's
            denoised Yp columns; equal to the pixels themselves for noise-free data in p dimensions).
        indices: (p,) int64 row indices of the chosen pixels in ``pixels`` (NaN rows counted).
    """
    pixels = np.asarray(pixels)
    if pixels.ndim != 2:
        raise ValueError(f"vca: pixels must have shape (N, B), got {pixels.shape}")
    bands = pixels.shape[1]
    if not 2 <= p <= bands:
        raise ValueError(f"vca: p must be between 2 and the band count {bands}, got {p}")
    rows = np.flatnonzero(np.isfinite(pixels).all(axis=1))
    if rows.size < p:
        raise ValueError(f"vca: needs at least p={p} finite pixels, got {rows.size}")
    Y = pixels[rows].astype(np.float64)
    n = Y.shape[0]

    mean = Y.mean(axis=0)
    centered = Y - mean
    if snr is None:
        directions = _leading_directions(centered, p)
        snr = estimate_snr(Y, mean, centered @ directions)
    threshold = 15 + 10 * np.log10(p)

    if snr < threshold:
        # Projection onto the p − 1 principal directions of the zero-mean data, lifted by a constant.
        directions = _leading_directions(centered, p - 1)
        x = centered @ directions  # (n, p-1)
        projected = x @ directions.T + mean
        lift = np.sqrt(np.max(np.sum(x**2, axis=1)))
        y = np.concatenate([x, np.full((n, 1), lift)], axis=1)  # (n, p)
    else:
        # Projective projection: the simplex is scaled so that every point has uᵀy = 1.
        directions = _leading_directions(Y, p)
        x = Y @ directions  # (n, p)
        projected = x @ directions.T
        u = x.mean(axis=0)
        y = x / (x @ u)[:, None]

    rng = np.random.default_rng(seed)
    found = np.zeros((p, p))  # columns: the chosen points in the reduced space
    found[-1, 0] = 1.0
    chosen = np.zeros(p, dtype=np.int64)
    for i in range(p):
        w = rng.random(p)
        f = w - found @ (np.linalg.pinv(found) @ w)  # component orthogonal to the span so far
        f /= np.linalg.norm(f)
        chosen[i] = int(np.argmax(np.abs(y @ f)))
        found[:, i] = y[chosen[i]]
    return projected[chosen], rows[chosen]


def _leading_directions(data: np.ndarray, k: int) -> np.ndarray:
    """(B, k) leading eigenvectors of dataᵀdata / N (the principal directions when data is centred)."""
    scatter = data.T @ data / data.shape[0]
    _, vectors = np.linalg.eigh(scatter)
    return vectors[:, ::-1][:, :k]
