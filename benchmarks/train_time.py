"""Training time per preset and model sizes (parameters, FLOPs) on this machine.

    python benchmarks/train_time.py                      # tiny and default on Samson
    python benchmarks/train_time.py --presets tiny full --scene sim1:30db

Writes benchmarks/results/train_time.json. FLOPs are counted by torch's FlopCounterMode for one
forward pass (a multiply-add counts as 2): per pixel for HybridSTU and the 2D ResUNet (a 64x64 tile),
per spectrum for the 1D ResUNet.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from unmix.train.checkpoint import load_checkpoint  # noqa: E402
from unmix.train.models import count_parameters, flops_per_call  # noqa: E402
from unmix.train.trainer import fit  # noqa: E402


def model_sizes(checkpoint: Path, tile: int = 64) -> dict:
    models, config = load_checkpoint(checkpoint)
    bands = config["sensor"]["bands"]
    p = config["endmembers"]["count"]
    pixels = tile * tile
    t = torch.zeros(1)
    return {
        "hybridstu": {"parameters": count_parameters(models["hybridstu"]),
                      "flops_per_pixel": flops_per_call(models["hybridstu"], torch.zeros(1, bands, tile, tile)) / pixels},
        "abundance": {"parameters": count_parameters(models["abundance"]),
                      "flops_per_pixel_per_step": flops_per_call(models["abundance"],
                                                                 (torch.zeros(1, p, tile, tile), t)) / pixels},
        "spectra": {"parameters": count_parameters(models["spectra"]),
                    "flops_per_spectrum_per_step": flops_per_call(models["spectra"], (torch.zeros(1, 1, bands), t))},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "default"], choices=["tiny", "default", "full"])
    parser.add_argument("--scene", default="samson", help="benchmark name or ENVI path (default samson)")
    parser.add_argument("--endmembers", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "train_time.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    results = {"command": "python benchmarks/train_time.py " + " ".join(argv or sys.argv[1:]),
               "scene": args.scene, "endmembers": args.endmembers,
               "machine": {"cores": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                           "torch": torch.__version__, "threads": torch.get_num_threads()},
               "presets": {}}
    for preset in args.presets:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            result = fit(args.scene, args.endmembers, preset=preset, out=Path(tmp) / "run", progress=False,
                         log=lambda message: None)
            wall = time.perf_counter() - start
            results["presets"][preset] = {"wall_s": wall, "stages_s": result.summary["timings"],
                                          "models": model_sizes(Path(tmp) / "run")}
        print(f"{preset}: {wall:.1f} s", file=sys.stderr)
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
