"""unmix.runtime: the inference side (numpy plus one backend; never torch).

- :mod:`unmix.runtime.network` — the Network protocol (``TensorSpec``, ``pipeline_specs``).
- :mod:`unmix.runtime.tiling` — overlapping tiles and their blending.
- :mod:`unmix.runtime.pipeline` — ``run_pipeline(scene, networks, schedule, config)``, the two-pass flow.

Names are imported lazily, so ``import unmix.runtime`` costs nothing until one is used.
"""
from __future__ import annotations

from unmix._lazy import lazy_getattr

_LAZY = {
    "Network": ("unmix.runtime.network", "Network"),
    "NetworkSpec": ("unmix.runtime.network", "NetworkSpec"),
    "TensorSpec": ("unmix.runtime.network", "TensorSpec"),
    "pipeline_specs": ("unmix.runtime.network", "pipeline_specs"),
    "PipelineConfig": ("unmix.runtime.pipeline", "PipelineConfig"),
    "PipelineResult": ("unmix.runtime.pipeline", "PipelineResult"),
    "predict_abundances": ("unmix.runtime.pipeline", "predict_abundances"),
    "run_pipeline": ("unmix.runtime.pipeline", "run_pipeline"),
}


__getattr__ = lazy_getattr(__name__, _LAZY)

__all__ = list(_LAZY)
