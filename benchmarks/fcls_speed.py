"""Speed of unmix's exact FCLS against the classic per-pixel scipy FCLS, on a synthetic mixed cube.

    python benchmarks/fcls_speed.py [--size 512] [--bands 200] [--endmembers 6] [--sample 2000] [--repeat 3]

The cube: p smooth random spectra in [0.05, 0.95], Dirichlet(0.5) abundances (mostly mixed pixels),
white Gaussian noise (sigma 0.01), float32. unmix's ``fcls`` runs on the whole cube. The reference is
the classic FCLS (Heinz & Chang 2001): scipy.optimize.nnls per pixel on the augmented system
[δ·Eᵀ; 1ᵀ] a = [δ·y; 1], which enforces the sum to one only approximately; it is timed on a random
sample of pixels and its rate extrapolated to the whole cube (stated in the JSON). Each is run
``--repeat`` times and the fastest run is reported (all runs are listed). Writes
benchmarks/results/fcls_speed.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import scipy
from scipy.optimize import nnls

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from unmix.physics import fcls  # noqa: E402
from unmix.physics.fcls import ENUMERATION_MAX_P  # noqa: E402

DELTA = 1e-3  # the augmented system's weight on the data term, relative to max(E)


def synthetic_cube(size: int, bands: int, p: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(size, size, bands) float32 cube and its (p, bands) endmembers."""
    rng = np.random.default_rng(seed)
    walk = np.cumsum(rng.standard_normal((p, bands)), axis=1)
    low, high = walk.min(axis=1, keepdims=True), walk.max(axis=1, keepdims=True)
    endmembers = 0.05 + 0.9 * (walk - low) / (high - low)
    cube = np.empty((size, size, bands), dtype=np.float32)
    for row in range(size):
        abundances = rng.dirichlet(np.full(p, 0.5), size)
        cube[row] = abundances @ endmembers + noise * rng.standard_normal((size, bands))
    return cube, endmembers


def classic_fcls(pixels: np.ndarray, endmembers: np.ndarray) -> np.ndarray:
    """Per-pixel FCLS by NNLS on the sum-to-one augmented system (approximate sum to one)."""
    delta = DELTA / np.abs(endmembers).max()
    system = np.vstack([delta * endmembers.T, np.ones((1, endmembers.shape[0]))])
    out = np.empty((pixels.shape[0], endmembers.shape[0]))
    for i, y in enumerate(pixels):
        out[i] = nnls(system, np.append(delta * y, 1.0))[0]
    return out


def timed(run, repeat: int) -> tuple[list[float], np.ndarray]:
    """Wall-clock seconds of ``repeat`` calls of ``run`` and the last call's result."""
    seconds = []
    for _ in range(max(repeat, 1)):
        start = time.perf_counter()
        result = run()
        seconds.append(time.perf_counter() - start)
    return seconds, result


def machine() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": model or platform.processor(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512, help="cube height and width (pixels)")
    parser.add_argument("--bands", type=int, default=200)
    parser.add_argument("--endmembers", type=int, default=6)
    parser.add_argument("--sample", type=int, default=2000, help="pixels timed with the scipy loop")
    parser.add_argument("--noise", type=float, default=0.01, help="noise standard deviation (reflectance)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each; the fastest is reported")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "fcls_speed.json")
    args = parser.parse_args()

    cube, endmembers = synthetic_cube(args.size, args.bands, args.endmembers, args.noise, args.seed)
    n_pixels = args.size * args.size
    fcls(cube[:8, :8], endmembers)  # warm-up (imports, BLAS threads)

    ours_runs, abundances = timed(lambda: fcls(cube, endmembers), args.repeat)
    ours_s = min(ours_runs)

    pixels = cube.reshape(-1, args.bands)
    sample = np.random.default_rng(args.seed + 1).choice(n_pixels, size=min(args.sample, n_pixels), replace=False)
    sample_pixels = pixels[sample].astype(np.float64)
    classic_runs, classic = timed(lambda: classic_fcls(sample_pixels, endmembers), args.repeat)
    classic_s = min(classic_runs)

    ours_rate = n_pixels / ours_s
    classic_rate = sample.size / classic_s
    flat = abundances.reshape(-1, args.endmembers)
    report = {
        "benchmark": "fcls_speed",
        "command": "python benchmarks/fcls_speed.py " + " ".join(sys.argv[1:]),
        "cube": {
            "shape": [args.size, args.size, args.bands],
            "endmembers": args.endmembers,
            "dtype": "float32",
            "abundances": "Dirichlet(0.5)",
            "noise_sigma": args.noise,
            "seed": args.seed,
        },
        "unmix_fcls": {
            "method": "exact: QR reduction to p dims, then "
            + ("support enumeration" if args.endmembers <= ENUMERATION_MAX_P else "lockstep active set"),
            "seconds": round(ours_s, 3),
            "seconds_all_runs": [round(t, 3) for t in ours_runs],
            "pixels_per_s": round(ours_rate),
            "max_sum_to_one_error": float(np.abs(flat.sum(axis=1) - 1).max()),
            "min_abundance": float(flat.min()),
        },
        "scipy_per_pixel": {
            "method": f"scipy.optimize.nnls per pixel on [delta*E^T; 1^T] a = [delta*y; 1], delta = {DELTA}/max(E)",
            "pixels_timed": int(sample.size),
            "seconds_for_sample": round(classic_s, 3),
            "seconds_for_sample_all_runs": [round(t, 3) for t in classic_runs],
            "pixels_per_s": round(classic_rate),
            "extrapolated_seconds_for_cube": round(n_pixels / classic_rate, 1),
            "note": "timed on a random sample of pixels and extrapolated linearly to the whole cube",
            "max_sum_to_one_error": float(np.abs(classic.sum(axis=1) - 1).max()),
        },
        "speedup": round(ours_rate / classic_rate, 1),
        "max_abs_difference_on_sample": float(np.abs(flat[sample] - classic).max()),
        "machine": machine(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
