"""Training data for unmix-train: the scene's pixels, endmember initialisation, synthetic mixtures.

Everything here is deterministic for a seed. Arrays are numpy unless a name says ``_torch``.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch

from unmix.errors import InputError, UsageError
from unmix.io.scene import Scene
from unmix.physics.fcls import fcls


@dataclass
class SceneData:
    """A scene prepared for training.

    Attributes:
        cube: (H, W, B) float32 reflectance with invalid pixels set to 0.
        mask: (H, W) bool, True where every band is finite.
        name: the scene's name.
        wavelengths: (B,) nm or None.
        digest: sha256 of the cube's bytes (recorded in checkpoints).
    """

    cube: np.ndarray
    mask: np.ndarray
    name: str
    wavelengths: np.ndarray | None
    digest: str

    @property
    def valid_pixels(self) -> np.ndarray:
        """(N, B) float32: the finite pixels."""
        return self.cube[self.mask]


def prepare_scene(scene: Scene, endmembers: int, wavelengths: np.ndarray | None = None) -> SceneData:
    """Read the scene, mask non-finite pixels and check the number of endmembers.

    ``wavelengths`` (B,) nm overrides the scene's own (for cubes whose header has none).
    """
    cube = scene.read().astype(np.float32, copy=False)
    height, width, bands = cube.shape
    if not 2 <= endmembers <= bands:
        raise UsageError(f"{scene.name}: --endmembers must be between 2 and the band count {bands}, got {endmembers}")
    mask = np.isfinite(cube).all(axis=-1)
    valid = int(mask.sum())
    if valid < max(endmembers, 1) * 2:
        raise InputError(f"{scene.source or scene.name}: only {valid} of {height * width} pixels are finite in "
                         f"every band; at least {2 * endmembers} are needed to find {endmembers} endmembers")
    cube = np.where(mask[..., None], cube, 0.0).astype(np.float32)
    if wavelengths is not None:
        wavelengths = np.asarray(wavelengths, dtype=np.float64)
        if wavelengths.shape != (bands,):
            raise UsageError(f"{scene.name}: --wavelengths gives {wavelengths.size} values, the cube has {bands} bands")
    else:
        wavelengths = scene.wavelengths
    digest = hashlib.sha256(np.ascontiguousarray(cube).tobytes()).hexdigest()
    return SceneData(cube=cube, mask=mask, name=scene.name, wavelengths=wavelengths, digest=digest)


def initial_endmembers(pixels: np.ndarray, endmembers: int, seeds: int, seed: int = 0,
                       known: np.ndarray | None = None, sample: int = 4096, smoothed: np.ndarray | None = None
                       ) -> tuple[np.ndarray, float, dict]:
    """Endmembers (p, B) from the endmember engine (:func:`unmix.physics.endmembers.estimate_endmembers`,
    ``seeds`` VCA starts); ``known`` (k, B) spectra are kept as the first k endmembers; ``smoothed``:
    the scene's 3 x 3 spatial means (:func:`unmix.physics.endmembers.spatial_means`), which the
    minimum-volume family is fitted to.

    Returns the endmembers, their FCLS reconstruction RMSE on a pixel sample (a proxy for the scene's
    noise level, used for the synthetic mixtures) and the engine's summary (mode, misfit ratio,
    criterion, per-endmember spread, RMS over bands of the estimated noise).
    """
    from unmix.physics.endmembers import estimate_endmembers

    estimate = estimate_endmembers(pixels, endmembers, known=known, starts=max(1, seeds), seed=seed,
                                   smoothed=smoothed)
    best = estimate.endmembers.astype(np.float32)
    rng = np.random.default_rng(seed)
    subset = pixels if len(pixels) <= sample else pixels[rng.choice(len(pixels), sample, replace=False)]
    abundances = fcls(subset, best)
    rmse = float(np.sqrt(np.mean((subset - abundances @ best) ** 2)))
    summary = {"mode": estimate.mode, "misfit_ratio": estimate.misfit_ratio, "criterion": estimate.criterion,
               "candidates": len(estimate.candidates), "seconds": estimate.details["seconds"],
               "spread": estimate.spread.astype(np.float32).tolist(),
               "noise_rms": float(np.sqrt(np.mean(estimate.noise ** 2)))}
    return best, rmse, summary


def step_generator(seed: int, stage: str, step: int) -> torch.Generator:
    """A torch generator for one training step: resuming at any step replays the same draws."""
    key = hashlib.sha256(f"{seed}:{stage}:{step}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(key[:8], "little") & ((1 << 63) - 1))


def random_crops(cube: torch.Tensor, mask: torch.Tensor, count: int, size: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` random (B, size, size) crops of a (B, H, W) cube with their (size, size) masks.

    Crops are flipped and rotated at random. Scenes smaller than ``size`` are padded with zeros and
    a False mask, never refused.
    """
    bands, height, width = cube.shape
    pad_h, pad_w = max(0, size - height), max(0, size - width)
    if pad_h or pad_w:
        cube = torch.nn.functional.pad(cube, (0, pad_w, 0, pad_h))
        mask = torch.nn.functional.pad(mask, (0, pad_w, 0, pad_h))
        height, width = height + pad_h, width + pad_w
    tops = torch.randint(0, height - size + 1, (count,), generator=generator)
    lefts = torch.randint(0, width - size + 1, (count,), generator=generator)
    turns = torch.randint(0, 4, (count,), generator=generator)
    flips = torch.randint(0, 2, (count,), generator=generator)
    crops, masks = [], []
    for top, left, turn, flip in zip(tops.tolist(), lefts.tolist(), turns.tolist(), flips.tolist()):
        crop = cube[:, top:top + size, left:left + size]
        crop_mask = mask[top:top + size, left:left + size]
        crop, crop_mask = torch.rot90(crop, turn, (1, 2)), torch.rot90(crop_mask, turn, (0, 1))
        if flip:
            crop, crop_mask = crop.flip(2), crop_mask.flip(1)
        crops.append(crop)
        masks.append(crop_mask)
    return torch.stack(crops), torch.stack(masks)


def smooth_fields(count: int, channels: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """(count, channels, size, size) random abundance fields on the simplex.

    Gaussian noise at a random coarse resolution is upsampled bilinearly and passed through a softmax
    with a random sharpness, so the fields range from smooth mixtures to nearly pure regions.
    """
    fields = []
    for _ in range(count):
        coarse = int(torch.randint(2, max(3, size // 4) + 1, (1,), generator=generator))
        logits = torch.randn(1, channels, coarse, coarse, generator=generator)
        logits = torch.nn.functional.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)
        sharpness = float(torch.empty(1).uniform_(1.0, 6.0, generator=generator))
        fields.append(torch.softmax(logits * sharpness, dim=1))
    return torch.cat(fields)


def synthetic_mixtures(endmembers: torch.Tensor, count: int, size: int, variability: float, noise_std: float,
                       generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic cubes mixed from ``endmembers`` (p, B) with known abundances.

    Returns (count, B, size, size) cubes and their (count, p, size, size) abundances. Each pixel's
    endmembers are scaled by 1 + variability * N(0, 1) (per pixel and endmember: illumination and
    spectral variability); white noise of ``noise_std`` is added.
    """
    p, bands = endmembers.shape
    abundances = smooth_fields(count, p, size, generator)
    scale = 1.0 + variability * torch.randn(count, p, size, size, generator=generator)
    cubes = torch.einsum("nphw,pb->nbhw", abundances * scale, endmembers)
    cubes = cubes + noise_std * torch.randn(cubes.shape, generator=generator)
    return cubes, abundances
