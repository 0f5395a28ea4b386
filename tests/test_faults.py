"""Faults: SIGKILL at many points of unmix-run and unmix-train, --resume after a kill, a full disk (a file
size limit), an unwritable output, and concurrent runs into one output folder.

Every check is on real processes, real files and the real model (ONNX Runtime): after each fault the
output holds the previous complete result or none, never part of one, and the error is one line with
its exit code (73 cannot create output, 74 write failed).
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from tests.corpus.model import RUN, TRAIN, cli_env, tiny_model
from unmix.errors import OutputError

#: The unmix-train settings of the test model (tests/test_train.py's micro_config), state saved every step.
MICRO_TOML = """library = "none"
save_every_s = 0.0
[cnn]
steps = 4
crop = 16
batch = 1
synthetic_batch = 1
vca_seeds = 1
width = 4
reduced_bands = 8
[spectra]
steps = 3
batch = 4
base_channels = 8
[abundance]
steps = 3
batch = 2
crop = 16
base_channels = 8
"""
STAGE_STEPS = {"cnn": 4, "spectra": 3, "abundance": 3}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory)


def _limits(max_file_bytes: int | None):
    """preexec_fn: a file size limit (RLIMIT_FSIZE) with SIGXFSZ ignored, so a write past it fails with EFBIG."""
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        if max_file_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))
    return apply


def _run(args, cwd: Path, max_file_bytes: int | None = None, timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env=cli_env(PYTHONDONTWRITEBYTECODE="1"), preexec_fn=_limits(max_file_bytes))


def _kill_when(process: subprocess.Popen, trigger, after: float = 0.0, limit: float = 3600.0) -> bool:
    """SIGKILL ``process`` ``after`` seconds after ``trigger()`` first holds; True if it was still running."""
    deadline = time.monotonic() + limit
    while process.poll() is None and not trigger() and time.monotonic() < deadline:
        time.sleep(0.0005)
    if after:
        time.sleep(after)
    running = process.poll() is None
    process.kill()
    process.wait()
    return running


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# --- unmix-run ------------------------------------------------------------------------------------------

RUN_ARGS = ["--samples", "2", "--eta", "0.5", "--quiet"]


def _bundle_of(built: Path, folder: Path, seed: int) -> tuple[dict[str, bytes], float]:
    start = time.monotonic()
    done = _run([*RUN, str(built / "scene.hdr"), "--model", str(built / "model"), "--out", str(folder),
                 "--seed", str(seed), *RUN_ARGS], cwd=folder.parent)
    assert done.returncode == 0, done.stderr
    return _files(folder / "scene"), time.monotonic() - start


def _same_bundle(found: dict[str, bytes], reference: dict[str, bytes]) -> bool:
    """Every file present and equal (run.json up to its timings)."""
    if set(found) != set(reference):
        return False
    for name, data in reference.items():
        if name.endswith(".run.json"):
            a, b = json.loads(found[name]), json.loads(data)
            if a["settings"] != b["settings"] or a["endmembers"] != b["endmembers"]:
                return False
        elif found[name] != data:
            return False
    return True


def test_unmix_run_killed_at_13_points_leaves_the_old_bundle_or_the_new_one(built, tmp_path):
    out = tmp_path / "out"
    new, seconds = _bundle_of(built, tmp_path / "reference", seed=7)
    old, _ = _bundle_of(built, out, seed=1)
    assert not _same_bundle(new, old)
    staging = lambda: bool(list(out.glob(".scene.tmp-*")))  # noqa: E731
    aside = lambda: bool(list(out.glob(".scene.old-*")))  # noqa: E731
    points = [("time", f * seconds, 0.0) for f in (0.15, 0.35, 0.55, 0.75, 0.9)]
    points += [("staging", staging, after) for after in (0.0, 0.002, 0.01, 0.03, 0.08, 0.2, 0.4)]
    points += [("aside", aside, 0.0)]
    outcomes, during_write = [], 0
    for kind, when, after in points:
        if (out / "scene").exists() and not _same_bundle(_files(out / "scene"), old):  # start from the old one
            shutil.rmtree(out / "scene")
        if not (out / "scene").exists():
            (out / "scene").mkdir()
            for name, data in old.items():
                (out / "scene" / name).write_bytes(data)
        started = time.monotonic()
        process = subprocess.Popen([*RUN, str(built / "scene.hdr"), "--model", str(built / "model"), "--out",
                                    str(out), "--seed", "7", *RUN_ARGS], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, env=cli_env(), cwd=tmp_path)
        if kind == "time":
            running = _kill_when(process, lambda: time.monotonic() - started >= when)
        else:
            running = _kill_when(process, when, after)
            during_write += running and when()
        if not (out / "scene").exists():
            outcome = "none"      # killed between the two renames: the old bundle waits aside
            assert aside()
        else:
            found = _files(out / "scene")
            outcome = "old" if _same_bundle(found, old) else "new" if _same_bundle(found, new) else "partial"
        assert outcome != "partial", f"kill point {kind} {after}: a partial bundle {sorted(found)}"
        outcomes.append((kind, running, outcome))
    print("unmix-run kill points (trigger, killed while running, outcome):", outcomes)
    assert len(points) == 13 and sum(running for _, running, _ in outcomes) >= 10, outcomes
    assert during_write >= 4 and {"old", "new"} <= {outcome for _, _, outcome in outcomes}, outcomes
    # The next run repairs what the kills left (a bundle moved aside, temporary folders) and replaces it.
    assert _same_bundle(_bundle_of(built, out, seed=7)[0], new)
    assert _hidden(out) == []


def test_disk_full_while_writing_a_bundle_keeps_the_old_one(built, tmp_path):
    out = tmp_path / "out"
    old, _ = _bundle_of(built, out, seed=1)
    largest = max(len(data) for data in old.values())
    for limit in (0, 4096, largest // 2):
        done = _run([*RUN, str(built / "scene.hdr"), "--model", str(built / "model"), "--out", str(out),
                     "--seed", "7", *RUN_ARGS], cwd=tmp_path, max_file_bytes=limit)
        assert done.returncode == 74, (limit, done.stderr)
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "File too large" in done.stderr and "unmix-run: error:" in done.stderr
        assert _files(out / "scene") == old and _hidden(out) == []


def test_unwritable_output_is_refused_cleanly(built, tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    cases = [tmp_path / "a-file", tmp_path / "a-file" / "out"]
    if os.geteuid() != 0:  # root ignores permissions
        locked = tmp_path / "read-only"
        locked.mkdir()
        locked.chmod(0o555)
        cases.append(locked)
    for out in cases:
        done = _run([*RUN, str(built / "scene.hdr"), "--model", str(built / "model"), "--out", str(out), "--quiet"],
                    cwd=tmp_path)
        assert done.returncode == 73, (out, done.stderr)
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
        assert str(out) in done.stderr
    assert (tmp_path / "a-file").read_text() == "not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["a-file"] + (["read-only"] if len(cases) > 2 else []))


def test_concurrent_runs_into_one_folder_each_write_a_whole_bundle(built, tmp_path):
    """Three unmix-run processes write the same bundle at once: each exits 0, the survivor is whole."""
    import unmix
    from unmix.io.envi import read_cube

    out = tmp_path / "out"
    seeds = (1, 2, 3)
    processes = [subprocess.Popen([*RUN, str(built / "scene.hdr"), "--model", str(built / "model"), "--out",
                                   str(out), "--seed", str(seed), *RUN_ARGS], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True, env=cli_env(), cwd=tmp_path)
                 for seed in seeds]
    for process in processes:
        assert process.wait(timeout=1800) == 0, process.stderr.read()
    run = json.loads((out / "scene" / "scene.run.json").read_text())
    assert run["settings"]["seed"] in seeds
    winner = unmix.Unmixer.load(built / "model", backend="onnxruntime").run(
        built / "scene.hdr", seed=run["settings"]["seed"], samples=2, eta=0.5)
    np.testing.assert_array_equal(read_cube(out / "scene" / "scene.abund.hdr").read(), winner.abundances)
    np.testing.assert_array_equal(read_cube(out / "scene" / "scene.uncertainty.hdr").read()[..., 0],
                                  winner.uncertainty)
    assert _hidden(out) == []


def test_a_writer_waits_for_the_folder_lock_then_gives_up(built, tmp_path):
    import unmix
    from unmix.io.envi import read_cube
    from unmix.runtime.bundle import output_lock, write_bundle

    out = tmp_path / "out"
    out.mkdir()
    scene = read_cube(built / "scene.hdr")
    result = unmix.Unmixer.load(built / "model", backend="onnxruntime").run(scene)
    with output_lock(out):
        started = time.monotonic()
        with pytest.raises(OutputError, match="another process has been writing in it") as info:
            write_bundle(out, scene, result, {}, plot=False, lock_timeout=0.3)
        assert 0.3 <= time.monotonic() - started < 5 and info.value.exit_code == 73
    assert list(out.iterdir()) == []
    bundle = write_bundle(out, scene, result, {}, plot=False)
    assert oct(bundle.stat().st_mode & 0o777) == oct(0o777 & ~_umask())


def test_a_kill_between_the_two_renames_is_repaired_by_the_next_writer(built, tmp_path):
    """The one state no outside kill can reliably hit: the old output moved aside, the new one not yet
    renamed in. The next writer, holding the lock, puts the old one back and removes the leftovers."""
    from unmix.runtime.bundle import is_bundle, output_lock, repair_output
    from unmix.train.checkpoint import _is_checkpoint

    out = tmp_path / "out"
    old, _ = _bundle_of(built, out, seed=1)
    (out / "scene").rename(out / ".scene.old-4242")
    (out / ".scene.tmp-abcd_123").mkdir()
    (out / ".scene.tmp-abcd_123" / "scene.abund.img").write_bytes(b"half")
    (out / ".scenery.tmp-abcd_123").mkdir()  # another stem's: left alone
    with output_lock(out):
        repair_output(out, "scene", is_bundle)
    assert _files(out / "scene") == old and _hidden(out) == [".scenery.tmp-abcd_123"]

    shutil.copytree(built / "checkpoint", tmp_path / ".run.old-x1y2z3" / "checkpoint")
    (tmp_path / ".run.tmp-q9").mkdir()
    with output_lock(tmp_path):
        repair_output(tmp_path, "run", _is_checkpoint)
    assert _weights(tmp_path / "run") == _weights(built / "checkpoint")
    assert not list(tmp_path.glob(".run.*"))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --- unmix-train ----------------------------------------------------------------------------------------

def _weights(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.safetensors"))}


def _progress(out: Path) -> int:
    """Optimiser steps saved in the training state (0 when there is none)."""
    total = 0
    for stage in STAGE_STEPS:
        try:
            total += json.loads((out / ".train_state" / f"{stage}.json").read_text())["step"]
        except (OSError, ValueError, KeyError):
            pass
    return total


def test_unmix_train_killed_at_8_points_resumes_to_the_same_checkpoint(built, tmp_path):
    """Each launch runs with --resume and is killed at a later point; the last one finishes. After every
    kill the folder holds no checkpoint or a whole one; the final weights equal an uninterrupted run's.
    Points: during start-up, right after a state save, inside state saves, inside the checkpoint save
    (staging written, renames), and after the checkpoint is written."""
    from unmix.train.checkpoint import load_checkpoint

    (tmp_path / "micro.toml").write_text(MICRO_TOML)
    reference = _weights(built / "checkpoint")  # the same settings, trained without interruption
    out = tmp_path / "run"
    command = [*TRAIN, str(built / "scene.hdr"), "-p", "3", "--config", str(tmp_path / "micro.toml"), "--out", str(out),
               "--device", "cpu", "--quiet", "--resume"]
    state_tmp = lambda: bool(list((out / ".train_state").glob("*.tmp*")))  # noqa: E731
    staging = lambda: bool(list(tmp_path.glob(".run.tmp-*")))  # noqa: E731
    points = [("start", None, 0.3), ("advance", 1, 0.0), ("state save", state_tmp, 0.0), ("advance", 2, 0.03),
              ("state save", state_tmp, 0.0005), ("checkpoint save", staging, 0.0),
              ("checkpoint save", staging, 0.01), ("checkpoint written", lambda: (out / "config.json").exists(), 0.0)]
    killed = []
    for kind, trigger, after in points:
        before = _progress(out)
        started = time.monotonic()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=cli_env(),
                                   cwd=tmp_path)
        if kind == "start":
            condition = lambda delay=after: time.monotonic() - started >= delay  # noqa: E731
            after = 0.0
        elif kind == "advance":
            condition = lambda n=trigger, b=before: _progress(out) >= b + n  # noqa: E731
        else:
            condition = trigger
        killed.append((kind, _kill_when(process, condition, after), before))
        if (out / "config.json").exists():
            models, config = load_checkpoint(out)  # whole and loadable
            assert _weights(out) == reference
        else:
            assert not out.exists() or [p.name for p in out.iterdir() if not p.name.startswith(".")] == []
    print("unmix-train kill points (trigger, killed while running, saved steps before):", killed)
    assert len(points) == 8 and sum(running for _, running, _ in killed) >= 7, killed
    assert any(before > 0 for _, _, before in killed[1:]), "no launch resumed from a saved state"
    done = _run(command, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert _weights(out) == reference
    assert _hidden(tmp_path) == [] and not (out / ".train_state").exists()


def test_unmix_train_disk_full_and_unwritable_out(built, tmp_path):
    (tmp_path / "micro.toml").write_text(MICRO_TOML)
    out = tmp_path / "run"
    shutil.copytree(built / "checkpoint", out)
    before = _files(out)
    command = [*TRAIN, str(built / "scene.hdr"), "-p", "3", "--config", str(tmp_path / "micro.toml"), "--device", "cpu",
               "--quiet"]
    (tmp_path / "a-file").write_text("x")
    env = cli_env(PYTHONDONTWRITEBYTECODE="1")
    full = subprocess.Popen([*command, "--out", str(out)], stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env,
                            preexec_fn=_limits(20_000))  # the first training-state save is larger
    blocked = subprocess.Popen([*command, "--out", str(tmp_path / "a-file" / "run")], stderr=subprocess.PIPE,
                               text=True, cwd=tmp_path, env=env)
    for process, code in ((full, 74), (blocked, 73)):
        stderr = process.communicate(timeout=1800)[1]
        assert process.returncode == code, stderr
        assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert _files(out) == before and _hidden(tmp_path) == []
    assert not list(out.rglob("*.tmp*"))
