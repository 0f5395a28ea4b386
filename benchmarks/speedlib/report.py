"""The report: the machine and versions, the targets (value, target, met) and the markdown tables that
go to speed.md and README's speed block."""
from __future__ import annotations

import json
import os
import platform
import re
from pathlib import Path

from benchmarks.readme import update_readme

from .common import ENDMEMBERS, GIB, NETWORKS, TILE
from .flops import pipeline_flops

#: The performance targets.
TARGET_SPEEDUP = 3.0
TARGET_PEAK_FRACTION = 0.30
TARGET_PX_PER_S = 20_000
#: Flat memory: the largest cube's peak RSS at most this many times the smallest's.
TARGET_MEMORY_RATIO = 1.25
#: The largest peak RSS of unmix-run the memory target allows, in GiB.
MEMORY_TARGET_GIB = 1.5
#: Performance v2: an AVIRIS-NG line (about 600 px x 100 lines/s) on 2 cores, px/s scaled to a 205 GFLOP/s
#: fp32 peak; the refinement's share of the fp32 peak; default training seconds; C++ memory growth.
TARGET_V2_PX_PER_S = 60_000
TARGET_V2_PEAK_FRACTION = 0.60
TARGET_V2_TRAIN_S = 60.0
TARGET_V2_RUN_RSS_GIB = 0.5
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


def fmt(value, spec: str = ",.0f", missing: str = "–") -> str:
    return missing if value is None else format(value, spec)


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


def targets_v2(results: dict) -> list[tuple[str, str, str]]:
    """(target, value, met) rows of performance v2 from this run's figures."""
    rows = []
    precisions = results.get("precisions")
    if precisions:
        best = precisions["best"]
        value = precisions["best_px_per_s_scaled_to_205_gflops"]
        rows.append((f"default pipeline, best backend and precision, {precisions['cube'][0]}²×{precisions['cube'][2]}, "
                     f">= {TARGET_V2_PX_PER_S:,} px/s scaled to 205 GFLOP/s",
                     f"{value:,.0f} ({best}; {precisions['best_px_per_s']:,.0f} px/s measured)",
                     "yes" if value >= TARGET_V2_PX_PER_S else "no"))
    r = results["targets"]["refinement_peak_fraction_and_px_per_s"]
    rows.append((f"refinement share of the fp32 peak >= {TARGET_V2_PEAK_FRACTION:.0%}",
                 f"{r['peak_fraction']:.1%} ({r['backend']})", "yes" if r["peak_fraction"] >= TARGET_V2_PEAK_FRACTION else "no"))
    training = results.get("training")
    if training:
        rows.append((f"default training, one scene ({training['scene']}), {training['threads']} threads, <= {TARGET_V2_TRAIN_S:g} s",
                     f"{training['wall_s']:.1f} s (" + ", ".join(f"{k} {v:.1f}" for k, v in training["stages_s"].items()) + ")",
                     "yes" if training["wall_s"] <= TARGET_V2_TRAIN_S else "no"))
    sizes = results["sizes"]
    memory = sizes.get("cpp_memory", {})
    runs = sizes["unmix_run"]["runs"]
    file_rows = memory.get("unmix_run_file", {})
    if len(file_rows) > 1:
        sides = sorted(file_rows, key=int)
        small, large = file_rows[sides[0]]["peak_rss_gib"], file_rows[sides[-1]]["peak_rss_gib"]
        python = runs.get(sides[-1], {}).get("peak_rss_gib")
        met = large / small <= TARGET_MEMORY_RATIO and python is not None and large <= python
        rows.append((f"C++ file entry, peak RSS {sides[0]}² → {sides[-1]}² <= {TARGET_MEMORY_RATIO}x and <= Python's",
                     f"{small:.3f} → {large:.3f} GiB ({large / small:.2f}x; unmix-run {fmt(python, '.3f')} GiB)",
                     "yes" if met else "no"))
    whole = memory.get("unmix_run_ex (whole cube in memory)", {})
    if len(whole) > 1:
        sides = sorted(whole, key=int)
        small = whole[sides[0]]["peak_rss_minus_cube_and_outputs_gib"]
        large = whole[sides[-1]]["peak_rss_minus_cube_and_outputs_gib"]
        rows.append((f"C++ whole-cube call, peak RSS minus the cube and output buffers, flat (<= {TARGET_MEMORY_RATIO}x)",
                     f"{small:.3f} → {large:.3f} GiB ({large / small:.2f}x)",
                     "yes" if large / small <= TARGET_MEMORY_RATIO else "no"))
    large_runs = sorted(runs, key=int)
    if len(large_runs) > 1:
        value = runs[large_runs[-1]]["peak_rss_gib"]
        rows.append((f"unmix-run peak RSS {large_runs[-1]}²×{sizes['bands']} < {TARGET_V2_RUN_RSS_GIB} GiB",
                     f"{value:.3f} GiB", "yes" if value < TARGET_V2_RUN_RSS_GIB else "no"))
    return rows


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
             f"{fmt(torch_peak and torch_peak / 1e9)}"
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
                     f"{fmt(calls.get('hybridstu'), '.1f')} | {fmt(calls.get('abundance_step'), '.1f')} | "
                     f"{fmt(entry['refinement_achieved']['flops_per_s'] and entry['refinement_achieved']['flops_per_s'] / 1e9, '.1f')} | "
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
    precisions = results.get("precisions")
    if precisions:
        bf16 = results["peak"].get("bf16", {}).get("peak")
        lines += ["", f"Precision (the same model and {H}² cube, best of {pipe['repeat']} runs each, in turns; px/s "
                      f"scaled to a 205 GFLOP/s fp32 peak = px/s x 205 / {peak / 1e9:,.0f}; bf16 matmul peak measured "
                      f"here: {fmt(bf16 and bf16 / 1e9)} GFLOP/s):", "",
                  "| backend:precision | px/s | px/s scaled to 205 GFLOP/s | total s | HybridSTU ms/call | 2D step ms/call |",
                  "|---|---:|---:|---:|---:|---:|"]
        for name, entry in precisions["rows"].items():
            calls = entry["per_call_ms"]
            lines.append(f"| {name if ':' in name else name + ':fp32'} | {entry['px_per_s']:,.0f} | "
                         f"{entry['px_per_s_scaled_to_205_gflops']:,.0f} | {entry['best_total_s']:.2f} | "
                         f"{fmt(calls.get('hybridstu'), '.1f')} | {fmt(calls.get('abundance_step'), '.1f')} |")
        for name, why in precisions.get("skipped", {}).items():
            lines.append(f"| {name} | skipped: {why} | – | – | – | – |")
    bands = results.get("bands")
    if bands:
        names = list(next(iter(bands["px_per_s"].values())))
        lines += ["", f"Band count ({bands['cube_side']}² cube; px/s, and scaled to 205 GFLOP/s in brackets):", "",
                  "| bands | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
        for count, row in bands["px_per_s"].items():
            scaled = bands["px_per_s_scaled_to_205_gflops"][count]
            lines.append(f"| {count} | " + " | ".join(f"{row[n]:,.0f} ({scaled[n]:,.0f})" for n in names) + " |")
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
                         f"{row['px_per_s']:,.0f} ({fmt(row.get('peak_rss_gib'), '.2f')})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for side, run in sizes["unmix_run"]["runs"].items():
        lines.append(f"| unmix-run {sizes['unmix_run']['backend']} {side}² (no torch) | {fmt(run['px_per_s'])} px/s, "
                     f"peak RSS {run['peak_rss_gib']:.2f} GiB, wall {run['wall_s']:.0f} s |" + " |" * (len(sides) - 1))
    lines += ["", "Targets (performance v2):", "", "| target | value | met |", "|---|---|---|"]
    lines += [f"| {target} | {value} | {met} |" for target, value, met in targets_v2(results)]
    lines += ["", "Earlier targets:", "", "| target | value | met |", "|---|---|---|"]
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


def write_results(results: dict, out: Path, readme: bool, log) -> None:
    """``out`` (JSON) and its ``.md`` tables; README's speed block too when ``readme``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    table = markdown(results)
    out.with_suffix(".md").write_text(table + "\n")
    print(table)
    written = [str(out), str(out.with_suffix(".md"))]
    if readme and update_readme(table, marker="speed"):
        written.append("README.md (speed block)")
    log(f"wrote {', '.join(written)} in {results['benchmark_wall_s']:.0f} s")
