"""Fused DDIM steps: the denoiser, the DDIM update, data consistency and the constraints in one graph.

These modules are what ``unmix.export`` writes to ONNX and what the runtime and the C++ core run, one
call per DDIM step, the host loop only feeding buffers. They are built for
export: static shapes, no Python branch on tensor values, no in-place change of an input, and only
opset-20 ops (the simplex projection sorts with ``torch.sort``, which exports as TopK). Everything
after the denoiser is float32, also when the denoiser itself runs in fp16.

Notation: ``c`` is one row of the DDIM table (:meth:`unmix.diffusion.schedule.DDIMCoefficients.as_table`,
columns :data:`unmix.diffusion.schedule.TABLE_COLUMNS`): ``c[2] = sqrt(alpha_bar_t)``,
``c[3] = sqrt(1 - alpha_bar_t)``, ``c[4] = sqrt(alpha_bar_prev)``, ``c[5] = dir_coef =
sqrt(1 - alpha_bar_prev - sigma^2)``, ``c[6] = sigma``, ``c[7..10]`` give ``x0_hat`` and ``eps_hat``
from ``(x_t, out)`` for either prediction target (epsilon or v).

Data consistency is a proximal step (the minimiser of a quadratic, not a gradient step). For the
2D step, per pixel, with ``a_hat`` the denoiser's abundances and ``y`` the pixel's spectrum::

    a_dc = argmin_{a >= 0, sum(a) = 1}  w ||y - E^T a||^2 / s  +  ||a - a_hat||^2,   s = trace(E E^T) / p

with ``w = dc_weight`` (0: the projection of ``a_hat`` onto the simplex; large: FCLS). Normalising by
``s`` makes ``w`` independent of the reflectance units and of p. The constraint is part of the problem,
not a projection after it: the Euclidean projection of the unconstrained minimiser is not the
constrained minimiser when the endmembers are correlated (on Sim1 with its true endmembers and w = 1000
the two differ by up to 0.25 in abundance, and the projected one has twice FCLS's abundance RMSE).
:func:`simplex_proximal` solves it by a fixed number of over-relaxed ADMM iterations. The 1D step is the same with the roles of A and E
swapped: ``E_dc = (w G_A + I)^-1 (w AtY / s_A + E_hat)``, ``G_A = AtA / s_A``, ``s_A = trace(AtA) / p``.
The p x p inverses are computed in the graph by Newton-Schulz iterations (:func:`spd_inverse`): matrix
products only, so every backend runs it; its accuracy is pinned by a test.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from unmix.errors import InputError, UsageError
from unmix.runtime.pipeline import MAX_DC_WEIGHT
from unmix.runtime.network import NetworkSpec, TensorSpec, pipeline_specs

__all__ = [
    "AbundanceStep",
    "SpectraStep",
    "TorchNetwork",
    "example_inputs",
    "fused_modules",
    "load_torch_networks",
    "project_simplex",
    "proximal_solve",
    "simplex_proximal",
    "spd_inverse",
    "spectral_norm_bound",
]

_TINY = 1e-12
SQUARINGS = 3
#: Newton-Schulz iterations of :func:`spd_inverse`; converged for condition numbers up to ~1e5.
INVERSE_ITERATIONS = 24
#: ADMM iterations of :func:`simplex_proximal` (within 1e-4 of the exact minimiser on the benchmark
#: scenes' endmembers at every weight up to MAX_DC_WEIGHT; a test pins the accuracy).
ADMM_ITERATIONS = 128
#: ADMM penalty as a multiple of sqrt(lambda_max lambda_min) of the quadratic, and the over-relaxation.
ADMM_RHO_FACTOR = 1.7
ADMM_RELAXATION = 1.6


def spectral_norm_bound(gram: torch.Tensor, squarings: int = SQUARINGS) -> torch.Tensor:
    """Upper bound of ``lambda_max`` of a symmetric PSD ``(p, p)`` matrix; returns shape ``(1,)``.

    With ``tau = trace(G)`` (clamped to >= 1e-12) and ``M = (G / tau)^(2^s)`` by ``s`` repeated
    squarings::

        bound = max(tau * ||M||_F ^ (1 / 2^s), 1e-12)

    Since ``||G^k||_F = sqrt(sum_i lambda_i^(2k))``, ``lambda_max <= bound <= p^(1 / 2^(s+1)) lambda_max``
    (s = 3: within ``p^(1/16)``). Dividing by the trace first keeps every entry in [0, 1]: no overflow in
    float32. The floor keeps ``dc_weight / bound`` finite for an all-zero matrix (whose gradient is 0).
    A handful of p x p products: cheap, and static in the graph.
    """
    gram = gram.float()
    trace = torch.diagonal(gram).sum().clamp_min(_TINY)
    power = gram / trace
    for _ in range(squarings):
        power = power @ power
    frobenius = torch.sqrt((power * power).sum())
    return (trace * frobenius.pow(1.0 / 2 ** squarings)).clamp_min(_TINY).reshape(1)


def spd_inverse(matrix: torch.Tensor, iterations: int = INVERSE_ITERATIONS) -> torch.Tensor:
    """Inverse of a symmetric positive-definite ``(p, p)`` matrix by Newton-Schulz iterations.

    ``X_0 = I / bound`` with ``bound = spectral_norm_bound(M) >= lambda_max`` (so ``||I - X_0 M|| < 1``),
    then ``X_{k+1} = X_k (2 I - M X_k)``: the error squares every iteration, so 24 iterations reach float32
    accuracy for condition numbers up to about 1e5 (the data-consistency matrices here have at most
    ``1 + MAX_DC_WEIGHT p``). Only matrix products: static in the graph, exported as MatMul.
    """
    p = matrix.shape[0]
    eye = torch.eye(p, dtype=matrix.dtype, device=matrix.device)
    inverse = eye / spectral_norm_bound(matrix)
    for _ in range(iterations):
        inverse = inverse @ (2.0 * eye - matrix @ inverse)
    return 0.5 * (inverse + inverse.transpose(0, 1))


def proximal_solve(gram: torch.Tensor, weight: torch.Tensor, data: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """``(w G / s + I)^-1 (w data / s + prior)`` with ``s = max(trace(G) / p, 1e-12)`` (module docstring).

    ``gram`` is ``(p, p)``; ``data`` and ``prior`` are ``(..., p, n)`` (batched over leading axes). The
    inverse comes from :func:`spd_inverse`; one step of iterative refinement
    (``x += X (rhs - M x)``) then brings the solution to float32 accuracy also for the worst-conditioned
    matrices the weights allow.
    """
    p = gram.shape[0]
    scale = (torch.diagonal(gram).sum() / p).clamp_min(_TINY)
    factor = weight / scale
    matrix = factor * gram + torch.eye(p, dtype=gram.dtype, device=gram.device)
    inverse = spd_inverse(matrix)
    rhs = factor * data + prior
    solution = torch.matmul(inverse, rhs)
    return solution + torch.matmul(inverse, rhs - torch.matmul(matrix, solution))


def simplex_proximal(gram: torch.Tensor, weight: torch.Tensor, data: torch.Tensor, prior: torch.Tensor,
                     iterations: int = ADMM_ITERATIONS) -> torch.Tensor:
    """``argmin_{a in simplex} w a^T G a / s - 2 w a^T data / s + ||a - prior||^2`` per column.

    The constrained form of :func:`proximal_solve` (module docstring): ``gram`` is ``(p, p)``, ``data``
    (``E y``) and ``prior`` are ``(..., p, n)``. With ``Q = w G / s + I`` and ``b = w data / s + prior``
    the problem is ``min 1/2 a^T Q a - b^T a`` over the simplex; over-relaxed ADMM (Boyd et al. 2011,
    section 3.4.3) splits it into a linear solve and a simplex projection::

        a  = (Q + rho I)^-1 (b + rho (z - u))
        a' = alpha a + (1 - alpha) z
        z  = project_simplex(a' + u);   u = u + a' - z

    from ``z = project_simplex(Q^-1 b)``, ``u = 0``, with ``rho = 1.7 sqrt(lambda_max(Q) lambda_min(Q))``
    (both from :func:`spectral_norm_bound`, of Q and of its inverse) and ``alpha = 1.6``. Returns z
    (always on the simplex). Matrix products, sorts and sums only: static in the graph.
    """
    p = gram.shape[0]
    eye = torch.eye(p, dtype=gram.dtype, device=gram.device)
    scale = (torch.diagonal(gram).sum() / p).clamp_min(_TINY)
    factor = weight / scale
    matrix = factor * gram + eye
    rhs = factor * data + prior
    inverse = spd_inverse(matrix)
    rho = ADMM_RHO_FACTOR * torch.sqrt(spectral_norm_bound(matrix) / spectral_norm_bound(inverse))
    solve = spd_inverse(matrix + rho * eye)
    z = project_simplex(torch.matmul(inverse, rhs), dim=-2)
    u = torch.zeros_like(z)
    for _ in range(iterations):
        a = torch.matmul(solve, rhs + rho * (z - u))
        a = ADMM_RELAXATION * a + (1.0 - ADMM_RELAXATION) * z
        z = project_simplex(a + u, dim=-2)
        u = u + a - z
    return z


def project_simplex(values: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Euclidean projection of every vector along ``dim`` onto ``{a >= 0, sum(a) = 1}``.

    Sort-based (Held, Wolfe & Crowder 1974): with ``u`` the values sorted in descending order and
    ``S_k = u_1 + ... + u_k``, the threshold is ``theta = max_k (S_k - 1) / k`` (the maximum sits at
    the support size rho, because ``(S_k - 1) / k`` increases exactly while ``u_k > (S_k - 1) / k``),
    and the projection is ``max(v - theta, 0)``. ``torch.sort`` exports as TopK, ``cumsum`` as
    CumSum, the max as ReduceMax: no gather, no data-dependent shape.
    """
    p = values.shape[dim]
    ordered = torch.sort(values, dim=dim, descending=True).values
    shape = [1] * values.ndim
    shape[dim] = p
    k = torch.arange(1, p + 1, dtype=values.dtype, device=values.device).reshape(shape)
    theta = ((torch.cumsum(ordered, dim=dim) - 1.0) / k).amax(dim=dim, keepdim=True)
    return (values - theta).clamp_min(0.0)


def _ddim_update(x_t: torch.Tensor, x0_hat: torch.Tensor, coef: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """``eps_hat = (x_t - c[2] x0_hat) / c[3]``; ``x_prev = c[4] x0_hat + c[5] eps_hat + c[6] noise``."""
    eps_hat = (x_t - coef[2] * x0_hat) / coef[3]
    return coef[4] * x0_hat + coef[5] * eps_hat + coef[6] * noise


class AbundanceStep(nn.Module):
    """One fused 2D DDIM step over abundance maps, with data consistency and the simplex constraint.

    ``forward(x_t (N, p, h, w), t (N,), coef (13,), noise (N, p, h, w), cube (N, B, h, w),
    endmembers (p, B), dc_weight (1,)) -> x_prev (N, p, h, w)``, all float32; ``x = 2 A - 1``.

    Formulas (per pixel; ``a`` the p-vector of abundances, ``y`` the B-vector of reflectance)::

        out     = unet(x_t, t)
        x0_hat  = c[7] x_t + c[8] out
        a_hat   = (x0_hat + 1) / 2
        s       = trace(E E^T) / p
        a_new   = argmin_{a in simplex} w ||y - E^T a||^2 / s + ||a - a_hat||^2
                                                         (w = dc_weight; simplex_proximal)
        x0_new  = 2 a_new - 1
        eps_new = (x_t - c[2] x0_new) / c[3]             (the noise consistent with x0_new)
        x_prev  = c[4] x0_new + c[5] eps_new + c[6] noise

    On the last step (``alpha_bar_prev = 1``: ``c[4] = 1``, ``c[5] = c[6] = 0``) ``x_prev = x0_new``
    exactly: the clean, projected estimate.
    """

    def __init__(self, unet: nn.Module, endmembers_count: int):
        super().__init__()
        channels = getattr(unet, "config", lambda: {})().get("in_channels")
        if channels is not None and channels != endmembers_count:
            raise UsageError(f"the abundance UNet has {channels} channels, expected {endmembers_count} endmembers")
        self.unet = unet
        self.endmembers_count = int(endmembers_count)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, coef: torch.Tensor, noise: torch.Tensor,
                cube: torch.Tensor, endmembers: torch.Tensor, dc_weight: torch.Tensor) -> torch.Tensor:
        n, p, h, w = x_t.shape
        bands = endmembers.shape[1]
        out = self.unet(x_t, t).float()
        x0_hat = coef[7] * x_t + coef[8] * out
        abundances = ((x0_hat + 1.0) * 0.5).reshape(n, p, h * w)
        data = torch.matmul(endmembers, cube.reshape(n, bands, h * w))
        abundances = simplex_proximal(endmembers @ endmembers.transpose(0, 1), dc_weight, data, abundances)
        abundances = abundances.reshape(n, p, h, w)
        return _ddim_update(x_t, 2.0 * abundances - 1.0, coef, noise)


class SpectraStep(nn.Module):
    """One fused 1D DDIM step over the p endmember spectra, with data consistency and E >= 0.

    ``forward(x_t (p, 1, B), t (p,), coef (13,), noise (p, 1, B), AtA (p, p), AtY (p, B), scale (p,),
    dc_weight (1,)) -> x_prev (p, 1, B)``, all float32. Spectra are normalised per endmember,
    ``x = 2 E / scale - 1`` with ``scale_k`` the maximum of endmember k. ``AtA`` and ``AtY`` are the
    sufficient statistics of the abundances (any common factor, e.g. divided by the pixel count).

    Formulas (``s`` = scale as a column, clamped to >= 1e-12)::

        out     = unet(x_t, t)
        x0_hat  = c[7] x_t + c[8] out
        E_hat   = s (x0_hat + 1) / 2                     (p, B)
        s_A     = trace(AtA) / p
        E_new   = max((w AtA / s_A + I)^-1 (w AtY / s_A + E_hat), 0)        (w = dc_weight)
        x0_new  = 2 E_new / s - 1
        eps_new = (x_t - c[2] x0_new) / c[3]
        x_prev  = c[4] x0_new + c[5] eps_new + c[6] noise

    ``E_new`` minimises ``w ||Y - A E||^2 / (N s_A) + ||E - E_hat||^2`` (with AtA, AtY the means over N
    pixels), so the pixels are never needed.
    """

    def __init__(self, unet: nn.Module):
        super().__init__()
        channels = getattr(unet, "config", lambda: {})().get("in_channels")
        if channels is not None and channels != 1:
            raise UsageError(f"the spectra UNet must have 1 channel, got {channels}")
        self.unet = unet

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, coef: torch.Tensor, noise: torch.Tensor,
                AtA: torch.Tensor, AtY: torch.Tensor, scale: torch.Tensor, dc_weight: torch.Tensor) -> torch.Tensor:
        out = self.unet(x_t, t).float()
        x0_hat = coef[7] * x_t + coef[8] * out
        scale = scale.clamp_min(_TINY).unsqueeze(1)
        spectra = scale * (x0_hat[:, 0, :] + 1.0) * 0.5
        spectra = proximal_solve(AtA, dc_weight, AtY, spectra).clamp_min(0.0)
        x0_new = (2.0 * spectra / scale - 1.0).unsqueeze(1)
        return _ddim_update(x_t, x0_new, coef, noise)


# --------------------------------------------------------------------------------------------------
# The torch adapter of runtime's Network protocol
# --------------------------------------------------------------------------------------------------

class TorchNetwork:
    """Runs an eager torch module as a :class:`unmix.runtime.network.Network`.

    Args:
        module: called as ``module(*inputs)`` in the order of ``inputs``; returns one tensor or a tuple
            in the order of ``outputs``. Put in eval mode.
        inputs, outputs: name -> :class:`TensorSpec` (e.g. from :func:`unmix.runtime.network.pipeline_specs`).
        device: where the module runs (default: where its parameters are, else CPU).

    ``network(feeds)`` converts the numpy feeds to tensors, runs under ``torch.inference_mode`` and
    returns float32 (or the declared dtype) numpy arrays that own their memory.
    """

    def __init__(self, module: nn.Module, inputs: Mapping[str, TensorSpec], outputs: Mapping[str, TensorSpec],
                 device: str | torch.device | None = None):
        if not inputs or not outputs:
            raise UsageError("a TorchNetwork needs at least one input and one output")
        self.module = module.eval()
        self.inputs = dict(inputs)
        self.outputs = dict(outputs)
        if device is None:
            first = next(iter(module.parameters()), None)
            device = first.device if first is not None else torch.device("cpu")
        self.device = torch.device(device)

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        tensors = []
        for name, spec in self.inputs.items():
            if name not in feeds:
                raise InputError(f"TorchNetwork: input {name!r} is missing")
            array = np.ascontiguousarray(feeds[name], dtype=np.dtype(spec.dtype))
            if not array.flags.writeable:      # torch.from_numpy warns about read-only buffers
                array = array.copy()
            tensors.append(torch.from_numpy(array).to(self.device))
        with torch.inference_mode():
            result = self.module(*tensors)
        results = (result,) if isinstance(result, torch.Tensor) else tuple(result)
        if len(results) != len(self.outputs):
            raise InputError(f"TorchNetwork: the module returned {len(results)} outputs, expected {len(self.outputs)}")
        return {name: tensor.detach().to("cpu", getattr(torch, spec.dtype)).numpy().copy()
                for (name, spec), tensor in zip(self.outputs.items(), results)}


def fused_modules(models: Mapping[str, nn.Module]) -> dict[str, nn.Module]:
    """The pipeline's three modules from a checkpoint's networks.

    ``models`` needs ``"hybridstu"`` (HybridSTU), ``"abundance"`` (ResUNet dims=2) and ``"spectra"``
    (ResUNet dims=1); returns ``{"hybridstu": HybridSTU, "abundance_step": AbundanceStep,
    "spectra_step": SpectraStep}`` in eval mode (the modules share the checkpoint's weights).
    """
    missing = [name for name in ("hybridstu", "abundance", "spectra") if name not in models]
    if missing:
        raise InputError(f"the checkpoint lacks the network {missing[0]!r} "
                         "(train all stages, or the missing one with --stage)")
    p = models["hybridstu"].endmembers
    return {"hybridstu": models["hybridstu"].eval(),
            "abundance_step": AbundanceStep(models["abundance"], p).eval(),
            "spectra_step": SpectraStep(models["spectra"]).eval()}


def example_inputs(spec: NetworkSpec, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random tensors matching ``spec.inputs`` in call order (for export and checks); free axes get 1."""
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.rand(tuple(1 if s == -1 else s for s in item.shape), generator=gen,
                            dtype=getattr(torch, item.dtype)) for item in spec.inputs.values())


def load_torch_networks(checkpoint_dir: str | os.PathLike, tile: int, ema: bool = False,
                        device: str | torch.device = "cpu") -> tuple[dict[str, TorchNetwork], dict[str, Any]]:
    """Eager Networks for :func:`unmix.runtime.pipeline.run_pipeline` from a checkpoint folder.

    Returns ``(networks, config)``: ``"hybridstu"``, ``"abundance_step"`` and ``"spectra_step"`` as
    :class:`TorchNetwork` with the static shapes of ``pipeline_specs(B, p, tile)``, and the
    checkpoint's ``config.json`` (``Schedule.from_config(config["schedule"])`` rebuilds the schedule;
    ``config["train"]["inference"]`` holds the recorded inference settings).
    """
    from unmix.train.checkpoint import load_checkpoint

    models, config = load_checkpoint(checkpoint_dir, ema=ema, map_location=device)
    modules = fused_modules(models)
    hybridstu = modules["hybridstu"]
    specs = pipeline_specs(hybridstu.bands, hybridstu.endmembers, tile)
    networks = {name: TorchNetwork(module, specs[name].inputs, specs[name].outputs, device=device)
                for name, module in modules.items()}
    return networks, config
