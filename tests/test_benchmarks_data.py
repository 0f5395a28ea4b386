"""Benchmark loaders against the published facts in each data folder's SOURCE.md.

The reconstruction RMSEs pin the pixel order (MATLAB column-major) and the scales: a wrong reshape or a
wrong divisor moves them far from the published values.
"""
from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import need_data
from unmix.errors import DataNotFoundError, UsageError
from unmix.io.benchmarks import BENCHMARKS, load_benchmark, load_jasper_ridge, load_samson, load_sim1
from unmix.physics.fcls import fcls
from unmix.physics.synthetic import measured_snr_db


def rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)))


def reconstruction_rmse(scene) -> float:
    return rmse(scene.read(), scene.abundances @ scene.endmembers)


@pytest.fixture(scope="module")
def samson():
    need_data("samson", "samson_1.mat")
    need_data("samson", "misicnet_gt", "E.mat")
    return load_samson("misicnet")


@pytest.fixture(scope="module")
def samson_zhu():
    need_data("samson", "end3.mat")
    return load_samson("zhu")


@pytest.fixture(scope="module")
def jasper():
    need_data("jasper_ridge", "JasperRidge2_R198.mat")
    return load_jasper_ridge()


@pytest.fixture(scope="module")
def sim1():
    need_data("misicnet_sim", "Sim1", "Y_clean.mat")
    return load_sim1()


def test_samson_misicnet_shapes_names_and_reconstruction(samson):
    assert samson.name == "samson"
    assert samson.shape == (95, 95, 156)
    assert samson.endmembers.shape == (3, 156) and samson.abundances.shape == (95, 95, 3)
    assert samson.endmember_names == ["rock", "tree", "water"]
    assert samson.read().dtype == np.float32
    assert samson.source.endswith("samson_1.mat")
    assert reconstruction_rmse(samson) == pytest.approx(0.0233, abs=5e-4)
    np.testing.assert_allclose(samson.abundances.sum(axis=-1), 1.0, atol=1e-6)


def test_samson_wavelengths_are_approximate_and_say_so(samson):
    np.testing.assert_allclose(samson.wavelengths, np.linspace(401, 889, 156))
    assert any("approximate" in note for note in samson.notes)


def test_samson_oracle_fcls_recovers_the_misicnet_truth(samson):
    # MiSiCNet's A_true is the FCLS solution of the cube for its E (SOURCE.md): aRMSE ~ 0.
    estimate = fcls(samson.read(), samson.endmembers)
    assert rmse(estimate, samson.abundances) < 1e-4


def test_samson_zhu_truth_sums_to_one_and_is_flagged_sad_only(samson_zhu, samson):
    assert samson_zhu.name == "samson:zhu"
    assert samson_zhu.endmembers.shape == (3, 156) and samson_zhu.abundances.shape == (95, 95, 3)
    assert samson_zhu.endmember_names == ["rock", "tree", "water"]
    np.testing.assert_allclose(samson_zhu.abundances.sum(axis=-1), 1.0, atol=1e-12)
    assert samson_zhu.abundances.min() >= -1e-12
    np.testing.assert_allclose(samson_zhu.endmembers.max(axis=1), 1.0, atol=0.02)  # max-normalised
    assert any("SAD only" in note for note in samson_zhu.notes)
    np.testing.assert_array_equal(samson_zhu.read(), samson.read())
    # Same endmember order as MiSiCNet's truth: SAD 0.62, 3.06, 2.16 degrees (SOURCE.md).
    a, b = samson.endmembers, samson_zhu.endmembers
    sad = np.degrees(np.arccos(np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))
    np.testing.assert_allclose(sad, [0.62, 3.06, 2.16], atol=0.01)
    # The two truths' abundances differ by RMSE 0.231 (SOURCE.md): also a check of Zhu's pixel order.
    assert rmse(samson.abundances, samson_zhu.abundances) == pytest.approx(0.231, abs=0.002)


def test_jasper_ridge_shapes_scale_and_reconstruction(jasper):
    assert jasper.name == "jasper_ridge"
    assert jasper.shape == (100, 100, 198)
    assert jasper.endmembers.shape == (4, 198) and jasper.abundances.shape == (100, 100, 4)
    assert jasper.endmember_names == ["tree", "water", "dirt", "road"]
    assert jasper.reflectance_scale == 5000.0
    cube = jasper.read()
    assert cube.max() == pytest.approx(5437 / 5000, rel=1e-6)
    assert reconstruction_rmse(jasper) == pytest.approx(0.0551, abs=5e-4)
    np.testing.assert_allclose(jasper.abundances.sum(axis=-1), 1.0, atol=1e-12)


def test_jasper_ridge_wavelengths(jasper):
    wl = jasper.wavelengths
    assert wl.shape == (198,) and np.all(np.diff(wl) > 0)
    assert wl[0] == pytest.approx(380 + 3 * 2120 / 223) and wl[-1] == pytest.approx(380 + 218 * 2120 / 223)
    assert any("approximate" in note for note in jasper.notes)


def test_jasper_ridge_oracle_fcls_matches_published_gap(jasper):
    # The GT A is not the FCLS solution for the GT M: aRMSE 0.0851 (SOURCE.md, PEERS.md).
    estimate = fcls(jasper.read(), jasper.endmembers)
    assert rmse(estimate, jasper.abundances) == pytest.approx(0.0851, abs=1e-3)


def test_sim1_is_exact(sim1):
    assert sim1.name == "sim1"
    assert sim1.shape == (105, 105, 224)
    assert sim1.endmembers.shape == (6, 224) and sim1.abundances.shape == (105, 105, 6)
    assert sim1.wavelengths is None
    assert len(sim1.endmember_names) == 6
    assert reconstruction_rmse(sim1) <= 1e-6
    assert sim1.abundances.max() == pytest.approx(0.75, abs=0.01)  # no pure pixels
    assert rmse(fcls(sim1.read(), sim1.endmembers), sim1.abundances) < 1e-4


@pytest.mark.parametrize("snr_db", [30, 20])
def test_sim1_noisy_variants_are_reproducible_and_at_the_snr(sim1, snr_db):
    name = f"sim1:{snr_db}db"
    first, second = load_benchmark(name), load_benchmark(name)
    assert first.name == name
    np.testing.assert_array_equal(first.read(), second.read())
    np.testing.assert_array_equal(first.abundances, sim1.abundances)
    clean = sim1.abundances @ sim1.endmembers
    assert measured_snr_db(clean, first.read()) == pytest.approx(snr_db, abs=0.1)


def test_sim1_30db_oracle_fcls(sim1):
    scene = load_benchmark("sim1:30db")
    assert rmse(fcls(scene.read(), scene.endmembers), scene.abundances) == pytest.approx(0.012, abs=0.002)


def test_every_listed_benchmark_loads():
    need_data("samson")
    need_data("jasper_ridge")
    need_data("misicnet_sim")
    for name in BENCHMARKS + ("jasper", "SAMSON:ZHU"):
        scene = load_benchmark(name)
        assert scene.has_truth
        assert scene.abundances.shape[:2] == scene.shape[:2]
        assert scene.endmembers.shape == (len(scene.endmember_names), scene.bands)
    assert load_benchmark("jasper").name == "jasper_ridge"
    assert load_benchmark("samson:misicnet").name == "samson"


def test_unknown_benchmark_lists_the_valid_names():
    with pytest.raises(UsageError) as caught:
        load_benchmark("indian_pines")
    for name in BENCHMARKS:
        assert name in str(caught.value)
    with pytest.raises(UsageError):
        load_samson("other")


def test_missing_data_raises_data_not_found(tmp_path, monkeypatch):
    monkeypatch.setenv("UNMIX_DATA", str(tmp_path))
    for name in ("samson", "jasper_ridge", "sim1:30db"):
        with pytest.raises(DataNotFoundError, match=str(tmp_path)):
            load_benchmark(name)


def test_the_data_folder_default(monkeypatch, tmp_path):
    from unmix.io import data

    monkeypatch.delenv("UNMIX_DATA", raising=False)
    assert data.data_dir() == data.REPO_ROOT.parent / "shared" / "data"          # a checkout
    monkeypatch.setattr(data, "REPO_ROOT", tmp_path / "site-packages")           # an installed package
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "share"))
    assert data.data_dir() == tmp_path / "share" / "unmix" / "data"
    monkeypatch.setenv("UNMIX_DATA", str(tmp_path / "mine"))
    assert data.data_dir() == tmp_path / "mine"
