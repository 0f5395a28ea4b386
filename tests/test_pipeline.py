"""unmix.runtime: the Network protocol, tiling and the two-pass pipeline (numpy only, no torch).

The pipeline's own logic is tested with ANALYTIC networks written here: every one is pixelwise and
has a closed form (a least-squares CNN stand-in, the exact denoiser of a Gaussian prior inside the
fused-step arithmetic), so results can be checked exactly, tiled against untiled pixel for pixel.
The fused-step arithmetic here (:func:`abundance_step_reference`, :func:`spectra_step_reference`) is
the numpy statement of ``unmix.export.steps``; tests/test_fused.py checks the torch modules against it.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from unmix.diffusion.schedule import Coef, Schedule, ddim_coefficients, ddim_timesteps
from unmix.errors import InputError, UsageError
from unmix.io.scene import Scene
from unmix.io.synthetic import synthetic_scene
from unmix.physics.fcls import fcls
from unmix.physics.mixing import endmembers_from_abundances
from unmix.physics.simplex import project_simplex
from unmix.runtime.network import TensorSpec, check_feeds, pipeline_specs
from unmix.runtime.pipeline import PipelineConfig, predict_abundances, run_pipeline
from unmix.io.diskarray import DiskArray
from unmix.runtime.tiling import Blender, blend_window, pad_to_tile, tile_grid, tile_starts

SCHEDULE = Schedule(kind="cosine", T=1000)


# --- the fused-step arithmetic in numpy (float64) ----------------------------------------------------

def lipschitz_bound(gram: np.ndarray, squarings: int = 3) -> float:
    """``max(trace * ||(G / trace)^(2^s)||_F^(1/2^s), 1e-12)`` (unmix.export.steps.spectral_norm_bound)."""
    gram = np.asarray(gram, dtype=np.float64)
    trace = max(float(np.trace(gram)), 1e-12)
    power = gram / trace
    for _ in range(squarings):
        power = power @ power
    return max(trace * float(np.sqrt((power ** 2).sum())) ** (1.0 / 2 ** squarings), 1e-12)


def proximal(gram: np.ndarray, data: np.ndarray, prior: np.ndarray, weight) -> np.ndarray:
    """``(w G / s + I)^-1 (w data / s + prior)``, ``s = trace(G) / p``: the fused steps' proximal data
    consistency (unmix.export.steps), float64; ``data`` and ``prior`` have p rows (any trailing shape)."""
    w = float(np.asarray(weight).reshape(-1)[0])
    p = gram.shape[0]
    s = max(float(np.trace(gram)) / p, 1e-12)
    shape = prior.shape
    solved = np.linalg.solve(w * gram / s + np.eye(p), (w * data / s + prior).reshape(p, -1))
    return solved.reshape(shape)


def simplex_proximal_reference(gram: np.ndarray, endmembers: np.ndarray, cube_pixels: np.ndarray, prior: np.ndarray,
                               weight) -> np.ndarray:
    """``argmin_{a in simplex} w ||y - E^T a||^2 / s + ||a - prior||^2`` (s = trace(E E^T) / p) per pixel,
    exactly, as FCLS of the stacked system ``[sqrt(w / s) E, I]`` against ``[sqrt(w / s) y, prior]``;
    ``cube_pixels`` (n, B), ``prior`` (n, p); float64."""
    w = float(np.asarray(weight).reshape(-1)[0])
    E = np.asarray(endmembers, dtype=np.float64)
    p = E.shape[0]
    c = np.sqrt(w / max(float(np.trace(gram)) / p, 1e-12))
    stacked = np.concatenate([c * E, np.eye(p)], axis=1)
    pixels = np.concatenate([c * np.asarray(cube_pixels, np.float64), np.asarray(prior, np.float64)], axis=1)
    return fcls(pixels, stacked, method="enumerate" if p <= 8 else "auto")


def abundance_step_reference(x_t, out, coef, noise, cube, endmembers, dc_weight) -> np.ndarray:
    """One fused 2D step (unmix.export.steps.AbundanceStep's formulas) in float64; x (N, p, h, w)."""
    c = np.asarray(coef, dtype=np.float64)
    x_t = np.asarray(x_t, dtype=np.float64)
    E = np.asarray(endmembers, dtype=np.float64)
    x0 = c[Coef.X0_FROM_X] * x_t + c[Coef.X0_FROM_OUT] * np.asarray(out, dtype=np.float64)
    a = (x0 + 1.0) / 2.0
    n, p, h, w = a.shape
    pixels = np.asarray(cube, np.float64).transpose(0, 2, 3, 1).reshape(-1, E.shape[1])
    a = simplex_proximal_reference(E @ E.T, E, pixels, a.transpose(0, 2, 3, 1).reshape(-1, p), dc_weight)
    x0 = 2.0 * a.reshape(n, h, w, p).transpose(0, 3, 1, 2) - 1.0
    eps = (x_t - c[Coef.SQRT_ALPHA_BAR_T] * x0) / c[Coef.SQRT_ONE_MINUS_ALPHA_BAR_T]
    return (c[Coef.SQRT_ALPHA_BAR_PREV] * x0 + c[Coef.DIR_COEF] * eps
            + c[Coef.SIGMA] * np.asarray(noise, dtype=np.float64))


def spectra_step_reference(x_t, out, coef, noise, AtA, AtY, scale, dc_weight) -> np.ndarray:
    """One fused 1D step (unmix.export.steps.SpectraStep's formulas) in float64; x (p, 1, B)."""
    c = np.asarray(coef, dtype=np.float64)
    x_t = np.asarray(x_t, dtype=np.float64)
    x0 = c[Coef.X0_FROM_X] * x_t + c[Coef.X0_FROM_OUT] * np.asarray(out, dtype=np.float64)
    s = np.maximum(np.asarray(scale, dtype=np.float64), 1e-12)[:, None]
    spectra = s * (x0[:, 0, :] + 1.0) / 2.0
    AtA = np.asarray(AtA, dtype=np.float64)
    spectra = np.maximum(proximal(AtA, np.asarray(AtY, dtype=np.float64), spectra, dc_weight), 0.0)
    x0 = (2.0 * spectra / s - 1.0)[:, None, :]
    eps = (x_t - c[Coef.SQRT_ALPHA_BAR_T] * x0) / c[Coef.SQRT_ONE_MINUS_ALPHA_BAR_T]
    return (c[Coef.SQRT_ALPHA_BAR_PREV] * x0 + c[Coef.DIR_COEF] * eps
            + c[Coef.SIGMA] * np.asarray(noise, dtype=np.float64))


def output_for_x0(x0_target, x_t, coef) -> np.ndarray:
    """The network output (eps or v, per the table's columns) whose x0_hat is ``x0_target``."""
    c = np.asarray(coef, dtype=np.float64)
    x_t = np.asarray(x_t, np.float64)
    return (np.asarray(x0_target, np.float64) - c[Coef.X0_FROM_X] * x_t) / c[Coef.X0_FROM_OUT]


def gaussian_prior_x0(mean: float | np.ndarray, spread: float):
    """The exact denoiser E[x0 | x_t] of the prior x0 ~ N(mean, spread^2) per value (spread 0: a point)."""
    def denoise(x_t: np.ndarray, coef: np.ndarray) -> np.ndarray:
        sqrt_a, sqrt_1ma = float(coef[Coef.SQRT_ALPHA_BAR_T]), float(coef[Coef.SQRT_ONE_MINUS_ALPHA_BAR_T])
        gain = sqrt_a * spread ** 2 / (sqrt_a ** 2 * spread ** 2 + sqrt_1ma ** 2)
        return mean + gain * (np.asarray(x_t, np.float64) - sqrt_a * mean)
    return denoise


# --- analytic networks -------------------------------------------------------------------------------

class AnalyticNetwork:
    """A Network whose computation is a numpy function of its feeds (a test double for the loop)."""

    def __init__(self, spec, function):
        self.inputs = spec.inputs
        self.outputs = spec.outputs
        self.function = function
        self.calls = 0

    def __call__(self, feeds):
        self.calls += 1
        (name,) = self.outputs
        return {name: np.asarray(self.function(**feeds), dtype=np.float32)}


def least_squares_cnn(endmembers: np.ndarray):
    """HybridSTU stand-in: per pixel, the least-squares abundances for ``endmembers``, projected onto
    the simplex (a pixelwise closed form)."""
    pinv = np.linalg.pinv(np.asarray(endmembers, dtype=np.float64))  # (B, p)

    def run(cube):
        pixels = cube[0].transpose(1, 2, 0).astype(np.float64)             # (T, T, B)
        return project_simplex(pixels @ pinv, axis=-1).transpose(2, 0, 1)[None]
    return run


def prior_abundance_step(denoise):
    """Fused 2D step whose denoiser is ``denoise(x_t, coef) -> x0_hat``."""
    def run(x_t, t, coef, noise, cube, endmembers, dc_weight):
        out = output_for_x0(denoise(x_t, coef), x_t, coef)
        return abundance_step_reference(x_t, out, coef, noise, cube, endmembers, dc_weight)
    return run


def prior_spectra_step(denoise):
    def run(x_t, t, coef, noise, AtA, AtY, scale, dc_weight):
        out = output_for_x0(denoise(x_t, coef), x_t, coef)
        return spectra_step_reference(x_t, out, coef, noise, AtA, AtY, scale, dc_weight)
    return run


def analytic_networks(endmembers, bands, tile, abundance_prior=None, spectra_prior=None, cnn=None):
    p = endmembers.shape[0]
    specs = pipeline_specs(bands, p, tile)
    abundance_prior = abundance_prior or gaussian_prior_x0(2.0 / p - 1.0, 0.5)
    spectra_prior = spectra_prior or gaussian_prior_x0(0.0, 0.6)
    return {
        "hybridstu": AnalyticNetwork(specs["hybridstu"], cnn or least_squares_cnn(endmembers)),
        "abundance_step": AnalyticNetwork(specs["abundance_step"], prior_abundance_step(abundance_prior)),
        "spectra_step": AnalyticNetwork(specs["spectra_step"], prior_spectra_step(spectra_prior)),
    }


def make_scene(height=20, width=23, bands=16, p=3, seed=1, snr_db=40.0) -> Scene:
    rng = np.random.default_rng(seed)
    grid = np.linspace(0.0, 1.0, bands)
    centres = rng.uniform(0.1, 0.9, size=p)
    endmembers = 0.15 + 0.6 * np.exp(-((grid[None] - centres[:, None]) / 0.25) ** 2)
    return synthetic_scene(endmembers, size=(height, width), snr_db=snr_db, seed=seed, length_scale=4.0)


def assert_physical(result, p, bands):
    A, E = result.abundances, result.endmembers
    valid = np.isfinite(A).all(axis=-1)
    assert A.dtype == np.float32 and E.dtype == np.float32 and E.shape == (p, bands)
    assert valid.any()
    assert (A[valid] >= 0).all()
    np.testing.assert_allclose(A[valid].sum(axis=-1), 1.0, atol=1e-5)
    assert (E >= 0).all() and np.isfinite(E).all()
    assert result.rmse.dtype == np.float32 and (result.rmse[valid] >= 0).all()


# --- Network contract and tiling ---------------------------------------------------------------------

def test_pipeline_specs_and_feed_checks():
    specs = pipeline_specs(bands=16, endmembers=3, tile=8)
    assert list(specs["abundance_step"].inputs) == ["x_t", "t", "coef", "noise", "cube", "endmembers", "dc_weight"]
    assert specs["spectra_step"].inputs["AtY"] == TensorSpec((3, 16), "float32")
    assert specs["hybridstu"].outputs["abundances"].shape == (1, 3, 8, 8)
    assert TensorSpec.from_dict(TensorSpec((1, -1), "float16").to_dict()) == TensorSpec((1, -1), "float16")
    assert TensorSpec((1, -1)).accepts(np.zeros((1, 5), np.float32))
    assert not TensorSpec((1, -1)).accepts(np.zeros((1, 5), np.float64))
    net = AnalyticNetwork(specs["hybridstu"], lambda cube: np.zeros((1, 3, 8, 8)))
    with pytest.raises(InputError, match=r"input 'cube' is float32\[1, 16, 8, 7\], expected float32\[1, 16, 8, 8\]"):
        check_feeds("hybridstu", net.inputs, {"cube": np.zeros((1, 16, 8, 7), np.float32)}, "input")
    bad = AnalyticNetwork(specs["hybridstu"], lambda cube: np.zeros((1, 2, 8, 8)))
    with pytest.raises(InputError, match="output 'abundances'"):
        check_feeds("hybridstu", bad.outputs, bad({"cube": np.zeros((1, 16, 8, 8), np.float32)}), "output")
    with pytest.raises(UsageError):
        TensorSpec((0, 3))


def test_tile_layout_and_blending():
    assert tile_starts(5, 8, 2) == [0]
    assert tile_starts(8, 8, 2) == [0]
    assert tile_starts(20, 8, 3) == [0, 5, 10, 12]
    with pytest.raises(UsageError, match="overlap"):
        tile_starts(20, 8, 8)
    grid = tile_grid(20, 5, 8, 3)
    assert {(t.height, t.width) for t in grid} == {(8, 5)}
    window = blend_window(8, 3)
    assert (window > 0).all() and np.allclose(window, window[::-1]) and window[3] == window[4] == 1.0
    np.testing.assert_array_equal(blend_window(6, 0), np.ones(6))
    # Every covering tile returning the same float32 value blends back to exactly that value.
    rng = np.random.default_rng(0)
    image = rng.random((20, 23, 2)).astype(np.float32)
    blender = Blender(20, 23, 2, 8, 3)
    for tile in tile_grid(20, 23, 8, 3):
        blender.add(tile, image[tile.rows, tile.cols])
    np.testing.assert_array_equal(blender.result().astype(np.float32), image)
    padded = pad_to_tile(np.arange(6.0).reshape(2, 3, 1), 4)
    np.testing.assert_array_equal(padded[..., 0], [[0, 1, 2, 2], [3, 4, 5, 5], [3, 4, 5, 5], [3, 4, 5, 5]])


def test_blender_streams_final_rows_in_order_and_holds_one_band():
    rng = np.random.default_rng(1)
    height, width, tile, overlap = 37, 23, 8, 3
    grid = tile_grid(height, width, tile, overlap)
    outputs = {t: rng.random((t.height, t.width, 2)) for t in grid}   # tiles disagree in the overlaps
    whole = Blender(height, width, 2, tile, overlap)
    for t in grid:
        whole.add(t, outputs[t])
    expected = whole.result()
    received = []
    streamed = Blender(height, width, 2, tile, overlap, sink=lambda rows, v: received.append((rows, v.copy())))
    assert streamed._sum.shape == (tile, width, 2)    # one band of T rows, whatever the height
    for t in grid:
        streamed.add(t, outputs[t])
        # Rows above the tile just added are final and handed over; none at or below it.
        assert sum(r.stop - r.start for r, _ in received) == t.row0
    streamed.finish()
    starts = [r.start for r, _ in received]
    assert starts == sorted(starts) and received[0][0].start == 0 and received[-1][0].stop == height
    np.testing.assert_array_equal(np.concatenate([v for _, v in received]), expected)
    with pytest.raises(ValueError, match="row-major"):
        streamed.add(grid[0], outputs[grid[0]])
    with pytest.raises(ValueError, match="sink"):
        streamed.result()
    # A gap between tiles is an error, not silent zeros.
    gappy = Blender(30, 8, 1, 8, 0)
    gappy.add(grid[0].__class__(0, 0, 8, 8), np.ones((8, 8, 1)))
    with pytest.raises(ValueError, match="covered by no tile"):
        gappy.add(grid[0].__class__(20, 0, 8, 8), np.ones((8, 8, 1)))


def test_first_pass_alone_is_the_blended_cnn_output():
    scene = make_scene(height=13, width=21)
    nets = analytic_networks(scene.endmembers, scene.bands, 8)
    events = []
    A0 = predict_abundances(scene, nets["hybridstu"], overlap=3, progress=lambda *e: events.append(e))
    whole = least_squares_cnn(scene.endmembers)(scene.read().transpose(2, 0, 1)[None])[0].transpose(1, 2, 0)
    np.testing.assert_array_equal(A0, whole.astype(np.float32))
    assert events[-1] == ("cnn", len(tile_grid(13, 21, 8, 3)), len(tile_grid(13, 21, 8, 3)))


def test_runtime_never_imports_torch():
    code = ("import sys, unmix.runtime, unmix.runtime.pipeline, unmix.runtime.network, unmix.runtime.tiling;"
            "unmix.runtime.PipelineConfig; assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# --- the pipeline ------------------------------------------------------------------------------------

def test_outputs_are_physical_with_samples_and_rounds():
    scene = make_scene()
    E_true = scene.endmembers
    cfg = PipelineConfig(steps=4, t0=200, eta=0.5, samples=3, rounds=2, tile=8, overlap=3, spectra_steps=3, refine_spectra=True,
                         spectra_t0=100)
    nets = analytic_networks(E_true, scene.bands, 8)
    events = []
    result = run_pipeline(scene, nets, SCHEDULE, cfg, progress=lambda *e: events.append(e))
    assert_physical(result, 3, scene.bands)
    assert result.abundances.shape == (20, 23, 3) and result.rmse.shape == (20, 23)
    # Pixels the simplex pins to a vertex in every sample have no spread; the mixed ones do.
    assert result.uncertainty.shape == (20, 23) and (result.uncertainty >= 0).all()
    assert (result.uncertainty > 0).mean() > 0.5
    per_endmember = result.uncertainty_per_endmember
    assert per_endmember.shape == (20, 23, 3) and per_endmember.dtype == np.float32 and (per_endmember >= 0).all()
    # Blending is linear: the mean over endmembers of the blended spreads is the blended mean spread.
    np.testing.assert_allclose(per_endmember.mean(axis=-1), result.uncertainty, rtol=1e-5, atol=1e-7)
    tiles = len(tile_grid(20, 23, 8, 3))
    assert nets["hybridstu"].calls == tiles
    assert nets["abundance_step"].calls == tiles * 3 * 4 * 2
    assert nets["spectra_step"].calls == 3 * 2
    assert ("cnn", tiles, tiles) in events and ("refine", 2 * tiles, 2 * tiles) in events
    assert ("spectra", 6, 6) in events
    assert result.timings["abundance_step_calls"] == tiles * 24 and result.timings["total_s"] > 0
    assert result.config["timesteps"] == ddim_timesteps(1000, 4, 200).tolist()
    # The reported RMSE is the per-pixel residual of the returned A and E.
    cube = scene.read().astype(np.float64)
    recon = result.abundances.astype(np.float64) @ result.endmembers.astype(np.float64)
    np.testing.assert_allclose(result.rmse, np.sqrt(np.mean((cube - recon) ** 2, axis=-1)), rtol=1e-5, atol=1e-7)


def test_point_prior_step_has_its_closed_form_and_data_consistency_lowers_the_residual():
    """With a point prior (x0_hat = uniform abundances whatever x_t) every step's x0 is one projected
    proximal data-consistency step from the uniform abundances, and the last step returns it: a closed
    form."""
    scene = make_scene(snr_db=None)
    E = scene.endmembers
    p, bands = E.shape
    nets = analytic_networks(E, bands, 8, abundance_prior=gaussian_prior_x0(2.0 / p - 1.0, 0.0))
    common = dict(steps=3, t0=150, tile=8, overlap=2, refine_spectra=False)
    E32 = E.astype(np.float32).astype(np.float64)
    with_dc = run_pipeline(scene, nets, SCHEDULE, PipelineConfig(dc_weight=1.0, **common), endmembers=E)
    without = run_pipeline(scene, nets, SCHEDULE, PipelineConfig(dc_weight=0.0, **common), endmembers=E)
    np.testing.assert_allclose(without.abundances, 1.0 / p, atol=1e-6)
    cube = scene.read().astype(np.float64)
    uniform = np.full(cube.shape[:2] + (p,), 1.0 / p)
    expected = simplex_proximal_reference(E32 @ E32.T, E32, cube.reshape(-1, bands), uniform.reshape(-1, p), 1.0)
    expected = expected.reshape(uniform.shape)
    np.testing.assert_allclose(with_dc.abundances, expected, atol=2e-6)
    assert np.nanmean(with_dc.rmse) < 0.9 * np.nanmean(without.rmse)


def test_data_consistency_lowers_the_residual_over_a_loop():
    scene = make_scene(snr_db=35.0)
    E = scene.endmembers
    # A CNN stand-in that only knows the scene is a mixture: uniform abundances everywhere.
    uniform_cnn = lambda cube: np.full((1, 3, 8, 8), 1.0 / 3.0)  # noqa: E731
    nets = analytic_networks(E, scene.bands, 8, cnn=uniform_cnn)
    residual = {}
    for weight in (0.0, 0.5, 1.0):
        cfg = PipelineConfig(steps=8, t0=400, tile=8, overlap=2, dc_weight=weight, refine_spectra=False)
        result = run_pipeline(scene, nets, SCHEDULE, cfg, endmembers=E)
        assert_physical(result, 3, scene.bands)
        residual[weight] = float(np.nanmean(result.rmse))
    assert residual[1.0] < residual[0.5] < residual[0.0]
    assert residual[1.0] < 0.7 * residual[0.0]


def test_spectra_refinement_has_its_closed_form():
    """Point prior on the spectra at E_init: the refined E is one proximal step from E_init on
    ||Y - A0 E||^2 using only A0^T A0 and A0^T Y (pixel means), clipped at 0."""
    scene = make_scene()
    E = scene.endmembers
    p, bands = E.shape
    E_init = 0.9 * E + 0.02
    scale = E_init.astype(np.float32).max(axis=1).astype(np.float64)
    x0_init = 2.0 * E_init.astype(np.float32) / scale[:, None].astype(np.float32) - 1.0
    nets = analytic_networks(E, bands, 8, spectra_prior=gaussian_prior_x0(x0_init[:, None, :].astype(np.float64), 0.0))
    cfg = PipelineConfig(steps=2, t0=100, tile=8, overlap=2, spectra_steps=4, spectra_t0=100,
                         refine_spectra=True)
    result = run_pipeline(scene, nets, SCHEDULE, cfg, endmembers=E_init)
    A0 = least_squares_cnn(E)(scene.read().transpose(2, 0, 1)[None])[0].transpose(1, 2, 0)
    A0 = A0.astype(np.float32).astype(np.float64).reshape(-1, p)
    Y = scene.read().astype(np.float64).reshape(-1, bands)
    AtA = (A0.T @ A0 / len(A0)).astype(np.float32).astype(np.float64)
    AtY = (A0.T @ Y / len(A0)).astype(np.float32).astype(np.float64)
    start = scale[:, None] * (x0_init + 1.0) / 2.0
    expected = np.maximum(proximal(AtA, AtY, start, 1.0), 0.0)
    np.testing.assert_allclose(result.endmembers, expected, rtol=1e-5, atol=1e-6)
    objective = lambda M: 0.5 * np.sum(M * (AtA @ M)) - np.sum(M * AtY)  # noqa: E731
    assert objective(expected) < objective(E_init)


@pytest.mark.parametrize("tile, overlap", [(8, 3), (5, 0), (12, 5)])
def test_tiled_equals_untiled_exactly_with_pixelwise_networks(tile, overlap):
    scene = make_scene()
    settings = dict(steps=3, t0=200, eta=0.7, samples=2, rounds=2, spectra_steps=2, refine_spectra=True, spectra_t0=60,
                    spectra_eta=0.5, seed=11)
    whole = run_pipeline(scene, analytic_networks(scene.endmembers, scene.bands, 32), SCHEDULE,
                         PipelineConfig(tile=32, overlap=0, **settings))
    tiled = run_pipeline(scene, analytic_networks(scene.endmembers, scene.bands, tile), SCHEDULE,
                         PipelineConfig(tile=tile, overlap=overlap, **settings))
    assert whole.config["tiles"] == 1 and tiled.config["tiles"] > 4
    for name in ("abundances", "endmembers", "rmse", "uncertainty", "uncertainty_per_endmember"):
        np.testing.assert_array_equal(getattr(tiled, name), getattr(whole, name), err_msg=name)


def test_same_seed_is_bit_identical_and_the_seed_matters():
    scene = make_scene(height=11, width=9)
    nets = analytic_networks(scene.endmembers, scene.bands, 8)
    cfg = dict(steps=3, t0=200, eta=1.0, samples=2, tile=8, overlap=2, spectra_steps=2, refine_spectra=True, spectra_t0=50,
               spectra_eta=1.0)
    first = run_pipeline(scene, nets, SCHEDULE, PipelineConfig(seed=5, **cfg))
    again = run_pipeline(scene, nets, SCHEDULE, PipelineConfig(seed=5, **cfg))
    other = run_pipeline(scene, nets, SCHEDULE, PipelineConfig(seed=6, **cfg))
    for name in ("abundances", "endmembers", "rmse", "uncertainty"):
        assert getattr(first, name).tobytes() == getattr(again, name).tobytes(), name
    assert not np.array_equal(first.abundances, other.abundances)
    assert not np.array_equal(first.endmembers, other.endmembers)


@pytest.mark.parametrize("height, width", [(1, 1), (3, 7), (8, 2)])
def test_cubes_smaller_than_a_tile_are_padded(height, width):
    scene = make_scene(height=height, width=width)
    nets = analytic_networks(scene.endmembers, scene.bands, 8)
    result = run_pipeline(scene, nets, SCHEDULE, PipelineConfig(steps=2, t0=100, tile=8, overlap=2,
                                                                samples=2, spectra_steps=2, refine_spectra=True))
    assert result.abundances.shape == (height, width, 3) and result.uncertainty.shape == (height, width)
    assert_physical(result, 3, scene.bands)
    assert nets["hybridstu"].calls == 1


def test_workspace_maps_on_disk_equal_the_in_memory_ones(tmp_path):
    scene = make_scene()
    cube = scene.read()
    cube[2, 3] = np.nan
    masked = Scene.from_array(cube, name="holes")
    cfg = PipelineConfig(steps=3, t0=200, eta=0.3, samples=2, rounds=2, tile=8, overlap=3)
    nets = analytic_networks(scene.endmembers, scene.bands, 8)
    memory = run_pipeline(masked, nets, SCHEDULE, cfg)
    disk = run_pipeline(masked, nets, SCHEDULE, cfg, workspace=tmp_path)
    for name in ("abundances", "rmse", "uncertainty", "uncertainty_per_endmember"):
        on_disk = getattr(disk, name)
        assert isinstance(on_disk, DiskArray) and on_disk.path.parent == tmp_path
        np.testing.assert_array_equal(np.asarray(on_disk), getattr(memory, name))
    np.testing.assert_array_equal(disk.endmembers, memory.endmembers)
    assert np.isnan(np.asarray(disk.abundances)[2, 3]).all()


def test_nan_pixels_are_masked():
    scene = make_scene()
    cube = scene.read()
    cube[2, 3] = np.nan
    cube[10, 0:4, 5] = np.nan            # one band missing makes the pixel invalid
    cube[19, 22] = np.inf
    holes = ~np.isfinite(cube).all(axis=-1)
    masked = Scene.from_array(cube, name="holes")
    cfg = PipelineConfig(steps=3, t0=200, eta=0.3, samples=2, tile=8, overlap=3, spectra_steps=2, refine_spectra=True)
    nets = analytic_networks(scene.endmembers, scene.bands, 8)
    result = run_pipeline(masked, nets, SCHEDULE, cfg)
    assert np.isnan(result.abundances[holes]).all() and np.isnan(result.rmse[holes]).all()
    assert np.isnan(result.uncertainty[holes]).all()
    assert np.isnan(result.uncertainty_per_endmember[holes]).all()
    assert np.isfinite(result.uncertainty_per_endmember[~holes]).all()
    assert np.isfinite(result.abundances[~holes]).all() and np.isfinite(result.rmse[~holes]).all()
    assert result.config["valid_pixels"] == int((~holes).sum())
    assert_physical(result, 3, scene.bands)
    # The statistics leave the holes out: E0 is the NNLS of the valid pixels' statistics.
    A0 = least_squares_cnn(scene.endmembers)(np.nan_to_num(cube, nan=0.0, posinf=0.0).transpose(2, 0, 1)[None])
    A0 = A0[0].transpose(1, 2, 0).astype(np.float32).astype(np.float64)[~holes]
    Y = cube[~holes].astype(np.float64)
    E0 = endmembers_from_abundances(A0.T @ A0, A0.T @ Y)
    fixed = run_pipeline(masked, nets, SCHEDULE, PipelineConfig(steps=1, t0=50, tile=8, overlap=3,
                                                                refine_spectra=False))
    np.testing.assert_allclose(fixed.endmembers, E0, rtol=1e-5, atol=1e-6)
    assert fixed.uncertainty is None and fixed.uncertainty_per_endmember is None   # one sample
    # Pixelwise networks and a fixed E: valid pixels come out as they do without the holes.
    clean = run_pipeline(scene, nets, SCHEDULE, PipelineConfig(steps=3, t0=200, tile=8, overlap=3,
                                                               refine_spectra=False), endmembers=scene.endmembers)
    holed = run_pipeline(masked, nets, SCHEDULE, PipelineConfig(steps=3, t0=200, tile=8, overlap=3,
                                                                refine_spectra=False), endmembers=scene.endmembers)
    np.testing.assert_array_equal(holed.abundances[~holes], clean.abundances[~holes])


def test_contract_errors_are_one_clear_sentence():
    scene = make_scene(height=6, width=6)
    nets = analytic_networks(scene.endmembers, scene.bands, 8)
    with pytest.raises(UsageError, match="built for 8x8 tiles, but the tile setting is 16"):
        run_pipeline(scene, nets, SCHEDULE, PipelineConfig(tile=16, overlap=4))
    wrong_bands = analytic_networks(np.ones((3, 12)), 12, 8)
    with pytest.raises(InputError, match="the cube has 16 bands, the networks expect 12"):
        run_pipeline(scene, wrong_bands, SCHEDULE, PipelineConfig(tile=8, overlap=2))
    with pytest.raises(UsageError, match="needs the network 'spectra_step'"):
        run_pipeline(scene, {k: v for k, v in nets.items() if k != "spectra_step"}, SCHEDULE,
                     PipelineConfig(tile=8, overlap=2, refine_spectra=True))
    with pytest.raises(UsageError, match="K \\(DDIM steps\\) must be <= t0 \\+ 1"):
        run_pipeline(scene, nets, SCHEDULE, PipelineConfig(tile=8, overlap=2, steps=20, t0=5))
    with pytest.raises(UsageError, match="overlap must be smaller than tile"):
        PipelineConfig(tile=8, overlap=8)
    with pytest.raises(UsageError, match="unknown inference setting 'stepz'"):
        PipelineConfig.from_dict({"stepz": 3})
    # the seed travels as a double (JSON, the C ABI): every integer up to 2^53 and none above
    assert PipelineConfig(seed=2**53).seed == 2**53
    with pytest.raises(UsageError, match="seed must be an integer >= 0 and <= 9007199254740992"):
        PipelineConfig(seed=2**53 + 1)
    assert PipelineConfig.from_dict({"steps": 5, "t0": 100, "eta": 0, "samples": 1, "rounds": 1, "tile": 32},
                                    overlap=4).to_dict()["overlap"] == 4
    empty = Scene.from_array(np.full((4, 4, 16), np.nan, np.float32), name="empty")
    with pytest.raises(InputError, match="no pixel is finite"):
        run_pipeline(empty, nets, SCHEDULE, PipelineConfig(tile=8, overlap=2))


def test_coefficient_table_drives_both_parametrisations():
    """The analytic step reads only the table, so a v-prediction schedule gives the same physics."""
    scene = make_scene(height=7, width=6)
    nets = analytic_networks(scene.endmembers, scene.bands, 8)
    cfg = PipelineConfig(steps=3, t0=200, tile=8, overlap=2, spectra_steps=2, refine_spectra=True)
    eps = run_pipeline(scene, nets, Schedule(kind="cosine", prediction="epsilon"), cfg)
    v = run_pipeline(scene, nets, Schedule(kind="cosine", prediction="v"), cfg)
    np.testing.assert_allclose(v.abundances, eps.abundances, atol=1e-5)
    np.testing.assert_allclose(v.endmembers, eps.endmembers, rtol=1e-5, atol=1e-6)
    coefs = ddim_coefficients(SCHEDULE, ddim_timesteps(1000, 3, 200)).as_table()
    last = coefs[-1]
    assert last[Coef.SQRT_ALPHA_BAR_PREV] == 1.0 and last[Coef.DIR_COEF] == 0.0 and last[Coef.SIGMA] == 0.0


# --- re-estimating the endmembers on a new cube (run_pipeline(reestimate=N)) --------------------------

def _scene_with_holes(**kwargs) -> Scene:
    """make_scene with a few pixels NaN in one band (invalid: never sampled)."""
    scene = make_scene(**kwargs)
    cube = scene.read()
    cube[::7, ::5, 2] = np.nan
    return Scene.from_array(cube, name="holes", endmembers=scene.endmembers, abundances=scene.abundances)


def test_pixel_sample_is_the_smallest_keys_whatever_the_tiling():
    from unmix.diffusion.noise import STREAM_PIXEL_SAMPLE, uniform_uint32
    from unmix.runtime.pipeline import PixelSample

    scene = _scene_with_holes(height=21, width=23)
    cube = scene.read()
    valid = np.isfinite(cube).all(axis=-1)
    H, W, _ = cube.shape
    # The oracle: every pixel's key at once, the 150 smallest among the valid ones.
    words = uniform_uint32(9, STREAM_PIXEL_SAMPLE, 0, 0, np.arange(H), np.arange(W), 1)[:, :, 0].astype(np.uint64)
    keys = ((words[..., 0] << np.uint64(32)) | words[..., 1])[valid]
    rows, cols = np.nonzero(valid)
    expected = np.stack([rows, cols], axis=1)[np.argsort(keys, kind="stable")[:150]]
    samples = []
    for tile, overlap in [(8, 3), (5, 0), (16, 15), (64, 0)]:
        sample = PixelSample(150, W, seed=9)
        for window in tile_grid(H, W, tile, overlap):
            part = cube[window.rows, window.cols]
            sample.add(window.row0, window.col0, np.nan_to_num(part), np.isfinite(part).all(axis=-1))
        samples.append(sample)
        np.testing.assert_array_equal(sample.coordinates(), expected)
        np.testing.assert_array_equal(sample.pixels(), cube[expected[:, 0], expected[:, 1]])
    assert len(samples[0].pixels()) == 150 and np.isfinite(samples[0].pixels()).all()
    # More room than valid pixels: every valid pixel once.
    everything = PixelSample(10_000, W, seed=9)
    for window in tile_grid(H, W, 8, 3):
        part = cube[window.rows, window.cols]
        everything.add(window.row0, window.col0, np.nan_to_num(part), np.isfinite(part).all(axis=-1))
    assert len(everything.pixels()) == valid.sum()
    assert len({tuple(c) for c in everything.coordinates()}) == valid.sum()
    with pytest.raises(UsageError, match="reestimate"):
        PixelSample(99, W, seed=0)


def test_reestimated_endmembers_beat_a_model_from_another_scene():
    """The "model" knows the truth's endmembers perturbed by up to 20 % per band (trained elsewhere);
    re-estimating on the cube comes closer to the truth in angle and in abundances, the same for two
    tilings, and keeps the outputs physical."""
    from unmix.physics.metrics import abundance_rmse, sad_degrees

    scene = _scene_with_holes(height=40, width=40, bands=16, p=3, seed=3, snr_db=35.0)
    E_true = scene.endmembers
    E_model = E_true * (1.0 + np.random.default_rng(7).uniform(-0.2, 0.2, size=E_true.shape))
    results = {}
    for tile, overlap in [(8, 3), (16, 5)]:
        nets = analytic_networks(E_model, scene.bands, tile)
        cfg = PipelineConfig(steps=3, t0=100, tile=tile, overlap=overlap)
        for reestimate in (None, 400):
            results[tile, reestimate] = run_pipeline(scene, nets, SCHEDULE, cfg, endmembers=E_model,
                                                     reestimate=reestimate)
    model, new = results[8, None], results[8, 400]
    for result in (model, new):
        assert_physical(result, 3, scene.bands)
    assert model.config["endmembers_source"] == "model" and model.config["reestimation"] is None
    assert new.config["endmembers_source"] == "reestimated"
    info = new.config["reestimation"]
    assert info["sample_size"] == 400 and info["mode"] in ("minimum_volume", "pixels")
    assert info["dc_weight_source"] == "noise" and new.config["dc_weight"] == info["dc_weight"] > 0
    sad_model = sad_degrees(model.endmembers, E_true).mean()       # rows stay in the model's order
    sad_new = sad_degrees(new.endmembers, E_true).mean()
    assert sad_new < 0.5 * sad_model
    valid = np.isfinite(new.abundances).all(axis=-1)
    rmse_model = abundance_rmse(model.abundances[valid], scene.abundances[valid])
    rmse_new = abundance_rmse(new.abundances[valid], scene.abundances[valid])
    assert rmse_new < 0.7 * rmse_model
    # The sample, hence E, does not depend on the tiling.
    np.testing.assert_array_equal(results[16, 400].endmembers, new.endmembers)
    # A weight the caller chose is kept.
    kept = run_pipeline(scene, analytic_networks(E_model, scene.bands, 8), SCHEDULE,
                        PipelineConfig(steps=3, t0=100, tile=8, overlap=3, dc_weight=50.0), endmembers=E_model,
                        reestimate=400, keep_dc_weight=True)
    assert kept.config["dc_weight"] == 50.0 and kept.config["reestimation"]["dc_weight_source"] == "config"
    np.testing.assert_array_equal(kept.endmembers, new.endmembers)
