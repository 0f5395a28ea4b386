"""The unmixing pipeline: two passes over the cube, tile by tile, through three Networks (numpy only).

Flow (README.md, "Export and run")::

    pass 1   every tile: HybridSTU -> A0 tile; blended into A0 (H, W, p)
    stats    A^T A (p, p) and A^T Y (p, B) over the valid pixels (a read of the cube in fixed blocks;
             only when E0 comes from them or the 1D loop runs)
    E0       the model's endmembers (learnt with HybridSTU, from the manifest) or, with
             ``initial_endmembers="statistics"`` or no model spectra, non-negative least squares from the statistics;
             with ``reestimate=N`` (not a PipelineConfig setting: the C++ runtime keeps the manifest's E),
             pass 1 also keeps a bounded, tiling-independent sample of N valid pixels (:class:`PixelSample`)
             and E0 is the endmember engine's estimate on it, started from (and ordered like) that E0;
             the 2D step's weight then follows the new cube's noise (:func:`dc_weight_for_noise`)
    round r = 0..R-1:
      spectra  (refine_spectra) SDEdit of E: normalise, noise to ``spectra_t0``, ``spectra_steps``
               fused 1D DDIM steps whose proximal data consistency (weight ``spectra_dc_weight``)
               needs only A^T A and A^T Y
      pass 2   every tile, every sample s < S: x = 2 A - 1 noised to ``t0``, ``steps`` fused 2D DDIM
               steps (proximal data consistency on the simplex, weight ``dc_weight``, against the
               tile's Y with E fixed; :func:`dc_weight_for_noise` sets it at training);
               mean (and spread) over the samples, blended and projected onto the simplex row
               band by row band, overwriting A in place (the scene's abundances are held once)
      stats    A^T A, A^T Y and the per-pixel RMSE of the blended A; round r + 1 refines E against
               them (without the 1D loop: E = NNLS(statistics of A))

Conventions (the C++ core follows the same ones):

- **Tiles**: :mod:`unmix.runtime.tiling` — square ``tile`` x ``tile`` windows overlapping by ``overlap``;
  a window that runs past a small cube's edge is filled by repeating its last row/column, so every
  network call has the static tile shape. Tile outputs are blended by a raised-cosine window.
- **Noise**: Philox (:mod:`unmix.diffusion.noise`) at GLOBAL pixel coordinates, so a pixel's noise does
  not depend on the tiling. Each tile draws the ``tile x tile`` window at its top-left pixel (pixels
  past the image edge use their virtual coordinates). Counter steps: :func:`counter_step` with the
  round index; the forward noising uses ``counter_step(K, None, r)``, DDIM step ``i``
  ``counter_step(K, i, r)``; ``sample`` is the sample index. 2D noise is ``STREAM_ABUNDANCE`` with
  channel = endmember; 1D noise is :func:`spectra_noise` (``STREAM_SPECTRA``, sample 0). A step whose
  sigma is 0 gets zeros (no draw).
- **Forward noising**: ``x_t0 = c[0, SQRT_ALPHA_BAR_T] * x0 + c[0, SQRT_ONE_MINUS_ALPHA_BAR_T] * z`` in
  float32 with ``c`` the float32 DDIM table (columns named by :class:`unmix.diffusion.schedule.Coef`;
  row 0 is the first step, t = t0).
- **Abundances**: ``x0 = 2 A - 1``; after the loop ``A = (x + 1) / 2``. **Spectra**: per endmember
  ``scale_k = max_b E[k, b]`` (at least 1e-6), ``x0 = 2 E / scale - 1``, back ``E = max(scale (x + 1) / 2, 0)``.
- **Statistics** are float64 sums over blocks of :data:`STATISTICS_BLOCK` pixels square (independent of the
  tile size); the spectra step gets them divided by the pixel count (means), in float32.
- **Invalid pixels** (any band not finite) are fed to HybridSTU as 0; in pass 2 their Y is replaced
  by the current reconstruction ``A E`` (so data consistency leaves them alone); they are left out of
  every statistic and come back as NaN in every per-pixel output.
- **Samples**: S > 1 runs pass 2 S times per tile (different noise); the abundances are the mean,
  the uncertainty the mean over endmembers of the per-pixel standard deviation across samples
  (``ddof = 1``), computed per tile and blended like the abundances; the per-endmember standard
  deviations are blended the same way (``uncertainty_per_endmember``).
- Outputs are on the simplex (a final Euclidean projection removes float rounding) and ``E >= 0``.
- **Tiled = untiled**: tile outputs are rounded to float32 before blending and the blend to float32
  before the projection, so with pixelwise networks a tiled run equals an untiled one bit for bit.
  Networks that see context match only to a tolerance: HybridSTU exactly (to float32 rounding) for
  pixels a receptive radius inside every covering tile; the 2D UNet nowhere exactly, because its
  GroupNorm statistics are taken over the whole tile.
"""
from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from unmix.diffusion.noise import (STREAM_ABUNDANCE, STREAM_PIXEL_SAMPLE, counter_step, gaussian, spectra_noise,
                                   uniform_uint32)
from unmix.diffusion.schedule import Coef, Schedule, ddim_coefficients, ddim_timesteps
from unmix.errors import InputError, UsageError, require_int
from unmix.io.diskarray import DiskArray
from unmix.io.scene import Scene
from unmix.physics.endmembers import estimate_endmembers
from unmix.physics.mixing import endmembers_from_abundances
from unmix.physics.simplex import project_simplex
from unmix.physics.uncertainty import propagated_uncertainty
from unmix.runtime.network import Network, check_network, pipeline_specs
from unmix.runtime.settings import MAX_DC_WEIGHT, PipelineConfig
from unmix.runtime.tiling import Blender, Tile, pad_to_tile, row_blocks, tile_grid

__all__ = ["MAX_DC_WEIGHT", "MIN_REESTIMATE_SAMPLE", "PipelineConfig", "PipelineResult", "PixelSample", "ProgressCallback",
           "STATISTICS_BLOCK", "dc_weight_for_noise", "predict_abundances", "run_pipeline"]

STATISTICS_BLOCK = 256
#: The DDIM table's columns of the forward noising (sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t)).
A_T, ONE_MINUS_A_T = Coef.SQRT_ALPHA_BAR_T, Coef.SQRT_ONE_MINUS_ALPHA_BAR_T
_MIN_SCALE = 1e-6
#: tau, the abundance error assumed for the 2D prior's estimate in :func:`dc_weight_for_noise`: a stated
#: prior (a tenth of the abundance range), not tuned; it gives the largest weight down to ~30 dB.
PRIOR_ABUNDANCE_STD = 0.1
#: The smallest pixel sample ``reestimate`` accepts: fewer spectra pin down neither the noise estimate
#: (a regression of each band on the others) nor a simplex's facets.
MIN_REESTIMATE_SAMPLE = 100


def dc_weight_for_noise(endmembers: np.ndarray, noise_std: float) -> float:
    """The 2D step's data-consistency weight from the scene's noise level.

    The step solves ``min_a w ||y - E^T a||^2 / s + ||a - a_hat||^2`` over the simplex
    (``s = trace(E E^T) / p``). That is the maximum a posteriori estimate for white noise of standard
    deviation sigma per band and a Gaussian prior of standard deviation tau around the denoiser's
    ``a_hat`` when ``w / s = tau^2 / sigma^2``, so ``w = s tau^2 / sigma^2`` (tau =
    :data:`PRIOR_ABUNDANCE_STD`), clipped to ``[0, MAX_DC_WEIGHT]``. High SNR gives the largest weight
    (the step is FCLS up to the prior's pull in the few directions the data cannot see); low SNR lets
    the prior speak. ``noise_std`` is the RMS over bands of the per-band noise (e.g.
    :func:`unmix.physics.endmembers.estimate_noise`), in the endmembers' units.
    """
    E = np.asarray(endmembers, dtype=np.float64)
    s = float(np.trace(E @ E.T)) / E.shape[0]
    sigma2 = max(float(noise_std) ** 2, 1e-30)
    return float(min(max(s * PRIOR_ABUNDANCE_STD ** 2 / sigma2, 0.0), MAX_DC_WEIGHT))


ProgressCallback = Callable[[str, int, int], None]
"""``progress(stage, done, total)``; stages ``"cnn"`` (pass-1 tiles), ``"spectra"`` (1D DDIM steps over
all rounds) and ``"refine"`` (pass-2 tiles over all rounds)."""


@dataclass
class PipelineResult:
    """What :func:`run_pipeline` returns.

    Attributes:
        abundances: (H, W, p) float32, on the simplex; NaN at invalid pixels.
        endmembers: (p, B) float32 >= 0, in the cube's reflectance units.
        rmse: (H, W) float32 per-pixel reconstruction RMSE ``sqrt(mean_b (Y - A E)^2)``; NaN at invalid pixels.
        uncertainty: (H, W) float32 (samples > 1): mean over endmembers of the per-pixel standard
            deviation of the abundances across samples; None for one sample.
        uncertainty_per_endmember: (H, W, p) float32 (samples > 1): the per-pixel, per-endmember
            standard deviation across samples (``ddof = 1``) of the last round, blended like the
            abundances; NaN at invalid pixels; None for one sample.
        timings: seconds per stage (``cnn_s``, ``statistics_s``, ``spectra_s``, ``refine_s``, ``total_s``),
            per network (``<name>_s``) and call counts (``<name>_calls``).
        config: the settings used, the schedule, timesteps and shapes.
    """

    abundances: np.ndarray
    endmembers: np.ndarray
    rmse: np.ndarray
    uncertainty: np.ndarray | None
    timings: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    uncertainty_per_endmember: np.ndarray | None = None


class _Calls:
    """Calls networks by name and times them (their I/O was checked by ``check_network`` before)."""

    def __init__(self, networks: Mapping[str, Network]):
        self.networks = networks
        self.seconds: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    def __call__(self, name: str, feeds: dict[str, np.ndarray], output: str) -> np.ndarray:
        started = time.perf_counter()
        result = self.networks[name](feeds)[output]
        self.seconds[name] += time.perf_counter() - started
        self.counts[name] += 1
        return result


def _read(scene: Scene, tile: Tile) -> tuple[np.ndarray, np.ndarray]:
    """The tile's valid window: (h, w, B) float32 with invalid pixels set to 0, and the (h, w) mask."""
    data = np.asarray(scene.read_tile(tile.rows, tile.cols), dtype=np.float32)
    valid = np.isfinite(data).all(axis=-1)
    if not valid.all():
        data = np.where(valid[..., None], data, np.float32(0.0))
    return data, valid


def _channels_first(array: np.ndarray, tile: int) -> np.ndarray:
    """(h, w, C) -> padded (1, C, T, T) float32, contiguous."""
    return np.ascontiguousarray(pad_to_tile(array, tile).transpose(2, 0, 1)[None], dtype=np.float32)


#: Makes a scene-sized float32 map: ``allocate(name, shape)``.
Allocate = Callable[[str, tuple], Any]


def _in_memory(name: str, shape: tuple) -> np.ndarray:
    return np.empty(shape, dtype=np.float32)


def _on_disk(workspace: str | Path) -> Allocate:
    """Maps as :class:`unmix.io.diskarray.DiskArray` files in ``workspace``: memory flat in the scene."""
    def allocate(name: str, shape: tuple) -> DiskArray:
        return DiskArray(Path(workspace) / f"{name}.f32", shape)
    return allocate


def _mask_invalid(array, mask: np.ndarray) -> None:
    """NaN at the pixels where ``mask`` is False, a block of rows at a time."""
    for rows in row_blocks(mask.shape[0], STATISTICS_BLOCK):
        invalid = ~mask[rows]
        if invalid.any():
            block = array[rows]
            block[invalid] = np.nan
            array[rows] = block


def _statistics(scene: Scene, abundances: np.ndarray, endmembers: np.ndarray | None, sums: bool = True,
                allocate: Allocate = _in_memory):
    """A^T A (p, p), A^T Y (p, B) float64 sums over valid pixels (None without ``sums``), their count,
    the (H, W) validity mask, and (with ``endmembers``) the (H, W) float32 per-pixel RMSE (NaN where
    invalid)."""
    H, W, B = scene.shape
    p = abundances.shape[2]
    AtA = np.zeros((p, p)) if sums else None
    AtY = np.zeros((p, B)) if sums else None
    count = 0
    mask = np.zeros((H, W), dtype=bool)
    rmse = None if endmembers is None else allocate("rmse", (H, W))    # every block is written below
    E = None if endmembers is None else np.asarray(endmembers, dtype=np.float64)
    for rows, cols in scene.tiles(STATISTICS_BLOCK):
        cube = np.asarray(scene.read_tile(rows, cols), dtype=np.float32)
        valid = np.isfinite(cube).all(axis=-1)
        mask[rows, cols] = valid
        a = abundances[rows, cols][valid].astype(np.float64)
        y = cube[valid]
        count += len(a)
        if sums:
            # (y^T a)^T, not a^T y: the same numbers, but BLAS takes this layout much faster for an (N, p)
            # by (N, B) product, above all on a loaded machine.
            AtA += a.T @ a
            AtY += (y.T.astype(np.float64) @ a).T
        if E is not None:
            # The float64 residual, computed in place in one (N, B) buffer.
            residual = a @ E
            np.subtract(y, residual, out=residual)
            np.square(residual, out=residual)
            block = np.full(valid.shape, np.nan, dtype=np.float32)
            block[valid] = np.sqrt(residual.mean(axis=-1))
            rmse[rows, cols] = block
            del residual
        del cube, y, a      # before the next block is read: one block's buffers alive at a time
    return AtA, AtY, count, mask, rmse


class PixelSample:
    """At most ``size`` valid pixel spectra of a scene, the same whatever the tiling, in bounded memory.

    Why this rule: the endmember engine needs a uniform sample of the cube, pass 1 sees the cube only
    tile by tile (tiles overlap, and their layout depends on the settings), and memory must not grow
    with the scene. Each pixel gets a 64-bit key, Philox words 0 and 1 at its GLOBAL (row, col) under
    the run's seed (:data:`unmix.diffusion.noise.STREAM_PIXEL_SAMPLE`, step 0, sample 0); the sample is
    the ``size`` valid pixels with the smallest keys (ties, which need a 64-bit collision, broken by
    the flat index), i.e. a uniform draw without replacement that depends on the seed and the pixels
    only. A pixel seen by several tiles has one key and is kept once. At most about ``2 * size`` spectra
    plus one tile are held: candidates are compacted back to ``size`` whenever ``size`` more arrive.
    A pixel counts as valid when it is finite in every band.
    """

    def __init__(self, size: int, width: int, seed: int):
        self.size = require_int(size, "reestimate", MIN_REESTIMATE_SAMPLE)
        self.width = int(width)
        self.seed = int(seed)
        self._keys = np.zeros(0, dtype=np.uint64)
        self._index = np.zeros(0, dtype=np.int64)
        self._spectra: np.ndarray | None = None
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._pending_count = 0
        self._threshold: np.uint64 | None = None    # the size-th smallest key, once size pixels are held

    def add(self, row0: int, col0: int, cube: np.ndarray, valid: np.ndarray) -> None:
        """Offer a window's pixels: ``cube`` (h, w, B) with its top-left pixel at global (row0, col0),
        ``valid`` (h, w) bool (only these are kept)."""
        h, w = valid.shape
        words = uniform_uint32(self.seed, STREAM_PIXEL_SAMPLE, 0, 0, np.arange(row0, row0 + h),
                               np.arange(col0, col0 + w), 1)[:, :, 0].astype(np.uint64)
        keys = (words[..., 0] << np.uint64(32)) | words[..., 1]
        keep = valid if self._threshold is None else valid & (keys <= self._threshold)
        if not keep.any():
            return
        rows, cols = np.nonzero(keep)
        index = (rows + row0).astype(np.int64) * self.width + (cols + col0)
        self._pending.append((keys[keep], index, np.asarray(cube[keep], dtype=np.float32)))
        self._pending_count += len(index)
        if self._pending_count >= self.size:
            self._compact()

    def _compact(self) -> None:
        if not self._pending:
            return
        parts = list(zip(*self._pending))
        keys = np.concatenate([self._keys, *parts[0]])
        index = np.concatenate([self._index, *parts[1]])
        held = [] if self._spectra is None else [self._spectra]
        spectra = np.concatenate(held + list(parts[2]))
        order = np.lexsort((index, keys))
        first = np.ones(len(order), dtype=bool)
        first[1:] = index[order][1:] != index[order][:-1]     # the same pixel again (an overlap)
        chosen = order[first][: self.size]
        self._keys, self._index, self._spectra = keys[chosen], index[chosen], spectra[chosen]
        self._pending, self._pending_count = [], 0
        if len(self._keys) == self.size:
            self._threshold = self._keys[-1]

    def pixels(self) -> np.ndarray:
        """(n, B) float32 spectra, n <= size, in key order."""
        self._compact()
        return np.zeros((0, 0), dtype=np.float32) if self._spectra is None else self._spectra

    def coordinates(self) -> np.ndarray:
        """(n, 2) int64 global (row, col) of :meth:`pixels`, in the same order."""
        self._compact()
        return np.stack([self._index // self.width, self._index % self.width], axis=1)


def _order_like(reference: np.ndarray, spectra: np.ndarray) -> np.ndarray:
    """The permutation of ``spectra``'s rows that matches ``reference``'s rows by spectral angle
    (Hungarian): the networks' abundance channels follow the reference's order, so a new estimate must
    too."""
    from scipy.optimize import linear_sum_assignment

    a = reference / np.maximum(np.linalg.norm(reference, axis=1, keepdims=True), 1e-12)
    b = spectra / np.maximum(np.linalg.norm(spectra, axis=1, keepdims=True), 1e-12)
    rows, cols = linear_sum_assignment(-(a @ b.T))
    return cols[np.argsort(rows)]


def _hybridstu_shape(network: Any, scene: Scene) -> tuple[int, int]:
    """(p, T) from HybridSTU's declared shapes; refuses a band count that differs from the cube's."""
    cube_spec = getattr(network, "inputs", {}).get("cube")
    head = getattr(network, "outputs", {}).get("abundances")
    if cube_spec is None or head is None or len(cube_spec.shape) != 4 or len(head.shape) != 4:
        raise InputError("network 'hybridstu' must declare input 'cube' (1, B, T, T) and output "
                         "'abundances' (1, p, T, T)")
    bands = scene.shape[2]
    if cube_spec.shape[1] != bands:
        raise InputError(f"{scene.source or scene.name}: the cube has {bands} bands, "
                         f"the networks expect {cube_spec.shape[1]}")
    return head.shape[1], head.shape[2]


def _first_pass(calls: _Calls, scene: Scene, grid: list[Tile], p: int, tile: int, overlap: int,
                progress: Callable[[], None], allocate: Allocate = _in_memory,
                sample: PixelSample | None = None) -> tuple[np.ndarray, bool]:
    """Pass 1: HybridSTU over every tile, blended: (H, W, p) float32, and whether any pixel is valid.

    ``sample``, when given, is offered every tile's pixels (this pass reads them all anyway)."""
    H, W, _ = scene.shape
    abundances = allocate("abundances", (H, W, p))

    def sink(rows: slice, values: np.ndarray) -> None:
        abundances[rows] = values

    blender = Blender(H, W, p, tile, overlap, sink=sink)
    any_valid = False
    for window in grid:
        cube, valid = _read(scene, window)
        any_valid = any_valid or bool(valid.any())
        if sample is not None:
            sample.add(window.row0, window.col0, cube, valid)
        out = calls("hybridstu", {"cube": _channels_first(cube, tile)}, "abundances")
        blender.add(window, out[0].transpose(1, 2, 0)[: window.height, : window.width])
        progress()
    blender.finish()
    return abundances, any_valid


def predict_abundances(scene: Scene, network: Network, overlap: int = 16,
                       progress: ProgressCallback | None = None) -> np.ndarray:
    """Pass 1 alone: the CNN's abundances A0 of the whole scene, ``(H, W, p)`` float32.

    ``network`` is a ``hybridstu`` Network (input ``cube (1, B, T, T)``, output
    ``abundances (1, p, T, T)``); tiles of T pixels overlap by ``overlap`` and are blended. Invalid
    pixels are fed as 0 and come back as they are computed (not masked).
    """
    p, T = _hybridstu_shape(network, scene)
    H, W, B = scene.shape
    check_network("hybridstu", network, pipeline_specs(B, p, T)["hybridstu"])
    grid = tile_grid(H, W, T, overlap)
    return _first_pass(_Calls({"hybridstu": network}), scene, grid, p, T, overlap,
                       _counter(progress, "cnn", len(grid)))[0]


def _refine_spectra(calls: _Calls, endmembers: np.ndarray, AtA: np.ndarray, AtY: np.ndarray, count: int,
                    schedule: Schedule, cfg: PipelineConfig, round_index: int,
                    progress: Callable[[], None]) -> np.ndarray:
    """One SDEdit pass of the 1D prior over the (p, B) endmembers; returns (p, B) float64 >= 0."""
    p, B = endmembers.shape
    K = cfg.spectra_steps
    timesteps = ddim_timesteps(schedule.T, K, cfg.spectra_t0)
    table = ddim_coefficients(schedule, timesteps, cfg.spectra_eta).as_table()
    scale = np.maximum(endmembers.max(axis=1), _MIN_SCALE).astype(np.float32)
    x0 = (2.0 * endmembers.astype(np.float32) / scale[:, None] - 1.0)[:, None, :].astype(np.float32)
    z = spectra_noise(cfg.seed, counter_step(K, None, round_index), 0, p, B)[:, None, :]
    x = (table[0, A_T] * x0 + table[0, ONE_MINUS_A_T] * z).astype(np.float32)
    fixed = {"AtA": (AtA / count).astype(np.float32), "AtY": (AtY / count).astype(np.float32),
             "scale": scale, "dc_weight": np.array([cfg.spectra_dc_weight], dtype=np.float32)}
    for i, t in enumerate(timesteps.tolist()):
        if table[i, Coef.SIGMA] > 0:
            noise = spectra_noise(cfg.seed, counter_step(K, i, round_index), 0, p, B)[:, None, :]
        else:
            noise = np.zeros((p, 1, B), dtype=np.float32)
        feeds = {"x_t": x, "t": np.full((p,), t, dtype=np.float32), "coef": table[i], "noise": noise, **fixed}
        x = calls("spectra_step", feeds, "x_prev")
        progress()
    return np.maximum(scale[:, None].astype(np.float64) * (x[:, 0, :].astype(np.float64) + 1.0) / 2.0, 0.0)


def _refine_abundances(calls: _Calls, scene: Scene, abundances: np.ndarray, endmembers: np.ndarray,
                       grid: list[Tile], schedule: Schedule, cfg: PipelineConfig, round_index: int,
                       progress: Callable[[], None], allocate: Allocate = _in_memory
                       ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Pass 2: the 2D DDIM refinement of every tile, blended and projected onto the simplex.

    The refined rows overwrite ``abundances`` (H, W, p) float32 in place as soon as no later tile
    reads them (tiles run in row-major order and each reads only its own rows), so the whole scene
    is held once. Returns the (H, W) float32 uncertainty and the (H, W, p) per-endmember standard
    deviation (both None for one sample)."""
    H, W, p = abundances.shape
    T, K, S = cfg.tile, cfg.steps, cfg.samples
    timesteps = ddim_timesteps(schedule.T, K, cfg.t0)
    table = ddim_coefficients(schedule, timesteps, cfg.eta).as_table()
    E = endmembers.astype(np.float32)
    fixed = {"endmembers": E, "dc_weight": np.array([cfg.dc_weight], dtype=np.float32)}
    uncertainty = per_endmember = None
    if S > 1:
        uncertainty = allocate("uncertainty", (H, W))
        per_endmember = allocate("uncertainty_per_endmember", (H, W, p))

    def sink(rows: slice, values: np.ndarray) -> None:
        # float32 first: the blend of equal float32 tile values is exact only after this rounding.
        abundances[rows] = project_simplex(values[..., :p].astype(np.float32).astype(np.float64), axis=-1)
        if S > 1:
            uncertainty[rows] = values[..., p]
            per_endmember[rows] = values[..., p + 1:]

    # Blended channels: p means, then (S > 1) the mean spread and p per-endmember spreads.
    blender = Blender(H, W, p + (1 + p if S > 1 else 0), T, cfg.overlap, sink=sink)
    zeros = np.zeros((1, p, T, T), dtype=np.float32)
    for tile in grid:
        cube, valid = _read(scene, tile)
        current = abundances[tile.rows, tile.cols].astype(np.float32)
        if not valid.all():
            cube[~valid] = current[~valid] @ E
        cube = _channels_first(cube, T)
        x0 = 2.0 * _channels_first(current, T) - 1.0
        rows = np.arange(tile.row0, tile.row0 + T)
        cols = np.arange(tile.col0, tile.col0 + T)

        def noise_at(step: int, sample: int) -> np.ndarray:
            window = gaussian(cfg.seed, STREAM_ABUNDANCE, step, sample, rows, cols, p)
            return np.ascontiguousarray(window.transpose(2, 0, 1)[None])

        samples = []
        for s in range(S):
            z = noise_at(counter_step(K, None, round_index), s)
            x = (table[0, A_T] * x0 + table[0, ONE_MINUS_A_T] * z).astype(np.float32)
            for i, t in enumerate(timesteps.tolist()):
                noise = noise_at(counter_step(K, i, round_index), s) if table[i, Coef.SIGMA] > 0 else zeros
                feeds = {"x_t": x, "t": np.array([t], dtype=np.float32), "coef": table[i], "noise": noise,
                         "cube": cube, **fixed}
                x = calls("abundance_step", feeds, "x_prev")
            samples.append((x[0].transpose(1, 2, 0)[: tile.height, : tile.width].astype(np.float64) + 1.0) / 2.0)
        stack = np.stack(samples)
        values = stack.mean(axis=0)
        if S > 1:
            spread = stack.std(axis=0, ddof=1)
            values = np.concatenate([values, spread.mean(axis=-1)[..., None], spread], axis=-1)
        # float32 before blending: a pixel that every covering tile gives the same float32 value
        # then blends back to exactly that value (tiled = untiled for pixelwise networks).
        blender.add(tile, values.astype(np.float32))
        progress()
    blender.finish()
    return uncertainty, per_endmember


def _counter(progress: ProgressCallback | None, stage: str, total: int) -> Callable[[], None]:
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(stage, done, total)

    return tick


def run_pipeline(scene: Scene, networks: Mapping[str, Network], schedule: Schedule,
                 config: PipelineConfig | None = None, progress: ProgressCallback | None = None,
                 endmembers: np.ndarray | None = None, workspace: str | Path | None = None,
                 reestimate: int | None = None, keep_dc_weight: bool = False,
                 endmember_spread: np.ndarray | None = None, noise_std: float | None = None) -> PipelineResult:
    """Unmix ``scene`` with the three networks (module docstring for the flow and conventions).

    Args:
        scene: the (H, W, B) cube, read tile by tile.
        networks: ``"hybridstu"``, ``"abundance_step"`` and (with ``refine_spectra``) ``"spectra_step"``,
            each matching :func:`unmix.runtime.network.pipeline_specs` for B, p and the tile.
            p and the tile size are read from HybridSTU's declared output ``(1, p, T, T)``.
        schedule: the diffusion schedule the step networks were trained with.
        config: inference settings (defaults: :class:`PipelineConfig`); ``config.tile`` must equal T.
        progress: optional ``progress(stage, done, total)`` callback.
        endmembers: optional (p, B) model endmembers (the manifest's), the starting point when
            ``config.initial_endmembers == "model"``; without them E0 comes from the statistics.
        endmember_spread, noise_std: the model's endmember spread (p, B) and noise estimate
            (``Manifest.endmember_spread``, ``Manifest.noise_std``); with ``noise_std`` the uncertainty map
            adds, in quadrature, the noise and the endmembers' spread propagated through the abundance
            step (:func:`unmix.physics.uncertainty.propagated_uncertainty`), and exists also for one sample.
        workspace: optional existing folder: the scene-sized maps (abundances, RMSE, uncertainty) are
            then :class:`unmix.io.diskarray.DiskArray` files there instead of arrays in memory, so
            memory does not grow with the scene (``np.asarray`` reads one whole). The folder must
            outlive the result.
        reestimate: optional N >= :data:`MIN_REESTIMATE_SAMPLE`: re-estimate the endmembers on this cube
            (for a model trained on another flight or scene of the same sensor). Pass 1 keeps a
            :class:`PixelSample` of at most N valid pixels; E0 becomes
            :func:`unmix.physics.endmembers.estimate_endmembers` on it, started from the E0 above and
            put in its order (the networks' abundance channels follow it). Memory grows with N, not
            with the scene. Not a :class:`PipelineConfig` setting: the C++ runtime keeps the manifest's E.
        keep_dc_weight: with ``reestimate``, keep ``config.dc_weight`` (the caller chose it) instead of
            :func:`dc_weight_for_noise` of the new E and the new cube's noise.

    Returns:
        A :class:`PipelineResult`; its ``config`` records ``endmembers_source`` (``"model"``,
        ``"statistics"`` or ``"reestimated"``) and, with ``reestimate``, ``reestimation`` (the engine's
        mode, misfit ratio, seconds, sample size, noise and the weight used).
    """
    started = time.perf_counter()
    cfg = PipelineConfig() if config is None else config
    if not isinstance(cfg, PipelineConfig):
        raise UsageError(f"config must be a PipelineConfig, got {type(cfg).__name__}")
    if not isinstance(schedule, Schedule):
        raise UsageError(f"schedule must be a Schedule, got {type(schedule).__name__}")
    H, W, B = scene.shape
    needed = ["hybridstu", "abundance_step"] + (["spectra_step"] if cfg.refine_spectra else [])
    missing = [name for name in needed if name not in networks]
    if missing:
        raise UsageError(f"the pipeline needs the network {missing[0]!r}; given: {', '.join(networks) or 'none'}")
    p, T = _hybridstu_shape(networks["hybridstu"], scene)
    if cfg.tile != T:
        raise UsageError(f"the networks were built for {T}x{T} tiles, but the tile setting is {cfg.tile}")
    specs = pipeline_specs(B, p, T)
    for name in needed:
        check_network(name, networks[name], specs[name])
    # Fail on bad step settings before any work.
    timesteps = ddim_timesteps(schedule.T, cfg.steps, cfg.t0)
    spectra_timesteps = ddim_timesteps(schedule.T, cfg.spectra_steps, cfg.spectra_t0) if cfg.refine_spectra else None
    if endmembers is not None:
        endmembers = np.asarray(endmembers, dtype=np.float64)
        if endmembers.shape != (p, B) or not np.isfinite(endmembers).all() or (endmembers < 0).any():
            raise UsageError(f"endmembers must be a finite non-negative ({p}, {B}) array, got shape {endmembers.shape}")
    sample = None if reestimate is None else PixelSample(reestimate, W, cfg.seed)

    calls = _Calls(networks)
    timings: dict[str, float] = {}
    grid = tile_grid(H, W, T, cfg.overlap)

    # Pass 1: HybridSTU tile by tile.
    t = time.perf_counter()
    allocate = _in_memory if workspace is None else _on_disk(workspace)
    abundances, any_valid = _first_pass(calls, scene, grid, p, T, cfg.overlap, _counter(progress, "cnn", len(grid)),
                                        allocate, sample)
    if not any_valid:
        raise InputError(f"{scene.source or scene.name}: no pixel is finite in every band; nothing to unmix")
    timings["cnn_s"] = time.perf_counter() - t

    # A^T A and A^T Y of A0: only for E0 from the statistics and for the 1D loop (a full read of the cube).
    t = time.perf_counter()
    from_model = endmembers is not None and cfg.initial_endmembers == "model"
    AtA = AtY = None
    count = 0
    if not from_model or cfg.refine_spectra:
        AtA, AtY, count, mask, _ = _statistics(scene, abundances, None)
    E = endmembers if from_model else endmembers_from_abundances(AtA, AtY)
    timings["statistics_s"] = time.perf_counter() - t
    reestimation = None
    if sample is not None:
        t = time.perf_counter()
        E, reestimation = _reestimate(scene, sample, E, cfg, keep_dc_weight)
        # The uncertainty then follows the new estimate: its spread and this cube's noise.
        endmember_spread = reestimation.pop("spread")
        noise_std = None if noise_std is None else reestimation["noise_rms"]
        cfg = dataclasses.replace(cfg, dc_weight=reestimation["dc_weight"])
        timings["reestimate_s"] = time.perf_counter() - t
    timings["spectra_s"] = 0.0
    timings["refine_s"] = 0.0

    spectra_tick = _counter(progress, "spectra", cfg.rounds * cfg.spectra_steps)
    refine_tick = _counter(progress, "refine", cfg.rounds * len(grid))
    uncertainty = per_endmember = None
    rmse = None
    for round_index in range(cfg.rounds):
        if round_index > 0 and not cfg.refine_spectra:
            update = endmembers_from_abundances(AtA, AtY)
            # An endmember no pixel uses gets a zero spectrum from NNLS: keep its previous one.
            unused = update.max(axis=1) <= _MIN_SCALE
            E = np.where(unused[:, None], E, update)
        if cfg.refine_spectra:
            t = time.perf_counter()
            E = _refine_spectra(calls, E, AtA, AtY, count, schedule, cfg, round_index, spectra_tick)
            timings["spectra_s"] += time.perf_counter() - t
        E = E.astype(np.float32).astype(np.float64)   # the float32 E the step networks see
        t = time.perf_counter()
        uncertainty, per_endmember = _refine_abundances(calls, scene, abundances, E, grid, schedule, cfg,
                                                        round_index, refine_tick, allocate)
        timings["refine_s"] += time.perf_counter() - t
        t = time.perf_counter()
        # The last round's sums feed nothing: only the mask and the RMSE map are needed then.
        AtA, AtY, count, mask, rmse = _statistics(scene, abundances, E, sums=round_index + 1 < cfg.rounds,
                                                 allocate=allocate)
        timings["statistics_s"] += time.perf_counter() - t

    if noise_std is not None:
        # The noise and the endmembers' spread propagated through the abundance step
        # (unmix.physics.uncertainty), added in quadrature to the samples' spread, row block by row block.
        t = time.perf_counter()
        samples_spread = uncertainty
        if uncertainty is None:
            uncertainty = allocate("uncertainty", (H, W))
        for rows in row_blocks(H, STATISTICS_BLOCK):
            propagated = propagated_uncertainty(np.asarray(abundances[rows]), E, endmember_spread, noise_std)
            if samples_spread is not None:
                propagated = np.sqrt(np.asarray(samples_spread[rows], dtype=np.float64) ** 2 + propagated ** 2)
            uncertainty[rows] = propagated.astype(np.float32)
        timings["uncertainty_s"] = time.perf_counter() - t
    for array in (abundances, uncertainty, per_endmember):
        if array is not None:
            _mask_invalid(array, mask)
    for name in calls.seconds:
        timings[f"{name}_s"] = calls.seconds[name]
        timings[f"{name}_calls"] = calls.counts[name]
    timings["total_s"] = time.perf_counter() - started
    settings = cfg.to_dict()
    settings.update({
        "schedule": schedule.to_config(),
        "timesteps": timesteps.tolist(),
        "spectra_timesteps": None if spectra_timesteps is None else spectra_timesteps.tolist(),
        "shape": [H, W, B],
        "endmembers": p,
        "tiles": len(grid),
        "valid_pixels": int(mask.sum()),
        "initial_endmembers_used": "model" if from_model else "statistics",
        "endmembers_source": "reestimated" if reestimation else ("model" if from_model else "statistics"),
        "reestimation": reestimation,
        "maps_on_disk": workspace is not None,
        "uncertainty": ("samples" if cfg.samples > 1 else "none") if noise_std is None else
                       ("samples + propagated" if cfg.samples > 1 else "propagated"),
    })
    return PipelineResult(abundances=abundances, endmembers=E.astype(np.float32), rmse=rmse,
                          uncertainty=uncertainty, timings=timings, config=settings,
                          uncertainty_per_endmember=per_endmember)


def _reestimate(scene: Scene, sample: PixelSample, start: np.ndarray, cfg: PipelineConfig,
                keep_dc_weight: bool) -> tuple[np.ndarray, dict[str, Any]]:
    """The endmember engine on pass 1's pixel sample, started from ``start`` (p, B) and put in its
    order; returns the (p, B) float64 E >= 0 and what was done (for the result's config)."""
    pixels = sample.pixels()
    p = start.shape[0]
    if len(pixels) < max(2 * p, MIN_REESTIMATE_SAMPLE):
        raise InputError(f"{scene.source or scene.name}: re-estimating {p} endmembers needs at least "
                         f"{max(2 * p, MIN_REESTIMATE_SAMPLE)} pixels finite in every band, the cube has {len(pixels)}")
    estimate = estimate_endmembers(pixels, p, start=start, seed=cfg.seed)
    order = _order_like(start, estimate.endmembers)
    E = np.maximum(estimate.endmembers[order], 0.0)
    noise_rms = float(np.sqrt(np.mean(estimate.noise ** 2)))
    weight = cfg.dc_weight if keep_dc_weight else dc_weight_for_noise(E, noise_rms)
    return E, {"mode": estimate.mode, "misfit_ratio": float(estimate.misfit_ratio),
               "seconds": float(estimate.details.get("seconds", 0.0)), "sample_size": int(len(pixels)),
               "sample_limit": sample.size, "pixels_used": int(estimate.details.get("pixels_used", len(pixels))),
               "noise_rms": noise_rms, "dc_weight": float(weight),
               "dc_weight_source": "config" if keep_dc_weight else "noise",
               "spread": estimate.spread[order]}
