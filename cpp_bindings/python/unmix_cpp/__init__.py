"""The unmix C++ runtime as a Python module (its C ABI, ``unmix.h``, through nanobind).

    import unmix_cpp
    with unmix_cpp.Model("models/samson", backend="openvino", threads=2) as model:
        result = model.run(cube)                  # (H, W, B) float32 reflectance
        result["abundances"]                      # (H, W, p) on the simplex; NaN at invalid pixels
        stream = model.stream(width=cube.shape[1])  # push-broom lines, the manifest's endmembers fixed
        for line in cube:
            first_row, abundances, rmse, uncertainty = stream.push(line)   # rows finished so far
        first_row, abundances, rmse, uncertainty = stream.finish()

Errors: FileNotFoundError (model folder or file missing), ValueError (bad argument or a cube that does
not fit the model), RuntimeError (backend failure, or a backend that was not built).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from unmix_cpp import _core

__all__ = ["Model", "Stream", "abi_version"]


def abi_version() -> int:
    """The C ABI version of the bundled library (``UNMIX_ABI_VERSION``)."""
    return _core.abi_version()


def _float32(array: Any, ndim: int, what: str) -> np.ndarray:
    values = np.ascontiguousarray(array, dtype=np.float32)
    if values.ndim != ndim:
        raise ValueError(f"{what} must have {ndim} dimensions, got shape {values.shape}")
    return values


class Stream:
    """Push-broom lines in, finished rows out (``unmix_stream_*``); see :meth:`Model.stream`."""

    def __init__(self, model: "Model", width: int, endmembers: np.ndarray | None = None):
        given = None if endmembers is None else _float32(endmembers, 2, "endmembers")
        self._stream = _core.Stream(model._model, int(width), given)

    def push(self, line: np.ndarray):
        """One line ``(W, B)`` -> ``(first_row, abundances (n, W, p), rmse (n, W), uncertainty (n, W))``
        for the ``n`` rows finished by it (often 0; ``first_row`` is -1 then)."""
        return self._stream.push(_float32(line, 2, "line"))

    def finish(self):
        """No more lines: the remaining rows, as :meth:`push` returns them."""
        return self._stream.finish()

    def estimate_endmembers(self) -> np.ndarray:
        """(p, B) endmembers re-estimated from the running sums of the finished rows."""
        return self._stream.estimate_endmembers()

    @property
    def ring_rows(self) -> int:
        return self._stream.ring_rows

    def close(self) -> None:
        self._stream.close()


class Model:
    """An exported model folder opened on the C++ ``openvino`` backend."""

    def __init__(self, model_dir: Any, backend: str = "openvino", threads: int = 0, **settings: Any):
        self._model = _core.Model(str(model_dir), backend, int(threads))
        for name, value in settings.items():
            self.set_option(name, value)

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._model.close()

    @property
    def endmember_count(self) -> int:
        return self._model.endmembers

    @property
    def bands(self) -> int:
        return self._model.bands

    @property
    def tile(self) -> int:
        return self._model.tile

    def set_option(self, name: str, value: Any) -> None:
        """An inference setting (steps, t0, eta, samples, rounds, overlap, dc_weight, seed, ...)."""
        self._model.set_option(name, float(value))

    def get_option(self, name: str) -> float:
        return self._model.get_option(name)

    def model_endmembers(self) -> np.ndarray:
        """The manifest's endmembers, (p, B) float32."""
        return self._model.model_endmembers()

    def run(self, cube: np.ndarray, endmembers: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Unmix a whole ``(H, W, B)`` cube (``unmix_run_ex``).

        ``endmembers`` (p, B): the starting endmembers instead of pass 1's estimate. Returns
        ``abundances (H, W, p)``, ``endmembers (p, B)``, ``rmse (H, W)`` and ``uncertainty (H, W)``
        (NaN unless samples > 1), float32.
        """
        given = None if endmembers is None else _float32(endmembers, 2, "endmembers")
        return self._model.run(_float32(cube, 3, "cube"), given)

    def stream(self, width: int, endmembers: np.ndarray | None = None) -> Stream:
        """A push-broom stream of lines ``width`` pixels wide, the endmembers fixed (the manifest's by default)."""
        return Stream(self, width, endmembers)
