"""Split-scene benchmark: train on one half of a scene, unmix the other half (``unmix-run --reestimate-endmembers``).

    python benchmarks/split_scene.py              # Samson and Jasper Ridge, 1 seed, default preset
    python benchmarks/split_scene.py --seeds 3
    python benchmarks/split_scene.py --quick      # tiny preset, Samson only (a smoke test)
    python benchmarks/split_scene.py --datasets jasper_ridge   # one dataset: split_scene_jasper_ridge.*

Why: a model is trained on one flight or scene and run on others of the same sensor. The two halves
of a benchmark scene stand in for that: the materials are the same, their mixtures and the pixels
are not. For Samson (MiSiCNet ground truth) and Jasper Ridge, ``unmix.train.fit`` (as the accuracy
harness calls it) trains on the TOP half of the rows; the pipeline (``run_pipeline`` over the eager
networks, as ``benchmarks/accuracy.py`` runs it) then unmixes the BOTTOM half

- **model E**: with the model's endmembers, as ``unmix-run`` does by default;
- **re-estimated E**: with ``reestimate=20000`` (``unmix-run --reestimate-endmembers``): the endmember
  engine on the bottom half's pixels, started from the model's endmembers;
- **trained on bottom**: beside them, a model trained on the bottom half itself (the per-scene
  ceiling the re-estimation tries to approach without training).

Each is scored against the bottom half's ground truth (the truth abundances sliced the same way, the
truth endmembers kept) with the harness's rule (``benchmarks.accuracy._score``: endmembers matched by
the Hungarian algorithm on abundance-map RMSE; SAD = mean spectral angle in degrees; aRMSE over all
pixels and endmembers, a fraction), and FCLS with each run's E gives the abundance floor for that E.
Seconds: the pipeline's own time on the bottom half (training time apart, in ``train s``).

Checkpoints: ``runs/benchmarks/split/<dataset>-seed<k>/{top,bottom}`` (git-ignored). Results:
``benchmarks/results/split_scene.json|md`` (``split_scene_quick.*`` with ``--quick``,
``split_scene_<datasets>.*`` for a ``--datasets`` subset).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.accuracy import _score  # noqa: E402  (the harness's scoring rule, zero spectra included)
from unmix.io.benchmarks import load_benchmark  # noqa: E402
from unmix.io.scene import Scene  # noqa: E402
from unmix.physics.fcls import fcls  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
RUNS = ROOT / "runs" / "benchmarks" / "split"
DATASETS = {"samson": "Samson (MiSiCNet truth)", "jasper_ridge": "Jasper Ridge"}
REESTIMATE = 20000
METHODS = ("model E", "re-estimated E", "trained on bottom")
CONVENTIONS = ("Train on the top half of the rows, unmix the bottom half; scored on the bottom half's truth. "
               "Endmembers matched by the Hungarian algorithm on abundance-map RMSE; SAD = mean spectral angle "
               "(degrees); aRMSE over all pixels and endmembers (fraction); FCLS aRMSE: exact FCLS with that "
               "row's E; seconds: the pipeline on the bottom half (training apart).")


def half(scene: Scene, part: str) -> Scene:
    """The top or bottom half of ``scene``'s rows as an in-memory Scene, truth abundances sliced the same
    way and truth endmembers kept (the bottom half gets the extra row of an odd height)."""
    middle = scene.height // 2
    rows = slice(0, middle) if part == "top" else slice(middle, scene.height)
    return Scene.from_array(scene.read_tile(rows, slice(0, scene.width)), name=f"{scene.name}-{part}",
                            wavelengths=scene.wavelengths, endmembers=scene.endmembers,
                            abundances=scene.abundances[rows], endmember_names=scene.endmember_names,
                            source=f"{scene.source or scene.name} rows {rows.start}:{rows.stop}")


def train(scene: Scene, folder: Path, preset: str, seed: int, log=print):
    """``unmix.train.fit`` on ``scene`` (as benchmarks/accuracy.py trains), checkpoint in ``folder``;
    returns (FitResult, networks, schedule, inference settings, seconds)."""
    import torch

    from unmix.diffusion.schedule import Schedule
    from unmix.train import fit
    from unmix.train.config import resolve_config
    from unmix.train.fused import load_torch_networks

    config = resolve_config(preset, overrides={"seed": seed})
    torch.manual_seed(seed)
    started = time.perf_counter()
    result = fit(scene, scene.endmembers.shape[0], config=config, out=folder, progress=False,
                 log=lambda message: log(f"  [train {scene.name}] {message}"))
    seconds = time.perf_counter() - started
    inference = dict(result.summary["train"]["inference"])
    networks, saved = load_torch_networks(folder, int(inference["tile"]), device="cpu")
    return result, networks, Schedule.from_config(saved["schedule"]), inference, seconds


def _row(result, scene: Scene, train_s: float) -> dict:
    cube = scene.read()
    report = _score(result.abundances, result.endmembers, scene, cube)
    endmembers = np.asarray(result.endmembers, dtype=np.float64)
    floor = _score(fcls(cube, endmembers), endmembers, scene, cube)
    return {"sad_degrees": report["sad_degrees_mean"], "abundance_rmse": report["abundance_rmse"],
            "fcls_abundance_rmse": floor["abundance_rmse"], "zero_spectra": report["zero_spectra"],
            "sad_degrees_per_endmember": report["sad_degrees"], "seconds": result.timings["total_s"],
            "train_s": train_s, "endmembers_source": result.config.get("endmembers_source"),
            "reestimation": result.config.get("reestimation"), "dc_weight": result.config["dc_weight"]}


def run_dataset(key: str, seed: int, preset: str, log=print) -> dict:
    """The three methods on one dataset for one seed (training seed = pipeline seed)."""
    from unmix.runtime.pipeline import PipelineConfig, run_pipeline

    scene = load_benchmark(key)
    top, bottom = half(scene, "top"), half(scene, "bottom")
    folder = RUNS / f"{key}-seed{seed}"
    rows = {}
    fitted, networks, schedule, inference, train_s = train(top, folder / "top", preset, seed, log)
    config = PipelineConfig.from_dict(inference, seed=seed)
    for method, reestimate in (("model E", None), ("re-estimated E", REESTIMATE)):
        result = run_pipeline(bottom, networks, schedule, config, endmembers=fitted.endmembers, reestimate=reestimate)
        rows[method] = _row(result, bottom, train_s)
        log(f"{key} seed {seed} {method}: SAD {rows[method]['sad_degrees']:.2f}°, "
            f"aRMSE {rows[method]['abundance_rmse']:.4f}")
    fitted, networks, schedule, inference, train_s = train(bottom, folder / "bottom", preset, seed, log)
    result = run_pipeline(bottom, networks, schedule, PipelineConfig.from_dict(inference, seed=seed),
                          endmembers=fitted.endmembers)
    rows["trained on bottom"] = _row(result, bottom, train_s)
    log(f"{key} seed {seed} trained on bottom: SAD {rows['trained on bottom']['sad_degrees']:.2f}°, "
        f"aRMSE {rows['trained on bottom']['abundance_rmse']:.4f}")
    return {"seed": seed, "shape_top": list(top.shape), "shape_bottom": list(bottom.shape), "methods": rows}


def run_split(seeds: int = 1, preset: str = "default", quick: bool = False,
              datasets: list[str] | None = None) -> dict:
    """Every dataset (or ``datasets``) and seed; ``quick``: the ``tiny`` preset and Samson only. Returns the
    results dict (what ``split_scene.json`` holds): per dataset, per seed, per method the scores, plus the means."""
    if quick:
        preset = "tiny"
    keys = ["samson"] if quick else list(datasets or DATASETS)
    unknown = [key for key in keys if key not in DATASETS]
    if unknown:
        raise ValueError(f"split_scene: unknown dataset {unknown[0]!r}; expected one of {', '.join(DATASETS)}")
    started = time.perf_counter()
    results = {"preset": preset, "seeds": seeds, "reestimate": REESTIMATE, "conventions": CONVENTIONS,
               "machine": {"python": platform.python_version(), "numpy": np.__version__,
                           "processor": platform.processor() or platform.machine()},
               "datasets": {}}
    for key in keys:
        runs = [run_dataset(key, seed, preset, log=lambda m: print(m, file=sys.stderr)) for seed in range(seeds)]
        means = {method: {field: float(np.mean([run["methods"][method][field] for run in runs]))
                          for field in ("sad_degrees", "abundance_rmse", "fcls_abundance_rmse", "seconds", "train_s")}
                 for method in METHODS}
        results["datasets"][key] = {"name": DATASETS[key], "runs": runs, "mean": means}
    results["seconds"] = time.perf_counter() - started
    return results


def to_markdown(results: dict) -> str:
    """The table (means over seeds): dataset, method, SAD°, aRMSE, FCLS-with-that-E aRMSE, seconds."""
    lines = [f"Split scene: preset `{results['preset']}`, {results['seeds']} seed(s), "
             f"re-estimation sample {results['reestimate']} pixels.", "",
             "| dataset | method | SAD° | aRMSE | FCLS aRMSE (that E) | seconds | train s |",
             "|---|---|---|---|---|---|---|"]
    for data in results["datasets"].values():
        for method, row in data["mean"].items():
            lines.append(f"| {data['name']} | {method} | {row['sad_degrees']:.2f} | {row['abundance_rmse']:.4f} | "
                         f"{row['fcls_abundance_rmse']:.4f} | {row['seconds']:.1f} | {row['train_s']:.0f} |")
    lines += ["", CONVENTIONS + " Made by `python benchmarks/split_scene.py`."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=1, help="seeds per dataset (default 1)")
    parser.add_argument("--preset", default="default", help="training preset (default: default)")
    parser.add_argument("--quick", action="store_true", help="tiny preset, Samson only")
    parser.add_argument("--datasets", nargs="*", choices=list(DATASETS), default=None, help="a subset (default: both)")
    args = parser.parse_args(argv)
    results = run_split(seeds=args.seeds, preset=args.preset, quick=args.quick, datasets=args.datasets)
    subset = args.datasets and sorted(args.datasets) != sorted(DATASETS)
    stem = ("split_scene_quick" if args.quick else
            "split_scene_" + "_".join(args.datasets) if subset else "split_scene")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    table = to_markdown(results)
    (RESULTS / f"{stem}.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
