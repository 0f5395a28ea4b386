"""Diffusion schedules and DDIM step math, in float64 numpy.

Training (PyTorch, DDPM) and inference (numpy / ONNX / C++, fixed-step DDIM) share these formulas; the
C++ core reproduces them from the golden files in ``tests/golden``. Notation: ``T`` diffusion steps,
``t`` in ``0..T-1``, ``beta_t``, ``alpha_bar_t = prod_{s<=t} (1 - beta_s)`` (a sequential float64
product), ``alpha_bar_{-1} = 1`` (the clean end of the chain).

Forward process and parametrisations (``a = alpha_bar_t``)::

    x_t   = sqrt(a) * x0 + sqrt(1 - a) * eps                  (q_sample)
    v     = sqrt(a) * eps - sqrt(1 - a) * x0                  (v_target; Salimans & Ho 2022)
    x0    = (x_t - sqrt(1 - a) * eps) / sqrt(a)               (x0_from_eps)
    eps   = (x_t - sqrt(a) * x0) / sqrt(1 - a)                (eps_from_x0)
    x0    = sqrt(a) * x_t - sqrt(1 - a) * v                   (x0_from_v)
    eps   = sqrt(1 - a) * x_t + sqrt(a) * v                   (eps_from_v)

DDIM step from ``t`` to ``prev`` (Song, Meng & Ermon 2021, eq. 12 and 16), ``a = alpha_bar_t``,
``p = alpha_bar_prev``::

    sigma  = eta * sqrt((1 - p) / (1 - a)) * sqrt(1 - a / p)
    x_prev = sqrt(p) * x0_hat + sqrt(1 - p - sigma^2) * eps_hat + sigma * z

``eta = 0`` is deterministic DDIM; ``eta = 1`` gives the DDPM posterior variance. See
:class:`DDIMCoefficients` for the fused per-step coefficients and :data:`TABLE_COLUMNS` for the packed
table a fused-step graph reads.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable

import numpy as np

from unmix.errors import UsageError, require_float, require_int

__all__ = [
    "COSINE_S",
    "DDIMCoefficients",
    "KINDS",
    "MAX_BETA",
    "PREDICTIONS",
    "Schedule",
    "TABLE_COLUMNS",
    "beta_schedule",
    "ddim_coefficients",
    "ddim_loop",
    "ddim_step",
    "ddim_timesteps",
    "ddim_trajectory",
    "eps_from_v",
    "eps_from_x0",
    "q_sample",
    "v_target",
    "x0_from_eps",
    "x0_from_v",
]

KINDS = ("linear", "cosine")
PREDICTIONS = ("epsilon", "v")
COSINE_S = 0.008
MAX_BETA = 0.999


def beta_schedule(kind: str, T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """Noise levels ``beta_t`` for ``t = 0..T-1``: ``(T,)`` float64.

    ``linear`` (Ho et al. 2020): ``beta_t = beta_start + t * ((beta_end - beta_start) / (T - 1))``.
    ``cosine`` (Nichol & Dhariwal 2021, s = 0.008; ``beta_start``/``beta_end`` unused):
    ``f(t) = cos(((t / T) + s) / (1 + s) * pi / 2)^2``, ``beta_t = min(1 - f(t + 1) / f(t), 0.999)``.
    """
    if kind not in KINDS:
        raise UsageError(f"schedule kind must be one of {', '.join(KINDS)}, got {kind!r}")
    T = require_int(T, "schedule T", 2)
    beta_start = require_float(beta_start, "schedule beta_start")
    beta_end = require_float(beta_end, "schedule beta_end")
    if kind == "linear":
        if not 0.0 < beta_start <= beta_end < 1.0:
            raise UsageError(
                f"schedule betas must satisfy 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
        step = (beta_end - beta_start) / (T - 1)
        return beta_start + np.arange(T, dtype=np.float64) * step
    steps = np.arange(T + 1, dtype=np.float64)
    f = np.cos((steps / T + COSINE_S) / (1.0 + COSINE_S) * (math.pi / 2.0)) ** 2
    return np.minimum(1.0 - f[1:] / f[:-1], MAX_BETA)


def _readonly(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


@dataclass(frozen=True)
class Schedule:
    """A diffusion schedule: its kind, length and the network's prediction target.

    The configuration (``to_config()``) travels in checkpoints and the export manifest; ``betas`` and
    ``alphas_cumprod`` are ``(T,)`` float64, computed once and read-only (``torch.tensor(...)`` copies
    them; ``torch.from_numpy`` would warn about the read-only buffer). ``beta_start``/``beta_end`` only
    shape the linear schedule (still validated and saved for cosine). ``prediction`` is what the
    network outputs: ``'epsilon'`` (the noise) or ``'v'``.
    """

    kind: str = "cosine"
    T: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    prediction: str = "epsilon"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UsageError(f"schedule kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.prediction not in PREDICTIONS:
            raise UsageError(f"schedule prediction must be one of {', '.join(PREDICTIONS)}, got {self.prediction!r}")
        object.__setattr__(self, "T", require_int(self.T, "schedule T", 2))
        object.__setattr__(self, "beta_start", require_float(self.beta_start, "schedule beta_start"))
        object.__setattr__(self, "beta_end", require_float(self.beta_end, "schedule beta_end"))
        if not 0.0 < self.beta_start <= self.beta_end < 1.0:
            raise UsageError("schedule betas must satisfy 0 < beta_start <= beta_end < 1, "
                             f"got {self.beta_start}, {self.beta_end}")

    @cached_property
    def betas(self) -> np.ndarray:
        """``(T,)`` float64 noise levels (see :func:`beta_schedule`)."""
        return _readonly(beta_schedule(self.kind, self.T, self.beta_start, self.beta_end))

    @cached_property
    def alphas_cumprod(self) -> np.ndarray:
        """``(T,)`` float64 ``alpha_bar_t = prod_{s<=t} (1 - beta_s)``, a sequential product."""
        return _readonly(np.cumprod(1.0 - self.betas))

    def alpha_bar(self, t: Any) -> np.ndarray:
        """``alpha_bar`` at integer timesteps ``t`` (any shape), with ``alpha_bar_{-1} = 1``."""
        steps = np.asarray(t)
        if steps.dtype.kind not in "iu":
            raise UsageError(f"timesteps must be integers, got dtype {steps.dtype}")
        if steps.size and (steps.min() < -1 or steps.max() >= self.T):
            raise UsageError(f"timesteps must be in -1..{self.T - 1}, got {steps.min()}..{steps.max()}")
        padded = np.concatenate([[1.0], self.alphas_cumprod])
        return padded[steps + 1]

    def to_config(self) -> dict[str, Any]:
        """JSON-serialisable configuration; ``Schedule.from_config(s.to_config()) == s``."""
        return {"kind": self.kind, "T": int(self.T), "beta_start": float(self.beta_start),
                "beta_end": float(self.beta_end), "prediction": self.prediction}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Schedule":
        """Rebuild from ``to_config()`` output; unknown keys and bad values raise ``UsageError``."""
        if not isinstance(config, dict):
            raise UsageError(f"schedule config must be a mapping, got {type(config).__name__}")
        known = ("kind", "T", "beta_start", "beta_end", "prediction")
        unknown = sorted(set(config) - set(known))
        if unknown:
            raise UsageError(f"schedule config: unknown key {unknown[0]!r}; known: {', '.join(known)}")
        for key in ("kind", "T"):
            if key not in config:
                raise UsageError(f"schedule config: missing key {key!r}")
        return cls(**config)


def ddim_timesteps(T: int, K: int, t0: int | None = None) -> np.ndarray:
    """The K DDIM timesteps, strictly descending: ``(K,)`` int64.

    Rule ("trailing" spacing of Lin et al. 2024, generalised to a start ``t0``; ``t0`` defaults to
    ``T - 1``): ``t_i = round_half_up((t0 + 1) * (K - i) / K) - 1`` for ``i = 0..K-1``, evaluated in
    exact integer arithmetic as ``(2 * (t0 + 1) * (K - i) + K) // (2 * K) - 1``. So ``t_0 = t0``, the
    spacing is ``(t0 + 1) / K`` (>= 1, hence distinct), the last timestep is
    ``round((t0 + 1) / K) - 1`` (> 0 whenever K <= 2 (t0 + 1) / 3) and the step after it goes to
    ``t = -1`` (``alpha_bar = 1``, the clean signal). ``K = 1`` gives ``[t0]``; ``K = t0 + 1`` gives
    ``t0, t0 - 1, ..., 0``; ``K > t0 + 1`` raises ``UsageError``.
    """
    T = require_int(T, "T", 2)
    K = require_int(K, "K (DDIM steps)", 1)
    t0 = T - 1 if t0 is None else require_int(t0, "t0", 0)
    if t0 > T - 1:
        raise UsageError(f"t0 must be in 0..{T - 1}, got {t0}")
    if K > t0 + 1:
        raise UsageError(f"K (DDIM steps) must be <= t0 + 1 = {t0 + 1}, got {K}")
    i = np.arange(K, dtype=np.int64)
    return (2 * (t0 + 1) * (K - i) + K) // (2 * K) - 1


# Column order of DDIMCoefficients.as_table(): one row per DDIM step, float32.
TABLE_COLUMNS: tuple[str, ...] = (
    "alpha_bar_t",                 # 0
    "alpha_bar_prev",              # 1
    "sqrt_alpha_bar_t",            # 2
    "sqrt_one_minus_alpha_bar_t",  # 3
    "sqrt_alpha_bar_prev",         # 4
    "dir_coef",                    # 5  sqrt(1 - alpha_bar_prev - sigma^2)
    "sigma",                       # 6
    "x0_from_x",                   # 7  x0_hat  = x0_from_x  * x_t + x0_from_out  * out
    "x0_from_out",                 # 8
    "eps_from_x",                  # 9  eps_hat = eps_from_x * x_t + eps_from_out * out
    "eps_from_out",                # 10
    "c_x",                         # 11 x_prev  = c_x * x_t + c_out * out + sigma * z
    "c_out",                       # 12
)


@dataclass(frozen=True, eq=False)
class DDIMCoefficients:
    """Per-step DDIM coefficients, each ``(K,)`` float64, for steps ``i = 0..K-1`` in loop order.

    ``out`` is the network output: eps_hat for ``prediction == 'epsilon'``, v_hat for ``'v'``. With
    ``a = alpha_bar_t``, ``p = alpha_bar_prev`` (1 after the last step) and ``d = dir_coef``:

    - ``sigma = eta * sqrt((1 - p) / (1 - a)) * sqrt(1 - a / p)``, ``d = sqrt(1 - p - sigma^2)``;
    - epsilon: ``x0_from_x = 1 / sqrt(a)``, ``x0_from_out = -sqrt(1 - a) / sqrt(a)``, ``eps_from_x = 0``,
      ``eps_from_out = 1``;
    - v: ``x0_from_x = sqrt(a)``, ``x0_from_out = -sqrt(1 - a)``, ``eps_from_x = sqrt(1 - a)``,
      ``eps_from_out = sqrt(a)``;
    - fused update ``x_prev = c_x * x_t + c_out * out + sigma * z`` with
      ``c_x = sqrt(p) * x0_from_x + d * eps_from_x`` and ``c_out = sqrt(p) * x0_from_out + d * eps_from_out``
      (for epsilon: ``c_x = sqrt(p / a)``, ``c_out = d - sqrt(p) * sqrt(1 - a) / sqrt(a)``).

    A step that edits x0_hat (data consistency, projection) uses the x0/eps columns and
    ``x_prev = sqrt_alpha_bar_prev * x0_hat + dir_coef * eps_hat + sigma * z`` instead.
    """

    schedule: Schedule
    eta: float
    timesteps: np.ndarray        # (K,) int64, descending
    prev_timesteps: np.ndarray   # (K,) int64, the next entry of timesteps; -1 after the last
    alpha_bar_t: np.ndarray
    alpha_bar_prev: np.ndarray
    sqrt_alpha_bar_t: np.ndarray
    sqrt_one_minus_alpha_bar_t: np.ndarray
    sqrt_alpha_bar_prev: np.ndarray
    dir_coef: np.ndarray
    sigma: np.ndarray
    x0_from_x: np.ndarray
    x0_from_out: np.ndarray
    eps_from_x: np.ndarray
    eps_from_out: np.ndarray
    c_x: np.ndarray
    c_out: np.ndarray = field(repr=False)

    @property
    def steps(self) -> int:
        """K, the number of DDIM steps."""
        return int(self.timesteps.size)

    def as_table(self) -> np.ndarray:
        """``(K, 13)`` float32, one row per step, columns in :data:`TABLE_COLUMNS` order."""
        return np.stack([getattr(self, name) for name in TABLE_COLUMNS], axis=1).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form: schedule config, eta, timesteps and every coefficient (float64)."""
        data: dict[str, Any] = {"schedule": self.schedule.to_config(), "eta": float(self.eta),
                                "timesteps": self.timesteps.tolist(),
                                "prev_timesteps": self.prev_timesteps.tolist()}
        for name in TABLE_COLUMNS:
            data[name] = getattr(self, name).tolist()
        return data


def _check_timesteps(schedule: Schedule, timesteps: Any) -> np.ndarray:
    steps = np.asarray(timesteps)
    if steps.ndim != 1 or steps.size == 0:
        raise UsageError(f"timesteps must be a non-empty 1D sequence, got shape {steps.shape}")
    if steps.dtype.kind not in "iu" or steps.dtype == np.bool_:
        raise UsageError(f"timesteps must be integers, got dtype {steps.dtype}")
    steps = steps.astype(np.int64)
    if steps.min() < 0 or steps.max() > schedule.T - 1:
        raise UsageError(f"timesteps must be in 0..{schedule.T - 1}, got {steps.min()}..{steps.max()}")
    if np.any(np.diff(steps) >= 0):
        raise UsageError(f"timesteps must be strictly descending, got {steps.tolist()}")
    return steps


def ddim_coefficients(schedule: Schedule, timesteps: Any, eta: float = 0.0) -> DDIMCoefficients:
    """Every per-step DDIM coefficient for ``timesteps`` (strictly descending, in ``0..T-1``).

    ``eta`` in [0, 1]: 0 is deterministic DDIM, 1 the DDPM posterior variance. Formulas in
    :class:`DDIMCoefficients`.
    """
    if not isinstance(schedule, Schedule):
        raise UsageError(f"schedule must be a Schedule, got {type(schedule).__name__}")
    eta = require_float(eta, "eta")
    if not 0.0 <= eta <= 1.0:
        raise UsageError(f"eta must be in [0, 1], got {eta}")
    steps = _check_timesteps(schedule, timesteps)
    prev = np.append(steps[1:], -1).astype(np.int64)
    a = schedule.alpha_bar(steps)
    p = schedule.alpha_bar(prev)
    sigma = eta * np.sqrt((1.0 - p) / (1.0 - a)) * np.sqrt(1.0 - a / p)
    dir_coef = np.sqrt(np.maximum(1.0 - p - sigma * sigma, 0.0))
    sqrt_a = np.sqrt(a)
    sqrt_1ma = np.sqrt(1.0 - a)
    sqrt_p = np.sqrt(p)
    if schedule.prediction == "epsilon":
        x0_from_x = 1.0 / sqrt_a
        x0_from_out = -sqrt_1ma / sqrt_a
        eps_from_x = np.zeros_like(a)
        eps_from_out = np.ones_like(a)
    else:
        x0_from_x = sqrt_a.copy()
        x0_from_out = -sqrt_1ma
        eps_from_x = sqrt_1ma.copy()
        eps_from_out = sqrt_a.copy()
    c_x = sqrt_p * x0_from_x + dir_coef * eps_from_x
    c_out = sqrt_p * x0_from_out + dir_coef * eps_from_out
    arrays = dict(timesteps=steps, prev_timesteps=prev, alpha_bar_t=a, alpha_bar_prev=p,
                  sqrt_alpha_bar_t=sqrt_a, sqrt_one_minus_alpha_bar_t=sqrt_1ma, sqrt_alpha_bar_prev=sqrt_p,
                  dir_coef=dir_coef, sigma=sigma, x0_from_x=x0_from_x, x0_from_out=x0_from_out,
                  eps_from_x=eps_from_x, eps_from_out=eps_from_out, c_x=c_x, c_out=c_out)
    return DDIMCoefficients(schedule=schedule, eta=eta, **{k: _readonly(v) for k, v in arrays.items()})


# --- forward process and parametrisations (numpy; train mirrors them in torch) ---

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
