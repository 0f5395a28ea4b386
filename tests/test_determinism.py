"""Determinism: the same inputs and seed give bit-identical outputs across runs and thread counts on one
backend; across backends the outputs agree within the tolerances stated here.

Stated tolerances, ONNX Runtime against OpenVINO (CPU, fp32 graphs; measured on the test model: 8e-7 for
abundances, 9e-7 for uncertainty, 2.4e-8 for RMSE, 0 for endmembers):

- abundances and uncertainty: |difference| <= 1e-5 (fractions of a pixel, 0..1);
- endmembers: |difference| <= 1e-5 x the largest reflectance;
- per-pixel reconstruction RMSE: |difference| <= 1e-6 (reflectance).

Training is deterministic too: ``tests/test_faults.py`` checks that unmix-train, killed and resumed ten
times in separate processes, writes the same weights, byte for byte, as an uninterrupted in-process fit.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.corpus.model import RUN, cli_env, tiny_model

ABUNDANCE_TOLERANCE = 1e-5
ENDMEMBER_TOLERANCE = 1e-5  # relative to the largest reflectance
RMSE_TOLERANCE = 1e-6
FIELDS = ("abundances", "endmembers", "rmse", "uncertainty", "uncertainty_per_endmember")
SETTINGS = {"seed": 5, "samples": 3, "eta": 0.5}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory)


@pytest.fixture(scope="module")
def results(built):
    """backend -> three results of the same cube and seed: with 1 thread, 2 threads, and 1 thread again."""
    import unmix
    from unmix.io.envi import read_cube

    scene = read_cube(built / "scene.hdr")
    return {backend: [unmix.Unmixer.load(built / "model", backend=backend, threads=threads).run(scene, **SETTINGS)
                      for threads in (1, 2, 1)]
            for backend in ("onnxruntime", "openvino")}


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_bit_identical_across_runs_and_thread_counts(results, backend):
    first, two_threads, again = results[backend]
    for field in FIELDS:
        np.testing.assert_array_equal(getattr(two_threads, field), getattr(first, field), err_msg=field)
        np.testing.assert_array_equal(getattr(again, field), getattr(first, field), err_msg=field)
    assert first.uncertainty is not None and np.nanmax(first.uncertainty) > 0  # the sampling really ran
    assert first.uncertainty_per_endmember.shape == first.abundances.shape     # and the Unmixer returns it all


def test_the_seed_matters(built, results):
    import unmix

    other = unmix.Unmixer.load(built / "model", backend="onnxruntime").run(built / "scene.hdr",
                                                                             **{**SETTINGS, "seed": 6})
    assert not np.array_equal(other.uncertainty, results["onnxruntime"][0].uncertainty, equal_nan=True)


def test_backends_agree_within_the_stated_tolerance(results):
    ours, theirs = results["onnxruntime"][0], results["openvino"][0]
    for field, tolerance in (("abundances", ABUNDANCE_TOLERANCE), ("uncertainty", ABUNDANCE_TOLERANCE),
                             ("rmse", RMSE_TOLERANCE),
                             ("endmembers", ENDMEMBER_TOLERANCE * float(np.abs(ours.endmembers).max()))):
        a, b = getattr(ours, field), getattr(theirs, field)
        assert np.array_equal(np.isnan(a), np.isnan(b)), field
        assert np.nanmax(np.abs(a - b)) <= tolerance, (field, np.nanmax(np.abs(a - b)))


def test_unmix_run_writes_identical_bytes_with_1_and_2_threads(built, results, tmp_path):
    """Two unmix-run processes (1 and 2 threads): every data file of the bundle is byte-identical, and
    equal to what the Python API gives."""
    from unmix.io.envi import read_cube

    bundles = []
    for threads in (1, 2):
        out = tmp_path / f"threads{threads}"
        done = subprocess.run([*RUN, str(built / "scene.hdr"), "--model", str(built / "model"), "--out", str(out),
                               "--threads", str(threads), "--seed", "5", "--samples", "3", "--eta", "0.5", "--quiet",
                               "--no-quicklook"], capture_output=True, text=True, env=cli_env(), timeout=1800)
        assert done.returncode == 0, done.stderr
        bundles.append(out / "scene")
    names = sorted(p.name for p in bundles[0].iterdir() if not p.name.endswith(".run.json"))
    assert len(names) == 9
    for name in names:
        assert (bundles[0] / name).read_bytes() == (bundles[1] / name).read_bytes(), name
    np.testing.assert_array_equal(read_cube(bundles[0] / "scene.abund.hdr").read(),
                                  results["onnxruntime"][0].abundances)
