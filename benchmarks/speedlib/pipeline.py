"""Timing the pipeline per backend: the models timed, the whole pipeline on a cube (px/s = H W / total
seconds, the fastest of ``repeat`` runs), each network alone (ms per call), VCA + FCLS beside it, and the
FLOP/s the networks reach inside a run (their FLOPs x calls / their seconds).

Each function here runs inside a worker process (:mod:`.workers`), so no other backend's thread pool
is alive while it is timed.
"""
from __future__ import annotations

import math
import os
import re
import resource
import time
from pathlib import Path

import numpy as np

from .common import BANDS, ENDMEMBERS, GIB, NETWORKS, TILE
from .data import synthetic_scene

#: A preset's architecture (widths, channels, blocks) with only a few optimisation steps.
FEW_STEPS = {
    "cnn": {"steps": 3, "batch": 1, "synthetic_batch": 1, "vca_seeds": 1},
    "spectra": {"steps": 2, "batch": 4},
    "abundance": {"steps": 2, "batch": 2},
    "library": "none",
}


def train_and_export(folder: Path, bands: int, preset: str, log) -> tuple[Path, Path, dict]:
    """(checkpoint dir, model dir, facts): a few training steps at ``preset``'s sizes, fp32 export with
    int8 variants calibrated on the training scene."""
    from unmix.export import export
    from unmix.train.config import resolve_config
    from unmix.train.trainer import fit

    config = resolve_config(preset, overrides=FEW_STEPS)
    checkpoint, model = folder / f"checkpoint_{preset}{bands}", folder / f"model_{preset}{bands}"
    started = time.perf_counter()
    scene = synthetic_scene(64, bands, seed=11)
    fit(scene, ENDMEMBERS, config=config, out=checkpoint, progress=False, log=lambda message: None)
    trained = time.perf_counter()
    export(checkpoint, model, fp16=False, tile=TILE, int8=True, calibration=scene)
    log(f"{preset} {bands}-band model: trained in {trained - started:.0f} s, exported in "
        f"{time.perf_counter() - trained:.0f} s")
    data = config.to_dict()
    architecture = {"cnn": {k: v for k, v in data["cnn"].items() if k in ("width", "reduced_bands")},
                    **{section: {k: data[section][k] for k in ("base_channels", "channel_mult", "num_res_blocks")}
                       for section in ("spectra", "abundance")}}
    return checkpoint, model, {"bands": bands, "endmembers": ENDMEMBERS, "tile": TILE, "precision": "fp32",
                               "preset_architecture": preset, "training_steps": FEW_STEPS,
                               "architecture": architecture}


def open_backend(name: str, checkpoint: Path, model: Path, threads: int):
    """(networks, schedule, PipelineConfig, manifest endmembers) for ``onnxruntime``, ``openvino`` or
    ``torch`` (the checkpoint's eager modules), or ``backend:precision`` (``openvino:bf16``,
    ``onnxruntime:int8``, ...); every backend gets the manifest's endmembers as E0."""
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

    backend, _, precision = name.partition(":")
    unmixer = Unmixer.load(model, backend=backend, threads=threads, precision=precision or None)
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
                  steps: int | None = None, header: str | None = None, bands: int | None = None) -> dict:
    """The whole pipeline on a synthetic in-memory cube of ``bands`` bands (default 156; or the ENVI
    ``header``, read lazily), after a 64 x 64 warm-up run; the fastest of ``repeat`` runs."""
    from unmix.io.envi import read_cube
    from unmix.runtime.pipeline import run_pipeline

    networks, schedule, settings, endmembers = open_backend(name, checkpoint, model, threads)
    if steps is not None:
        settings = type(settings).from_dict(settings.to_dict(), steps=steps)
    scene = read_cube(header) if header else synthetic_scene(size, bands or BANDS)
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
