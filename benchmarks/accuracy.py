"""Accuracy harness: every method on every dataset, with the metric conventions of DESIGN.md.

    python benchmarks/accuracy.py            # baselines on all datasets, writes results + README table
    python benchmarks/accuracy.py --quick    # one seed, Samson and Sim1 30 dB

Methods: VCA+FCLS (mean ± std over seeds) and FCLS given the true endmembers (a ceiling for the
abundance RMSE). Datasets are read from UNMIX_DATA (../shared/data by default); the synthetic scene is
made from the earthlib library with exact truth.

Conventions: endmembers are matched to the truth by the Hungarian algorithm on abundance-map RMSE;
SAD is the mean spectral angle in degrees; aRMSE is over all pixels and endmembers (a fraction).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from unmix.io.benchmarks import load_benchmark  # noqa: E402
from unmix.io.libraries import load_earthlib  # noqa: E402
from unmix.physics.fcls import fcls  # noqa: E402
from unmix.physics.metrics import evaluate  # noqa: E402
from unmix.physics.synthetic import synthetic_scene  # noqa: E402
from unmix.physics.vca import vca  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"

#: (key, label, how to build the scene, ground-truth note)
DATASETS = {
    "samson": ("Samson", lambda: load_benchmark("samson:misicnet"), "MiSiCNet GT"),
    "samson_zhu": ("Samson", lambda: load_benchmark("samson:zhu"), "Zhu GT; its M is max-normalised, SAD only"),
    "jasper_ridge": ("Jasper Ridge", lambda: load_benchmark("jasper_ridge"), "Zhu end4 GT"),
    "sim1": ("Sim1 clean", lambda: load_benchmark("sim1"), "MiSiCNet Sim1"),
    "sim1_30db": ("Sim1 30 dB", lambda: load_benchmark("sim1:30db"), "MiSiCNet Sim1 + AWGN, HySUPP SNR, seed 0"),
    "synthetic_30db": (
        "Synthetic earthlib 30 dB",
        lambda: synthetic_scene(load_earthlib("optimized"), 5, size=(96, 96), kind="smooth", max_purity=0.9,
                                snr_db=30.0, seed=0),
        "5 earthlib spectra, smooth abundances, purity <= 0.9, seed 0",
    ),
}
QUICK = ("samson", "sim1_30db")


def vca_fcls(cube: np.ndarray, p: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    pixels = cube.reshape(-1, cube.shape[-1])
    endmembers, _ = vca(pixels, p, seed=seed)
    return fcls(cube, endmembers), endmembers


def run_dataset(key: str, seeds: int) -> dict:
    label, build, truth_note = DATASETS[key]
    scene = build()
    cube = scene.read()
    p = scene.endmembers.shape[0]
    rows: dict[str, dict] = {}

    runs, seconds = [], []
    for seed in range(seeds):
        start = time.perf_counter()
        abundances, endmembers = vca_fcls(cube, p, seed)
        seconds.append(time.perf_counter() - start)
        runs.append(evaluate(abundances, endmembers, scene.abundances, scene.endmembers, cube=cube))
    rows["VCA+FCLS"] = summarise(runs, seconds)

    if key != "samson_zhu":  # Zhu's Samson M is not on the cube's scale: FCLS with it is meaningless
        start = time.perf_counter()
        abundances = fcls(cube, scene.endmembers)
        seconds = [time.perf_counter() - start]
        rows["FCLS, true endmembers"] = summarise(
            [evaluate(abundances, scene.endmembers, scene.abundances, scene.endmembers, cube=cube)], seconds)
    return {"label": label, "ground_truth": truth_note, "shape": list(cube.shape), "endmembers": p,
            "methods": rows}


def summarise(runs: list[dict], seconds: list[float]) -> dict:
    def stats(key: str) -> dict:
        values = [float(r[key]) for r in runs]
        return {"mean": statistics.fmean(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0}

    return {
        "runs": len(runs),
        "sad_degrees": stats("sad_degrees_mean"),
        "sad_radians": stats("sad_radians_mean"),
        "abundance_rmse": stats("abundance_rmse"),
        "reconstruction_rmse": stats("reconstruction_rmse"),
        "psnr_db": stats("psnr_db"),
        "seconds": statistics.fmean(seconds),
    }


def markdown(results: dict) -> str:
    lines = [
        "| dataset (ground truth) | method | SAD ° (rad) | aRMSE | recon. RMSE | PSNR dB | time s |",
        "|---|---|---|---|---|---|---|",
    ]
    for entry in results["datasets"].values():
        for method, row in entry["methods"].items():
            def fmt(stat: dict, digits: int) -> str:
                text = f"{stat['mean']:.{digits}f}"
                return text + (f" ± {stat['std']:.{digits}f}" if row["runs"] > 1 else "")

            lines.append(
                f"| {entry['label']} ({entry['ground_truth']}) | {method} (n={row['runs']}) | "
                f"{fmt(row['sad_degrees'], 2)} ({row['sad_radians']['mean']:.4f}) | {fmt(row['abundance_rmse'], 4)} | "
                f"{row['reconstruction_rmse']['mean']:.4f} | {row['psnr_db']['mean']:.2f} | {row['seconds']:.2f} |")
    lines.append("")
    lines.append("Endmembers matched by the Hungarian algorithm on abundance-map RMSE; SAD = mean spectral angle; "
                 "aRMSE over all pixels and endmembers (fraction); PSNR peak 1.0. "
                 "Made by `python benchmarks/accuracy.py`.")
    return "\n".join(lines)


def update_readme(table: str, marker: str = "baselines") -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    if start not in text or end not in text:
        print(f"README.md has no {start} ... {end} block; table not inserted", file=sys.stderr)
        return
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{table}\n{end}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one seed, Samson and Sim1 30 dB")
    parser.add_argument("--seeds", type=int, default=3, help="VCA seeds per dataset (default 3)")
    parser.add_argument("--datasets", nargs="*", choices=list(DATASETS), default=None)
    parser.add_argument("--no-readme", action="store_true", help="do not rewrite README's table")
    args = parser.parse_args(argv)
    keys = args.datasets or (list(QUICK) if args.quick else list(DATASETS))
    seeds = 1 if args.quick else args.seeds
    results = {"command": "python benchmarks/accuracy.py" + (" --quick" if args.quick else ""),
               "machine": {"python": platform.python_version(), "numpy": np.__version__,
                           "processor": platform.processor() or platform.machine()},
               "datasets": {}}
    for key in keys:
        start = time.perf_counter()
        results["datasets"][key] = run_dataset(key, seeds)
        print(f"{key}: done in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "baselines_quick" if args.quick else "baselines"
    (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown(results)
    (RESULTS / f"{name}.md").write_text(table + "\n")
    print(table)
    if not args.quick and not args.no_readme and args.datasets is None:
        update_readme(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
