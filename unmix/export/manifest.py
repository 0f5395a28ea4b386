"""The writer's side of ``manifest.json``: the document built from a checkpoint's configuration.

The schema, its validation and the atomic writer live in :mod:`unmix.runtime.manifest` (the runtime
reads manifests without torch); this module only assembles the document an export writes.
"""
from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

from unmix.errors import InputError
from unmix.runtime.manifest import INFERENCE_REQUIRED, MANIFEST_FORMAT, write_manifest
from unmix.runtime.settings import PipelineConfig

__all__ = ["PACKAGES", "build_manifest", "package_versions", "write_manifest"]

PACKAGES = ("unmix", "torch", "onnx", "onnxscript", "onnxslim", "onnxruntime", "openvino", "numpy")


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages an export involves (None when absent), and Python's."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    if versions["unmix"] is None:
        from unmix import __version__

        versions["unmix"] = __version__
    versions["python"] = platform.python_version()
    return versions


def _section(config: Mapping[str, Any], key: str, where: Path) -> Mapping[str, Any]:
    value = config.get(key)
    if not isinstance(value, Mapping):
        raise InputError(f"{where}: key {key!r}: expected an object (a checkpoint written by unmix-train), "
                         f"got {value!r}")
    return value


def build_manifest(config: Mapping[str, Any], networks: Mapping[str, Mapping[str, Any]], *, tile: int,
                   bands: int, endmembers: int, export: Mapping[str, Any],
                   config_path: str | Path = "config.json") -> dict[str, Any]:
    """The manifest document for an export.

    Args:
        config: the checkpoint's ``config.json`` (keys ``schedule``, ``sensor``, ``endmembers``
            {``names``, ``estimated``}, ``train.inference``, ``versions``, as ``unmix.train.fit`` writes).
        networks: name -> the manifest's network entry (file, sha256, opset, precision, inputs, outputs, ...).
        tile: the exported tile size (the manifest's ``inference.tile``).
        bands, endmembers: B and p of the exported networks (checked against ``config``).
        export: the export's settings and timings (the manifest's ``export`` section).
        config_path: the checkpoint's config file, for messages.
    """
    from unmix.diffusion.schedule import Schedule

    where = Path(config_path)
    schedule_config = _section(config, "schedule", where)
    try:
        schedule = Schedule.from_config(dict(schedule_config))
    except Exception as exc:
        raise InputError(f"{where}: key 'schedule': {exc}") from None

    sensor = _section(config, "sensor", where)
    if sensor.get("bands") != bands:
        raise InputError(f"{where}: key 'sensor.bands' is {sensor.get('bands')!r}, "
                         f"but the HybridSTU network takes {bands} bands")
    wavelengths = sensor.get("wavelengths")
    if wavelengths is not None and len(wavelengths) != bands:
        raise InputError(f"{where}: key 'sensor.wavelengths' has {len(wavelengths)} values, expected {bands}")

    members = _section(config, "endmembers", where)
    spectra = members.get("estimated")
    if not isinstance(spectra, list) or len(spectra) != endmembers or any(
            not isinstance(row, list) or len(row) != bands for row in spectra):
        raise InputError(f"{where}: key 'endmembers.estimated': expected {endmembers} spectra of {bands} values")
    names = members.get("names") or [f"endmember_{k + 1}" for k in range(endmembers)]
    if len(names) != endmembers:
        raise InputError(f"{where}: key 'endmembers.names' has {len(names)} names, expected {endmembers}")

    # The recorded settings (a PipelineConfig; None: not set, e.g. dc_weight without a noise estimate),
    # over the defaults of those a manifest requires.
    defaults = PipelineConfig().to_dict()
    recorded = config.get("train", {}).get("inference", {}) if isinstance(config.get("train"), Mapping) else {}
    inference = {key: defaults[key] for key in INFERENCE_REQUIRED}
    inference.update({k: v for k, v in dict(recorded).items() if k in defaults and v is not None})
    inference["tile"] = int(tile)

    return {
        "format": MANIFEST_FORMAT,
        "networks": {name: dict(entry) for name, entry in networks.items()},
        "schedule": {**schedule.to_config(), "betas": schedule.betas.tolist()},
        "inference": inference,
        "sensor": {"bands": bands, "wavelengths": None if wavelengths is None else [float(w) for w in wavelengths]},
        "endmembers": {"names": [str(n) for n in names], "spectra": [[float(v) for v in row] for row in spectra],
                       **_engine_uncertainty(members, endmembers, bands),
                       **_library_hints(config, endmembers)},
        "versions": package_versions(),
        "export": dict(export),
        "source": {"checkpoint_format": config.get("format"),
                   "weights": {name: entry.get("sha256") for name, entry in config.get("networks", {}).items()},
                   "train_versions": config.get("versions"),
                   "scene": (config.get("scene") or {}).get("name") if isinstance(config.get("scene"), Mapping)
                   else None},
    }


def _library_hints(config: Mapping[str, Any], endmembers: int) -> dict[str, Any]:
    """The closest library spectrum of each endmember found in training (a naming hint), when recorded."""
    library = config.get("library") if isinstance(config.get("library"), Mapping) else {}
    hints = library.get("hints")
    if not isinstance(hints, list) or len(hints) != endmembers or not all(
            isinstance(h, Mapping) and isinstance(h.get("name"), str) and isinstance(h.get("angle_degrees"), (int, float))
            for h in hints):
        return {}
    return {"library_hints": [{"name": h["name"], "angle_degrees": float(h["angle_degrees"]),
                               "library": str(library.get("setting"))} for h in hints]}


def _engine_uncertainty(members: Mapping[str, Any], endmembers: int, bands: int) -> dict[str, Any]:
    """The endmember engine's spread ``(p, B)`` and noise estimate, when the checkpoint records them."""
    engine = members.get("engine") if isinstance(members.get("engine"), Mapping) else {}
    out: dict[str, Any] = {}
    spread = engine.get("spread")
    if isinstance(spread, list) and len(spread) == endmembers and all(
            isinstance(row, list) and len(row) == bands for row in spread):
        out["spread"] = [[float(v) for v in row] for row in spread]
    if isinstance(engine.get("noise_rms"), (int, float)):
        out["noise_std"] = float(engine["noise_rms"])
    return out
