"""The TensorRT engine cache, the import gates and the GPU check script.

On a CPU machine this tests the cache for real (plans and sidecars on disk, with a builder and a
deserializer that are plain functions over a small byte format: the cache's own loop, not stand-ins
for TensorRT), the one-line refusals, and polygraphy's Comparator on ONNX Runtime. The tests that
need TensorRT, cuda-python and a GPU are here too and skip with the reason elsewhere.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from unmix.errors import InputError, UsageError
from unmix.runtime.backends import available_backends, cuda_runtime, load_network, tensorrt_backend
from unmix.runtime.engine_cache import (EngineCacheError, EngineIdentity, EngineSidecar, engine_cache_key,
                                        engine_paths, find_engine, load_or_build, store_engine)
from unmix.runtime.manifest import MANIFEST_FORMAT, file_sha256, load_manifest, write_manifest
from unmix.runtime.network import TensorSpec

REPO = Path(__file__).resolve().parents[1]
BANDS, P, TILE = 6, 3, 8
GPU_OK, GPU_REASON = tensorrt_backend.availability()
needs_gpu = pytest.mark.skipif(not GPU_OK, reason=f"TensorRT backend unavailable here: {GPU_REASON}")

KEY_FIELDS = dict(onnx_sha256="ab" * 32, precision="fp16", input_shapes={"x_t": [1, 3, 8, 8], "t": [1]},
                  trt_version="10.14.1", compute_capability="8.7")


def _identity(**changes) -> EngineIdentity:
    fields = {**KEY_FIELDS, **changes}
    return EngineIdentity("abundance_step", **fields)


# --- a small plan format: the builder and deserializer the cache loop is run with -----------------

MAGIC = b"UNMIXTESTPLAN\0"


class Plans:
    """``build()`` writes MAGIC + payload length + payload; ``deserialize`` returns the payload or None."""

    def __init__(self, payload: bytes = b"engine for abundance_step"):
        self.payload = payload
        self.builds = 0
        self.deserialized = 0

    def build(self):
        self.builds += 1
        return MAGIC + struct.pack("<Q", len(self.payload)) + self.payload, {"strongly_typed": True,
                                                                             "workspace_mb": 64}

    def deserialize(self, plan: bytes):
        self.deserialized += 1
        head = len(MAGIC) + 8
        if len(plan) < head or not plan.startswith(MAGIC):
            return None
        (length,) = struct.unpack("<Q", plan[len(MAGIC):head])
        return plan[head:] if len(plan) == head + length else None


# --- cache key -------------------------------------------------------------------------------------

def test_cache_key_is_stable_and_ignores_input_order():
    key = engine_cache_key(**KEY_FIELDS)
    assert len(key) == 64 and int(key, 16) >= 0
    assert engine_cache_key(**KEY_FIELDS) == key
    reordered = {**KEY_FIELDS, "input_shapes": {"t": (1,), "x_t": (1, 3, 8, 8)}}
    assert engine_cache_key(**reordered) == key
    assert _identity().key == key


@pytest.mark.parametrize("field, value", [
    ("onnx_sha256", "cd" * 32), ("precision", "fp32"), ("input_shapes", {"x_t": [1, 3, 16, 16], "t": [1]}),
    ("input_shapes", {"x_t": [1, 3, 8, 8]}), ("trt_version", "11.0.0"), ("compute_capability", "9.0")])
def test_cache_key_changes_with_every_field(field, value):
    assert engine_cache_key(**{**KEY_FIELDS, field: value}) != engine_cache_key(**KEY_FIELDS)


@pytest.mark.parametrize("field, value, match", [
    ("precision", "int8", "precision"), ("input_shapes", {"x_t": [1, -1, 8, 8]}, "static sizes"),
    ("input_shapes", {}, "non-empty"), ("trt_version", "", "trt_version")])
def test_cache_key_refuses_bad_fields(field, value, match):
    with pytest.raises(UsageError, match=match):
        engine_cache_key(**{**KEY_FIELDS, field: value})


def test_engine_name_must_be_a_plain_stem():
    with pytest.raises(UsageError, match="file-name stem"):
        EngineIdentity("../escape", **KEY_FIELDS)


# --- sidecar and lookup ----------------------------------------------------------------------------

def test_store_then_find_round_trip(tmp_path):
    plans = Plans()
    plan, flags = plans.build()
    sidecar = store_engine(tmp_path, _identity(), plan, build_seconds=1.25, builder_flags=flags)
    plan_path, sidecar_path = engine_paths(tmp_path, "abundance_step", _identity().key)
    assert plan_path.name == f"abundance_step.{_identity().key[:16]}.plan"
    assert plan_path.read_bytes() == plan
    assert EngineSidecar.read(sidecar_path) == sidecar
    document = json.loads(sidecar_path.read_text())
    assert document["key"] == _identity().key and document["trt_version"] == "10.14.1"
    assert document["plan_sha256"] == hashlib.sha256(plan).hexdigest() and document["plan_bytes"] == len(plan)
    assert document["builder_flags"] == {"strongly_typed": True, "workspace_mb": 64}
    assert document["build_seconds"] == 1.25 and document["created"].endswith("Z")
    assert EngineSidecar.from_dict(sidecar.to_dict()) == sidecar
    lookup = find_engine(tmp_path, _identity())
    assert lookup.hit and lookup.plan == plan and lookup.sidecar == sidecar
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([plan_path.name, sidecar_path.name])


def test_empty_cache_builds_then_reuses(tmp_path):
    plans = Plans()
    first = load_or_build(tmp_path, _identity(), plans.deserialize, plans.build)
    assert (first.status, first.engine, plans.builds) == ("built", plans.payload, 1)
    second = load_or_build(tmp_path, _identity(), plans.deserialize, plans.build)
    assert (second.status, second.engine, second.reason, plans.builds) == ("cached", plans.payload, "", 1)
    other = load_or_build(tmp_path, _identity(trt_version="11.0.0"), plans.deserialize, plans.build)
    assert other.status == "built" and plans.builds == 2 and other.plan_path != first.plan_path
    assert first.plan_path.is_file()              # the plan for the other TensorRT version stays


def _stored(tmp_path) -> tuple[Plans, Path, Path]:
    plans = Plans()
    load_or_build(tmp_path, _identity(), plans.deserialize, plans.build)
    plan_path, sidecar_path = engine_paths(tmp_path, "abundance_step", _identity().key)
    return plans, plan_path, sidecar_path


def _edit_sidecar(path: Path, **changes) -> None:
    document = json.loads(path.read_text())
    document.update(changes)
    path.write_text(json.dumps(document))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 7])


@pytest.mark.parametrize("damage, reason", [
    (lambda plan, side: side.unlink(), "sidecar .* is missing"),
    (lambda plan, side: side.write_text("{not json"), "unreadable sidecar"),
    (lambda plan, side: _edit_sidecar(side, format="other/1"), "unreadable sidecar"),
    (lambda plan, side: _edit_sidecar(side, trt_version="10.0.0"), r"trt_version '10.0.0' != '10.14.1'"),
    (lambda plan, side: _edit_sidecar(side, compute_capability="7.2"), r"compute_capability '7.2' != '8.7'"),
    (lambda plan, side: _edit_sidecar(side, input_shapes={"x_t": [1, 3, 16, 16], "t": [1]}), "input_shapes"),
    (lambda plan, side: _truncate(plan), "truncated"),
    (lambda plan, side: plan.write_bytes(plan.read_bytes()[::-1]), "modified"),
])
def test_a_damaged_entry_is_rebuilt_never_run(tmp_path, damage, reason):
    plans, plan_path, sidecar_path = _stored(tmp_path)
    damage(plan_path, sidecar_path)
    assert not find_engine(tmp_path, _identity()).hit
    deserialized = plans.deserialized
    loaded = load_or_build(tmp_path, _identity(), plans.deserialize, plans.build)
    assert loaded.status == "rebuilt" and plans.builds == 2
    assert re.search(reason, loaded.reason), loaded.reason
    assert plans.deserialized == deserialized + 1           # only the rebuilt plan was deserialized
    assert loaded.engine == plans.payload
    assert find_engine(tmp_path, _identity()).hit            # and the cache is whole again


@pytest.mark.parametrize("damage", [lambda plan, side: side.unlink(), lambda plan, side: _truncate(plan),
                                    lambda plan, side: _edit_sidecar(side, trt_version="10.0.0")])
def test_a_damaged_entry_without_a_builder_is_refused(tmp_path, damage):
    plans, plan_path, sidecar_path = _stored(tmp_path)
    damage(plan_path, sidecar_path)
    deserialized = plans.deserialized
    with pytest.raises(EngineCacheError, match="refusing to run it") as caught:
        load_or_build(tmp_path, _identity(), plans.deserialize, build=None)
    assert "\n" not in str(caught.value) and str(plan_path.parent) in str(caught.value)
    assert plans.deserialized == deserialized                # the bad plan was never handed to the runtime


def test_a_plan_the_runtime_cannot_deserialize_is_rebuilt_or_refused(tmp_path):
    """Truncated plan and a sidecar rewritten to match it: the hashes agree, the deserializer says None."""
    plans, plan_path, sidecar_path = _stored(tmp_path)
    _truncate(plan_path)
    data = plan_path.read_bytes()
    _edit_sidecar(sidecar_path, plan_sha256=hashlib.sha256(data).hexdigest(), plan_bytes=len(data))
    assert find_engine(tmp_path, _identity()).hit            # the file checks pass ...
    assert plans.deserialize(data) is None                   # ... the runtime refuses it
    with pytest.raises(EngineCacheError, match="could not be deserialized.*refusing to run it"):
        load_or_build(tmp_path, _identity(), plans.deserialize, build=None)
    loaded = load_or_build(tmp_path, _identity(), plans.deserialize, plans.build)
    assert loaded.status == "rebuilt" and "could not be deserialized" in loaded.reason
    assert plan_path.read_bytes() == plans.build()[0]


def test_a_build_the_runtime_refuses_is_an_error(tmp_path):
    plans = Plans()
    with pytest.raises(EngineCacheError, match="freshly built plan"):
        load_or_build(tmp_path, _identity(), lambda plan: None, plans.build)


def test_store_refuses_an_empty_plan(tmp_path):
    with pytest.raises(UsageError, match="non-empty"):
        store_engine(tmp_path, _identity(), b"", 0.0)


# --- import gates ----------------------------------------------------------------------------------

def _tiny_model(folder: Path) -> Path:
    """A model folder with one graph: cube (1, B, T, T) -> 1x1 conv -> softmax -> abundances."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    from unmix.diffusion.schedule import Schedule

    folder.mkdir(parents=True, exist_ok=True)
    weight = np.random.default_rng(3).normal(size=(P, BANDS, 1, 1)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["cube", "weight"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["abundances"], axis=1)], "tiny",
        [helper.make_tensor_value_info("cube", TensorProto.FLOAT, [1, BANDS, TILE, TILE])],
        [helper.make_tensor_value_info("abundances", TensorProto.FLOAT, [1, P, TILE, TILE])],
        [numpy_helper.from_array(weight, "weight")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    onnx.save(model, str(folder / "hybridstu.onnx"))
    schedule = Schedule(kind="linear", T=50)
    write_manifest(folder, {
        "format": MANIFEST_FORMAT,
        "networks": {"hybridstu": {
            "file": "hybridstu.onnx", "sha256": file_sha256(folder / "hybridstu.onnx"), "opset": 20,
            "precision": "fp32",
            "inputs": [{"name": "cube", "shape": [1, BANDS, TILE, TILE], "dtype": "float32"}],
            "outputs": [{"name": "abundances", "shape": [1, P, TILE, TILE], "dtype": "float32"}]}},
        "schedule": {**schedule.to_config(), "betas": schedule.betas.tolist()},
        "inference": {"steps": 5, "t0": 20, "eta": 0.0, "samples": 1, "rounds": 1, "tile": TILE},
        "sensor": {"bands": BANDS, "wavelengths": np.linspace(450.0, 950.0, BANDS).tolist()},
        "endmembers": {"names": ["soil", "tree", "water"],
                       "spectra": np.linspace(0.1, 0.9, P * BANDS).reshape(P, BANDS).tolist()},
        "versions": {"unmix": "0.1.0"}})
    return folder


@pytest.mark.skipif(GPU_OK, reason="this machine has TensorRT, cuda-python and a GPU")
def test_load_network_tensorrt_says_what_is_missing(tmp_path):
    folder = _tiny_model(tmp_path / "model")
    entry = load_manifest(folder).network("hybridstu")
    for device in ("cuda", "cpu"):
        with pytest.raises(UsageError) as caught:
            load_network(folder / "hybridstu.onnx", entry, backend="tensorrt", device=device)
        message = str(caught.value)
        assert "\n" not in message
        assert message.startswith("the tensorrt backend needs TensorRT, cuda-python and an NVIDIA GPU")
        assert GPU_REASON.removeprefix("missing ") in message and "pip install 'unmix[tensorrt]'" in message
    assert "tensorrt" not in available_backends()


@pytest.mark.skipif(GPU_OK, reason="this machine has TensorRT, cuda-python and a GPU")
def test_engine_build_says_tensorrt_is_missing(tmp_path):
    from unmix.export.tensorrt_build import build_engines, engines_step

    folder = _tiny_model(tmp_path / "model")
    lines: list[str] = []
    assert engines_step(folder, required=False, progress=lines.append) is None
    assert len(lines) == 1 and lines[0].startswith("engines: skipped") and GPU_REASON in lines[0]
    if importlib.util.find_spec("tensorrt") is None:
        for call in (lambda: build_engines(folder), lambda: engines_step(folder, required=True)):
            with pytest.raises(UsageError, match=r"^TensorRT is not installed: pip install 'unmix\[tensorrt\]' "
                                                 r"on a machine with an NVIDIA GPU"):
                call()
    assert not (folder / "engines").exists()


def test_tensorrt_backend_refuses_a_cpu_device():
    with pytest.raises(UsageError, match="runs on 'cuda' or 'cuda:N', got device 'cpu'"):
        tensorrt_backend._device_index("cpu")
    assert tensorrt_backend._device_index("cuda:1") == 1 and tensorrt_backend._device_index("cuda") == 0


# --- checks without TensorRT: feeds, numpy comparison, polygraphy's Comparator on ONNX Runtime -----

def test_sample_feeds_match_the_manifest(tmp_path):
    from unmix.export.tensorrt_build import sample_feeds

    manifest = load_manifest(_tiny_model(tmp_path / "model"))
    feeds = sample_feeds(manifest, "hybridstu", seed=4)
    assert set(feeds) == {"cube"} and manifest.network("hybridstu").inputs["cube"].accepts(feeds["cube"])
    assert 0.05 < feeds["cube"].mean() < 0.95 and np.isfinite(feeds["cube"]).all()
    assert np.array_equal(sample_feeds(manifest, "hybridstu", seed=4)["cube"], feeds["cube"])


def test_compare_outputs_figures():
    from unmix.export.tensorrt_build import compare_outputs

    reference = {"y": np.zeros((2, 3), np.float32)}
    candidate = {"y": np.array([[0, 0.001, 0], [0, 0, -0.004]], np.float32)}
    figures = compare_outputs(reference, candidate, atol=5e-3)
    assert figures["passed"] and figures["max_abs"] == pytest.approx(0.004)
    assert figures["mean_abs"] == pytest.approx(0.005 / 6)
    assert not compare_outputs(reference, candidate, atol=1e-3)["passed"]
    assert not compare_outputs(reference, {"y": np.full((2, 3), np.nan, np.float32)}, atol=1.0)["passed"]
    with pytest.raises(InputError, match="missing"):
        compare_outputs(reference, {}, atol=1.0)


def test_polygraphy_comparator_on_onnxruntime(tmp_path):
    pytest.importorskip("polygraphy")
    pytest.importorskip("onnxruntime")
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    from unmix.export.tensorrt_build import polygraphy_compare, sample_feeds

    folder = _tiny_model(tmp_path / "model")
    manifest = load_manifest(folder)
    feeds = sample_feeds(manifest, "hybridstu")
    path = str(folder / "hybridstu.onnx")
    runners = [OnnxrtRunner(SessionFromOnnx(path), name="a"), OnnxrtRunner(SessionFromOnnx(path), name="b")]
    figures = polygraphy_compare(runners, feeds, atol=1e-6)
    assert figures["polygraphy_passed"] and figures["passed"] and figures["max_abs"] == 0.0
    assert figures["compared_with"] == "polygraphy Comparator"
    reference = load_network(path, manifest.network("hybridstu"))(feeds)["abundances"]
    assert reference.shape == (1, P, TILE, TILE)


# --- the GPU check script --------------------------------------------------------------------------

def test_gpu_check_script_parses():
    script = REPO / "benchmarks" / "gpu_check.sh"
    assert script.is_file()
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash not found")
    result = subprocess.run([bash, "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    text = script.read_text()
    for section in ("nvidia-smi", "train", "pipeline", "ort-cuda", "cuda-python", "tensorrt", "summary"):
        assert section in text


# --- GPU: TensorRT + cuda-python + an NVIDIA GPU ---------------------------------------------------

def test_cuda_python_self_test():
    try:
        cudart = cuda_runtime.import_cudart()
    except UsageError as exc:
        pytest.skip(str(exc))
    try:
        count = cuda_runtime.call(cudart, "cudaGetDeviceCount", cudart.cudaGetDeviceCount())
    except RuntimeError as exc:
        pytest.skip(f"no CUDA device: {exc}")
    if not count:
        pytest.skip("no CUDA device")
    report = cuda_runtime.self_test(nbytes=1 << 16)
    assert report["ok"] and report["round_trips"] == 2


def _step_model(folder: Path) -> tuple[Path, dict, dict]:
    """x_prev = 0.5 * x_t + t * noise (a DDIM-step-shaped graph)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    shape = [1, P, TILE, TILE]
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x_t", "half"], ["a"]), helper.make_node("Mul", ["noise", "t"], ["b"]),
         helper.make_node("Add", ["a", "b"], ["x_prev"])], "step",
        [helper.make_tensor_value_info("x_t", TensorProto.FLOAT, shape),
         helper.make_tensor_value_info("t", TensorProto.FLOAT, [1]),
         helper.make_tensor_value_info("noise", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("x_prev", TensorProto.FLOAT, shape)],
        [numpy_helper.from_array(np.array([0.5], np.float32), "half")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "step.onnx"
    onnx.save(model, str(path))
    spec = TensorSpec(tuple(shape))
    return path, {"x_t": spec, "t": TensorSpec((1,)), "noise": spec}, {"x_prev": spec}


@needs_gpu
def test_tensorrt_engine_matches_onnxruntime_and_is_cached(tmp_path):
    from unmix.export.tensorrt_build import build_engines, check_engines

    folder = _tiny_model(tmp_path / "model")
    first = build_engines(folder)
    assert first["hybridstu"]["status"] == "built" and (folder / "engines" / "timing.cache").is_file()
    assert build_engines(folder)["hybridstu"]["status"] == "cached"
    report = check_engines(folder, use_polygraphy=False)
    assert report["hybridstu"]["passed"] and report["hybridstu"]["max_abs"] < 1e-3
    manifest = load_manifest(folder)
    network = load_network(folder / "hybridstu.onnx", manifest.network("hybridstu"), backend="tensorrt",
                           device="cuda")
    assert network.cache_status == "cached"
    plan = Path(first["hybridstu"]["plan"])
    plan.write_bytes(plan.read_bytes()[:100])               # truncated: rebuilt from the graph
    again = load_network(folder / "hybridstu.onnx", manifest.network("hybridstu"), backend="tensorrt",
                         device="cuda")
    assert again.cache_status == "rebuilt"


@needs_gpu
def test_tensorrt_step_and_shared_arena(tmp_path):
    path, inputs, outputs = _step_model(tmp_path / "model")
    first = tensorrt_backend.open_network(path, inputs, outputs, name="step")
    second = tensorrt_backend.open_network(path, inputs, outputs, name="step")
    assert first._dev.arena is second._dev.arena
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((1, P, TILE, TILE)).astype(np.float32)
    step = {"t": np.array([0.1], np.float32), "noise": rng.standard_normal((1, P, TILE, TILE)).astype(np.float32)}
    for network in (first, second):
        once = network({"x_t": x0, **step})["x_prev"]
        np.testing.assert_allclose(once, 0.5 * x0 + step["t"][0] * step["noise"], atol=1e-6)
