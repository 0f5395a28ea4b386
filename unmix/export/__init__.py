"""unmix.export: a checkpoint's networks as ONNX graphs plus ``manifest.json`` (torch + onnx).

- :func:`export` (:mod:`unmix.export.onnx_export`): ``export(checkpoint_dir, out_dir, fp16=False,
  tile=64, check=True) -> manifest dict`` — one graph per pipeline network, checked and
  cached by content.
- :mod:`unmix.export.contracts` (numpy only): one contract per network (names, static shapes, dtypes
  and its own sample inputs), used by the exporter and the TensorRT builder;
  :class:`ExportContract` / :func:`export_contracts` pair each with its eager torch module.
- :mod:`unmix.export.steps`: the fused DDIM step modules (denoiser, data consistency, constraints and
  the DDIM update in one graph) that the export traces.
- :func:`build_manifest` (:mod:`unmix.export.manifest`): the manifest document; the schema and its
  reader live in :mod:`unmix.runtime.manifest` (the runtime reads it without torch).

Names are imported lazily, so ``import unmix.export`` does not import torch until one is used.
"""
from __future__ import annotations

from unmix._lazy import lazy_getattr

_LAZY = {
    "export": ("unmix.export.onnx_export", "export"),
    "ExportContract": ("unmix.export.onnx_export", "ExportContract"),
    "ExportCheckError": ("unmix.export.onnx_export", "ExportCheckError"),
    "export_contracts": ("unmix.export.onnx_export", "export_contracts"),
    "precision_report": ("unmix.export.onnx_export", "precision_report"),
    "FP16_TOLERANCE": ("unmix.export.onnx_export", "FP16_TOLERANCE"),
    "FP32_TOLERANCE": ("unmix.export.onnx_export", "FP32_TOLERANCE"),
    "NetworkContract": ("unmix.export.contracts", "NetworkContract"),
    "network_contracts": ("unmix.export.contracts", "network_contracts"),
    "build_manifest": ("unmix.export.manifest", "build_manifest"),
    "build_engines": ("unmix.export.tensorrt_build", "build_engines"),
    "check_engines": ("unmix.export.tensorrt_build", "check_engines"),
    "engines_step": ("unmix.export.tensorrt_build", "engines_step"),
    "package_versions": ("unmix.export.manifest", "package_versions"),
}


__getattr__ = lazy_getattr(__name__, _LAZY)

__all__ = list(_LAZY)
