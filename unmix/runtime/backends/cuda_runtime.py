"""CUDA runtime primitives over cuda-python: device memory, pinned host arrays, asynchronous copies.

What the TensorRT backend needs from CUDA and nothing more: ``cudaMalloc``'d device buffers,
page-locked host arrays (``cudaMallocHost``, which asynchronous copies need) seen as numpy arrays,
``cudaMemcpyAsync`` on a stream, and the device's compute capability (part of the engine cache key).
cuda-python is imported lazily (``cuda.bindings.runtime`` from 12.6 on, else ``cuda.cudart``), so this
module imports on any machine; every CUDA call goes through :func:`call`, which turns an error code
into a RuntimeError naming the call.

:func:`self_test` checks these pieces alone on any GPU, without TensorRT.
"""
from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from unmix.errors import UsageError

__all__ = ["DeviceBuffer", "PinnedArray", "call", "compute_capability", "error_name", "import_cudart", "memcpy",
           "self_test", "status", "stream_handle"]


def import_cudart():
    """The CUDA runtime bindings of cuda-python (``cuda.bindings.runtime`` ≥ 12.6, else ``cuda.cudart``)."""
    from unmix.runtime.backends import BACKENDS

    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            raise UsageError(f"cuda-python is not installed: {BACKENDS['tensorrt'].extra}") from None
    return cudart


def status(err) -> int:
    """A cuda-python error value as an int (0: success)."""
    return int(getattr(err, "value", err))


def error_name(cudart, err) -> str:
    """``cudaGetErrorString`` of ``err``, or its repr when that fails too."""
    try:
        result = cudart.cudaGetErrorString(err)
        text = result[1] if isinstance(result, tuple) else result
        return text.decode() if isinstance(text, bytes) else str(text)
    except Exception:
        return str(err)


def call(cudart, what: str, result):
    """Unpack a cuda-python ``(err, *values)`` result; RuntimeError naming the call on failure."""
    if not isinstance(result, tuple):
        result = (result,)
    err, values = result[0], result[1:]
    if status(err) != 0:
        raise RuntimeError(f"{what} failed: {error_name(cudart, err)}")
    return values[0] if len(values) == 1 else (values or None)


def compute_capability(device: int = 0) -> str:
    """``"major.minor"`` of CUDA device ``device``."""
    cudart = import_cudart()
    props = call(cudart, "cudaGetDeviceProperties", cudart.cudaGetDeviceProperties(device))
    return f"{props.major}.{props.minor}"



class _Freed:
    """Frees its CUDA memory (``free()``) when collected, quietly at interpreter exit."""

    def free(self) -> None:
        raise NotImplementedError

    def __del__(self):
        try:
            self.free()
        except Exception:
            pass


class DeviceBuffer(_Freed):
    """``nbytes`` of device memory (``ptr``), freed with the object."""

    def __init__(self, cudart, nbytes: int):
        self.cudart = cudart
        self.nbytes = max(int(nbytes), 1)
        self.ptr = int(call(cudart, "cudaMalloc", cudart.cudaMalloc(self.nbytes)))

    def free(self) -> None:
        if self.ptr:
            self.cudart.cudaFree(self.ptr)
            self.ptr = 0


class PinnedArray(_Freed):
    """A numpy array (``array``) over page-locked host memory at ``ptr``, freed with the object."""

    def __init__(self, cudart, shape: tuple[int, ...], dtype: np.dtype):
        self.cudart = cudart
        dtype = np.dtype(dtype)
        nbytes = max(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize, 1)
        self.ptr = int(call(cudart, "cudaMallocHost", cudart.cudaMallocHost(nbytes)))
        raw = (ctypes.c_byte * nbytes).from_address(self.ptr)
        self.array = np.frombuffer(raw, dtype=np.uint8, count=nbytes)[: int(np.prod(shape)) * dtype.itemsize] \
            .view(dtype).reshape(shape)
        self.nbytes = self.array.nbytes

    def free(self) -> None:
        if self.ptr:
            self.array = None
            self.cudart.cudaFreeHost(self.ptr)
            self.ptr = 0


def stream_handle(stream) -> int:
    """The raw ``cudaStream_t`` address (what TensorRT's ``execute_async_v3`` takes)."""
    try:
        return int(stream)
    except TypeError:
        return int(stream.getPtr())


def memcpy(cudart, dst: int, src: int, nbytes: int, kind, stream) -> None:
    """``cudaMemcpyAsync(dst, src, nbytes, kind, stream)``."""
    call(cudart, "cudaMemcpyAsync", cudart.cudaMemcpyAsync(dst, src, nbytes, kind, stream))


def self_test(nbytes: int = 1 << 20, device: int = 0) -> dict[str, Any]:
    """Allocate, copy and compare, with cuda-python only.

    Pinned host -> device A -> device B -> pinned host on one stream, twice with new host data.
    Returns ``{"bytes", "device", "compute_capability", "round_trips", "ok"}``; raises RuntimeError on
    any CUDA error or wrong bytes.
    """
    cudart = import_cudart()
    call(cudart, "cudaSetDevice", cudart.cudaSetDevice(device))
    kinds = cudart.cudaMemcpyKind
    stream = call(cudart, "cudaStreamCreate", cudart.cudaStreamCreate())
    count = max(nbytes // 4, 1)
    source = PinnedArray(cudart, (count,), np.float32)
    result = PinnedArray(cudart, (count,), np.float32)
    a, b = DeviceBuffer(cudart, source.nbytes), DeviceBuffer(cudart, source.nbytes)
    try:
        rng = np.random.default_rng(0)
        trips = 2
        for trip in range(trips):
            source.array[:] = rng.standard_normal(count, dtype=np.float32)
            result.array[:] = np.nan
            memcpy(cudart, a.ptr, source.ptr, source.nbytes, kinds.cudaMemcpyHostToDevice, stream)
            memcpy(cudart, b.ptr, a.ptr, a.nbytes, kinds.cudaMemcpyDeviceToDevice, stream)
            memcpy(cudart, result.ptr, b.ptr, b.nbytes, kinds.cudaMemcpyDeviceToHost, stream)
            call(cudart, "cudaStreamSynchronize", cudart.cudaStreamSynchronize(stream))
            if not np.array_equal(result.array, source.array):
                raise RuntimeError(f"round trip {trip}: the bytes copied back differ from those sent")
        return {"bytes": source.nbytes, "device": device, "compute_capability": compute_capability(device),
                "round_trips": trips, "ok": True}
    finally:
        for item in (a, b, source, result):
            item.free()
        cudart.cudaStreamDestroy(stream)
