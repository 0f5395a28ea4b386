"""Speed of unmix: FLOPs per pixel, pixels per second per backend, the share of the machine's peak,
peak memory, scaling with cube size and DDIM steps, and VCA + FCLS beside it — one command.

    python benchmarks/speed.py [--quick] [--threads 2] [--size 256] [--repeat 3]

What it measures (every timed run is a fresh process, so no other backend's thread pool is alive):

1. **Models.** A model for a synthetic 156-band, p = 4 scene trained with the ``tiny`` preset's
   network sizes but only a few optimisation steps (speed does not depend on how well a network is
   trained), exported fp32 with 64 x 64 tiles: this is the model timed. The ``default`` preset's
   networks are built the same way; their FLOPs are counted too, and where a width differs from the
   tiny one's (only the 1D spectra UNet: 32 base channels against 16) that network is timed as well.
2. **FLOPs** per network from the exported ONNX graph (:func:`speedlib.flops.count_flops`: ONNX shape inference, then
   Conv / ConvTranspose / MatMul / Gemm multiply-adds counted as 2 FLOPs; element-wise and
   normalisation ops counted separately, one FLOP per output element, and left out of the "matmul"
   figure), and per pixel of the whole default pipeline (pass 1 HybridSTU + K fused 2D steps per
   overlapping tile, + the 1D loop when the settings run it) from the calls a run makes.
3. **Peak**: the best float32 square matrix product (1024², 2048² and 4096²) in torch and numpy on
   the same threads, measured in the same run (its own child process).
4. **Pipeline** px/s at the model's recorded inference settings on a ``size x size x 156`` cube with
   ONNX Runtime, OpenVINO, eager torch (``load_torch_networks``, the same tile, ``torch.set_num_threads``,
   ``torch.inference_mode``) and the C++ runtime (``unmix_run_raw``, OpenVINO, from ``--cpp-build``,
   default build/cpp: ``cmake -S . -B build/cpp -DUNMIX_OPENVINO=ON``; "not built" otherwise), taking
   turns for ``--repeat`` rounds and keeping each one's fastest run (all runs and the load average
   before each are listed). ``pipeline.speedup_vs_torch`` = best backend px/s / eager torch px/s.
   Each network alone (fixed feeds, ``--calls`` calls, best of 3) gives ms per call and achieved FLOP/s.
4b. **Precision**: the pipeline at fp32 on both CPU backends, bf16 on OpenVINO (where the CPU has it) and
   the int8 graphs (``unmix-export --int8``, calibrated on the model's training scene) on both, in
   turns; px/s also scaled to a 205 GFLOP/s fp32 peak (px/s x 205e9 / the measured fp32 peak) so that
   runs on machines of different speed compare. The peak step also measures torch's bf16 matmul rate.
4c. **Bands**: the same at 224 bands (a model trained and exported for them), both backends in fp32 and
   the best precision of 4b.
5. **DDIM steps K** (1, 5, 10, 25) on the best backend, same cube, one run each.
6. **Cube size**: 200-band ENVI cubes on disk (cached under /tmp/unmix-speed-cache), 256² .. 1024² on
   ONNX Runtime, OpenVINO, eager torch and C++ (eager torch up to ``--torch-max-size``, default 1024,
   and only while the run predicted from the previous size, 4x its time per 2x side, stays within
   ``--torch-budget`` seconds, default 240: under load eager torch has run at a tenth of the others'
   rate, which would push the command past 20 minutes), each run's peak RSS from the child itself (``VmHWM``); then
   ``unmix-run`` (the edge command, torch made unimportable) with the best backend on 256² and 2048²
   under ``/usr/bin/time -v`` (peak RSS, the target: flat in cube size and below 1.5 GiB).
   The size series ends with the C++ runtime's peak RSS (its own VmHWM) on the smallest and the large cube:
   the whole-cube call (``unmix_run_ex``, the cube in memory; also net of the cube and the output buffers)
   and the file entry point (``unmix_run_file``, rows read from the ENVI file and written out as they finish).
7. **VCA + FCLS** (``unmix.physics.vca`` then ``unmix.physics.fcls``) px/s on the same cube and threads.
8. **Training**: the default preset on Samson (``benchmarks/train_time.py``), seconds per stage.
9. **Targets**: performance v2's (README's table: scaled px/s, refinement share of the peak, training
   seconds, C++ memory), then the earlier ones (``targets`` in the JSON): speedup >= 3; >= 30 % of peak FLOP/s in the refinement
   networks together with >= 20,000 px/s for the whole pipeline; memory flat in cube size; and the
   FLOP/s a push-broom line of 640 pixels at 250 lines/s (160,000 px/s) needs, against Jetson Orin
   figures with their sources.

The machine (CPU model, usable CPUs, threads) and the load average at start and end are recorded:
the machine may be shared with other jobs, which distorts every timing (eager torch's most), so
ratios within one run are what to compare. Writes benchmarks/results/speed.json and speed.md, and
the same tables into README's ``<!-- speed:start -->`` ... ``<!-- speed:end -->`` block
(``--quick``: speed_quick.json / speed_quick.md only, README untouched: a 128² cube, one repeat, K 1 and 10, sizes 128 and
256 only, no 2048² run; about 3 minutes on 2 cores).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.speedlib.common import RESULTS, log  # noqa: E402
from benchmarks.speedlib.report import machine, targets, versions, write_results  # noqa: E402
from benchmarks.speedlib.steps import Plan, SpeedRun  # noqa: E402
from benchmarks.speedlib.workers import worker  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="128^2 cube, one repeat, K 1 and 10, sizes 128 and 256, no 2048^2 run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=None, help="pipeline cube side (default 256; quick 128)")
    parser.add_argument("--repeat", type=int, default=None, help="rounds of the backend comparison (default 2; quick 1)")
    parser.add_argument("--calls", type=int, default=40, help="calls per batch when timing a network alone")
    parser.add_argument("--steps", type=int, nargs="+", default=None, help="K values to time (default 1 5 10 25)")
    parser.add_argument("--sizes", type=int, nargs="+", default=None,
                        help="cube sides for the size series on every backend (default 256 512 1024)")
    parser.add_argument("--torch-max-size", type=int, default=1024,
                        help="largest size-series cube for eager torch (default 1024; 0: none)")
    parser.add_argument("--torch-budget", type=float, default=240.0,
                        help="skip an eager-torch size whose run, predicted from the previous size, would take "
                             "longer than this many seconds (default 240)")
    parser.add_argument("--large-size", type=int, default=2048, help="the unmix-run cube for the best backend")
    parser.add_argument("--skip-large", action="store_true", help="no unmix-run on the large cube")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--no-readme", action="store_true",
                        help="do not rewrite README's speed block (a full run rewrites it; --quick never does)")
    parser.add_argument("--cpp-build", type=Path, default=ROOT / "build" / "cpp",
                        help="the CMake build with unmix_run_raw (OpenVINO) for the C++ row (default build/cpp)")
    return parser.parse_args()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2:])
        return
    args = parse_args()
    plan = Plan.from_args(args)
    started = time.perf_counter()
    results: dict = {"benchmark": "speed", "command": "python benchmarks/speed.py " + " ".join(sys.argv[1:]),
                     "mode": "quick" if plan.quick else "full",
                     "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                     "machine": machine(), "versions": versions(), "threads": plan.threads,
                     "load_average_at_start": [round(v, 2) for v in os.getloadavg()]}
    with tempfile.TemporaryDirectory(prefix="unmix-speed-") as work:
        run = SpeedRun(plan, Path(work), log)
        results.update(run.models())
        results["peak"] = run.peak()
        results["pipeline"] = run.pipeline()
        results["precisions"] = run.precisions()
        results["bands"] = run.bands()
        results["networks"] = run.networks()
        results["steps"] = run.steps()
        results["sizes"] = run.sizes()
        results["vca_fcls"] = run.vca_fcls()
        results["training"] = run.training()
    results["targets"] = targets(results, run.peak_rate)
    results["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    results["benchmark_wall_s"] = round(time.perf_counter() - started, 1)
    out = args.out or RESULTS / ("speed_quick.json" if plan.quick else "speed.json")
    write_results(results, out, readme=not plan.quick and not args.no_readme and args.out is None, log=log)


if __name__ == "__main__":
    main()
