"""DDPM training pieces in torch: the forward process, the diffusion loss, EMA weights, SAM and MSE.

The formulas mirror :mod:`unmix.diffusion.schedule` (float64 numpy, the reference): with
``a = alpha_bar_t``::

    x_t = sqrt(a) * x0 + sqrt(1 - a) * eps        (q_sample)
    v   = sqrt(a) * eps - sqrt(1 - a) * x0        (v_target)
    x0  = (x_t - sqrt(1 - a) * eps) / sqrt(a)     (x0_from_eps)
    x0  = sqrt(a) * x_t - sqrt(1 - a) * v         (x0_from_v)

``alphas_cumprod`` is the schedule's ``(T,)`` array (``Schedule.alphas_cumprod``, float64 numpy) or a
tensor; the coefficients are gathered and square-rooted in its precision (float64 when given the
numpy array) and cast to the data's dtype only where they multiply it.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from unmix.errors import UsageError

__all__ = [
    "EMA",
    "PREDICTIONS",
    "diffusion_loss",
    "mse_loss",
    "q_sample",
    "sam_loss",
    "v_target",
    "x0_from_eps",
    "x0_from_v",
]

PREDICTIONS = ("epsilon", "v")


def _as_table(alphas_cumprod: Any, device: torch.device) -> torch.Tensor:
    if isinstance(alphas_cumprod, torch.Tensor):
        return alphas_cumprod.to(device)
    return torch.tensor(np.asarray(alphas_cumprod, dtype=np.float64), device=device)


def _coefficients(t: torch.Tensor, x: torch.Tensor, alphas_cumprod: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """sqrt(a_t) and sqrt(1 - a_t) for integer timesteps ``t`` (N,) or scalar, shaped to broadcast over x."""
    table = _as_table(alphas_cumprod, x.device)
    t = torch.as_tensor(t, device=x.device)
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise UsageError(f"t must be integer timesteps, got dtype {t.dtype}")
    a = table[t.long()]
    shape = (-1,) + (1,) * (x.ndim - 1) if a.ndim == 1 else ()
    a = a.reshape(shape) if shape else a
    return torch.sqrt(a).to(x.dtype), torch.sqrt(1.0 - a).to(x.dtype)


def q_sample(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, alphas_cumprod: Any) -> torch.Tensor:
    """``x_t = sqrt(a_t) * x0 + sqrt(1 - a_t) * noise``; x0, noise ``(N, ...)``, t ``(N,)`` int."""
    sa, sb = _coefficients(t, x0, alphas_cumprod)
    return sa * x0 + sb * noise


def v_target(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, alphas_cumprod: Any) -> torch.Tensor:
    """``v = sqrt(a_t) * noise - sqrt(1 - a_t) * x0`` (the v-prediction target)."""
    sa, sb = _coefficients(t, x0, alphas_cumprod)
    return sa * noise - sb * x0


def x0_from_eps(x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, alphas_cumprod: Any) -> torch.Tensor:
    """``x0 = (x_t - sqrt(1 - a_t) * eps) / sqrt(a_t)``."""
    sa, sb = _coefficients(t, x_t, alphas_cumprod)
    return (x_t - sb * eps) / sa


def x0_from_v(x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor, alphas_cumprod: Any) -> torch.Tensor:
    """``x0 = sqrt(a_t) * x_t - sqrt(1 - a_t) * v``."""
    sa, sb = _coefficients(t, x_t, alphas_cumprod)
    return sa * x_t - sb * v


def diffusion_loss(model: nn.Module, x0: torch.Tensor, t: torch.Tensor | None, noise: torch.Tensor | None,
                   alphas_cumprod: Any, prediction: str = "epsilon", *,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """DDPM training loss: MSE between ``model(x_t, t)`` and the epsilon (or v) target, a float32 scalar.

    Args:
        model: called as ``model(x_t, t.float())`` (a ResUNet or a DDP wrapper of one).
        x0: ``(N, C, *spatial)`` clean samples.
        t: ``(N,)`` integer timesteps in ``[0, T)``; None draws them uniformly with ``generator``.
        noise: the Gaussian noise, shape of x0; None draws it with ``generator``.
        alphas_cumprod: ``(T,)`` schedule (numpy float64 or tensor).
        prediction: ``'epsilon'`` or ``'v'``.
        generator: a CPU ``torch.Generator`` for the draws (the draws are made on the CPU and moved,
            so a seed gives the same batch on any device).
    """
    if prediction not in PREDICTIONS:
        raise UsageError(f"prediction must be one of {', '.join(PREDICTIONS)}, got {prediction!r}")
    T = len(alphas_cumprod)
    if t is None:
        t = torch.randint(0, T, (x0.shape[0],), generator=generator).to(x0.device)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    x_t = q_sample(x0, t, noise, alphas_cumprod)
    target = noise if prediction == "epsilon" else v_target(x0, t, noise, alphas_cumprod)
    output = model(x_t, t.to(torch.float32))
    return mse_loss(output, target)


def mse_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over every element, computed in float32."""
    return torch.mean((pred.float() - target.float()) ** 2)


def sam_loss(pred: torch.Tensor, target: torch.Tensor, dim: int = -1, eps: float = 1e-8) -> torch.Tensor:
    """Mean spectral angle (radians) between ``pred`` and ``target`` along ``dim``, float32.

    ``arccos(<p, y> / (|p| |y|))`` with the cosine clamped to ``[-1 + 1e-7, 1 - 1e-7]`` (arccos has an
    infinite slope at +-1) and the norm product floored at ``eps`` (zero spectra): the gradient is finite
    everywhere, and zero where the clamp is active (identical spectra).
    """
    pred, target = pred.float(), target.float()
    dot = (pred * target).sum(dim)
    norms = (pred.square().sum(dim) * target.square().sum(dim)).clamp_min(eps * eps).sqrt()
    cosine = (dot / norms).clamp(-1.0 + 1e-7, 1.0 - 1e-7)
    return torch.arccos(cosine).mean()


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel / DataParallel wrapper (or the module itself)."""
    return getattr(model, "module", model)


class EMA:
    """Exponential moving average of a model's weights, with warm-up.

    ``shadow = d * shadow + (1 - d) * weights`` after every optimiser step, with
    ``d = min(decay, (1 + n) / (10 + n))`` at update ``n`` (0-based): early updates follow the weights
    closely, so a short run (a few hundred steps) is not dominated by the initial weights.
    Non-float buffers are copied, not averaged.

    ``shadow`` is a dict of float32 tensors keyed like ``model.state_dict()``, plus the update counter
    under :attr:`COUNTER` (a 0-d int64 tensor) so that saving and restoring ``shadow`` in place resumes
    the average exactly. ``state_dict()`` gives the averaged weights only (loadable into the model).
    """

    COUNTER = "__ema_num_updates__"

    def __init__(self, model: nn.Module, decay: float = 0.999):
        if not 0.0 <= float(decay) < 1.0:
            raise UsageError(f"EMA decay must be in [0, 1), got {decay!r}")
        self.decay = float(decay)
        state = _unwrap(model).state_dict()
        if self.COUNTER in state:
            raise UsageError(f"a model state key is named {self.COUNTER!r}, reserved by EMA")
        self.shadow: dict[str, torch.Tensor] = {
            k: (v.detach().float().clone() if v.is_floating_point() else v.detach().clone()) for k, v in state.items()}
        self.shadow[self.COUNTER] = torch.zeros((), dtype=torch.int64)

    @property
    def num_updates(self) -> int:
        return int(self.shadow[self.COUNTER])

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the model's current weights into the average."""
        n = self.num_updates
        decay = min(self.decay, (1.0 + n) / (10.0 + n))
        for key, value in _unwrap(model).state_dict().items():
            shadow = self.shadow[key]
            if shadow.is_floating_point():
                shadow.lerp_(value.detach().to(shadow.device, torch.float32), 1.0 - decay)
            else:
                shadow.copy_(value)
        self.shadow[self.COUNTER] += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Load the averaged weights into ``model`` (in its own dtype and device)."""
        _unwrap(model).load_state_dict(self.state_dict())

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights, keyed like ``model.state_dict()`` (no counter)."""
        return {k: v for k, v in self.shadow.items() if k != self.COUNTER}

    def load_state_dict(self, state: dict[str, torch.Tensor], num_updates: int | None = None) -> None:
        """Restore the averaged weights (and the counter, from ``state`` or ``num_updates``)."""
        with torch.no_grad():
            for key, value in state.items():
                if key not in self.shadow:
                    raise UsageError(f"EMA state has an unknown key {key!r}")
                self.shadow[key].copy_(value)
        if num_updates is not None:
            self.shadow[self.COUNTER].fill_(int(num_updates))

    def to(self, device: torch.device | str) -> "EMA":
        """Move the averaged weights (e.g. to the training device)."""
        self.shadow = {k: (v if k == self.COUNTER else v.to(device)) for k, v in self.shadow.items()}
        return self
