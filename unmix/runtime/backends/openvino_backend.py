"""OpenVINO backend: the ONNX file compiled by ``openvino.Core().compile_model``.

Devices: ``cpu`` (default), ``gpu``, ``npu`` (OpenVINO device names, upper-cased). The inference
precision hint is f32, so results stay comparable with the fp32 graph (without it OpenVINO runs
bf16 on CPUs with AMX or AVX-512 BF16, and fp16 on GPUs), unless ``bf16=True`` asks for bf16 (the
CPU must report BF16 among its optimisation capabilities, else the call is refused); ``threads`` sets
``INFERENCE_NUM_THREADS`` on the CPU. An fp16 graph runs with its fp16 weights widened to f32 under
the f32 hint; an int8 (QDQ) graph runs OpenVINO's int8 kernels.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Mapping

import numpy as np

from unmix.errors import InputError, UsageError
from unmix.runtime.backends import BACKENDS, check_graph_io
from unmix.runtime.network import TensorSpec, check_feeds

__all__ = ["OpenVinoNetwork", "open_network"]

_DEVICES = {"cpu": "CPU", "gpu": "GPU", "npu": "NPU"}
_core = None
_core_lock = threading.Lock()


def _import():
    try:
        import openvino
    except ImportError:
        raise UsageError(f"the openvino backend is not installed: {BACKENDS['openvino'].extra}") from None
    return openvino


def _get_core(ov):
    global _core
    with _core_lock:
        if _core is None:
            _core = ov.Core()
        return _core


def _reason(exc: BaseException) -> str:
    """The last line of an OpenVINO message (the first ones are source locations)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def _read_onnx(path: Path):
    """The graph through the ONNX frontend (``Core.read_model`` would try every frontend in turn)."""
    from openvino.frontend import FrontEndManager

    frontend = FrontEndManager().load_by_framework("onnx")
    return frontend.convert(frontend.load(str(path)))


class OpenVinoNetwork:
    """An ONNX graph compiled by OpenVINO, as a :class:`unmix.runtime.network.Network`.

    One infer request is reused; calls are serialised by a lock and the outputs copied out of the
    request's buffers, so returned arrays are never overwritten by the next call.
    """

    backend = "openvino"

    def __init__(self, name: str, path: Path, compiled, inputs: Mapping[str, TensorSpec],
                 outputs: Mapping[str, TensorSpec], device: str, output_ports: Mapping[str, object]):
        self.name = name
        self.path = path
        self.compiled = compiled
        self.inputs = dict(inputs)
        self.outputs = dict(outputs)
        self.device = device
        self._ports = dict(output_ports)
        self._request = compiled.create_infer_request()
        self._lock = threading.Lock()
        self.precision: str | None = None     # set by load_network: the precision this graph runs at

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_feeds(self.name, self.inputs, feeds, "input")
        arrays = {key: np.ascontiguousarray(feeds[key]) for key in self.inputs}
        with self._lock:
            self._request.infer(arrays)
            return {key: np.array(self._request.get_tensor(port).data, copy=True)
                    for key, port in self._ports.items()}

    def __repr__(self) -> str:
        return f"OpenVinoNetwork({self.name!r}, {self.path.name}, device={self.device!r})"


def _dtype(element_type) -> str:
    try:
        return np.dtype(element_type.to_dtype()).name
    except Exception:  # an element type numpy has no name for
        return str(element_type)


def _shape(partial_shape) -> tuple:
    return tuple(d.get_length() if d.is_static else None for d in partial_shape)


def open_network(path: Path, inputs: Mapping[str, TensorSpec], outputs: Mapping[str, TensorSpec],
                 threads: int | None = None, device: str = "cpu", name: str = "network",
                 bf16: bool = False) -> OpenVinoNetwork:
    """Read and compile the graph and check its I/O against the declared specs (``bf16``: bfloat16
    arithmetic through the inference precision hint)."""
    ov = _import()
    target = _DEVICES.get(device)
    if target is None:
        raise UsageError(f"the openvino backend runs on {', '.join(_DEVICES)}, got device {device!r}")
    core = _get_core(ov)
    try:
        model = _read_onnx(path)
    except Exception as exc:  # OpenVINO raises GeneralFailure (or other types) for unreadable graphs
        raise InputError(f"{path}: not a loadable ONNX graph ({_reason(exc)})") from None

    def graph(ports):
        table = {}
        for port in ports:
            names = port.get_names()
            key = next((n for n in names if n in inputs or n in outputs), port.get_any_name())
            table[key] = (_shape(port.get_partial_shape()), _dtype(port.get_element_type()))
        return table

    check_graph_io(path, "input", graph(model.inputs), inputs)
    check_graph_io(path, "output", graph(model.outputs), outputs)
    config: dict = {"INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32"}
    if target == "CPU" and threads is not None:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    if target not in core.available_devices:
        raise UsageError(f"OpenVINO device {target!r} is not available here "
                         f"(available: {', '.join(core.available_devices) or 'none'})")
    capabilities = core.get_property(target, "OPTIMIZATION_CAPABILITIES") if bf16 else ()
    if bf16 and "BF16" not in capabilities:
        raise UsageError(f"OpenVINO's {target} device here has no bf16 arithmetic (its capabilities: "
                         f"{', '.join(capabilities)}); use fp32")
    try:
        compiled = core.compile_model(model, target, config)
    except Exception as exc:
        raise InputError(f"{path}: OpenVINO could not compile the graph for {target} ({_reason(exc)})") from None
    ports = {}
    for key in outputs:
        port = next((p for p in compiled.outputs if key in p.get_names()), None)
        if port is None:  # check_graph_io found it by name, so this cannot happen for a valid graph
            raise InputError(f"{path}: the compiled graph has no output {key!r}")
        ports[key] = port
    network = OpenVinoNetwork(name, path, compiled, inputs, outputs, device, ports)
    network.precision = "bf16" if bf16 else None
    return network
