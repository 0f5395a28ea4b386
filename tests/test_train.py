"""unmix.train: configuration, resumable state, fit, unmix-train and data-parallel training."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from unmix.errors import InputError, UsageError
from unmix.io.envi import write_cube
from unmix.io.scene import Scene
from unmix.runtime.pipeline import dc_weight_for_noise
from unmix.train import data as train_data
from unmix.train.checkpoint import load_checkpoint
from unmix.train.config import TrainConfig, resolve_config
from unmix.train.trainer import fit
from unmix.train.state import TrainState

ROOT = Path(__file__).resolve().parents[1]


def micro_config(**overrides) -> TrainConfig:
    """A few steps of everything: exercises the code, not the accuracy."""
    settings = {
        "cnn": {"steps": 4, "crop": 16, "batch": 1, "synthetic_batch": 1, "vca_seeds": 1, "width": 4,
                "reduced_bands": 8},
        "spectra": {"steps": 3, "batch": 4, "base_channels": 8},
        "abundance": {"steps": 3, "batch": 2, "crop": 16, "base_channels": 8},
        "library": "none",
    }
    settings.update(overrides)
    return resolve_config("tiny", overrides=settings)


def small_scene(height=20, width=18, bands=24, p=3, seed=0) -> Scene:
    rng = np.random.default_rng(seed)
    endmembers = np.abs(np.cumsum(rng.normal(size=(p, bands)), axis=1)) / bands + 0.05
    abundances = rng.dirichlet(np.ones(p), size=(height, width)).astype(np.float32)
    cube = abundances @ endmembers + rng.normal(scale=0.002, size=(height, width, bands))
    return Scene.from_array(cube.astype(np.float32), name="small",
                            wavelengths=np.linspace(450, 900, bands),
                            endmembers=endmembers.astype(np.float32), abundances=abundances)


# --- configuration -----------------------------------------------------------------------------------

def test_presets_resolve_and_toml_overrides(tmp_path):
    tiny, default = resolve_config("tiny"), resolve_config(None)
    assert default.preset == "default" and tiny.cnn.steps < default.cnn.steps
    toml = tmp_path / "train.toml"
    toml.write_text('preset = "tiny"\nseed = 7\n[cnn]\nlr = 1\nsteps = 9\n')
    cfg = resolve_config(None, toml)
    assert (cfg.preset, cfg.seed, cfg.cnn.steps, cfg.cnn.lr) == ("tiny", 7, 9, 1.0)
    assert cfg.spectra.steps == tiny.spectra.steps


@pytest.mark.parametrize("text, message", [
    ("[cnn]\nstepz = 3\n", "unknown setting 'stepz'"),
    ("[cnn]\nsteps = 'many'\n", "expected int"),
    ("[schedule]\nkind = 'quadratic'\n", "kind must be"),
    ("[inference]\ndc_weight = 2000\n", r"\[inference\] dc_weight must be >= 0.0 and <= 1000.0"),
    ("[inference]\nsamples = 0\n", r"\[inference\] samples must be an integer >= 1"),
])
def test_bad_config_is_one_clear_error(tmp_path, text, message):
    toml = tmp_path / "bad.toml"
    toml.write_text(text)
    with pytest.raises(UsageError, match=message):
        resolve_config(None, toml)


def test_unparseable_toml_names_the_file(tmp_path):
    toml = tmp_path / "broken.toml"
    toml.write_text("[cnn\nsteps=")
    with pytest.raises(InputError, match="broken.toml"):
        resolve_config(None, toml)


# --- training state ----------------------------------------------------------------------------------

def test_train_state_round_trip(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    extra = torch.randn(3, 4)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    state = TrainState(tmp_path / "state", resume=False, fingerprint="abc")
    state.save("cnn", 5, {"net": model}, optimizer, {"endmembers": extra})

    clone = torch.nn.Linear(4, 3)
    clone_extra = torch.zeros(3, 4)
    clone_opt = torch.optim.Adam(clone.parameters(), lr=0.1)
    restored = TrainState(tmp_path / "state", resume=True, fingerprint="abc")
    assert restored.restore("cnn", {"net": clone}, clone_opt, {"endmembers": clone_extra}) == 5
    assert torch.equal(clone.weight, model.weight) and torch.equal(clone_extra, extra)
    a, b = optimizer.state_dict()["state"][0], clone_opt.state_dict()["state"][0]
    assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])
    with pytest.raises(InputError, match="other settings"):
        TrainState(tmp_path / "state", resume=True, fingerprint="xyz").restore("cnn", {"net": clone}, clone_opt, {})


# --- fit ---------------------------------------------------------------------------------------------

def test_fit_writes_a_checkpoint_that_loads(tmp_path):
    scene = small_scene()
    result = fit(scene, 3, config=micro_config(), out=tmp_path / "run", progress=False, log=lambda m: None)
    models, config = load_checkpoint(tmp_path / "run")
    assert set(models) == {"hybridstu", "spectra", "abundance"}
    assert config["sensor"]["bands"] == 24 and len(config["sensor"]["wavelengths"]) == 24
    assert np.asarray(config["endmembers"]["estimated"]).shape == (3, 24)
    assert config["scene"]["sha256"] and config["train"]["preset"] == "tiny"
    assert result.abundances.shape == (20, 18, 3)
    np.testing.assert_allclose(result.abundances.sum(-1), 1.0, atol=1e-5)
    assert (result.endmembers >= 0).all()
    assert not (tmp_path / "run" / ".train_state").exists()
    # The data-consistency weight comes from the engine's noise estimate (w = s tau^2 / sigma^2).
    engine = config["endmembers"]["engine"]
    E = np.asarray(config["endmembers"]["estimated"])
    expected = dc_weight_for_noise(E, engine["noise_rms"])
    assert config["train"]["inference"]["dc_weight"] == pytest.approx(expected)
    assert np.asarray(engine["spread"]).shape == (3, 24) and engine["mode"] in ("minimum_volume", "pixels")
    with torch.inference_mode():
        again = models["hybridstu"](torch.from_numpy(scene.read().transpose(2, 0, 1).copy())[None])[0]
    np.testing.assert_array_equal(again.permute(1, 2, 0).numpy(), result.abundances)


def test_fit_masks_nan_pixels_and_pads_small_scenes(tmp_path):
    cube = small_scene(height=9, width=7).read()
    cube[2, 3] = np.nan
    messages = []
    result = fit(Scene.from_array(cube, name="nan"), 3, config=micro_config(), out=tmp_path / "run",
                 progress=False, log=messages.append)
    assert any("1 pixels with NaN" in m for m in messages)
    assert result.summary["scene"]["masked_pixels"] == 1
    assert np.isfinite(result.abundances).all()


def test_fit_refuses_bad_endmember_counts(tmp_path):
    with pytest.raises(UsageError, match="between 2 and the band count 24"):
        fit(small_scene(), 30, config=micro_config(), out=tmp_path / "run", progress=False)


def test_library_prior_needs_wavelengths(tmp_path):
    cube = small_scene().read()
    messages = []
    fit(Scene.from_array(cube, name="nowl"), 3, config=micro_config(library="earthlib"), out=tmp_path / "run",
        progress=False, log=messages.append)
    assert any("library prior left out: the cube has no wavelengths" in m for m in messages)


def test_resume_continues_from_the_saved_step(tmp_path, monkeypatch):
    scene = small_scene()
    cfg = micro_config(save_every_s=0.0)
    reference = fit(scene, 3, config=cfg, out=tmp_path / "ref", progress=False, log=lambda m: None)

    real = train_data.step_generator
    calls = []

    def interrupted(seed, stage, step):
        calls.append((stage, step))
        if stage == "spectra" and step == 2:
            raise KeyboardInterrupt  # stands for a kill between two steps
        return real(seed, stage, step)

    monkeypatch.setattr(train_data, "step_generator", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fit(scene, 3, config=cfg, out=tmp_path / "run", progress=False, log=lambda m: None)
    saved = json.loads((tmp_path / "run" / ".train_state" / "spectra.json").read_text())
    assert saved["step"] == 2
    calls.clear()
    monkeypatch.setattr(train_data, "step_generator", real)
    # Without --resume the saved progress is kept and the run refused, naming both ways on.
    with pytest.raises(UsageError, match=r"interrupted run \(cnn at step 4, spectra at step 2\); continue it with "
                                         r"--resume, or discard it with --restart"):
        fit(scene, 3, config=cfg, out=tmp_path / "run", progress=False, log=lambda m: None)
    assert json.loads((tmp_path / "run" / ".train_state" / "spectra.json").read_text()) == saved
    messages = []
    resumed = fit(scene, 3, config=cfg, out=tmp_path / "run", resume=True, progress=False, log=messages.append)
    assert "resuming: cnn at step 4, spectra at step 2" in messages
    np.testing.assert_array_equal(resumed.endmembers, reference.endmembers)
    ref_models, _ = load_checkpoint(tmp_path / "ref")
    new_models, _ = load_checkpoint(tmp_path / "run")
    for name in ref_models:
        for (key, a), b in zip(ref_models[name].state_dict().items(), new_models[name].state_dict().values()):
            assert torch.equal(a, b), f"{name}.{key} differs after resume"


def test_one_stage_reuses_the_others(tmp_path):
    scene = small_scene()
    fit(scene, 3, config=micro_config(), out=tmp_path / "run", progress=False, log=lambda m: None)
    before, _ = load_checkpoint(tmp_path / "run")
    result = fit(scene, 3, config=micro_config(seed=5), stage="abundance", out=tmp_path / "run",
                 progress=False, log=lambda m: None)
    after, config = load_checkpoint(tmp_path / "run")
    assert result.summary["stages_trained"] == ["abundance"]
    assert all(torch.equal(a, b) for a, b in zip(before["hybridstu"].state_dict().values(),
                                                  after["hybridstu"].state_dict().values()))
    changed = any(not torch.equal(a, b) for a, b in zip(before["abundance"].state_dict().values(),
                                                          after["abundance"].state_dict().values()))
    assert changed


# --- unmix-train -------------------------------------------------------------------------------------

def _run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "unmix.train.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=1800)


def test_cli_trains_an_envi_cube(tmp_path):
    scene = small_scene()
    write_cube(tmp_path / "cube.hdr", scene.read(), wavelengths=scene.wavelengths)
    toml = tmp_path / "micro.toml"
    toml.write_text('library = "none"\n[cnn]\nsteps = 2\ncrop = 16\nbatch = 1\nsynthetic_batch = 1\nvca_seeds = 1\n'
                    'width = 4\n[spectra]\nsteps = 2\nbatch = 4\nbase_channels = 8\n'
                    '[abundance]\nsteps = 2\nbatch = 2\ncrop = 16\nbase_channels = 8\n')
    done = _run_cli(tmp_path / "cube.hdr", "-p", 3, "--config", toml, "--json", "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["checkpoint"] == str(Path("runs") / "cube")
    assert (tmp_path / "runs" / "cube" / "config.json").is_file()


@pytest.mark.parametrize("args, code, message", [
    (["missing.hdr", "-p", "3"], 66, "missing.hdr: cube not found"),
    (["nosuchbenchmark", "-p", "3"], 2, "nosuchbenchmark"),
    (["{cube}", "-p", "1"], 2, "1 is not in the range x>=2"),
])
def test_cli_bad_input_exit_codes(tmp_path, args, code, message):
    scene = small_scene()
    write_cube(tmp_path / "cube.hdr", scene.read())
    args = [a.format(cube=tmp_path / "cube.hdr") for a in args]
    done = _run_cli(*args, cwd=tmp_path)
    assert done.returncode == code, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr


# --- data-parallel training --------------------------------------------------------------------------

def test_two_process_ddp_matches_one_process(tmp_path):
    from tests.ddp_step import global_batches, make_models, step_losses

    out = tmp_path / "grads.safetensors"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    with socket.socket() as probe:  # a free loopback port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_addr", "127.0.0.1", "--master_port", str(port),
                           str(ROOT / "tests" / "ddp_worker.py"), str(out)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    distributed = load_file(str(out))

    cnn, unet = make_models()
    loss_cnn, loss_unet = step_losses(cnn, unet, global_batches())
    (loss_cnn + loss_unet).backward()
    single = {f"cnn.{n}": p.grad for n, p in cnn.named_parameters()}
    single.update({f"unet.{n}": p.grad for n, p in unet.named_parameters() if p.grad is not None})
    assert set(single) == set(distributed)
    for name, grad in single.items():
        torch.testing.assert_close(distributed[name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("module, program, extra", [("unmix.train.cli", "unmix-train", "train"),
                                                    ("unmix.export.cli", "unmix-export", "export")])
def test_missing_torch_names_the_extra(tmp_path, module, program, extra):
    # sys.modules["torch"] = None is how Python itself reports a package that cannot be imported
    scene = small_scene()
    write_cube(tmp_path / "cube.hdr", scene.read(), wavelengths=scene.wavelengths)
    (tmp_path / "checkpoint").mkdir()
    target = tmp_path / ("cube.hdr" if program == "unmix-train" else "checkpoint")
    code = (f"import sys; sys.modules['torch'] = None; sys.argv = ['{program}', {str(target)!r}, '--out', "
            f"{str(tmp_path / 'out')!r}] + (['-p', '3'] if '{program}' == 'unmix-train' else []); from {module} import main; main()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=1800)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (f"{program}: error: {program} needs torch, which is not installed: "
                                   f"pip install 'unmix[{extra}]'")


def test_restart_discards_saved_progress(tmp_path):
    from unmix.train.state import TrainState

    folder = tmp_path / ".train_state"
    folder.mkdir()
    (folder / "cnn.json").write_text('{"step": 7}')
    with pytest.raises(UsageError, match=r"\(cnn at step 7\); continue it with --resume"):
        TrainState(folder, resume=False)
    assert (folder / "cnn.json").is_file()
    assert TrainState(folder, resume=False, restart=True).progress() == ""
    assert not folder.exists()


def test_progress_in_a_log_is_whole_lines(capfd):
    from unmix.train.trainer import _progress

    with _progress(20, "cnn", True) as bar:      # stderr is not a terminal under pytest
        bar.update(3)
        for step in range(17):
            bar.set_postfix(loss=f"{step:.1f}")
            bar.update(1)
    lines = capfd.readouterr().err.splitlines()
    assert lines[0] == "cnn: 3/20 steps" and lines[-1] == "cnn: 20/20 steps, loss=16.0" and len(lines) == 10
    assert "\r" not in "".join(lines)


def test_library_hints_name_the_closest_spectrum():
    from unmix.train.trainer import library_hints

    library = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    hints = library_hints(np.array([[0.0, 2.0, 2.0], [1.0, 0.1, 0.0]]), library, ["water", "grass", "soil"])
    assert [h["name"] for h in hints] == ["grass", "water"]
    assert hints[0]["angle_degrees"] == 0.0 and hints[1]["angle_degrees"] == round(float(np.degrees(np.arctan(0.1))), 2)


def test_training_logs_library_hints(tmp_path):
    scene = small_scene()
    messages = []
    result = fit(scene, 3, config=micro_config(library="earthlib"), out=tmp_path / "run", progress=False,
                 log=messages.append)
    hints = result.summary["library"]["hints"]
    assert len(hints) == 3 and all(0 <= h["angle_degrees"] <= 90 for h in hints)
    assert sum("closest earthlib spectrum" in m and "a hint" in m for m in messages) == 3

    # The hints travel: checkpoint -> manifest -> run.json and the quicklook's titles.
    import unmix
    from unmix.export import export
    from unmix.runtime.bundle import write_bundle

    export(result.out_dir, tmp_path / "model", tile=32, progress=lambda _: None)
    manifest = json.loads((tmp_path / "model" / "manifest.json").read_text())
    assert [h["name"] for h in manifest["endmembers"]["library_hints"]] == [h["name"] for h in hints]
    unmixed = unmix.Unmixer.load(tmp_path / "model", backend="onnxruntime").run(scene, steps=1)
    bundle = write_bundle(tmp_path / "out", scene, unmixed, {}, plot=False)
    written = json.loads(next(bundle.glob("*.run.json")).read_text())["endmembers"]
    assert [e["library_hint"] for e in written] == manifest["endmembers"]["library_hints"]
    assert all(e["library_hint"]["library"] == "earthlib" for e in written)
