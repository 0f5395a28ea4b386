"""Diffusion maths in float64 numpy: schedules, DDIM timesteps and coefficients, counter-based noise.

The scheduler owns only the schedule and the step math; networks live elsewhere. Training (torch)
mirrors the formulas of :mod:`unmix.diffusion.schedule`; the fused-step graphs read
:meth:`DDIMCoefficients.as_table` (columns :class:`Coef`); the C++ core reproduces the numbers and
the Philox noise of :mod:`unmix.diffusion.noise` from the golden files in ``tests/golden``.
:mod:`unmix.diffusion.reference` is the explicit float64 DDIM step the tests compare against.
"""
from unmix.diffusion.noise import (
    STREAM_ABUNDANCE,
    STREAM_SPECTRA,
    counter_step,
    gaussian,
    philox4x32_10,
    spectra_noise,
    uniform_uint32,
)
from unmix.diffusion.reference import (
    ddim_loop,
    ddim_step,
    ddim_trajectory,
    eps_from_v,
    eps_from_x0,
    q_sample,
    v_target,
    x0_from_eps,
    x0_from_v,
)
from unmix.diffusion.schedule import (
    TABLE_COLUMNS,
    Coef,
    DDIMCoefficients,
    Schedule,
    beta_schedule,
    ddim_coefficients,
    ddim_timesteps,
)

__all__ = [
    "Coef",
    "DDIMCoefficients",
    "STREAM_ABUNDANCE",
    "STREAM_SPECTRA",
    "Schedule",
    "TABLE_COLUMNS",
    "beta_schedule",
    "counter_step",
    "ddim_coefficients",
    "ddim_loop",
    "ddim_step",
    "ddim_timesteps",
    "ddim_trajectory",
    "eps_from_v",
    "eps_from_x0",
    "gaussian",
    "philox4x32_10",
    "q_sample",
    "spectra_noise",
    "uniform_uint32",
    "v_target",
    "x0_from_eps",
    "x0_from_v",
]
