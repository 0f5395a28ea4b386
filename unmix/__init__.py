"""unmix: semi-blind hyperspectral unmixing with diffusion models.

The public faces are imported lazily so that ``import unmix`` stays light on edge devices:

- ``unmix.read_cube(path) -> Scene``: a lazy ENVI cube.
- ``unmix.evaluate(estimate, truth) -> dict``: SAD, RMSE, SRE and PSNR after Hungarian alignment
  (README.md, "Metric conventions").
- ``unmix.Unmixer.load(model_dir, backend=...).run(cube) -> Result``: the edge runtime.
"""
from __future__ import annotations

from unmix._lazy import lazy_getattr

__version__ = "0.1.0"

_LAZY = {
    "read_cube": ("unmix.io.envi", "read_cube"),
    "Scene": ("unmix.io.scene", "Scene"),
    "evaluate": ("unmix.physics.metrics", "evaluate"),
    "Unmixer": ("unmix.runtime.unmixer", "Unmixer"),
}


__getattr__ = lazy_getattr(__name__, _LAZY)

__all__ = list(_LAZY) + ["__version__"]
