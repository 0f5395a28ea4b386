"""Synthetic scenes with exact ground truth: p spectra from a library (or given), mixed, as a :class:`Scene`.

The abundances, the purity limit and the noise follow :mod:`unmix.physics.synthetic`; this module picks
the spectra, applies the spectral variability and wraps the result with its truth.

- **Spectral variability** (``variability = v``): each pixel ``i`` sees each endmember ``k`` scaled by
  ``s[i, k] = clip(1 + v * z[i, k], 1 - 3v, 1 + 3v)`` (and never below 0), with ``z`` standard normal,
  independent per pixel and endmember: the noise-free pixel is ``y_i = sum_k A[i, k] s[i, k] E[k]``.
  The truth stored with the scene is the clean ``E`` and the generated ``A``; only with ``v = 0`` does
  the noise-free cube equal ``A @ E`` exactly.
- **Seeds**: each stage (choice of spectra, abundances, scaling, noise) draws from its own stream
  ``Generator(PCG64([seed, stage]))``, so changing one stage's parameters (e.g. the SNR) never changes
  what another stage draws.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from unmix.errors import InputError, UsageError
from unmix.io.libraries import SpectralLibrary, resample
from unmix.io.scene import Scene
from unmix.physics.synthetic import add_noise, dirichlet_abundances, pick_distinct, smooth_abundances

__all__ = ["synthetic_scene"]

_STAGE_PICK, _STAGE_ABUNDANCES, _STAGE_VARIABILITY, _STAGE_NOISE = 1, 2, 3, 4


def _stream(seed: int, stage: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64([seed, stage]))


def synthetic_scene(
    library: SpectralLibrary | np.ndarray,
    p: int | None = None,
    size: tuple[int, int] = (64, 64),
    kind: str = "smooth",
    max_purity: float | None = None,
    variability: float = 0.0,
    snr_db: float | None = None,
    seed: int = 0,
    wavelengths: Sequence[float] | np.ndarray | None = None,
    min_angle_deg: float = 5.0,
    *,
    length_scale: float = 8.0,
    temperature: float = 0.35,
    alpha: float = 1.0,
    name: str | None = None,
) -> Scene:
    """A linear-mixture scene with exact truth.

    Args:
        library: a :class:`~unmix.io.libraries.SpectralLibrary` to pick p spectra from, or the
            endmembers themselves as a (p, B) array of reflectance.
        p: number of endmembers (required with a library; with an array it defaults to its rows).
        size: (H, W) in pixels.
        kind: ``'smooth'`` (:func:`~unmix.physics.synthetic.smooth_abundances` with ``length_scale``, ``temperature``) or
            ``'dirichlet'`` (:func:`~unmix.physics.synthetic.dirichlet_abundances` with ``alpha``).
        max_purity: the purity limit (module docstring), e.g. 0.8 for a scene with no pure pixels.
        variability: relative per-pixel, per-endmember scaling of the spectra (module docstring).
        snr_db: noise level (HySUPP's definition, :func:`~unmix.physics.synthetic.add_noise`); None for a noise-free cube.
        seed: everything (choice of spectra, abundances, scaling, noise) follows from it; each stage
            draws from its own stream ``PCG64([seed, stage])``, so changing ``snr_db`` does not change
            the abundances.
        wavelengths: (B,) nm. With a library, the library is first resampled to them
            (:func:`unmix.io.libraries.resample`); with an array, they label its bands.
        min_angle_deg: the smallest pairwise spectral angle between the chosen library spectra.

    Returns:
        A Scene holding the (H, W, B) float32 cube, with ``endmembers`` (p, B) float64 the clean
        spectra, ``abundances`` (H, W, p) float64 the exact generated abundances, endmember names,
        wavelengths (nm, or None) and notes recording every generation parameter. With
        ``variability = 0`` the noise-free cube is exactly ``abundances @ endmembers`` (in float64,
        then stored as float32).
    """
    height, width = (int(size[0]), int(size[1]))
    if kind not in ("smooth", "dirichlet"):
        raise UsageError(f"kind must be 'smooth' or 'dirichlet', got {kind!r}")
    if variability < 0:
        raise UsageError(f"variability must be >= 0, got {variability!r}")

    notes: list[str] = []
    if isinstance(library, np.ndarray) or not hasattr(library, "spectra"):
        endmembers = np.asarray(library, dtype=np.float64)
        if endmembers.ndim != 2:
            raise UsageError(f"endmembers must be a (p, B) array, got shape {endmembers.shape}")
        if p is not None and p != endmembers.shape[0]:
            raise UsageError(f"p = {p} but {endmembers.shape[0]} endmember spectra were given")
        if not np.all(np.isfinite(endmembers)):
            raise InputError("the endmember spectra contain NaN or infinite values")
        p = endmembers.shape[0]
        names = [f"endmember_{k + 1}" for k in range(p)]
        wl = None if wavelengths is None else np.asarray(wavelengths, dtype=np.float64)
        source = "synthetic (given endmembers)"
        notes.append(f"endmembers: the {p} given spectra")
    else:
        if p is None:
            raise UsageError("p (the number of endmembers) is required when picking from a library")
        if wavelengths is not None:
            library = resample(library, wavelengths)
        chosen = pick_distinct(library.spectra, p, min_angle_deg, seed=_stream(seed, _STAGE_PICK))
        endmembers = np.asarray(library.spectra, dtype=np.float64)[chosen]
        names = [library.names[i] for i in chosen]
        wl = None if library.wavelengths is None else np.asarray(library.wavelengths, dtype=np.float64)
        source = f"synthetic from {library.source or 'a spectral library'}"
        notes.append(
            f"endmembers: library rows {chosen.tolist()} of {len(library.names)} "
            f"(pairwise spectral angle >= {min_angle_deg:g} deg, picked with seed {seed})"
        )
        if library.classes is not None:
            notes.append("endmember classes: " + ", ".join(library.classes[i] for i in chosen))

    if kind == "smooth":
        abundances = smooth_abundances(height, width, p, length_scale=length_scale, temperature=temperature,
                                       max_purity=max_purity, seed=_stream(seed, _STAGE_ABUNDANCES))
        notes.append(f"abundances: smooth Gaussian random fields, length_scale {length_scale:g} px, "
                     f"softmax temperature {temperature:g}, max_purity {max_purity}")
    else:
        abundances = dirichlet_abundances(height, width, p, alpha=alpha, max_purity=max_purity,
                                          seed=_stream(seed, _STAGE_ABUNDANCES))
        notes.append(f"abundances: Dirichlet(alpha={alpha:g}) per pixel, max_purity {max_purity}")

    if variability > 0:
        z = _stream(seed, _STAGE_VARIABILITY).standard_normal((height, width, p))
        scale = np.clip(1.0 + variability * z, max(0.0, 1.0 - 3.0 * variability), 1.0 + 3.0 * variability)
        clean = np.einsum("hwk,kb->hwb", abundances * scale, endmembers)
        notes.append(
            f"spectral variability {variability:g}: pixel = sum_k A[k] * s[k] * E[k], "
            "s = clip(1 + v*N(0,1), 1-3v, 1+3v) per pixel and endmember; the truth E is unscaled"
        )
    else:
        clean = abundances @ endmembers
        notes.append("noise-free cube = abundances @ endmembers exactly (no spectral variability)")

    if snr_db is None:
        cube = clean.astype(np.float32)
        notes.append("no noise added")
    else:
        cube = add_noise(clean, snr_db, seed=_stream(seed, _STAGE_NOISE))
        notes.append(f"white Gaussian noise at {snr_db:g} dB (HySUPP definition: sigma^2 = mean(Y^2)/10^(SNR/10))")
    notes.append(f"seed {seed}; size {height}x{width}; kind {kind!r}")

    return Scene.from_array(
        cube,
        name=name or f"synthetic_p{p}_seed{seed}",
        wavelengths=wl,
        endmembers=endmembers,
        abundances=abundances,
        endmember_names=names,
        source=source,
        notes=notes,
    )
