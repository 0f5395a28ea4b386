"""Resumable training state: per stage, the weights, optimiser moments and step, saved atomically.

Layout of the state folder (``<out>/.train_state``): ``<stage>.json`` is the commit point and names the
``<stage>.<step>.safetensors`` file that holds every tensor. A kill at any moment leaves either the
previous consistent pair or the new one; files of unfinished saves are ignored and cleaned up.
Each file is flushed to disk before it is renamed into place. Nothing is unpickled: tensors come
from safetensors, the rest from JSON; a state whose JSON names anything but its own
``<stage>.<step>.safetensors`` in the folder, or whose tensors do not fit, is refused (InputError).
A save that fails (disk full, file size limit) raises WriteError/OutputError and leaves the previous
state as it was. One training per folder at a time.
"""
from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from unmix.errors import InputError, UnmixError, UsageError, WriteError, first_line, output_error
from unmix.io.files import replacing

_FORMAT = "unmix-train-state/1"


class TrainState:
    """Save and restore the training state of each stage.

    Args:
        folder: where the state lives.
        resume: restore saved stages.
        restart: discard a saved state and start over. With neither, a saved state (an interrupted run) is
            kept and the run refused, so progress is never lost by forgetting ``--resume``.
        every_seconds: ``due`` is true at most this often (and always at a stage's last step).
        fingerprint: a string identifying the run (config and data); a saved state with another
            fingerprint is refused on resume rather than silently mixed in.
    """

    def __init__(self, folder: Path, resume: bool, every_seconds: float = 15.0, fingerprint: str = "",
                 restart: bool = False):
        self.folder = Path(folder)
        self.every_seconds = every_seconds
        self.fingerprint = fingerprint
        self._last_save = time.monotonic()
        saved = self.progress()
        if not resume and saved and not restart:
            raise UsageError(f"{self.folder}: holds the saved progress of an interrupted run ({saved}); continue it "
                             "with --resume, or discard it with --restart")
        if not resume and self.folder.exists():
            shutil.rmtree(self.folder)
        elif self.folder.is_dir():  # temporary files of saves that were killed part way
            for leftover in self.folder.glob("*.tmp*"):
                leftover.unlink(missing_ok=True)

    def progress(self) -> str:
        """The saved stages and steps, e.g. ``"cnn at step 120"``; empty when nothing is saved."""
        parts = []
        for meta_path in sorted(self.folder.glob("*.json")) if self.folder.is_dir() else []:
            try:
                step = json.loads(meta_path.read_text()).get("step")
            except (OSError, ValueError, AttributeError):
                step = None
            parts.append(f"{meta_path.stem} at step {step}" if isinstance(step, int) else meta_path.stem)
        return ", ".join(parts)

    def due(self, step: int, total: int) -> bool:
        return step == total or time.monotonic() - self._last_save >= self.every_seconds

    def save(self, stage: str, step: int, modules: dict[str, torch.nn.Module | dict[str, torch.Tensor]],
             optimizer: torch.optim.Optimizer, extra: dict[str, torch.Tensor]) -> None:
        """Write ``stage``'s state at ``step`` (after ``step`` optimiser steps)."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise output_error(self.folder, "create the training state folder", exc) from None
        tensors: dict[str, torch.Tensor] = {}
        for name, module in modules.items():
            items = module.state_dict() if isinstance(module, torch.nn.Module) else module
            for key, value in items.items():
                tensors[f"module/{name}/{key}"] = value.detach().cpu().contiguous()
        for key, value in extra.items():
            tensors[f"extra/{key}"] = value.detach().cpu().contiguous()
        opt = optimizer.state_dict()
        scalars: dict[str, Any] = {}
        for index, entries in opt["state"].items():
            for key, value in entries.items():
                if torch.is_tensor(value):
                    tensors[f"optimizer/{index}/{key}"] = value.detach().cpu().contiguous()
                else:
                    scalars[f"{index}/{key}"] = value
        weights = self.folder / f"{stage}.{step}.safetensors"
        try:
            with replacing(weights) as tmp:
                try:
                    save_file(tensors, str(tmp))
                except SafetensorError as exc:  # its I/O errors arrive as SafetensorError, not OSError
                    raise WriteError(f"{tmp}: cannot write the training state ({exc})") from None
            with replacing(self.folder / f"{stage}.json") as tmp:
                tmp.write_text(json.dumps({
                    "format": _FORMAT, "stage": stage, "step": step, "weights": weights.name,
                    "fingerprint": self.fingerprint, "param_groups": opt["param_groups"],
                    "optimizer_scalars": scalars,
                }))
        except BaseException as exc:
            try:
                self.folder.rmdir()  # only when empty: a first save that failed leaves nothing behind
            except OSError:
                pass
            if isinstance(exc, OSError) and not isinstance(exc, UnmixError):
                raise output_error(self.folder, "save the training state", exc) from None
            raise
        for old in self.folder.glob(f"{stage}.*.safetensors*"):
            if old.name != weights.name:
                old.unlink(missing_ok=True)
        self._last_save = time.monotonic()

    def restore(self, stage: str, modules: dict[str, torch.nn.Module | dict[str, torch.Tensor]],
                optimizer: torch.optim.Optimizer, extra: dict[str, torch.Tensor]) -> int:
        """Load ``stage``'s saved state into the given objects in place; return the step to start from."""
        meta_path = self.folder / f"{stage}.json"
        if not meta_path.is_file():
            return 0
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("format") != _FORMAT:
                raise ValueError(f"format {meta.get('format')!r}")
        except (ValueError, OSError) as exc:
            raise InputError(f"{meta_path}: not a readable training state ({exc}); remove it or run without --resume")
        if meta.get("fingerprint") != self.fingerprint:
            raise InputError(f"{meta_path}: saved by a run with other settings or data; "
                             "run without --resume to start again")
        name = meta.get("weights")
        if not isinstance(name, str) or not re.fullmatch(rf"{re.escape(stage)}\.[0-9]+\.safetensors", name) \
                or not isinstance(meta.get("step"), int) or meta["step"] < 0:
            raise InputError(f"{meta_path}: key 'weights': expected {stage}.<step>.safetensors in the folder, "
                             f"got {name!r}; run without --resume")
        weights = self.folder / name
        try:
            tensors = load_file(str(weights))
        except (SafetensorError, OSError, ValueError) as exc:
            raise InputError(f"{weights}: corrupt training state ({exc}); run without --resume") from None
        try:
            self._load(tensors, meta, modules, optimizer, extra)
        except (KeyError, RuntimeError, ValueError, TypeError, IndexError) as exc:
            raise InputError(f"{weights}: the training state does not fit this run ({first_line(exc)}); "
                             "run without --resume") from None
        return int(meta["step"])

    @staticmethod
    def _load(tensors: dict[str, torch.Tensor], meta: dict[str, Any],
              modules: dict[str, torch.nn.Module | dict[str, torch.Tensor]], optimizer: torch.optim.Optimizer,
              extra: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, module in modules.items():
                prefix = f"module/{name}/"
                items = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
                if isinstance(module, torch.nn.Module):
                    module.load_state_dict(items)
                else:
                    for key, value in items.items():
                        module[key].copy_(value)
            for key, value in extra.items():
                value.copy_(tensors[f"extra/{key}"])
        state: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            if key.startswith("optimizer/"):
                _, index, name = key.split("/", 2)
                state.setdefault(int(index), {})[name] = value
        for key, value in meta["optimizer_scalars"].items():
            index, name = key.split("/", 1)
            state.setdefault(int(index), {})[name] = value
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
