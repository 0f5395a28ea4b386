"""Reduced precision: int8 variants written by ``unmix-export --int8`` (ONNX Runtime's quantiser,
calibrated on a scene), bf16 arithmetic on OpenVINO, their manifest entries, refusals and run.json."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from unmix.errors import UsageError
from unmix.runtime.backends import load_networks
from unmix.runtime.manifest import ManifestError, load_manifest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
REPO = Path(__file__).resolve().parents[1]
_INT8: dict = {}


def int8_model(tmp_path_factory) -> tuple[Path, Path]:
    """(scene header, model dir): the shared tiny model of test_cpp exported again with int8 variants."""
    if "model" not in _INT8:
        from tests.test_cpp import exported_model
        from unmix.export import export

        header, fp32_model = exported_model(tmp_path_factory)
        folder = tmp_path_factory.mktemp("int8") / "model"
        export(fp32_model.parent / "checkpoint", folder, tile=32, check=False, int8=True, calibration=str(header))
        _INT8["model"] = (header, folder)
    return _INT8["model"]


@pytest.fixture(scope="module")
def int8(tmp_path_factory):
    return int8_model(tmp_path_factory)


def test_int8_export_records_each_variant_with_its_calibration_and_check(int8):
    _, model = int8
    document = json.loads((model / "manifest.json").read_text())
    manifest = load_manifest(model, verify=True)
    for name, entry in document["networks"].items():
        variant = entry["variants"]["int8"]
        assert variant["file"] == f"{name}.int8.onnx" and (model / variant["file"]).is_file()
        assert variant["precision"] == "int8"
        assert variant["calibration"]["feeds"] >= 1 and variant["calibration"]["format"] == "QDQ"
        assert 0 <= variant["checks"]["mean_abs"] <= variant["checks"]["max_abs"] < 1.0
        assert manifest.network_file(name, "int8") == model / variant["file"]
        assert manifest.network_file(name) == model / entry["file"]          # fp32 stays the default graph


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_int8_runs_close_to_fp32_on_the_simplex(int8, backend):
    pytest.importorskip(backend)
    from unmix.runtime.unmixer import Unmixer

    header, model = int8
    reference = Unmixer.load(model, backend=backend, threads=1)
    quantised = Unmixer.load(model, backend=backend, threads=1, precision="int8")
    assert reference.precision == "fp32" and quantised.precision == "int8"
    a32 = np.asarray(reference.run(header).abundances)
    a8 = np.asarray(quantised.run(header).abundances)
    valid = np.isfinite(a32).all(axis=-1)
    assert np.array_equal(valid, np.isfinite(a8).all(axis=-1))
    assert np.allclose(a8[valid].sum(axis=-1), 1.0, atol=1e-4) and (a8[valid] >= -1e-6).all()
    change = np.abs(a8[valid] - a32[valid])
    assert 0 < change.max() < 0.05                    # int8 arithmetic really ran, and stays near fp32


def test_openvino_bf16_runs_where_the_cpu_has_it_and_is_refused_elsewhere(int8):
    ov = pytest.importorskip("openvino")
    _, model = int8
    if "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        networks = load_networks(model, "openvino", threads=1, precision="bf16")
        assert {n.precision for n in networks.values()} == {"bf16"}
        assert all(n.path.name == f"{name}.onnx" for name, n in networks.items())   # the fp32 graphs
    else:
        with pytest.raises(UsageError, match="no bf16 arithmetic"):
            load_networks(model, "openvino", threads=1, precision="bf16")


def test_precisions_a_backend_or_model_does_not_have_are_refused_in_one_line(int8, tmp_path_factory):
    from tests.test_cpp import exported_model

    _, model = int8
    _, fp32_model = exported_model(tmp_path_factory)
    with pytest.raises(UsageError, match="onnxruntime backend does not run bf16.*bf16 runs on openvino"):
        load_networks(model, "onnxruntime", precision="bf16")
    with pytest.raises(UsageError, match="tensorrt backend does not run int8"):
        load_networks(model, "tensorrt", precision="int8")
    with pytest.raises(UsageError, match="precision must be one of fp32, fp16, bf16, int8"):
        load_networks(model, "onnxruntime", precision="fp8")
    with pytest.raises(ManifestError, match=r"the int8 graph of 'hybridstu' \(export it with unmix-export --int8\)"):
        load_networks(fp32_model, "onnxruntime", precision="int8")


def test_manifest_refuses_a_variant_that_is_not_what_it_says(int8, tmp_path):
    import shutil

    _, model = int8
    copy = tmp_path / "model"
    shutil.copytree(model, copy)
    path = copy / "manifest.json"
    document = json.loads(path.read_text())
    document["networks"]["hybridstu"]["variants"]["int8"]["precision"] = "fp16"
    path.write_text(json.dumps(document))
    with pytest.raises(ManifestError, match=r"networks.hybridstu.variants.int8.precision.*one of int8"):
        load_manifest(copy)
    document["networks"]["hybridstu"]["variants"] = {"fp8": document["networks"]["hybridstu"]["variants"]["int8"]}
    path.write_text(json.dumps(document))
    with pytest.raises(ManifestError, match="networks.hybridstu.variants.*precisions among int8"):
        load_manifest(copy)


def test_unmix_run_records_the_precision_in_run_json(int8, tmp_path):
    header, model = int8
    run = subprocess.run([sys.executable, "-m", "unmix.runtime.cli", str(header), "--model", str(model), "--out",
                          str(tmp_path / "out"), "--backend", "onnxruntime", "--precision", "int8", "--steps", "1",
                          "--no-quicklook", "--quiet"], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stderr
    info = json.loads((tmp_path / "out" / header.stem / f"{header.stem}.run.json").read_text())
    assert info["precision"] == "int8" and info["backend"] == "onnxruntime"
    refused = subprocess.run([sys.executable, "-m", "unmix.runtime.cli", str(header), "--model", str(model), "--out",
                              str(tmp_path / "again"), "--backend", "onnxruntime", "--precision", "bf16"],
                             capture_output=True, text=True, cwd=REPO)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1].startswith("unmix-run: error: the onnxruntime backend does not run bf16")
    assert not (tmp_path / "again" / header.stem).exists()


def test_unmix_export_calibration_needs_int8(int8, tmp_path):
    _, model = int8
    run = subprocess.run([sys.executable, "-m", "unmix.export.cli", str(model.parent), "--out", str(tmp_path / "m"),
                          "--calibration", "samson"], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 2 and "--calibration is for --int8" in run.stderr
