"""Regenerate the golden files that pin unmix.diffusion (Python) and the C++ core to the same numbers.

    python tests/golden/make_golden.py          # rewrite every file in tests/golden
    python tests/golden/make_golden.py --check  # exit 1 if a stored file's text differs from a fresh build

(``--check`` compares text exactly; a different libm may change a last digit. The tests compare numbers.)

Files:

- ``ddim_*.json``: a schedule config, K, t0, eta, the timesteps, every DDIM coefficient (float64:
  alpha_bar_t, alpha_bar_prev and the table's columns, ``table_columns`` naming them in order) and the
  full trajectory (K + 1 states, x_T first) of a fixed 2x3x4 x_T under two analytic predictors, with
  the Philox noise used by the stochastic steps. Floats are JSON numbers printed with Python's ``repr``
  (shortest round-trip form: parse with a correct ``strtod`` and you get the exact float64).
- ``noise_philox.json``: the Random123 known-answer vectors and a few ``gaussian()`` windows, as
  float32 bit patterns (hex) and as decimals, plus the raw Philox words of the first window.
- ``nnls_rank_deficient.json``: AᵀA, AᵀY and the NNLS endmembers of
  :func:`unmix.physics.mixing.endmembers_from_abundances` for abundances whose Gram matrix is singular
  (duplicated, combined, constant and absent endmembers), where the minimiser is not unique and only the
  algorithm decides which one comes back; the C++ ``nnls_endmembers`` must give the same bits.

Everything below is deterministic; ``tests/test_diffusion.py`` and ``tests/test_noise.py`` rebuild the
documents with :func:`build` and compare (DDIM to 1e-12, noise bit for bit).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

GOLDEN_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(GOLDEN_DIR.parents[1]))

from unmix.diffusion import noise as noise_module  # noqa: E402
from unmix.diffusion.reference import ddim_trajectory  # noqa: E402
from unmix.diffusion.schedule import TABLE_COLUMNS, Schedule, ddim_coefficients, ddim_timesteps  # noqa: E402
from unmix.physics.mixing import endmembers_from_abundances  # noqa: E402

SHAPE = (2, 3, 4)      # (rows, cols, channels) of the test state
NOISE_SEED = 2024      # the stochastic steps use gaussian(NOISE_SEED, 0, counter_step(K, i), 0, ...)
NOISE_STREAM = noise_module.STREAM_ABUNDANCE
NOISE_SAMPLE = 0

PREDICTOR_FORMULAS = {
    "known_target": (
        "epsilon: out = (x - sqrt(alpha_bar_t) * m) / sqrt(1 - alpha_bar_t); "
        "v: out = (sqrt(alpha_bar_t) * x - m) / sqrt(1 - alpha_bar_t); "
        "alpha_bar_t = alphas_cumprod[t]; x0_hat is then m at every step, so the loop ends at m."),
    "tanh": "out = 0.3 * tanh(x) + 0.01 * t / T (the same formula for epsilon and v)",
}

DDIM_CASES: dict[str, dict[str, Any]] = {
    "ddim_linear_K10.json": dict(
        schedule=dict(kind="linear", T=1000, beta_start=1e-4, beta_end=0.02, prediction="epsilon"),
        K=10, t0=None, eta=0.0),
    "ddim_cosine_K25_t0_600_eta0.5.json": dict(
        schedule=dict(kind="cosine", T=1000, beta_start=1e-4, beta_end=0.02, prediction="epsilon"),
        K=25, t0=600, eta=0.5),
    "ddim_cosine_v_K10_t0_300_eta1.json": dict(
        schedule=dict(kind="cosine", T=1000, beta_start=1e-4, beta_end=0.02, prediction="v"),
        K=10, t0=300, eta=1.0),
    "ddim_linear_T200_K1_t0_50_eta0.3.json": dict(
        schedule=dict(kind="linear", T=200, beta_start=1e-3, beta_end=0.05, prediction="epsilon"),
        K=1, t0=50, eta=0.3),
}


def initial_state() -> np.ndarray:
    """x_T[r, c, k] = 1.5 * sin(0.7 * n + 0.3), n = (r * 3 + c) * 4 + k: (2, 3, 4) float64."""
    n = np.arange(np.prod(SHAPE), dtype=np.float64)
    return (1.5 * np.sin(0.7 * n + 0.3)).reshape(SHAPE)


def target() -> np.ndarray:
    """m[r, c, k] = 0.5 * cos(0.4 * n) + 0.25, n as in :func:`initial_state`: (2, 3, 4) float64."""
    n = np.arange(np.prod(SHAPE), dtype=np.float64)
    return (0.5 * np.cos(0.4 * n) + 0.25).reshape(SHAPE)


def known_target_predictor(schedule: Schedule, m: np.ndarray):
    """The network output whose x0_hat is exactly ``m`` at every step (see PREDICTOR_FORMULAS)."""
    def predict(x: np.ndarray, t: int) -> np.ndarray:
        a = schedule.alphas_cumprod[t]
        if schedule.prediction == "epsilon":
            return (x - np.sqrt(a) * m) / np.sqrt(1.0 - a)
        return (np.sqrt(a) * x - m) / np.sqrt(1.0 - a)
    return predict


def tanh_predictor(schedule: Schedule):
    def predict(x: np.ndarray, t: int) -> np.ndarray:
        return 0.3 * np.tanh(x) + 0.01 * t / schedule.T
    return predict


def step_noise(K: int, i: int) -> np.ndarray:
    """z for DDIM step i: the project's Philox noise at counter step counter_step(K, i), float64."""
    step = noise_module.counter_step(K, i)
    rows, cols, channels = SHAPE
    return noise_module.gaussian(NOISE_SEED, NOISE_STREAM, step, NOISE_SAMPLE, np.arange(rows),
                                 np.arange(cols), channels).astype(np.float64)


def build_ddim(case: dict[str, Any]) -> dict[str, Any]:
    schedule = Schedule.from_config(case["schedule"])
    timesteps = ddim_timesteps(schedule.T, case["K"], case["t0"])
    coefficients = ddim_coefficients(schedule, timesteps, case["eta"])
    x_T = initial_state()
    m = target()

    def noise_fn(i: int, shape: tuple[int, ...]) -> np.ndarray:
        return step_noise(case["K"], i)

    stochastic = [i for i in range(case["K"]) if coefficients.sigma[i] > 0.0]
    document: dict[str, Any] = {
        "what": "unmix.diffusion DDIM golden case; regenerate with tests/golden/make_golden.py",
        "schedule": schedule.to_config(),
        "K": case["K"],
        "t0": case["t0"],
        "eta": case["eta"],
        "alphas_cumprod_at": {str(t): float(schedule.alphas_cumprod[t])
                              for t in sorted({0, schedule.T // 2, schedule.T - 1})},
        "coefficients": coefficients.to_dict(),
        "table_columns": list(TABLE_COLUMNS),
        "x_T": x_T.tolist(),
        "noise": {
            "rule": "z_i = float64(gaussian(seed, stream, counter_step(K, i), sample, rows=range(2), "
                    "cols=range(3), channels=4)) for steps with sigma > 0",
            "seed": NOISE_SEED, "stream": NOISE_STREAM, "sample": NOISE_SAMPLE,
            "steps": {str(i): step_noise(case["K"], i).tolist() for i in stochastic},
        },
        "predictors": {},
    }
    predictors = {"known_target": known_target_predictor(schedule, m), "tanh": tanh_predictor(schedule)}
    for name, predict in predictors.items():
        trajectory = ddim_trajectory(x_T, predict, coefficients, noise_fn)
        entry: dict[str, Any] = {"formula": PREDICTOR_FORMULAS[name], "trajectory": trajectory.tolist()}
        if name == "known_target":
            entry["m"] = m.tolist()
        document["predictors"][name] = entry
    return document


def _f32_bits(values: np.ndarray) -> list:
    bits = np.asarray(values, dtype=np.float32).view(np.uint32)
    return np.vectorize(lambda b: f"{int(b):08x}", otypes=[object])(bits).tolist()


NOISE_CASES: list[dict[str, Any]] = [
    dict(seed=1234, stream=0, step=3, sample=1, rows=[0, 1, 63], cols=[0, 5], channels=6),
    dict(seed=(1 << 40) + 12345, stream=1, step=65535, sample=65535, rows=[7],
         cols=[0, 1, 2, 4294967295], channels=4),
    dict(seed=(1 << 64) - 1, stream=255, step=0, sample=0, rows=[4294967295, 2], cols=[123456], channels=9),
    dict(seed=0, stream=0, step=0, sample=0, rows=[0], cols=[0], channels=1),
]


def build_noise() -> dict[str, Any]:
    kat = [{"counter": [f"{w:08x}" for w in counter], "key": [f"{w:08x}" for w in key],
            "result": [f"{w:08x}" for w in result]}
           for counter, key, result in noise_module.KAT_VECTORS]
    cases = []
    for index, case in enumerate(NOISE_CASES):
        values = noise_module.gaussian(**case)
        entry = dict(case)
        entry["float32_bits"] = _f32_bits(values)
        entry["values"] = values.astype(np.float64).tolist()
        if index == 0:
            words = noise_module.uniform_uint32(case["seed"], case["stream"], case["step"], case["sample"],
                                                case["rows"], case["cols"], (case["channels"] + 3) // 4)
            entry["philox_words"] = np.vectorize(lambda b: f"{int(b):08x}", otypes=[object])(words).tolist()
        cases.append(entry)
    spectra = dict(seed=5, step=2, sample=0, endmembers=3, bands=5)
    spectra_values = noise_module.spectra_noise(**spectra)
    counter_steps = [dict(K=K, index=i, round_index=r, step=noise_module.counter_step(K, i, r))
                     for K, i, r in [(10, None, 0), (10, 0, 0), (10, 9, 0), (10, None, 1), (10, 3, 2)]]
    return {
        "what": "unmix.diffusion.noise golden values; regenerate with tests/golden/make_golden.py",
        "kat_source": "Random123 tests/kat_vectors, philox4x32 10 lines "
                      "(https://github.com/DEShawResearch/random123)",
        "kat_philox4x32_10": kat,
        "gaussian": cases,
        "spectra_noise": dict(spectra, float32_bits=_f32_bits(spectra_values),
                              values=spectra_values.astype(np.float64).tolist()),
        "counter_step": counter_steps,
    }


def _rank_deficient_statistics(case: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """AᵀA, AᵀY of 40 pixels whose abundances A have a singular Gram matrix, one way per case; the
    targets Y = A E + noise with some E < 0, so the non-negativity constraint is active."""
    a = rng.dirichlet(np.ones(3), 40)
    if case == "duplicate":               # endmember 2 always in endmember 0's proportion
        A = np.column_stack([a[:, 0], a[:, 1] + a[:, 2], a[:, 0]])
    elif case == "combination":           # endmember 3 = (endmember 0 + endmember 1) / 2
        A = np.column_stack([a, 0.5 * (a[:, 0] + a[:, 1])])
    elif case == "collinear":             # endmember 1 within 1e-3 of endmember 0, endmember 2 their sum
        near = np.abs(a[:, 0] + 1e-3 * rng.standard_normal(40))
        A = np.column_stack([a[:, 0], near, a[:, 0] + near, a[:, 1]])
    elif case == "constant":              # every pixel the same mixture: rank 1
        A = np.tile([0.2, 0.3, 0.5], (40, 1))
    elif case == "absent_and_duplicate":  # endmember 1 never present, endmember 3 = endmember 2
        A = np.column_stack([a[:, 0], np.zeros(40), a[:, 1] + a[:, 2], a[:, 1] + a[:, 2]])
    elif case == "inconsistent":          # endmember 3 = endmember 0 + endmember 1, AᵀY perturbed below
        A = np.column_stack([a, a[:, 0] + a[:, 1]])
    else:
        raise ValueError(case)
    Y = A @ rng.uniform(-0.4, 0.9, size=(A.shape[1], 6)) + 0.05 * rng.standard_normal((40, 6))
    AtA, AtY = A.T @ A, A.T @ Y
    if case == "inconsistent":  # off the range of AᵀA by 1e-12 (relative), as rounding leaves summed statistics
        AtY = AtY * (1.0 + 1e-12 * rng.standard_normal(AtY.shape))
    return AtA, AtY


#: Between them they take every branch of the active set: a step back to the feasible region
#: ("collinear", "inconsistent") and a singular G[P,P] ("inconsistent").
NNLS_CASES = ("duplicate", "combination", "collinear", "constant", "absent_and_duplicate", "inconsistent")


def build_nnls() -> dict[str, Any]:
    rng = np.random.default_rng(15)
    cases = []
    for name in NNLS_CASES:
        AtA, AtY = _rank_deficient_statistics(name, rng)
        cases.append({"name": name, "AtA": AtA.tolist(), "AtY": AtY.tolist(),
                      "endmembers": endmembers_from_abundances(AtA, AtY).tolist()})
    return {
        "what": "unmix.physics.mixing.endmembers_from_abundances where A^T A is singular; regenerate with "
                "tests/golden/make_golden.py",
        "rule": "endmembers = endmembers_from_abundances(AtA, AtY): float64, the same bits in Python and C++ "
                "(Lawson-Hanson on the Gram system, one order of operations)",
        "cases": cases,
    }


def build() -> dict[str, dict[str, Any]]:
    """Every golden document, keyed by file name."""
    documents = {name: build_ddim(case) for name, case in DDIM_CASES.items()}
    documents["noise_philox.json"] = build_noise()
    documents["nnls_rank_deficient.json"] = build_nnls()
    return documents


def dumps(document: Any, indent: int = 0) -> str:
    """JSON with one line per innermost list of numbers (readable diffs, small files)."""
    pad = " " * (indent + 1)
    if isinstance(document, dict):
        if not document:
            return "{}"
        items = [f"{pad}{json.dumps(key)}: {dumps(value, indent + 1)}" for key, value in document.items()]
        text = "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    elif isinstance(document, list) and any(isinstance(item, (list, dict)) for item in document):
        items = [pad + dumps(item, indent + 1) for item in document]
        text = "[\n" + ",\n".join(items) + "\n" + " " * indent + "]"
    else:
        text = json.dumps(document)
    return text + ("\n" if indent == 0 else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    stale = []
    for name, document in build().items():
        path = GOLDEN_DIR / name
        text = dumps(document)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print("differs from a fresh build: " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
