"""unmix.diffusion.noise: Philox4x32-10 known answers, the counter layout, tiling, statistics, golden file."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest

from unmix.diffusion import noise
from unmix.diffusion.noise import counter_step, gaussian, philox4x32_10, spectra_noise, uniform_uint32
from unmix.errors import UsageError

GOLDEN = json.loads((Path(__file__).parent / "golden" / "noise_philox.json").read_text())

# Random123 tests/kat_vectors (https://github.com/DEShawResearch/random123), the "philox4x32 10" lines:
# counter[4] key[2] -> result[4]
KAT = [
    ("00000000 00000000 00000000 00000000", "00000000 00000000", "6627e8d5 e169c58d bc57ac4c 9b00dbd8"),
    ("ffffffff ffffffff ffffffff ffffffff", "ffffffff ffffffff", "408f276d 41c83b0e a20bc7c6 6d5451fd"),
    ("243f6a88 85a308d3 13198a2e 03707344", "a4093822 299f31d0", "d16cfe09 94fdcceb 5001e420 24126ea1"),
]


def _words(text):
    return [int(word, 16) for word in text.split()]


def _scalar_philox(counter, key):
    """One Philox4x32-10 call in plain Python integers, written from the SC'11 paper's definition."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for r in range(10):
        if r:
            k0, k1 = (k0 + 0x9E3779B9) % 2**32, (k1 + 0xBB67AE85) % 2**32
        p0, p1 = 0xD2511F53 * c0, 0xCD9E8D57 * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 % 2**32, (p0 >> 32) ^ c3 ^ k1, p0 % 2**32
    return [c0, c1, c2, c3]


def _scalar_gaussian(seed, stream, step, sample, row, col, channel):
    """The documented mapping for one value, with Python's math module."""
    words = _scalar_philox([col, row, (channel // 4) | (stream << 24), (step << 16) | sample],
                           [seed % 2**32, (seed >> 32) % 2**32])
    u = [(w + 0.5) / 2**32 for w in words]
    pair = (channel % 4) // 2
    radius = math.sqrt(-2.0 * math.log(u[2 * pair]))
    angle = 2.0 * math.pi * u[2 * pair + 1]
    return np.float32(radius * (math.cos(angle) if channel % 2 == 0 else math.sin(angle)))


# --- Philox ---

@pytest.mark.parametrize("counter, key, result", KAT)
def test_philox_known_answers(counter, key, result):
    out = philox4x32_10(np.array(_words(counter), dtype=np.uint32), np.array(_words(key), dtype=np.uint32))
    assert out.dtype == np.uint32
    assert out.tolist() == _words(result)
    assert _scalar_philox(_words(counter), _words(key)) == _words(result)


def test_philox_known_answers_in_golden_file_and_module():
    assert [(c, k, r) for c, k, r in noise.KAT_VECTORS] == [
        (tuple(_words(c)), tuple(_words(k)), tuple(_words(r))) for c, k, r in KAT]
    for entry in GOLDEN["kat_philox4x32_10"]:
        counter = [int(w, 16) for w in entry["counter"]]
        key = [int(w, 16) for w in entry["key"]]
        assert philox4x32_10(np.array(counter), np.array(key)).tolist() == [int(w, 16) for w in entry["result"]]


def test_vectorised_philox_matches_scalar_reference():
    counters = np.array([[i * 2654435761 % 2**32, (i * 40503) % 2**32, i, 2**32 - 1 - i] for i in range(200)],
                        dtype=np.uint64)
    key = [0x12345678, 0xFEDCBA98]
    out = philox4x32_10(counters, key)
    assert out.shape == (200, 4)
    for i in range(0, 200, 7):
        assert out[i].tolist() == _scalar_philox([int(w) for w in counters[i]], key)


def test_counter_layout():
    seed, stream, step, sample = (7 << 32) | 11, 3, 513, 9
    words = uniform_uint32(seed, stream, step, sample, [5, 70000], [2, 4294967295], 3)
    assert words.shape == (2, 2, 3, 4) and words.dtype == np.uint32
    for i, row in enumerate([5, 70000]):
        for j, col in enumerate([2, 4294967295]):
            for block in range(3):
                expected = _scalar_philox([col, row, block | (stream << 24), (step << 16) | sample], [11, 7])
                assert words[i, j, block].tolist() == expected


def test_gaussian_matches_documented_mapping():
    values = gaussian(2**40 + 5, 1, 17, 3, [0, 9, 1000], [4, 5], 7)
    assert values.shape == (3, 2, 7) and values.dtype == np.float32
    expected = np.array([[[_scalar_gaussian(2**40 + 5, 1, 17, 3, row, col, ch) for ch in range(7)]
                          for col in [4, 5]] for row in [0, 9, 1000]])
    # libm differences between numpy and math can move a float64 by an ulp: allow one float32 ulp
    np.testing.assert_array_max_ulp(values, expected, maxulp=1)


# --- golden file ---

@pytest.mark.parametrize("index", range(len(GOLDEN["gaussian"])))
def test_gaussian_golden_bit_exact(index):
    case = GOLDEN["gaussian"][index]
    arguments = {key: case[key] for key in ("seed", "stream", "step", "sample", "rows", "cols", "channels")}
    values = gaussian(**arguments)
    bits = np.vectorize(lambda b: f"{int(b):08x}", otypes=[object])(values.view(np.uint32)).tolist()
    assert bits == case["float32_bits"]
    np.testing.assert_array_equal(values.astype(np.float64), case["values"])
    if "philox_words" in case:
        words = uniform_uint32(case["seed"], case["stream"], case["step"], case["sample"], case["rows"],
                               case["cols"], (case["channels"] + 3) // 4)
        assert [[[[f"{w:08x}" for w in block] for block in col] for col in row]
                for row in words.tolist()] == case["philox_words"]


def test_golden_has_a_seed_above_two_to_the_32():
    assert any(case["seed"] >= 2**32 for case in GOLDEN["gaussian"])


def test_spectra_noise_and_counter_step_golden():
    case = GOLDEN["spectra_noise"]
    values = spectra_noise(case["seed"], case["step"], case["sample"], case["endmembers"], case["bands"])
    assert values.shape == (case["endmembers"], case["bands"]) and values.dtype == np.float32
    bits = [[f"{int(b):08x}" for b in row] for row in values.view(np.uint32)]
    assert bits == case["float32_bits"]
    np.testing.assert_array_equal(
        values, gaussian(case["seed"], noise.STREAM_SPECTRA, case["step"], case["sample"],
                         range(case["endmembers"]), range(case["bands"]), 1)[:, :, 0])
    for entry in GOLDEN["counter_step"]:
        assert counter_step(entry["K"], entry["index"], entry["round_index"]) == entry["step"]


# --- properties ---

def test_tiled_equals_untiled():
    seed, stream, step, sample = 31337, 0, 4, 2
    whole = gaussian(seed, stream, step, sample, np.arange(64), np.arange(80), 6)
    for r0, r1, c0, c1 in [(0, 16, 0, 16), (10, 64, 33, 80), (63, 64, 0, 80), (5, 6, 7, 8)]:
        tile = gaussian(seed, stream, step, sample, range(r0, r1), range(c0, c1), 6)
        np.testing.assert_array_equal(tile, whole[r0:r1, c0:c1])
    rows, cols = np.array([40, 3, 17]), np.array([79, 0])
    np.testing.assert_array_equal(gaussian(seed, stream, step, sample, rows, cols, 6), whole[np.ix_(rows, cols)])
    # fewer channels are a prefix of more channels
    np.testing.assert_array_equal(gaussian(seed, stream, step, sample, range(64), range(80), 3), whole[..., :3])
    np.testing.assert_array_equal(gaussian(seed, stream, step, sample, range(64), range(80), 11)[..., :6], whole)


def test_reproducible_and_every_key_part_matters():
    base = dict(seed=5, stream=0, step=1, sample=0, rows=range(8), cols=range(8), channels=4)
    reference = gaussian(**base)
    np.testing.assert_array_equal(gaussian(**base), reference)
    for change in [dict(seed=6), dict(seed=5 + 2**32), dict(stream=1), dict(step=2), dict(sample=1)]:
        other = gaussian(**{**base, **change})
        assert not np.any(other == reference), change


def test_statistics_on_a_million_samples():
    values = gaussian(2024, 0, 1, 0, np.arange(500), np.arange(500), 4).astype(np.float64)  # 10^6 values
    flat = values.ravel()
    n = flat.size
    assert n == 10**6
    assert abs(flat.mean()) < 5 / math.sqrt(n)
    assert abs(flat.std() - 1) < 5 / math.sqrt(2 * n)
    assert abs(np.mean(flat ** 4) - 3) < 0.03  # kurtosis of a normal
    assert abs(np.mean(np.abs(flat) > 1.959964) - 0.05) < 0.002

    def corr(a, b):
        return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])

    bound = 5 / math.sqrt(n / 2)
    assert abs(corr(values[:, :-1], values[:, 1:])) < bound        # adjacent columns (counter word 0)
    assert abs(corr(values[:-1], values[1:])) < bound              # adjacent rows (word 1)
    assert abs(corr(values[..., 0], values[..., 1])) < bound       # the two values of one Box-Muller pair
    assert abs(corr(values[..., 1], values[..., 2])) < bound       # across the pairs of one call
    later = gaussian(2024, 0, 2, 0, np.arange(500), np.arange(500), 4).astype(np.float64)
    assert abs(corr(values, later)) < 5 / math.sqrt(n)             # adjacent steps (word 3)
    other_sample = gaussian(2024, 0, 1, 1, np.arange(500), np.arange(500), 4).astype(np.float64)
    assert abs(corr(values, other_sample)) < 5 / math.sqrt(n)      # adjacent samples


def test_uniform_words_are_uniform():
    words = uniform_uint32(1, 0, 0, 0, range(256), range(256), 4).ravel().astype(np.float64)
    counts = np.bincount((words // 2**28).astype(np.int64), minlength=16)
    chi2 = float(np.sum((counts - words.size / 16) ** 2 / (words.size / 16)))
    assert chi2 < 50  # 15 degrees of freedom: p < 1e-5 above 50


def test_tile_speed():
    rows, cols = np.arange(64), np.arange(64)
    gaussian(7, 0, 1, 0, rows, cols, 8)
    best = min(_timed(lambda: gaussian(7, 0, 1, 0, rows, cols, 8)) for _ in range(5))
    assert best < 0.05, f"a 64x64x8 noise tile took {best * 1e3:.1f} ms"


def _timed(function):
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


# --- validation ---

@pytest.mark.parametrize("change", [
    dict(seed=-1), dict(seed=2**64), dict(seed=True), dict(seed=1.0), dict(stream=256), dict(stream=-1),
    dict(step=65536), dict(sample=65536), dict(sample=-1), dict(channels=0), dict(channels=2.0),
    dict(rows=[-1]), dict(rows=[2**32]), dict(cols=[0.5]), dict(rows=[[0, 1]]), dict(cols=[True]),
])
def test_gaussian_validation(change):
    arguments = dict(seed=1, stream=0, step=0, sample=0, rows=[0], cols=[0], channels=4)
    with pytest.raises(UsageError):
        gaussian(**{**arguments, **change})


def test_edge_indices_and_empty_windows():
    assert gaussian(1, 0, 65535, 65535, [2**32 - 1], [2**32 - 1], 1).shape == (1, 1, 1)
    assert gaussian(2**64 - 1, 255, 0, 0, [], range(3), 5).shape == (0, 3, 5)
    assert gaussian(1, 0, 0, 0, np.int32(3), np.uint16(2), 2).shape == (1, 1, 2)  # scalars count as one index


def test_philox_and_helpers_validation():
    with pytest.raises(UsageError):
        philox4x32_10(np.zeros(3, dtype=np.uint32), [0, 0])
    with pytest.raises(UsageError):
        philox4x32_10(np.zeros(4, dtype=np.uint32), [0, 0, 0])
    with pytest.raises(UsageError):
        philox4x32_10(np.array([0, 0, 0, 2**32]), [0, 0])
    with pytest.raises(UsageError):
        philox4x32_10(np.zeros(4), [0, 0])
    with pytest.raises(UsageError):
        uniform_uint32(1, 0, 0, 0, [0], [0], 2**24 + 1)
    assert counter_step(10) == 0 and counter_step(10, 0) == 1 and counter_step(10, 9) == 10
    assert counter_step(10, None, 1) == 11 and counter_step(10, 3, 2) == 26
    for args in [(0,), (10, 10), (10, -1), (10, None, 6000), (65536,)]:
        with pytest.raises(UsageError):
            counter_step(*args)
