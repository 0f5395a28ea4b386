"""Inference backends: exported ONNX graphs as :class:`unmix.runtime.network.Network` objects.

:data:`BACKENDS` is the one registry: per backend, its module here, the package it needs, the extra
that installs it and the device it runs on by default. ``unmix-run --backend`` takes its choices from
it, and :func:`available_backends` lists, in its order, those whose package is installed (a module
may also define ``availability() -> (ok, reason)``, e.g. TensorRT, which needs cuda-python and a
visible GPU besides its package, and ``require()``, called before a graph is opened).

:func:`load_network` opens one graph file against its declared I/O (a :class:`NetworkSpec` or a
manifest :class:`~unmix.runtime.manifest.NetworkEntry`) and checks the graph's inputs and outputs
against it (:func:`check_graph_io`); :func:`load_networks` opens the networks of an exported model
folder, checking each file's sha256 first. A backend whose package is missing is refused with one
line naming the extra to install. Nothing here imports torch.

Precision (:data:`RUN_PRECISIONS`): ``fp32``, ``fp16`` and ``int8`` pick a graph file of the model
(the fp16 export, or the int8 variant of ``unmix-export --int8``); ``bf16`` runs the fp32 graphs with
bfloat16 arithmetic where a backend offers it (OpenVINO's inference precision hint on CPUs with
AVX-512 BF16 or AMX). ``Backend.precisions`` lists what each backend runs; the network's
``precision`` attribute says which one it ran.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from unmix.errors import InputError, MissingInputError, UsageError, require_int
from unmix.runtime.network import Network, TensorSpec

__all__ = ["BACKENDS", "RUN_PRECISIONS", "Backend", "available_backends", "check_precision", "load_network",
           "load_networks"]


@dataclass(frozen=True)
class Backend:
    """One inference backend.

    Attributes:
        module: its module in this package (``open_network(path, inputs, outputs, threads, device, name)``).
        package: the package it imports (its version goes into ``run.json``).
        extra: how to install that package.
        device: the device it runs on when none is given.
        precisions: the precisions of :data:`RUN_PRECISIONS` it runs.
    """

    module: str
    package: str
    extra: str
    device: str
    precisions: tuple[str, ...] = ("fp32", "fp16", "int8")


#: What ``unmix-run --precision`` takes: a graph file's precision, or bf16 arithmetic on the fp32 graphs.
RUN_PRECISIONS = ("fp32", "fp16", "bf16", "int8")


# in order of preference: the first installed one is unmix-run's default
BACKENDS: dict[str, Backend] = {
    "onnxruntime": Backend("onnxruntime_backend", "onnxruntime",
                           "pip install 'unmix[cpu]' (or 'unmix[gpu]' for CUDA)", "cpu"),
    "openvino": Backend("openvino_backend", "openvino", "pip install 'unmix[openvino]'", "cpu",
                        ("fp32", "fp16", "bf16", "int8")),
    "tensorrt": Backend("tensorrt_backend", "tensorrt",
                        "pip install 'unmix[tensorrt]' on a machine with an NVIDIA GPU and driver", "cuda",
                        ("fp32", "fp16")),
}


def available_backends() -> list[str]:
    """Names of the backends whose package is installed (and usable here), in order of preference."""
    found = []
    for name, entry in BACKENDS.items():
        try:
            if importlib.util.find_spec(entry.package) is None:
                continue
            availability = getattr(_module(name), "availability", None)
            if availability is None or availability()[0]:
                found.append(name)
        except (ImportError, ValueError):  # a broken or shadowed install
            continue
    return found


def _module(backend: str):
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return importlib.import_module(f"{__name__}.{BACKENDS[backend].module}")


def _import_backend(backend: str):
    module = _module(backend)
    require = getattr(module, "require", None)
    if require is not None:                        # one line naming what is missing, before anything else
        require()
    return module


def _io(spec: Any, kind: str) -> dict[str, TensorSpec]:
    declared = getattr(spec, kind, None)
    if not isinstance(declared, Mapping) or not declared or not all(
            isinstance(v, TensorSpec) for v in declared.values()):
        raise UsageError(f"the network spec must declare {kind} as a name -> TensorSpec mapping, "
                         f"got {declared!r}")
    return dict(declared)


def check_precision(backend: str, precision: str | None) -> None:
    """Refuse (UsageError, one line) a precision the backend does not run; None is always fine."""
    if precision is None:
        return
    if precision not in RUN_PRECISIONS:
        raise UsageError(f"precision must be one of {', '.join(RUN_PRECISIONS)}, got {precision!r}")
    entry = BACKENDS[backend] if backend in BACKENDS else None
    if entry is not None and precision not in entry.precisions:
        offered = [name for name, b in BACKENDS.items() if precision in b.precisions]
        raise UsageError(f"the {backend} backend does not run {precision} (it runs {', '.join(entry.precisions)}); "
                         f"{precision} runs on {', '.join(offered)}")


def load_network(path: str | os.PathLike, spec: Any, backend: str = "onnxruntime", threads: int | None = None,
                 device: str | None = None, name: str | None = None, bf16: bool = False) -> Network:
    """Open an ONNX graph as a Network.

    Args:
        path: the ``.onnx`` file.
        spec: its declared I/O: anything with ``inputs`` and ``outputs`` (name -> TensorSpec), e.g. a
            :class:`NetworkSpec` or a manifest ``NetworkEntry``. The graph's own inputs and outputs
            must match it (names, static shapes, dtypes), and every call's feeds are checked against it.
        backend: ``"onnxruntime"``, ``"openvino"`` or ``"tensorrt"``.
        threads: intra-op threads (None: the backend's default, usually one per core).
        device: ``"cpu"``; ``"cuda"`` / ``"cuda:N"`` (ONNX Runtime with onnxruntime-gpu); ``"gpu"`` /
            ``"npu"`` (OpenVINO devices); the tensorrt backend needs ``"cuda"`` / ``"cuda:N"``.
            None: the backend's default (``BACKENDS[backend].device``).
        name: the network's name in messages (default: the file stem).
        bf16: run the graph with bfloat16 arithmetic (backends whose ``precisions`` include ``bf16``).

    Raises:
        UsageError: unknown backend or device, bad ``threads``, or the backend package is not installed
            (the message names the extra to install).
        MissingInputError: the file does not exist.
        InputError: the file is not a loadable ONNX graph, or its I/O differs from ``spec``.
    """
    if bf16:
        check_precision(backend, "bf16")
    module = _import_backend(backend)
    path = Path(path)
    device = BACKENDS[backend].device if device is None else device
    if threads is not None:
        threads = require_int(threads, "threads", 1)
    if not isinstance(device, str) or not device:
        raise UsageError(f"device must be a string such as 'cpu', got {device!r}")
    if not path.is_file():
        raise MissingInputError(f"{path}: network file not found")
    inputs, outputs = _io(spec, "inputs"), _io(spec, "outputs")
    extra = {"bf16": True} if bf16 else {}
    network = module.open_network(path, inputs, outputs, threads=threads, device=device.lower(),
                                  name=name or path.stem, **extra)
    if getattr(network, "precision", None) is None:
        network.precision = _file_precision(path)
    return network


def _file_precision(path: Path) -> str:
    """The precision a graph file's name states (``<name>.fp16.onnx``, ``<name>.int8.onnx``), else fp32."""
    suffixes = path.suffixes
    return suffixes[-2].lstrip(".") if len(suffixes) >= 2 and suffixes[-2].lstrip(".") in RUN_PRECISIONS else "fp32"


def load_networks(manifest: Any, backend: str = "onnxruntime", threads: int | None = None, device: str | None = None,
                  names: list[str] | None = None, precision: str | None = None) -> dict[str, Network]:
    """Open the networks of an exported model (a :class:`~unmix.runtime.manifest.Manifest` or its folder).

    Each file's sha256 is checked against the manifest before it is opened. ``names`` picks networks
    (default: all). ``precision`` (:data:`RUN_PRECISIONS`; None: the manifest's graphs): ``"fp32"``
    opens the fp32 graphs (the reference graphs of an fp16 export), ``"int8"`` the quantised variants,
    ``"bf16"`` the fp32 graphs with bfloat16 arithmetic. A precision the backend does not run is refused
    before any file is opened.
    """
    from unmix.runtime.manifest import Manifest, load_manifest

    check_precision(backend, precision)
    if not isinstance(manifest, Manifest):
        manifest = load_manifest(manifest)
    chosen = list(manifest.networks) if names is None else list(names)
    networks: dict[str, Network] = {}
    for name in chosen:
        entry = manifest.network(name)
        path = manifest.network_file(name, "fp32" if precision == "bf16" else precision)
        networks[name] = load_network(path, entry, backend=backend, threads=threads, device=device, name=name,
                                      bf16=precision == "bf16")
    return networks


def describe_mismatch(path: Path, kind: str, name: str, got: str, spec: TensorSpec | None) -> InputError:
    """The error for a graph whose declared I/O differs from the manifest's."""
    if spec is None:
        return InputError(f"{path}: the graph has the {kind} {name!r}, which the manifest does not declare")
    return InputError(f"{path}: graph {kind} {name!r} is {got}, the manifest declares {spec}")


def check_graph_io(path: Path, kind: str, graph: Mapping[str, tuple[tuple, str]],
                   declared: Mapping[str, TensorSpec]) -> None:
    """Compare a graph's ``name -> (shape, dtype)`` with the declared specs (InputError naming the file).

    Graph shapes may hold None for a dimension the graph leaves free; a declared static size fits it.
    """
    for name, spec in declared.items():
        if name not in graph:
            raise InputError(f"{path}: the graph has no {kind} {name!r} (it has {', '.join(graph) or 'none'}); "
                             "the manifest does not match this file")
    for name, (shape, dtype) in graph.items():
        spec = declared.get(name)
        got = f"{dtype}{list(shape)}"
        if spec is None:
            if kind == "input":
                raise describe_mismatch(path, kind, name, got, None)
            continue
        fits = dtype == spec.dtype and len(shape) == len(spec.shape) and all(
            g is None or w == -1 or g == w for g, w in zip(shape, spec.shape))
        if not fits:
            raise describe_mismatch(path, kind, name, got, spec)
