"""Ablations of the pipeline: DDIM steps K, data consistency, 1D refinement, library prior, diffusion vs CNN.

    python benchmarks/ablations.py                 # Samson and Sim1 30 dB, seed 0, `default` preset
    python benchmarks/ablations.py --reuse         # reuse accuracy.py's checkpoints (same settings and code)

One checkpoint per training variant (the base one is the one ``accuracy.py`` trains for seed 0, in the
same cache, ``runs/benchmarks/<preset>``); every inference variant runs on it:

- K ∈ {1, 2, 5, 10, 25, 50} 2D DDIM steps (t0 fixed), and the same with the 1D loop on, also at K steps;
- data consistency off (``dc_weight = 0``) and at other weights (3, 300);
- the 1D refinement of E on (``refine_spectra = True``; off by default), with and without its own data
  consistency (``spectra_dc_weight``);
- E0 = the NNLS estimate from pass 1's statistics instead of the learnt endmembers; two rounds;
- HybridSTU alone (the ``fit`` abundances and learnt endmembers), and pass 1 with its NNLS E0;
- the library prior left out at training (``library = 'none'``, a second checkpoint; it only acts
  through the 1D refinement, so both are compared with it on). Scenes without wavelengths (Sim1) never
  use the library, so there the variant equals the base and is not trained.

Every pipeline run starts, as ``unmix-run`` does, from the model's (learnt) endmembers.

Writes ``results/ablations.json``, ``results/ablations.md`` and ``results/ablations.png`` (accuracy and time
against K). Metric conventions as in ``accuracy.py`` (Hungarian alignment on abundances; SAD mean in
degrees; aRMSE over all pixels and endmembers, a fraction); times in seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import accuracy  # noqa: E402  (benchmarks/accuracy.py: datasets, training cache, scoring)

RESULTS = accuracy.RESULTS
DEFAULT_KS = (1, 2, 5, 10, 25, 50)


def _row(report: dict, seconds: float, **extra) -> dict:
    return {"sad_degrees": report["sad_degrees_mean"], "abundance_rmse": report["abundance_rmse"],
            "reconstruction_rmse": report.get("reconstruction_rmse"), "zero_spectra": report.get("zero_spectra", 0),
            "seconds": seconds, **extra}


def ablate_dataset(key: str, ks: list[int], preset: str, seed: int, reuse: bool, device: str | None, log,
                   repeats: int = 2) -> dict:
    from unmix.physics.mixing import endmembers_from_abundances
    from unmix.runtime.pipeline import PipelineConfig, predict_abundances, run_pipeline

    label, build, truth_note = accuracy.DATASETS[key]
    scene = build()
    cube = scene.read()
    trained = accuracy.train(key, scene, preset, seed, reuse=reuse, device=device, log=log)
    networks, schedule, inference = accuracy.load_networks(trained, device)

    def pipeline(**overrides) -> dict:
        config = PipelineConfig.from_dict(inference, seed=seed, **overrides)
        # The run is deterministic (eta = 0 unless overridden, seeded noise otherwise): repeats only
        # steady the times on a shared machine, each stage's minimum is reported.
        results = [run_pipeline(scene, networks, schedule, config, endmembers=trained.endmembers)
                   for _ in range(max(1, repeats))]
        result = results[0]
        report = accuracy._score(result.abundances, result.endmembers, scene, cube)
        fastest = {name: min(r.timings[name] for r in results) for name in ("total_s", "refine_s", "spectra_s")}
        return _row(report, fastest["total_s"], refine_s=fastest["refine_s"], spectra_s=fastest["spectra_s"],
                    repeats=len(results))

    rows: dict[str, dict] = {}
    start = time.perf_counter()
    a0 = predict_abundances(scene, networks["hybridstu"], overlap=PipelineConfig.from_dict(inference).overlap)
    cnn_s = time.perf_counter() - start
    rows["HybridSTU alone (fit: A, learnt E)"] = _row(
        accuracy._score(trained.abundances, trained.endmembers, scene, cube), cnn_s)
    valid = np.isfinite(cube).all(axis=-1)
    a, y = a0[valid].astype(np.float64), cube[valid].astype(np.float64)
    nnls = endmembers_from_abundances(a.T @ a, a.T @ y)
    rows["HybridSTU pass 1, NNLS E0 (no diffusion)"] = _row(accuracy._score(a0, nnls, scene, cube), cnn_s)
    default_k = int(inference["steps"])
    rows[f"pipeline default (K={default_k})"] = pipeline()
    rows["no data consistency (dc_weight 0)"] = pipeline(dc_weight=0.0)
    rows["dc_weight 3"] = pipeline(dc_weight=3.0)
    rows["dc_weight 300"] = pipeline(dc_weight=300.0)
    rows["+ 1D refinement of E"] = pipeline(refine_spectra=True)
    rows["+ 1D refinement, no 1D data consistency"] = pipeline(refine_spectra=True, spectra_dc_weight=0.0)
    rows["E0 = NNLS E0 (not the learnt E)"] = pipeline(initial_endmembers="statistics")
    rows["2 rounds"] = pipeline(rounds=2)
    log(f"{key}: variants done")

    sweep = {str(k): pipeline(steps=k) for k in ks}
    sweep_both = {str(k): pipeline(steps=k, spectra_steps=k, refine_spectra=True) for k in ks}
    log(f"{key}: K sweep done")

    library = {"trained": False}
    if scene.wavelengths is None:
        library["note"] = "the scene has no wavelengths: the library prior is never used, the variant equals the base"
    else:
        no_library = accuracy.train(key, scene, preset, seed, overrides={"library": "none"}, variant="nolibrary",
                                    reuse=reuse, device=device, log=log)
        nets, sched, settings = accuracy.load_networks(no_library, device)
        config = PipelineConfig.from_dict(settings, seed=seed, refine_spectra=True)
        result = run_pipeline(scene, nets, sched, config, endmembers=no_library.endmembers)
        rows["+ 1D refinement, no library prior (library = none at training)"] = _row(
            accuracy._score(result.abundances, result.endmembers, scene, cube), result.timings["total_s"])
        rows["no library prior, HybridSTU alone"] = _row(
            accuracy._score(no_library.abundances, no_library.endmembers, scene, cube), None)
        library = {"trained": True, "train_s": no_library.train_s, "cached": no_library.cached,
                   "note": no_library.summary.get("library", {}).get("note")}
    return {"label": label, "ground_truth": truth_note, "seed": seed, "checkpoint": str(trained.checkpoint),
            "train_s": trained.train_s, "cached": trained.cached,
            "base_library": trained.summary.get("library", {}).get("note"),
            "inference": inference, "variants": rows, "k_sweep": sweep, "k_sweep_both_loops": sweep_both,
            "library_variant": library}


def markdown(results: dict) -> str:
    lines = []
    for entry in results["datasets"].values():
        lines += [f"### {entry['label']} ({entry['ground_truth']}), seed {entry['seed']}", "",
                  "| variant | SAD ° | aRMSE | recon. RMSE | inference s |", "|---|---|---|---|---|"]
        for name, row in entry["variants"].items():
            seconds = "–" if row["seconds"] is None else f"{row['seconds']:.1f}"
            mark = " †" if row["zero_spectra"] else ""
            lines.append(f"| {name} | {row['sad_degrees']:.2f}{mark} | {row['abundance_rmse']:.4f} | "
                         f"{row['reconstruction_rmse']:.4f} | {seconds} |")
        if not entry["library_variant"]["trained"]:
            lines.append(f"| no library prior | ({entry['library_variant']['note']}) | | | |")
        lines += ["", "| K (2D steps) | SAD ° | aRMSE | 2D refine s | total s | SAD ° (1D on, also K) | aRMSE (1D on, also K) "
                      "| total s (1D on, also K) |", "|---|---|---|---|---|---|---|---|"]
        for k, row in entry["k_sweep"].items():
            both = entry["k_sweep_both_loops"][k]
            mark = " †" if row["zero_spectra"] else ""
            mark_both = " †" if both["zero_spectra"] else ""
            lines.append(f"| {k} | {row['sad_degrees']:.2f}{mark} | {row['abundance_rmse']:.4f} | {row['refine_s']:.1f} | "
                         f"{row['seconds']:.1f} | {both['sad_degrees']:.2f}{mark_both} | {both['abundance_rmse']:.4f} | "
                         f"{both['seconds']:.1f} |")
        lines.append("")
    lines.append(f"Inference settings otherwise the checkpoint's ({results['inference_note']}); "
                 f"`{results['preset']}` preset, one seed; {results['machine']['torch_threads']} CPU threads on a "
                 f"shared machine (timings noisy; pipeline times are the fastest of {results['repeats']} runs). Hungarian alignment on abundance-map RMSE; SAD = mean spectral "
                 "angle; aRMSE over all pixels and endmembers (fraction). Samson uses the MiSiCNet ground truth. "
                 + accuracy.ZERO_NOTE + " "
                 f"Made by `{results['command']}`.")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for entry in results["datasets"].values():
        ks = [int(k) for k in entry["k_sweep"]]
        for series, style in (("k_sweep", "-o"), ("k_sweep_both_loops", "--s")):
            suffix = "" if series == "k_sweep" else " (1D on, also K)"
            rows = [entry[series][str(k)] for k in ks]
            line, = axes[0].plot(ks, [r["abundance_rmse"] for r in rows], style, label=entry["label"] + suffix)
            axes[1].plot(ks, [r["sad_degrees"] for r in rows], style, color=line.get_color(),
                         label=entry["label"] + suffix)
            axes[2].plot(ks, [r["seconds"] for r in rows], style, color=line.get_color(),
                         label=entry["label"] + suffix)
        alone = entry["variants"]["HybridSTU alone (fit: A, learnt E)"]
        axes[0].axhline(alone["abundance_rmse"], color=line.get_color(), linestyle=":",
                        label=f"{entry['label']}: HybridSTU alone")
        axes[1].axhline(alone["sad_degrees"], color=line.get_color(), linestyle=":",
                        label=f"{entry['label']}: HybridSTU alone")
    for axis, title in zip(axes, ("abundance RMSE (fraction)", "SAD (degrees)", "inference time (s, whole scene)")):
        axis.set_xscale("log")
        axis.set_xlabel("DDIM steps K")
        axis.set_title(title)
        axis.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"unmix ablation: accuracy and time vs K ({results['preset']} preset, seed 0)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="*", choices=list(accuracy.TRAINED), default=["samson", "sim1_30db"])
    parser.add_argument("--ks", nargs="*", type=int, default=list(DEFAULT_KS), help="DDIM steps to sweep")
    parser.add_argument("--preset", default="default", help="training preset (default: default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2,
                        help="pipeline runs per variant; the fastest time is reported (default 2)")
    parser.add_argument("--reuse", action="store_true", help="reuse cached checkpoints (runs/benchmarks)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: min(2, cores))")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: CUDA when available)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    threads = accuracy.set_threads(args.threads)
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    _, inference_note = accuracy.training_budget(args.preset)
    command = "python benchmarks/ablations.py" + (" --reuse" if args.reuse else "") + \
        (f" --preset {args.preset}" if args.preset != "default" else "")
    results = {"command": command, "preset": args.preset, "repeats": args.repeats, "machine": accuracy.machine(threads),
               "inference_note": inference_note,
               "conventions": "Hungarian alignment on abundance-map RMSE; SAD mean in degrees; aRMSE over all "
                              "pixels and endmembers (fraction); times in seconds",
               "datasets": {}}
    for key in args.datasets:
        results["datasets"][key] = ablate_dataset(key, args.ks, args.preset, args.seed, args.reuse, args.device, log,
                                                  repeats=args.repeats)
    results["machine"]["load_average_end"] = list(os.getloadavg())
    results["total_s"] = time.perf_counter() - started
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ablations.json").write_text(json.dumps(results, indent=2) + "\n")
    text = markdown(results)
    (RESULTS / "ablations.md").write_text(text + "\n")
    plot(results, RESULTS / "ablations.png")
    print(text)
    log(f"total {results['total_s'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
