"""unmix.diffusion: schedules, DDIM timesteps and coefficients, the reference step and loop, golden files."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

from unmix.diffusion import (
    TABLE_COLUMNS,
    Coef,
    DDIMCoefficients,
    Schedule,
    beta_schedule,
    ddim_coefficients,
    ddim_loop,
    ddim_step,
    ddim_timesteps,
    ddim_trajectory,
    eps_from_v,
    eps_from_x0,
    gaussian,
    q_sample,
    v_target,
    x0_from_eps,
    x0_from_v,
)
from unmix.errors import UsageError

GOLDEN = Path(__file__).parent / "golden"
DDIM_GOLDEN = sorted(path.name for path in GOLDEN.glob("ddim_*.json"))


def _load_make_golden():
    spec = importlib.util.spec_from_file_location("make_golden", GOLDEN / "make_golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_golden = _load_make_golden()


def _noise(shape, i, seed=99):
    rows, cols, channels = shape
    return gaussian(seed, 0, i + 1, 0, np.arange(rows), np.arange(cols), channels).astype(np.float64)


# --- schedules ---

@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("T", [2, 10, 1000])
def test_betas_shape_range_and_monotonic(kind, T):
    betas = beta_schedule(kind, T)
    assert betas.shape == (T,) and betas.dtype == np.float64
    assert np.all(betas > 0) and np.all(betas <= 0.999)
    assert np.all(np.diff(betas) >= 0)
    alphas_cumprod = Schedule(kind, T).alphas_cumprod
    assert alphas_cumprod.shape == (T,) and alphas_cumprod.dtype == np.float64
    assert np.all(np.diff(alphas_cumprod) < 0) and 0 < alphas_cumprod[-1] < alphas_cumprod[0] < 1


def test_linear_known_values():
    schedule = Schedule("linear", 1000)
    betas = schedule.betas
    assert betas[0] == 1e-4 and betas[-1] == pytest.approx(0.02, rel=1e-15)
    # independent formula: a sum of logs with math.fsum, not a cumulative product
    independent = math.exp(math.fsum(math.log1p(-(1e-4 + i * (0.02 - 1e-4) / 999)) for i in range(1000)))
    assert schedule.alphas_cumprod[-1] == pytest.approx(independent, rel=1e-12)
    assert schedule.alphas_cumprod[-1] == pytest.approx(4.0358e-5, rel=1e-4)
    assert schedule.alphas_cumprod[0] == 1 - 1e-4


def test_cosine_matches_closed_form():
    T = 1000
    schedule = Schedule("cosine", T)

    def f(t):
        return math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = schedule.betas
    clipped = betas >= 0.999
    assert clipped.sum() == 1 and clipped[-1]  # only the last beta hits the 0.999 clip at T = 1000
    for t in [0, 1, 250, 500, 900, 998]:
        assert schedule.alphas_cumprod[t] == pytest.approx(f(t + 1) / f(0), rel=1e-11)
    assert schedule.alphas_cumprod[-1] == pytest.approx(f(999) / f(0) * 0.001, rel=1e-9)


def test_schedule_config_roundtrip_and_cache():
    for schedule in [Schedule(), Schedule("linear", 200, 1e-3, 0.05, "v")]:
        config = schedule.to_config()
        restored = Schedule.from_config(json.loads(json.dumps(config)))
        assert restored == schedule
        np.testing.assert_array_equal(restored.alphas_cumprod, schedule.alphas_cumprod)
    schedule = Schedule()
    assert schedule.betas is schedule.betas
    with pytest.raises(ValueError):
        schedule.alphas_cumprod[0] = 0.5  # read-only cache
    with pytest.raises(AttributeError):
        schedule.T = 10  # frozen


@pytest.mark.parametrize("kwargs", [
    dict(kind="quadratic"), dict(T=1), dict(T=10.0), dict(T=True), dict(prediction="x0"),
    dict(kind="linear", beta_start=0.03, beta_end=0.02), dict(kind="linear", beta_start=0.0),
    dict(beta_end=1.0), dict(beta_start=float("nan")), dict(beta_start="0.1"),
])
def test_schedule_validation(kwargs):
    with pytest.raises(UsageError):
        Schedule(**kwargs)


@pytest.mark.parametrize("config", [
    {"kind": "linear"}, {"T": 10}, {"kind": "linear", "T": 10, "steps": 3}, ["linear", 10],
])
def test_schedule_from_config_errors(config):
    with pytest.raises(UsageError):
        Schedule.from_config(config)


def test_beta_schedule_validation():
    with pytest.raises(UsageError):
        beta_schedule("sigmoid", 10)
    with pytest.raises(UsageError):
        beta_schedule("linear", 1)


# --- timesteps ---

def test_timesteps_rule():
    np.testing.assert_array_equal(ddim_timesteps(1000, 10), [999, 899, 799, 699, 599, 499, 399, 299, 199, 99])
    np.testing.assert_array_equal(ddim_timesteps(1000, 10, 300), [300, 270, 240, 210, 180, 150, 119, 89, 59, 29])
    np.testing.assert_array_equal(ddim_timesteps(1000, 1), [999])
    np.testing.assert_array_equal(ddim_timesteps(1000, 1, 300), [300])
    np.testing.assert_array_equal(ddim_timesteps(1000, 4, 3), [3, 2, 1, 0])
    np.testing.assert_array_equal(ddim_timesteps(10, 10), np.arange(9, -1, -1))
    np.testing.assert_array_equal(ddim_timesteps(10, 1, 0), [0])
    assert ddim_timesteps(1000, 10).dtype == np.int64


def test_timesteps_properties_over_a_grid():
    for T in [2, 7, 100, 1000]:
        for t0 in sorted({0, 1, T // 3, T - 1}):
            for K in range(1, t0 + 2):
                steps = ddim_timesteps(T, K, t0)
                assert steps.shape == (K,) and steps[0] == t0 and steps[-1] >= 0
                assert np.all(np.diff(steps) < 0)
                expected = [math.floor((t0 + 1) * (K - i) / K + 0.5) - 1 for i in range(K)]
                assert steps.tolist() == expected
                if 3 * K <= 2 * (t0 + 1):
                    assert steps[-1] > 0


@pytest.mark.parametrize("args", [(1000, 0), (1000, 302, 300), (1000, 1001), (1000, 5, 1000), (1000, 5, -1),
                                  (1, 1), (1000, 2.0), (1000, 10, 3)])
def test_timesteps_validation(args):
    with pytest.raises(UsageError):
        ddim_timesteps(*args)


def test_timesteps_k_equals_t0_plus_one_is_allowed():
    assert ddim_timesteps(1000, 301, 300).tolist() == list(range(300, -1, -1))


# --- coefficients ---

def _table_step(coefficients: DDIMCoefficients, i: int, x_t, out, z):
    """A DDIM step from the table's columns, as the fused-step graphs take it (float64): x0_hat from
    ``(x_t, out)``, eps_hat recomputed from x0_hat, then the update."""
    c = coefficients
    x0_hat = c.x0_from_x[i] * x_t + c.x0_from_out[i] * out
    eps_hat = (x_t - c.sqrt_alpha_bar_t[i] * x0_hat) / c.sqrt_one_minus_alpha_bar_t[i]
    return c.sqrt_alpha_bar_prev[i] * x0_hat + c.dir_coef[i] * eps_hat + c.sigma[i] * z


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_coefficients_shapes_and_identities(prediction, eta):
    schedule = Schedule("cosine", 1000, prediction=prediction)
    steps = ddim_timesteps(1000, 25, 600)
    coefficients = ddim_coefficients(schedule, steps, eta)
    a, p, sigma = coefficients.alpha_bar_t, coefficients.alpha_bar_prev, coefficients.sigma
    for name in TABLE_COLUMNS:
        array = getattr(coefficients, name)
        assert array.shape == (25,) and array.dtype == np.float64 and not array.flags.writeable
    np.testing.assert_array_equal(a, schedule.alphas_cumprod[steps])
    np.testing.assert_array_equal(p[:-1], schedule.alphas_cumprod[steps[1:]])
    assert p[-1] == 1.0 and sigma[-1] == 0.0 and coefficients.dir_coef[-1] == 0.0
    assert coefficients.prev_timesteps.tolist() == steps[1:].tolist() + [-1]
    expected_sigma = eta * np.sqrt((1 - p) / (1 - a)) * np.sqrt(1 - a / p)
    np.testing.assert_allclose(sigma, expected_sigma, rtol=1e-15, atol=0)
    np.testing.assert_allclose(p + coefficients.dir_coef ** 2 + sigma ** 2, 1.0, rtol=0, atol=1e-15)
    if eta == 0:
        assert np.all(sigma == 0)
    else:
        assert np.all(sigma[:-1] > 0)
    if prediction == "epsilon":
        np.testing.assert_allclose(coefficients.x0_from_x, 1 / np.sqrt(a), rtol=1e-14)
        np.testing.assert_allclose(coefficients.x0_from_out, -np.sqrt(1 - a) / np.sqrt(a), rtol=1e-14)
    else:
        np.testing.assert_allclose(coefficients.x0_from_x, np.sqrt(a), rtol=1e-14)
        np.testing.assert_allclose(coefficients.x0_from_out, -np.sqrt(1 - a), rtol=1e-14)


def test_eta_one_is_the_ddpm_posterior_variance():
    # With every timestep (K = T) and eta = 1, sigma_t^2 = beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t).
    schedule = Schedule("linear", 1000)
    coefficients = ddim_coefficients(schedule, ddim_timesteps(1000, 1000), eta=1.0)
    betas = schedule.betas[::-1]
    alpha_bar = schedule.alphas_cumprod[::-1]
    alpha_bar_prev = np.append(alpha_bar[1:], 1.0)
    posterior = betas * (1 - alpha_bar_prev) / (1 - alpha_bar)
    np.testing.assert_allclose(coefficients.sigma ** 2, posterior, rtol=1e-9, atol=1e-18)


def test_stochastic_step_has_variance_sigma_squared():
    schedule = Schedule("cosine", 1000)
    coefficients = ddim_coefficients(schedule, ddim_timesteps(1000, 10, 600), eta=0.7)
    x_t = np.full((100, 100, 100), 0.3)
    out = np.full_like(x_t, -0.2)
    mean = ddim_step(x_t, out, coefficients, 2, np.zeros_like(x_t))
    samples = ddim_step(x_t, out, coefficients, 2, _noise(x_t.shape, 2))
    residual = (samples - mean) / coefficients.sigma[2]
    assert abs(residual.mean()) < 0.005 and abs(residual.std() - 1) < 0.005


def test_table_column_order():
    coefficients = ddim_coefficients(Schedule("linear", 1000, prediction="v"), ddim_timesteps(1000, 10), 0.5)
    table = coefficients.as_table()
    assert table.shape == (10, 7) and table.dtype == np.float32
    assert TABLE_COLUMNS == ("sqrt_alpha_bar_t", "sqrt_one_minus_alpha_bar_t", "sqrt_alpha_bar_prev", "dir_coef",
                             "sigma", "x0_from_x", "x0_from_out")
    assert [column.name.lower() for column in Coef] == list(TABLE_COLUMNS) and list(Coef) == list(range(7))
    for column, name in enumerate(TABLE_COLUMNS):
        np.testing.assert_array_equal(table[:, column], getattr(coefficients, name).astype(np.float32))


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_the_table_form_equals_the_reference_step(prediction, eta):
    schedule = Schedule("cosine", 1000, prediction=prediction)
    coefficients = ddim_coefficients(schedule, ddim_timesteps(1000, 8, 700), eta)
    x_t = make_golden.initial_state()
    for i in range(coefficients.steps):
        out = np.cos(x_t * (i + 1))
        z = _noise(x_t.shape, i)
        reference = ddim_step(x_t, out, coefficients, i, z)
        split = _table_step(coefficients, i, x_t, out, z)
        np.testing.assert_allclose(split, reference, rtol=1e-12, atol=1e-12)
        x_t = reference


def test_coefficients_validation():
    schedule = Schedule("linear", 100)
    for timesteps in ([10, 10], [5, 10], [100], [-1], [], [[9, 5]], [9.0, 5.0]):
        with pytest.raises(UsageError):
            ddim_coefficients(schedule, timesteps)
    for eta in (-0.1, 1.5, float("nan"), None):
        with pytest.raises(UsageError):
            ddim_coefficients(schedule, [9, 5], eta)
    with pytest.raises(UsageError):
        ddim_coefficients(schedule.to_config(), [9, 5])


# --- forward process and parametrisations ---

@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_parametrisations_invert_each_other(kind):
    schedule = Schedule(kind, 1000)
    x0 = make_golden.target()[None].repeat(4, axis=0)  # (4, 2, 3, 4)
    noise = np.stack([_noise((2, 3, 4), i) for i in range(4)])
    t = np.array([0, 10, 500, 990])
    x_t = q_sample(x0, t, noise, schedule)
    a = schedule.alphas_cumprod[t][:, None, None, None]
    np.testing.assert_allclose(x_t, np.sqrt(a) * x0 + np.sqrt(1 - a) * noise, rtol=1e-15)
    np.testing.assert_allclose(x0_from_eps(x_t, t, noise, schedule), x0, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(eps_from_x0(x_t, t, x0, schedule), noise, rtol=1e-9, atol=1e-9)
    v = v_target(x0, t, noise, schedule)
    np.testing.assert_allclose(v, np.sqrt(a) * noise - np.sqrt(1 - a) * x0, rtol=1e-15)
    np.testing.assert_allclose(x0_from_v(x_t, t, v, schedule), x0, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(eps_from_v(x_t, t, v, schedule), noise, rtol=1e-12, atol=1e-12)
    # a scalar t broadcasts over the whole array
    np.testing.assert_allclose(q_sample(x0, 500, noise, schedule), q_sample(x0, np.full(4, 500), noise, schedule))


def test_parametrisation_validation():
    schedule = Schedule("linear", 100)
    x = np.zeros((3, 2))
    for t in (100, -1, np.array([1, 2]), 1.5):
        with pytest.raises(UsageError):
            q_sample(x, t, x, schedule)


# --- the reference loop ---

@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("prediction", ["epsilon", "v"])
@pytest.mark.parametrize("K", [1, 2, 5, 10, 50, 1000])
@pytest.mark.parametrize("eta", [0.0, 0.6, 1.0])
def test_known_target_predictor_returns_the_target(kind, prediction, K, eta):
    schedule = Schedule(kind, 1000, prediction=prediction)
    coefficients = ddim_coefficients(schedule, ddim_timesteps(1000, K), eta)
    m = make_golden.target()
    x0 = ddim_loop(make_golden.initial_state(), make_golden.known_target_predictor(schedule, m), coefficients,
                   lambda i, shape: _noise(shape, i))
    # exact up to rounding: 1e-12, except the x0_hat division by sqrt(alpha_bar) of a lone step from
    # t = 999 (cosine: alpha_bar = 2.4e-9) amplifies float64 rounding 2e4-fold
    atol = max(1e-12, 1e-15 / math.sqrt(coefficients.alpha_bar_t[-1]))
    np.testing.assert_allclose(x0, m, rtol=0, atol=atol)


def test_loop_needs_noise_when_stochastic():
    schedule = Schedule("linear", 1000)
    predict = make_golden.tanh_predictor(schedule)
    with pytest.raises(UsageError):
        ddim_loop(np.zeros((2, 3, 4)), predict, ddim_coefficients(schedule, ddim_timesteps(1000, 5), 0.5))
    # eta = 0, or K = 1 (whose only step has sigma = 0), needs none
    ddim_loop(np.zeros((2, 3, 4)), predict, ddim_coefficients(schedule, ddim_timesteps(1000, 5), 0.0))
    ddim_loop(np.zeros((2, 3, 4)), predict, ddim_coefficients(schedule, ddim_timesteps(1000, 1), 0.5))
    coefficients = ddim_coefficients(schedule, ddim_timesteps(1000, 5), 0.0)
    with pytest.raises(UsageError):
        ddim_step(np.zeros(3), np.zeros(4), coefficients, 0)
    with pytest.raises(UsageError):
        ddim_step(np.zeros(3), np.zeros(3), coefficients, 5)
    with pytest.raises(UsageError):
        ddim_loop(np.zeros(3), predict, coefficients.to_dict())


def test_trajectory_starts_at_x_T_and_ends_at_the_loop_result():
    schedule = Schedule("cosine", 1000)
    coefficients = ddim_coefficients(schedule, ddim_timesteps(1000, 6, 400), 0.3)
    x_T = make_golden.initial_state()
    noise_fn = lambda i, shape: _noise(shape, i)  # noqa: E731
    trajectory = ddim_trajectory(x_T, make_golden.tanh_predictor(schedule), coefficients, noise_fn)
    assert trajectory.shape == (7, 2, 3, 4)
    np.testing.assert_array_equal(trajectory[0], x_T)
    np.testing.assert_array_equal(trajectory[-1], ddim_loop(x_T, make_golden.tanh_predictor(schedule),
                                                            coefficients, noise_fn))


# --- golden files ---

def test_golden_files_present():
    assert len(DDIM_GOLDEN) >= 3
    assert set(DDIM_GOLDEN) == set(make_golden.DDIM_CASES)


def _assert_close_tree(actual, expected, where=""):
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and set(actual) == set(expected), where
        for key in expected:
            _assert_close_tree(actual[key], expected[key], f"{where}/{key}")
    elif isinstance(expected, str) or expected is None or isinstance(expected, bool) or (
            isinstance(expected, list) and expected and isinstance(expected[0], str)):
        assert actual == expected, where
    elif isinstance(expected, int) and not isinstance(expected, bool) and not isinstance(actual, list):
        assert actual == expected, where
    else:
        np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64),
                                   rtol=1e-12, atol=1e-12, err_msg=where)


@pytest.mark.parametrize("name", DDIM_GOLDEN)
def test_ddim_golden(name):
    stored = json.loads((GOLDEN / name).read_text())
    rebuilt = json.loads(json.dumps(make_golden.build_ddim(make_golden.DDIM_CASES[name])))
    _assert_close_tree(rebuilt, stored)
    # and independently of make_golden: the library's own calls on the stored config
    schedule = Schedule.from_config(stored["schedule"])
    steps = ddim_timesteps(schedule.T, stored["K"], stored["t0"])
    assert steps.tolist() == stored["coefficients"]["timesteps"]
    coefficients = ddim_coefficients(schedule, steps, stored["eta"])
    for column in stored["table_columns"]:
        np.testing.assert_allclose(getattr(coefficients, column), stored["coefficients"][column], rtol=1e-12, atol=1e-15)
    m = np.array(stored["predictors"]["known_target"]["m"])
    np.testing.assert_allclose(stored["predictors"]["known_target"]["trajectory"][-1], m, rtol=0, atol=1e-12)
    noise_steps = stored["noise"]["steps"]
    assert sorted(map(int, noise_steps)) == [i for i in range(stored["K"]) if coefficients.sigma[i] > 0]
    x = np.array(stored["x_T"])
    for i, t in enumerate(steps.tolist()):  # replay the tanh trajectory with the table's columns
        out = 0.3 * np.tanh(x) + 0.01 * t / schedule.T
        z = np.array(noise_steps[str(i)]) if str(i) in noise_steps else 0.0
        x = _table_step(coefficients, i, x, out, z)
        np.testing.assert_allclose(x, stored["predictors"]["tanh"]["trajectory"][i + 1], rtol=1e-12, atol=1e-12)


def test_public_api_is_exported():
    import unmix.diffusion as diffusion

    for name in diffusion.__all__:
        assert hasattr(diffusion, name), name
    assert isinstance(ddim_coefficients(Schedule(), [5, 1]), DDIMCoefficients)
