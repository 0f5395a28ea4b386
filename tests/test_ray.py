"""unmix-run --ray: the per-cube job as Ray tasks on a local Ray instance, against --jobs 1.

Runs for real (Ray starts in a few seconds). Skipped, with the reason, only where ray is not importable;
CI installs the ``ray`` extra, so there a missing ray is a failure.
"""
from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from tests.test_run import run_cli
from unmix.io.envi import read_cube, write_cube

BANDS, P, TILE = 20, 3, 32


def _need_ray() -> None:
    if importlib.util.find_spec("ray") is None:
        reason = "ray is not installed (pip install 'unmix[ray]')"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason + "; CI installs the ray extra")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A small exported model (random weights: the test is about scheduling, not accuracy)."""
    pytest.importorskip("torch")
    from tests.test_export import _config, _models
    from unmix.export import export
    from unmix.train.checkpoint import save_checkpoint

    folder = tmp_path_factory.mktemp("ray")
    checkpoint = save_checkpoint(folder / "checkpoint", _models(0), _config())
    export(checkpoint, folder / "model", tile=TILE, check=False)
    return folder / "model"


def _cubes(folder: Path) -> list[Path]:
    rng = np.random.default_rng(7)
    endmembers = 0.1 + 0.8 * rng.random((P, BANDS))
    wavelengths = np.linspace(400.0, 1000.0, BANDS)
    cubes = []
    for name, (height, width) in (("north", (20, 18)), ("south", (14, 24))):
        abundances = rng.dirichlet(np.ones(P), size=(height, width))
        data = (abundances @ endmembers + rng.normal(0, 0.004, (height, width, BANDS))).astype(np.float32)
        cubes.append(write_cube(folder / f"{name}.hdr", data, wavelengths=wavelengths,
                                map_info="UTM, 1.0, 1.0, 500000.0, 4100000.0, 30.0, 30.0, 11, North, WGS-84"))
    return cubes


def _bundle(folder: Path) -> dict:
    stem = folder.name
    run = json.loads((folder / f"{stem}.run.json").read_text())
    return {"abundances": read_cube(folder / f"{stem}.abund.hdr").read(),
            "rmse": read_cube(folder / f"{stem}.rmse.hdr").read(),
            "csv": (folder / f"{stem}.endmembers.csv").read_text(),
            "settings": run["settings"], "input": run["input"], "model": run["model"],
            "files": sorted(p.name for p in folder.iterdir())}


def test_ray_tasks_write_the_same_bundles_as_jobs_1(model, tmp_path):
    _need_ray()
    cubes = _cubes(tmp_path)
    missing = tmp_path / "absent.hdr"
    common = ["--model", model, "--threads", 1, "--no-quicklook", "--quiet", "--json"]
    serial = run_cli("main", *cubes, missing, *common, "--out", tmp_path / "serial")
    started = time.perf_counter()
    on_ray = run_cli("main", *cubes, missing, *common, "--out", tmp_path / "ray", "--ray", "local")
    seconds = time.perf_counter() - started
    # the same exit code and error line for the missing cube; the two good cubes written either way
    assert serial.returncode == on_ray.returncode == 66, (serial.stderr, on_ray.stderr)
    error = f"unmix-run: error: {missing}: cube not found"
    assert error in serial.stderr.splitlines() and error in on_ray.stderr.splitlines(), on_ray.stderr
    assert "Traceback" not in on_ray.stderr
    assert "as Ray tasks on a local Ray instance with 2 CPUs" in on_ray.stderr
    reports = {r["cube"]: r for r in json.loads(on_ray.stdout)["runs"]}
    assert [r["ok"] for r in json.loads(serial.stdout)["runs"]] == [True, True, False]
    assert reports[str(missing)] == {"cube": str(missing), "ok": False, "exit_code": 66,
                                     "error": f"{missing}: cube not found"}
    for cube in cubes:
        assert reports[str(cube)]["ok"] and reports[str(cube)]["bundle"] == str(tmp_path / "ray" / cube.stem)
        want, got = _bundle(tmp_path / "serial" / cube.stem), _bundle(tmp_path / "ray" / cube.stem)
        assert got["files"] == want["files"] and not list((tmp_path / "ray").glob(".*"))   # nothing staged left
        np.testing.assert_array_equal(got["abundances"], want["abundances"])
        np.testing.assert_array_equal(got["rmse"], want["rmse"])
        assert got["csv"] == want["csv"]
        assert got["settings"] == want["settings"] and got["input"] == want["input"]
        assert got["model"] == want["model"]
        assert np.isfinite(got["abundances"]).all()
        np.testing.assert_allclose(got["abundances"].sum(-1), 1.0, atol=1e-5)
    assert seconds < 120, f"unmix-run --ray took {seconds:.0f} s"


def test_ray_missing_names_the_extra(model, tmp_path):
    """Without ray installed: one line naming the extra, exit 2 (ray made unimportable here)."""
    import subprocess
    import sys

    from tests.test_run import ROOT

    code = ("import sys; sys.modules['ray'] = None; sys.modules['torch'] = None; "
            "from unmix.runtime.cli import main; sys.argv[0] = 'unmix-run'; main()")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "cube.hdr"), "--model", str(model),
                           "--ray", "local"], capture_output=True, text=True, timeout=1800,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.returncode == 2
    assert done.stderr.strip() == ("unmix-run: error: --ray needs Ray, which is not installed: "
                                   "pip install 'unmix[ray]'")


def test_ray_unreachable_cluster_is_one_line(model, tmp_path):
    _need_ray()
    cube = _cubes(tmp_path)[0]
    done = run_cli("main", cube, "--model", model, "--out", tmp_path / "out", "--ray", "127.0.0.1:9",
                   "--quiet", timeout=1800)
    assert done.returncode == 69, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("unmix-run: error: --ray 127.0.0.1:9: cannot start or reach Ray")
    assert not (tmp_path / "out").exists()
