"""TensorRT backend: engines from the exported ONNX, run with cuda-python (TensorRT 10 and 11).

Needs ``tensorrt`` and ``cuda-python`` (extra ``tensorrt``) and a visible NVIDIA GPU; without any of
them :func:`require` raises one :class:`~unmix.errors.UsageError` line naming what is missing. Both
packages are imported lazily: this module imports on any machine. The CUDA calls live in
:mod:`unmix.runtime.backends.cuda_runtime`.

Engines. ``open_network(<graph>.onnx, ...)`` looks the engine up in ``<model>/engines/`` through
:mod:`unmix.runtime.engine_cache` (keyed by the graph's sha256, precision, static input shapes,
TensorRT version and compute capability) and, when the cache has no valid plan, builds it on this
machine with :func:`unmix.export.tensorrt_build.build_serialized_engine` (engines are tied to the
GPU and the TensorRT version, so they are built where they run; that module needs no torch).
``open_network(<name>.<key>.plan, ...)`` runs a prebuilt plan only when its sidecar matches this
TensorRT and GPU (never rebuilt: there is no graph to build from).

Execution (:class:`TensorRTNetwork`):

- per device, one CUDA stream shared by every network (the pipeline calls its networks in turn), and
  one activation arena (:class:`ActivationArena`): each execution context is created with
  ``ExecutionContextAllocationStrategy.USER_MANAGED`` and pointed at the arena with
  ``set_device_memory(ptr, size)``; the arena is sized by the largest ``device_memory_size_v2`` of the
  engines opened so far, so three engines need one scratch block, not three;
- device buffers for every input and output, allocated once, bound with ``set_tensor_address``, and
  pinned host staging buffers; a call is ``cudaMemcpyAsync`` in, ``execute_async_v3``, ``cudaMemcpyAsync``
  out, one stream synchronisation.

References: TensorRT Python API, ``IExecutionContext.set_device_memory``/``device_memory_size_v2``
and ``ExecutionContextAllocationStrategy`` (docs.nvidia.com/deeplearning/tensorrt/latest/_static/
python-api/infer/Core/ExecutionContext.html, .../Core/RuntimeConfig.html; TensorRT 11 also offers
``create_execution_context(IRuntimeConfig)``, used when the strategy argument is refused).
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from unmix.errors import InputError, UsageError, first_line
from unmix.runtime.backends import BACKENDS, check_graph_io
from unmix.runtime.backends import cuda_runtime as cuda
from unmix.runtime.network import TensorSpec, check_feeds

__all__ = ["ActivationArena", "TensorRTNetwork", "availability", "deserializer", "import_tensorrt", "logger",
           "open_network", "require"]

_lock = threading.RLock()
_devices: dict[int, "_Device"] = {}


# --------------------------------------------------------------------------------------------------
# Imports and checks
# --------------------------------------------------------------------------------------------------

def import_tensorrt():
    """The ``tensorrt`` module, or the UsageError line naming the extra."""
    try:
        import tensorrt
    except ImportError:
        raise UsageError(f"TensorRT is not installed: {BACKENDS['tensorrt'].extra}") from None
    return tensorrt


def _missing() -> list[str]:
    """What this machine lacks for the backend ([] when it has everything)."""
    missing = []
    try:
        import_tensorrt()
    except UsageError:
        missing.append("the tensorrt package")
    except Exception as exc:  # a broken install: shared libraries not found, ...
        missing.append(f"a working tensorrt package ({first_line(exc)})")
    try:
        cudart = cuda.import_cudart()
    except UsageError:
        missing.append("cuda-python")
    except Exception as exc:
        missing.append(f"a working cuda-python ({first_line(exc)})")
    else:
        try:
            err, count = cudart.cudaGetDeviceCount()
            if cuda.status(err) != 0 or count < 1:
                missing.append(f"a visible NVIDIA GPU (cudaGetDeviceCount: {cuda.error_name(cudart, err)}, {count})")
        except Exception as exc:
            missing.append(f"a visible NVIDIA GPU ({first_line(exc)})")
    return missing


def availability() -> tuple[bool, str]:
    """``(True, "")`` when TensorRT, cuda-python and a GPU are all present, else ``(False, what is missing)``."""
    missing = _missing()
    return (not missing, "" if not missing else "missing " + ", ".join(missing))


def require():
    """``(tensorrt, cudart)`` modules, or one UsageError line naming everything that is missing."""
    missing = _missing()
    if missing:
        raise UsageError(f"the tensorrt backend needs TensorRT, cuda-python and an NVIDIA GPU; this machine lacks "
                         f"{', '.join(missing)} ({BACKENDS['tensorrt'].extra})")
    return import_tensorrt(), cuda.import_cudart()


_logger = None


def logger(trt):
    """The one ``tensorrt.Logger`` (warnings and errors) shared by runtimes and builders."""
    global _logger
    if _logger is None:
        _logger = trt.Logger(trt.Logger.WARNING)
    return _logger


def deserializer(trt):
    """``plan bytes -> ICudaEngine | None`` (``Runtime.deserialize_cuda_engine``; None for a foreign plan)."""
    runtime = trt.Runtime(logger(trt))

    def deserialize(plan: bytes):
        try:
            return runtime.deserialize_cuda_engine(plan)
        except Exception:                          # some versions raise instead of returning None
            return None

    deserialize.runtime = runtime                  # keep the runtime alive as long as its engines
    return deserialize


# --------------------------------------------------------------------------------------------------
# Per-device state: one stream, one activation arena
# --------------------------------------------------------------------------------------------------

class ActivationArena:
    """One block of device scratch memory shared by the execution contexts of a device.

    Contexts run one after another on the device's one stream, so they can share it. The block grows
    to the largest ``device_memory_size_v2`` registered; every context is re-pointed when it moves.
    """

    def __init__(self, cudart):
        self.cudart = cudart
        self.buffer: cuda.DeviceBuffer | None = None
        self.contexts: list[Any] = []

    @property
    def nbytes(self) -> int:
        return self.buffer.nbytes if self.buffer is not None else 0

    def attach(self, context: Any, nbytes: int) -> None:
        if self.buffer is None or nbytes > self.nbytes:
            old = self.buffer
            self.buffer = cuda.DeviceBuffer(self.cudart, nbytes)
            for other in self.contexts:
                _set_device_memory(other, self.buffer.ptr, self.buffer.nbytes)
            if old is not None:
                old.free()
        self.contexts.append(context)
        _set_device_memory(context, self.buffer.ptr, self.buffer.nbytes)


def _set_device_memory(context, ptr: int, nbytes: int) -> None:
    if hasattr(context, "set_device_memory"):      # TensorRT >= 10.1 (and 11)
        context.set_device_memory(ptr, nbytes)
    else:                                          # TensorRT 10.0
        context.device_memory = ptr


class _Device:
    """Per-device state: the one stream and the activation arena."""

    def __init__(self, cudart, index: int):
        self.index = index
        cuda.call(cudart, "cudaSetDevice", cudart.cudaSetDevice(index))
        self.stream = cuda.call(cudart, "cudaStreamCreate", cudart.cudaStreamCreate())
        self.arena = ActivationArena(cudart)
        self.lock = threading.RLock()


def _device(cudart, index: int) -> _Device:
    with _lock:
        if index not in _devices:
            _devices[index] = _Device(cudart, index)
        return _devices[index]


# --------------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------------

def _create_context(trt, engine):
    strategy = trt.ExecutionContextAllocationStrategy.USER_MANAGED
    try:
        context = engine.create_execution_context(strategy)
    except TypeError:                              # an API that takes an IRuntimeConfig only
        config = engine.create_runtime_config()
        config.set_execution_context_allocation_strategy(strategy)
        context = engine.create_execution_context(config)
    if context is None:
        raise InputError(f"TensorRT could not create an execution context for engine {engine.name!r}")
    return context


class TensorRTNetwork:
    """A TensorRT engine as a :class:`unmix.runtime.network.Network` (module docstring).

    Calls are serialised per device (one stream, one arena). Returned arrays are copies.
    """

    backend = "tensorrt"

    def __init__(self, name: str, path: Path, engine, inputs: Mapping[str, TensorSpec],
                 outputs: Mapping[str, TensorSpec], device_index: int = 0):
        trt, cudart = require()
        self.trt, self.cudart = trt, cudart
        self.name, self.path, self.engine = name, path, engine
        self.inputs, self.outputs = dict(inputs), dict(outputs)
        self.device = f"cuda:{device_index}"
        self._dev = _device(cudart, device_index)
        self.context = _create_context(trt, engine)
        size = getattr(engine, "device_memory_size_v2", None)
        self._dev.arena.attach(self.context, int(size if size is not None else engine.device_memory_size))
        self._buffers: dict[str, cuda.DeviceBuffer] = {}
        self._host: dict[str, cuda.PinnedArray] = {}
        for key, spec in {**self.inputs, **self.outputs}.items():
            host = cuda.PinnedArray(cudart, spec.shape, np.dtype(spec.dtype))
            self._host[key] = host
            self._buffers[key] = cuda.DeviceBuffer(cudart, host.nbytes)
            if not self.context.set_tensor_address(key, self._buffers[key].ptr):
                raise InputError(f"{self.path}: engine has no tensor {key!r}")

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_feeds(self.name, self.inputs, feeds, "input")
        cudart, kinds, stream = self.cudart, self.cudart.cudaMemcpyKind, self._dev.stream
        with self._dev.lock:
            cuda.call(cudart, "cudaSetDevice", cudart.cudaSetDevice(self._dev.index))
            for key in self.inputs:
                np.copyto(self._host[key].array, feeds[key])
                cuda.memcpy(cudart, self._buffers[key].ptr, self._host[key].ptr, self._host[key].nbytes,
                            kinds.cudaMemcpyHostToDevice, stream)
            if not self.context.execute_async_v3(cuda.stream_handle(stream)):
                raise RuntimeError(f"network {self.name!r}: execute_async_v3 failed")
            for key in self.outputs:
                cuda.memcpy(cudart, self._host[key].ptr, self._buffers[key].ptr, self._host[key].nbytes,
                            kinds.cudaMemcpyDeviceToHost, stream)
            cuda.call(cudart, "cudaStreamSynchronize", cudart.cudaStreamSynchronize(stream))
            return {key: self._host[key].array.copy() for key in self.outputs}

    def __repr__(self) -> str:
        return f"TensorRTNetwork({self.name!r}, {self.path.name}, {self.device})"


def _engine_io(trt, engine) -> tuple[dict, dict]:
    inputs, outputs = {}, {}
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        shape = tuple(int(s) if int(s) >= 0 else None for s in engine.get_tensor_shape(name))
        dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name))).name
        target = inputs if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs
        target[name] = (shape, dtype)
    return inputs, outputs


def _device_index(device: str) -> int:
    if device in ("cuda", "gpu"):
        return 0
    if device.startswith("cuda:") and device[5:].isdigit():
        return int(device[5:])
    raise UsageError(f"the tensorrt backend runs on 'cuda' or 'cuda:N', got device {device!r}")


def open_network(path: Path, inputs: Mapping[str, TensorSpec], outputs: Mapping[str, TensorSpec],
                 threads: int | None = None, device: str = "cuda", name: str = "network",
                 cache_dir: str | os.PathLike | None = None, workspace_mb: int | None = None) -> TensorRTNetwork:
    """Open a graph (``.onnx``: cached or built engine) or a prebuilt ``.plan`` as a TensorRTNetwork.

    ``threads`` is ignored. ``cache_dir`` defaults to ``<graph folder>/engines``; ``workspace_mb``
    (the builder's workspace, used only when an engine is built) to the builder's default. The
    engine's I/O must match ``inputs``/``outputs`` (names, static shapes, dtypes).
    """
    from unmix.runtime.engine_cache import EngineCacheError, EngineIdentity, EngineSidecar, load_or_build
    from unmix.runtime.manifest import file_sha256

    trt, cudart = require()
    index = _device_index(device)
    cuda.call(cudart, "cudaSetDevice", cudart.cudaSetDevice(index))
    path = Path(path)
    deserialize = deserializer(trt)
    capability = cuda.compute_capability(index)
    if path.suffix == ".plan":
        sidecar_path = path.with_suffix(".json")
        if not sidecar_path.is_file():
            raise EngineCacheError(f"{path}: no sidecar {sidecar_path.name}; refusing to run a plan of unknown origin")
        sidecar = EngineSidecar.read(sidecar_path)
        if (sidecar.trt_version, sidecar.compute_capability) != (trt.__version__, capability):
            raise EngineCacheError(f"{path}: built by TensorRT {sidecar.trt_version} for compute capability "
                                   f"{sidecar.compute_capability}; this machine has TensorRT {trt.__version__} and "
                                   f"compute capability {capability}: rebuild it from the ONNX graph "
                                   "(unmix.export.tensorrt_build.build_engines)")
        identity = EngineIdentity(sidecar.name, sidecar.onnx_sha256, sidecar.precision, sidecar.input_shapes,
                                  trt.__version__, capability)
        loaded = load_or_build(path.parent, identity, deserialize, build=None)
    else:
        from unmix.export.tensorrt_build import DEFAULT_WORKSPACE_MB, TIMING_CACHE, build_serialized_engine

        precision = "fp16" if path.name.endswith(".fp16.onnx") else "fp32"
        shapes = {key: list(spec.shape) for key, spec in inputs.items()}
        identity = EngineIdentity(name, file_sha256(path), precision, shapes, trt.__version__, capability)
        cache = Path(cache_dir) if cache_dir is not None else path.parent / "engines"
        workspace = DEFAULT_WORKSPACE_MB if workspace_mb is None else workspace_mb
        loaded = load_or_build(cache, identity, deserialize, build=lambda: build_serialized_engine(
            path, shapes, workspace, cache / TIMING_CACHE))
    graph_inputs, graph_outputs = _engine_io(trt, loaded.engine)
    check_graph_io(loaded.plan_path, "input", graph_inputs, inputs)
    check_graph_io(loaded.plan_path, "output", graph_outputs, outputs)
    network = TensorRTNetwork(name, loaded.plan_path, loaded.engine, inputs, outputs, index)
    network.runtime = deserialize.runtime
    network.cache_status = loaded.status
    return network
