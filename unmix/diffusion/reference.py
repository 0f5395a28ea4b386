"""The explicit DDIM step in float64 numpy: the reference the tests and the golden files hold the
shipped arithmetic to.

The shipped step is a graph (:mod:`unmix.export.steps`, run by every backend and by the C++ core);
it reads the float32 table of :meth:`unmix.diffusion.schedule.DDIMCoefficients.as_table`. Nothing at
run time calls this module: ``tests/test_fused.py`` checks the step modules against :func:`ddim_step`,
``tests/golden/make_golden.py`` writes :func:`ddim_trajectory` for the C++ core's golden test, and
``tests/test_models.py`` checks the torch training formulas (:mod:`unmix.train.ddpm`) against the
forward process here.

Forward process and parametrisations (``a = alpha_bar_t``)::

    x_t   = sqrt(a) * x0 + sqrt(1 - a) * eps                  (q_sample)
    v     = sqrt(a) * eps - sqrt(1 - a) * x0                  (v_target; Salimans & Ho 2022)
    x0    = (x_t - sqrt(1 - a) * eps) / sqrt(a)               (x0_from_eps)
    eps   = (x_t - sqrt(a) * x0) / sqrt(1 - a)                (eps_from_x0)
    x0    = sqrt(a) * x_t - sqrt(1 - a) * v                   (x0_from_v)
    eps   = sqrt(1 - a) * x_t + sqrt(a) * v                   (eps_from_v)

DDIM step (:func:`ddim_step`, ``p = alpha_bar_prev``)::

    x_prev = sqrt(p) * x0_hat + sqrt(1 - p - sigma^2) * eps_hat + sigma * z
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from unmix.diffusion.schedule import DDIMCoefficients, Schedule
from unmix.errors import UsageError, require_int

__all__ = [
    "ddim_loop",
    "ddim_step",
    "ddim_trajectory",
    "eps_from_v",
    "eps_from_x0",
    "q_sample",
    "v_target",
    "x0_from_eps",
    "x0_from_v",
]


# --- forward process and parametrisations (train mirrors them in torch) ---

def _coefs(t: Any, x: np.ndarray, schedule: Schedule) -> tuple[np.ndarray, np.ndarray]:
    """sqrt(alpha_bar_t) and sqrt(1 - alpha_bar_t), shaped to broadcast over ``x``'s leading axes."""
    steps = np.asarray(t)
    if steps.dtype.kind not in "iu" or steps.dtype == np.bool_:
        raise UsageError(f"t must be integer timesteps, got dtype {steps.dtype}")
    if steps.size and (steps.min() < 0 or steps.max() > schedule.T - 1):
        raise UsageError(f"t must be in 0..{schedule.T - 1}, got {steps.min()}..{steps.max()}")
    if steps.ndim > x.ndim or x.shape[:steps.ndim] != steps.shape:
        raise UsageError(f"t of shape {steps.shape} must match the leading axes of an array of shape {x.shape}")
    a = schedule.alphas_cumprod[steps].reshape(steps.shape + (1,) * (x.ndim - steps.ndim))
    return np.sqrt(a), np.sqrt(1.0 - a)


def q_sample(x0: Any, t: Any, noise: Any, schedule: Schedule) -> np.ndarray:
    """``x_t = sqrt(a) * x0 + sqrt(1 - a) * noise``; ``t`` is a scalar or matches x0's leading axes."""
    x0 = np.asarray(x0, dtype=np.float64)
    sa, sb = _coefs(t, x0, schedule)
    return sa * x0 + sb * np.asarray(noise, dtype=np.float64)


def v_target(x0: Any, t: Any, noise: Any, schedule: Schedule) -> np.ndarray:
    """``v = sqrt(a) * noise - sqrt(1 - a) * x0`` (the v-prediction training target)."""
    x0 = np.asarray(x0, dtype=np.float64)
    sa, sb = _coefs(t, x0, schedule)
    return sa * np.asarray(noise, dtype=np.float64) - sb * x0


def x0_from_eps(x_t: Any, t: Any, eps: Any, schedule: Schedule) -> np.ndarray:
    """``x0 = (x_t - sqrt(1 - a) * eps) / sqrt(a)``."""
    x_t = np.asarray(x_t, dtype=np.float64)
    sa, sb = _coefs(t, x_t, schedule)
    return (x_t - sb * np.asarray(eps, dtype=np.float64)) / sa


def eps_from_x0(x_t: Any, t: Any, x0: Any, schedule: Schedule) -> np.ndarray:
    """``eps = (x_t - sqrt(a) * x0) / sqrt(1 - a)``."""
    x_t = np.asarray(x_t, dtype=np.float64)
    sa, sb = _coefs(t, x_t, schedule)
    return (x_t - sa * np.asarray(x0, dtype=np.float64)) / sb


def x0_from_v(x_t: Any, t: Any, v: Any, schedule: Schedule) -> np.ndarray:
    """``x0 = sqrt(a) * x_t - sqrt(1 - a) * v``."""
    x_t = np.asarray(x_t, dtype=np.float64)
    sa, sb = _coefs(t, x_t, schedule)
    return sa * x_t - sb * np.asarray(v, dtype=np.float64)


def eps_from_v(x_t: Any, t: Any, v: Any, schedule: Schedule) -> np.ndarray:
    """``eps = sqrt(1 - a) * x_t + sqrt(a) * v``."""
    x_t = np.asarray(x_t, dtype=np.float64)
    sa, sb = _coefs(t, x_t, schedule)
    return sb * x_t + sa * np.asarray(v, dtype=np.float64)


# --- the reference DDIM loop ---

def ddim_step(x_t: Any, out: Any, coefficients: DDIMCoefficients, i: int, noise: Any = None) -> np.ndarray:
    """DDIM step ``i`` in its explicit (reference) form, float64.

    ``out`` is the network output at ``(x_t, timesteps[i])`` (eps or v, per the schedule's prediction):
    ``x0_hat`` and ``eps_hat`` from it, then
    ``x_prev = sqrt(alpha_bar_prev) * x0_hat + sqrt(1 - alpha_bar_prev - sigma^2) * eps_hat + sigma * z``.
    ``noise`` (z, same shape as ``x_t``) is required when ``sigma[i] > 0`` and ignored otherwise.
    """
    i = require_int(i, "step index", 0)
    if i >= coefficients.steps:
        raise UsageError(f"step index must be < K = {coefficients.steps}, got {i}")
    x_t = np.asarray(x_t, dtype=np.float64)
    out = np.asarray(out, dtype=np.float64)
    if out.shape != x_t.shape:
        raise UsageError(f"network output shape {out.shape} differs from x_t shape {x_t.shape}")
    a = coefficients.alpha_bar_t[i]
    p = coefficients.alpha_bar_prev[i]
    sigma = coefficients.sigma[i]
    if coefficients.schedule.prediction == "epsilon":
        eps_hat = out
        x0_hat = (x_t - math.sqrt(1.0 - a) * eps_hat) / math.sqrt(a)
    else:
        x0_hat = math.sqrt(a) * x_t - math.sqrt(1.0 - a) * out
        eps_hat = math.sqrt(1.0 - a) * x_t + math.sqrt(a) * out
    x_prev = math.sqrt(p) * x0_hat + math.sqrt(max(1.0 - p - sigma * sigma, 0.0)) * eps_hat
    if sigma > 0.0:
        if noise is None:
            raise UsageError(f"DDIM step {i} has sigma = {sigma:.3g} > 0 (eta > 0) and needs noise")
        z = np.asarray(noise, dtype=np.float64)
        if z.shape != x_t.shape:
            raise UsageError(f"noise shape {z.shape} differs from x_t shape {x_t.shape}")
        x_prev = x_prev + sigma * z
    return x_prev


def ddim_trajectory(x_T: Any, predict: Callable[[np.ndarray, int], Any], coefficients: DDIMCoefficients,
                    noise_fn: Callable[[int, tuple[int, ...]], Any] | None = None) -> np.ndarray:
    """The reference DDIM loop's states: ``(K + 1, *x_T.shape)`` float64, from x_T to x0.

    ``predict(x, t)`` returns the network output (eps or v, per the schedule's prediction) for state
    ``x`` at integer timestep ``t``; ``noise_fn(i, shape)`` returns z for step ``i`` (needed when
    eta > 0; the project draws it with ``noise.gaussian`` at counter step ``counter_step(K, i)``).
    """
    if not isinstance(coefficients, DDIMCoefficients):
        raise UsageError(f"coefficients must be DDIMCoefficients, got {type(coefficients).__name__}")
    x = np.asarray(x_T, dtype=np.float64)
    if noise_fn is None and np.any(coefficients.sigma > 0.0):
        raise UsageError("eta > 0 needs a noise_fn(i, shape) for the stochastic DDIM steps")
    states = [x]
    for i, t in enumerate(coefficients.timesteps.tolist()):
        out = predict(x, t)
        noise = noise_fn(i, x.shape) if coefficients.sigma[i] > 0.0 else None
        x = ddim_step(x, out, coefficients, i, noise)
        states.append(x)
    return np.stack(states)


def ddim_loop(x_T: Any, predict: Callable[[np.ndarray, int], Any], coefficients: DDIMCoefficients,
              noise_fn: Callable[[int, tuple[int, ...]], Any] | None = None) -> np.ndarray:
    """Run the reference DDIM loop from ``x_T``; returns x0 (float64, shape of ``x_T``).

    See :func:`ddim_trajectory` for the arguments.
    """
    return ddim_trajectory(x_T, predict, coefficients, noise_fn)[-1]
