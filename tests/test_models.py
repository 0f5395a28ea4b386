"""unmix.train.models and unmix.train.ddpm: shapes, constraints, dtypes, training signal, ONNX export."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from unmix.diffusion.schedule import Schedule
from unmix.diffusion import reference as np_schedule
from unmix.errors import UsageError
from unmix.train import ddpm, models
from unmix.train.ddpm import EMA, diffusion_loss, mse_loss, sam_loss
from unmix.train.models import HybridSTU, ResUNet, count_parameters, flops_per_call, timestep_embedding


def _randomise(module: torch.nn.Module, seed: int = 0, std: float = 0.1) -> torch.nn.Module:
    """Replace every parameter with N(0, std) so zero-initialised layers do not hide errors."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return module


# --- HybridSTU ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("height, width", [(1, 1), (2, 3), (7, 5), (37, 45), (64, 64)])
def test_hybridstu_any_tile_size_gives_abundances_on_the_simplex(height, width):
    torch.manual_seed(0)
    model = HybridSTU(bands=30, endmembers=4, reduced_bands=16, width=4)
    abundances = model(torch.rand(2, 30, height, width))
    assert abundances.shape == (2, 4, height, width) and abundances.dtype == torch.float32
    assert (abundances >= 0).all()
    torch.testing.assert_close(abundances.sum(1), torch.ones(2, height, width), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kwargs", [
    {"reduced_bands": None, "width": 4},
    {"reduced_bands": 8, "width": 2, "depth3d": 1, "depth2d": 1},
    {"reduced_bands": 5, "width": 3, "depth3d": 4, "depth2d": 3},
])
def test_hybridstu_variants(kwargs):
    model = HybridSTU(bands=12, endmembers=3, **kwargs)
    assert model(torch.rand(1, 12, 9, 6)).shape == (1, 3, 9, 6)
    assert HybridSTU(**model.config()).config() == model.config()


def test_hybridstu_fast_conv3d_path_matches_the_plain_one(monkeypatch):
    torch.manual_seed(0)
    model = HybridSTU(bands=40, endmembers=3, reduced_bands=16, width=4)
    x = torch.rand(1, 40, 11, 9)
    fast = model(x)
    fast.square().sum().backward()
    fast_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    monkeypatch.setattr(models, "_plain_eager_cpu", lambda x: False)
    plain = model(x)
    plain.square().sum().backward()
    torch.testing.assert_close(fast, plain, atol=1e-6, rtol=1e-5)
    for a, p in zip(fast_grads, model.parameters()):
        torch.testing.assert_close(a, p.grad, atol=1e-5, rtol=1e-4)


def test_hybridstu_refuses_bad_arguments():
    with pytest.raises(UsageError, match="endmembers"):
        HybridSTU(bands=10, endmembers=1)
    with pytest.raises(UsageError, match="reduced_bands must be <= bands"):
        HybridSTU(bands=10, endmembers=3, reduced_bands=11)


def test_hybridstu_fp16_keeps_the_softmax_float32():
    model = HybridSTU(bands=12, endmembers=3, reduced_bands=8, width=4).half()
    abundances = model(torch.rand(1, 12, 5, 7).half())
    assert abundances.dtype == torch.float32
    torch.testing.assert_close(abundances.sum(1), torch.ones(1, 5, 7), atol=1e-5, rtol=0)


def test_hybridstu_learns_a_synthetic_mixture_with_sam_and_mse():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    bands, p = 16, 3
    endmembers = torch.rand(p, bands, generator=gen) + 0.1
    labels = torch.softmax(3 * torch.randn(4, p, 8, 8, generator=gen), dim=1)
    cube = torch.einsum("nphw,pb->nbhw", labels, endmembers)
    model = HybridSTU(bands=bands, endmembers=p, reduced_bands=8, width=4)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

    def loss_fn():
        predicted = model(cube)
        recon = torch.einsum("nphw,pb->nbhw", predicted, endmembers)
        pixels = lambda x: x.permute(0, 2, 3, 1).reshape(-1, bands)  # noqa: E731
        return sam_loss(pixels(recon), pixels(cube)) + mse_loss(recon, cube) + mse_loss(predicted, labels)

    with torch.no_grad():
        first = float(loss_fn())
    for _ in range(20):
        optimizer.zero_grad()
        loss_fn().backward()
        optimizer.step()
    with torch.no_grad():
        assert float(loss_fn()) < 0.85 * first


# --- ResUNet -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("dims, channels, size, mult", [
    (2, 4, (64, 64), (1, 2)),
    (2, 3, (37, 45), (1, 2)),
    (2, 2, (5, 1), (1, 2, 2)),
    (1, 1, (157,), (1, 2)),
    (1, 1, (198,), (1, 2, 2)),
    (1, 2, (3,), (1, 2, 2)),
])
def test_resunet_shapes_for_odd_sizes_and_zero_output_at_init(dims, channels, size, mult):
    torch.manual_seed(0)
    model = ResUNet(dims=dims, in_channels=channels, base_channels=8, channel_mult=mult)
    x = torch.randn(2, channels, *size)
    t = torch.tensor([0.0, 999.0])
    out = model(x, t)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert torch.count_nonzero(out) == 0          # zero-initialised output conv
    _randomise(model)
    out = model(x, t)
    assert out.shape == x.shape and torch.isfinite(out).all() and out.abs().max() > 0


def test_resunet_output_channels_groups_and_broadcast_t():
    model = _randomise(ResUNet(dims=2, in_channels=3, out_channels=5, base_channels=12, groups=8))
    x = torch.randn(3, 3, 10, 9)
    assert model(x, torch.tensor([10.0])).shape == (3, 5, 10, 9)
    torch.testing.assert_close(model(x, torch.tensor([10.0])), model(x, torch.full((3,), 10.0)))
    torch.testing.assert_close(model(x, torch.full((3,), 10)), model(x, torch.full((3,), 10.0)))
    assert ResUNet(**model.config()).config() == model.config()
    with pytest.raises(UsageError, match="dims"):
        ResUNet(dims=3, in_channels=1)


def test_resunet_pad_and_crop_keeps_the_valid_region_independent_of_the_pad():
    """A pixel's output may depend on neighbours, but the cropped output equals that of the same
    input given explicitly padded with edge values (the internal pad is edge replication)."""
    model = _randomise(ResUNet(dims=2, in_channels=2, base_channels=8, channel_mult=(1, 2)))
    x = torch.randn(1, 2, 7, 5)
    t = torch.tensor([123.0])
    padded = torch.nn.functional.pad(x, (0, 1, 0, 1), mode="replicate")
    torch.testing.assert_close(model(x, t), model(padded, t)[:, :, :7, :5])


def test_timestep_embedding_is_float32_and_accurate_even_in_a_half_model():
    t = torch.tensor([0.0, 1.0, 500.0, 999.0])
    emb = timestep_embedding(t.half(), 32)
    assert emb.dtype == torch.float32
    half = 16
    freqs = np.exp(-math.log(10000.0) * np.arange(half) / half)
    args = np.array([0.0, 1.0, 500.0, 999.0])[:, None] * freqs[None]
    expected = np.concatenate([np.cos(args), np.sin(args)], axis=1)
    np.testing.assert_allclose(emb.numpy(), expected, atol=2e-4)
    assert timestep_embedding(t, 7).shape == (4, 7)

    model = _randomise(ResUNet(dims=2, in_channels=3, base_channels=8))
    x = torch.randn(2, 3, 9, 9)
    reference = model(x, torch.tensor([999.0, 3.0]))
    model.half()
    assert model.time_embedding(torch.tensor([999.0, 3.0])).dtype == torch.float32
    out = model(x.half(), torch.tensor([999.0, 3.0]))
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), reference, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("dims, shape, prediction", [(2, (4, 3, 12, 12), "epsilon"), (1, (8, 1, 37), "v")])
def test_diffusion_training_reduces_the_loss_on_a_fixed_batch(dims, shape, prediction):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    alphas_cumprod = Schedule("cosine", 1000).alphas_cumprod
    model = ResUNet(dims=dims, in_channels=shape[1], base_channels=8)
    x0 = torch.rand(shape, generator=gen) * 2 - 1
    t = torch.randint(0, 1000, (shape[0],), generator=gen)
    noise = torch.randn(shape, generator=gen)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    with torch.no_grad():
        first = float(diffusion_loss(model, x0, t, noise, alphas_cumprod, prediction))
    for _ in range(20):
        optimizer.zero_grad()
        diffusion_loss(model, x0, t, noise, alphas_cumprod, prediction).backward()
        optimizer.step()
    with torch.no_grad():
        assert float(diffusion_loss(model, x0, t, noise, alphas_cumprod, prediction)) < 0.8 * first


# --- ddpm functions ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_torch_forward_process_matches_unmix_diffusion(kind):
    schedule = Schedule(kind, 1000)
    rng = np.random.default_rng(0)
    x0 = rng.normal(size=(5, 3, 4, 4))
    noise = rng.normal(size=x0.shape)
    t = np.array([0, 1, 250, 998, 999])
    ac = schedule.alphas_cumprod
    x0_t, noise_t, t_t = torch.from_numpy(x0), torch.from_numpy(noise), torch.from_numpy(t)
    x_t = ddpm.q_sample(x0_t, t_t, noise_t, ac)
    np.testing.assert_allclose(x_t.numpy(), np_schedule.q_sample(x0, t, noise, schedule), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ddpm.v_target(x0_t, t_t, noise_t, ac).numpy(),
                               np_schedule.v_target(x0, t, noise, schedule), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ddpm.x0_from_eps(x_t, t_t, noise_t, ac).numpy(),
                               np_schedule.x0_from_eps(x_t.numpy(), t, noise, schedule), rtol=1e-9, atol=1e-9)
    v = ddpm.v_target(x0_t, t_t, noise_t, ac)
    np.testing.assert_allclose(ddpm.x0_from_v(x_t, t_t, v, ac).numpy(), x0, atol=1e-12)
    # float32 data: coefficients computed in float64, cast where they multiply.
    x_t32 = ddpm.q_sample(x0_t.float(), t_t, noise_t.float(), ac)
    assert x_t32.dtype == torch.float32
    np.testing.assert_allclose(x_t32.numpy(), np_schedule.q_sample(x0, t, noise, schedule), atol=1e-6)
    with pytest.raises(UsageError, match="integer"):
        ddpm.q_sample(x0_t, t_t.float(), noise_t, ac)


def test_diffusion_loss_draws_are_seeded_and_prediction_checked():
    model = _randomise(ResUNet(dims=1, in_channels=1, base_channels=8))
    x0 = torch.randn(4, 1, 20)
    ac = Schedule("linear", 100).alphas_cumprod
    a = diffusion_loss(model, x0, None, None, ac, "v", generator=torch.Generator().manual_seed(3))
    b = diffusion_loss(model, x0, None, None, ac, "v", generator=torch.Generator().manual_seed(3))
    assert a.ndim == 0 and a.dtype == torch.float32 and torch.equal(a, b)
    with pytest.raises(UsageError, match="prediction"):
        diffusion_loss(model, x0, None, None, ac, "x0")


def test_sam_loss_values_and_safe_gradients():
    a = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    b = torch.tensor([[0.0, 2.0, 0.0], [2.0, 2.0, 0.0], [1.0, 2.0, 3.0]])
    per_row = [sam_loss(a[i:i + 1], b[i:i + 1]).item() for i in range(3)]
    assert per_row[0] == pytest.approx(math.pi / 2, abs=1e-6)
    assert per_row[1] == pytest.approx(0.0, abs=1e-3)           # identical direction (clamped)
    assert per_row[2] == pytest.approx(math.pi / 2, abs=1e-6)   # zero spectrum: defined, no NaN
    pred = a.clone().requires_grad_()
    sam_loss(pred, b).backward()
    assert torch.isfinite(pred.grad).all()
    # dim argument: spectra along axis 1 of (N, B, H, W)
    x = torch.rand(2, 5, 3, 3)
    assert sam_loss(x, 2 * x, dim=1).item() == pytest.approx(0.0, abs=1e-3)
    assert mse_loss(torch.ones(3), torch.zeros(3)).item() == 1.0


def test_ema_warm_up_copy_and_resume():
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, decay=0.9)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)                       # n = 0: d = min(0.9, 1/10) = 0.1
    torch.testing.assert_close(ema.shadow["weight"], start + 0.9)
    assert ema.num_updates == 1
    for _ in range(200):
        ema.update(model)
    torch.testing.assert_close(ema.shadow["weight"], model.weight.detach(), atol=1e-6, rtol=0)
    assert set(ema.state_dict()) == set(model.state_dict())

    clone = EMA(torch.nn.Linear(3, 2), decay=0.9)
    for key, value in ema.shadow.items():   # what a training-state restore does, in place
        clone.shadow[key].copy_(value)
    assert clone.num_updates == 201
    target = torch.nn.Linear(3, 2)
    clone.copy_to(target)
    torch.testing.assert_close(target.weight, ema.shadow["weight"])
    with pytest.raises(UsageError):
        EMA(model, decay=1.0)


def test_count_parameters_and_flops():
    conv = torch.nn.Conv2d(4, 8, 3, padding=1)
    assert count_parameters(conv) == 4 * 8 * 9 + 8
    assert flops_per_call(conv, torch.rand(1, 4, 5, 5)) == 2 * 4 * 8 * 9 * 25
    model = HybridSTU(bands=20, endmembers=3, reduced_bands=8, width=4)
    assert flops_per_call(model, torch.rand(1, 20, 6, 6)) > 0


# --- ONNX export -------------------------------------------------------------------------------------

def _export_and_run(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], names: list[str], path) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, inputs, str(path), dynamo=True, opset_version=20, external_data=False,
                          input_names=names, output_names=["out"])
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {n: x.numpy() for n, x in zip(names, inputs)})[0]
    with torch.no_grad():
        expected = model(*inputs).numpy()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_hybridstu_exports_to_onnx_and_matches(tmp_path):
    torch.manual_seed(0)
    model = HybridSTU(bands=24, endmembers=3, reduced_bands=12, width=4)
    _export_and_run(model, (torch.rand(1, 24, 13, 11),), ["cube"], tmp_path / "hybridstu.onnx")


def test_resunet_exports_to_onnx_and_matches(tmp_path):
    model = _randomise(ResUNet(dims=2, in_channels=3, base_channels=8), std=0.2)
    _export_and_run(model, (torch.randn(1, 3, 13, 11), torch.tensor([999.0])), ["x", "t"], tmp_path / "u2.onnx")
    model = _randomise(ResUNet(dims=1, in_channels=1, base_channels=8), std=0.2)
    _export_and_run(model, (torch.randn(2, 1, 157), torch.tensor([999.0, 4.0])), ["x", "t"], tmp_path / "u1.onnx")
