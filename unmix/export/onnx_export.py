"""Export a checkpoint's networks to ONNX (opset 20), with checks, an fp16 variant and a cache.

What is exported (one graph per network the pipeline calls; :func:`export_contracts`):

- ``hybridstu``: ``cube (1, B, T, T)`` -> ``abundances (1, p, T, T)``.
- ``abundance_step``: the fused 2D DDIM step (:class:`unmix.export.steps.AbundanceStep`) -> ``x_prev``.
- ``spectra_step``: the fused 1D DDIM step (:class:`unmix.export.steps.SpectraStep`) -> ``x_prev``.

Shapes are static: T = ``tile``, B and p from the checkpoint. Each network's names, shapes, dtypes
(float32) and sample inputs are its contract (:mod:`unmix.export.contracts`), which the TensorRT
builder uses too.

Stages, each cached by content: the **fp32** graph (``<name>.onnx``): ``torch.onnx.export`` (dynamo,
opset 20, one file), onnxslim when importable, ``onnx.checker`` (full check), the I/O checked against
the contract, and (``check=True``) parity against the eager torch module on ONNX Runtime and on
OpenVINO (when installed): max abs difference <= :data:`FP32_TOLERANCE`. The **fp16** graph
(``<name>.fp16.onnx``, ``fp16=True``): the same module with its weights in float16 except the parts
that stay float32 (the timestep embedding and its MLPs, the GroupNorm statistics and affine, the
softmax, and all of the fused update: data consistency, projection, DDIM arithmetic), its inputs cast
to float16 inside the graph and its outputs back to float32; checked against the fp32 graph on the
same backend to :data:`FP16_TOLERANCE` (max abs), with numpy on ONNX Runtime and OpenVINO and with
polygraphy's ``Comparator`` (two ONNX Runtime CPU runners, fp32 then fp16, ``atol`` = the bound,
``rtol`` = 0; recorded as ``checks.polygraphy``). ONNX Runtime's CPU provider runs most fp16 ops on x86
by casting them to float32, so these checks cover the graph's structure and its fp32-pinned ops, not
fp16 arithmetic (recorded with the figures).

Cache: a stage's key is the sha256 of (export format, network, precision, tile, opset, the
sha256 and constructor arguments of the checkpoint weights it uses, torch/onnxscript/onnx/onnxslim
versions). When ``out_dir/manifest.json`` already lists a file with that key whose bytes still have
the recorded sha256, the stage is skipped (its recorded checks kept). The key is stored in the
manifest (``networks.<name>.cache_key``).

An existing model folder stays usable until the end: new graphs are written and checked in a hidden
staging folder inside ``out_dir``, moved in only when every stage has passed, and ``manifest.json``
is replaced last (atomically). A failed export leaves the previous model as it was.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from unmix.errors import OutputError, UnmixError, UsageError, first_line
from unmix.export.contracts import NetworkContract, SampleSource, network_contracts
from unmix.io.files import replacing
from unmix.runtime.manifest import MANIFEST_NAME, file_sha256
from unmix.runtime.network import NETWORK_NAMES, NetworkSpec, TensorSpec

__all__ = [
    "EXPORT_FORMAT",
    "ExportCheckError",
    "ExportContract",
    "FP16_TOLERANCE",
    "FP32_TOLERANCE",
    "OPSET",
    "export",
    "export_contracts",
    "precision_report",
]

EXPORT_FORMAT = "unmix-export/1"
OPSET = 20
FP32_TOLERANCE = 1e-4
FP16_TOLERANCE = 2e-2
FP16_NOTE = ("fp16 compared with the fp32 graph on the same backend; ONNX Runtime's CPU provider runs most fp16 "
             "ops on x86 by casting to float32, so on CPU this checks the graph's structure and fp32-pinned ops, "
             "not fp16 arithmetic")
_STAGE_KEYS = ("file", "sha256", "precision", "cache_key", "slimmed", "nodes", "export_s", "checks")
_PINNED_OPS = ("InstanceNormalization", "Softmax", "Sin", "Cos", "Gemm", "TopK", "CumSum", "Conv")


class ExportCheckError(UnmixError):
    """An exported graph failed a check (parity, I/O contract, opset)."""

    exit_code = 70


@dataclass(frozen=True)
class ExportContract:
    """A network's :class:`~unmix.export.contracts.NetworkContract` with the eager module it is exported from.

    Attributes:
        network: the contract (name, tensors, the checkpoint networks whose weights the module holds).
        module: the eager torch module (eval mode); ``module(*inputs in order)`` -> the output tensor.
        sample_inputs: name -> float32 array of realistic values (used to trace and to check parity).
    """

    network: NetworkContract
    module: nn.Module
    sample_inputs: dict[str, np.ndarray]

    @property
    def name(self) -> str:
        return self.network.name

    @property
    def inputs(self) -> dict[str, TensorSpec]:
        return self.network.inputs

    @property
    def outputs(self) -> dict[str, TensorSpec]:
        return self.network.outputs

    @property
    def weights(self) -> tuple[str, ...]:
        return self.network.weights

    @property
    def spec(self) -> NetworkSpec:
        return self.network.spec

    def sample_tensors(self) -> tuple[torch.Tensor, ...]:
        """The sample inputs as tensors, in call order."""
        return tuple(torch.from_numpy(np.ascontiguousarray(self.sample_inputs[name])) for name in self.inputs)

    def reference(self, module: nn.Module | None = None) -> dict[str, np.ndarray]:
        """Outputs of the eager module (or ``module``) on the sample inputs, float32."""
        with torch.inference_mode():
            result = (module or self.module)(*self.sample_tensors())
        results = (result,) if isinstance(result, torch.Tensor) else tuple(result)
        return {name: tensor.detach().float().cpu().numpy().copy() for name, tensor in zip(self.outputs, results)}


def export_contracts(models: Mapping[str, nn.Module], config: Mapping[str, Any], tile: int = 64,
                     seed: int = 0) -> dict[str, ExportContract]:
    """The export contract of each pipeline network, built from a checkpoint's ``(models, config)``.

    ``models`` as :func:`unmix.train.checkpoint.load_checkpoint` returns them (``hybridstu``,
    ``abundance``, ``spectra``); the fused steps come from :func:`unmix.export.steps.fused_modules`.
    Each network's sample inputs come from its contract, drawn from the checkpoint's endmembers and
    inference settings (:meth:`SampleSource.from_config`).
    """
    from unmix.export.steps import fused_modules

    modules = fused_modules(models)
    bands, p = int(modules["hybridstu"].bands), int(modules["hybridstu"].endmembers)
    networks = network_contracts(bands, p, tile)
    source = SampleSource.from_config(config, bands, p, seed)
    return {name: ExportContract(network=network, module=modules[name].eval(),
                                 sample_inputs=network.sample_inputs(source, seed))
            for name, network in networks.items()}


# --------------------------------------------------------------------------------------------------
# fp16 modules
# --------------------------------------------------------------------------------------------------

class _Float16Inputs(nn.Module):
    """Runs a float16 network on float32 inputs: the first input cast to float16, the output to float32.

    Further inputs (the timestep) pass unchanged: the network keeps their path in float32.
    """

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        return self.network(x.half(), *rest).float()


def _half_network(network: nn.Module) -> nn.Module:
    """A float16 copy whose float32-computing layers (``Linear32``, ``GroupNorm32``) keep float32 weights."""
    from unmix.train.models import GroupNorm32, Linear32

    half = copy.deepcopy(network).half()
    for module in half.modules():
        if isinstance(module, (Linear32, GroupNorm32)):
            module.float()
    return _Float16Inputs(half).eval()


def _fp16_module(name: str, module: nn.Module) -> nn.Module:
    """The fp16 variant of an exported module; the fused update around the denoiser stays float32."""
    if name == "hybridstu":
        return _half_network(module)
    if not hasattr(module, "unet"):
        raise UsageError(f"cannot build an fp16 {name}: its module has no 'unet' denoiser")
    fused = copy.copy(module)                      # a shallow copy: swap the denoiser, keep the rest
    fused._modules = dict(module._modules)
    fused.unet = _half_network(module.unet)
    return fused.eval()


# --------------------------------------------------------------------------------------------------
# One stage: export, simplify, check
# --------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _quiet_exporter():
    """Silence the exporter's notices (missing torchvision ops, deprecation warnings)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _onnx_type(elem_type: int) -> str:
    import onnx

    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name
    except Exception:
        return onnx.TensorProto.DataType.Name(elem_type)


def _check_contract(model, contract: ExportContract, where: str) -> None:
    """The graph's inputs and outputs must be exactly the contract's, in order; opset exactly OPSET."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset != OPSET:
        raise ExportCheckError(f"{where}: the graph has opset {opset}, expected {OPSET}")
    for kind, values, declared in (("input", model.graph.input, contract.inputs),
                                   ("output", model.graph.output, contract.outputs)):
        got = {}
        for value in values:
            tensor = value.type.tensor_type
            shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
            got[value.name] = (shape, _onnx_type(tensor.elem_type))
        wanted = {key: (spec.shape, spec.dtype) for key, spec in declared.items()}
        if list(got) != list(wanted):
            raise ExportCheckError(f"{where}: graph {kind}s are {', '.join(got)}, the contract declares "
                                   f"{', '.join(wanted)} (an unused input is dropped by the exporter)")
        for key, (shape, dtype) in wanted.items():
            if got[key] != (shape, dtype):
                raise ExportCheckError(f"{where}: graph {kind} {key!r} is {got[key][1]}{list(got[key][0])}, "
                                       f"the contract declares {dtype}{list(shape)}")


def _slim(model) -> tuple[Any, bool]:
    try:
        import onnxslim
    except ImportError:
        return model, False
    return onnxslim.slim(model), True


def _write_graph(module: nn.Module, contract: ExportContract, target: Path, label: Path) -> dict[str, Any]:
    """torch.onnx.export -> onnxslim -> checker -> contract check -> ``target`` (atomically).

    ``label`` is the path messages name (where the file will live once the export is complete)."""
    import onnx

    try:
        with replacing(target) as tmp:
            with _quiet_exporter(), torch.inference_mode(False), torch.no_grad():
                torch.onnx.export(module, contract.sample_tensors(), str(tmp), input_names=list(contract.inputs),
                                  output_names=list(contract.outputs), opset_version=OPSET, dynamo=True,
                                  external_data=False, verbose=False)
            model = onnx.load(str(tmp))
            before = len(model.graph.node)
            model, slimmed = _slim(model)
            onnx.checker.check_model(model, full_check=True)
            _check_contract(model, contract, str(label))
            onnx.save(model, str(tmp))
    except UnmixError:
        raise
    except Exception as exc:
        raise ExportCheckError(f"{label}: the {contract.name} network did not export to ONNX "
                               f"({first_line(exc)})") from exc
    return {"slimmed": slimmed, "nodes": {"exported": before, "final": len(model.graph.node)}}


def _difference(got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray]) -> dict[str, float]:
    worst, mean = 0.0, 0.0
    for name, expected in want.items():
        delta = np.abs(got[name].astype(np.float64) - expected.astype(np.float64))
        worst = max(worst, float(delta.max()))
        mean = max(mean, float(delta.mean()))
    return {"max_abs": worst, "mean_abs": mean}


def _run_graph(path: Path, contract: ExportContract, backend: str) -> dict[str, np.ndarray]:
    from unmix.runtime.backends import load_network

    network = load_network(path, contract.spec, backend=backend, name=contract.name)
    return network(contract.sample_inputs)


def _backends() -> list[str]:
    from unmix.runtime.backends import available_backends

    found = available_backends()
    if "onnxruntime" not in found:
        raise UsageError("checking an export needs onnxruntime: pip install 'unmix[cpu]' (or pass check=False)")
    return found


def _check_fp32(path: Path, contract: ExportContract, tolerance: float, label: Path) -> dict[str, Any]:
    reference = contract.reference()
    checks: dict[str, Any] = {"reference": "eager torch, float32", "tolerance": tolerance}
    for backend in ("onnxruntime", "openvino"):
        if backend not in _backends():
            checks[backend] = None
            continue
        figures = _difference(_run_graph(path, contract, backend), reference)
        checks[backend] = figures
        if not figures["max_abs"] <= tolerance:
            raise ExportCheckError(f"{label}: {backend} output differs from torch by {figures['max_abs']:.3g} "
                                   f"(max abs), more than the tolerance {tolerance:g}")
    return checks


def _check_fp16(path: Path, reference_path: Path, contract: ExportContract, tolerance: float,
                label: Path) -> dict[str, Any]:
    checks: dict[str, Any] = {"reference": f"{reference_path.name} (fp32) on the same backend",
                              "tolerance": tolerance, "note": FP16_NOTE}
    for backend in ("onnxruntime", "openvino"):
        if backend not in _backends():
            checks[backend] = None
            continue
        figures = _difference(_run_graph(path, contract, backend), _run_graph(reference_path, contract, backend))
        checks[backend] = figures
        if not figures["max_abs"] <= tolerance:
            raise ExportCheckError(f"{label}: the fp16 graph differs from the fp32 one by {figures['max_abs']:.3g} "
                                   f"(max abs) on {backend}, more than the tolerance {tolerance:g}")
    checks["polygraphy"] = _polygraphy_fp16(path, reference_path, contract, tolerance, label)
    checks["precision"] = precision_report(path)
    return checks


def _polygraphy_fp16(path: Path, reference_path: Path, contract: ExportContract, tolerance: float,
                     label: Path) -> dict[str, Any] | None:
    """polygraphy ``Comparator``: the fp32 graph then the fp16 graph on ONNX Runtime CPU, same sample inputs.

    Returns the figures (``max_abs``, ``mean_abs``, per output, polygraphy's verdict with ``atol`` =
    ``tolerance`` and ``rtol`` = 0), or None when polygraphy is not installed (the ``export`` extra).
    """
    try:
        from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
        from polygraphy.logger import G_LOGGER
    except ImportError:
        return None
    from importlib import metadata

    from unmix.export.tensorrt_build import polygraphy_compare

    providers = ["CPUExecutionProvider"]
    runners = [OnnxrtRunner(SessionFromOnnx(str(reference_path), providers=providers), name="fp32-onnxruntime-cpu"),
               OnnxrtRunner(SessionFromOnnx(str(path), providers=providers), name="fp16-onnxruntime-cpu")]
    with G_LOGGER.verbosity(G_LOGGER.ERROR):
        figures = polygraphy_compare(runners, contract.sample_inputs, tolerance)
    figures.update({"runners": [runner.name for runner in runners], "rtol": 0.0,
                    "polygraphy": metadata.version("polygraphy"), "note": FP16_NOTE})
    if not (figures["passed"] and figures["polygraphy_passed"]):
        raise ExportCheckError(f"{label}: polygraphy finds the fp16 graph {figures['max_abs']:.3g} (max abs) from "
                               f"the fp32 one on onnxruntime, more than the tolerance {tolerance:g}")
    return figures


def precision_report(path: str | os.PathLike) -> dict[str, dict[str, int]]:
    """For the ops that matter to precision, how many nodes compute in each dtype.

    Returns ``{op_type: {dtype of the node's first input: count}}`` for InstanceNormalization (the
    GroupNorm statistics), Softmax, Sin/Cos (timestep embedding), Gemm (its MLP), TopK/CumSum (the
    simplex projection) and Conv, after ONNX shape inference.
    """
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    types = {}
    for value in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        types[value.name] = _onnx_type(value.type.tensor_type.elem_type)
    for init in model.graph.initializer:
        types[init.name] = _onnx_type(init.data_type)
    report: dict[str, dict[str, int]] = {}
    for node in model.graph.node:
        if node.op_type in _PINNED_OPS and node.input:
            dtype = types.get(node.input[0], "unknown")
            counts = report.setdefault(node.op_type, {})
            counts[dtype] = counts.get(dtype, 0) + 1
    return dict(sorted(report.items()))


# --------------------------------------------------------------------------------------------------
# The cache
# --------------------------------------------------------------------------------------------------

def _versions_for_key() -> dict[str, str | None]:
    from importlib import metadata

    versions = {}
    for name in ("torch", "onnxscript", "onnx", "onnxslim"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cache_key(contract: ExportContract, precision: str, weights: Mapping[str, Mapping[str, Any]]) -> str:
    """sha256 of everything a stage's graph depends on (see the module docstring)."""
    document = {
        "format": EXPORT_FORMAT, "network": contract.name, "precision": precision,
        "tile": contract.network.tile, "opset": OPSET, "inputs": {k: v.to_dict() for k, v in contract.inputs.items()},
        "outputs": {k: v.to_dict() for k, v in contract.outputs.items()},
        "weights": {name: {"sha256": weights[name].get("sha256"), "class": weights[name].get("class"),
                           "args": weights[name].get("args")} for name in contract.weights},
        "versions": _versions_for_key(),
    }
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


def _cached_stages(out_dir: Path) -> dict[str, dict[str, Any]]:
    """cache key -> stage record, for the stages of an earlier manifest whose files are intact."""
    try:
        document = json.loads((out_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
        networks = document["networks"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    records: dict[str, dict[str, Any]] = {}
    for entry in networks.values() if isinstance(networks, dict) else []:
        for record in (entry, entry.get("reference") if isinstance(entry, dict) else None):
            if not isinstance(record, dict) or not isinstance(record.get("cache_key"), str):
                continue
            file = record.get("file")
            if not isinstance(file, str) or Path(file).name != file:
                continue
            path = out_dir / file
            if path.is_file() and not path.is_symlink() and file_sha256(path) == record.get("sha256"):
                records[record["cache_key"]] = record
    return records


# --------------------------------------------------------------------------------------------------
# export()
# --------------------------------------------------------------------------------------------------

def _prepare_out_dir(out_dir: Path) -> None:
    if out_dir.exists():
        if not out_dir.is_dir():
            raise OutputError(f"{out_dir}: exists and is not a folder; choose another output folder")
        if not (out_dir / MANIFEST_NAME).is_file():
            visible = [e.name for e in out_dir.iterdir() if not e.name.startswith(".")]
            if visible:
                raise OutputError(f"{out_dir}: exists and is not an exported unmix model (it holds {visible[0]!r}); "
                                  "choose another output folder or remove it")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{out_dir}: cannot create the output folder ({exc.strerror or exc})") from None


def _io_list(specs: Mapping[str, TensorSpec]) -> list[dict[str, Any]]:
    return [{"name": name, **spec.to_dict()} for name, spec in specs.items()]


def _calibration_scene(calibration: Any, config: Mapping[str, Any], checkpoint_dir: Path):
    """The Scene int8 graphs are calibrated on: ``calibration``, else the checkpoint's training scene."""
    from unmix.io.scene import Scene
    from unmix.io.sources import open_cube as load_scene

    if isinstance(calibration, Scene):
        return calibration
    if calibration is None:
        scene = config.get("scene") if isinstance(config.get("scene"), Mapping) else {}
        candidates = [c for c in (scene.get("source"), scene.get("name")) if isinstance(c, str) and c]
        problems = []
        for candidate in candidates:               # the path it was read from, else its (benchmark) name
            try:
                return load_scene(candidate)
            except UnmixError as exc:
                problems.append(f"{candidate!r}: {exc}")
        raise UsageError(f"{checkpoint_dir}: the training scene cannot be read for int8 calibration "
                         f"({'; '.join(problems) or 'the checkpoint does not say where it is'}); "
                         "give a calibration cube: unmix-export --int8 --calibration CUBE")
    return load_scene(calibration)


def export(checkpoint_dir: str | os.PathLike, out_dir: str | os.PathLike, fp16: bool = False, tile: int = 64,
           check: bool = True, progress: Callable[[str], None] | None = None, *,
           fp32_tolerance: float = FP32_TOLERANCE, fp16_tolerance: float = FP16_TOLERANCE,
           int8: bool = False, calibration: Any = None) -> dict[str, Any]:
    """Export a checkpoint's three networks to ONNX in ``out_dir`` and write ``manifest.json``.

    Args:
        checkpoint_dir: a folder written by ``unmix-train`` (``unmix.train.fit``).
        out_dir: the model folder; created, or updated when it already holds an export (unchanged
            stages are skipped). Any other non-empty folder is refused.
        fp16: also export the mixed-precision graphs; the manifest then names them, each with its
            fp32 graph as ``reference``.
        tile: T, the square tile the graphs take (static).
        check: run the parity checks (fp32 against torch, fp16 against fp32) and record the figures.
        progress: called with one line per stage.
        fp32_tolerance, fp16_tolerance: max abs differences allowed by the checks.
        int8: also write each network's int8 variant (``<name>.int8.onnx``, :mod:`unmix.export.quantize`),
            named in the manifest under ``variants.int8`` with its calibration and its difference from fp32.
        calibration: the scene the int8 graphs are calibrated on (a Scene, an ENVI path or a benchmark
            name); None: the checkpoint's training scene (``scene.source`` of its config).

    Returns:
        The manifest document (as written to ``out_dir/manifest.json``).

    Raises:
        MissingInputError / InputError: the checkpoint is missing or not usable.
        OutputError: ``out_dir`` cannot be written or holds something else.
        ExportCheckError: a graph failed a check.
    """
    from unmix.export.manifest import build_manifest
    from unmix.runtime.manifest import write_manifest
    from unmix.train.checkpoint import CONFIG_NAME, load_checkpoint

    if not isinstance(fp16, bool):
        raise UsageError(f"fp16 must be True or False, got {fp16!r}")
    if not isinstance(int8, bool):
        raise UsageError(f"int8 must be True or False, got {int8!r}")
    for value, label in ((fp32_tolerance, "fp32_tolerance"), (fp16_tolerance, "fp16_tolerance")):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise UsageError(f"{label} must be a positive number, got {value!r}")
    say = progress or (lambda message: None)
    started = time.perf_counter()
    checkpoint_dir, out_dir = Path(checkpoint_dir), Path(out_dir)
    models, config = load_checkpoint(checkpoint_dir)
    calibration_scene = _calibration_scene(calibration, config, checkpoint_dir) if int8 else None
    contracts = export_contracts(models, config, tile=tile)
    bands = contracts["hybridstu"].inputs["cube"].shape[1]
    p = contracts["hybridstu"].outputs["abundances"].shape[1]

    def manifest_document(entries: dict[str, dict[str, Any]]) -> dict[str, Any]:
        settings = {"format": EXPORT_FORMAT, "tile": tile, "opset": OPSET,
                    "precision": "fp16" if fp16 else "fp32", "exporter": "torch.onnx.export(dynamo=True)",
                    "checked": bool(check), "seconds": round(time.perf_counter() - started, 3)}
        return build_manifest(config, entries, tile=tile, bands=bands, endmembers=p, export=settings,
                              config_path=checkpoint_dir / CONFIG_NAME)

    manifest_document({})                          # refuse an unusable checkpoint config before exporting
    _prepare_out_dir(out_dir)
    cached = _cached_stages(out_dir)
    weights = config["networks"]
    try:
        staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir))
    except OSError as exc:
        raise OutputError(f"{out_dir}: cannot write there ({exc.strerror or exc})") from None
    located: dict[str, Path] = {}                  # file name -> where it is now (staging or out_dir)

    def stage(contract: ExportContract, precision: str, reference: dict[str, Any] | None) -> dict[str, Any]:
        file = f"{contract.name}.onnx" if precision == "fp32" else f"{contract.name}.{precision}.onnx"
        key = cache_key(contract, precision, weights)
        record = cached.get(key)
        if record is not None and record.get("file") == file:
            record = {k: record[k] for k in _STAGE_KEYS if k in record}
            path = out_dir / file
            say(f"{contract.name} ({precision}): unchanged, reusing {file}")
        else:
            t = time.perf_counter()
            module = contract.module if precision == "fp32" else _fp16_module(contract.name, contract.module)
            path = staging / file
            details = _write_graph(module, contract, path, out_dir / file)
            record = {"file": file, "precision": precision, "cache_key": key, **details,
                      "export_s": round(time.perf_counter() - t, 3), "checks": None}
            say(f"{contract.name} ({precision}): exported in {record['export_s']:.1f} s "
                f"({details['nodes']['exported']} -> {details['nodes']['final']} nodes)")
        located[file] = path
        record["sha256"] = file_sha256(path)
        stale = precision != "fp32" and isinstance(record.get("checks"), dict) and "polygraphy" not in record["checks"]
        if check and (record.get("checks") is None or stale):
            if precision == "fp32":
                record["checks"] = _check_fp32(path, contract, float(fp32_tolerance), out_dir / file)
            else:
                record["checks"] = _check_fp16(path, located[reference["file"]], contract, float(fp16_tolerance),
                                               out_dir / file)
            figures = ", ".join(f"{b} {record['checks'][b]['max_abs']:.2g}" for b in ("onnxruntime", "openvino")
                                if record["checks"].get(b))
            if record["checks"].get("polygraphy"):
                figures += f", polygraphy (onnxruntime) {record['checks']['polygraphy']['max_abs']:.2g}"
            reference_name = "torch" if precision == "fp32" else "the fp32 graph"
            say(f"{contract.name} ({precision}): max abs difference from {reference_name}: {figures} "
                f"(tolerance {record['checks']['tolerance']:g})")
        return record

    try:
        entries: dict[str, dict[str, Any]] = {}
        for name, contract in contracts.items():
            record = stage(contract, "fp32", None)
            if fp16:
                reference = record
                record = stage(contract, "fp16", reference)
                record["reference"] = {k: reference[k] for k in _STAGE_KEYS if k in reference}
            entries[name] = {"file": record["file"], "sha256": record["sha256"], "opset": OPSET,
                             "precision": record["precision"], "inputs": _io_list(contract.inputs),
                             "outputs": _io_list(contract.outputs),
                             **{k: v for k, v in record.items() if k not in ("file", "sha256", "precision")}}
        # Every check passed: move the new graphs in, then the manifest (an old model stays intact until here).
        for file, path in located.items():
            if path.parent == staging:
                os.replace(path, out_dir / file)
        document = manifest_document(entries)
        write_manifest(out_dir, document)
        if int8:                                   # the fp32 model stands; its int8 variants are added to it
            from unmix.export.quantize import calibration_feeds, describe, quantize_graph

            say(f"int8: calibrating on {calibration_scene.name} (the fp32 pipeline's network inputs)")
            feeds = calibration_feeds(out_dir, calibration_scene)
            for name, contract in contracts.items():
                file = f"{name}.int8.onnx"
                fp32_file = entries[name].get("reference", {}).get("file") or entries[name]["file"]
                record = quantize_graph(out_dir / fp32_file, staging / file, feeds[name], list(contract.outputs))
                os.replace(staging / file, out_dir / file)
                located[file] = out_dir / file
                entries[name]["variants"] = {"int8": {"file": file, "sha256": file_sha256(out_dir / file),
                                                      "precision": "int8", **record}}
                say(f"{name} (int8): quantised in {record['quantize_s']:.1f} s, {describe(record)}")
            document = manifest_document(entries)
            write_manifest(out_dir, document)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    referenced = set(located)
    for name in NETWORK_NAMES:                     # graphs of an earlier export that this one no longer names
        for stale in (f"{name}.onnx", f"{name}.fp16.onnx", f"{name}.int8.onnx"):
            if stale not in referenced and (out_dir / stale).is_file():
                (out_dir / stale).unlink()
    say(f"manifest written to {out_dir / MANIFEST_NAME} ({time.perf_counter() - started:.1f} s in all)")
    return document
