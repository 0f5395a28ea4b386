"""The ``engines`` step of an export: TensorRT engines built from the exported ONNX graphs (no torch).

:func:`build_engines` builds (or finds in the cache) one engine per network of a model folder, on the
machine that will run them: engines are tied to the TensorRT version and the GPU architecture, so the
cache (default ``<model>/engines/``) is keyed by both (:mod:`unmix.runtime.engine_cache`) and a plan
that does not match, or that TensorRT cannot deserialize, is rebuilt from the graph. Builds are
strongly typed (fp16 is in the ``.fp16.onnx`` graph; the one path that works on TensorRT 10 and 11),
with a persistent timing cache (``engines/timing.cache``) and the static input shapes of each
network's contract (:mod:`unmix.export.contracts`, sized by the manifest), the contract the ONNX export
was traced and checked against (:func:`build_serialized_engine`, which the TensorRT backend also calls
when its cache misses).

:func:`check_engines` runs every engine and ONNX Runtime (CPU) on the same realistic inputs, the
contract's sample inputs (:func:`sample_feeds`), and compares them: with polygraphy's ``Comparator``
when polygraphy is installed (:func:`polygraphy_compare`), else with numpy (:func:`compare_outputs`);
both record max/mean absolute differences.

:func:`engines_step` is what ``unmix-export`` calls after writing the ONNX graphs: it builds when
TensorRT, cuda-python and a GPU are present, says why it skipped otherwise, and refuses in one line
when engines were asked for (``required=True``) on a machine that cannot build them.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from unmix.errors import InputError, require_int
from unmix.export.contracts import NetworkContract, SampleSource, manifest_contracts

__all__ = [
    "DEFAULT_WORKSPACE_MB",
    "EngineCheckError",
    "TOLERANCES",
    "build_engines",
    "build_serialized_engine",
    "check_engines",
    "compare_outputs",
    "engines_step",
    "polygraphy_compare",
    "sample_feeds",
]

DEFAULT_WORKSPACE_MB = 1024
TOLERANCES = {"fp32": 5e-3, "fp16": 5e-2}          # max abs, engine vs ONNX Runtime CPU on the same graph
ENGINE_DIR = "engines"
TIMING_CACHE = "timing.cache"


class EngineCheckError(InputError):
    """An engine whose outputs differ from ONNX Runtime's by more than the tolerance."""


def _require_tensorrt():
    from unmix.runtime.backends import tensorrt_backend

    tensorrt_backend.import_tensorrt()             # "TensorRT is not installed: ..." first, alone
    return tensorrt_backend.require()


def build_serialized_engine(onnx_path: str | os.PathLike, input_shapes: Mapping[str, Iterable[int]],
                            workspace_mb: int = DEFAULT_WORKSPACE_MB,
                            timing_cache: str | os.PathLike | None = None) -> tuple[bytes, dict[str, Any]]:
    """Build a strongly typed engine from an ONNX graph; returns ``(plan bytes, builder flags)``.

    Uses only API common to TensorRT 10 and 11: ``Builder.create_network`` with the ``STRONGLY_TYPED``
    flag (fp16 lives in the ONNX graph; TensorRT 11 has no fp16 builder flag), ``OnnxParser``, a
    workspace pool limit, a persistent timing cache and ``build_serialized_network``.

    Args:
        onnx_path: the graph (fp16 arithmetic, if any, is in the graph itself).
        input_shapes: input name -> static shape; free (-1) graph axes get a one-point optimisation profile.
        workspace_mb: the builder's workspace pool limit.
        timing_cache: a file holding the builder's timing cache; read when present, written after the build.

    Raises:
        InputError: the parser rejects the graph, its inputs differ from ``input_shapes``, or the build fails.
    """
    from unmix.runtime.backends.tensorrt_backend import import_tensorrt, logger

    trt = import_tensorrt()
    log = logger(trt)
    onnx_path = Path(onnx_path)
    builder = trt.Builder(log)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, log)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i).desc()) for i in range(parser.num_errors)] or ["no details"]
        raise InputError(f"{onnx_path}: TensorRT's ONNX parser rejected the graph ({errors[0]})")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    profile = None
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        want = [int(s) for s in input_shapes.get(tensor.name, ())]
        have = list(tensor.shape)
        if len(want) != len(have) or any(h not in (-1, w) for h, w in zip(have, want)):
            raise InputError(f"{onnx_path}: graph input {tensor.name!r} has shape {have}, expected {want}")
        if -1 in have:
            profile = profile or builder.create_optimization_profile()
            profile.set_shape(tensor.name, want, want, want)
    if profile is not None:
        config.add_optimization_profile(profile)
    cache_bytes = b""
    if timing_cache is not None and Path(timing_cache).is_file():
        cache_bytes = Path(timing_cache).read_bytes()
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise InputError(f"{onnx_path}: TensorRT could not build an engine (see the messages above)")
    if timing_cache is not None:
        from unmix.io.files import write_atomic

        write_atomic(Path(timing_cache), bytes(config.get_timing_cache().serialize()))
    flags_used = {"strongly_typed": True, "workspace_mb": int(workspace_mb),
                  "timing_cache": str(timing_cache) if timing_cache is not None else None,
                  "timing_cache_reused": bool(cache_bytes), "profile": profile is not None,
                  "tensorrt": trt.__version__}
    return bytes(plan), flags_used


def _contract(manifest, name: str) -> NetworkContract:
    manifest.network(name)                                  # names the manifest when it lacks the network
    return manifest_contracts(manifest)[name]


def _networks(manifest, names: Sequence[str] | None,
              precision: str | None) -> list[tuple[str, Any, Path, NetworkContract]]:
    chosen = list(manifest.networks) if names is None else list(names)
    found = []
    for name in chosen:
        entry = manifest.network(name)
        if precision not in (None, entry.precision):
            entry = entry.reference if entry.reference is not None else entry
        path = manifest.network_file(name, precision)      # checks the sha256
        found.append((name, entry, path, _contract(manifest, name)))
    return found


def build_engines(model_dir: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                  workspace_mb: int = DEFAULT_WORKSPACE_MB, precision: str | None = None,
                  names: Sequence[str] | None = None, device: int = 0,
                  progress: Callable[[str], None] | None = None) -> dict[str, dict[str, Any]]:
    """Build or reuse the TensorRT engines of an exported model.

    Args:
        model_dir: the folder holding ``manifest.json`` and the graphs.
        cache_dir: where plans, sidecars and the timing cache go (default ``model_dir/engines``).
        workspace_mb: the builder's workspace limit.
        precision: None for the manifest's graphs, ``"fp32"`` for the fp32 references of an fp16 export.
        names: networks to build (default: all).
        device: the CUDA device to build for.
        progress: called with one line per network.

    Returns:
        name -> ``{"plan", "status" ("cached" | "built" | "rebuilt"), "reason", **sidecar}``.

    Raises:
        UsageError: TensorRT, cuda-python or a GPU is missing (one line naming what).
        InputError: a graph fails to parse or build, or a plan cannot be deserialized after a rebuild.
    """
    from unmix.runtime.backends import cuda_runtime as cuda
    from unmix.runtime.backends.tensorrt_backend import deserializer
    from unmix.runtime.engine_cache import EngineIdentity, load_or_build
    from unmix.runtime.manifest import Manifest, file_sha256, load_manifest

    trt, cudart = _require_tensorrt()
    workspace_mb = require_int(workspace_mb, "workspace_mb", 16)
    say = progress or (lambda message: None)
    manifest = model_dir if isinstance(model_dir, Manifest) else load_manifest(model_dir)
    cache = Path(cache_dir) if cache_dir is not None else manifest.model_dir / ENGINE_DIR
    cuda.call(cudart, "cudaSetDevice", cudart.cudaSetDevice(device))
    capability = cuda.compute_capability(device)
    deserialize = deserializer(trt)
    results: dict[str, dict[str, Any]] = {}
    for name, entry, path, contract in _networks(manifest, names, precision):
        shapes = contract.input_shapes()
        identity = EngineIdentity(name, file_sha256(path), entry.precision, shapes, trt.__version__, capability)
        started = time.perf_counter()
        loaded = load_or_build(cache, identity, deserialize, build=lambda path=path, shapes=shapes:
                               build_serialized_engine(path, shapes, workspace_mb, cache / TIMING_CACHE))
        seconds = time.perf_counter() - started
        say(f"{name} ({entry.precision}): engine {loaded.status} in {seconds:.1f} s -> {loaded.plan_path.name}"
            + (f" ({loaded.reason})" if loaded.reason else ""))
        results[name] = {"plan": str(loaded.plan_path), "status": loaded.status, "reason": loaded.reason,
                         **loaded.sidecar.to_dict()}
    return results


# --------------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------------

def sample_feeds(manifest, name: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Realistic inputs for network ``name`` from the manifest alone (numpy): the sample inputs of its
    contract (:mod:`unmix.export.contracts`), drawn from the manifest's endmembers and inference settings."""
    contract = _contract(manifest, name)
    return contract.sample_inputs(SampleSource.from_manifest(manifest), seed)


def compare_outputs(reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray],
                    atol: float) -> dict[str, Any]:
    """``{"max_abs", "mean_abs", "passed", "outputs": {name: {"max_abs", "mean_abs"}}}`` (numpy)."""
    outputs = {}
    for key, want in reference.items():
        if key not in candidate:
            raise InputError(f"output {key!r} is missing from the candidate's results")
        got = np.asarray(candidate[key], np.float64)
        want = np.asarray(want, np.float64)
        if got.shape != want.shape:
            raise InputError(f"output {key!r} has shape {list(got.shape)}, the reference {list(want.shape)}")
        delta = np.abs(got - want)
        finite = bool(np.isfinite(got).all())
        outputs[key] = {"max_abs": float(delta.max()) if finite else float("inf"), "mean_abs": float(delta.mean())}
    worst = max(item["max_abs"] for item in outputs.values())
    return {"max_abs": worst, "mean_abs": max(item["mean_abs"] for item in outputs.values()),
            "passed": bool(worst <= atol), "tolerance": atol, "outputs": outputs}


def polygraphy_compare(runners: Sequence[Any], feeds: Mapping[str, np.ndarray], atol: float) -> dict[str, Any]:
    """Run polygraphy runners on ``feeds`` with ``Comparator`` and compare each with the first.

    Returns :func:`compare_outputs` figures of the last runner against the first, plus polygraphy's
    own verdict (``"polygraphy_passed"``, ``SimpleCompareFunc`` with ``atol``, ``rtol=0``).
    """
    from polygraphy import comparator

    results = comparator.Comparator.run(list(runners), data_loader=[dict(feeds)])
    if hasattr(comparator, "SimpleCompareFunc"):   # newer polygraphy; CompareFunc.simple (deprecated) before
        compare = comparator.SimpleCompareFunc(atol=atol, rtol=0.0)
    else:
        compare = comparator.CompareFunc.simple(atol=atol, rtol=0.0)
    verdict = comparator.Comparator.compare_accuracy(results, compare_func=compare)
    (_, first), (_, last) = results[0], results[-1]
    figures = compare_outputs({k: np.asarray(v) for k, v in first[0].items()},
                              {k: np.asarray(v) for k, v in last[0].items()}, atol)
    figures["polygraphy_passed"] = bool(verdict)
    figures["compared_with"] = "polygraphy Comparator"
    return figures


def _has_polygraphy() -> bool:
    import importlib

    try:
        importlib.import_module("polygraphy.comparator")
    except ImportError:
        return False
    return True


def check_engines(model_dir: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                  precision: str | None = None, names: Sequence[str] | None = None,
                  tolerances: Mapping[str, float] | None = None, seed: int = 0, device: int = 0,
                  use_polygraphy: bool | None = None, workspace_mb: int = DEFAULT_WORKSPACE_MB,
                  progress: Callable[[str], None] | None = None) -> dict[str, dict[str, Any]]:
    """Compare every engine with ONNX Runtime (CPU) on :func:`sample_feeds`; EngineCheckError on a failure.

    ``use_polygraphy``: None uses polygraphy's Comparator when it is installed, else numpy.
    Engines come from :func:`build_engines` (built first when missing).
    """
    from unmix.runtime.backends import load_network, tensorrt_backend
    from unmix.runtime.manifest import Manifest, load_manifest

    manifest = model_dir if isinstance(model_dir, Manifest) else load_manifest(model_dir)
    cache = Path(cache_dir) if cache_dir is not None else manifest.model_dir / ENGINE_DIR
    built = build_engines(manifest, cache_dir=cache, workspace_mb=workspace_mb, precision=precision, names=names,
                          device=device, progress=progress)
    limits = {**TOLERANCES, **(tolerances or {})}
    polygraphy = _has_polygraphy() if use_polygraphy is None else bool(use_polygraphy)
    say = progress or (lambda message: None)
    report: dict[str, dict[str, Any]] = {}
    source = SampleSource.from_manifest(manifest)
    for name, entry, path, contract in _networks(manifest, names, precision):
        feeds = contract.sample_inputs(source, seed)
        atol = float(limits[entry.precision])
        if polygraphy:
            from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
            from polygraphy.backend.trt import EngineFromBytes, TrtRunner

            plan = Path(built[name]["plan"]).read_bytes()
            figures = polygraphy_compare([OnnxrtRunner(SessionFromOnnx(str(path)), name="onnxruntime"),
                                          TrtRunner(EngineFromBytes(plan), name="tensorrt")], feeds, atol)
        else:
            reference = load_network(path, entry, backend="onnxruntime", name=name)(feeds)
            engine = tensorrt_backend.open_network(path, contract.inputs, contract.outputs, device=f"cuda:{device}",
                                                   name=name, cache_dir=cache, workspace_mb=workspace_mb)(feeds)
            figures = compare_outputs(reference, engine, atol)
            figures["compared_with"] = "numpy"
        say(f"{name} ({entry.precision}): TensorRT vs ONNX Runtime max abs {figures['max_abs']:.3g} "
            f"(tolerance {atol:g}, {figures['compared_with']})")
        report[name] = figures
        if not figures["passed"]:
            raise EngineCheckError(f"{built[name]['plan']}: TensorRT output differs from ONNX Runtime by "
                                   f"{figures['max_abs']:.3g} (max abs), more than the tolerance {atol:g}")
    return report


def engines_step(model_dir: str | os.PathLike, required: bool = False, check: bool = True,
                 workspace_mb: int = DEFAULT_WORKSPACE_MB, progress: Callable[[str], None] | None = None
                 ) -> dict[str, dict[str, Any]] | None:
    """Build (and check) the engines after an export when this machine can; None when it skipped.

    ``required=True`` (the user asked for engines) turns a missing TensorRT, cuda-python or GPU into
    the UsageError line; otherwise the step says why it skipped through ``progress``.
    """
    from unmix.runtime.backends import tensorrt_backend

    ok, reason = tensorrt_backend.availability()
    say = progress or (lambda message: None)
    if not ok:
        if required:
            _require_tensorrt()
        say(f"engines: skipped, TensorRT engines need TensorRT, cuda-python and an NVIDIA GPU ({reason})")
        return None
    if check:
        return check_engines(model_dir, workspace_mb=workspace_mb, progress=progress)
    return build_engines(model_dir, workspace_mb=workspace_mb, progress=progress)
