"""Runs outside the Python pipeline: the C++ runtime's ``unmix_run_raw`` (cpp_bindings/, OpenVINO
backend) and the ``unmix-run`` edge command with torch made unimportable, each with its peak RSS."""
from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from unmix.runtime.settings import c_abi_settings

from .common import CACHE, GIB, ROOT

#: The edge command line with torch made unimportable (as the runtime must run without it).
NO_TORCH = ("import sys; sys.modules['torch'] = None; "
            "from unmix.runtime.cli import main; sys.argv[0] = 'unmix-run'; main()")

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


def time_cpp(tool: Path, model: Path, header: Path, settings: dict, threads: int, work: Path, repeat: int = 2,
             file: bool = False) -> dict:
    """One fresh unmix_run_raw process (OpenVINO): the best of ``repeat`` whole-cube calls on the cube (the
    tool reads the whole cube into memory first; its peak RSS includes it), or with ``file`` the file entry
    point (``unmix_run_file``: row windows read from the ENVI file, rows written out as they finish, the
    passes' abundances in a scratch file). ``peak_rss_gib``: the tool's own VmHWM."""
    passed = {k: (int(v) if isinstance(v, bool) else v) for k, v in settings.items() if k in CPP_SETTINGS}
    command = [str(tool), str(model), "openvino", str(header), str(work / "cpp"), *(["--file"] if file else []),
               f"threads={threads}", f"repeat={repeat}", *(f"{k}={v}" for k, v in passed.items())]
    gnu_time = _gnu_time()
    done = subprocess.run([gnu_time, "-v", *command] if gnu_time else command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"speed.py: unmix_run_raw failed ({done.returncode}):\n{done.stderr[-3000:]}")
    H, W, B, p, seconds, vm_hwm_kib = done.stdout.split()[:6]
    for leftover in work.glob("cpp.*"):
        leftover.unlink()
    peak = int(vm_hwm_kib) * 1024 / GIB if int(vm_hwm_kib) > 0 else (_max_rss_gib(done.stderr) if gnu_time else None)
    cube_gib = int(H) * int(W) * int(B) * 4 / GIB
    buffers_gib = int(H) * int(W) * (int(p) + 2) * 4 / GIB     # abundances, rmse, uncertainty the caller holds
    return {"px_per_s": int(H) * int(W) / float(seconds), "best_total_s": round(float(seconds), 3),
            "total_s": [round(float(seconds), 3)], "peak_rss_gib": None if peak is None else round(peak, 3),
            "entry": "unmix_run_file" if file else "unmix_run_ex (whole cube in memory)",
            "peak_rss_minus_cube_and_outputs_gib": (None if peak is None or file
                                                    else round(peak - cube_gib - buffers_gib, 3)),
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
