"""Speed of unmix: FLOPs per pixel, pixels per second per backend, the share of the machine's peak,
peak memory, scaling with cube size and DDIM steps, and VCA + FCLS beside it — one command.

    python benchmarks/speed.py [--quick] [--threads 2] [--size 256] [--repeat 3]

What it measures (every timed run is a fresh process, so no other backend's thread pool is alive):

1. **Models.** A model for a synthetic 156-band, p = 4 scene trained with the ``tiny`` preset's
   network sizes but only a few optimisation steps (speed does not depend on how well a network is
   trained), exported fp32 with 64 x 64 tiles: this is the model timed. The ``default`` preset's
   networks are built the same way; their FLOPs are counted too, and where a width differs from the
   tiny one's (only the 1D spectra UNet: 32 base channels against 16) that network is timed as well.
2. **FLOPs** per network from the exported ONNX graph (:func:`count_flops`: ONNX shape inference, then
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
5. **DDIM steps K** (1, 5, 10, 25) on the best backend, same cube, one run each.
6. **Cube size**: 200-band ENVI cubes on disk (cached under /tmp/unmix-speed-cache), 256² .. 1024² on
   ONNX Runtime, OpenVINO, eager torch and C++ (eager torch up to ``--torch-max-size``, default 1024,
   and only while the run predicted from the previous size, 4x its time per 2x side, stays within
   ``--torch-budget`` seconds, default 240: under load eager torch has run at a tenth of the others'
   rate, which would push the command past 20 minutes), each run's peak RSS from the child itself (``VmHWM``); then
   ``unmix-run`` (the edge command, torch made unimportable) with the best backend on 256² and 2048²
   under ``/usr/bin/time -v`` (peak RSS, the target: flat in cube size and below 1.5 GiB).
7. **VCA + FCLS** (``unmix.physics.vca`` then ``unmix.physics.fcls``) px/s on the same cube and threads.
8. **Targets** (``targets`` in the JSON): speedup >= 3; >= 30 % of peak FLOP/s in the refinement
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
import json
import math
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Mapping

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.readme import update_readme  # noqa: E402
from unmix.io.envi import CubeWriter  # noqa: E402
from unmix.io.scene import Scene  # noqa: E402
from unmix.runtime.settings import c_abi_settings  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
CACHE = Path(tempfile.gettempdir()) / "unmix-speed-cache"
BANDS, ENDMEMBERS, TILE = 156, 4, 64
SERIES_BANDS = 200
MEMORY_TARGET_GIB = 1.5
GIB = 1024 ** 3
NETWORKS = ("hybridstu", "abundance_step", "spectra_step")
REFINEMENT = ("abundance_step", "spectra_step")

#: Targets of the performance issue.
TARGET_SPEEDUP = 3.0
TARGET_PEAK_FRACTION = 0.30
TARGET_PX_PER_S = 20_000
#: Flat memory: the largest cube's peak RSS at most this many times the smallest's.
TARGET_MEMORY_RATIO = 1.25
#: A push-broom line of 640 pixels at 250 lines per second.
PUSHBROOM_WIDTH, PUSHBROOM_LINES_PER_S = 640, 250

#: Jetson Orin figures, with where they come from (INT8 "TOPS" are sparse INT8 tensor-core figures;
#: the FP32 figure is CUDA cores x 2 FLOPs x clock, derived from the cited core count and clock).
JETSON = [
    {"device": "Jetson Orin Nano 8 GB (Super, 25 W)", "int8_sparse_tops": 67, "cuda_cores": 1024,
     "gpu_clock_ghz": 1.02, "fp32_tflops_derived": round(1024 * 2 * 1.02e9 / 1e12, 2),
     "source": "https://www.brojogopalsapui.com/dark/ai-foundations/sub_contents/AI_hardware/jetson_orin_nano_dark.html"
               " (after NVIDIA's Jetson Orin Nano Super Developer Kit datasheet)"},
    {"device": "Jetson Orin NX 16 GB", "int8_sparse_tops": 100,
     "source": "https://github.com/icub-tech-iit/cad-libraries/files/13056089/JETSON-ORIN-NX-DATASHEET.pdf"
               " (NVIDIA Jetson Orin NX series datasheet: 'up to 100 TOPS')"},
    {"device": "Jetson AGX Orin 64 GB (MAXN)", "int8_sparse_tops": 275,
     "source": "https://blog.us.fixstars.com/?p=1855&preview=true ('up to 275 sparse INT8 TOPS at MAXN')"},
]

#: The edge command line with torch made unimportable (as the runtime must run without it).
NO_TORCH = ("import sys; sys.modules['torch'] = None; "
            "from unmix.runtime.cli import main; sys.argv[0] = 'unmix-run'; main()")

#: A preset's architecture (widths, channels, blocks) with only a few optimisation steps.
FEW_STEPS = {
    "cnn": {"steps": 3, "batch": 1, "synthetic_batch": 1, "vca_seeds": 1},
    "spectra": {"steps": 2, "batch": 4},
    "abundance": {"steps": 2, "batch": 2},
    "library": "none",
}


# --------------------------------------------------------------------------------------------------
# FLOPs from an ONNX graph
# --------------------------------------------------------------------------------------------------

#: Ops counted as one FLOP per output element (element-wise arithmetic, activations, normalisation).
ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Exp", "Log", "Sigmoid", "Tanh", "Relu", "LeakyRelu",
               "Clip", "Softmax", "Cos", "Sin", "Neg", "Abs", "Max", "Min", "Erf", "Reciprocal", "Where",
               "InstanceNormalization", "GroupNormalization", "LayerNormalization", "BatchNormalization",
               "ReduceSum", "ReduceMean", "ReduceMax", "CumSum", "Resize"}


def _shapes(model) -> dict[str, tuple]:
    """Every tensor's static shape after ONNX shape inference (None for an unknown dimension)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    shapes: dict[str, tuple] = {}
    graph = inferred.graph
    for value in (*graph.input, *graph.value_info, *graph.output):
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
    for tensor in graph.initializer:
        shapes[tensor.name] = tuple(tensor.dims)
    for node in graph.node:                     # Constant nodes carry their tensor as an attribute
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    shapes[node.output[0]] = tuple(attribute.t.dims)
    return shapes


def _size(shape: tuple | None) -> int | None:
    if shape is None or any(d is None for d in shape):
        return None
    return int(np.prod(shape, dtype=np.int64)) if shape else 1


def count_flops(model) -> dict:
    """FLOPs of one run of an ONNX graph (a ``ModelProto`` or a path).

    Multiply-adds count as 2 FLOPs: Conv / ConvTranspose ``2 * out_elements * (C_in / group) *
    prod(kernel)``, MatMul ``2 * out_elements * K``, Gemm ``2 * M * N * K``. The bias of a Conv or Gemm
    and the ops in :data:`ELEMENTWISE` count one FLOP per output element, reported apart
    (``other_flops``). Returns ``{"matmul_flops", "other_flops", "total_flops", "by_op" (op type ->
    FLOPs), "uncounted" (names of nodes whose shapes inference left unknown)}``.
    """
    import onnx

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    shapes = _shapes(model)
    by_op: dict[str, int] = {}
    matmul = other = 0
    uncounted = []
    for node in model.graph.node:
        op = node.op_type
        out = shapes.get(node.output[0]) if node.output else None
        out_size = _size(out)
        flops = extra = 0
        if op in ("Conv", "ConvTranspose"):
            weight = shapes.get(node.input[1])
            if out_size is None or _size(weight) is None:
                uncounted.append(node.name or op)
                continue
            if op == "Conv":                     # weight (C_out, C_in / group, *kernel)
                flops = 2 * out_size * int(np.prod(weight[1:]))
            else:                                # weight (C_in, C_out / group, *kernel): per input element
                source = _size(shapes.get(node.input[0]))
                if source is None:
                    uncounted.append(node.name or op)
                    continue
                flops = 2 * source * int(np.prod(weight[1:]))
            if len(node.input) > 2 and node.input[2]:
                extra = out_size
        elif op == "MatMul":
            left = shapes.get(node.input[0])
            if out_size is None or not left or left[-1] is None:
                uncounted.append(node.name or op)
                continue
            flops = 2 * out_size * int(left[-1])
        elif op == "Gemm":
            left = shapes.get(node.input[0])
            if out_size is None or not left or None in left:
                uncounted.append(node.name or op)
                continue
            trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
            inner = left[0] if trans_a else left[1]
            flops = 2 * out_size * int(inner)
            if len(node.input) > 2 and node.input[2]:
                extra = out_size
        elif op in ELEMENTWISE:
            if out_size is None:
                uncounted.append(node.name or op)
                continue
            extra = out_size
        else:
            continue
        matmul += flops
        other += extra
        by_op[op] = by_op.get(op, 0) + flops + extra
    return {"matmul_flops": matmul, "other_flops": other, "total_flops": matmul + other,
            "by_op": dict(sorted(by_op.items(), key=lambda item: -item[1])), "uncounted": uncounted}


def pipeline_flops(flops: Mapping, settings: Mapping, height: int, width: int) -> dict:
    """FLOPs of the whole pipeline on an ``height x width`` cube at ``settings`` (PipelineConfig keys),
    from each network's per-call FLOPs and the calls the pipeline makes: HybridSTU once per tile,
    ``steps * samples * rounds`` fused 2D steps per tile, ``spectra_steps * rounds`` 1D steps when
    ``refine_spectra``. Host arithmetic (blending, statistics, projection) is not counted."""
    from unmix.runtime.tiling import tile_grid

    tiles = len(tile_grid(height, width, settings["tile"], settings["overlap"]))
    calls = {"hybridstu": tiles,
             "abundance_step": tiles * settings["steps"] * settings["samples"] * settings["rounds"],
             "spectra_step": settings["spectra_steps"] * settings["rounds"] if settings["refine_spectra"] else 0}
    total = sum(flops[name]["total_flops"] * count for name, count in calls.items())
    matmul = sum(flops[name]["matmul_flops"] * count for name, count in calls.items())
    pixels = height * width
    return {"cube": [height, width], "tiles": tiles, "calls": calls, "total_flops": total,
            "flops_per_pixel": total / pixels, "matmul_flops_per_pixel": matmul / pixels}


# --------------------------------------------------------------------------------------------------
# synthetic data
# --------------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------------

def train_and_export(folder: Path, bands: int, preset: str, log) -> tuple[Path, Path, dict]:
    """(checkpoint dir, model dir, facts): a few training steps at ``preset``'s sizes, fp32 export."""
    from unmix.export import export
    from unmix.train.config import resolve_config
    from unmix.train.trainer import fit

    config = resolve_config(preset, overrides=FEW_STEPS)
    checkpoint, model = folder / f"checkpoint_{preset}{bands}", folder / f"model_{preset}{bands}"
    started = time.perf_counter()
    fit(synthetic_scene(64, bands, seed=11), ENDMEMBERS, config=config, out=checkpoint, progress=False,
        log=lambda message: None)
    trained = time.perf_counter()
    export(checkpoint, model, fp16=False, tile=TILE)
    log(f"{preset} {bands}-band model: trained in {trained - started:.0f} s, exported in "
        f"{time.perf_counter() - trained:.0f} s")
    data = config.to_dict()
    architecture = {"cnn": {k: v for k, v in data["cnn"].items() if k in ("width", "reduced_bands")},
                    **{section: {k: data[section][k] for k in ("base_channels", "channel_mult", "num_res_blocks")}
                       for section in ("spectra", "abundance")}}
    return checkpoint, model, {"bands": bands, "endmembers": ENDMEMBERS, "tile": TILE, "precision": "fp32",
                               "preset_architecture": preset, "training_steps": FEW_STEPS,
                               "architecture": architecture}


def trained(folder: Path, bands: int, preset: str, threads: int, log) -> tuple[Path, Path, dict]:
    """:func:`train_and_export` in a child process (torch's thread pool and memory never live in the
    process that launches the timed runs)."""
    found = run_child("train", folder, bands, preset, threads=threads)
    log(found.pop("message"))
    return Path(found.pop("checkpoint")), Path(found.pop("model")), found


def open_backend(name: str, checkpoint: Path, model: Path, threads: int):
    """(networks, schedule, PipelineConfig, manifest endmembers) for ``onnxruntime``, ``openvino`` or
    ``torch`` (the checkpoint's eager modules); every backend gets the manifest's endmembers as E0."""
    from unmix.diffusion.schedule import Schedule
    from unmix.runtime.manifest import load_manifest
    from unmix.runtime.pipeline import PipelineConfig

    endmembers = load_manifest(model).endmembers
    if name == "torch":
        import torch

        from unmix.train.fused import load_torch_networks

        torch.set_num_threads(threads)
        networks, config = load_torch_networks(checkpoint, tile=TILE)
        known = PipelineConfig.__dataclass_fields__
        settings = PipelineConfig.from_dict({k: v for k, v in config["train"]["inference"].items() if k in known})
        return networks, Schedule.from_config(config["schedule"]), settings, endmembers
    from unmix.runtime.unmixer import Unmixer

    unmixer = Unmixer.load(model, backend=name, threads=threads)
    return unmixer.networks, unmixer.schedule, unmixer.settings(), endmembers


def _rss_gib() -> float:
    """This process's peak resident set size in GiB: ``VmHWM`` of /proc/self/status (``ru_maxrss``
    would carry the forking parent's peak across ``exec``)."""
    try:
        found = re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text())
        if found:
            return int(found.group(1)) * 1024 / GIB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


def _timings(result, pixels: int) -> dict:
    timings = result.timings
    per_call_ms = {net: round(1000 * timings[f"{net}_s"] / timings[f"{net}_calls"], 3)
                   for net in NETWORKS if timings.get(f"{net}_calls")}
    return {"px_per_s": pixels / timings["total_s"], "best_total_s": round(timings["total_s"], 3),
            "timings": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in timings.items()},
            "per_call_ms": per_call_ms}


def time_pipeline(name: str, checkpoint: Path, model: Path, size: int, threads: int, repeat: int,
                  steps: int | None = None, header: str | None = None) -> dict:
    """The whole pipeline on a synthetic in-memory cube (or the ENVI ``header``, read lazily), after a
    64 x 64 warm-up run; the fastest of ``repeat`` runs."""
    from unmix.io.envi import read_cube
    from unmix.runtime.pipeline import run_pipeline

    networks, schedule, settings, endmembers = open_backend(name, checkpoint, model, threads)
    if steps is not None:
        settings = type(settings).from_dict(settings.to_dict(), steps=steps)
    scene = read_cube(header) if header else synthetic_scene(size, BANDS)
    run_pipeline(synthetic_scene(64, scene.shape[2], seed=5), networks, schedule, settings, endmembers=endmembers)
    runs = [run_pipeline(scene, networks, schedule, settings, endmembers=endmembers) for _ in range(repeat)]
    best = min(runs, key=lambda r: r.timings["total_s"])
    H, W, _ = scene.shape
    return {**_timings(best, H * W), "total_s": [round(r.timings["total_s"], 3) for r in runs],
            "settings": settings.to_dict(), "tiles": best.config["tiles"], "peak_rss_gib": round(_rss_gib(), 3)}


def time_networks(name: str, checkpoint: Path, model: Path, threads: int, calls: int) -> dict:
    """Each network alone: ms per call (best of 3 batches of at most ``calls`` calls, about half a second
    each, after 3 warm-up calls) on fixed
    feeds (uniform random tensors; the step's inputs in their real ranges)."""
    from unmix.diffusion.schedule import ddim_coefficients, ddim_timesteps

    networks, schedule, settings, endmembers = open_backend(name, checkpoint, model, threads)
    rng = np.random.default_rng(0)
    table = ddim_coefficients(schedule, ddim_timesteps(schedule.T, settings.steps, settings.t0), 0.0).as_table()
    found = {}
    for net_name, network in networks.items():
        feeds = {}
        for key, spec in network.inputs.items():
            feeds[key] = rng.random(spec.shape).astype(spec.dtype)
        if "coef" in feeds:
            feeds["coef"] = table[0].astype(feeds["coef"].dtype)
        if "t" in feeds:
            feeds["t"] = np.full(feeds["t"].shape, float(settings.t0), dtype=feeds["t"].dtype)
        if "dc_weight" in feeds:
            feeds["dc_weight"] = np.full(feeds["dc_weight"].shape, 1.0, dtype=feeds["dc_weight"].dtype)
        for _ in range(2):
            network(feeds)
        started = time.perf_counter()
        network(feeds)
        one = time.perf_counter() - started
        n = max(2, min(calls, int(0.5 / max(one, 1e-6))))      # batches of about half a second at most
        best = math.inf
        for _ in range(3):
            started = time.perf_counter()
            for _ in range(n):
                network(feeds)
            best = min(best, (time.perf_counter() - started) / n)
        found[net_name] = {"ms_per_call": round(1000 * best, 3), "calls": n}
    return found


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
    return found


def vca_fcls(size: int, threads: int, repeat: int) -> dict:
    """VCA (endmembers) then FCLS (abundances) on the synthetic ``size x size x 156`` cube."""
    from unmix.physics.fcls import fcls
    from unmix.physics.vca import vca

    cube = synthetic_scene(size, BANDS).read()
    pixels = cube.reshape(-1, cube.shape[-1])
    best = None
    for _ in range(repeat):
        started = time.perf_counter()
        endmembers = vca(pixels, ENDMEMBERS, seed=0)[0]
        found = time.perf_counter()
        fcls(pixels, endmembers)
        done = time.perf_counter()
        if best is None or done - started < best["total_s"]:
            best = {"total_s": done - started, "vca_s": found - started, "fcls_s": done - found}
    return {"px_per_s": pixels.shape[0] / best["total_s"], **{k: round(v, 4) for k, v in best.items()},
            "cube": list(cube.shape), "threads": threads}


def run_child(kind: str, *args, threads: int) -> dict:
    """A worker of this script in a fresh Python process (its BLAS / OpenMP pools at ``threads``)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, *map(str, args)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads))
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"speed.py: worker {kind} {args} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def worker(argv: list[str]) -> None:
    kind, rest = argv[0], argv[1:]
    if kind == "pipeline":      # name checkpoint model size threads repeat steps|- header|-
        name, checkpoint, model, size, threads, repeat, steps, header = rest
        found = time_pipeline(name, Path(checkpoint), Path(model), int(size), int(threads), int(repeat),
                              None if steps == "-" else int(steps), None if header == "-" else header)
    elif kind == "networks":    # name checkpoint model threads calls
        name, checkpoint, model, threads, calls = rest
        found = time_networks(name, Path(checkpoint), Path(model), int(threads), int(calls))
    elif kind == "train":       # folder bands preset
        messages = []
        checkpoint, model, facts = train_and_export(Path(rest[0]), int(rest[1]), rest[2], messages.append)
        found = {"checkpoint": str(checkpoint), "model": str(model), **facts, "message": messages[-1]}
    elif kind == "peak":
        found = peak_flops(int(rest[0]))
    elif kind == "vca_fcls":
        found = vca_fcls(int(rest[0]), int(rest[1]), int(rest[2]))
    else:
        raise SystemExit(f"speed.py: unknown worker {kind}")
    print(json.dumps(found))


# --------------------------------------------------------------------------------------------------
# the C++ runtime (cpp_bindings/, OpenVINO backend) and the unmix-run command
# --------------------------------------------------------------------------------------------------

#: The inference settings unmix_set_option takes (include/unmix.h), from the one settings table.
CPP_SETTINGS = c_abi_settings()


def cpp_runner(build: Path) -> Path | None:
    """build/cpp_bindings/unmix_run_raw when that build has the OpenVINO backend, else None."""
    tool = build / "cpp_bindings" / "unmix_run_raw"
    marker = build / "unmix_backends.txt"
    if tool.is_file() and marker.is_file() and "openvino=ON" in marker.read_text().split():
        return tool
    return None


def _gnu_time() -> str | None:
    return shutil.which("time") or ("/usr/bin/time" if Path("/usr/bin/time").exists() else None)


def _max_rss_gib(stderr: str) -> float | None:
    found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr)
    return None if found is None else round(int(found.group(1)) * 1024 / GIB, 3)


def time_cpp(tool: Path, model: Path, header: Path, settings: dict, threads: int, work: Path, repeat: int = 2) -> dict:
    """One fresh unmix_run_raw process (OpenVINO): the best of ``repeat`` unmix_run calls on the cube
    (the tool reads the whole cube into memory first; its peak RSS includes it)."""
    passed = {k: (int(v) if isinstance(v, bool) else v) for k, v in settings.items() if k in CPP_SETTINGS}
    command = [str(tool), str(model), "openvino", str(header), str(work / "cpp"), f"threads={threads}",
               f"repeat={repeat}", *(f"{k}={v}" for k, v in passed.items())]
    gnu_time = _gnu_time()
    done = subprocess.run([gnu_time, "-v", *command] if gnu_time else command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"speed.py: unmix_run_raw failed ({done.returncode}):\n{done.stderr[-3000:]}")
    H, W, _, _, seconds = done.stdout.split()[:5]
    for leftover in work.glob("cpp.*"):
        leftover.unlink()
    return {"px_per_s": int(H) * int(W) / float(seconds), "best_total_s": round(float(seconds), 3),
            "total_s": [round(float(seconds), 3)], "peak_rss_gib": _max_rss_gib(done.stderr) if gnu_time else None,
            "tool": str(tool), "settings_passed": passed,
            "not_passed": sorted(k for k in settings if k not in CPP_SETTINGS and k != "tile")}


def unmix_run(header: Path, model: Path, threads: int, backend: str, log) -> dict:
    """``unmix-run`` (torch unimportable) on the cube: peak RSS from ``/usr/bin/time -v`` (else
    ``getrusage(RUSAGE_CHILDREN)``), the pipeline's own timings from the bundle's run.json."""
    out = Path(tempfile.mkdtemp(prefix="unmix-speed-out-", dir=CACHE))
    args = [str(header), "--model", str(model), "--out", str(out), "--threads", str(threads), "--backend", backend,
            "--no-quicklook", "--quiet", "--json"]
    command = [sys.executable, "-c", NO_TORCH, *args]
    gnu_time = _gnu_time()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    log(f"unmix-run on {header.name} ({backend}, {threads} threads)")
    load = os.getloadavg()[0]
    started = time.perf_counter()
    try:
        if gnu_time:
            done = subprocess.run([gnu_time, "-v", *command], capture_output=True, text=True, env=env)
            peak = _max_rss_gib(done.stderr)
            method = f"{gnu_time} -v: Maximum resident set size"
        else:
            done = subprocess.run(command, capture_output=True, text=True, env=env)
            peak = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / GIB, 3)
            method = "resource.getrusage(RUSAGE_CHILDREN).ru_maxrss (the largest child so far)"
        wall = time.perf_counter() - started
        if done.returncode != 0 or peak is None:
            raise SystemExit(f"speed.py: unmix-run failed ({done.returncode}):\n{done.stderr[-3000:]}")
        report = json.loads(done.stdout)["runs"][0]
        run_json = json.loads(next(Path(report["bundle"]).glob("*.run.json")).read_text())
    finally:
        shutil.rmtree(out, ignore_errors=True)
    timings = run_json.get("timings", {})
    H, W = header_shape(header)
    return {"command": "unmix-run " + " ".join(a if a != str(out) else "<tmp>" for a in args),
            "torch_importable": False, "method": method, "peak_rss_gib": peak, "wall_s": round(wall, 1),
            "px_per_s": H * W / timings["total_s"] if timings.get("total_s") else None,
            "best_total_s": round(timings["total_s"], 3) if timings.get("total_s") else None,
            "load_average_1min_before": round(load, 2),
            "pipeline_timings": {k: (round(v, 3) if isinstance(v, float) else v) for k, v in timings.items()}}


def header_shape(header: Path) -> tuple[int, int]:
    text = header.read_text()
    lines = int(re.search(r"lines\s*=\s*(\d+)", text).group(1))
    samples = int(re.search(r"samples\s*=\s*(\d+)", text).group(1))
    return lines, samples


# --------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------

def machine() -> dict:
    model, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "unknown":
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    memory = None
    try:
        memory = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1)) * 1024
    except (OSError, AttributeError):
        pass
    simd = sorted(f for f in flags if f in ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile",
                                            "amx_bf16", "amx_int8"))
    return {"nproc": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)), "cpu_model": model,
            "simd_flags": simd, "memory_gib": None if memory is None else round(memory / GIB, 1),
            "platform": platform.platform(), "python": platform.python_version(),
            "shared": "the machine may be shared with other jobs: see load_average_at_start / _at_end and the "
                      "load average before each run"}


def versions() -> dict:
    found = {}
    for name in ("unmix", "numpy", "scipy", "onnxruntime", "openvino", "torch", "onnx"):
        try:
            found[name] = getattr(__import__(name), "__version__", "unknown")
        except ImportError:
            found[name] = None
    return found


def _fmt(value, spec: str = ",.0f", missing: str = "–") -> str:
    return missing if value is None else format(value, spec)


def round_robin(names: list[str], repeat: int, run, log, label: str) -> dict:
    """``run(name)`` for every name, ``repeat`` rounds in turn (a busy spell hits each of them); keeps
    each name's fastest entry with every run's total and the 1-minute load average before it."""
    best: dict = {}
    for round_index in range(repeat):
        for name in names:
            load = os.getloadavg()[0]
            entry = run(name)
            log(f"{label} round {round_index + 1}/{repeat} {name}: {entry['px_per_s']:,.0f} px/s "
                f"({entry['best_total_s']:.2f} s, load average {load:.2f} before)")
            previous = best.get(name)
            runs = (previous["total_s"] if previous else []) + entry["total_s"]
            loads = (previous["load_average_1min"] if previous else []) + [round(load, 2)]
            if previous is None or entry["best_total_s"] < previous["best_total_s"]:
                best[name] = entry
            best[name]["total_s"], best[name]["load_average_1min"] = runs, loads
    return best


def achieved(flops: dict, timings: dict, names) -> dict:
    """FLOP/s the networks ``names`` reached inside a pipeline run (their FLOPs x calls / their seconds)."""
    work = sum(flops[n]["total_flops"] * timings.get(f"{n}_calls", 0) for n in names)
    seconds = sum(timings.get(f"{n}_s", 0.0) for n in names)
    return {"networks": [n for n in names if timings.get(f"{n}_calls")], "flops": work, "seconds": round(seconds, 4),
            "flops_per_s": work / seconds if seconds else None}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2:])
        return
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
    args = parser.parse_args()
    quick = args.quick
    size = args.size or (128 if quick else 256)
    repeat = args.repeat or (1 if quick else 2)
    steps_list = args.steps or ([1, 10] if quick else [1, 5, 10, 25])
    sizes = args.sizes or ([128, 256] if quick else [256, 512, 1024])
    series_bands = BANDS if quick else SERIES_BANDS
    out = args.out or RESULTS / ("speed_quick.json" if quick else "speed.json")
    threads = args.threads

    def log(message: str) -> None:
        print(f"speed.py: {message}", file=sys.stderr, flush=True)

    started = time.perf_counter()
    results: dict = {"benchmark": "speed", "command": "python benchmarks/speed.py " + " ".join(sys.argv[1:]),
                     "mode": "quick" if quick else "full",
                     "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                     "machine": machine(), "versions": versions(), "threads": threads,
                     "load_average_at_start": [round(v, 2) for v in os.getloadavg()]}
    with tempfile.TemporaryDirectory(prefix="unmix-speed-") as work:
        work = Path(work)
        # 1-2. models and their FLOPs
        checkpoint, model, facts = trained(work, BANDS, "tiny", threads, log)
        default_checkpoint, default_model, default_facts = trained(work, BANDS, "default", threads, log)
        flops = {net: count_flops(model / f"{net}.onnx") for net in NETWORKS}
        default_flops = {net: count_flops(default_model / f"{net}.onnx") for net in NETWORKS}
        results["model"] = {**facts, "timed": True, "flops_per_call": flops}
        results["default_preset_model"] = {
            **default_facts, "flops_per_call": default_flops,
            "differs_from_timed": sorted(n for n in NETWORKS if default_flops[n]["total_flops"] != flops[n]["total_flops"])}

        # 3. the machine's peak
        results["peak"] = run_child("peak", threads, threads=threads)
        peak = results["peak"]["peak_flops_per_s"]
        log(f"peak float32 matmul on {threads} threads: {peak / 1e9:.0f} GFLOP/s")

        # 4. the pipeline per backend (round robin), then each network alone
        from unmix.io.envi import write_cube

        names = ["onnxruntime", "openvino", "torch"]
        cpp_tool = cpp_runner(args.cpp_build)
        cpp_header = write_cube(work / "speed_cube.hdr", synthetic_scene(size, BANDS).read()) if cpp_tool else None

        def run_backend(name: str) -> dict:
            if name == "cpp":
                return time_cpp(cpp_tool, model, cpp_header, settings_used, threads, work)
            return run_child("pipeline", name, checkpoint, model, size, threads, 1, "-", "-", threads=threads)

        from unmix.runtime.unmixer import Unmixer

        settings_used = Unmixer.load(model, backend="onnxruntime", threads=1).settings().to_dict()
        backends = round_robin(names + (["cpp"] if cpp_tool else []), repeat, run_backend, log, "pipeline")
        cpp_entry = backends.pop("cpp", {"status": "not built", "build": str(args.cpp_build)})
        best = max(("onnxruntime", "openvino"), key=lambda n: backends[n]["px_per_s"])
        torch_rate = backends["torch"]["px_per_s"]
        for name, entry in backends.items():
            entry.pop("settings", None)
            entry["vs_torch"] = entry["px_per_s"] / torch_rate
            entry["refinement_achieved"] = achieved(flops, entry["timings"], REFINEMENT)
            entry["refinement_peak_fraction"] = (entry["refinement_achieved"]["flops_per_s"] or 0) / peak
            entry["hybridstu_achieved_flops_per_s"] = achieved(flops, entry["timings"], ["hybridstu"])["flops_per_s"]
            entry["network_share_of_total"] = round(sum(entry["timings"].get(f"{n}_s", 0.0) for n in NETWORKS)
                                                    / entry["timings"]["total_s"], 3)
        per_pixel = pipeline_flops(flops, settings_used, size, size)
        results["pipeline"] = {
            "cube": [size, size, BANDS], "repeat": repeat, "settings": settings_used,
            "statistic": "best (shortest total_s) of repeat runs, each in a fresh process, backends in turn",
            "flops": per_pixel, "backends": backends, "best_backend": best,
            "speedup_vs_torch": backends[best]["px_per_s"] / torch_rate,
            "onnxruntime_vs_torch": backends["onnxruntime"]["px_per_s"] / torch_rate,
            "openvino_vs_torch": backends["openvino"]["px_per_s"] / torch_rate,
            "cpp": cpp_entry,
        }
        if "px_per_s" in cpp_entry:
            cpp_entry["vs_torch"] = cpp_entry["px_per_s"] / torch_rate
            results["pipeline"]["cpp_vs_python_openvino"] = cpp_entry["px_per_s"] / backends["openvino"]["px_per_s"]

        network_rows: dict = {}
        for name in names:
            timed = run_child("networks", name, checkpoint, model, threads, args.calls, threads=threads)
            for net, entry in timed.items():
                seconds = entry["ms_per_call"] / 1000
                entry["flops_per_s"] = flops[net]["total_flops"] / seconds
                entry["peak_fraction"] = entry["flops_per_s"] / peak
                if net != "spectra_step":
                    entry["tile_px_per_s"] = TILE * TILE / seconds
            network_rows[name] = timed
            log(f"networks alone on {name}: " + ", ".join(f"{n} {e['ms_per_call']:.1f} ms" for n, e in timed.items()))
        default_rows = {}
        if results["default_preset_model"]["differs_from_timed"]:
            timed = run_child("networks", best, default_checkpoint, default_model, threads, args.calls, threads=threads)
            for net in results["default_preset_model"]["differs_from_timed"]:
                entry = timed[net]
                entry["flops_per_s"] = default_flops[net]["total_flops"] / (entry["ms_per_call"] / 1000)
                entry["peak_fraction"] = entry["flops_per_s"] / peak
                default_rows[net] = {best: entry}
        results["networks"] = {
            "statistic": "each network alone, fixed feeds, best of 3 batches; tile_px_per_s = 64*64 / s per call",
            "timed_model": network_rows, "default_preset_model": default_rows}

        # 5. DDIM steps K on the best backend
        k_rows = {}
        for K in steps_list:
            entry = run_child("pipeline", best, checkpoint, model, size, threads, 1, K, "-", threads=threads)
            k_rows[str(K)] = {"px_per_s": entry["px_per_s"], "best_total_s": entry["best_total_s"],
                              "refine_s": entry["timings"]["refine_s"], "cnn_s": entry["timings"]["cnn_s"],
                              "flops_per_pixel": pipeline_flops(flops, {**settings_used, "steps": K}, size, size)[
                                  "flops_per_pixel"]}
            log(f"K = {K} on {best}: {entry['px_per_s']:,.0f} px/s")
        results["steps"] = {"backend": best, "cube": [size, size, BANDS], "rows": k_rows}

        # 6. cube size: every backend on disk cubes, then unmix-run on the large cube
        if series_bands != BANDS:
            series_checkpoint, series_model, series_facts = trained(work, series_bands, "tiny", threads, log)
        else:
            series_checkpoint, series_model, series_facts = checkpoint, model, facts
        series: dict = {name: {} for name in names + (["cpp"] if cpp_tool else [])}
        cubes = {}
        for side in sizes:
            header, cubes[str(side)] = disk_cube(side, series_bands, log)
            for name in series:
                if name == "torch" and side > args.torch_max_size:
                    series[name][str(side)] = {"skipped": f"--torch-max-size {args.torch_max_size}"}
                    continue
                done = [(int(k), v) for k, v in series[name].items() if "best_total_s" in v]
                if name == "torch" and done:
                    previous_side, previous = done[-1]
                    predicted = previous["best_total_s"] * (side / previous_side) ** 2
                    if predicted > args.torch_budget:
                        series[name][str(side)] = {"skipped": f"predicted {predicted:.0f} s > --torch-budget "
                                                              f"{args.torch_budget:g} s"}
                        continue
                load = os.getloadavg()[0]
                if name == "cpp":
                    entry = time_cpp(cpp_tool, series_model, header, settings_used, threads, work, repeat=1)
                else:
                    entry = run_child("pipeline", name, series_checkpoint, series_model, side, threads, 1, "-",
                                      header, threads=threads)
                    entry.pop("settings", None)
                series[name][str(side)] = {"px_per_s": entry["px_per_s"], "best_total_s": entry["best_total_s"],
                                           "peak_rss_gib": entry.get("peak_rss_gib"),
                                           "seconds_per_megapixel": entry["best_total_s"] / (side * side / 1e6),
                                           "load_average_1min": round(load, 2)}
                log(f"size {side}^2 on {name}: {entry['px_per_s']:,.0f} px/s, "
                    f"peak RSS {_fmt(entry.get('peak_rss_gib'), '.2f')} GiB")
        cli_runs = {}
        cli_sizes = [sizes[0]] + ([] if quick or args.skip_large else [args.large_size])
        for side in cli_sizes:
            header, cubes[str(side)] = disk_cube(side, series_bands, log)
            cli_runs[str(side)] = unmix_run(header, series_model, threads, best, log)
            log(f"unmix-run {side}^2: {_fmt(cli_runs[str(side)]['px_per_s'])} px/s, "
                f"peak RSS {cli_runs[str(side)]['peak_rss_gib']:.2f} GiB")
        results["sizes"] = {"bands": series_bands, "model": series_facts, "cubes": cubes, "backends": series,
                            "unmix_run": {"backend": best, "runs": cli_runs},
                            "note": "pipeline rows: one run each in a fresh process after a 64^2 warm-up, the cube "
                                    "read lazily from disk, peak RSS of that process (torch's includes torch); cpp "
                                    "rows: unmix_run_raw, which reads the whole cube into memory first"}

        # 7. VCA + FCLS
        results["vca_fcls"] = run_child("vca_fcls", size, threads, min(repeat, 2), threads=threads)
        results["vca_fcls"]["vs_best_backend"] = results["vca_fcls"]["px_per_s"] / backends[best]["px_per_s"]
        log(f"VCA + FCLS: {results['vca_fcls']['px_per_s']:,.0f} px/s")

    # 8. targets
    results["targets"] = targets(results, peak)
    results["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    results["benchmark_wall_s"] = round(time.perf_counter() - started, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    table = markdown(results)
    out.with_suffix(".md").write_text(table + "\n")
    print(table)
    written = [str(out), str(out.with_suffix(".md"))]
    if not quick and not args.no_readme and args.out is None and update_readme(table, marker="speed"):
        written.append("README.md (speed block)")
    log(f"wrote {', '.join(written)} in {results['benchmark_wall_s']:.0f} s")


def targets(results: dict, peak: float) -> dict:
    """Every target of the performance issue: the value, the target and whether it is met."""
    pipe = results["pipeline"]
    best = pipe["best_backend"]
    entry = pipe["backends"][best]
    found: dict = {}
    found["speedup_vs_torch"] = {"target": f">= {TARGET_SPEEDUP:g}x (best backend px/s / eager torch px/s)",
                                 "backend": best, "value": round(pipe["speedup_vs_torch"], 3),
                                 "met": pipe["speedup_vs_torch"] >= TARGET_SPEEDUP}
    # What the ratio could be if the best backend ran every network FLOP at the measured peak and kept
    # its other (numpy) time: eager torch's time over that.
    other_s = entry["best_total_s"] * (1.0 - entry["network_share_of_total"])
    at_peak_s = pipe["flops"]["total_flops"] / peak + other_s
    found["speedup_vs_torch"]["ceiling_at_measured_peak"] = {
        "networks_at_peak_s": round(pipe["flops"]["total_flops"] / peak, 3), "other_s": round(other_s, 3),
        "torch_total_s": pipe["backends"]["torch"]["best_total_s"],
        "speedup": round(pipe["backends"]["torch"]["best_total_s"] / at_peak_s, 2)}
    fraction, rate = entry["refinement_peak_fraction"], entry["px_per_s"]
    found["refinement_peak_fraction_and_px_per_s"] = {
        "target": f">= {TARGET_PEAK_FRACTION:.0%} of the measured peak FLOP/s in the refinement networks "
                  f"(abundance_step + spectra_step, those the pipeline calls) and >= {TARGET_PX_PER_S:,} px/s for the "
                  "whole pipeline",
        "backend": best, "refinement_networks_called": entry["refinement_achieved"]["networks"],
        "refinement_flops_per_s": entry["refinement_achieved"]["flops_per_s"], "peak_flops_per_s": peak,
        "peak_fraction": round(fraction, 4), "px_per_s": round(rate), "met_peak_fraction": fraction >= TARGET_PEAK_FRACTION,
        "met_px_per_s": rate >= TARGET_PX_PER_S, "met": fraction >= TARGET_PEAK_FRACTION and rate >= TARGET_PX_PER_S}
    runs = results["sizes"]["unmix_run"]["runs"]
    sides = sorted(runs, key=int)
    rss = {side: runs[side]["peak_rss_gib"] for side in sides}
    ratio = rss[sides[-1]] / rss[sides[0]] if len(sides) > 1 else None
    python_rows = {side: row.get("peak_rss_gib") for side, row in results["sizes"]["backends"][best].items()}
    found["memory_flat_in_cube_size"] = {
        "target": f"peak RSS of unmix-run on the largest cube <= {TARGET_MEMORY_RATIO}x that on the smallest, and "
                  f"< {MEMORY_TARGET_GIB} GiB",
        "backend": best, "unmix_run_peak_rss_gib": rss, "ratio_largest_to_smallest": None if ratio is None else round(ratio, 3),
        "pipeline_process_peak_rss_gib": python_rows,
        "met": ratio is not None and ratio <= TARGET_MEMORY_RATIO and rss[sides[-1]] < MEMORY_TARGET_GIB,
        "note": None if ratio is not None else "one cube size only (--quick / --skip-large): not judged"}
    flops = results["model"]["flops_per_call"]
    line = pipeline_flops(flops, pipe["settings"], 4096, PUSHBROOM_WIDTH)
    needed_px = PUSHBROOM_WIDTH * PUSHBROOM_LINES_PER_S
    needed = line["flops_per_pixel"] * needed_px
    jetson = []
    for device in JETSON:
        row = dict(device)
        row["needed_fraction_of_int8_sparse_tops"] = needed / (device["int8_sparse_tops"] * 1e12)
        if "fp32_tflops_derived" in device:
            row["needed_fraction_of_fp32"] = needed / (device["fp32_tflops_derived"] * 1e12)
        jetson.append(row)
    found["pushbroom_640_at_250_lines_per_s"] = {
        "px_per_s_needed": needed_px,
        "flops_per_pixel": round(line["flops_per_pixel"]),
        "flops_per_pixel_note": f"default pipeline (K = {pipe['settings']['steps']}, 1D loop "
                                f"{'on' if pipe['settings']['refine_spectra'] else 'off'}), 64 x 64 tiles overlapping by "
                                f"{pipe['settings']['overlap']} over a {PUSHBROOM_WIDTH}-pixel-wide swath; networks only",
        "flops_per_s_needed": needed,
        "this_machine_best_px_per_s": round(rate), "this_machine_fraction_of_needed": rate / needed_px,
        "this_machine_needed_fraction_of_peak": needed / peak,
        "jetson_orin": jetson,
        "note": "TOPS are NVIDIA's sparse INT8 tensor-core figures; the pipeline runs float32 (fp16 export on "
                "TensorRT), so the FP32 CUDA-core figure is the fair one for an fp32 engine, and the dense fp16 "
                "tensor rate is about a quarter of the sparse INT8 one"}
    return found


def markdown(results: dict) -> str:
    pipe = results["pipeline"]
    H, W, B = pipe["cube"]
    m = results["machine"]
    peak = results["peak"]["peak_flops_per_s"]
    torch_peak = results["peak"].get("torch_flops_per_s")
    settings = pipe["settings"]
    lines = [f"Machine: {m['cpu_model']} ({m['usable_cpus']} usable CPUs; {', '.join(m['simd_flags'])}), "
             f"{results['threads']} threads; load average (1, 5, 15 min) {results['load_average_at_start']} at start, "
             f"{results['load_average_at_end']} at end — the machine may be shared, so compare ratios within this run. "
             f"Measured peak: {peak / 1e9:,.0f} GFLOP/s (float32 {results['peak']['size']}² matmul, the best of "
             f"{', '.join(str(n) + '²' for n in results['peak']['sizes'])} in torch "
             f"{_fmt(torch_peak and torch_peak / 1e9)}"
             f" and numpy {results['peak']['numpy_flops_per_s'] / 1e9:,.0f} GFLOP/s).",
             "",
             f"Model timed: the `{results['model']['preset_architecture']}` preset's networks (few training steps), "
             f"{results['model']['bands']} bands, p = {ENDMEMBERS}, fp32, tile {TILE}. Settings: K = {settings['steps']}, "
             f"t0 = {settings['t0']}, overlap {settings['overlap']}, samples {settings['samples']}, rounds {settings['rounds']}, "
             f"1D spectra loop {'on' if settings['refine_spectra'] else 'off'}.",
             "",
             "| network | FLOPs/call (timed) | of which matmul/conv | default preset FLOPs/call |",
             "|---|---:|---:|---:|"]
    flops, default = results["model"]["flops_per_call"], results["default_preset_model"]["flops_per_call"]
    for net in NETWORKS:
        lines.append(f"| {net} | {flops[net]['total_flops'] / 1e6:,.1f} M | "
                     f"{flops[net]['matmul_flops'] / max(flops[net]['total_flops'], 1):.0%} | "
                     f"{default[net]['total_flops'] / 1e6:,.1f} M |")
    lines += ["", f"Whole pipeline: {pipe['flops']['flops_per_pixel']:,.0f} FLOPs/pixel on the {H}² cube "
                  f"({pipe['flops']['tiles']} tiles).", "",
              f"Whole pipeline on a {H}x{W}x{B} cube, best of {pipe['repeat']} runs each:", "",
              "| backend | px/s | total s | HybridSTU ms/call | 2D step ms/call | refinement GFLOP/s | % of peak | "
              "networks' share of time | vs torch |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, entry in pipe["backends"].items():
        calls = entry["per_call_ms"]
        lines.append(f"| {name} | {entry['px_per_s']:,.0f} | {entry['best_total_s']:.2f} | "
                     f"{_fmt(calls.get('hybridstu'), '.1f')} | {_fmt(calls.get('abundance_step'), '.1f')} | "
                     f"{_fmt(entry['refinement_achieved']['flops_per_s'] and entry['refinement_achieved']['flops_per_s'] / 1e9, '.1f')} | "
                     f"{entry['refinement_peak_fraction']:.1%} | {entry['network_share_of_total']:.0%} | "
                     f"{entry['vs_torch']:.2f}x |")
    cpp = pipe["cpp"]
    if "px_per_s" in cpp:
        lines.append(f"| C++ openvino (unmix_run_raw) | {cpp['px_per_s']:,.0f} | {cpp['best_total_s']:.2f} | – | – | – | – | – | "
                     f"{cpp['vs_torch']:.2f}x |")
    else:
        lines.append(f"| C++ openvino (unmix_run_raw) | {cpp.get('status', 'not built')} | – | – | – | – | – | – | – |")
    vf = results["vca_fcls"]
    lines.append(f"| VCA + FCLS (numpy) | {vf['px_per_s']:,.0f} | {vf['total_s']:.2f} | – | – | – | – | – | "
                 f"{vf['px_per_s'] / pipe['backends']['torch']['px_per_s']:.2f}x |")
    lines += ["", "Each network alone (ms per call; GFLOP/s; % of peak):", "",
              "| network | " + " | ".join(results["networks"]["timed_model"]) + " |",
              "|---|" + "---:|" * len(results["networks"]["timed_model"])]
    for net in NETWORKS:
        cells = []
        for name, rows in results["networks"]["timed_model"].items():
            row = rows.get(net)
            cells.append("–" if row is None else
                         f"{row['ms_per_call']:.2f} ms; {row['flops_per_s'] / 1e9:.1f}; {row['peak_fraction']:.1%}")
        lines.append(f"| {net} | " + " | ".join(cells) + " |")
    for net, rows in results["networks"]["default_preset_model"].items():
        for name, row in rows.items():
            lines.append(f"| {net} (default preset) on {name} | {row['ms_per_call']:.2f} ms; "
                         f"{row['flops_per_s'] / 1e9:.1f}; {row['peak_fraction']:.1%} |" + " |" * (len(results['networks']['timed_model']) - 1))
    steps = results["steps"]
    lines += ["", f"DDIM steps K ({steps['backend']}, {H}² cube):", "", "| K | px/s | total s | refine s | FLOPs/pixel |",
              "|---:|---:|---:|---:|---:|"]
    for K, row in steps["rows"].items():
        lines.append(f"| {K} | {row['px_per_s']:,.0f} | {row['best_total_s']:.2f} | {row['refine_s']:.2f} | "
                     f"{row['flops_per_pixel']:,.0f} |")
    sizes = results["sizes"]
    sides = sorted({side for rows in sizes["backends"].values() for side in rows}, key=int)
    lines += ["", f"Cube size ({sizes['bands']} bands, cube on disk; px/s, peak RSS GiB):", "",
              "| backend | " + " | ".join(f"{s}²" for s in sides) + " |", "|---|" + "---:|" * len(sides)]
    for name, rows in sizes["backends"].items():
        cells = []
        for side in sides:
            row = rows.get(side)
            cells.append("–" if row is None else row.get("skipped") or
                         f"{row['px_per_s']:,.0f} ({_fmt(row.get('peak_rss_gib'), '.2f')})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for side, run in sizes["unmix_run"]["runs"].items():
        lines.append(f"| unmix-run {sizes['unmix_run']['backend']} {side}² (no torch) | {_fmt(run['px_per_s'])} px/s, "
                     f"peak RSS {run['peak_rss_gib']:.2f} GiB, wall {run['wall_s']:.0f} s |" + " |" * (len(sides) - 1))
    lines += ["", "Targets:", "", "| target | value | met |", "|---|---|---|"]
    t = results["targets"]
    ceiling = t["speedup_vs_torch"]["ceiling_at_measured_peak"]
    lines.append(f"| speedup vs eager torch >= {TARGET_SPEEDUP:g}x | {t['speedup_vs_torch']['value']:.2f}x "
                 f"({t['speedup_vs_torch']['backend']}); {ceiling['speedup']:.2f}x if every network FLOP ran at the "
                 f"measured peak ({ceiling['networks_at_peak_s']:.2f} s) beside the same {ceiling['other_s']:.2f} s of "
                 f"numpy work | {'yes' if t['speedup_vs_torch']['met'] else 'no'} |")
    r = t["refinement_peak_fraction_and_px_per_s"]
    lines.append(f"| refinement >= {TARGET_PEAK_FRACTION:.0%} of peak and pipeline >= {TARGET_PX_PER_S:,} px/s | "
                 f"{r['peak_fraction']:.1%} of peak, {r['px_per_s']:,} px/s | "
                 f"{'yes' if r['met'] else 'no'} (peak share {'met' if r['met_peak_fraction'] else 'missed'}, "
                 f"px/s {'met' if r['met_px_per_s'] else 'missed'}) |")
    mem = t["memory_flat_in_cube_size"]
    lines.append(f"| memory flat in cube size (unmix-run, <= {TARGET_MEMORY_RATIO}x, < {MEMORY_TARGET_GIB} GiB) | "
                 f"{', '.join(f'{s}²: {v:.2f} GiB' for s, v in mem['unmix_run_peak_rss_gib'].items())} | "
                 f"{'yes' if mem['met'] else ('not judged' if mem['note'] else 'no')} |")
    pb = t["pushbroom_640_at_250_lines_per_s"]
    lines.append(f"| push-broom 640 px x 250 lines/s = {pb['px_per_s_needed']:,} px/s | needs "
                 f"{pb['flops_per_s_needed'] / 1e9:,.0f} GFLOP/s ({pb['flops_per_pixel']:,} FLOPs/pixel); this machine "
                 f"{pb['this_machine_best_px_per_s']:,} px/s ({pb['this_machine_fraction_of_needed']:.1%} of it) | "
                 f"{'yes' if pb['this_machine_fraction_of_needed'] >= 1 else 'no (here)'} |")
    for device in pb["jetson_orin"]:
        extra = (f"; {device['needed_fraction_of_fp32']:.1%} of its {device['fp32_tflops_derived']} TFLOP/s FP32 "
                 "(CUDA cores x 2 x clock)" if "needed_fraction_of_fp32" in device else "")
        lines.append(f"| {device['device']} | {device['needed_fraction_of_int8_sparse_tops']:.2%} of its "
                     f"{device['int8_sparse_tops']} sparse INT8 TOPS{extra} | source: {device['source']} |")
    lines.append("")
    lines.append(f"Command: `{results['command'].strip()}`; wall {results['benchmark_wall_s']:.0f} s.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
