"""Counter-based Gaussian noise: Philox4x32-10 plus Box-Muller, in plain numpy integer arithmetic.

Every noise value is a pure function of ``(seed, stream, step, sample, row, col, channel)``, so a tile's
noise is the same window of the whole image's noise (tiled = untiled), a seed reproduces a run exactly,
and the C++ core computes the same numbers from the same rule. numpy's own random generators are not
used anywhere in this module.

Philox4x32-10 (Salmon, Moraes, Dror and Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC'11;
reference implementation Random123, ``include/Random123/philox.h``):

- state: a 128-bit counter ``(c0, c1, c2, c3)`` and a 64-bit key ``(k0, k1)``, all uint32 words;
- one round: ``hi0:lo0 = 0xD2511F53 * c0``, ``hi1:lo1 = 0xCD9E8D57 * c2`` (32x32 -> 64-bit products),
  then ``(c0, c1, c2, c3) <- (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0)``;
- ten rounds; before rounds 2..10 the key is bumped: ``k0 += 0x9E3779B9``, ``k1 += 0xBB67AE85`` (mod 2^32);
- checked against the Random123 known-answer vectors (``tests/kat_vectors`` of
  github.com/DEShawResearch/random123, the three ``philox4x32 10`` lines; copied in :data:`KAT_VECTORS`).

The mapping from a noise value to Philox words (the C++ core mirrors it exactly):

- key: ``k0 = seed & 0xFFFFFFFF``, ``k1 = (seed >> 32) & 0xFFFFFFFF``, for ``0 <= seed < 2^64``;
- counter: ``c0 = col``, ``c1 = row`` (global pixel indices, ``< 2^32``),
  ``c2 = (channel // 4) | (stream << 24)`` (``channel // 4 < 2^24``, ``stream < 256``),
  ``c3 = (step << 16) | sample`` (``step < 65536``, ``sample < 65536``);
- streams: 0 = 2D abundance noise (:data:`STREAM_ABUNDANCE`), 1 = 1D spectra noise
  (:data:`STREAM_SPECTRA`), 2 = the pixel-sample keys of ``unmix-run --reestimate-endmembers``
  (:data:`STREAM_PIXEL_SAMPLE`, raw words of :func:`uniform_uint32`); 3..255 reserved;
- the four output words ``x0..x3`` become uniforms ``u_i = (x_i + 0.5) * 2^-32`` in float64 (exact,
  strictly inside (0, 1)); Box-Muller with ``TWO_PI = 6.283185307179586`` (2*pi rounded to double):
  ``r01 = sqrt(-2.0 * log(u0))``, ``z0 = r01 * cos(TWO_PI * u1)``, ``z1 = r01 * sin(TWO_PI * u1)``,
  ``r23 = sqrt(-2.0 * log(u2))``, ``z2 = r23 * cos(TWO_PI * u3)``, ``z3 = r23 * sin(TWO_PI * u3)``,
  each rounded to float32 at the end;
- channel ``c`` takes ``z_(c % 4)`` of the call whose ``c2`` holds block ``c // 4``.

The Philox words are exact on every platform. The float64 Box-Muller values depend on the libm's
``log``/``cos``/``sin`` (correct to about one float64 ulp), so the float32 results agree bit for bit
except, with probability about 2^-29 per value, a result that sits on a float32 rounding boundary.

Counter ``step`` convention for the DDIM loops (use :func:`counter_step`): within round ``r`` of a run
with K DDIM steps, the forward noising that starts the loop (``q_sample`` to ``t0``) uses
``step = r * (K + 1)``, and DDIM step ``i`` (0-based, in loop order) uses ``step = r * (K + 1) + i + 1``.
``sample`` is the index of the stochastic sample (0 when only one is drawn).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from unmix.errors import UsageError, require_int

__all__ = [
    "KAT_VECTORS",
    "PHILOX_M0",
    "PHILOX_M1",
    "PHILOX_W0",
    "PHILOX_W1",
    "STREAM_ABUNDANCE",
    "STREAM_PIXEL_SAMPLE",
    "STREAM_SPECTRA",
    "TWO_PI",
    "counter_step",
    "gaussian",
    "philox4x32_10",
    "spectra_noise",
    "uniform_uint32",
]

PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9  # golden ratio
PHILOX_W1 = 0xBB67AE85  # sqrt(3) - 1
ROUNDS = 10

STREAM_ABUNDANCE = 0
STREAM_SPECTRA = 1
STREAM_PIXEL_SAMPLE = 2

TWO_PI = 2.0 * math.pi  # 6.283185307179586, 0x401921FB54442D18
_MASK32 = 0xFFFFFFFF
_TWO_POW_MINUS_32 = 2.0 ** -32

# Random123 known-answer vectors for philox4x32 with 10 rounds, from tests/kat_vectors of
# https://github.com/DEShawResearch/random123 (fields: counter[4], key[2] -> result[4], hex):
#   philox4x32 10 00000000 00000000 00000000 00000000 00000000 00000000   6627e8d5 e169c58d bc57ac4c 9b00dbd8
#   philox4x32 10 ffffffff ffffffff ffffffff ffffffff ffffffff ffffffff   408f276d 41c83b0e a20bc7c6 6d5451fd
#   philox4x32 10 243f6a88 85a308d3 13198a2e 03707344 a4093822 299f31d0   d16cfe09 94fdcceb 5001e420 24126ea1
KAT_VECTORS: tuple[tuple[tuple[int, int, int, int], tuple[int, int], tuple[int, int, int, int]], ...] = (
    ((0x00000000, 0x00000000, 0x00000000, 0x00000000), (0x00000000, 0x00000000),
     (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF),
     (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
)

_MAX_STREAM = 1 << 8
_MAX_STEP = 1 << 16
_MAX_SAMPLE = 1 << 16
_MAX_BLOCKS = 1 << 24
_MAX_INDEX = 1 << 32
_MAX_SEED = 1 << 64


def _philox_words(c0, c1, c2, c3, k0: int, k1: int):
    """Philox4x32-10 on broadcastable uint64 arrays holding 32-bit values; returns four such arrays."""
    m0 = np.uint64(PHILOX_M0)
    m1 = np.uint64(PHILOX_M1)
    shift = np.uint64(32)
    mask = np.uint64(_MASK32)
    for round_index in range(ROUNDS):
        if round_index:
            k0 = (k0 + PHILOX_W0) & _MASK32
            k1 = (k1 + PHILOX_W1) & _MASK32
        product0 = m0 * c0          # < 2^64: exact in uint64
        product1 = m1 * c2
        c0, c1, c2, c3 = ((product1 >> shift) ^ c1 ^ np.uint64(k0), product1 & mask,
                          (product0 >> shift) ^ c3 ^ np.uint64(k1), product0 & mask)
    return c0, c1, c2, c3


def philox4x32_10(counter: Any, key: Any) -> np.ndarray:
    """Raw Philox4x32-10: ``counter`` (..., 4) and ``key`` (2,) unsigned 32-bit words -> (..., 4) uint32.

    ``counter`` may be any integer array-like with last axis 4 (values 0..2^32-1); ``key`` is two words.
    """
    words = np.asarray(counter)
    if words.ndim == 0 or words.shape[-1] != 4:
        raise UsageError(f"philox4x32_10: counter must have a last axis of 4 words, got shape {words.shape}")
    words = _as_words(words, "counter")
    key_words = _as_words(np.asarray(key), "key").reshape(-1)
    if key_words.size != 2:
        raise UsageError(f"philox4x32_10: key must be 2 words, got {key_words.size}")
    out = _philox_words(words[..., 0], words[..., 1], words[..., 2], words[..., 3],
                        int(key_words[0]), int(key_words[1]))
    return np.stack(out, axis=-1).astype(np.uint32)


def _as_words(values: np.ndarray, name: str) -> np.ndarray:
    if values.dtype.kind not in "iu" or values.dtype == np.bool_:
        raise UsageError(f"philox4x32_10: {name} must hold integers, got dtype {values.dtype}")
    if values.size and (int(values.min()) < 0 or int(values.max()) > _MASK32):
        raise UsageError(f"philox4x32_10: {name} words must be in 0..2^32-1")
    return values.astype(np.uint64)


def _check_int(value: Any, name: str, limit: int) -> int:
    return require_int(value, f"noise: {name}", 0, limit - 1)


def _check_indices(values: Any, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim == 0:
        array = array.reshape(1)
    if array.ndim != 1:
        raise UsageError(f"noise: {name} must be a 1D sequence of global indices, got shape {array.shape}")
    if array.size == 0:
        return np.zeros(0, dtype=np.uint64)
    if array.dtype.kind not in "iu" or array.dtype == np.bool_:
        raise UsageError(f"noise: {name} must hold integers, got dtype {array.dtype}")
    if int(array.min()) < 0 or int(array.max()) >= _MAX_INDEX:
        raise UsageError(f"noise: {name} must be in 0..2^32-1, got values {int(array.min())}..{int(array.max())}")
    return array.astype(np.uint64)


def _window_words(seed: Any, stream: Any, step: Any, sample: Any, rows: Any, cols: Any, blocks: int):
    """Validate the arguments and run Philox over the window: four (R, C, blocks) uint64 word arrays."""
    seed = _check_int(seed, "seed", _MAX_SEED)
    stream = _check_int(stream, "stream", _MAX_STREAM)
    step = _check_int(step, "step", _MAX_STEP)
    sample = _check_int(sample, "sample", _MAX_SAMPLE)
    row_words = _check_indices(rows, "rows")
    col_words = _check_indices(cols, "cols")
    shape = (row_words.size, col_words.size, blocks)
    c0 = np.broadcast_to(col_words[None, :, None], shape)
    c1 = np.broadcast_to(row_words[:, None, None], shape)
    c2 = np.broadcast_to(np.arange(blocks, dtype=np.uint64)[None, None, :] | np.uint64(stream << 24), shape)
    c3 = np.uint64((step << 16) | sample)
    return _philox_words(c0, c1, c2, c3, seed & _MASK32, (seed >> 32) & _MASK32)


def uniform_uint32(seed: int, stream: int, step: int, sample: int, rows: Any, cols: Any,
                   blocks: int) -> np.ndarray:
    """The Philox words behind the noise: ``(len(rows), len(cols), blocks, 4)`` uint32.

    Word ``[i, j, b, w]`` is output word ``w`` of the call with counter
    ``(cols[j], rows[i], b | stream << 24, step << 16 | sample)`` and key ``(seed lo, seed hi)``.
    """
    blocks = _check_int(blocks, "blocks", _MAX_BLOCKS + 1)
    words = _window_words(seed, stream, step, sample, rows, cols, blocks)
    return np.stack(words, axis=-1).astype(np.uint32)


def _box_muller(x0, x1, x2, x3) -> np.ndarray:
    """Four uint32-valued word arrays -> (..., 4) float64 standard normals (the documented Box-Muller)."""
    u0, u1, u2, u3 = ((word.astype(np.float64) + 0.5) * _TWO_POW_MINUS_32 for word in (x0, x1, x2, x3))
    radius01 = np.sqrt(-2.0 * np.log(u0))
    radius23 = np.sqrt(-2.0 * np.log(u2))
    angle1 = TWO_PI * u1
    angle3 = TWO_PI * u3
    return np.stack([radius01 * np.cos(angle1), radius01 * np.sin(angle1),
                     radius23 * np.cos(angle3), radius23 * np.sin(angle3)], axis=-1)


def gaussian(seed: int, stream: int, step: int, sample: int, rows: Any, cols: Any,
             channels: int) -> np.ndarray:
    """Standard normal noise for a window of pixels: ``(len(rows), len(cols), channels)`` float32.

    ``rows`` and ``cols`` are global pixel indices (any 1D integer sequences, e.g. ``range(r0, r1)``),
    so a tile's noise equals the same window of the whole image's noise. ``channels`` counts from
    channel 0. ``seed`` in 0..2^64-1, ``stream`` in 0..255, ``step`` and ``sample`` in 0..65535;
    see the module docstring for the exact counter layout.
    """
    channels = _check_int(channels, "channels", 4 * _MAX_BLOCKS + 1)
    if channels == 0:
        raise UsageError("noise: channels must be >= 1, got 0")
    blocks = (channels + 3) // 4
    words = _window_words(seed, stream, step, sample, rows, cols, blocks)
    normals = _box_muller(*words)  # (R, C, blocks, 4)
    rows_count, cols_count = normals.shape[:2]
    return normals.reshape(rows_count, cols_count, 4 * blocks)[:, :, :channels].astype(np.float32)


def spectra_noise(seed: int, step: int, sample: int, endmembers: int, bands: int) -> np.ndarray:
    """Noise for the 1D spectra loop: ``(endmembers, bands)`` float32.

    The rule: ``gaussian(seed, STREAM_SPECTRA, step, sample, rows=range(endmembers),
    cols=range(bands), channels=1)[:, :, 0]`` (endmember index as the row, band index as the column).
    """
    endmembers = _check_int(endmembers, "endmembers", _MAX_INDEX)
    bands = _check_int(bands, "bands", _MAX_INDEX)
    return gaussian(seed, STREAM_SPECTRA, step, sample, np.arange(endmembers), np.arange(bands), 1)[:, :, 0]


def counter_step(steps: int, index: int | None = None, round_index: int = 0) -> int:
    """The counter ``step`` for DDIM step ``index`` (0-based) of round ``round_index`` in a K-step loop.

    ``index=None`` names the forward noising that starts the loop. Rule:
    ``round_index * (steps + 1) + (0 if index is None else index + 1)``; must stay below 65536.
    """
    steps = _check_int(steps, "steps", _MAX_STEP)
    if steps < 1:
        raise UsageError("noise: steps must be >= 1, got 0")
    round_index = _check_int(round_index, "round_index", _MAX_STEP)
    offset = 0
    if index is not None:
        offset = _check_int(index, "index", steps) + 1
    value = round_index * (steps + 1) + offset
    if value >= _MAX_STEP:
        raise UsageError(f"noise: counter step {value} exceeds 65535 (round {round_index}, {steps} steps)")
    return value
