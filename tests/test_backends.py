"""unmix.runtime.manifest and unmix.runtime.backends, without torch.

The graphs here are written with ``onnx.helper`` (no torch) and run for real on ONNX Runtime and
OpenVINO; the export side (torch) is tested in test_export.py.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from unmix.errors import InputError, MissingInputError, UsageError
from unmix.io.scene import Scene
from unmix.runtime.backends import available_backends, load_network, load_networks
from unmix.runtime.manifest import (MANIFEST_FORMAT, ManifestError, check_cube, file_sha256, load_manifest,
                                    wavelength_tolerance, write_manifest)
from unmix.runtime.network import NetworkSpec, TensorSpec

onnx = pytest.importorskip("onnx")
BACKENDS = ("onnxruntime", "openvino")
BANDS, P, TILE = 6, 3, 8
WAVELENGTHS = np.linspace(450.0, 950.0, BANDS)   # 100 nm spacing: tolerance 10 nm
REPO = Path(__file__).resolve().parents[1]


def _weights() -> np.ndarray:
    return np.random.default_rng(3).normal(size=(P, BANDS, 1, 1)).astype(np.float32)


def _write_graph(path: Path, bands: int = BANDS) -> None:
    """cube (1, B, T, T) -> 1x1 conv to p channels -> softmax over p -> abundances (1, p, T, T)."""
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(_weights()[:, :bands], "weight")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["cube", "weight"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["abundances"], axis=1)],
        "tiny_hybridstu",
        [helper.make_tensor_value_info("cube", TensorProto.FLOAT, [1, bands, TILE, TILE])],
        [helper.make_tensor_value_info("abundances", TensorProto.FLOAT, [1, P, TILE, TILE])],
        [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _expected(cube: np.ndarray) -> np.ndarray:
    logits = np.einsum("pb,nbhw->nphw", _weights()[:, :, 0, 0].astype(np.float64), cube.astype(np.float64))
    logits -= logits.max(axis=1, keepdims=True)
    return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def _document(sha: str, file: str = "hybridstu.onnx") -> dict:
    from unmix.diffusion.schedule import Schedule

    schedule = Schedule(kind="linear", T=50)
    return {
        "format": MANIFEST_FORMAT,
        "networks": {"hybridstu": {
            "file": file, "sha256": sha, "opset": 20, "precision": "fp32",
            "inputs": [{"name": "cube", "shape": [1, BANDS, TILE, TILE], "dtype": "float32"}],
            "outputs": [{"name": "abundances", "shape": [1, P, TILE, TILE], "dtype": "float32"}]}},
        "schedule": {**schedule.to_config(), "betas": schedule.betas.tolist()},
        "inference": {"steps": 5, "t0": 20, "eta": 0.0, "samples": 1, "rounds": 1, "tile": TILE},
        "sensor": {"bands": BANDS, "wavelengths": WAVELENGTHS.tolist()},
        "endmembers": {"names": ["soil", "tree", "water"],
                       "spectra": np.linspace(0.1, 0.9, P * BANDS).reshape(P, BANDS).tolist()},
        "versions": {"unmix": "0.1.0", "onnxruntime": None},
    }


@pytest.fixture
def model_dir(tmp_path) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    _write_graph(folder / "hybridstu.onnx")
    write_manifest(folder, _document(file_sha256(folder / "hybridstu.onnx")))
    return folder


def _edit(folder: Path, change) -> None:
    path = folder / "manifest.json"
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


def _cube(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((1, BANDS, TILE, TILE)).astype(np.float32)


# --- manifest ------------------------------------------------------------------------------------

def test_manifest_round_trip(model_dir):
    manifest = load_manifest(model_dir, verify=True)
    entry = manifest.network("hybridstu")
    assert entry.inputs == {"cube": TensorSpec((1, BANDS, TILE, TILE))}
    assert entry.outputs == {"abundances": TensorSpec((1, P, TILE, TILE))}
    assert entry.opset == 20 and entry.precision == "fp32" and entry.path == model_dir / "hybridstu.onnx"
    assert manifest.bands == BANDS and np.allclose(manifest.wavelengths, WAVELENGTHS)
    assert manifest.endmembers.shape == (P, BANDS) and manifest.endmembers.dtype == np.float32
    assert manifest.endmember_names == ["soil", "tree", "water"] and manifest.endmember_count == 3
    assert manifest.schedule == {"kind": "linear", "T": 50, "beta_start": 1e-4, "beta_end": 0.02,
                                 "prediction": "epsilon"}
    assert manifest.betas.shape == (50,) and manifest.betas[0] == pytest.approx(1e-4)
    assert manifest.inference["tile"] == TILE
    assert load_manifest(model_dir / "manifest.json").bands == BANDS        # the file itself works too
    assert sorted(p.name for p in model_dir.iterdir()) == ["hybridstu.onnx", "manifest.json"]  # no temp left


@pytest.mark.parametrize("change, key", [
    (lambda d: d.pop("sensor"), "'sensor'"),
    (lambda d: d["networks"]["hybridstu"].pop("sha256"), "'networks.hybridstu.sha256'"),
    (lambda d: d["sensor"].update(bands="6"), "'sensor.bands'"),
    (lambda d: d["sensor"].update(wavelengths=[1.0, 2.0]), "'sensor.wavelengths'"),
    (lambda d: d.update(format="unmix-manifest/2"), "'format'"),
    (lambda d: d["networks"]["hybridstu"]["inputs"][0].update(shape=[1, BANDS, 0, TILE]),
     "'networks.hybridstu.inputs[0].shape'"),
    (lambda d: d["networks"]["hybridstu"]["inputs"][0].update(shape="1x6x8x8"),
     "'networks.hybridstu.inputs[0].shape'"),
    (lambda d: d["networks"]["hybridstu"]["outputs"][0].update(dtype="float64"),
     "'networks.hybridstu.outputs[0].dtype'"),
    (lambda d: d["networks"]["hybridstu"].update(precision="int8"), "'networks.hybridstu.precision'"),
    (lambda d: d["networks"]["hybridstu"].update(sha256="ABC"), "'networks.hybridstu.sha256'"),
    (lambda d: d["endmembers"].update(spectra=[[0.1] * BANDS] * 2), "'endmembers.spectra'"),
    (lambda d: d["schedule"].update(kind="quadratic"), "'schedule'"),
    (lambda d: d["schedule"].update(betas=[0.1] * 3), "'schedule.betas'"),
    (lambda d: d["schedule"]["betas"].__setitem__(7, d["schedule"]["betas"][7] * 1.001), "'schedule.betas'"),
    (lambda d: d["schedule"].update(kind="cosine"), "'schedule.betas': expected the betas of the cosine schedule"),
    (lambda d: d["inference"].update(t0=50), "'inference.t0'"),
    (lambda d: d["inference"].update(eta=1.5), "'inference.eta'"),
    (lambda d: d["versions"].update(torch=2), "'versions.torch'"),
])
def test_manifest_refusals_name_the_file_and_key(model_dir, change, key):
    _edit(model_dir, change)
    with pytest.raises(ManifestError) as info:
        load_manifest(model_dir)
    message = str(info.value)
    assert message.startswith(str(model_dir / "manifest.json") + ": key ") and key in message
    assert "\n" not in message


@pytest.mark.parametrize("file", ["../hybridstu.onnx", "sub/../../hybridstu.onnx"])
def test_manifest_refuses_a_path_that_climbs_out(model_dir, file):
    (model_dir.parent / "hybridstu.onnx").write_bytes((model_dir / "hybridstu.onnx").read_bytes())
    _edit(model_dir, lambda d: d["networks"]["hybridstu"].update(file=file))
    with pytest.raises(ManifestError, match=r"key 'networks.hybridstu.file': expected a file name inside"):
        load_manifest(model_dir)


def test_manifest_refuses_an_absolute_path(model_dir):
    absolute = str((model_dir / "hybridstu.onnx").resolve())
    _edit(model_dir, lambda d: d["networks"]["hybridstu"].update(file=absolute))
    with pytest.raises(ManifestError, match="not an absolute path"):
        load_manifest(model_dir)


def test_manifest_refuses_a_symlink_out_of_the_folder(model_dir, tmp_path):
    outside = tmp_path / "elsewhere.onnx"
    os.replace(model_dir / "hybridstu.onnx", outside)
    (model_dir / "hybridstu.onnx").symlink_to(outside)
    with pytest.raises(ManifestError, match="a symlink out of it"):
        load_manifest(model_dir)


def test_manifest_accepts_a_symlink_inside_the_folder(model_dir):
    os.replace(model_dir / "hybridstu.onnx", model_dir / "real.onnx")
    (model_dir / "hybridstu.onnx").symlink_to("real.onnx")
    assert load_manifest(model_dir, verify=True).network("hybridstu").file == "hybridstu.onnx"


def test_manifest_missing_pieces(model_dir, tmp_path):
    with pytest.raises(MissingInputError, match="model folder not found"):
        load_manifest(tmp_path / "nowhere")
    with pytest.raises(MissingInputError, match="manifest.json: not found"):
        load_manifest(tmp_path)
    (model_dir / "hybridstu.onnx").unlink()
    with pytest.raises(MissingInputError, match="file 'hybridstu.onnx' not found"):
        load_manifest(model_dir)


def test_manifest_invalid_json(model_dir):
    (model_dir / "manifest.json").write_text("{not json")
    with pytest.raises(InputError, match="manifest.json: not valid JSON"):
        load_manifest(model_dir)


def test_a_network_file_given_as_the_model_names_the_folder_expected(model_dir):
    with pytest.raises(InputError, match=r"hybridstu\.onnx: a file; expected the folder written by unmix-export"):
        load_manifest(model_dir / "hybridstu.onnx")


def test_sha256_mismatch_is_refused_at_load_or_when_the_network_is_opened(model_dir):
    _edit(model_dir, lambda d: d["networks"]["hybridstu"].update(sha256="0" * 64))
    with pytest.raises(InputError, match=r"hybridstu.onnx: sha256 is .* 'networks.hybridstu.sha256' expects 0000"):
        load_manifest(model_dir, verify=True)
    manifest = load_manifest(model_dir)                      # lazy by default: the mismatch waits ...
    with pytest.raises(InputError, match="the file is corrupt or was replaced"):
        load_networks(manifest, "onnxruntime")               # ... until the network is opened


def test_write_manifest_refuses_an_invalid_document_and_keeps_the_old_one(model_dir):
    before = (model_dir / "manifest.json").read_text()
    document = json.loads(before)
    document["sensor"]["bands"] = 0
    with pytest.raises(ManifestError, match="'sensor.bands'"):
        write_manifest(model_dir, document)
    assert (model_dir / "manifest.json").read_text() == before
    assert sorted(p.name for p in model_dir.iterdir()) == ["hybridstu.onnx", "manifest.json"]


# --- the cube against the model --------------------------------------------------------------------

def test_check_cube_accepts_the_sensor_within_tolerance(model_dir):
    manifest = load_manifest(model_dir)
    assert wavelength_tolerance(WAVELENGTHS) == pytest.approx(10.0)
    scene = Scene.from_array(np.zeros((3, 4, BANDS), np.float32), wavelengths=WAVELENGTHS + 9.0)
    assert check_cube(manifest, scene) == []
    notes = check_cube(manifest, np.zeros((3, 4, BANDS), np.float32))
    assert notes == [f"the cube has no wavelengths: only the band count ({BANDS}) was checked"]


def test_check_cube_band_mismatch_message_shows_both(model_dir):
    manifest = load_manifest(model_dir)
    scene = Scene.from_array(np.zeros((3, 4, BANDS + 1), np.float32), name="field",
                             wavelengths=np.linspace(400, 1000, BANDS + 1))
    with pytest.raises(InputError) as info:
        check_cube(manifest, scene)
    message = str(info.value)
    assert "the cube has 7 bands (400.0-1000.0 nm)" in message
    assert "expects 6 bands (450.0-950.0 nm)" in message


def test_check_cube_wavelength_mismatch_message_shows_both(model_dir):
    manifest = load_manifest(model_dir)
    shifted = WAVELENGTHS.copy()
    shifted[2] += 12.0
    scene = Scene.from_array(np.zeros((2, 2, BANDS), np.float32), name="field", wavelengths=shifted)
    with pytest.raises(InputError, match=r"band 3 is at 662.00 nm in the cube but at 650.00 nm in the model .*"
                                         r"tolerance 10.00 nm"):
        check_cube(manifest, scene)


# --- backends --------------------------------------------------------------------------------------

def test_available_backends():
    assert available_backends() == ["onnxruntime", "openvino"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_runs_the_graph(model_dir, backend):
    network = load_networks(model_dir, backend, threads=1)["hybridstu"]
    assert network.inputs == {"cube": TensorSpec((1, BANDS, TILE, TILE))}
    cube = _cube()
    first = network({"cube": cube})
    assert set(first) == {"abundances"} and first["abundances"].dtype == np.float32
    np.testing.assert_allclose(first["abundances"], _expected(cube), atol=2e-6)
    second = network({"cube": _cube(1)})                    # the first result is not overwritten
    np.testing.assert_allclose(first["abundances"], _expected(cube), atol=2e-6)
    np.testing.assert_allclose(second["abundances"].sum(axis=1), 1.0, atol=1e-5)


def test_onnxruntime_binds_static_io_and_results_own_their_memory(model_dir):
    """IOBinding on CPU: preallocated buffers per thread; every result is a fresh array of its own."""
    from concurrent.futures import ThreadPoolExecutor

    from unmix.runtime.backends.onnxruntime_backend import open_network

    entry = load_manifest(model_dir).network("hybridstu")
    network = load_networks(model_dir, "onnxruntime", threads=1)["hybridstu"]
    assert network.io_binding and "io_binding=True" in repr(network)
    first = network({"cube": _cube()})["abundances"]
    second = network({"cube": _cube(1)})["abundances"]
    assert first.flags.owndata and first.flags.writeable and not np.shares_memory(first, second)
    np.testing.assert_allclose(first, _expected(_cube()), atol=2e-6)   # not overwritten by the second call
    first[:] = -1.0                                                     # nor does writing to it reach the buffers
    np.testing.assert_allclose(network({"cube": _cube(1)})["abundances"], second, atol=0)
    with ThreadPoolExecutor(4) as pool:                                 # one binding per thread
        results = list(pool.map(lambda seed: network({"cube": _cube(seed)})["abundances"], range(12)))
    for seed, result in enumerate(results):
        np.testing.assert_allclose(result, _expected(_cube(seed)), atol=2e-6)
    plain = open_network(entry.path, entry.inputs, entry.outputs, threads=1, io_binding=False, name="hybridstu")
    assert not plain.io_binding
    np.testing.assert_array_equal(plain({"cube": _cube(1)})["abundances"], second)


@pytest.mark.parametrize("backend", BACKENDS)
def test_feed_mismatch_is_a_clear_error(model_dir, backend):
    network = load_networks(model_dir, backend)["hybridstu"]
    with pytest.raises(InputError, match=r"network 'hybridstu': input 'cube' is float32\[1, 6, 8, 4\], "
                                         r"expected float32\[1, 6, 8, 8\]"):
        network({"cube": _cube()[..., :4].copy()})
    with pytest.raises(InputError, match=r"input 'cube' is float64\[1, 6, 8, 8\]"):
        network({"cube": _cube().astype(np.float64)})
    with pytest.raises(InputError, match="input 'cube' is missing"):
        network({"image": _cube()})


@pytest.mark.parametrize("backend", BACKENDS)
def test_graph_that_differs_from_the_manifest_is_refused(model_dir, backend):
    _write_graph(model_dir / "narrow.onnx", bands=BANDS - 1)
    spec = load_manifest(model_dir).network("hybridstu")
    with pytest.raises(InputError, match=r"narrow.onnx: graph input 'cube' is float32\[1, 5, 8, 8\], "
                                         r"the manifest declares float32\[1, 6, 8, 8\]"):
        load_network(model_dir / "narrow.onnx", spec, backend)
    renamed = NetworkSpec({"image": spec.inputs["cube"]}, spec.outputs)
    with pytest.raises(InputError, match="the graph has no input 'image'"):
        load_network(model_dir / "hybridstu.onnx", renamed, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_corrupt_onnx_is_an_input_error_naming_the_file(model_dir, backend):
    path = model_dir / "hybridstu.onnx"
    path.write_bytes(path.read_bytes()[:200] + b"\x00garbage")
    _edit(model_dir, lambda d: d["networks"]["hybridstu"].update(sha256=file_sha256(path)))
    with pytest.raises(InputError) as info:
        load_networks(model_dir, backend)
    assert str(info.value).startswith(f"{path}: not a loadable ONNX graph (")
    assert "\n" not in str(info.value)


def test_load_network_usage_errors(model_dir):
    spec = load_manifest(model_dir).network("hybridstu")
    with pytest.raises(UsageError, match="unknown backend 'tensorflow'"):
        load_network(model_dir / "hybridstu.onnx", spec, "tensorflow")
    with pytest.raises(UsageError, match="threads must be an integer >= 1"):
        load_network(model_dir / "hybridstu.onnx", spec, threads=0)
    with pytest.raises(UsageError, match="runs on 'cpu' or 'cuda"):
        load_network(model_dir / "hybridstu.onnx", spec, device="tpu")
    with pytest.raises(MissingInputError, match="network file not found"):
        load_network(model_dir / "missing.onnx", spec)
    with pytest.raises(UsageError, match="the openvino backend runs on cpu, gpu, npu"):
        load_network(model_dir / "hybridstu.onnx", spec, "openvino", device="cuda")


def test_cuda_without_onnxruntime_gpu_is_refused(model_dir):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    spec = load_manifest(model_dir).network("hybridstu")
    with pytest.raises(UsageError, match=r"needs onnxruntime-gpu .*unmix\[gpu\]"):
        load_network(model_dir / "hybridstu.onnx", spec, device="cuda")


_NO_TORCH = """
import sys
import numpy as np
from unmix.runtime.backends import load_networks
from unmix.runtime.manifest import load_manifest, check_cube
manifest = load_manifest(sys.argv[1], verify=True)
check_cube(manifest, np.zeros((2, 2, manifest.bands), np.float32))
for backend in ("onnxruntime", "openvino"):
    out = load_networks(manifest, backend)["hybridstu"]({"cube": np.ones((1, 6, 8, 8), np.float32)})
    assert out["abundances"].shape == (1, 3, 8, 8)
assert "torch" not in sys.modules, "the runtime imported torch"
print("ok")
"""


def test_runtime_never_imports_torch(model_dir):
    result = subprocess.run([sys.executable, "-c", _NO_TORCH, str(model_dir)], capture_output=True, text=True,
                            cwd=REPO, timeout=1800)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


_MISSING = """
import sys
sys.modules[sys.argv[2]] = None          # the package is not installed
from unmix.errors import UsageError
from unmix.runtime.backends import load_networks
try:
    load_networks(sys.argv[1], sys.argv[3])
except UsageError as exc:
    print(exc)
"""


@pytest.mark.parametrize("module, backend, extra", [
    ("onnxruntime", "onnxruntime", "pip install 'unmix[cpu]'"),
    ("openvino", "openvino", "pip install 'unmix[openvino]'"),
])
def test_missing_backend_names_the_extra(model_dir, module, backend, extra):
    result = subprocess.run([sys.executable, "-c", _MISSING, str(model_dir), module, backend],
                            capture_output=True, text=True, cwd=REPO, timeout=1800)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith(f"the {backend} backend is not installed: {extra}")
