"""Diffusion schedules, DDIM timesteps and the DDIM coefficient table, in float64 numpy.

Training (PyTorch, DDPM) and inference (numpy / ONNX / C++, fixed-step DDIM) share these formulas; the
C++ core reproduces them from the golden files in ``tests/golden``. Notation: ``T`` diffusion steps,
``t`` in ``0..T-1``, ``beta_t``, ``alpha_bar_t = prod_{s<=t} (1 - beta_s)`` (a sequential float64
product), ``alpha_bar_{-1} = 1`` (the clean end of the chain).

DDIM step from ``t`` to ``prev`` (Song, Meng & Ermon 2021, eq. 12 and 16), ``a = alpha_bar_t``,
``p = alpha_bar_prev``::

    sigma  = eta * sqrt((1 - p) / (1 - a)) * sqrt(1 - a / p)
    x_prev = sqrt(p) * x0_hat + sqrt(1 - p - sigma^2) * eps_hat + sigma * z

``eta = 0`` is deterministic DDIM; ``eta = 1`` gives the DDPM posterior variance. See
:class:`DDIMCoefficients` for the per-step coefficients and :class:`Coef` for the columns of the
table a fused-step graph reads (the graphs: :mod:`unmix.export.steps`; the explicit float64 step the
tests compare them against: :mod:`unmix.diffusion.reference`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import IntEnum
from functools import cached_property
from typing import Any

import numpy as np

from unmix.errors import UsageError, require_float, require_int

__all__ = [
    "COSINE_S",
    "Coef",
    "DDIMCoefficients",
    "KINDS",
    "MAX_BETA",
    "PREDICTIONS",
    "Schedule",
    "TABLE_COLUMNS",
    "beta_schedule",
    "ddim_coefficients",
    "ddim_timesteps",
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


class Coef(IntEnum):
    """The columns of the DDIM table (:meth:`DDIMCoefficients.as_table`), one row per step: what a
    fused-step graph reads from its ``coef`` input, by name (``coef[Coef.SIGMA]``). The C++ core has the
    same names in the same order (``unmix::Coef`` in cpp_bindings/core/diffusion.hpp; its golden test
    checks them against :data:`TABLE_COLUMNS`)."""

    SQRT_ALPHA_BAR_T = 0            # sqrt(alpha_bar_t)
    SQRT_ONE_MINUS_ALPHA_BAR_T = 1  # sqrt(1 - alpha_bar_t)
    SQRT_ALPHA_BAR_PREV = 2         # sqrt(alpha_bar_prev)
    DIR_COEF = 3                    # sqrt(1 - alpha_bar_prev - sigma^2)
    SIGMA = 4
    X0_FROM_X = 5                   # x0_hat = x0_from_x * x_t + x0_from_out * out
    X0_FROM_OUT = 6


#: The table's column names (the :class:`DDIMCoefficients` fields), in :class:`Coef` order.
TABLE_COLUMNS: tuple[str, ...] = tuple(column.name.lower() for column in Coef)


@dataclass(frozen=True, eq=False)
class DDIMCoefficients:
    """Per-step DDIM coefficients, each ``(K,)`` float64, for steps ``i = 0..K-1`` in loop order.

    ``out`` is the network output: eps_hat for ``prediction == 'epsilon'``, v_hat for ``'v'``. With
    ``a = alpha_bar_t``, ``p = alpha_bar_prev`` (1 after the last step) and ``d = dir_coef``:

    - ``sigma = eta * sqrt((1 - p) / (1 - a)) * sqrt(1 - a / p)``, ``d = sqrt(1 - p - sigma^2)``;
    - epsilon: ``x0_from_x = 1 / sqrt(a)``, ``x0_from_out = -sqrt(1 - a) / sqrt(a)``;
    - v: ``x0_from_x = sqrt(a)``, ``x0_from_out = -sqrt(1 - a)``.

    A fused step takes ``x0_hat = x0_from_x * x_t + x0_from_out * out``, edits it (data consistency,
    projection), recomputes ``eps_hat = (x_t - sqrt(a) x0_hat) / sqrt(1 - a)`` and returns
    ``x_prev = sqrt(p) * x0_hat + d * eps_hat + sigma * z``.
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
    x0_from_out: np.ndarray = field(repr=False)

    @property
    def steps(self) -> int:
        """K, the number of DDIM steps."""
        return int(self.timesteps.size)

    def as_table(self) -> np.ndarray:
        """``(K, len(Coef))`` float32, one row per step, columns in :class:`Coef` order."""
        return np.stack([getattr(self, name) for name in TABLE_COLUMNS], axis=1).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form: schedule config, eta, timesteps and every coefficient (float64)."""
        data: dict[str, Any] = {"schedule": self.schedule.to_config(), "eta": float(self.eta),
                                "timesteps": self.timesteps.tolist(),
                                "prev_timesteps": self.prev_timesteps.tolist()}
        for name in ("alpha_bar_t", "alpha_bar_prev") + TABLE_COLUMNS:
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
    else:
        x0_from_x = sqrt_a.copy()
        x0_from_out = -sqrt_1ma
    arrays = dict(timesteps=steps, prev_timesteps=prev, alpha_bar_t=a, alpha_bar_prev=p,
                  sqrt_alpha_bar_t=sqrt_a, sqrt_one_minus_alpha_bar_t=sqrt_1ma, sqrt_alpha_bar_prev=sqrt_p,
                  dir_coef=dir_coef, sigma=sigma, x0_from_x=x0_from_x, x0_from_out=x0_from_out)
    return DDIMCoefficients(schedule=schedule, eta=eta, **{k: _readonly(v) for k, v in arrays.items()})
