"""The Network protocol: what the pipeline calls, whatever runs it.

A Network is a callable ``dict[str, ndarray] -> dict[str, ndarray]`` that declares its inputs and
outputs (name -> :class:`TensorSpec`: static shape and dtype). Backends (ONNX Runtime, OpenVINO,
TensorRT) implement it over exported graphs; ``unmix.train.fused.TorchNetwork`` implements it over
eager torch modules, so the one pipeline runs both.

The pipeline needs three networks; :func:`pipeline_specs` gives their exact I/O contract for a sensor
(B bands), p endmembers and a square tile of T pixels. Input order is the order of the fused modules'
``forward`` arguments (the export names graph inputs the same way):

- ``hybridstu``: ``cube (1, B, T, T)`` -> ``abundances (1, p, T, T)`` (softmax over p).
- ``abundance_step`` (one fused 2D DDIM step): ``x_t (1, p, T, T)``, ``t (1,)``, ``coef (C,)``,
  ``noise (1, p, T, T)``, ``cube (1, B, T, T)``, ``endmembers (p, B)``, ``dc_weight (1,)``
  -> ``x_prev (1, p, T, T)``.
- ``spectra_step`` (one fused 1D DDIM step): ``x_t (p, 1, B)``, ``t (p,)``, ``coef (C,)``,
  ``noise (p, 1, B)``, ``AtA (p, p)``, ``AtY (p, B)``, ``scale (p,)``, ``dc_weight (1,)``
  -> ``x_prev (p, 1, B)``.

Every tensor is float32 at the interface (an fp16 engine casts inside its graph). ``coef`` is one row
of :meth:`unmix.diffusion.schedule.DDIMCoefficients.as_table` (C = ``len(Coef)`` columns, named by
:class:`unmix.diffusion.schedule.Coef`); ``t`` holds the integer timestep as a float.

Each contract is checked once, where it enters: a backend compares a graph's inputs and outputs with
the declared specs when it opens the file (:func:`unmix.runtime.backends.check_graph_io`) and checks
the feeds it is called with (:func:`check_feeds`); :func:`unmix.runtime.pipeline.run_pipeline`
compares each network's declared I/O with :func:`pipeline_specs` for the cube before its first call
(:func:`check_network`). The pipeline then calls its networks without checking again.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Mapping, Protocol, runtime_checkable

import numpy as np

from unmix.diffusion.schedule import Coef
from unmix.errors import InputError, UsageError, require_int

__all__ = [
    "ABUNDANCE_STEP_INPUTS",
    "DTYPES",
    "HYBRIDSTU_INPUTS",
    "NETWORK_NAMES",
    "Network",
    "NetworkSpec",
    "SPECTRA_STEP_INPUTS",
    "TensorSpec",
    "check_feeds",
    "check_network",
    "pipeline_specs",
]

DTYPES = ("float32", "float16", "int64", "int32")

NETWORK_NAMES = ("hybridstu", "abundance_step", "spectra_step")
HYBRIDSTU_INPUTS = ("cube",)
ABUNDANCE_STEP_INPUTS = ("x_t", "t", "coef", "noise", "cube", "endmembers", "dc_weight")
SPECTRA_STEP_INPUTS = ("x_t", "t", "coef", "noise", "AtA", "AtY", "scale", "dc_weight")
COEF_COLUMNS = len(Coef)


@dataclass(frozen=True)
class TensorSpec:
    """A tensor's static shape and dtype.

    ``shape`` is a tuple of positive sizes; ``-1`` marks a free axis (allowed only where a network
    truly accepts any size). ``dtype`` is one of :data:`DTYPES` (numpy names).
    """

    shape: tuple[int, ...]
    dtype: str = "float32"

    def __post_init__(self) -> None:
        try:
            shape = tuple(operator.index(size) for size in self.shape)
        except TypeError:
            raise UsageError(f"tensor shape must be a tuple of integers, got {self.shape!r}") from None
        if any(size < 1 and size != -1 for size in shape):
            raise UsageError(f"tensor sizes must be >= 1 (or -1 for a free axis), got {shape}")
        if self.dtype not in DTYPES:
            raise UsageError(f"tensor dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        object.__setattr__(self, "shape", shape)

    def accepts(self, array: np.ndarray) -> bool:
        """True when ``array`` has this dtype and shape (free axes match any size)."""
        return (array.dtype == np.dtype(self.dtype) and array.ndim == len(self.shape)
                and all(want in (-1, got) for want, got in zip(self.shape, array.shape)))

    def to_dict(self) -> dict[str, Any]:
        """``{"shape": [...], "dtype": "..."}`` (JSON, e.g. for the export manifest)."""
        return {"shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TensorSpec":
        """Inverse of :meth:`to_dict`."""
        if not isinstance(data, Mapping) or "shape" not in data:
            raise UsageError(f"a tensor spec needs 'shape' and 'dtype', got {data!r}")
        return cls(tuple(data["shape"]), data.get("dtype", "float32"))

    def __str__(self) -> str:
        return f"{self.dtype}{list(self.shape)}"


@runtime_checkable
class Network(Protocol):
    """A callable graph with declared inputs and outputs.

    ``network(feeds)`` takes every name of ``inputs`` (numpy arrays matching their specs) and returns
    a dict holding every name of ``outputs``. Implementations must not keep references to the
    arrays they are given, nor return views of buffers they reuse on the next call.
    """

    inputs: Mapping[str, TensorSpec]
    outputs: Mapping[str, TensorSpec]

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class NetworkSpec:
    """The I/O contract of one network: input and output name -> spec, inputs in call order."""

    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]


def pipeline_specs(bands: int, endmembers: int, tile: int) -> dict[str, NetworkSpec]:
    """The three networks the pipeline calls, for B ``bands``, p ``endmembers`` and T x T ``tile``s.

    Returns ``{"hybridstu", "abundance_step", "spectra_step"} -> NetworkSpec`` (module docstring).
    """
    B, p, T = require_int(bands, "bands", 1), require_int(endmembers, "endmembers", 2), require_int(tile, "tile", 1)
    f32 = "float32"
    return {
        "hybridstu": NetworkSpec(
            inputs={"cube": TensorSpec((1, B, T, T), f32)},
            outputs={"abundances": TensorSpec((1, p, T, T), f32)}),
        "abundance_step": NetworkSpec(
            inputs={"x_t": TensorSpec((1, p, T, T), f32), "t": TensorSpec((1,), f32),
                    "coef": TensorSpec((COEF_COLUMNS,), f32), "noise": TensorSpec((1, p, T, T), f32),
                    "cube": TensorSpec((1, B, T, T), f32), "endmembers": TensorSpec((p, B), f32),
                    "dc_weight": TensorSpec((1,), f32)},
            outputs={"x_prev": TensorSpec((1, p, T, T), f32)}),
        "spectra_step": NetworkSpec(
            inputs={"x_t": TensorSpec((p, 1, B), f32), "t": TensorSpec((p,), f32),
                    "coef": TensorSpec((COEF_COLUMNS,), f32), "noise": TensorSpec((p, 1, B), f32),
                    "AtA": TensorSpec((p, p), f32), "AtY": TensorSpec((p, B), f32),
                    "scale": TensorSpec((p,), f32), "dc_weight": TensorSpec((1,), f32)},
            outputs={"x_prev": TensorSpec((p, 1, B), f32)}),
    }


def check_network(name: str, network: Any, expected: NetworkSpec) -> None:
    """Refuse a network whose declared I/O differs from ``expected`` (one sentence with both)."""
    for kind in ("inputs", "outputs"):
        declared = getattr(network, kind, None)
        if not isinstance(declared, Mapping):
            raise UsageError(f"network {name!r} declares no {kind} (expected a name -> TensorSpec mapping)")
        wanted = getattr(expected, kind)
        missing = [key for key in wanted if key not in declared]
        if missing:
            raise InputError(f"network {name!r} lacks the {kind[:-1]} {missing[0]!r}; "
                             f"expected {kind} {', '.join(wanted)}, it declares {', '.join(declared) or 'none'}")
        for key, spec in wanted.items():
            if declared[key] != spec:
                raise InputError(f"network {name!r} {kind[:-1]} {key!r} is {declared[key]}, "
                                 f"expected {spec} for this cube and tile")
    if not callable(network):
        raise UsageError(f"network {name!r} is not callable")


def check_feeds(name: str, specs: Mapping[str, TensorSpec], arrays: Mapping[str, np.ndarray],
                kind: str = "input") -> None:
    """Raise when ``arrays`` lacks a name of ``specs`` or an array does not match its spec."""
    for key, spec in specs.items():
        if key not in arrays:
            raise InputError(f"network {name!r}: {kind} {key!r} is missing")
        array = arrays[key]
        if not isinstance(array, np.ndarray) or not spec.accepts(array):
            got = (f"{array.dtype}{list(array.shape)}" if isinstance(array, np.ndarray)
                   else type(array).__name__)
            raise InputError(f"network {name!r}: {kind} {key!r} is {got}, expected {spec}")

