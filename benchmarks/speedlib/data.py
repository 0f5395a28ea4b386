"""Synthetic mixed cubes: in memory (Dirichlet(1) abundances of smooth random spectra, Gaussian noise
sigma 0.005) and, for the cube-size series, float32 BSQ ENVI cubes on disk cached under ``CACHE``."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np

from unmix.io.envi import CubeWriter
from unmix.io.scene import Scene

from .common import CACHE, ENDMEMBERS, GIB


def synthetic_endmembers(bands: int, p: int, seed: int = 0) -> np.ndarray:
    """(p, bands) smooth random spectra in [0.05, 0.95]."""
    rng = np.random.default_rng(seed)
    walk = np.cumsum(rng.standard_normal((p, bands)), axis=1)
    low, high = walk.min(axis=1, keepdims=True), walk.max(axis=1, keepdims=True)
    return 0.05 + 0.9 * (walk - low) / (high - low)


def synthetic_block(rng: np.random.Generator, endmembers: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """(rows, cols, B) float32 mixed pixels: Dirichlet(1) abundances, Gaussian noise sigma 0.005."""
    p, bands = endmembers.shape
    abundances = rng.dirichlet(np.ones(p), size=(rows, cols))
    cube = abundances @ endmembers + 0.005 * rng.standard_normal((rows, cols, bands))
    return cube.astype(np.float32)


def synthetic_scene(size: int, bands: int, p: int = ENDMEMBERS, seed: int = 0) -> Scene:
    rng = np.random.default_rng(seed + 1)
    cube = synthetic_block(rng, synthetic_endmembers(bands, p, seed), size, size)
    return Scene.from_array(cube, name=f"synthetic{size}", wavelengths=np.linspace(400.0, 2500.0, bands))


def disk_cube(size: int, bands: int, log) -> tuple[Path, dict]:
    """The cached ``size x size x bands`` float32 BSQ cube (written strip by strip when absent)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    header = CACHE / f"cube{size}x{size}x{bands}.hdr"
    nbytes = size * size * bands * 4
    info = {"path": str(header), "shape": [size, size, bands], "bytes": nbytes, "dtype": "float32", "interleave": "bsq"}
    image = CACHE / f"cube{size}x{size}x{bands}.img"
    if header.exists() and image.exists() and image.stat().st_size == nbytes:
        info["reused"] = True
        return header, info
    free = shutil.disk_usage(CACHE).free
    if free < nbytes + 256 * 1024 ** 2:
        raise SystemExit(f"speed.py: {CACHE} has {free / GIB:.2f} GiB free; the {size}^2 cube needs {nbytes / GIB:.2f} GiB")
    log(f"writing the {size}x{size}x{bands} cube ({nbytes / GIB:.2f} GiB) to {header}")
    started = time.perf_counter()
    rng = np.random.default_rng(7)
    endmembers = synthetic_endmembers(bands, ENDMEMBERS, seed=3)
    strip = 64
    with CubeWriter(header, (size, size, bands), wavelengths=np.linspace(400.0, 2500.0, bands),
                    description="unmix speed benchmark: synthetic mixed cube") as writer:
        for row in range(0, size, strip):
            rows = min(strip, size - row)
            writer.write_tile(slice(row, row + rows), slice(0, size), synthetic_block(rng, endmembers, rows, size))
    info["reused"] = False
    info["write_s"] = round(time.perf_counter() - started, 1)
    return header, info
