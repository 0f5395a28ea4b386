"""int8 variants of exported graphs: post-training static quantisation calibrated on the training scene.

The tool is ONNX Runtime's maintained quantiser (``onnxruntime.quantization.quantize_static``), not
code of ours: QDQ format, weights signed int8 per output channel, activations unsigned int8 per
tensor, min-max calibration, no pre-processing pass (the exported graphs are already shape-inferred and
slimmed; the quantiser's symbolic shape inference does not handle the fused step graphs). Only convolutions are quantised (:data:`QUANTISED_OPS`): they carry
almost all of the arithmetic, while the fused update around the denoiser (schedule arithmetic, the
simplex projection's small matrix products) keeps float32, so the constraints stay exact.

Calibration feeds (:func:`calibration_feeds`) are the networks' real inputs: the fp32 pipeline is run
on ONNX Runtime over a window of the calibration scene (by default the checkpoint's training scene) with
every network call recorded, the 1D spectra loop switched on so that all three networks are seen, and
:data:`CALIBRATION_CALLS` calls per network kept, evenly spaced. The int8 graph is then compared with
the fp32 one on every recorded feed (max and mean absolute output difference, recorded in the
manifest's ``variants.int8.checks``); a non-finite output is refused.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from unmix.errors import UsageError

__all__ = ["CALIBRATION_CALLS", "CALIBRATION_WINDOW", "QUANTISED_OPS", "calibration_feeds", "quantize_graph"]

#: Network calls kept per network for calibration (evenly spaced over those the pipeline makes).
CALIBRATION_CALLS = 24
#: The side of the calibration window, centred in the scene (pixels; the whole scene when smaller).
CALIBRATION_WINDOW = 128
#: The operator types quantised.
QUANTISED_OPS = ("Conv", "ConvTranspose")


class _Recorder:
    """A network that records a copy of every feed it is called with."""

    def __init__(self, network):
        self.network = network
        self.inputs, self.outputs, self.name = network.inputs, network.outputs, network.name
        self.calls: list[dict[str, np.ndarray]] = []

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls.append({key: np.array(feeds[key], copy=True) for key in self.inputs})
        return self.network(feeds)


def calibration_feeds(model_dir: str | Path, scene, calls: int = CALIBRATION_CALLS,
                      window: int = CALIBRATION_WINDOW, threads: int | None = None) -> dict[str, list[dict]]:
    """Per network, ``calls`` feeds recorded from the fp32 pipeline on a centred window of ``scene``."""
    from unmix.io.scene import Scene
    from unmix.runtime.unmixer import Unmixer

    unmixer = Unmixer.load(model_dir, backend="onnxruntime", threads=threads, precision="fp32")
    H, W, _ = scene.shape
    tile = int(unmixer.manifest.inference["tile"])
    side_h, side_w = min(H, max(window, tile)), min(W, max(window, tile))
    r0, c0 = (H - side_h) // 2, (W - side_w) // 2
    crop = Scene.from_array(scene.read_tile(slice(r0, r0 + side_h), slice(c0, c0 + side_w)), name=scene.name,
                            wavelengths=scene.wavelengths)
    recorders = {name: _Recorder(network) for name, network in unmixer.networks.items()}
    from unmix.runtime.pipeline import run_pipeline

    config = unmixer.settings(refine_spectra=True)
    run_pipeline(crop, recorders, unmixer.schedule, config, endmembers=unmixer.manifest.endmembers)
    feeds = {}
    for name, recorder in recorders.items():
        if not recorder.calls:
            raise UsageError(f"the calibration run made no {name} call; cannot calibrate its int8 graph")
        keep = np.unique(np.linspace(0, len(recorder.calls) - 1, min(calls, len(recorder.calls))).round().astype(int))
        feeds[name] = [recorder.calls[i] for i in keep]
    return feeds


def quantize_graph(source: Path, target: Path, feeds: list[dict[str, np.ndarray]],
                   outputs: list[str]) -> dict[str, Any]:
    """Write the int8 (QDQ) graph of ``source`` to ``target``, calibrated on ``feeds``; return its record
    (calibration settings and the check against the fp32 graph on the same feeds)."""
    from unmix.export.onnx_export import ExportCheckError

    try:
        import onnxruntime as ort
        from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                              quantize_static)
    except ImportError:
        raise UsageError("int8 export needs onnxruntime's quantiser: pip install 'unmix[cpu]'") from None

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(feeds)

        def get_next(self):
            return next(self.items, None)

    started = time.perf_counter()
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantiser logs a pre-processing advice on the root logger each call
    try:
        quantize_static(str(source), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=list(QUANTISED_OPS))
    finally:
        root.setLevel(level)
    seconds = time.perf_counter() - started
    options = ort.SessionOptions()
    options.log_severity_level = 3
    reference = ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    quantised = ort.InferenceSession(str(target), options, providers=["CPUExecutionProvider"])
    worst = total = 0.0
    count = 0
    for feed in feeds:
        for a, b in zip(reference.run(outputs, feed), quantised.run(outputs, feed)):
            if not np.isfinite(b).all():
                raise ExportCheckError(f"{target}: the int8 graph gives non-finite outputs on a calibration feed")
            difference = np.abs(b.astype(np.float64) - a)
            worst, total, count = max(worst, float(difference.max())), total + float(difference.sum()), count + a.size
    return {"calibration": {"tool": f"onnxruntime.quantization.quantize_static (onnxruntime {ort.__version__})",
                            "format": "QDQ", "weights": "int8, per channel", "activations": "uint8, per tensor",
                            "method": "MinMax", "operators": list(QUANTISED_OPS), "feeds": len(feeds)},
            "checks": {"reference": "the fp32 graph on ONNX Runtime CPU, on the calibration feeds",
                       "max_abs": worst, "mean_abs": total / max(count, 1)},
            "quantize_s": round(seconds, 3)}


def describe(record: Mapping[str, Any]) -> str:
    """One line for the export log."""
    checks = record["checks"]
    return (f"max abs difference from fp32 {checks['max_abs']:.2g} (mean {checks['mean_abs']:.2g}) on "
            f"{record['calibration']['feeds']} calibration feeds")

