"""FLOPs from an ONNX graph, and of the whole pipeline from its calls.

A multiply-add counts as 2 FLOPs: Conv ``2 * out_elements * (C_in / group) * prod(kernel)``, MatMul
``2 * out_elements * K``, Gemm ``2 * M * N * K``. Element-wise and normalisation ops count one FLOP per
output element and are kept apart from the "matmul" figure. The pipeline's FLOPs per pixel are the
per-call FLOPs times the calls it makes per tile, over the cube's pixels.

This module imports nothing else of ``benchmarks`` (the tests load it by path).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

#: Ops counted as one FLOP per output element (element-wise arithmetic, activations, normalisation).
ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Exp", "Log", "Sigmoid", "Tanh", "Relu", "LeakyRelu",
               "Clip", "Softmax", "Cos", "Sin", "Neg", "Abs", "Max", "Min", "Erf", "Reciprocal", "Where",
               "InstanceNormalization", "GroupNormalization", "LayerNormalization", "BatchNormalization",
               "ReduceSum", "ReduceMean", "ReduceMax", "CumSum", "Resize"}


def _shapes(model) -> dict[str, tuple]:
    """Every tensor's static shape after ONNX shape inference (None for an unknown dimension)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    shapes: dict[str, tuple] = {}
    graph = inferred.graph
    for value in (*graph.input, *graph.value_info, *graph.output):
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
    for tensor in graph.initializer:
        shapes[tensor.name] = tuple(tensor.dims)
    for node in graph.node:                     # Constant nodes carry their tensor as an attribute
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    shapes[node.output[0]] = tuple(attribute.t.dims)
    return shapes


def _size(shape: tuple | None) -> int | None:
    if shape is None or any(d is None for d in shape):
        return None
    return int(np.prod(shape, dtype=np.int64)) if shape else 1


def count_flops(model) -> dict:
    """FLOPs of one run of an ONNX graph (a ``ModelProto`` or a path).

    Multiply-adds count as 2 FLOPs: Conv / ConvTranspose ``2 * out_elements * (C_in / group) *
    prod(kernel)``, MatMul ``2 * out_elements * K``, Gemm ``2 * M * N * K``. The bias of a Conv or Gemm
    and the ops in :data:`ELEMENTWISE` count one FLOP per output element, reported apart
    (``other_flops``). Returns ``{"matmul_flops", "other_flops", "total_flops", "by_op" (op type ->
    FLOPs), "uncounted" (names of nodes whose shapes inference left unknown)}``.
    """
    import onnx

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    shapes = _shapes(model)
    by_op: dict[str, int] = {}
    matmul = other = 0
    uncounted = []
    for node in model.graph.node:
        op = node.op_type
        out = shapes.get(node.output[0]) if node.output else None
        out_size = _size(out)
        flops = extra = 0
        if op in ("Conv", "ConvTranspose"):
            weight = shapes.get(node.input[1])
            if out_size is None or _size(weight) is None:
                uncounted.append(node.name or op)
                continue
            if op == "Conv":                     # weight (C_out, C_in / group, *kernel)
                flops = 2 * out_size * int(np.prod(weight[1:]))
            else:                                # weight (C_in, C_out / group, *kernel): per input element
                source = _size(shapes.get(node.input[0]))
                if source is None:
                    uncounted.append(node.name or op)
                    continue
                flops = 2 * source * int(np.prod(weight[1:]))
            if len(node.input) > 2 and node.input[2]:
                extra = out_size
        elif op == "MatMul":
            left = shapes.get(node.input[0])
            if out_size is None or not left or left[-1] is None:
                uncounted.append(node.name or op)
                continue
            flops = 2 * out_size * int(left[-1])
        elif op == "Gemm":
            left = shapes.get(node.input[0])
            if out_size is None or not left or None in left:
                uncounted.append(node.name or op)
                continue
            trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
            inner = left[0] if trans_a else left[1]
            flops = 2 * out_size * int(inner)
            if len(node.input) > 2 and node.input[2]:
                extra = out_size
        elif op in ELEMENTWISE:
            if out_size is None:
                uncounted.append(node.name or op)
                continue
            extra = out_size
        else:
            continue
        matmul += flops
        other += extra
        by_op[op] = by_op.get(op, 0) + flops + extra
    return {"matmul_flops": matmul, "other_flops": other, "total_flops": matmul + other,
            "by_op": dict(sorted(by_op.items(), key=lambda item: -item[1])), "uncounted": uncounted}


def pipeline_flops(flops: Mapping, settings: Mapping, height: int, width: int) -> dict:
    """FLOPs of the whole pipeline on an ``height x width`` cube at ``settings`` (PipelineConfig keys),
    from each network's per-call FLOPs and the calls the pipeline makes: HybridSTU once per tile,
    ``steps * samples * rounds`` fused 2D steps per tile, ``spectra_steps * rounds`` 1D steps when
    ``refine_spectra``. Host arithmetic (blending, statistics, projection) is not counted."""
    from unmix.runtime.tiling import tile_grid

    tiles = len(tile_grid(height, width, settings["tile"], settings["overlap"]))
    calls = {"hybridstu": tiles,
             "abundance_step": tiles * settings["steps"] * settings["samples"] * settings["rounds"],
             "spectra_step": settings["spectra_steps"] * settings["rounds"] if settings["refine_spectra"] else 0}
    total = sum(flops[name]["total_flops"] * count for name, count in calls.items())
    matmul = sum(flops[name]["matmul_flops"] * count for name, count in calls.items())
    pixels = height * width
    return {"cube": [height, width], "tiles": tiles, "calls": calls, "total_flops": total,
            "flops_per_pixel": total / pixels, "matmul_flops_per_pixel": matmul / pixels}
