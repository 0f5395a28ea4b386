"""unmix.export.steps (the fused DDIM step modules), unmix.train.fused (the torch Network adapter), and
their export.

The fused steps are checked against the explicit numpy reference (``unmix.diffusion.reference`` in
float64: x0 from the network output, the data-consistency step and the projection written out, the
noise recomputed from the edited x0, then ``ddim_step``), to 1e-5.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from unmix.diffusion.reference import ddim_step, eps_from_x0, v_target, x0_from_eps, x0_from_v
from unmix.diffusion.schedule import Coef, Schedule, ddim_coefficients, ddim_timesteps
from unmix.errors import InputError, UsageError
from unmix.physics.simplex import project_simplex as project_simplex_numpy
from unmix.runtime.network import pipeline_specs
from unmix.runtime.pipeline import PipelineConfig, predict_abundances, run_pipeline
from unmix.runtime.tiling import tile_grid
from unmix.train.checkpoint import save_checkpoint
from unmix.runtime.pipeline import MAX_DC_WEIGHT
from unmix.export.steps import (
    AbundanceStep,
    SpectraStep,
    fused_modules,
    project_simplex,
    proximal_solve,
    simplex_proximal,
    spd_inverse,
    spectral_norm_bound,
)
from unmix.train.fused import TorchNetwork, example_inputs, load_torch_networks
from unmix.train.models import HybridSTU, ResUNet
from tests.test_pipeline import assert_physical, lipschitz_bound, make_scene, proximal, simplex_proximal_reference


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These networks are tiny: one intra-op thread is faster, and immune to a busy second core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def randomised(module: torch.nn.Module, seed: int, std: float = 0.05) -> torch.nn.Module:
    """Give the zero-initialised output layers random weights, so the network's output is not 0."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            if not parameter.abs().sum():
                parameter.copy_(std * torch.randn(parameter.shape, generator=gen))
    return module.eval()


def tiny_unet(dims: int, channels: int, seed: int = 0) -> ResUNet:
    torch.manual_seed(seed)
    return randomised(ResUNet(dims=dims, in_channels=channels, base_channels=8, channel_mult=(1, 2)), seed)


def reference_step(schedule: Schedule, coefficients, i: int, x_t, out, noise, edit) -> np.ndarray:
    """The explicit DDIM step with an x0 edit, all float64: x0 from ``out`` (x0_from_eps / x0_from_v),
    ``edit`` (data consistency + constraint), eps from the edited x0, the network output that x0 and eps
    imply, then ``ddim_step``."""
    x_t = np.asarray(x_t, dtype=np.float64)
    t = np.full(x_t.shape[0], coefficients.timesteps[i])
    if schedule.prediction == "epsilon":
        x0 = x0_from_eps(x_t, t, out, schedule)
    else:
        x0 = x0_from_v(x_t, t, out, schedule)
    x0 = edit(x0)
    eps = eps_from_x0(x_t, t, x0, schedule)
    implied = eps if schedule.prediction == "epsilon" else v_target(x0, t, eps, schedule)
    return ddim_step(x_t, implied, coefficients, i, noise)


def abundance_edit(cube: np.ndarray, endmembers: np.ndarray, dc_weight: float):
    E = endmembers.astype(np.float64)

    def edit(x0):
        a = (x0 + 1.0) / 2.0                                    # (N, p, h, w)
        n, p, h, w = a.shape
        pixels = cube.astype(np.float64).transpose(0, 2, 3, 1).reshape(-1, E.shape[1])
        a = simplex_proximal_reference(E @ E.T, E, pixels, a.transpose(0, 2, 3, 1).reshape(-1, p), dc_weight)
        return 2.0 * a.reshape(n, h, w, p).transpose(0, 3, 1, 2) - 1.0
    return edit


def spectra_edit(AtA: np.ndarray, AtY: np.ndarray, scale: np.ndarray, dc_weight: float):
    def edit(x0):
        s = scale.astype(np.float64)[:, None]
        spectra = s * (x0[:, 0, :] + 1.0) / 2.0
        spectra = np.maximum(proximal(AtA, AtY, spectra, dc_weight), 0.0)
        return (2.0 * spectra / s - 1.0)[:, None, :]
    return edit


def test_spectral_norm_bound_and_projection():
    rng = np.random.default_rng(0)
    for p in (2, 3, 6, 9):
        M = rng.random((p, 40))
        gram = M @ M.T
        bound = float(spectral_norm_bound(torch.tensor(gram, dtype=torch.float32)))
        top = np.linalg.eigvalsh(gram).max()
        assert top * (1 - 1e-6) <= bound <= p ** (1 / 16) * top
        assert bound == pytest.approx(lipschitz_bound(gram), rel=1e-5)
    assert float(spectral_norm_bound(torch.zeros(3, 3))) == pytest.approx(1e-12)
    # All-zero endmembers: a zero gradient, not 0 / 0.
    step = AbundanceStep(tiny_unet(2, 2), 2)
    table = ddim_coefficients(Schedule(), ddim_timesteps(1000, 2, 100)).as_table()
    with torch.no_grad():
        out = step(torch.zeros(1, 2, 4, 4), torch.tensor([100.0]), torch.from_numpy(table[0]), torch.zeros(1, 2, 4, 4),
                   torch.zeros(1, 5, 4, 4), torch.zeros(2, 5), torch.ones(1))
    assert torch.isfinite(out).all()
    values = rng.normal(scale=2.0, size=(4, 5, 3, 2)).astype(np.float32)
    values[0, :, 0, 0] = 0.2                                       # ties
    values[1, :, 0, 0] = [50.0, -50.0, 3.0, 3.0, 0.0]
    projected = project_simplex(torch.from_numpy(values), dim=1).numpy()
    np.testing.assert_allclose(projected, project_simplex_numpy(values.astype(np.float64), axis=1), atol=1e-6)
    assert (projected >= 0).all()
    np.testing.assert_allclose(projected.sum(axis=1), 1.0, atol=1e-6)


def test_spd_inverse_reaches_float32_accuracy_up_to_the_largest_weight():
    """The in-graph Newton-Schulz inverse of the proximal matrix w G / s + I, for the condition numbers
    the data-consistency weights allow (up to 1 + MAX_DC_WEIGHT p), with nearly collinear spectra."""
    rng = np.random.default_rng(3)
    for p in (2, 3, 6, 9):
        base = rng.random(50)
        E = base + 0.02 * rng.normal(size=(p, 50))            # nearly collinear: G badly conditioned
        gram = E @ E.T
        for weight in (1.0, 30.0, MAX_DC_WEIGHT):
            matrix = weight * gram / (np.trace(gram) / p) + np.eye(p)
            inverse = spd_inverse(torch.tensor(matrix, dtype=torch.float32)).double().numpy()
            assert np.abs(inverse @ matrix - np.eye(p)).max() < 1e-5 * (1 + weight * p), (p, weight)
            # The solve (with its refinement step) is as accurate as float32 and the conditioning allow.
            data, prior = rng.normal(size=(p, 7)), rng.normal(size=(p, 7))
            solved = proximal_solve(torch.tensor(gram, dtype=torch.float32), torch.tensor([weight]),
                                    torch.tensor(data, dtype=torch.float32), torch.tensor(prior, dtype=torch.float32))
            exact = proximal(gram, data, prior, weight)
            error = np.abs(solved.double().numpy() - exact).max() / np.abs(exact).max()
            assert error < 1e-6 + 1e-7 * (1 + weight * p), (p, weight, error)   # ~ eps32 * cond


def test_simplex_proximal_reaches_the_constrained_minimiser_for_correlated_endmembers():
    """ADMM's fixed iterations against the exact minimiser (FCLS of the stacked system), for spectra as
    correlated as real ones (condition number of E E^T ~1e4) and every weight up to the largest; the
    projection of the unconstrained minimiser, the step's former edit, is far off here."""
    rng = np.random.default_rng(3)
    p, bands, n = 4, 60, 3000
    base = np.linspace(0.2, 0.6, bands)
    E = np.stack([base * (1 + 0.15 * k) + 0.03 * np.sin(np.linspace(0, (k + 1) * 3.0, bands)) for k in range(p)])
    truth = rng.dirichlet(np.full(p, 0.7), size=n)
    cube = truth @ E + rng.normal(0, 0.005, (n, bands))
    prior = np.clip(truth + rng.normal(0, 0.1, truth.shape), 0, 1)
    gram = torch.tensor(E @ E.T, dtype=torch.float32)
    data = torch.tensor((cube @ E.T).T, dtype=torch.float32)
    assert np.linalg.cond(E @ E.T) > 1e3
    for weight in (0.0, 1.0, 30.0, MAX_DC_WEIGHT):
        exact = simplex_proximal_reference(E @ E.T, E, cube, prior, weight)
        with torch.no_grad():
            solved = simplex_proximal(gram, torch.tensor([weight]), data, torch.tensor(prior.T, dtype=torch.float32))
        solved = solved.double().numpy().T
        assert solved.min() >= 0 and np.abs(solved.sum(axis=1) - 1).max() < 1e-5
        assert np.abs(solved - exact).max() < 1e-2, weight
        assert np.sqrt(np.mean((solved - exact) ** 2)) < 1e-3, weight
        unconstrained = proximal(E @ E.T, (cube @ E.T).T, prior.T, weight).T
        projected = project_simplex_numpy(unconstrained, axis=1)
        if weight >= 30:
            assert np.abs(projected - exact).max() > 0.05    # the former edit was not the minimiser


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_abundance_step_equals_the_explicit_reference(prediction):
    schedule = Schedule(kind="cosine", T=1000, prediction=prediction)
    coefficients = ddim_coefficients(schedule, ddim_timesteps(1000, 10, 300), eta=0.5)
    table = coefficients.as_table()
    p, bands, size = 3, 12, 16
    step = AbundanceStep(tiny_unet(2, p), p)
    rng = np.random.default_rng(1)
    endmembers = rng.uniform(0.05, 0.8, size=(p, bands)).astype(np.float32)
    truth = rng.dirichlet(np.ones(p), size=(2, size, size)).transpose(0, 3, 1, 2)
    cube = (np.einsum("nphw,pb->nbhw", truth, endmembers) + rng.normal(0, 0.01, (2, bands, size, size)))
    cube = cube.astype(np.float32)
    for i in (0, 4, 9):
        x_t = rng.normal(size=(2, p, size, size)).astype(np.float32)
        noise = rng.normal(size=x_t.shape).astype(np.float32)
        t = np.full(2, coefficients.timesteps[i], dtype=np.float32)
        inputs = [torch.from_numpy(a) for a in (x_t, t, table[i], noise, cube, endmembers)]
        inputs.append(torch.tensor([0.8]))
        with torch.no_grad():
            fused = step(*inputs).numpy()
            out = step.unet(inputs[0], inputs[1]).double().numpy()
        expected = reference_step(schedule, coefficients, i, x_t, out, noise, abundance_edit(cube, endmembers, 0.8))
        np.testing.assert_allclose(fused, expected, atol=1e-5, rtol=0, err_msg=f"step {i}")
        assert np.abs(fused - expected).max() > 0 or i == 9   # a real comparison, not two zeros
        if i == 9:  # the last step: alpha_bar_prev = 1, so x_prev is the projected x0_hat itself
            row = table[i]
            assert (row[Coef.SQRT_ALPHA_BAR_PREV], row[Coef.DIR_COEF], row[Coef.SIGMA]) == (1.0, 0.0, 0.0)
            abundances = (fused + 1.0) / 2.0
            assert abundances.min() >= 0.0
            np.testing.assert_allclose(abundances.sum(axis=1), 1.0, atol=1e-6)
            with torch.no_grad():
                out = step.unet(inputs[0], inputs[1])
                x0_hat = table[i, Coef.X0_FROM_X] * inputs[0] + table[i, Coef.X0_FROM_OUT] * out
                a = ((x0_hat + 1) / 2).reshape(2, p, -1)
                a = simplex_proximal(inputs[5] @ inputs[5].T, inputs[6], inputs[5] @ inputs[4].reshape(2, bands, -1), a)
                x0_new = 2 * a.reshape(2, p, size, size) - 1
                other_noise = step(*inputs[:3], torch.randn(x_t.shape), *inputs[4:]).numpy()
            np.testing.assert_allclose(fused, x0_new.numpy(), atol=1e-6, rtol=0)
            np.testing.assert_array_equal(other_noise, fused)     # sigma = 0: the noise is not used


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_spectra_step_equals_the_explicit_reference(prediction):
    schedule = Schedule(kind="linear", T=500, prediction=prediction)
    coefficients = ddim_coefficients(schedule, ddim_timesteps(500, 6, 150), eta=1.0)
    table = coefficients.as_table()
    p, bands = 4, 20
    step = SpectraStep(tiny_unet(1, 1, seed=3))
    rng = np.random.default_rng(2)
    A = rng.dirichlet(np.ones(p), size=300)
    E = rng.uniform(0.0, 0.6, size=(p, bands))
    Y = A @ E + rng.normal(0, 0.01, (300, bands))
    AtA = (A.T @ A / 300).astype(np.float32)
    AtY = (A.T @ Y / 300).astype(np.float32)
    scale = E.max(axis=1).astype(np.float32)
    for i in range(6):
        x_t = rng.normal(size=(p, 1, bands)).astype(np.float32)
        noise = rng.normal(size=x_t.shape).astype(np.float32)
        t = np.full(p, coefficients.timesteps[i], dtype=np.float32)
        inputs = [torch.from_numpy(a) for a in (x_t, t, table[i], noise, AtA, AtY, scale)] + [torch.tensor([1.0])]
        with torch.no_grad():
            fused = step(*inputs).numpy()
            out = step.unet(inputs[0], inputs[1]).double().numpy()
        edit = spectra_edit(AtA.astype(np.float64), AtY.astype(np.float64), scale, 1.0)
        expected = reference_step(schedule, coefficients, i, x_t, out, noise, edit)
        np.testing.assert_allclose(fused, expected, atol=1e-5, rtol=0, err_msg=f"step {i}")
    spectra = scale[:, None] * (fused[:, 0, :] + 1.0) / 2.0   # the last step: E = x0, non-negative
    assert spectra.min() >= -1e-7


def test_torch_network_adapter_and_module_checks():
    torch.manual_seed(0)
    specs = pipeline_specs(bands=10, endmembers=3, tile=8)
    network = TorchNetwork(HybridSTU(10, 3, reduced_bands=6, width=4), specs["hybridstu"].inputs,
                           specs["hybridstu"].outputs)
    cube = np.random.default_rng(0).random((1, 10, 8, 8)).astype(np.float32)
    out = network({"cube": cube})["abundances"]
    assert out.dtype == np.float32 and out.shape == (1, 3, 8, 8) and out.flags.owndata
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-6)
    with pytest.raises(InputError, match="input 'cube' is missing"):
        network({})
    with pytest.raises(UsageError, match="has 2 channels, expected 3"):
        AbundanceStep(tiny_unet(2, 2), 3)
    with pytest.raises(UsageError, match="1 channel"):
        SpectraStep(tiny_unet(1, 2))
    inputs = example_inputs(specs["abundance_step"])
    assert [tuple(x.shape) for x in inputs][:2] == [(1, 3, 8, 8), (1,)]


# --- a checkpoint through the pipeline -----------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A checkpoint of small random networks, laid out as unmix.train.fit writes one."""
    torch.manual_seed(0)
    bands, p = 16, 3
    models = {"hybridstu": HybridSTU(bands, p, reduced_bands=8, width=4),
              "spectra": tiny_unet(1, 1, seed=1), "abundance": tiny_unet(2, p, seed=2)}
    scene = make_scene(height=20, width=18, bands=bands, p=p)
    config = {"train": {"inference": {"steps": 4, "t0": 200, "eta": 0.0, "samples": 1, "rounds": 1, "tile": 16}},
              "schedule": Schedule(kind="cosine", T=1000).to_config(),
              "sensor": {"bands": bands, "wavelengths": None},
              "endmembers": {"count": p, "names": ["a", "b", "c"], "estimated": scene.endmembers.tolist()}}
    folder = save_checkpoint(tmp_path_factory.mktemp("ckpt") / "run", models, config)
    return folder, scene


def test_pipeline_runs_end_to_end_over_torch_networks(checkpoint):
    folder, scene = checkpoint
    networks, config = load_torch_networks(folder, tile=16)
    assert set(networks) == {"hybridstu", "abundance_step", "spectra_step"}
    schedule = Schedule.from_config(config["schedule"])
    cfg = PipelineConfig.from_dict(config["train"]["inference"], steps=3, overlap=6, samples=2, eta=0.5, rounds=2,
                                   spectra_steps=3, refine_spectra=True, spectra_t0=100)
    result = run_pipeline(scene, networks, schedule, cfg)
    assert_physical(result, 3, scene.bands)
    assert result.uncertainty.shape == scene.shape[:2] and np.isfinite(result.uncertainty).all()
    assert result.timings["abundance_step_calls"] == result.config["tiles"] * 3 * 2 * 2
    again = run_pipeline(scene, networks, schedule, cfg)
    assert again.abundances.tobytes() == result.abundances.tobytes()


def test_hybridstu_tiled_equals_untiled_away_from_seams(checkpoint):
    """HybridSTU is local (receptive field 2 (depth3d + depth2d) + 1 = 11 pixels): a pixel at least 5
    pixels inside every tile that covers it (image edges aside) gets the untiled value up to float32
    rounding; the blend keeps the seams close too."""
    folder, _ = checkpoint
    scene = make_scene(height=40, width=40, bands=16, p=3, seed=4)
    whole_nets, _ = load_torch_networks(folder, tile=40)
    tiled_nets, _ = load_torch_networks(folder, tile=16)
    whole = predict_abundances(scene, whole_nets["hybridstu"], overlap=0)
    tiled = predict_abundances(scene, tiled_nets["hybridstu"], overlap=6)
    config = tiled_nets["hybridstu"].module.config()
    radius = config["depth3d"] + config["depth2d"]
    far = np.ones((40, 40), dtype=bool)
    for tile in tile_grid(40, 40, 16, 6):
        inside = np.zeros_like(far)
        r0 = tile.row0 + (radius if tile.row0 > 0 else 0)
        r1 = tile.row0 + tile.height - (radius if tile.row0 + tile.height < 40 else 0)
        c0 = tile.col0 + (radius if tile.col0 > 0 else 0)
        c1 = tile.col0 + tile.width - (radius if tile.col0 + tile.width < 40 else 0)
        inside[r0:r1, c0:c1] = True
        covered = np.zeros_like(far)
        covered[tile.rows, tile.cols] = True
        far &= ~covered | inside
    difference = np.abs(whole - tiled).max(axis=-1)
    assert far.sum() >= 400 and (~far).sum() >= 400
    assert difference[far].max() < 1e-5
    assert difference[~far].mean() < 2e-2


def test_pipeline_tiled_matches_untiled_within_tolerance(checkpoint):
    """The 2D UNet normalises with GroupNorm statistics over the whole tile, so its output at every
    pixel depends on the tile it sits in: with real networks a tiled run matches an untiled one only
    to a tolerance (measured with these random networks on a 30x27 scene, 16-pixel tiles with
    overlap 6 vs one 32-pixel tile: mean 0.018, max 0.081 in abundance)."""
    folder, _ = checkpoint
    scene = make_scene(height=30, width=27, bands=16, p=3)
    settings = dict(steps=4, t0=200, refine_spectra=False)
    E = scene.endmembers
    whole_nets, config = load_torch_networks(folder, tile=32)
    tiled_nets, _ = load_torch_networks(folder, tile=16)
    schedule = Schedule.from_config(config["schedule"])
    whole = run_pipeline(scene, whole_nets, schedule, PipelineConfig(tile=32, overlap=0, **settings), endmembers=E)
    tiled = run_pipeline(scene, tiled_nets, schedule, PipelineConfig(tile=16, overlap=6, **settings), endmembers=E)
    difference = np.abs(whole.abundances - tiled.abundances).max(axis=-1)
    print(f"tiled vs untiled: max {difference.max():.2e}, mean {difference.mean():.2e}")
    assert 0 < difference.mean() < 3e-2 and difference.max() < 0.15


@pytest.mark.filterwarnings("ignore::FutureWarning")   # raised inside torch's exporter
def test_onnx_export_of_the_abundance_step_matches_torch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    p, bands, tile = 3, 12, 16
    step = AbundanceStep(tiny_unet(2, p, seed=4), p).eval()
    spec = pipeline_specs(bands, p, tile)["abundance_step"]
    schedule = Schedule(kind="cosine", T=1000)
    table = ddim_coefficients(schedule, ddim_timesteps(1000, 10, 300), eta=0.5).as_table()
    rng = np.random.default_rng(5)
    feeds = {"x_t": rng.normal(size=(1, p, tile, tile)), "t": np.array([300.0]),
             "coef": table[0], "noise": rng.normal(size=(1, p, tile, tile)),
             "cube": rng.uniform(0, 0.6, (1, bands, tile, tile)), "endmembers": rng.uniform(0, 0.8, (p, bands)),
             "dc_weight": np.array([1.0])}
    feeds = {name: np.asarray(value, dtype=np.float32) for name, value in feeds.items()}
    path = tmp_path / "abundance_step.onnx"
    torch.onnx.export(step, example_inputs(spec), str(path), input_names=list(spec.inputs), output_names=["x_prev"],
                      dynamo=True, opset_version=20, external_data=False, verbose=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, feeds)
    with torch.no_grad():
        torch_out = step(*(torch.from_numpy(feeds[name]) for name in spec.inputs)).numpy()
    np.testing.assert_allclose(onnx_out, torch_out, atol=1e-4, rtol=0)
    assert [i.name for i in session.get_inputs()] == list(spec.inputs)


def test_fused_modules_need_every_network():
    with pytest.raises(InputError, match="lacks the network 'spectra'"):
        fused_modules({"hybridstu": HybridSTU(8, 2, reduced_bands=4, width=4), "abundance": tiny_unet(2, 2)})
