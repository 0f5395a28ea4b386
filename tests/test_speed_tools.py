"""The FLOP counter and the pipeline FLOP arithmetic of benchmarks/speedlib/flops.py, on tiny graphs counted by hand."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

SPEED = Path(__file__).resolve().parents[1] / "benchmarks" / "speedlib" / "flops.py"


@pytest.fixture(scope="module")
def speed():
    spec = importlib.util.spec_from_file_location("unmix_speed_flops", SPEED)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _model(nodes, inputs, outputs, initializers=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _float(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def test_conv_flops_by_hand(speed):
    # x (1, 3, 8, 8), w (4, 3, 3, 3), pad 1 -> y (1, 4, 8, 8): 256 outputs x 27 multiply-adds x 2 = 13,824
    weight = numpy_helper.from_array(np.zeros((4, 3, 3, 3), np.float32), "w")
    bias = numpy_helper.from_array(np.zeros(4, np.float32), "b")
    conv = helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1])
    found = speed.count_flops(_model([conv], [_float("x", [1, 3, 8, 8])], [_float("y", None)], [weight, bias]))
    assert found["matmul_flops"] == 2 * 256 * 27 == 13_824
    assert found["other_flops"] == 256                       # the bias, one add per output
    assert found["by_op"] == {"Conv": 13_824 + 256}
    assert found["uncounted"] == []


def test_grouped_and_3d_conv_flops_by_hand(speed):
    # grouped: x (1, 4, 6, 6), w (8, 2, 1, 1), group 2 -> y (1, 8, 6, 6): 288 outputs x 2 MACs x 2 = 1,152
    grouped = helper.make_node("Conv", ["x", "w"], ["y"], group=2)
    # 3D: v (1, 1, 5, 4, 4), k (2, 1, 3, 1, 1), no pad -> z (1, 2, 3, 4, 4): 96 outputs x 3 MACs x 2 = 576
    volume = helper.make_node("Conv", ["v", "k"], ["z"])
    model = _model([grouped, volume], [_float("x", [1, 4, 6, 6]), _float("v", [1, 1, 5, 4, 4])],
                   [_float("y", None), _float("z", None)],
                   [numpy_helper.from_array(np.zeros((8, 2, 1, 1), np.float32), "w"),
                    numpy_helper.from_array(np.zeros((2, 1, 3, 1, 1), np.float32), "k")])
    found = speed.count_flops(model)
    assert found["matmul_flops"] == 1_152 + 576
    assert found["other_flops"] == 0


def test_matmul_after_reshape_and_gemm_by_hand(speed):
    # a (2, 3, 5) reshaped to (6, 5) by a constant shape, then (6, 5) @ (5, 7): 42 outputs x 5 x 2 = 420
    shape = numpy_helper.from_array(np.array([6, 5], np.int64), "shape")
    right = numpy_helper.from_array(np.zeros((5, 7), np.float32), "r")
    reshape = helper.make_node("Reshape", ["a", "shape"], ["a2"])
    matmul = helper.make_node("MatMul", ["a2", "r"], ["m"])
    # Gemm with transA: g (4, 6)^T (6, 4) @ h (4, 3) -> (6, 3): 18 outputs x 4 x 2 = 144, + C: 18
    gemm = helper.make_node("Gemm", ["g", "h", "c"], ["o"], transA=1)
    # element-wise: m + m -> 42 FLOPs
    add = helper.make_node("Add", ["m", "m"], ["s"])
    model = _model([reshape, matmul, gemm, add], [_float("a", [2, 3, 5]), _float("g", [4, 6])],
                   [_float("s", None), _float("o", None)],
                   [shape, right, numpy_helper.from_array(np.zeros((4, 3), np.float32), "h"),
                    numpy_helper.from_array(np.zeros(3, np.float32), "c")])
    found = speed.count_flops(model)
    assert found["by_op"]["MatMul"] == 420
    assert found["by_op"]["Gemm"] == 144 + 18
    assert found["by_op"]["Add"] == 42
    assert found["matmul_flops"] == 420 + 144
    assert found["total_flops"] == 420 + 144 + 18 + 42
    assert "Reshape" not in found["by_op"]


def test_unknown_shapes_are_listed_not_guessed(speed):
    matmul = helper.make_node("MatMul", ["a", "b"], ["c"], name="free")
    model = _model([matmul], [_float("a", ["n", "k"]), _float("b", ["k", 3])], [_float("c", None)])
    found = speed.count_flops(model)
    assert found["uncounted"] == ["free"]
    assert found["total_flops"] == 0


def test_pipeline_flops_counts_calls(speed):
    flops = {"hybridstu": {"total_flops": 1000, "matmul_flops": 900},
             "abundance_step": {"total_flops": 100, "matmul_flops": 80},
             "spectra_step": {"total_flops": 7, "matmul_flops": 5}}
    settings = {"tile": 64, "overlap": 16, "steps": 10, "samples": 1, "rounds": 1, "spectra_steps": 10,
                "refine_spectra": False}
    # 256 / stride 48: starts 0, 48, 96, 144, 192 -> 5 x 5 = 25 tiles
    found = speed.pipeline_flops(flops, settings, 256, 256)
    assert found["tiles"] == 25
    assert found["calls"] == {"hybridstu": 25, "abundance_step": 250, "spectra_step": 0}
    assert found["total_flops"] == 25 * 1000 + 250 * 100
    assert found["flops_per_pixel"] == pytest.approx(50_000 / 65536)
    with_spectra = speed.pipeline_flops(flops, {**settings, "refine_spectra": True, "rounds": 2}, 256, 256)
    assert with_spectra["calls"]["spectra_step"] == 20
    assert with_spectra["total_flops"] == 25 * 1000 + 500 * 100 + 20 * 7


def test_exported_hybridstu_flops_match_the_torch_modules(speed, tmp_path):
    """A real exported network: the counter's multiply-add FLOPs equal those of the torch Conv layers
    (output elements x (C_in / groups) x kernel volume x 2, read from forward hooks)."""
    torch = pytest.importorskip("torch")
    from unmix.train.models import HybridSTU

    model = HybridSTU(bands=12, endmembers=3, reduced_bands=8, width=4).eval()
    expected = []

    def hook(module, inputs, output):
        kernel = int(np.prod(module.kernel_size))
        expected.append(2 * output.numel() * (module.in_channels // module.groups) * kernel)

    handles = [module.register_forward_hook(hook) for module in model.modules()
               if isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d))]
    example = torch.rand(1, 12, 16, 16)
    with torch.no_grad():
        model(example)
    for handle in handles:                       # the export traces the model again
        handle.remove()
    path = tmp_path / "h.onnx"
    torch.onnx.export(model, example, str(path), input_names=["cube"], output_names=["abundances"],
                      opset_version=20, dynamo=True)   # as unmix.export does
    found = speed.count_flops(path)
    assert found["uncounted"] == []
    assert len(expected) >= 3
    assert found["matmul_flops"] == int(sum(expected))
