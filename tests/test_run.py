"""unmix-run, unmix-eval and unmix.Unmixer on a real exported model (ONNX Runtime and OpenVINO)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from unmix.io.envi import read_cube, write_cube

ROOT = Path(__file__).resolve().parents[1]

#: Runs a command-line entry point with torch made unimportable (the edge runtime must not need it).
NO_TORCH = ("import sys; sys.modules['torch'] = None; "
            "from unmix.runtime.cli import {entry}; sys.argv[0] = 'unmix'; {entry}()")


def run_cli(entry: str, *args, cwd=None, timeout=1800, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NO_TORCH.format(entry=entry), *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), **(env or {})))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(scene header, truth npz, model dir): a tiny scene, a few training steps, an fp32 export."""
    from tests.test_train import micro_config, small_scene
    from unmix.export import export
    from unmix.train.trainer import fit

    folder = tmp_path_factory.mktemp("run")
    scene = small_scene(height=40, width=36, bands=24, p=3)
    header = write_cube(folder / "scene.hdr", scene.read(), wavelengths=scene.wavelengths,
                        band_names=[f"b{i}" for i in range(24)],
                        map_info="UTM, 1.000, 1.000, 500000.000, 4100000.000, 30.0, 30.0, 11, North, WGS-84, "
                                 "units=Meters, rotation=15.0",
                        coordinate_system='PROJCS["WGS_1984_UTM_Zone_11N",GEOGCS["GCS_WGS_1984"]]')
    np.savez(folder / "truth.npz", A=scene.abundances, E=scene.endmembers)
    fit(scene, 3, config=micro_config(), out=folder / "checkpoint", progress=False, log=lambda m: None)
    export(folder / "checkpoint", folder / "model", tile=32)
    return header, folder / "truth.npz", folder / "model"


def test_readme_python_example(exported):
    header, _, model = exported
    import unmix

    unmixer = unmix.Unmixer.load(model, backend="onnxruntime")
    result = unmixer.run(header)
    assert result.abundances.shape == (40, 36, 3) and result.endmembers.shape == (3, 24)
    np.testing.assert_allclose(result.abundances.sum(-1), 1.0, atol=1e-5)
    assert (result.endmembers >= 0).all() and (result.abundances >= 0).all()


def test_openvino_matches_onnxruntime(exported):
    header, _, model = exported
    import unmix

    a = unmix.Unmixer.load(model, backend="onnxruntime").run(header)
    b = unmix.Unmixer.load(model, backend="openvino").run(header)
    assert np.abs(a.abundances - b.abundances).max() < 1e-4
    assert np.abs(a.endmembers - b.endmembers).max() < 1e-4


def test_unmix_run_writes_a_bundle_without_torch(exported, tmp_path):
    import spectral

    header, truth, model = exported
    done = run_cli("main", header, "--model", model, "--out", tmp_path / "out", "--samples", 3, "--eta", 0.5,
                   "--json", "--quiet")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)["runs"][0]
    bundle = Path(report["bundle"])
    assert bundle == tmp_path / "out" / "scene"
    names = {p.name for p in bundle.iterdir()}
    assert {"scene.abund.hdr", "scene.abund.img", "scene.rmse.hdr", "scene.uncertainty.hdr",
            "scene.endmembers.csv", "scene.endmembers.sli", "scene.quicklook.png", "scene.run.json"} <= names
    oracle = spectral.envi.open(str(bundle / "scene.abund.hdr"))
    assert oracle.shape == (40, 36, 3)
    assert oracle.metadata["band names"] == ["endmember_1", "endmember_2", "endmember_3"]
    # Spectral Python splits brace values on commas: map info comes back as its fields, every one intact
    assert oracle.metadata["map info"] == ["UTM", "1.000", "1.000", "500000.000", "4100000.000", "30.0", "30.0", "11",
                                           "North", "WGS-84", "units=Meters", "rotation=15.0"]
    assert ",".join(oracle.metadata["coordinate system string"]) == 'PROJCS["WGS_1984_UTM_Zone_11N"' \
        ',GEOGCS["GCS_WGS_1984"]]'
    source = read_cube(header)
    ours = read_cube(bundle / "scene.abund.hdr")
    assert ours.map_info == source.map_info and ours.coordinate_system == source.coordinate_system
    np.testing.assert_allclose(np.asarray(oracle.load()).sum(-1), 1.0, atol=1e-5)
    run = json.loads((bundle / "scene.run.json").read_text(), parse_constant=_not_json)
    validate_run_json(run)
    assert run["format"] == "unmix-run/1" and run["input"]["shape"] == [40, 36, 24]
    assert set(run["model"]["networks"]) == {"hybridstu", "abundance_step", "spectra_step"}
    assert len(run["endmembers"]) == 3 and run["settings"]["samples"] == 3
    csv = (bundle / "scene.endmembers.csv").read_text().splitlines()
    assert csv[0] == "wavelength_nm,endmember_1,endmember_2,endmember_3" and len(csv) == 25

    scored = run_cli("eval_main", bundle, "--truth", truth, "--cube", header, "--json")
    assert scored.returncode == 0, scored.stderr
    metrics = json.loads(scored.stdout)
    assert 0 <= metrics["abundance_rmse"] < 0.5 and metrics["psnr_db"] > 10
    matched = sorted(match["endmember"] for match in metrics["matches"])
    assert matched == ["endmember_1", "endmember_2", "endmember_3"]
    assert [match["truth"] for match in metrics["matches"]] == (metrics["names"] or ["truth_1", "truth_2", "truth_3"])
    printed = run_cli("eval_main", bundle, "--truth", truth, "--cube", header)
    assert printed.returncode == 0 and "Hungarian" not in printed.stdout, printed.stderr
    lines = printed.stdout.splitlines()
    assert len(lines) == 4 and all(" <- endmember_" in line and "SAD" in line for line in lines[1:])


def _not_json(constant: str):
    raise AssertionError(f"run.json holds {constant}, which is not JSON")


_NUMBER = (int, float)
#: key -> type (or a nested schema) of every run.json; "?" after a key: the value may be null.
RUN_SCHEMA = {
    "format": str,
    "input": {"path": str, "shape": list, "reflectance_scale?": _NUMBER, "masked_pixels": int},
    "model": {"path": str, "networks": dict},
    "backend": str,
    "versions": dict,
    "wall_s": _NUMBER,
    "notes": list,
    "endmembers": list,
    "timings": dict,
    "settings": dict,
}


def validate_run_json(run: dict, schema: dict = RUN_SCHEMA, where: str = "run.json") -> None:
    """Every key of ``schema`` present with its type (nested objects checked the same way)."""
    assert isinstance(run, dict), where
    for key, kind in schema.items():
        name, nullable = key.rstrip("?"), key.endswith("?")
        assert name in run, f"{where}: key {name!r} is missing"
        value = run[name]
        if value is None and nullable:
            continue
        if isinstance(kind, dict):
            validate_run_json(value, kind, f"{where}.{name}")
        else:
            assert isinstance(value, kind) and not isinstance(value, bool), f"{where}.{name}: {value!r}"
    if schema is RUN_SCHEMA:
        assert all(isinstance(size, int) and size > 0 for size in run["input"]["shape"])
        assert all(isinstance(v, str) and len(v) == 64 for v in run["model"]["networks"].values())
        assert all(isinstance(v, _NUMBER) and v >= 0 for v in run["timings"].values())
        assert all(isinstance(note, str) for note in run["notes"])
        for stats in run["endmembers"]:
            assert set(stats) >= {"name", "mean_abundance", "max_abundance", "dominant_fraction"}
            assert 0 <= stats["mean_abundance"] <= stats["max_abundance"] <= 1 + 1e-6


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("case, code, message", [
    ("band mismatch", 65, "but the model in"),
    ("truncated data file", 65, "key 'data file'"),
    ("missing cube", 66, "cube not found"),
    ("missing manifest", 66, "manifest.json"),
    ("corrupt onnx", 65, "hybridstu"),
    ("unwritable output", 73, "cannot"),
])
def test_unmix_run_bad_input(exported, tmp_path, case, code, message):
    import shutil

    header, _, model = exported
    cube, model_dir, out = header, model, tmp_path / "out"
    if case == "band mismatch":
        cube = write_cube(tmp_path / "other.hdr", np.random.default_rng(0).random((8, 8, 20), dtype=np.float32))
    elif case == "truncated data file":
        cube = write_cube(tmp_path / "short.hdr", read_cube(header).read())
        _truncate(tmp_path / "short.img")
    elif case == "missing cube":
        cube = tmp_path / "nothing.hdr"
    elif case == "missing manifest":
        model_dir = tmp_path / "model"
        shutil.copytree(model, model_dir)
        (model_dir / "manifest.json").unlink()
    elif case == "corrupt onnx":
        model_dir = tmp_path / "model"
        shutil.copytree(model, model_dir)
        target = model_dir / json.loads((model_dir / "manifest.json").read_text())["networks"]["hybridstu"]["file"]
        target.write_bytes(b"\x08\x07not an onnx graph")
    elif case == "unwritable output":
        out = tmp_path / "blocked" / "out"
        (tmp_path / "blocked").write_text("a file where a folder should be")
    done = run_cli("main", cube, "--model", model_dir, "--out", out, "--quiet")
    assert done.returncode == code, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "scene").exists()


def test_maps_kept_on_disk_give_the_same_bundle(exported, tmp_path):
    """UNMIX_MAPS_IN_MEMORY_MB=0 keeps every scene-sized map in a scratch file: the bundle is the same
    bit for bit (run.json aside, which records timings), and the scratch folder is gone afterwards."""
    header, _, model = exported
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    bundles = {}
    for name, env in (("memory", {}), ("disk", {"UNMIX_MAPS_IN_MEMORY_MB": "0", "TMPDIR": str(scratch)})):
        done = run_cli("main", header, "--model", model, "--out", tmp_path / name, "--samples", 2, "--eta", 0.5,
                       "--no-quicklook", "--quiet", env=env)
        assert done.returncode == 0, done.stderr
        bundles[name] = {f.name: f.read_bytes() for f in (tmp_path / name / "scene").iterdir()
                         if not f.name.endswith(".run.json")}
        run = json.loads((tmp_path / name / "scene" / "scene.run.json").read_text())
        assert run["settings"]["maps_on_disk"] is (name == "disk")
    assert len(bundles["disk"]) >= 7 and bundles["disk"] == bundles["memory"]
    assert list(scratch.glob("unmix-run-*")) == []
    done = run_cli("main", header, "--model", model, "--out", tmp_path / "bad", "--quiet",
                   env={"UNMIX_MAPS_IN_MEMORY_MB": "lots"})
    assert done.returncode == 2 and "UNMIX_MAPS_IN_MEMORY_MB must be a number of MiB >= 0" in done.stderr


def test_killed_run_leaves_no_partial_bundle(exported, tmp_path):
    """SIGKILL while the bundle is being staged: the output folder holds no bundle afterwards."""
    header, _, model = exported
    big = write_cube(tmp_path / "big.hdr", np.tile(read_cube(header).read(), (6, 6, 1)),
                     wavelengths=read_cube(header).wavelengths)
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "unmix.runtime.cli", str(big), "--model", str(model),
                                "--out", str(out), "--samples", "4", "--eta", "1", "--quiet"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Wait for the staging folder for as long as the run lasts (a loaded machine may take many minutes to
    # get there); the guard only ends a hung run.
    guard = time.monotonic() + 3600
    while process.poll() is None and not list(out.glob(".big.tmp-*")) and time.monotonic() < guard:
        time.sleep(0.005)
    staged = bool(list(out.glob(".big.tmp-*")))
    finished = process.poll() is not None
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert staged, ("the run finished before it could be interrupted while writing" if finished
                    else "the run neither staged its bundle nor finished within an hour")
    assert not (out / "big").exists()


def test_readme_example_runs_as_written(exported, tmp_path, monkeypatch):
    """The Python block of README.md, run against a real exported model and cube."""
    header, _, model = exported
    text = (ROOT / "README.md").read_text()
    block = text.split("## Python API", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert len(block.strip().splitlines()) == 5
    for suffix in (".hdr", ".img"):
        (tmp_path / f"scene{suffix}").symlink_to(header.with_suffix(suffix))
    (tmp_path / "model").symlink_to(model)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["result"].abundances.shape == (40, 36, 3)


def test_two_cubes_with_one_bundle_name_are_refused_before_any_work(tmp_path):
    """a/scene.hdr and b/scene.hdr would both write OUT/scene: exit 2 naming both, nothing written."""
    import subprocess
    import sys

    from unmix.io.envi import write_cube

    cube = np.random.default_rng(0).random((4, 5, 6)).astype(np.float32)
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        write_cube(tmp_path / folder / "scene.hdr", cube)
    model = tmp_path / "model"
    model.mkdir()
    done = subprocess.run([sys.executable, "-m", "unmix.runtime.cli", str(tmp_path / "a" / "scene.hdr"),
                           str(tmp_path / "b" / "scene.hdr"), "--model", str(model), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 2, done.stderr
    assert "would both write" in done.stderr and done.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_unmix_run_reestimates_endmembers_on_request(exported, tmp_path):
    """--reestimate-endmembers without a number (N = 20000, more than the cube's 1440 pixels: all are
    used) runs end to end without torch; the JSON summary and run.json say where E came from."""
    header, _, model = exported
    done = run_cli("main", header, "--model", model, "--out", tmp_path / "out", "--no-quicklook", "--json", "--quiet",
                   "--reestimate-endmembers")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)["runs"][0]
    assert report["endmembers_source"] == "reestimated"
    run = json.loads((tmp_path / "out" / "scene" / "scene.run.json").read_text(), parse_constant=_not_json)
    validate_run_json(run)
    settings = run["settings"]
    assert settings["endmembers_source"] == "reestimated"
    assert settings["reestimation"]["sample_size"] == 40 * 36 and settings["reestimation"]["sample_limit"] == 20000
    assert settings["dc_weight"] == settings["reestimation"]["dc_weight"]
    abundances = read_cube(tmp_path / "out" / "scene" / "scene.abund.hdr").read()
    assert (abundances >= 0).all()
    np.testing.assert_allclose(abundances.sum(-1), 1.0, atol=1e-5)
    endmembers = np.loadtxt(tmp_path / "out" / "scene" / "scene.endmembers.csv", delimiter=",", skiprows=1)[:, 1:]
    assert (endmembers >= 0).all()
    # Without the option the model's endmembers are used, and the summary says so.
    plain = run_cli("main", header, "--model", model, "--out", tmp_path / "plain", "--no-quicklook", "--json",
                    "--quiet")
    assert plain.returncode == 0, plain.stderr
    assert json.loads(plain.stdout)["runs"][0]["endmembers_source"] == "model"


@pytest.mark.parametrize("value", ["99", "lots", "2e4", "0"])
def test_unmix_run_refuses_a_bad_reestimate_sample(tmp_path, value):
    """Refused with one sentence naming the option, before the model or the cube is read."""
    done = subprocess.run([sys.executable, "-m", "unmix.runtime.cli", str(tmp_path / "scene.hdr"), "--model",
                           str(tmp_path / "model"), f"--reestimate-endmembers={value}"],
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 2, done.stderr
    assert "--reestimate-endmembers: expected a whole number of pixels >= 100" in done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def test_an_unusable_out_is_refused_before_the_model_or_cube_is_read(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    for out, where in [(tmp_path / "a-file", tmp_path / "a-file"), (tmp_path / "a-file" / "out", tmp_path / "a-file")]:
        # neither the cube nor the model exists: the --out check comes first
        done = run_cli("main", tmp_path / "missing.hdr", "--model", tmp_path / "no-model",
                       "--out", out, "--quiet", cwd=tmp_path)
        assert done.returncode == 73, done.stderr
        assert done.stderr.strip().startswith(f"unmix-run: error: {where}: is a file, not a folder")
        assert str(out) in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_every_command_states_its_version():
    import unmix

    for entry, program in [("main", "unmix-run"), ("eval_main", "unmix-eval")]:
        done = run_cli(entry, "--version")
        assert (done.returncode, done.stdout.strip()) == (0, f"{program} {unmix.__version__}"), done.stderr
    for module, program in [("unmix.train.cli", "unmix-train"), ("unmix.export.cli", "unmix-export")]:
        done = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=1800)
        assert (done.returncode, done.stdout.strip()) == (0, f"{program} {unmix.__version__}"), done.stderr


def test_a_benchmark_name_is_a_cube(tmp_path, monkeypatch):
    """unmix-run and unmix-train read a word as a benchmark name and a path as ENVI (unmix.io.sources)."""
    from unmix.errors import DataNotFoundError, MissingInputError
    from unmix.io.sources import open_cube

    monkeypatch.setenv("UNMIX_DATA", str(tmp_path))
    with pytest.raises(DataNotFoundError, match="samson"):
        open_cube("samson")
    with pytest.raises(MissingInputError, match="samson.hdr: cube not found"):
        open_cube(tmp_path / "samson.hdr")


def test_quicklook_breaks_spectra_at_gaps_and_shows_the_uncertainty(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib.image

    from unmix.runtime.bundle import quicklook, spectrum_with_gaps

    x, y = spectrum_with_gaps(np.array([400.0, 410, 420, 1000, 1010]), np.arange(5.0))
    np.testing.assert_array_equal(x, [400, 410, 420, np.nan, 1000, 1010])
    np.testing.assert_array_equal(y, [0, 1, 2, np.nan, 3, 4])
    rng = np.random.default_rng(0)
    abundances = rng.dirichlet(np.ones(3), size=(8, 8)).astype(np.float32)
    spectra, rmse = rng.random((3, 5)).astype(np.float32), rng.random((8, 8)).astype(np.float32)
    widths = []
    for uncertainty in (None, rmse):
        path = tmp_path / f"q{len(widths)}.png"
        assert quicklook(path, abundances, spectra, ["a", "b", "c"], np.array([400.0, 410, 420, 1000, 1010]), rmse,
                         "t", uncertainty=uncertainty) is None
        widths.append(matplotlib.image.imread(path).shape[1])
    assert widths[1] == widths[0] + 260       # one more 2.6-inch panel at 100 dpi: the uncertainty map
