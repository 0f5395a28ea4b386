"""The steps of one speed run, in the order the command takes them (numbered as in speed.py's docstring).

Each step returns its section of speed.json and keeps what the later steps need: the models and their
FLOPs per call, the measured peak FLOP/s, the inference settings, the backends' pipeline rates and the
best backend (the faster of ONNX Runtime and OpenVINO), against which the K series, the ``unmix-run``
runs and VCA + FCLS are measured.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .common import ROOT, BANDS, NETWORKS, REFINEMENT, SERIES_BANDS, TILE
from .cpp import cpp_runner, time_cpp, unmix_run
from .data import disk_cube, synthetic_scene
from .flops import count_flops, pipeline_flops
from .pipeline import achieved, round_robin
from .report import fmt
from .workers import run_child, trained

#: The Python backends timed on every step (eager torch is the reference of ``vs_torch``).
BACKENDS = ("onnxruntime", "openvino", "torch")
#: The fp32 peak that px/s figures are scaled to (GFLOP/s x 1e9): the reference machine's measured peak.
REFERENCE_PEAK = 205e9


@dataclass(frozen=True)
class Plan:
    """What a run measures, from the command line (``quick`` changes the defaults)."""

    quick: bool
    threads: int
    size: int                 # pipeline cube side
    repeat: int               # rounds of the backend comparison
    calls: int                # calls per batch when timing a network alone
    steps: list[int]          # DDIM steps K of the K series
    sizes: list[int]          # cube sides of the size series
    series_bands: int
    torch_max_size: int
    torch_budget: float
    large_size: int
    skip_large: bool
    cpp_build: Path

    @classmethod
    def from_args(cls, args) -> Plan:
        quick = args.quick
        return cls(quick=quick, threads=args.threads, size=args.size or (128 if quick else 256),
                   repeat=args.repeat or (1 if quick else 2), calls=args.calls,
                   steps=args.steps or ([1, 10] if quick else [1, 5, 10, 25]),
                   sizes=args.sizes or ([128, 256] if quick else [256, 512, 1024]),
                   series_bands=BANDS if quick else SERIES_BANDS, torch_max_size=args.torch_max_size,
                   torch_budget=args.torch_budget, large_size=args.large_size, skip_large=args.skip_large,
                   cpp_build=args.cpp_build)


@dataclass(frozen=True)
class Model:
    """A trained checkpoint, its exported model directory and the facts recorded about them."""

    checkpoint: Path
    directory: Path
    facts: dict


class SpeedRun:
    """One run of the benchmark in the scratch folder ``work``; call the steps in order."""

    def __init__(self, plan: Plan, work: Path, log):
        self.plan, self.work, self.log = plan, work, log

    def models(self) -> dict:
        """1-2. The timed (``tiny``) and the ``default`` preset's models and their FLOPs per call."""
        plan, log = self.plan, self.log
        self.timed = Model(*trained(self.work, BANDS, "tiny", plan.threads, log))
        self.default = Model(*trained(self.work, BANDS, "default", plan.threads, log))
        self.flops = {net: count_flops(self.timed.directory / f"{net}.onnx") for net in NETWORKS}
        self.default_flops = {net: count_flops(self.default.directory / f"{net}.onnx") for net in NETWORKS}
        self.differs = sorted(n for n in NETWORKS
                              if self.default_flops[n]["total_flops"] != self.flops[n]["total_flops"])
        return {"model": {**self.timed.facts, "timed": True, "flops_per_call": self.flops},
                "default_preset_model": {**self.default.facts, "flops_per_call": self.default_flops,
                                         "differs_from_timed": self.differs}}

    def peak(self) -> dict:
        """3. The machine's peak float32 matmul rate, in its own child process."""
        threads = self.plan.threads
        found = run_child("peak", threads, threads=threads)
        self.peak_rate = found["peak_flops_per_s"]
        self.log(f"peak float32 matmul on {threads} threads: {self.peak_rate / 1e9:.0f} GFLOP/s")
        return found

    def pipeline(self) -> dict:
        """4. The whole pipeline per backend (C++ too when built), in turns for ``repeat`` rounds."""
        from unmix.io.envi import write_cube
        from unmix.runtime.unmixer import Unmixer

        plan, model, threads, size = self.plan, self.timed, self.plan.threads, self.plan.size
        self.cpp_tool = cpp_runner(plan.cpp_build)
        cpp_header = (write_cube(self.work / "speed_cube.hdr", synthetic_scene(size, BANDS).read())
                      if self.cpp_tool else None)

        def run_backend(name: str) -> dict:
            if name == "cpp":
                return time_cpp(self.cpp_tool, model.directory, cpp_header, self.settings, threads, self.work)
            return run_child("pipeline", name, model.checkpoint, model.directory, size, threads, 1, "-", "-",
                             threads=threads)

        self.settings = Unmixer.load(model.directory, backend="onnxruntime", threads=1).settings().to_dict()
        backends = round_robin(list(BACKENDS) + (["cpp"] if self.cpp_tool else []), plan.repeat, run_backend,
                               self.log, "pipeline")
        cpp_entry = backends.pop("cpp", {"status": "not built", "build": str(plan.cpp_build)})
        self.best = max(("onnxruntime", "openvino"), key=lambda n: backends[n]["px_per_s"])
        self.best_rate = backends[self.best]["px_per_s"]
        torch_rate = backends["torch"]["px_per_s"]
        for entry in backends.values():
            entry.pop("settings", None)
            entry["vs_torch"] = entry["px_per_s"] / torch_rate
            entry["refinement_achieved"] = achieved(self.flops, entry["timings"], REFINEMENT)
            entry["refinement_peak_fraction"] = (entry["refinement_achieved"]["flops_per_s"] or 0) / self.peak_rate
            entry["hybridstu_achieved_flops_per_s"] = achieved(self.flops, entry["timings"],
                                                               ["hybridstu"])["flops_per_s"]
            entry["network_share_of_total"] = round(sum(entry["timings"].get(f"{n}_s", 0.0) for n in NETWORKS)
                                                    / entry["timings"]["total_s"], 3)
        found = {
            "cube": [size, size, BANDS], "repeat": plan.repeat, "settings": self.settings,
            "statistic": "best (shortest total_s) of repeat runs, each in a fresh process, backends in turn",
            "flops": pipeline_flops(self.flops, self.settings, size, size), "backends": backends,
            "best_backend": self.best, "speedup_vs_torch": self.best_rate / torch_rate,
            "onnxruntime_vs_torch": backends["onnxruntime"]["px_per_s"] / torch_rate,
            "openvino_vs_torch": backends["openvino"]["px_per_s"] / torch_rate,
            "cpp": cpp_entry,
        }
        if "px_per_s" in cpp_entry:
            cpp_entry["vs_torch"] = cpp_entry["px_per_s"] / torch_rate
            found["cpp_vs_python_openvino"] = cpp_entry["px_per_s"] / backends["openvino"]["px_per_s"]
        return found

    def precisions(self) -> dict:
        """4b. The pipeline at reduced precision (bf16 on OpenVINO, the int8 graphs on both backends), in
        turns with fp32 on both backends again, ``repeat`` rounds; px/s also scaled to a 205 GFLOP/s fp32
        peak (px/s x 205e9 / the measured fp32 peak) so that runs on machines of different speed compare."""
        plan, model, threads, size = self.plan, self.timed, self.plan.threads, self.plan.size
        import openvino

        names = ["onnxruntime", "openvino", "openvino:bf16", "onnxruntime:int8", "openvino:int8"]
        skipped = {}
        if "BF16" not in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            names.remove("openvino:bf16")
            skipped["openvino:bf16"] = "the CPU reports no BF16 capability to OpenVINO"

        def run(name: str) -> dict:
            return run_child("pipeline", name, model.checkpoint, model.directory, size, threads, 1, "-", "-",
                             threads=threads)

        rows = round_robin(names, plan.repeat, run, self.log, "precisions")
        for entry in rows.values():
            entry.pop("settings", None)
            entry["px_per_s_scaled_to_205_gflops"] = entry["px_per_s"] * REFERENCE_PEAK / self.peak_rate
        best = max(rows, key=lambda n: rows[n]["px_per_s"])
        self.precision_rows = rows
        self.band_names = list(dict.fromkeys(["onnxruntime", "openvino", best]))
        return {"cube": [size, size, BANDS], "reference_peak_flops_per_s": REFERENCE_PEAK, "skipped": skipped,
                "measured_fp32_peak_flops_per_s": self.peak_rate, "rows": rows, "best": best,
                "best_px_per_s": rows[best]["px_per_s"],
                "best_px_per_s_scaled_to_205_gflops": rows[best]["px_per_s_scaled_to_205_gflops"]}

    def bands(self, counts: tuple[int, ...] = (224,)) -> dict:
        """4c. The pipeline with more bands (a model trained and exported for each count): the two CPU
        backends in fp32 and the best precision of 4b, on a cube of the same side."""
        plan, threads, size = self.plan, self.plan.threads, self.plan.size
        rows = {str(BANDS): {name: self.precision_rows[name]["px_per_s"] for name in self.band_names}}
        for count in counts:
            model = Model(*trained(self.work, count, "tiny", threads, self.log))
            rows[str(count)] = {}
            for name in self.band_names:
                entry = run_child("pipeline", name, model.checkpoint, model.directory, size, threads, 1, "-", "-",
                                  str(count), threads=threads)
                rows[str(count)][name] = entry["px_per_s"]
                self.log(f"{count} bands, {name}: {entry['px_per_s']:,.0f} px/s")
        return {"cube_side": size, "px_per_s": rows,
                "px_per_s_scaled_to_205_gflops": {b: {n: v * REFERENCE_PEAK / self.peak_rate for n, v in r.items()}
                                                  for b, r in rows.items()}}

    def _networks_alone(self, backend: str, model: Model) -> dict:
        return run_child("networks", backend, model.checkpoint, model.directory, self.plan.threads, self.plan.calls,
                         threads=self.plan.threads)

    def networks(self) -> dict:
        """4. Each network alone on every backend; the default preset's wider networks on the best one."""
        network_rows: dict = {}
        for name in BACKENDS:
            timed = self._networks_alone(name, self.timed)
            for net, entry in timed.items():
                seconds = entry["ms_per_call"] / 1000
                entry["flops_per_s"] = self.flops[net]["total_flops"] / seconds
                entry["peak_fraction"] = entry["flops_per_s"] / self.peak_rate
                if net != "spectra_step":
                    entry["tile_px_per_s"] = TILE * TILE / seconds
            network_rows[name] = timed
            self.log(f"networks alone on {name}: "
                     + ", ".join(f"{n} {e['ms_per_call']:.1f} ms" for n, e in timed.items()))
        default_rows = {}
        if self.differs:
            timed = self._networks_alone(self.best, self.default)
            for net in self.differs:
                entry = timed[net]
                entry["flops_per_s"] = self.default_flops[net]["total_flops"] / (entry["ms_per_call"] / 1000)
                entry["peak_fraction"] = entry["flops_per_s"] / self.peak_rate
                default_rows[net] = {self.best: entry}
        return {"statistic": "each network alone, fixed feeds, best of 3 batches; tile_px_per_s = 64*64 / s per call",
                "timed_model": network_rows, "default_preset_model": default_rows}

    def steps(self) -> dict:
        """5. DDIM steps K on the best backend, one run each."""
        plan, model, size = self.plan, self.timed, self.plan.size
        rows = {}
        for K in plan.steps:
            entry = run_child("pipeline", self.best, model.checkpoint, model.directory, size, plan.threads, 1, K, "-",
                              threads=plan.threads)
            rows[str(K)] = {"px_per_s": entry["px_per_s"], "best_total_s": entry["best_total_s"],
                            "refine_s": entry["timings"]["refine_s"], "cnn_s": entry["timings"]["cnn_s"],
                            "flops_per_pixel": pipeline_flops(self.flops, {**self.settings, "steps": K}, size, size)[
                                "flops_per_pixel"]}
            self.log(f"K = {K} on {self.best}: {entry['px_per_s']:,.0f} px/s")
        return {"backend": self.best, "cube": [size, size, BANDS], "rows": rows}

    def _torch_skip(self, rows: dict, side: int) -> str | None:
        """Why eager torch skips the ``side`` cube (beyond ``--torch-max-size``, or its run predicted from
        the previous size, 4x its time per 2x side, over ``--torch-budget``), or None."""
        plan = self.plan
        if side > plan.torch_max_size:
            return f"--torch-max-size {plan.torch_max_size}"
        done = [(int(k), v) for k, v in rows.items() if "best_total_s" in v]
        if done:
            previous_side, previous = done[-1]
            predicted = previous["best_total_s"] * (side / previous_side) ** 2
            if predicted > plan.torch_budget:
                return f"predicted {predicted:.0f} s > --torch-budget {plan.torch_budget:g} s"
        return None

    def sizes(self) -> dict:
        """6. Every backend on disk cubes of each size, then ``unmix-run`` on the smallest and the large cube."""
        plan, log, threads = self.plan, self.log, self.plan.threads
        if plan.series_bands != BANDS:
            model = Model(*trained(self.work, plan.series_bands, "tiny", threads, log))
        else:
            model = self.timed
        series: dict = {name: {} for name in list(BACKENDS) + (["cpp"] if self.cpp_tool else [])}
        cubes = {}
        for side in plan.sizes:
            header, cubes[str(side)] = disk_cube(side, plan.series_bands, log)
            for name in series:
                skip = self._torch_skip(series[name], side) if name == "torch" else None
                if skip:
                    series[name][str(side)] = {"skipped": skip}
                    continue
                load = os.getloadavg()[0]
                if name == "cpp":
                    entry = time_cpp(self.cpp_tool, model.directory, header, self.settings, threads, self.work,
                                     repeat=1)
                else:
                    entry = run_child("pipeline", name, model.checkpoint, model.directory, side, threads, 1, "-",
                                      header, threads=threads)
                    entry.pop("settings", None)
                series[name][str(side)] = {"px_per_s": entry["px_per_s"], "best_total_s": entry["best_total_s"],
                                           "peak_rss_gib": entry.get("peak_rss_gib"),
                                           "seconds_per_megapixel": entry["best_total_s"] / (side * side / 1e6),
                                           "load_average_1min": round(load, 2)}
                log(f"size {side}^2 on {name}: {entry['px_per_s']:,.0f} px/s, "
                    f"peak RSS {fmt(entry.get('peak_rss_gib'), '.2f')} GiB")
        cli_runs = {}
        for side in [plan.sizes[0]] + ([] if plan.quick or plan.skip_large else [plan.large_size]):
            header, cubes[str(side)] = disk_cube(side, plan.series_bands, log)
            cli_runs[str(side)] = unmix_run(header, model.directory, threads, self.best, log)
            log(f"unmix-run {side}^2: {fmt(cli_runs[str(side)]['px_per_s'])} px/s, "
                f"peak RSS {cli_runs[str(side)]['peak_rss_gib']:.2f} GiB")
        cpp_memory = {}
        if self.cpp_tool:                          # the C++ whole-cube call and file entry point, peak RSS
            for side in [plan.sizes[0]] + ([] if plan.quick or plan.skip_large else [plan.large_size]):
                header, cubes[str(side)] = disk_cube(side, plan.series_bands, log)
                for file in (False, True):
                    entry = time_cpp(self.cpp_tool, model.directory, header, self.settings, threads, self.work,
                                     repeat=1, file=file)
                    cpp_memory.setdefault(entry["entry"], {})[str(side)] = {
                        k: entry[k] for k in ("px_per_s", "best_total_s", "peak_rss_gib",
                                              "peak_rss_minus_cube_and_outputs_gib")}
                    log(f"C++ {entry['entry']} {side}^2: {entry['px_per_s']:,.0f} px/s, peak RSS "
                        f"{fmt(entry['peak_rss_gib'], '.3f')} GiB")
        return {"bands": plan.series_bands, "model": model.facts, "cubes": cubes, "backends": series,
                "cpp_memory": cpp_memory,
                "unmix_run": {"backend": self.best, "runs": cli_runs},
                "note": "pipeline rows: one run each in a fresh process after a 64^2 warm-up, the cube "
                        "read lazily from disk, peak RSS of that process (torch's includes torch); cpp "
                        "rows: unmix_run_raw, which reads the whole cube into memory first"}

    def training(self) -> dict:
        """9. The default preset trained on Samson (benchmarks/train_time.py in a child process, all
        cores), seconds per stage: the engine and HybridSTU (cnn_s), the 1D and 2D diffusion networks."""
        import json
        import subprocess
        import sys

        out = self.work / "train_time.json"
        command = [sys.executable, str(ROOT / "benchmarks" / "train_time.py"), "--presets", "default", "--out", str(out)]
        load = os.getloadavg()[0]
        done = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        if done.returncode != 0:
            raise SystemExit(f"speed.py: train_time.py failed ({done.returncode}):\n{done.stderr[-3000:]}")
        found = json.loads(out.read_text())
        entry = found["presets"]["default"]
        self.log(f"default preset on {found['scene']}: {entry['wall_s']:.1f} s "
                 f"({', '.join(f'{k} {v:.1f}' for k, v in entry['stages_s'].items())})")
        return {"scene": found["scene"], "preset": "default", "threads": found["machine"]["threads"],
                "wall_s": entry["wall_s"], "stages_s": entry["stages_s"], "load_average_1min_before": round(load, 2)}

    def vca_fcls(self) -> dict:
        """7. VCA + FCLS on the pipeline's cube and threads."""
        threads = self.plan.threads
        found = run_child("vca_fcls", self.plan.size, threads, min(self.plan.repeat, 2), threads=threads)
        found["vs_best_backend"] = found["px_per_s"] / self.best_rate
        self.log(f"VCA + FCLS: {found['px_per_s']:,.0f} px/s")
        return found
