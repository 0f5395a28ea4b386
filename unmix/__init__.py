"""unmix: semi-blind hyperspectral unmixing with diffusion models.

The public faces are imported lazily so that ``import unmix`` stays light on edge devices:

- ``unmix.read_cube(path) -> Scene``: a lazy ENVI cube.
- ``unmix.evaluate(estimate, truth) -> dict``: the metrics of DESIGN.md after Hungarian alignment.
- ``unmix.Unmixer.load(model_dir, backend=...).run(cube) -> Result``: the edge runtime.
"""
from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "read_cube": ("unmix.io.envi", "read_cube"),
    "Scene": ("unmix.io.scene", "Scene"),
    "evaluate": ("unmix.physics.metrics", "evaluate"),
    "Unmixer": ("unmix.runtime.unmixer", "Unmixer"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'unmix' has no attribute {name!r}")


__all__ = list(_LAZY) + ["__version__"]
