"""``unmix-run`` and ``unmix-eval``: the edge runtime's command lines (no torch).

Exit codes: 0 ok, 2 usage, 65 bad data, 66 missing input, 69 the Ray cluster cannot be reached,
70 internal error, 73 cannot create output, 74 I/O error.

Several cubes run one after another, in a process pool (``--jobs N``) or as Ray tasks (``--ray ADDRESS``,
the ``ray`` extra); every way runs the same per-cube job (:func:`_run_one`: load the model once per
worker, unmix, write the bundle atomically) and reports errors the same way.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
import zipfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import click
import numpy as np

from unmix import __version__
from unmix import __version__
from unmix.errors import InputError, MissingInputError, OutputError, UnmixError, UsageError, first_line, report_errors
from unmix.runtime.backends import BACKENDS, RUN_PRECISIONS, check_precision

_CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _default_backend() -> str:
    from unmix.runtime.backends import available_backends

    found = available_backends()
    if not found:
        raise UsageError("no inference backend is installed: pip install 'unmix[cpu]' (ONNX Runtime) "
                         "or 'unmix[openvino]'")
    return found[0]


class _Progress:
    """tqdm bars on stderr, one per pipeline stage."""

    def __init__(self, label: str, enabled: bool):
        self.label, self.enabled, self.bars = label, enabled, {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        from tqdm.auto import tqdm

        bar = self.bars.get(stage)
        if bar is None:
            bar = self.bars[stage] = tqdm(total=total, desc=f"{self.label} {stage}", file=sys.stderr, leave=False,
                                          dynamic_ncols=True)
        bar.update(done - bar.n)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


_WORKER: dict[str, Any] = {}
_RAY_EXTRA = "pip install 'unmix[ray]'"


class RayUnavailableError(UnmixError):
    """Ray could not be started, or the cluster at the given address cannot be reached."""

    exit_code = 69


#: The pixel sample of ``--reestimate-endmembers`` given without a number.
REESTIMATE_DEFAULT = 20000


def _reestimate_sample(value: str | None) -> int | None:
    """The N of ``--reestimate-endmembers [N]`` (None when the option is not given)."""
    from unmix.runtime.pipeline import MIN_REESTIMATE_SAMPLE

    if value is None:
        return None
    text = str(value).strip()
    if not (text.isascii() and text.isdigit()) or int(text) < MIN_REESTIMATE_SAMPLE:
        raise UsageError(f"--reestimate-endmembers: expected a whole number of pixels >= {MIN_REESTIMATE_SAMPLE} "
                         f"(or no value for {REESTIMATE_DEFAULT}), got {value!r}")
    return int(text)


def _run_one(cube: str, model: str, out: str, backend: str, threads: int | None, overrides: dict[str, Any],
             plot: bool, progress: bool, precision: str | None = None) -> dict[str, Any]:
    """Unmix one cube and write its bundle; returns the run summary (or the error) as a dict."""
    from unmix.io.sources import open_cube
    from unmix.runtime.bundle import write_bundle
    from unmix.runtime.unmixer import Unmixer
    from unmix.runtime.workspace import map_workspace

    try:
        key = (model, backend, threads, precision)
        if _WORKER.get("key") != key:
            _WORKER["unmixer"] = Unmixer.load(model, backend=backend, threads=threads, precision=precision)
            _WORKER["key"] = key
        unmixer = _WORKER["unmixer"]
        path = Path(cube)
        scene = open_cube(cube)
        bar = _Progress(scene.name, progress)
        started = time.perf_counter()
        with map_workspace(scene.shape[0], scene.shape[1], len(unmixer.manifest.endmember_names)) as workspace:
            try:
                result = unmixer.run(scene, progress=bar, workspace=workspace, **overrides)
            finally:
                bar.close()
            pixels = scene.shape[0] * scene.shape[1]
            masked = pixels - int(result.config["valid_pixels"])
            if masked:
                result.notes.append(f"{masked} pixels with NaN, Inf or ignore values were masked (NaN in the outputs)")
            manifest = unmixer.manifest
            info = {
                "input": {"path": str(path), "shape": list(scene.shape), "reflectance_scale": scene.reflectance_scale,
                          "masked_pixels": masked},
                "model": {"path": str(manifest.model_dir),
                          "networks": {name: entry.sha256 for name, entry in manifest.networks.items()}},
                "backend": backend,
                "precision": unmixer.precision,
                "versions": {"unmix": __version__, "numpy": np.__version__, **_backend_versions(backend)},
                "wall_s": time.perf_counter() - started,
            }
            bundle = write_bundle(out, scene, result, info, plot=plot)
        return {"cube": str(path), "bundle": str(bundle), "ok": True, "pixels": pixels,
                "masked_pixels": masked, "seconds": info["wall_s"], "notes": result.notes,
                "endmembers_source": result.config.get("endmembers_source")}
    except UnmixError as exc:
        return {"cube": cube, "ok": False, "error": str(exc), "exit_code": exc.exit_code}
    except OSError as exc:
        return {"cube": cube, "ok": False, "error": f"{cube}: {exc}", "exit_code": 74}


def _check_output_folder(out: Path) -> None:
    """Refuse an ``--out`` that cannot become a folder of bundles: it (or a parent) is a file, or unwritable."""
    folder = out
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        where = "" if folder == out else f" (in --out {out})"
        raise OutputError(f"{folder}: is a file, not a folder{where}; cannot write the output bundles there")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{folder}: not writable; cannot write the output bundles there")


def _import_ray():
    try:
        import ray
    except ImportError:
        raise UsageError(f"--ray needs Ray, which is not installed: {_RAY_EXTRA}") from None
    return ray


def _first_line(exc: BaseException) -> str:
    return first_line(exc)[:300]


def _check_reachable(option: str, address: str, timeout: float = 5.0) -> None:
    """Refuse an address whose host:port does not accept a TCP connection (ray.init would wait for it)."""
    import socket

    host, _, port = address.split("://", 1)[-1].rstrip("/").rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--ray {option}: expected 'local', 'auto', host:port or ray://host:port, got {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise RayUnavailableError(f"--ray {option}: cannot start or reach Ray (nothing answers at {host}:{port}: "
                                  f"{exc.strerror or exc})") from None


def _start_ray(ray, address: str, cpus: int) -> str:
    """Connect to (or start) Ray; returns what was done, for the log line.

    ``local``: a private Ray instance on this machine with ``cpus`` CPUs, shut down at the end.
    ``auto``: the cluster running on this machine (``ray start``) or at ``RAY_ADDRESS``; a private
    local one when there is none. Anything else: a cluster address (``host:port``, ``ray://host:port``).
    """
    quiet = {"logging_level": logging.ERROR, "log_to_driver": False}
    target = {"local": "", "auto": os.environ.get("RAY_ADDRESS", "").strip()}.get(address, address)
    if target and target not in ("local", "auto"):
        _check_reachable(address, target)
    local = {"address": "local", "num_cpus": cpus, "include_dashboard": False, **quiet}
    try:
        if address == "local":
            ray.init(**local)
            return f"a local Ray instance with {cpus} CPUs"
        if address == "auto":
            try:
                ray.init(address="auto", **quiet)
                return "the running Ray cluster"
            except ConnectionError:
                ray.init(**local)
                return f"a local Ray instance with {cpus} CPUs (no running cluster found)"
        ray.init(address=address, **quiet)
        return f"the Ray cluster at {address}"
    except Exception as exc:  # ConnectionError, RuntimeError, ValueError from ray.init: one line, exit 69
        raise RayUnavailableError(f"--ray {address}: cannot start or reach Ray ({_first_line(exc)})") from None


def _run_on_ray(args: list[tuple], address: str, jobs: int, threads: int | None) -> list[dict[str, Any]]:
    """Run :func:`_run_one` once per cube as Ray tasks (each asks for ``threads or 1`` CPUs); reports in order.

    A task that fails outside the job's own error handling (a lost worker or node, a bug) gives that
    cube an error report (exit 70) while the other cubes' results are kept.
    """
    ray = _import_ray()
    cpus = threads or 1
    where = _start_ray(ray, address, max(2, jobs, cpus))
    print(f"unmix-run: {len(args)} cube(s) as Ray tasks on {where}", file=sys.stderr)
    try:
        task = ray.remote(_run_one).options(num_cpus=cpus, max_retries=0)
        pending = [task.remote(*item) for item in args]
        reports = []
        for item, ref in zip(args, pending):
            try:
                reports.append(ray.get(ref))
            except Exception as exc:  # RayTaskError, WorkerCrashedError, NodeDiedError, ...
                cause = getattr(exc, "cause", None) or exc
                reports.append({"cube": item[0], "ok": False, "exit_code": 70,
                                "error": f"{item[0]}: the Ray task failed ({type(cause).__name__}: "
                                         f"{_first_line(cause)})"})
        return reports
    finally:
        ray.shutdown()


def _backend_versions(backend: str) -> dict[str, str]:
    package = BACKENDS[backend].package
    try:
        module = __import__(package)
        return {package: getattr(module, "__version__", "unknown")}
    except ImportError:
        return {}


@click.command(context_settings=_CONTEXT)
@click.version_option(__version__, "--version", prog_name="unmix-run", message="%(prog)s %(version)s")
@click.argument("cubes", nargs=-1, required=True)
@click.option("--model", "-m", required=True, type=click.Path(path_type=Path),
              help="Model folder written by unmix-export (manifest.json and the ONNX networks).")
@click.option("--out", "-o", default="unmix-out", show_default=True, type=click.Path(path_type=Path),
              help="Output folder; each cube's bundle goes to OUT/<cube name>/.")
@click.option("--backend", type=click.Choice(list(BACKENDS)), default=None,
              help="Inference backend, on its default device: "
                   + ", ".join(f"{name} ({entry.device})" for name, entry in BACKENDS.items())
                   + ". [default: the first of them that is installed]")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads per cube. [default: the backend's own (all cores); 1 per Ray task]")
@click.option("--precision", type=click.Choice(list(RUN_PRECISIONS)), default=None,
              help="Arithmetic: fp32; fp16 (a model exported with --fp16); bf16 (the fp32 graphs in bfloat16, "
                   "openvino on CPUs with AVX-512 BF16 or AMX); int8 (a model exported with --int8). "
                   "run.json records it. [default: the model's graphs (fp32, or fp16 for an --fp16 export)]")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="DDIM steps K (default: the model's).")
@click.option("--samples", type=click.IntRange(min=1), default=None,
              help="Stochastic samples S; S > 1 adds their spread to the uncertainty map (use with --eta > 0), "
                   "which otherwise holds the noise and endmember spread propagated to the abundances.")
@click.option("--eta", type=click.FloatRange(0.0, 1.0), default=None, help="DDIM stochasticity, 0..1.")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Noise seed, 0 .. 2^53. [default: the model's]")
@click.option("--reestimate-endmembers", "reestimate", is_flag=False, flag_value=str(REESTIMATE_DEFAULT), default=None,
              metavar="[N]",
              help="Re-estimate the endmember spectra on each cube (the endmember engine, started from the "
                   "model's) instead of using the model's as they are. Use it when the model was trained on "
                   "another flight or scene of the same sensor. A deterministic sample of at most N pixels "
                   f"(default {REESTIMATE_DEFAULT}, at least 100) is kept during the first pass, so memory is "
                   "bounded by N spectra whatever the cube size; the data-consistency weight then follows the "
                   "cube's estimated noise. run.json and --json record the endmember source. Give N, or put the "
                   "option after the cubes, so that a cube is not read as N.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Cubes processed in parallel (processes; with --ray, the CPUs of a local Ray instance).")
@click.option("--ray", "ray_address", default=None, metavar="ADDRESS",
              help="Run each cube as a Ray task (the ray extra). 'local': a private Ray instance on this machine "
                   "(max(2, --jobs) CPUs); 'auto': the running cluster (ray start, RAY_ADDRESS), else a local one; "
                   "or a cluster address (host:port, ray://host:port), whose nodes need unmix installed and must "
                   "see the cubes, the model and --out at the same paths. Each task uses --threads CPUs (default 1).")
@click.option("--no-quicklook", is_flag=True, help="Do not draw the quicklook PNG.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@report_errors("unmix-run")
def main(cubes, model, out, backend, threads, precision, steps, samples, eta, seed, reestimate, jobs, ray_address, no_quicklook,
         as_json, quiet):
    """Unmix CUBES with an exported model and write one output bundle per cube.

    Each of CUBES is an ENVI header (.hdr) or data file, or a benchmark name: samson, samson:zhu,
    jasper_ridge, sim1, sim1:30db, sim1:20db (read from UNMIX_DATA).

    Each bundle holds the abundance maps (ENVI, one band per endmember, map info kept), the endmember
    spectra (.csv and .sli), the per-pixel reconstruction RMSE, the uncertainty map when sampled, a
    quicklook PNG and run.json. A bundle appears whole or not at all.
    """
    from unmix.runtime.manifest import load_manifest

    reestimate = _reestimate_sample(reestimate)
    if ray_address is not None:
        _import_ray()     # a missing extra is refused before anything else
        if not ray_address.strip():
            raise UsageError("--ray needs an address: 'local', 'auto', host:port or ray://host:port")
    from unmix.io.envi import cube_name

    seen: dict[str, str] = {}
    for cube in cubes:
        name = cube_name(cube)
        if name in seen and Path(seen[name]).resolve() != Path(cube).resolve():
            raise UsageError(f"{cube} and {seen[name]} would both write {Path(out) / name}; rename one of them")
        seen.setdefault(name, cube)
    _check_output_folder(Path(out))  # an unusable --out is refused before any work
    load_manifest(model)  # refuse a bad model folder once, before any cube
    backend = backend or _default_backend()
    check_precision(backend, precision)  # one line before any work
    overrides = {"steps": steps, "samples": samples, "eta": eta, "seed": seed, "reestimate": reestimate}
    if ray_address is not None:
        threads = threads or 1
    args = [(str(c), str(model), str(out), backend, threads, overrides, not no_quicklook,
             not quiet and jobs == 1 and ray_address is None, precision) for c in cubes]
    if ray_address is not None:
        reports = _run_on_ray(args, ray_address.strip(), jobs, threads)
    elif jobs > 1 and len(cubes) > 1:
        with ProcessPoolExecutor(max_workers=min(jobs, len(cubes))) as pool:
            reports = list(pool.map(_run_one, *zip(*args)))
    else:
        reports = [_run_one(*a) for a in args]
    failed = [r for r in reports if not r["ok"]]
    for report in reports:
        if report["ok"]:
            print(f"unmix-run: {report['cube']} -> {report['bundle']} ({report['seconds']:.1f} s)", file=sys.stderr)
            for note in report["notes"]:
                print(f"unmix-run: note: {note}", file=sys.stderr)
        else:
            print(f"unmix-run: error: {report['error']}", file=sys.stderr)
    if as_json:
        json.dump({"runs": reports}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    if failed:
        sys.exit(failed[0]["exit_code"])


def _read_truth(truth: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, list[str] | None]:
    """(A, E, the cube or None, the truth's material names or None) of an .npz (optional ``names``) or a benchmark."""
    path = Path(truth)
    if path.suffix == ".npz":
        if not path.is_file():
            raise MissingInputError(f"{path}: truth file not found")
        try:
            with np.load(path) as data:        # allow_pickle stays False: objects are never unpickled
                for key in ("A", "E"):
                    if key not in data:
                        raise InputError(f"{path}: key {key!r}: expected an array "
                                         f"({'(H, W, p)' if key == 'A' else '(p, B)'})")
                names = [str(n) for n in data["names"]] if "names" in data else None
                return np.asarray(data["A"]), np.asarray(data["E"]), None, names
        except InputError:
            raise
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise InputError(f"{path}: not a readable .npz of arrays ({first_line(exc)}); pickled objects are never "
                             "loaded") from None
    from unmix.io.benchmarks import load_benchmark

    scene = load_benchmark(truth)
    return scene.abundances, scene.endmembers, scene.read(), scene.endmember_names


@click.command(context_settings=_CONTEXT)
@click.version_option(__version__, "--version", prog_name="unmix-eval", message="%(prog)s %(version)s")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--truth", required=True,
              help="A benchmark name (samson, samson:zhu, jasper_ridge, sim1, sim1:30db, ...) or an .npz with "
                   "A (H, W, p) and E (p, B).")
@click.option("--cube", type=click.Path(path_type=Path), default=None,
              help="The unmixed cube, for reconstruction RMSE and PSNR when the truth is an .npz.")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON on stdout.")
@report_errors("unmix-eval")
def eval_main(bundle, truth, cube, as_json):
    """Score an unmix-run output BUNDLE against a ground truth, and say which truth material each
    endmember matched.

    \b
    Conventions: endmembers are matched to the truth by the Hungarian algorithm on abundance-map RMSE;
    SAD is the mean arccos of the cosine between matched spectra (degrees and radians); abundance RMSE
    is over all pixels and endmembers; eRMSE over all endmembers and bands; SRE = 10 log10(||A||^2 /
    ||A - A_est||^2) dB; reconstruction RMSE over all pixels and bands; PSNR with peak 1.0
    (reflectance); pixels with a non-finite estimate (or cube value) are excluded and counted.
    """
    from unmix.physics.metrics import evaluate
    from unmix.runtime.bundle import read_bundle

    abundances, endmembers, names = read_bundle(bundle)
    true_a, true_e, data, truth_names = _read_truth(truth)
    if cube is not None:
        from unmix.io.envi import read_cube

        data = read_cube(cube).read()
    if true_a.shape[:2] != abundances.shape[:2] or true_a.shape[-1] != abundances.shape[-1]:
        raise InputError(f"{bundle}: abundances have shape {abundances.shape}, the truth {true_a.shape}")
    if truth_names is not None and len(truth_names) != true_a.shape[-1]:
        truth_names = None
    metrics = evaluate(abundances, endmembers, true_a, true_e, cube=data, names=truth_names)
    truth_names = truth_names or [f"truth_{k + 1}" for k in range(true_a.shape[-1])]
    metrics["matches"] = [
        {"truth": truth_names[k], "endmember": names[j],
         "sad_degrees": None if metrics["sad_degrees"] is None else metrics["sad_degrees"][k],
         "abundance_rmse": metrics["abundance_rmse_per_endmember"][k]}
        for k, j in enumerate(metrics["permutation"])]
    if as_json:
        json.dump(metrics, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    print(f"SAD {metrics['sad_degrees_mean']:.3f} deg ({metrics['sad_radians_mean']:.4f} rad)  "
          f"aRMSE {metrics['abundance_rmse']:.4f}  eRMSE {metrics['endmember_rmse']:.4f}", end="")
    if metrics.get("reconstruction_rmse") is not None:
        print(f"  recon RMSE {metrics['reconstruction_rmse']:.5f}  PSNR {metrics['psnr_db']:.2f} dB", end="")
    print()
    width = max(len(match["truth"]) for match in metrics["matches"])
    for match in metrics["matches"]:
        sad_text = "" if match["sad_degrees"] is None else f"  SAD {match['sad_degrees']:6.2f} deg"
        print(f"  {match['truth']:<{width}} <- {match['endmember']}{sad_text}  aRMSE {match['abundance_rmse']:.4f}")


if __name__ == "__main__":
    main()
