"""What the benchmark ground truths allow: how far typical pure pixels are from the reference endmembers.

    python benchmarks/ground_truth_check.py

For each real scene (Samson with both ground truths, Jasper Ridge) and Sim1 30 dB:

- the distance (RMSE over bands) from each reference endmember to its nearest pixel: 0 means the
  reference spectrum IS a pixel of the scene;
- the spectral angle between each reference endmember and the mean of the q purest pixels by the
  reference abundances (q = 1, 5, 20, 50, 200), with FCLS's abundance RMSE for those means: a method that
  finds the pure pixels exactly and averages them gets about this close;
- for Samson, the angle between the two ground truths' endmembers.

Writes ``results/ground_truth_check.json`` and ``.md``. Angles in degrees.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from unmix.io.benchmarks import load_benchmark  # noqa: E402
from unmix.physics.fcls import fcls  # noqa: E402
from unmix.physics.metrics import evaluate, sad_degrees  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SCENES = {"samson": "Samson (MiSiCNet GT)", "samson:zhu": "Samson (Zhu GT)",
          "jasper_ridge": "Jasper Ridge (Zhu end4 GT)", "sim1:30db": "Sim1 30 dB"}
COUNTS = (1, 5, 20, 50, 200)


def check(name: str) -> dict:
    scene = load_benchmark(name)
    cube = scene.read().astype(np.float64)
    h, w, bands = cube.shape
    pixels = cube.reshape(-1, bands)
    truth_e = np.asarray(scene.endmembers, dtype=np.float64)
    truth_a = np.asarray(scene.abundances, dtype=np.float64).reshape(-1, truth_e.shape[0])
    nearest = np.sqrt(((pixels[:, None, :] - truth_e[None]) ** 2).mean(axis=-1).min(axis=0))
    rows = {}
    for q in COUNTS:
        # the q purest pixels of each endmember (a stable sort: ties go by pixel index)
        means = np.stack([pixels[np.argsort(-truth_a[:, k], kind="stable")[:q]].mean(axis=0)
                          for k in range(truth_e.shape[0])])
        report = evaluate(fcls(pixels, means).reshape(h, w, -1), means, scene.abundances, truth_e)
        rows[str(q)] = {"sad_degrees": sad_degrees(means, truth_e).tolist(),
                        "sad_degrees_mean": float(sad_degrees(means, truth_e).mean()),
                        "fcls_abundance_rmse": report["abundance_rmse"]}
    return {"label": SCENES[name], "names": list(scene.endmember_names or []),
            "nearest_pixel_rmse": nearest.tolist(), "purest_means": rows}


def main() -> int:
    results = {"command": "python benchmarks/ground_truth_check.py", "scenes": {n: check(n) for n in SCENES}}
    zhu, misicnet = load_benchmark("samson:zhu").endmembers, load_benchmark("samson").endmembers
    results["samson_zhu_vs_misicnet_sad_degrees"] = sad_degrees(np.asarray(zhu), np.asarray(misicnet)).tolist()
    lines = ["| scene | nearest pixel RMSE per endmember | SAD° of the mean of the q purest pixels (q = "
             + ", ".join(map(str, COUNTS)) + ") | FCLS aRMSE with them |", "|---|---|---|---|"]
    for entry in results["scenes"].values():
        sads = " / ".join(f"{entry['purest_means'][str(q)]['sad_degrees_mean']:.2f}" for q in COUNTS)
        rmses = " / ".join(f"{entry['purest_means'][str(q)]['fcls_abundance_rmse']:.4f}" for q in COUNTS)
        nearest = ", ".join(f"{v:.4f}" for v in entry["nearest_pixel_rmse"])
        lines.append(f"| {entry['label']} | {nearest} | {sads} | {rmses} |")
    lines += ["", "Samson: SAD° between the Zhu and MiSiCNet ground-truth endmembers (rock, tree, water): "
              + ", ".join(f"{v:.2f}" for v in results["samson_zhu_vs_misicnet_sad_degrees"]) + ".",
              "", "Purest = largest reference abundance (ties by pixel index). Made by "
              "`python benchmarks/ground_truth_check.py`."]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ground_truth_check.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "ground_truth_check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
