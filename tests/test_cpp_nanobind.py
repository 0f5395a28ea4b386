"""The nanobind module (cpp_bindings/python, package ``unmix_cpp``) against the Python pipeline.

The module is imported when installed (``.ci/run`` installs it into .venv with
``pip install --no-build-isolation ./cpp_bindings/python``), else built into a temporary folder
where nanobind and scikit-build-core are installed. Without them the tests are skipped, except
under ``CI=true``, where they fail.
"""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.test_cpp import exported_model

ROOT = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() == "true"


def _unavailable(reason: str):
    if IN_CI:
        pytest.fail(f"the nanobind module is required under CI=true: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def unmix_cpp(tmp_path_factory):
    try:
        return importlib.import_module("unmix_cpp")
    except ImportError:
        pass
    for name in ("nanobind", "scikit_build_core"):
        try:
            importlib.import_module(name)
        except ImportError:
            _unavailable(f"unmix_cpp is not installed and {name} is not (pip install nanobind scikit-build-core)")
    target = tmp_path_factory.mktemp("unmix_cpp")
    built = subprocess.run([sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "-q",
                            "--target", str(target), str(ROOT / "cpp_bindings" / "python")],
                           capture_output=True, text=True, timeout=900)
    assert built.returncode == 0, built.stdout[-4000:] + built.stderr[-4000:]
    sys.path.insert(0, str(target))
    return importlib.import_module("unmix_cpp")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return exported_model(tmp_path_factory)


def _settings(unmixer, **overrides):
    """The same explicit settings on both sides (refine_spectra off: the manifest's endmembers fixed)."""
    return unmixer.settings(refine_spectra=False, rounds=1, **overrides)


def test_errors_are_python_exceptions(unmix_cpp, exported, tmp_path):
    header, model = exported
    assert unmix_cpp.abi_version() >= 2
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        unmix_cpp.Model(tmp_path / "absent", backend="openvino")
    with pytest.raises(ValueError, match="unknown backend 'nonsense'"):
        unmix_cpp.Model(model, backend="nonsense")
    with unmix_cpp.Model(model, backend="openvino", threads=2) as m:
        with pytest.raises(ValueError, match="the cube has 5 bands but the model expects 24"):
            m.run(np.zeros((4, 4, 5), dtype=np.float32))
        with pytest.raises(ValueError, match="unknown inference setting 'bogus'"):
            m.set_option("bogus", 1)
        with pytest.raises(ValueError, match="a line must be"):
            m.stream(8).push(np.zeros((7, 24), dtype=np.float32))


def test_module_matches_python_pipeline(unmix_cpp, exported):
    """unmix_cpp (OpenVINO) vs run_pipeline (ONNX Runtime), same model, cube and settings; and the
    module's stream gives the module's whole-buffer rows bit for bit."""
    import unmix
    from unmix.runtime.pipeline import run_pipeline

    header, model = exported
    cube = unmix.read_cube(header).read()
    overrides = {"samples": 2, "eta": 0.5, "seed": 3, "steps": 4, "dc_weight": 1.0}
    unmixer = unmix.Unmixer.load(model, backend="onnxruntime")
    config = _settings(unmixer, **overrides)
    E = unmixer.manifest.endmembers
    reference = run_pipeline(unmix.read_cube(header), unmixer.networks, unmixer.schedule, config, endmembers=E)

    with unmix_cpp.Model(model, backend="openvino", threads=2, refine_spectra=0, rounds=1, **overrides) as m:
        assert (m.endmember_count, m.bands, m.tile) == (3, 24, 32)
        np.testing.assert_array_equal(m.model_endmembers(), np.asarray(E, dtype=np.float32))
        result = m.run(cube, endmembers=m.model_endmembers())
        stream = m.stream(cube.shape[1])
        parts = [stream.push(line) for line in cube] + [stream.finish()]
        assert stream.ring_rows == 2 * 32 + 1
    rows = [part for part in parts if part[0] >= 0]
    assert [part[0] for part in rows] == sorted(part[0] for part in rows) and rows[0][0] == 0
    streamed = {name: np.concatenate([part[i] for part in rows]) for i, name in
                ((1, "abundances"), (2, "rmse"), (3, "uncertainty"))}
    diffs = {}
    for name in ("abundances", "rmse", "uncertainty"):
        np.testing.assert_array_equal(streamed[name], result[name], err_msg=name)
        theirs = getattr(reference, name)
        np.testing.assert_array_equal(np.isnan(result[name]), np.isnan(theirs), err_msg=name)
        diffs[name] = float(np.nanmax(np.abs(result[name] - theirs)))
    diffs["endmembers"] = float(np.max(np.abs(result["endmembers"] - reference.endmembers)))
    print(f"unmix_cpp (openvino) vs Python run_pipeline (onnxruntime): max abs diff {diffs}")
    assert max(diffs.values()) <= 1e-4, diffs
