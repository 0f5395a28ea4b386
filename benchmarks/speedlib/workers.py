"""Fresh worker processes: ``speed.py --worker KIND ARGS...`` runs one measurement with its BLAS /
OpenMP pools at the benchmark's threads and prints its result as one JSON line."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .common import ROOT, SCRIPT
from .peak import peak_flops
from .pipeline import time_networks, time_pipeline, train_and_export, vca_fcls


def trained(folder: Path, bands: int, preset: str, threads: int, log) -> tuple[Path, Path, dict]:
    """:func:`train_and_export` in a child process (torch's thread pool and memory never live in the
    process that launches the timed runs)."""
    found = run_child("train", folder, bands, preset, threads=threads)
    log(found.pop("message"))
    return Path(found.pop("checkpoint")), Path(found.pop("model")), found


def run_child(kind: str, *args, threads: int) -> dict:
    """A worker of this script in a fresh Python process (its BLAS / OpenMP pools at ``threads``)."""
    command = [sys.executable, str(SCRIPT), "--worker", kind, *map(str, args)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads))
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"speed.py: worker {kind} {args} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def worker(argv: list[str]) -> None:
    kind, rest = argv[0], argv[1:]
    if kind == "pipeline":      # name checkpoint model size threads repeat steps|- header|- [bands]
        name, checkpoint, model, size, threads, repeat, steps, header = rest[:8]
        found = time_pipeline(name, Path(checkpoint), Path(model), int(size), int(threads), int(repeat),
                              None if steps == "-" else int(steps), None if header == "-" else header,
                              bands=int(rest[8]) if len(rest) > 8 else None)
    elif kind == "networks":    # name checkpoint model threads calls
        name, checkpoint, model, threads, calls = rest
        found = time_networks(name, Path(checkpoint), Path(model), int(threads), int(calls))
    elif kind == "train":       # folder bands preset
        messages = []
        checkpoint, model, facts = train_and_export(Path(rest[0]), int(rest[1]), rest[2], messages.append)
        found = {"checkpoint": str(checkpoint), "model": str(model), **facts, "message": messages[-1]}
    elif kind == "peak":
        found = peak_flops(int(rest[0]))
    elif kind == "vca_fcls":
        found = vca_fcls(int(rest[0]), int(rest[1]), int(rest[2]))
    else:
        raise SystemExit(f"speed.py: unknown worker {kind}")
    print(json.dumps(found))
