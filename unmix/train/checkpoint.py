"""Checkpoints: one ``<name>.safetensors`` per network plus ``config.json``, written atomically.

Layout of a checkpoint folder::

    config.json              the caller's configuration, plus "networks": {name: {"class", "args",
                             "file", "sha256"[, "ema_file", "ema_sha256"]}} to rebuild each network
    <name>.safetensors       the network's weights (safetensors: tensors only, nothing executable)
    <name>.ema.safetensors   optional EMA weights of the same network

Nothing is pickled and nothing is unpickled: networks are rebuilt from their recorded constructor
arguments through a fixed registry (:data:`unmix.train.models.NETWORKS`), weights come from
safetensors, and each weight file's sha256 is checked on load.

Atomicity: everything is written into a temporary folder beside the target and renamed into place
(the old folder is first renamed aside, then removed), so a crash never leaves a half-written
checkpoint: the target is either the complete old one or the complete new one. If the process dies
exactly between the two renames, the old checkpoint survives intact as ``.<name>.old-*`` beside it
(:func:`load_checkpoint` names it in its error) and the next save puts it back before anything else.
A save holds an exclusive ``fcntl.flock`` on the parent folder (:func:`unmix.runtime.bundle.output_lock`),
so two processes saving there take turns and each checkpoint is whole; holding it, a save first
removes the temporary folders of saves that were killed.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from unmix.errors import InputError, MissingInputError, OutputError, UnmixError, UsageError, first_line, output_error
from unmix.io.strict_json import to_plain

__all__ = ["CHECKPOINT_FORMAT", "CONFIG_NAME", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_FORMAT = "unmix-checkpoint/1"
CONFIG_NAME = "config.json"
_NETWORKS_KEY = "networks"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_weights(tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    """Write tensors to a safetensors file (the one place weights are written; tests patch it)."""
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))


def _network_class(model: nn.Module) -> tuple[str, dict[str, Any]]:
    from unmix.train.models import NETWORKS

    name = type(model).__name__
    if NETWORKS.get(name) is not type(model) or not callable(getattr(model, "config", None)):
        raise UsageError(f"cannot checkpoint a {name}: only {', '.join(NETWORKS)} networks are supported")
    return name, model.config()


def _is_checkpoint(folder: Path) -> bool:
    try:
        config = json.loads((folder / CONFIG_NAME).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and isinstance(config.get(_NETWORKS_KEY), dict)


def _check_replaceable(out_dir: Path) -> None:
    """Refuse to replace a folder that is neither a checkpoint nor empty (hidden entries aside)."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise OutputError(f"{out_dir}: exists and is not a folder; choose another output folder")
    if _is_checkpoint(out_dir):
        return
    visible = [entry.name for entry in out_dir.iterdir() if not entry.name.startswith(".")]
    if visible:
        raise OutputError(f"{out_dir}: exists and is not an unmix checkpoint (it holds {visible[0]!r}); "
                          "choose another output folder or remove it")


def save_checkpoint(out_dir: str | os.PathLike, models: Mapping[str, nn.Module], config: Mapping[str, Any],
                    ema: Mapping[str, Any] | None = None) -> Path:
    """Write a checkpoint folder atomically and return its path.

    Args:
        out_dir: the checkpoint folder; created, or replaced as a whole if it already holds a
            checkpoint (or nothing but hidden entries). Hidden entries of an existing folder (names
            starting with ``.``, e.g. a trainer's ``.train_state``) are carried over unchanged.
            Any other existing folder is refused with ``OutputError``.
        models: network name (``[A-Za-z0-9_-]+``) -> HybridSTU / ResUNet; weights are saved on the
            CPU in their own dtype, constructor arguments (``model.config()``) in ``config.json``.
        config: JSON-serialisable settings stored at the top level of ``config.json`` (the key
            ``networks`` is reserved; ``format`` defaults to :data:`CHECKPOINT_FORMAT`). numpy values
            are converted; NaN and infinities are stored as ``null``.
        ema: optional network name -> EMA (``unmix.train.ddpm.EMA``) or a state dict of averaged
            weights, saved as ``<name>.ema.safetensors``.
    """
    out_dir = Path(out_dir)
    if _NETWORKS_KEY in config:
        raise UsageError(f"config key {_NETWORKS_KEY!r} is reserved for the checkpoint's network table")
    if not models:
        raise UsageError("a checkpoint needs at least one network")
    for name in list(models) + list(ema or {}):
        if not name or not all(c.isalnum() or c in "_-" for c in name):
            raise UsageError(f"network name must be letters, digits, '_' or '-', got {name!r}")
    unknown = sorted(set(ema or {}) - set(models))
    if unknown:
        raise UsageError(f"EMA weights given for {unknown[0]!r}, which is not among the networks")
    table = {}
    for name, model in models.items():
        class_name, args = _network_class(model)
        table[name] = {"class": class_name, "args": args, "file": f"{name}.safetensors"}
    document = to_plain(dict(config))
    document.setdefault("format", CHECKPOINT_FORMAT)
    document[_NETWORKS_KEY] = table
    try:
        json.dumps(document, indent=2, allow_nan=False)  # refuse a bad config before writing anything
    except (TypeError, ValueError) as exc:
        raise UsageError(f"checkpoint config is not JSON-serialisable: {exc}") from None

    from unmix.runtime.bundle import output_lock, repair_output

    _check_replaceable(out_dir)
    parent = out_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(out_dir, "create the checkpoint folder", exc) from None
    with output_lock(parent):
        repair_output(parent, out_dir.name, _is_checkpoint)
        _check_replaceable(out_dir)
        return _save_locked(out_dir, parent, table, document, models, ema)


def _save_locked(out_dir: Path, parent: Path, table: dict[str, Any], document: dict[str, Any],
                 models: Mapping[str, nn.Module], ema: Mapping[str, Any] | None) -> Path:
    from unmix.io.files import fsync_dir, fsync_tree, publish_modes

    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=parent))
    except OSError as exc:
        raise output_error(out_dir, "create the checkpoint folder", exc) from None
    aside: Path | None = None
    carried: list[str] = []
    try:
        for name, model in models.items():
            path = tmp / table[name]["file"]
            _write_weights(model.state_dict(), path)
            table[name]["sha256"] = _sha256(path)
            if ema and name in ema:
                averaged = ema[name]
                state = averaged.state_dict() if hasattr(averaged, "state_dict") else dict(averaged)
                ema_path = tmp / f"{name}.ema.safetensors"
                _write_weights(state, ema_path)
                table[name]["ema_file"] = ema_path.name
                table[name]["ema_sha256"] = _sha256(ema_path)
        text = json.dumps(document, indent=2, allow_nan=False)
        with open(tmp / CONFIG_NAME, "w") as handle:
            handle.write(text + "\n")
        publish_modes(tmp)
        fsync_tree(tmp)

        if out_dir.exists():
            for entry in out_dir.iterdir():
                if entry.name.startswith(".") and not (tmp / entry.name).exists():
                    os.rename(entry, tmp / entry.name)
                    carried.append(entry.name)
            aside = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=parent))
            os.rename(out_dir, aside / "checkpoint")
        os.rename(tmp, out_dir)
        fsync_dir(parent)
    except BaseException as exc:
        # Put everything back as it was: the old checkpoint in place, its hidden entries in it.
        if aside is not None and (aside / "checkpoint").exists() and not out_dir.exists():
            os.rename(aside / "checkpoint", out_dir)
        for name in carried:
            if (tmp / name).exists() and out_dir.exists():
                os.rename(tmp / name, out_dir / name)
        shutil.rmtree(tmp, ignore_errors=True)
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
        if isinstance(exc, OSError) and not isinstance(exc, UnmixError):
            raise output_error(out_dir, "write the checkpoint", exc) from exc
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    return out_dir


def _read_weights(path: Path, expected_sha256: str | None) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        raise MissingInputError(f"{path}: weights file not found")
    if expected_sha256 is not None and _sha256(path) != expected_sha256:
        raise InputError(f"{path}: checksum does not match config.json (the file is corrupt or was replaced)")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for corrupt headers and data
        raise InputError(f"{path}: not a readable safetensors file ({first_line(exc)})") from None


def load_checkpoint(checkpoint_dir: str | os.PathLike, ema: bool = False,
                    map_location: str | torch.device = "cpu") -> tuple[dict[str, nn.Module], dict[str, Any]]:
    """Rebuild every network of a checkpoint folder; returns ``(models, config)``.

    Each network is constructed from the class and arguments recorded in ``config.json`` and its
    weights loaded from safetensors (with ``ema=True``, the EMA weights where the checkpoint has them).
    Networks are returned in eval mode on ``map_location``. ``config`` is the whole ``config.json``
    (the caller's settings plus the ``networks`` table).

    Raises:
        MissingInputError: the folder, ``config.json`` or a weights file is missing.
        InputError: ``config.json`` or a weights file is corrupt, or they do not match.
    """
    from unmix.train.models import NETWORKS

    folder = Path(checkpoint_dir)
    config_path = folder / CONFIG_NAME
    if not folder.is_dir():
        hint = ""
        leftovers = sorted(folder.parent.glob(f".{folder.name}.old-*/checkpoint")) if folder.parent.is_dir() else []
        if leftovers:
            hint = f"; an interrupted save left the previous checkpoint at {leftovers[-1]}"
        raise MissingInputError(f"{folder}: checkpoint folder not found{hint}")
    if not config_path.is_file():
        raise MissingInputError(f"{config_path}: not found (not an unmix checkpoint folder)")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{config_path}: not valid JSON ({exc})") from None
    table = config.get(_NETWORKS_KEY) if isinstance(config, dict) else None
    if not isinstance(table, dict) or not table:
        raise InputError(f"{config_path}: key {_NETWORKS_KEY!r}: expected a table of networks")

    models: dict[str, nn.Module] = {}
    for name, entry in table.items():
        where = f"{config_path}: network {name!r}"
        if not isinstance(entry, dict) or not isinstance(entry.get("args"), dict):
            raise InputError(f"{where}: expected 'class', 'args' and 'file'")
        cls = NETWORKS.get(entry.get("class"))
        if cls is None:
            raise InputError(f"{where}: unknown class {entry.get('class')!r}; known: {', '.join(NETWORKS)}")
        file = entry.get("file")
        if not isinstance(file, str) or Path(file).name != file:
            raise InputError(f"{where}: key 'file' must be a file name in the folder, got {file!r}")
        try:
            model = cls(**entry["args"])
        except Exception as exc:  # noqa: BLE001 - TypeError, ValueError, torch's RuntimeError...: bad arguments
            raise InputError(f"{where}: cannot rebuild {cls.__name__} from its arguments ({first_line(exc)})") from None
        use_ema = ema and isinstance(entry.get("ema_file"), str) and Path(entry["ema_file"]).name == entry["ema_file"]
        weights_file = entry["ema_file"] if use_ema else file
        checksum = entry.get("ema_sha256" if use_ema else "sha256")
        weights_path = folder / weights_file
        resolved = weights_path.resolve()
        if folder.resolve() not in resolved.parents:
            raise InputError(f"{where}: {weights_file!r} resolves to {resolved}, outside the checkpoint folder "
                             "(a symlink out of it); refusing to read it")
        state = _read_weights(weights_path, checksum)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise InputError(f"{weights_path}: weights do not fit the {cls.__name__} recorded in config.json "
                             f"({first})") from None
        models[name] = model.to(map_location).eval()
    return models, config
