"""TensorRT backend: engines built from the exported ONNX, run with cuda-python (TensorRT 10 and 11).

Needs ``tensorrt`` and ``cuda-python`` (extra ``tensorrt``) and a visible NVIDIA GPU; without any of
them :func:`require` raises one :class:`~unmix.errors.UsageError` line naming what is missing. Both
packages are imported lazily: this module imports on any machine.

Engines. ``open_network(<graph>.onnx, ...)`` looks the engine up in ``<model>/engines/`` through
:mod:`unmix.runtime.engine_cache` (keyed by the graph's sha256, precision, static input shapes,
TensorRT version and compute capability) and builds it when the cache has no valid plan;
``open_network(<name>.<key>.plan, ...)`` runs a prebuilt plan only when its sidecar matches this
TensorRT and GPU (never rebuilt: there is no graph to build from). Builds use only API common to
TensorRT 10 and 11 (:func:`build_serialized_engine`): ``Builder.create_network`` with the
``STRONGLY_TYPED`` flag (fp16 lives in the ONNX graph; TensorRT 11 has no fp16 builder flag),
``OnnxParser``, a workspace pool limit, a persistent timing cache and ``build_serialized_network``.

Execution (:class:`TensorRTNetwork`):

- per device, one CUDA stream shared by every network (the pipeline calls its networks in turn), and
  one activation arena (:class:`ActivationArena`): each execution context is created with
  ``ExecutionContextAllocationStrategy.USER_MANAGED`` and pointed at the arena with
  ``set_device_memory(ptr, size)``; the arena is sized by the largest ``device_memory_size_v2`` of the
  engines opened so far, so three engines need one scratch block, not three;
- device buffers for every input and output, allocated once, bound with ``set_tensor_address``, and
  pinned host staging buffers; a call is ``cudaMemcpyAsync`` in, ``execute_async_v3``, ``cudaMemcpyAsync``
  out, one stream synchronisation;
- optional CUDA graph (``use_graph=True``): the copies and the engine launch are captured once
  (``cudaStreamBeginCapture``/``EndCapture``/``GraphInstantiate``) and replayed with ``cudaGraphLaunch``;
  recaptured when the arena moves;
- :meth:`TensorRTNetwork.run_loop` keeps a DDIM loop's state on the device: ``x_t`` and ``x_prev`` live
  in two device buffers that swap roles every step (ping-pong), so only the small per-step inputs
  (``t``, ``coef``, ``noise``) cross the bus and ``x`` is copied back once at the end. The pipeline
  can use it where it now calls ``abundance_step`` once per step: draw the step's noise up front (it
  already draws it on the host from its seeded generator), pass ``{"t", "coef", "noise"}`` per step
  and the constant inputs (``cube``, ``endmembers``, ``dc_weight``) once.

References: TensorRT Python API, ``IExecutionContext.set_device_memory``/``device_memory_size_v2``
and ``ExecutionContextAllocationStrategy`` (docs.nvidia.com/deeplearning/tensorrt/latest/_static/
python-api/infer/Core/ExecutionContext.html, .../Core/RuntimeConfig.html; TensorRT 11 also offers
``create_execution_context(IRuntimeConfig)``, used when the strategy argument is refused).

:func:`cuda_self_test` checks the cuda-python pieces alone (buffers, stream, a captured graph of
copies) on any GPU, without TensorRT.
"""
from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from unmix.errors import InputError, UsageError, first_line
from unmix.runtime.network import TensorSpec, check_feeds

__all__ = [
    "ActivationArena",
    "TensorRTNetwork",
    "availability",
    "build_serialized_engine",
    "compute_capability",
    "cuda_self_test",
    "deserializer",
    "import_cudart",
    "open_network",
    "require",
]

INSTALL = "pip install 'unmix[tensorrt]' on a machine with an NVIDIA GPU and driver"
DEFAULT_WORKSPACE_MB = 1024
_lock = threading.RLock()
_devices: dict[int, "_Device"] = {}


# --------------------------------------------------------------------------------------------------
# Imports and checks
# --------------------------------------------------------------------------------------------------

def import_cudart():
    """The CUDA runtime bindings of cuda-python (``cuda.bindings.runtime`` ≥ 12.6, else ``cuda.cudart``)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            raise UsageError(f"cuda-python is not installed: {INSTALL}") from None
    return cudart


def _import_tensorrt():
    try:
        import tensorrt
    except ImportError:
        raise UsageError(f"TensorRT is not installed: {INSTALL}") from None
    return tensorrt


def _missing() -> list[str]:
    """What this machine lacks for the backend ([] when it has everything)."""
    missing = []
    try:
        _import_tensorrt()
    except UsageError:
        missing.append("the tensorrt package")
    except Exception as exc:  # a broken install: shared libraries not found, ...
        missing.append(f"a working tensorrt package ({first_line(exc)})")
    try:
        cudart = import_cudart()
    except UsageError:
        missing.append("cuda-python")
    except Exception as exc:
        missing.append(f"a working cuda-python ({first_line(exc)})")
    else:
        try:
            err, count = cudart.cudaGetDeviceCount()
            if _code(err) != 0 or count < 1:
                missing.append(f"a visible NVIDIA GPU (cudaGetDeviceCount: {_error_name(cudart, err)}, {count})")
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
                         f"{', '.join(missing)} ({INSTALL})")
    return _import_tensorrt(), import_cudart()


def _code(err) -> int:
    return int(getattr(err, "value", err))


def _error_name(cudart, err) -> str:
    try:
        result = cudart.cudaGetErrorString(err)
        text = result[1] if isinstance(result, tuple) else result
        return text.decode() if isinstance(text, bytes) else str(text)
    except Exception:
        return str(err)


def _call(cudart, what: str, result):
    """Unpack a cuda-python ``(err, *values)`` result; RuntimeError naming the call on failure."""
    if not isinstance(result, tuple):
        result = (result,)
    err, values = result[0], result[1:]
    if _code(err) != 0:
        raise RuntimeError(f"{what} failed: {_error_name(cudart, err)}")
    return values[0] if len(values) == 1 else (values or None)


def compute_capability(device: int = 0) -> str:
    """``"major.minor"`` of CUDA device ``device``."""
    cudart = import_cudart()
    props = _call(cudart, "cudaGetDeviceProperties", cudart.cudaGetDeviceProperties(device))
    return f"{props.major}.{props.minor}"


# --------------------------------------------------------------------------------------------------
# Device memory, stream, arena
# --------------------------------------------------------------------------------------------------

class _DeviceBuffer:
    """``nbytes`` of device memory (``ptr``), freed with the object."""

    def __init__(self, cudart, nbytes: int):
        self.cudart = cudart
        self.nbytes = max(int(nbytes), 1)
        self.ptr = int(_call(cudart, "cudaMalloc", cudart.cudaMalloc(self.nbytes)))

    def free(self) -> None:
        if self.ptr:
            self.cudart.cudaFree(self.ptr)
            self.ptr = 0

    def __del__(self):
        try:
            self.free()
        except Exception:
            pass


class _PinnedArray:
    """A numpy array over page-locked host memory (``cudaMallocHost``): async copies and graph capture need it."""

    def __init__(self, cudart, shape: tuple[int, ...], dtype: np.dtype):
        self.cudart = cudart
        dtype = np.dtype(dtype)
        nbytes = max(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize, 1)
        self.ptr = int(_call(cudart, "cudaMallocHost", cudart.cudaMallocHost(nbytes)))
        raw = (ctypes.c_byte * nbytes).from_address(self.ptr)
        self.array = np.frombuffer(raw, dtype=np.uint8, count=nbytes)[: int(np.prod(shape)) * dtype.itemsize] \
            .view(dtype).reshape(shape)
        self.nbytes = self.array.nbytes

    def free(self) -> None:
        if self.ptr:
            self.array = None
            self.cudart.cudaFreeHost(self.ptr)
            self.ptr = 0

    def __del__(self):
        try:
            self.free()
        except Exception:
            pass


class ActivationArena:
    """One block of device scratch memory shared by the execution contexts of a device.

    Contexts run one after another on the device's one stream, so they can share it. The block grows
    to the largest ``device_memory_size_v2`` registered; every context is re-pointed when it moves and
    :attr:`generation` counts the moves (captured CUDA graphs hold the old address and are recaptured).
    """

    def __init__(self, cudart):
        self.cudart = cudart
        self.buffer: _DeviceBuffer | None = None
        self.contexts: list[Any] = []
        self.generation = 0

    @property
    def nbytes(self) -> int:
        return self.buffer.nbytes if self.buffer is not None else 0

    def attach(self, context: Any, nbytes: int) -> None:
        if self.buffer is None or nbytes > self.nbytes:
            old = self.buffer
            self.buffer = _DeviceBuffer(self.cudart, nbytes)
            self.generation += 1
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
        _call(cudart, "cudaSetDevice", cudart.cudaSetDevice(index))
        self.stream = _call(cudart, "cudaStreamCreate", cudart.cudaStreamCreate())
        self.arena = ActivationArena(cudart)
        self.lock = threading.RLock()


def _device(cudart, index: int) -> _Device:
    with _lock:
        if index not in _devices:
            _devices[index] = _Device(cudart, index)
        return _devices[index]


def _handle(stream) -> int:
    """The raw ``cudaStream_t`` address TensorRT's ``execute_async_v3`` takes."""
    try:
        return int(stream)
    except TypeError:
        return int(stream.getPtr())


def _memcpy(cudart, dst: int, src: int, nbytes: int, kind, stream) -> None:
    _call(cudart, "cudaMemcpyAsync", cudart.cudaMemcpyAsync(dst, src, nbytes, kind, stream))


class _Graph:
    """A captured stream sequence: ``with capture(): ...enqueue...`` then :meth:`launch`."""

    def __init__(self, cudart, stream, enqueue):
        self.cudart = cudart
        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        _call(cudart, "cudaStreamBeginCapture", cudart.cudaStreamBeginCapture(stream, mode))
        try:
            enqueue()
        finally:
            graph = _call(cudart, "cudaStreamEndCapture", cudart.cudaStreamEndCapture(stream))
        self.graph = graph
        # (graph, flags) -> (err, exec) in every cuda-python >= 11.4; cudaGraphInstantiate took other
        # arguments before CUDA 12
        instantiate = getattr(cudart, "cudaGraphInstantiateWithFlags", None) or cudart.cudaGraphInstantiate
        self.exec = _call(cudart, "cudaGraphInstantiate", instantiate(graph, 0))

    def launch(self, stream) -> None:
        _call(self.cudart, "cudaGraphLaunch", self.cudart.cudaGraphLaunch(self.exec, stream))

    def __del__(self):
        try:
            self.cudart.cudaGraphExecDestroy(self.exec)
            self.cudart.cudaGraphDestroy(self.graph)
        except Exception:
            pass


# --------------------------------------------------------------------------------------------------
# Building and deserializing
# --------------------------------------------------------------------------------------------------

_logger = None


def _trt_logger(trt):
    global _logger
    if _logger is None:
        _logger = trt.Logger(trt.Logger.WARNING)
    return _logger


def deserializer(trt):
    """``plan bytes -> ICudaEngine | None`` (``Runtime.deserialize_cuda_engine``; None for a foreign plan)."""
    runtime = trt.Runtime(_trt_logger(trt))

    def deserialize(plan: bytes):
        try:
            return runtime.deserialize_cuda_engine(plan)
        except Exception:                          # some versions raise instead of returning None
            return None

    deserialize.runtime = runtime                  # keep the runtime alive as long as its engines
    return deserialize


def build_serialized_engine(onnx_path: str | os.PathLike, input_shapes: Mapping[str, Iterable[int]],
                            workspace_mb: int = DEFAULT_WORKSPACE_MB,
                            timing_cache: str | os.PathLike | None = None) -> tuple[bytes, dict[str, Any]]:
    """Build a strongly typed engine from an ONNX graph; returns ``(plan bytes, builder flags)``.

    Args:
        onnx_path: the graph (fp16 arithmetic, if any, is in the graph itself).
        input_shapes: input name -> static shape; free (-1) graph axes get a one-point optimisation profile.
        workspace_mb: the builder's workspace pool limit.
        timing_cache: a file holding the builder's timing cache; read when present, written after the build.

    Raises:
        InputError: the parser rejects the graph, its inputs differ from ``input_shapes``, or the build fails.
    """
    trt = _import_tensorrt()
    logger = _trt_logger(trt)
    onnx_path = Path(onnx_path)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
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
            raise InputError(f"{onnx_path}: graph input {tensor.name!r} has shape {have}, the manifest declares {want}")
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

        write_atomic(timing_cache, bytes(config.get_timing_cache().serialize()))
    flags_used = {"strongly_typed": True, "workspace_mb": int(workspace_mb),
                  "timing_cache": str(timing_cache) if timing_cache is not None else None,
                  "timing_cache_reused": bool(cache_bytes), "profile": profile is not None,
                  "tensorrt": trt.__version__}
    return bytes(plan), flags_used


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
                 outputs: Mapping[str, TensorSpec], device_index: int = 0, use_graph: bool = False):
        trt, cudart = require()
        self.trt, self.cudart = trt, cudart
        self.name, self.path, self.engine = name, path, engine
        self.inputs, self.outputs = dict(inputs), dict(outputs)
        self.device = f"cuda:{device_index}"
        self._dev = _device(cudart, device_index)
        self.context = _create_context(trt, engine)
        size = getattr(engine, "device_memory_size_v2", None)
        self._dev.arena.attach(self.context, int(size if size is not None else engine.device_memory_size))
        self.use_graph = bool(use_graph)
        self._graph: _Graph | None = None
        self._graph_generation = -1
        self._buffers: dict[str, _DeviceBuffer] = {}
        self._host: dict[str, _PinnedArray] = {}
        for key, spec in {**self.inputs, **self.outputs}.items():
            host = _PinnedArray(cudart, spec.shape, np.dtype(spec.dtype))
            self._host[key] = host
            self._buffers[key] = _DeviceBuffer(cudart, host.nbytes)
        self._bind()

    def _bind(self, overrides: Mapping[str, int] | None = None) -> None:
        for key, buffer in self._buffers.items():
            ptr = (overrides or {}).get(key, buffer.ptr)
            if not self.context.set_tensor_address(key, ptr):
                raise InputError(f"{self.path}: engine has no tensor {key!r}")

    def _enqueue(self, inputs: Iterable[str], outputs: Iterable[str], execute: bool = True) -> None:
        kinds = self.cudart.cudaMemcpyKind
        stream = self._dev.stream
        for key in inputs:
            _memcpy(self.cudart, self._buffers[key].ptr, self._host[key].ptr, self._host[key].nbytes,
                    kinds.cudaMemcpyHostToDevice, stream)
        if execute and not self.context.execute_async_v3(_handle(stream)):
            raise RuntimeError(f"network {self.name!r}: execute_async_v3 failed")
        for key in outputs:
            _memcpy(self.cudart, self._host[key].ptr, self._buffers[key].ptr, self._host[key].nbytes,
                    kinds.cudaMemcpyDeviceToHost, stream)

    def _select(self) -> None:
        _call(self.cudart, "cudaSetDevice", self.cudart.cudaSetDevice(self._dev.index))

    def _sync(self) -> None:
        _call(self.cudart, "cudaStreamSynchronize", self.cudart.cudaStreamSynchronize(self._dev.stream))

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_feeds(self.name, self.inputs, feeds, "input")
        with self._dev.lock:
            self._select()
            for key in self.inputs:
                np.copyto(self._host[key].array, feeds[key])
            if self.use_graph:
                if self._graph is None or self._graph_generation != self._dev.arena.generation:
                    self._enqueue(self.inputs, self.outputs)      # a first run before capture (TensorRT's advice)
                    self._sync()
                    self._graph = _Graph(self.cudart, self._dev.stream,
                                         lambda: self._enqueue(self.inputs, self.outputs))
                    self._graph_generation = self._dev.arena.generation
                self._graph.launch(self._dev.stream)
            else:
                self._enqueue(self.inputs, self.outputs)
            self._sync()
            return {key: self._host[key].array.copy() for key in self.outputs}

    def run_loop(self, carry_in: str, carry_out: str, initial: np.ndarray, constant: Mapping[str, np.ndarray],
                 steps: Iterable[Mapping[str, np.ndarray]]) -> np.ndarray:
        """Run the network step after step with its state kept on the device (ping-pong buffers).

        Args:
            carry_in, carry_out: the input fed by the previous step's output (``x_t``, ``x_prev``).
            initial: the first ``carry_in`` value.
            constant: inputs that do not change over the loop (copied once).
            steps: per step, the remaining inputs (``t``, ``coef``, ``noise``).

        Returns:
            The last step's ``carry_out``.
        """
        if carry_in not in self.inputs or carry_out not in self.outputs or \
                self.inputs[carry_in] != self.outputs[carry_out]:
            raise UsageError(f"network {self.name!r}: {carry_in!r} -> {carry_out!r} is not a loop of equal tensors")
        varying = [k for k in self.inputs if k != carry_in and k not in constant]
        check_feeds(self.name, {carry_in: self.inputs[carry_in]}, {carry_in: initial})
        check_feeds(self.name, {k: self.inputs[k] for k in constant}, constant)
        kinds = self.cudart.cudaMemcpyKind
        ping, pong = self._buffers[carry_in], self._buffers[carry_out]
        with self._dev.lock:
            self._select()
            try:
                np.copyto(self._host[carry_in].array, initial)
                for key, value in constant.items():
                    np.copyto(self._host[key].array, value)
                self._enqueue([carry_in, *constant], [], execute=False)
                graphs: dict[int, _Graph] = {}
                count = 0
                for step in steps:
                    check_feeds(self.name, {k: self.inputs[k] for k in varying}, step)
                    self._sync()                   # the staging buffers are free again
                    for key in varying:
                        np.copyto(self._host[key].array, step[key])
                    parity = count % 2
                    source, target = (ping, pong) if parity == 0 else (pong, ping)
                    self._bind({carry_in: source.ptr, carry_out: target.ptr})
                    if self.use_graph:
                        if parity not in graphs:
                            if count == 0:         # a first run before capture (TensorRT's advice)
                                self._enqueue(varying, [])
                                self._sync()
                            graphs[parity] = _Graph(self.cudart, self._dev.stream, lambda: self._enqueue(varying, []))
                        graphs[parity].launch(self._dev.stream)
                    else:
                        self._enqueue(varying, [])
                    count += 1
                if count == 0:
                    raise UsageError(f"network {self.name!r}: run_loop needs at least one step")
                last = pong if count % 2 == 1 else ping
                _memcpy(self.cudart, self._host[carry_out].ptr, last.ptr, last.nbytes,
                        kinds.cudaMemcpyDeviceToHost, self._dev.stream)
                self._sync()
                return self._host[carry_out].array.copy()
            finally:
                self._bind()

    def __repr__(self) -> str:
        return f"TensorRTNetwork({self.name!r}, {self.path.name}, {self.device}, graph={self.use_graph})"


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
                 cache_dir: str | os.PathLike | None = None, workspace_mb: int = DEFAULT_WORKSPACE_MB,
                 use_graph: bool = False) -> TensorRTNetwork:
    """Open a graph (``.onnx``: cached or built engine) or a prebuilt ``.plan`` as a TensorRTNetwork.

    ``threads`` is ignored. ``cache_dir`` defaults to ``<graph folder>/engines``. The engine's I/O must
    match ``inputs``/``outputs`` (names, static shapes, dtypes).
    """
    from unmix.runtime.backends import check_graph_io
    from unmix.runtime.engine_cache import EngineCacheError, EngineIdentity, EngineSidecar, load_or_build
    from unmix.runtime.manifest import file_sha256

    trt, cudart = require()
    index = _device_index(device)
    _call(cudart, "cudaSetDevice", cudart.cudaSetDevice(index))
    path = Path(path)
    deserialize = deserializer(trt)
    capability = compute_capability(index)
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
        precision = "fp16" if path.name.endswith(".fp16.onnx") else "fp32"
        shapes = {key: list(spec.shape) for key, spec in inputs.items()}
        identity = EngineIdentity(name, file_sha256(path), precision, shapes, trt.__version__, capability)
        cache = Path(cache_dir) if cache_dir is not None else path.parent / "engines"
        loaded = load_or_build(cache, identity, deserialize, build=lambda: build_serialized_engine(
            path, shapes, workspace_mb, cache / "timing.cache"))
    graph_inputs, graph_outputs = _engine_io(trt, loaded.engine)
    check_graph_io(loaded.plan_path, "input", graph_inputs, inputs)
    check_graph_io(loaded.plan_path, "output", graph_outputs, outputs)
    network = TensorRTNetwork(name, loaded.plan_path, loaded.engine, inputs, outputs, index, use_graph)
    network.runtime = deserialize.runtime
    network.cache_status = loaded.status
    return network


# --------------------------------------------------------------------------------------------------
# Self-test of the cuda-python pieces (no TensorRT)
# --------------------------------------------------------------------------------------------------

def cuda_self_test(nbytes: int = 1 << 20, device: int = 0) -> dict[str, Any]:
    """Allocate, copy, capture a graph of copies, launch it and compare, with cuda-python only.

    Host (pinned) -> device A, then a captured graph of A -> B (device to device) and B -> host;
    the graph is launched twice with new host data. Returns ``{"bytes", "device", "compute_capability",
    "graph_launches", "ok"}``; raises RuntimeError on any CUDA error or wrong bytes.
    """
    cudart = import_cudart()
    _call(cudart, "cudaSetDevice", cudart.cudaSetDevice(device))
    kinds = cudart.cudaMemcpyKind
    stream = _call(cudart, "cudaStreamCreate", cudart.cudaStreamCreate())
    count = max(nbytes // 4, 1)
    source = _PinnedArray(cudart, (count,), np.float32)
    result = _PinnedArray(cudart, (count,), np.float32)
    a, b = _DeviceBuffer(cudart, source.nbytes), _DeviceBuffer(cudart, source.nbytes)
    try:
        rng = np.random.default_rng(0)
        source.array[:] = rng.standard_normal(count, dtype=np.float32)
        _memcpy(cudart, a.ptr, source.ptr, source.nbytes, kinds.cudaMemcpyHostToDevice, stream)

        def enqueue():
            _memcpy(cudart, a.ptr, source.ptr, source.nbytes, kinds.cudaMemcpyHostToDevice, stream)
            _memcpy(cudart, b.ptr, a.ptr, a.nbytes, kinds.cudaMemcpyDeviceToDevice, stream)
            _memcpy(cudart, result.ptr, b.ptr, b.nbytes, kinds.cudaMemcpyDeviceToHost, stream)

        graph = _Graph(cudart, stream, enqueue)
        for launch in range(2):
            source.array[:] = rng.standard_normal(count, dtype=np.float32)
            result.array[:] = np.nan
            graph.launch(stream)
            _call(cudart, "cudaStreamSynchronize", cudart.cudaStreamSynchronize(stream))
            if not np.array_equal(result.array, source.array):
                raise RuntimeError(f"CUDA graph launch {launch}: the bytes copied back differ from those sent")
        del graph
        return {"bytes": source.nbytes, "device": device, "compute_capability": compute_capability(device),
                "graph_launches": 2, "ok": True}
    finally:
        for item in (a, b, source, result):
            item.free()
        cudart.cudaStreamDestroy(stream)
