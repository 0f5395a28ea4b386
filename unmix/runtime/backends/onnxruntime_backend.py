"""ONNX Runtime backend: one ``InferenceSession`` per network.

CPU execution provider by default (``threads`` sets the intra-op pool; one inter-op thread, sequential
execution); ``device="cuda"`` (or ``"cuda:N"``) uses the CUDA execution provider of onnxruntime-gpu and
is refused when that provider is not available. Graph optimisation level: all.

The intra-op workers do not spin while they wait for work (``session.intra_op.allow_spinning = 0``):
between network calls the pipeline's host loop (tile reads, blending, statistics) needs the same
cores, and on a machine shared with other jobs spinning workers steal them: on a loaded 2-core machine
both the network calls and the whole pipeline ran faster without spinning (``benchmarks/speed.py``
records the per-network figures of each run). Sequential execution, one inter-op thread: the parallel
executor was slower there.

On CPU the static-shape inputs and outputs are bound once to preallocated buffers (ONNX Runtime
``IOBinding`` over ``OrtValue``s that share the buffers' memory): a call copies the feeds in, runs,
and returns copies of the output buffers, so results own their memory and a later call never
overwrites them. Each calling thread gets its own binding and buffers. On the DDIM step this is as
fast as ``session.run`` or slightly faster (the step is compute-bound on CPU; see the network's
``io_binding`` flag, and pass ``io_binding=False`` to :func:`open_network` for plain ``session.run``).
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Mapping

import numpy as np

from unmix.errors import InputError, UsageError, first_line
from unmix.runtime.backends import BACKENDS, check_graph_io
from unmix.runtime.network import TensorSpec, check_feeds

__all__ = ["OnnxRuntimeNetwork", "open_network"]

_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
          "tensor(int32)": "int32", "tensor(double)": "float64"}


def _import():
    try:
        import onnxruntime
    except ImportError:
        raise UsageError(f"the onnxruntime backend is not installed: {BACKENDS['onnxruntime'].extra}") from None
    return onnxruntime


class _Binding:
    """One thread's IOBinding: preallocated input and output buffers bound as OrtValues (CPU)."""

    def __init__(self, ort, session, inputs: Mapping[str, TensorSpec], outputs: Mapping[str, TensorSpec]):
        self.binding = session.io_binding()
        self.inputs = {name: np.empty(spec.shape, spec.dtype) for name, spec in inputs.items()}
        self.outputs = {name: np.empty(spec.shape, spec.dtype) for name, spec in outputs.items()}
        # the OrtValues share the buffers' memory; keep them alive as long as the binding
        self.values = []
        for name, buffer in self.inputs.items():
            value = ort.OrtValue.ortvalue_from_numpy(buffer)
            self.binding.bind_ortvalue_input(name, value)
            self.values.append(value)
        for name, buffer in self.outputs.items():
            value = ort.OrtValue.ortvalue_from_numpy(buffer)
            self.binding.bind_ortvalue_output(name, value)
            self.values.append(value)

    def run(self, session, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        for name, buffer in self.inputs.items():
            np.copyto(buffer, feeds[name], casting="no")
        session.run_with_iobinding(self.binding)
        return {name: buffer.copy() for name, buffer in self.outputs.items()}


class OnnxRuntimeNetwork:
    """An ONNX graph run by ONNX Runtime, as a :class:`unmix.runtime.network.Network`.

    ``network(feeds)`` checks every declared input (dtype and static shape; extra keys are ignored),
    runs the session and returns new arrays that own their memory. Safe to call from several threads:
    with ``io_binding`` (CPU, every declared shape static) each thread has its own bound buffers,
    otherwise ``InferenceSession.run`` is used, which is thread-safe.
    """

    backend = "onnxruntime"

    def __init__(self, name: str, path: Path, session, inputs: Mapping[str, TensorSpec],
                 outputs: Mapping[str, TensorSpec], device: str, io_binding: bool = False):
        self.name = name
        self.path = path
        self.session = session
        self.inputs = dict(inputs)
        self.outputs = dict(outputs)
        self.device = device
        self.providers = list(session.get_providers())
        static = all(-1 not in spec.shape for spec in (*self.inputs.values(), *self.outputs.values()))
        self.io_binding = bool(io_binding and device == "cpu" and static)
        self._local = threading.local()

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_feeds(self.name, self.inputs, feeds, "input")
        if self.io_binding:
            binding = getattr(self._local, "binding", None)
            if binding is None:
                binding = self._local.binding = _Binding(_import(), self.session, self.inputs, self.outputs)
            return binding.run(self.session, feeds)
        arrays = {key: np.ascontiguousarray(feeds[key]) for key in self.inputs}
        results = self.session.run(list(self.outputs), arrays)
        return dict(zip(self.outputs, results))

    def __repr__(self) -> str:
        return (f"OnnxRuntimeNetwork({self.name!r}, {self.path.name}, providers={self.providers}, "
                f"io_binding={self.io_binding})")


def _providers(ort, device: str) -> list:
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda" or device.startswith("cuda:"):
        index = device.partition(":")[2] or "0"
        if not index.isdigit():
            raise UsageError(f"device must be 'cuda' or 'cuda:N', got {device!r}")
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise UsageError("device 'cuda' needs onnxruntime-gpu and a visible NVIDIA GPU "
                             "(pip install 'unmix[gpu]' in place of 'unmix[cpu]'); "
                             f"this onnxruntime offers {', '.join(ort.get_available_providers())}")
        return [("CUDAExecutionProvider", {"device_id": int(index)}), "CPUExecutionProvider"]
    raise UsageError(f"the onnxruntime backend runs on 'cpu' or 'cuda[:N]', got device {device!r}")


def open_network(path: Path, inputs: Mapping[str, TensorSpec], outputs: Mapping[str, TensorSpec],
                 threads: int | None = None, device: str = "cpu", name: str = "network",
                 io_binding: bool = True) -> OnnxRuntimeNetwork:
    """Create the session and check the graph's I/O against the declared specs.

    ``io_binding`` (CPU only): bind the static-shape inputs and outputs to preallocated buffers.
    """
    ort = _import()
    providers = _providers(ort, device)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    if device == "cpu":
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads is not None:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # InvalidProtobuf, InvalidGraph, Fail, NoSuchFile: all mean "not a usable graph"
        raise InputError(f"{path}: not a loadable ONNX graph ({first_line(exc)})") from None
    if device != "cpu" and "CUDAExecutionProvider" not in session.get_providers():
        raise UsageError(f"{path}: onnxruntime could not start the CUDA execution provider "
                         "(check the CUDA and cuDNN libraries onnxruntime-gpu needs)")

    def graph(items):
        return {item.name: (tuple(d if isinstance(d, int) else None for d in item.shape),
                            _TYPES.get(item.type, item.type)) for item in items}

    check_graph_io(path, "input", graph(session.get_inputs()), inputs)
    check_graph_io(path, "output", graph(session.get_outputs()), outputs)
    return OnnxRuntimeNetwork(name, path, session, inputs, outputs, device, io_binding=io_binding)
