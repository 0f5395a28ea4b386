"""A tiny real model (trained a few steps, exported to ONNX), built once per test session.

``tiny_model(tmp_path_factory)`` returns the folder holding ``scene.hdr`` (40 x 36 px, 24 bands, 450-900 nm,
the corpus's sensor), ``truth.npz``, ``checkpoint/`` and ``model/``; the first caller of a session builds it
(about 20 s on 2 cores), the others find it in the session's base temporary folder.
"""
from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def tiny_model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.getbasetemp() / "unmix-tiny-model"
    folder.mkdir(exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / "ready").exists():
            _build(folder)
            (folder / "ready").write_text("ok\n")
    return folder


def _build(folder: Path) -> None:
    from tests.test_train import micro_config, small_scene
    from unmix.export import export
    from unmix.io.envi import write_cube
    from unmix.train.trainer import fit

    scene = small_scene(height=40, width=36, bands=24, p=3)
    write_cube(folder / "scene.hdr", scene.read(), wavelengths=scene.wavelengths,
               map_info="UTM, 1.000, 1.000, 500000.000, 4100000.000, 30.0, 30.0, 11, North, WGS-84, units=Meters")
    np.savez(folder / "truth.npz", A=scene.abundances, E=scene.endmembers)
    fit(scene, 3, config=micro_config(), out=folder / "checkpoint", progress=False, log=lambda m: None)
    export(folder / "checkpoint", folder / "model", tile=32)


def cli_env(**extra: str) -> dict[str, str]:
    """The environment for running unmix's command lines from this checkout."""
    return dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", **extra)


#: ``python -c`` programs that run an entry point the way its console script does.
RUN = [sys.executable, "-m", "unmix.runtime.cli"]
TRAIN = [sys.executable, "-m", "unmix.train.cli"]
EVAL = [sys.executable, "-c", "import sys; from unmix.runtime.cli import eval_main; sys.argv[0] = 'unmix-eval'; "
        "eval_main()"]
