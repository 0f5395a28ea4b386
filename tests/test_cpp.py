"""The C++ core (cpp_bindings/): configure, build and run its ctest suite, then C++ (OpenVINO) against
Python (ONNX Runtime) on one exported model and cube.

Push-broom streaming: the C example ``unmix_lines`` (OpenVINO) against the whole-buffer call with the
manifest's endmembers fixed (bit for bit) and against Python's ``run_pipeline`` with the same endmembers
(1e-4), and its peak RSS at 64 and 1024 lines.

A second build (``-DUNMIX_SANITIZE=ON``) runs the same ctest suite under AddressSanitizer and
UndefinedBehaviorSanitizer (core, analytic backend, C ABI; no OpenVINO). The main build goes to
``$UNMIX_CPP_BUILD`` when set (reused if already configured there), else to a
temporary folder. Without cmake or a C++ compiler the tests are skipped, except under ``CI=true``,
where they fail.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() == "true"


def _missing_tools() -> str | None:
    if shutil.which("cmake") is None:
        return "cmake not found"
    if not any(shutil.which(name) for name in (os.environ.get("CXX", "c++"), "c++", "g++", "clang++")):
        return "no C++ compiler found"
    return None


def _run(command: list[str], cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> Path:
    """The configured and built C++ tree (cmake -S . -B <build>; cmake --build)."""
    missing = _missing_tools()
    if missing:
        if IN_CI:
            pytest.fail(f"C++ build required under CI=true: {missing}")
        pytest.skip(missing)
    folder = Path(os.environ["UNMIX_CPP_BUILD"]) if os.environ.get("UNMIX_CPP_BUILD") else \
        tmp_path_factory.mktemp("cpp_build")
    if not (folder / "CMakeCache.txt").is_file():
        configure = _run(["cmake", "-S", str(ROOT), "-B", str(folder), "-DCMAKE_BUILD_TYPE=Release",
                          f"-DUNMIX_PYTHON={sys.executable}"])
        assert configure.returncode == 0, configure.stdout + configure.stderr
    jobs = str(max(1, min(4, os.cpu_count() or 1)))
    built = _run(["cmake", "--build", str(folder), "-j", jobs])
    assert built.returncode == 0, built.stdout[-4000:] + built.stderr[-4000:]
    return folder


def test_ctest_passes(build):
    result = _run(["ctest", "--output-on-failure"], cwd=build, timeout=1800)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "100% tests passed" in result.stdout
    # the golden comparisons ran and were exact
    core = _run([str(build / "cpp_bindings" / "unmix_test_core"), str(ROOT / "tests" / "golden")])
    assert core.returncode == 0, core.stderr
    assert core.stdout.count("coefficients max abs diff 0,") >= 4
    assert "48 words bit exact" in core.stdout
    assert "nnls rank-deficient: 6 cases, 132 values bit exact" in core.stdout


def test_ctest_passes_under_address_and_undefined_sanitizers(tmp_path):
    """The core, the analytic backend and the C ABI built with -fsanitize=address,undefined."""
    missing = _missing_tools()
    if missing:
        if IN_CI:
            pytest.fail(f"C++ build required under CI=true: {missing}")
        pytest.skip(missing)
    configure = _run(["cmake", "-S", str(ROOT), "-B", str(tmp_path), "-DUNMIX_SANITIZE=ON", "-DCMAKE_BUILD_TYPE=Debug"])
    assert configure.returncode == 0, configure.stdout + configure.stderr
    built = _run(["cmake", "--build", str(tmp_path), "-j", str(max(1, min(4, os.cpu_count() or 1)))])
    assert built.returncode == 0, built.stdout[-4000:] + built.stderr[-4000:]
    assert "sanitize=ON" in (tmp_path / "unmix_backends.txt").read_text().split()
    result = _run(["ctest", "--output-on-failure"], cwd=tmp_path, timeout=1800)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "100% tests passed" in result.stdout


def _openvino_built(build: Path) -> bool:
    marker = build / "unmix_backends.txt"
    return marker.is_file() and "openvino=ON" in marker.read_text().split()


_EXPORTED: dict[str, tuple[Path, Path]] = {}


def exported_model(tmp_path_factory) -> tuple[Path, Path]:
    """(scene header, model dir): a tiny scene, a few training steps, an fp32 export (tile 32); made once
    per test session and shared by the C++ test modules."""
    if "model" in _EXPORTED:
        return _EXPORTED["model"]
    pytest.importorskip("torch")
    from tests.test_train import micro_config, small_scene
    from unmix.export import export
    from unmix.io.envi import write_cube
    from unmix.train.trainer import fit

    folder = tmp_path_factory.mktemp("cpp_parity")
    scene = small_scene(height=40, width=36, bands=24, p=3)
    cube = scene.read().copy()
    cube[3, 5, 7] = np.nan  # one invalid pixel: NaN in every per-pixel output
    header = write_cube(folder / "scene.hdr", cube, wavelengths=scene.wavelengths)
    fit(scene, 3, config=micro_config(), out=folder / "checkpoint", progress=False, log=lambda m: None)
    export(folder / "checkpoint", folder / "model", tile=32)
    _EXPORTED["model"] = (header, folder / "model")
    return _EXPORTED["model"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(scene header, model dir), see :func:`exported_model`."""
    return exported_model(tmp_path_factory)


@pytest.mark.parametrize("settings", [{}, {"eta": 0.6, "samples": 2, "rounds": 2, "seed": 7}],
                         ids=["defaults", "stochastic"])
def test_cpp_openvino_matches_python_onnxruntime(build, exported, tmp_path, settings):
    if not _openvino_built(build):
        if IN_CI:
            pytest.fail("the OpenVINO backend was not built (pip install openvino)")
        pytest.skip("the OpenVINO backend was not built")
    import unmix

    header, model = exported
    prefix = tmp_path / "cpp"
    args = [f"{key}={value}" for key, value in settings.items()]
    run = _run([str(build / "cpp_bindings" / "unmix_run_raw"), str(model), "openvino", str(header), str(prefix), *args])
    assert run.returncode == 0, run.stdout + run.stderr
    H, W, B, p = (int(v) for v in run.stdout.split()[:4])
    assert (H, W, B, p) == (40, 36, 24, 3)
    abundances = np.fromfile(f"{prefix}.abundances.f32", dtype="<f4").reshape(H, W, p)
    endmembers = np.fromfile(f"{prefix}.endmembers.f32", dtype="<f4").reshape(p, B)
    rmse = np.fromfile(f"{prefix}.rmse.f32", dtype="<f4").reshape(H, W)

    reference = unmix.Unmixer.load(model, backend="onnxruntime").run(header, **settings)
    np.testing.assert_array_equal(np.isnan(abundances), np.isnan(reference.abundances))
    np.testing.assert_array_equal(np.isnan(rmse), np.isnan(reference.rmse))
    assert np.isnan(abundances[3, 5]).all()
    diffs = {
        "abundances": float(np.nanmax(np.abs(abundances - reference.abundances))),
        "endmembers": float(np.max(np.abs(endmembers - reference.endmembers))),
        "rmse": float(np.nanmax(np.abs(rmse - reference.rmse))),
    }
    print(f"C++ openvino vs Python onnxruntime {settings or 'defaults'}: max abs diff {diffs}")
    assert max(diffs.values()) <= 1e-4, diffs


def _lines_program(build: Path) -> Path:
    return build / "cpp_bindings" / "unmix_lines"


def test_stream_equals_whole_buffer_and_python(build, exported, tmp_path):
    """Push-broom streaming (the C example unmix_lines, OpenVINO) gives the whole-buffer call's rows bit for
    bit (unmix_run_raw with the manifest's endmembers fixed), and Python's run_pipeline with the same fixed
    endmembers (ONNX Runtime) to 1e-4."""
    if not _openvino_built(build):
        if IN_CI:
            pytest.fail("the OpenVINO backend was not built (pip install openvino)")
        pytest.skip("the OpenVINO backend was not built")
    import unmix
    from unmix.runtime.pipeline import run_pipeline

    header, model = exported
    settings = {"samples": 2, "eta": 0.6, "seed": 7, "steps": 4, "dc_weight": 1.0}
    args = [f"{key}={value}" for key, value in settings.items()]
    stream = _run([str(_lines_program(build)), str(model), str(header), str(tmp_path / "stream"), "--backend", "openvino",
                   *args])
    assert stream.returncode == 0, stream.stdout + stream.stderr
    H, W, B, p = (int(v) for v in stream.stdout.split()[:4])
    assert (H, W, B, p) == (40, 36, 24, 3)
    whole = _run([str(build / "cpp_bindings" / "unmix_run_raw"), str(model), "openvino", str(header),
                  str(tmp_path / "whole"), "fixed_endmembers=1", *args])
    assert whole.returncode == 0, whole.stdout + whole.stderr

    def load(prefix: str, name: str, shape: tuple[int, ...]) -> np.ndarray:
        return np.fromfile(tmp_path / f"{prefix}.{name}.f32", dtype="<f4").reshape(shape)

    for name, shape in (("abundances", (H, W, p)), ("rmse", (H, W)), ("uncertainty", (H, W))):
        np.testing.assert_array_equal(load("stream", name, shape), load("whole", name, shape), err_msg=name)

    unmixer = unmix.Unmixer.load(model, backend="onnxruntime")
    config = unmixer.settings(refine_spectra=False, rounds=1, **settings)
    reference = run_pipeline(unmix.read_cube(header), unmixer.networks, unmixer.schedule, config,
                             endmembers=unmixer.manifest.endmembers)
    diffs = {}
    for name, shape in (("abundances", (H, W, p)), ("rmse", (H, W)), ("uncertainty", (H, W))):
        ours, theirs = load("stream", name, shape), getattr(reference, name)
        np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs), err_msg=name)
        diffs[name] = float(np.nanmax(np.abs(ours - theirs)))
    print(f"C++ stream (openvino) vs Python run_pipeline (onnxruntime), E fixed: max abs diff {diffs}")
    assert max(diffs.values()) <= 1e-4, diffs


def test_stream_memory_does_not_grow_with_lines(build, exported, tmp_path):
    """unmix_lines on OpenVINO: the peak RSS for 1024 lines stays within 4 MiB of that for 64 lines
    (the 1024-line cube alone is 12 MiB)."""
    if not _openvino_built(build):
        if IN_CI:
            pytest.fail("the OpenVINO backend was not built (pip install openvino)")
        pytest.skip("the OpenVINO backend was not built")
    from unmix.io.envi import write_cube

    _, model = exported
    rng = np.random.default_rng(0)
    cube = rng.uniform(0.05, 0.6, size=(1024, 128, 24)).astype(np.float32)
    header = write_cube(tmp_path / "long.hdr", cube)
    peaks = {}
    for lines in (64, 1024):
        run = _run([str(_lines_program(build)), str(model), str(header), str(tmp_path / f"out{lines}"),
                    "--backend", "openvino", "--threads", "2", "--max-lines", str(lines), "steps=2", "t0=50"])
        assert run.returncode == 0, run.stdout + run.stderr
        fields = run.stdout.split()
        assert int(fields[0]) == lines
        peaks[lines] = int(fields[5])
    print(f"unmix_lines (openvino, 128 x 24) peak RSS KiB: {peaks}")
    assert peaks[1024] - peaks[64] < 4096, peaks


def _raw_tool(build: Path) -> Path:
    return build / "cpp_bindings" / "unmix_run_raw"


def _load_outputs(prefix: Path, H: int, W: int, B: int, p: int) -> dict[str, np.ndarray]:
    shapes = {"abundances": (H, W, p), "endmembers": (p, B), "rmse": (H, W), "uncertainty": (H, W)}
    return {name: np.fromfile(f"{prefix}.{name}.f32", dtype="<f4").reshape(shape) for name, shape in shapes.items()}


def test_file_entry_equals_whole_buffer_and_python(build, exported, tmp_path):
    """unmix_run_file (unmix_run_raw --file, OpenVINO; the cube read row window by row window, the passes'
    abundances in a scratch file) gives the whole-cube call's outputs bit for bit on the float32 BSQ
    scene, and on an int16 BIL copy (x 10000, a data ignore value, big-endian) Python's unmix.Unmixer
    (ONNX Runtime, which reads the file with unmix.io.envi) to 1e-4."""
    if not _openvino_built(build):
        if IN_CI:
            pytest.fail("the OpenVINO backend was not built (pip install openvino)")
        pytest.skip("the OpenVINO backend was not built")
    import unmix

    header, model = exported
    settings = {"eta": 0.6, "samples": 2, "rounds": 2, "seed": 7}
    args = [f"{key}={value}" for key, value in settings.items()]
    whole = _run([str(_raw_tool(build)), str(model), "openvino", str(header), str(tmp_path / "whole"), *args])
    assert whole.returncode == 0, whole.stdout + whole.stderr
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    streamed = _run([str(_raw_tool(build)), str(model), "openvino", str(header), str(tmp_path / "file"), "--file",
                     f"scratch={scratch}", *args])
    assert streamed.returncode == 0, streamed.stdout + streamed.stderr
    H, W, B, p = (int(v) for v in streamed.stdout.split()[:4])
    assert (H, W, B, p) == (40, 36, 24, 3)
    assert whole.stdout.split()[:4] == streamed.stdout.split()[:4]
    assert not any(scratch.iterdir())  # the scratch file was unlinked
    ours, reference = _load_outputs(tmp_path / "file", H, W, B, p), _load_outputs(tmp_path / "whole", H, W, B, p)
    for name in ours:
        np.testing.assert_array_equal(ours[name], reference[name], err_msg=name)

    # int16 BIL big-endian, x 10000, the invalid pixel stored as the ignore value
    cube = unmix.read_cube(header).read()
    stored = np.round(np.nan_to_num(cube, nan=0.0) * 10000).astype(">i2")
    stored[~np.isfinite(cube).all(axis=-1)] = -9999
    (tmp_path / "int16.img").write_bytes(stored.transpose(0, 2, 1).tobytes())
    (tmp_path / "int16.hdr").write_text(
        f"ENVI\nsamples = {W}\nlines = {H}\nbands = {B}\nheader offset = 0\ndata type = 2\ninterleave = bil\n"
        "byte order = 1\nreflectance scale factor = 10000\ndata ignore value = -9999\n")
    run = _run([str(_raw_tool(build)), str(model), "openvino", str(tmp_path / "int16.hdr"), str(tmp_path / "int16"),
                "--file", "scratch=memory", *args])
    assert run.returncode == 0, run.stdout + run.stderr
    ours = _load_outputs(tmp_path / "int16", H, W, B, p)
    theirs = unmix.Unmixer.load(model, backend="onnxruntime").run(tmp_path / "int16.hdr", **settings)
    assert np.isnan(ours["abundances"][3, 5]).all()
    diffs = {}
    for name in ("abundances", "endmembers", "rmse"):
        np.testing.assert_array_equal(np.isnan(ours[name]), np.isnan(getattr(theirs, name)), err_msg=name)
        diffs[name] = float(np.nanmax(np.abs(ours[name] - getattr(theirs, name))))
    print(f"unmix_run_file on int16 BIL big-endian (openvino) vs Python (onnxruntime): max abs diff {diffs}")
    assert max(diffs.values()) <= 1e-4, diffs


def test_file_entry_memory_does_not_grow_with_lines(build, exported, tmp_path):
    """unmix_run_raw --file on OpenVINO: the peak RSS for a 1024-line cube stays within 4 MiB of that for a
    64-line cube (the 1024-line cube alone is 12 MiB, its abundances 1.5 MiB): the cube is read row window
    by row window, the passes' abundances stay in a scratch file and finished rows go to the output files."""
    if not _openvino_built(build):
        if IN_CI:
            pytest.fail("the OpenVINO backend was not built (pip install openvino)")
        pytest.skip("the OpenVINO backend was not built")
    from unmix.io.envi import write_cube

    _, model = exported
    rng = np.random.default_rng(0)
    peaks = {}
    for lines in (64, 1024):
        cube = rng.uniform(0.05, 0.6, size=(lines, 128, 24)).astype(np.float32)
        header = write_cube(tmp_path / f"cube{lines}.hdr", cube)
        run = _run([str(_raw_tool(build)), str(model), "openvino", str(header), str(tmp_path / f"out{lines}"), "--file",
                    "threads=2", "steps=2", "t0=50", "rounds=2"])
        assert run.returncode == 0, run.stdout + run.stderr
        fields = run.stdout.split()
        assert int(fields[0]) == lines
        peaks[lines] = int(fields[5])
    print(f"unmix_run_file (openvino, 128 x 24) peak RSS KiB: {peaks}")
    assert peaks[1024] - peaks[64] < 4096, peaks
