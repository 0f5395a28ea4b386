"""The machine's peak: the best float32 square matrix product rate ``2 n^3 / seconds`` (FLOP/s) in
torch and numpy on the benchmark's threads."""
from __future__ import annotations

import math
import time

import numpy as np

PEAK_SIZES = (1024, 2048, 4096)


def peak_flops(threads: int, sizes: tuple[int, ...] = PEAK_SIZES, repeat: int = 5) -> dict:
    """The best float32 square matrix product rate (FLOP/s) in torch and numpy on ``threads``, over
    ``sizes`` (each rate per size is kept in ``by_size``)."""
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:
        torch = None
    found: dict = {"sizes": list(sizes), "threads": threads, "by_size": {}}

    def best_rate(product, flops: float) -> float:
        product()
        best = math.inf
        for _ in range(repeat):
            started = time.perf_counter()
            product()
            best = min(best, time.perf_counter() - started)
        return flops / best

    for size in sizes:
        a = np.random.default_rng(0).random((size, size), dtype=np.float32)
        b = np.random.default_rng(1).random((size, size), dtype=np.float32)
        flops = 2.0 * size ** 3
        row = {"numpy_flops_per_s": best_rate(lambda: a @ b, flops)}
        if torch is not None:
            x, y = torch.from_numpy(a), torch.from_numpy(b)
            row["torch_flops_per_s"] = best_rate(lambda: torch.mm(x, y), flops)
        found["by_size"][str(size)] = row
    for library in ("numpy", "torch"):
        rates = [row.get(f"{library}_flops_per_s") for row in found["by_size"].values()]
        rates = [r for r in rates if r]
        found[f"{library}_flops_per_s"] = max(rates) if rates else None
    found["peak_flops_per_s"] = max(v for k, v in found.items() if k.endswith("_flops_per_s") and v)
    found["size"] = max(found["by_size"], key=lambda k: max(v for v in found["by_size"][k].values() if v))
    if torch is not None:  # bfloat16 products (AVX-512 BF16 or AMX where the CPU has them), beside fp32's peak
        rates = {}
        for size in sizes:
            x = torch.rand(size, size, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
            y = torch.rand(size, size, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
            rates[str(size)] = best_rate(lambda: torch.mm(x, y), 2.0 * size ** 3)
        found["bf16"] = {"torch_by_size": rates, "peak": max(rates.values())}
    return found
