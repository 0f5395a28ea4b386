"""The model manifest: ``manifest.json`` beside the exported networks (numpy and json only).

``unmix.export`` writes it, the runtime and the C++ core read it. Layout (format ``unmix-manifest/1``)::

    {
      "format": "unmix-manifest/1",
      "networks": {                                   # one entry per graph the pipeline calls
        "hybridstu": {
          "file": "hybridstu.onnx",                   # relative to the manifest's folder, inside it
          "sha256": "<64 hex digits>",
          "opset": 20,
          "precision": "fp32" | "fp16",               # of the graph's arithmetic; I/O is float32 either way
          "inputs":  [{"name": "cube", "shape": [1, 188, 64, 64], "dtype": "float32"}, ...],
          "outputs": [{"name": "abundances", "shape": [1, 4, 64, 64], "dtype": "float32"}],
          "reference": {"file": "hybridstu.onnx", "sha256": "...", "precision": "fp32"},   # optional
          "variants": {"int8": {"file": "hybridstu.int8.onnx", "sha256": "...", "precision": "int8",
                                "calibration": {...}, "checks": {...}}},   # optional
          ...                                         # optional: cache_key, checks, slimmed
        }, ...
      },
      "schedule": {"kind", "T", "beta_start", "beta_end", "prediction", "betas": [T floats]},
                                                      # betas: the schedule spelt out (checked)
      "inference": {"steps", "t0", "eta", "samples", "rounds", "tile", ...},   # defaults for unmix-run:
                                                      # unmix.runtime.settings.PipelineConfig's fields
      "sensor": {"bands": B, "wavelengths": [B floats, nm] | null},
      "endmembers": {"names": [p strings], "spectra": [[B floats] x p],
                     optional "spread": [[B floats] x p], optional "noise_std": float,
                     optional "library_hints": [{"name", "angle_degrees", "library"} x p]},
      "versions": {"unmix": "...", "torch": "...", ...},             # strings (or null)
      ...                                                           # optional: export, source
    }

Input order in ``inputs`` is the graph's call order. ``reference`` (fp16 exports only) names the
fp32 graph the fp16 one was checked against; a backend without fp16 support can load it instead.
``variants`` (``unmix-export --int8``) names other graphs of the same network with the same I/O, by
precision: ``int8`` is the fp32 graph after post-training static quantisation (QDQ), calibrated on
the training scene. ``Manifest.network_file(name, precision)`` picks one.

Checks. :func:`load_manifest` validates the whole document (keys, types, shapes, ranges, and that
every file name stays inside the model folder: no absolute path, no ``..``, no symlink that resolves
outside) and that every named file exists. ``schedule.betas`` spell the schedule out for readers without
its formulas; both readers rebuild the schedule from its configuration and refuse betas that differ
from it by more than :data:`BETAS_RTOL` (relative): the schedule run is always the one the betas state. The sha256 of a network file is checked **lazily**, when
that network is opened (:meth:`Manifest.network_file`, which every backend loader goes through), once
per file and process; ``load_manifest(..., verify=True)`` checks every file at load instead. Every
refusal is one :class:`ManifestError` line naming the file, the key and what was expected.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from unmix.errors import InputError, MissingInputError, UsageError, _describe
from unmix.io.files import write_atomic
from unmix.io.strict_json import to_plain
from unmix.runtime.network import DTYPES, NetworkSpec, TensorSpec
from unmix.runtime.settings import SETTINGS

__all__ = [
    "MANIFEST_FORMAT",
    "MANIFEST_NAME",
    "PRECISIONS",
    "WAVELENGTH_TOLERANCE_FRACTION",
    "WAVELENGTH_TOLERANCE_NM",
    "BETAS_RTOL",
    "INFERENCE_REQUIRED",
    "Manifest",
    "ManifestError",
    "NetworkEntry",
    "check_cube",
    "file_sha256",
    "load_manifest",
    "parse_manifest",
    "write_manifest",
]

MANIFEST_FORMAT = "unmix-manifest/1"
MANIFEST_NAME = "manifest.json"
#: Precisions of graph files (a graph's arithmetic; its inputs and outputs are float32 in all).
PRECISIONS = ("fp32", "fp16", "int8")
#: Those a graph may have only as a variant of an fp32 or fp16 entry.
VARIANT_PRECISIONS = ("int8",)
WAVELENGTH_TOLERANCE_NM = 1.0
WAVELENGTH_TOLERANCE_FRACTION = 0.1
#: The inference settings a manifest must give (the others keep PipelineConfig's defaults).
INFERENCE_REQUIRED = ("steps", "t0", "eta", "samples", "rounds", "tile")
#: The relative difference allowed between the manifest's betas and the schedule rebuilt from its
#: configuration (JSON keeps float64 exactly; the margin covers a last-digit libm difference in cos).
BETAS_RTOL = 1e-9
_REQUIRED = ("format", "networks", "schedule", "inference", "sensor", "endmembers", "versions")


class ManifestError(InputError):
    """A manifest that is not what the runtime expects: ``<file>: key '<key>': expected ..., got ...``."""

    def __init__(self, path: str | os.PathLike, key: str, expected: str, got: object = None,
                 show_got: bool = True):
        self.path = str(path)
        self.key = key
        message = f"{self.path}: key {key!r}: expected {expected}"
        if show_got:
            message += f", got {_describe(got)}"
        super().__init__(message)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------
# The parsed manifest
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class NetworkEntry:
    """One network of the manifest.

    Attributes:
        name: the network's name (``hybridstu``, ``abundance_step``, ``spectra_step``).
        file: the file name as written in the manifest (relative to the model folder).
        path: the absolute path of the file.
        sha256: the file's expected sha256 (hex).
        opset: the ONNX opset of the graph.
        precision: ``fp32``, ``fp16`` or ``int8`` (the graph's arithmetic; inputs and outputs are float32).
        inputs, outputs: name -> :class:`TensorSpec`, inputs in call order.
        reference: the fp32 graph an fp16 one was checked against, or None.
        variants: precision -> another graph of this network with the same I/O (``int8``), possibly empty.
        extra: the entry's other keys (``cache_key``, ``checks``, ...), as written.
    """

    name: str
    file: str
    path: Path
    sha256: str
    opset: int
    precision: str
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    reference: "NetworkEntry | None" = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    variants: dict[str, "NetworkEntry"] = field(default_factory=dict, repr=False, compare=False)

    def graphs(self) -> dict[str, "NetworkEntry"]:
        """Every graph of this network by precision: the entry's own, its reference, its variants."""
        found = {self.precision: self}
        if self.reference is not None:
            found.setdefault(self.reference.precision, self.reference)
        for precision, variant in self.variants.items():
            found.setdefault(precision, variant)
        return found

    @property
    def spec(self) -> NetworkSpec:
        """The I/O contract as a :class:`NetworkSpec`."""
        return NetworkSpec(inputs=dict(self.inputs), outputs=dict(self.outputs))


@dataclass
class Manifest:
    """A validated ``manifest.json`` (see the module docstring for the layout).

    Attributes:
        path: the manifest file; ``model_dir`` its folder.
        networks: name -> :class:`NetworkEntry`.
        schedule: the schedule configuration (``Schedule.from_config(manifest.schedule)`` rebuilds it).
        betas: ``(T,)`` float64 noise levels as exported (equal, to :data:`BETAS_RTOL`, to the schedule's).
        inference: inference defaults (:class:`unmix.runtime.settings.PipelineConfig` fields; at least
            ``steps, t0, eta, samples, rounds, tile``), each checked by its setting's kind and range.
        bands: B, the sensor's band count; ``wavelengths``: ``(B,)`` float64 nm, or None.
        endmember_names: p names; ``endmembers``: ``(p, B)`` float32 spectra on the cube's scale.
        endmember_spread: ``(p, B)`` float32 standard deviation of each endmember over the endmember
            engine's candidate sets, or None; ``noise_std``: the training scene's estimated noise (RMS
            over bands), or None. Both feed :func:`unmix.physics.uncertainty.propagated_uncertainty`.
        library_hints: per endmember, the closest library spectrum to the trained endmember
            (``{"name", "angle_degrees", "library"}``): a naming hint, not an identification; or None.
        versions: package name -> version string (or None).
        data: the whole document as read.
    """

    path: Path
    model_dir: Path
    format: str
    networks: dict[str, NetworkEntry]
    schedule: dict[str, Any]
    betas: np.ndarray
    inference: dict[str, Any]
    bands: int
    wavelengths: np.ndarray | None
    endmember_names: list[str]
    endmembers: np.ndarray
    versions: dict[str, Any]
    data: dict[str, Any] = field(repr=False)
    endmember_spread: np.ndarray | None = None
    noise_std: float | None = None
    library_hints: list[dict[str, Any]] | None = None
    _verified: set = field(default_factory=set, repr=False)

    @property
    def endmember_count(self) -> int:
        """p, the number of endmembers."""
        return len(self.endmember_names)

    def network(self, name: str) -> NetworkEntry:
        """The entry of network ``name`` (``InputError`` naming the manifest if it has none)."""
        if name not in self.networks:
            raise ManifestError(self.path, f"networks.{name}", f"the network {name!r} "
                                f"(the manifest has {', '.join(self.networks) or 'none'})", show_got=False)
        return self.networks[name]

    def network_file(self, name: str, precision: str | None = None) -> Path:
        """The path of network ``name``'s graph after checking its sha256 (once per process).

        ``precision``: None for the manifest's choice; ``"fp32"`` for the fp32 reference graph of an
        fp16 export (or the graph itself when it is fp32); ``"int8"`` for the quantised variant.
        """
        entry = self.network(name)
        if precision not in (None, entry.precision):
            if precision not in PRECISIONS:
                raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
            graphs = entry.graphs()
            if precision not in graphs:
                hint = " (export it with unmix-export --int8)" if precision == "int8" else ""
                raise ManifestError(self.path, f"networks.{name}", f"the {precision} graph of {name!r}{hint}; the "
                                    f"manifest has {', '.join(graphs)}", show_got=False)
            entry = graphs[precision]
        self._verify(entry, name)
        return entry.path

    def verify(self) -> None:
        """Check every network file's sha256 now (``InputError`` on the first mismatch)."""
        for name, entry in self.networks.items():
            self._verify(entry, name)
            for graph in entry.graphs().values():
                self._verify(graph, name)

    def _verify(self, entry: NetworkEntry, name: str) -> None:
        if entry.path in self._verified:
            return
        if not entry.path.is_file():
            raise MissingInputError(f"{self.path}: network {name!r}: file {entry.file!r} not found in {self.model_dir}")
        actual = file_sha256(entry.path)
        if actual != entry.sha256:
            raise InputError(f"{entry.path}: sha256 is {actual[:16]}..., {self.path.name} key "
                             f"'networks.{name}.sha256' expects {entry.sha256[:16]}... "
                             "(the file is corrupt or was replaced; re-export the model)")
        self._verified.add(entry.path)


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------

class _Checker:
    def __init__(self, path: Path):
        self.path = path

    def fail(self, key: str, expected: str, got: object = None, show_got: bool = True):
        raise ManifestError(self.path, key, expected, got, show_got)

    def mapping(self, data: Any, key: str, required: tuple[str, ...] = ()) -> dict[str, Any]:
        if not isinstance(data, dict):
            self.fail(key, "an object", data)
        for name in required:
            if name not in data:
                self.fail(f"{key}.{name}" if key else name, "to be present", show_got=False)
        return data

    def integer(self, value: Any, key: str, minimum: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(key, "an integer", value)
        if minimum is not None and value < minimum:
            self.fail(key, f"an integer >= {minimum}", value)
        return int(value)

    def number(self, value: Any, key: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.fail(key, "a finite number", value)
        return float(value)

    def string(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not value:
            self.fail(key, "a non-empty string", value)
        return value

    def numbers(self, value: Any, key: str, length: int | None = None) -> np.ndarray:
        if not isinstance(value, list) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            self.fail(key, "a list of numbers", value)
        try:
            array = np.asarray(value, dtype=np.float64)
        except (OverflowError, ValueError):
            self.fail(key, "finite numbers", value)
        if not np.isfinite(array).all():
            self.fail(key, "finite numbers", value)
        if length is not None and array.size != length:
            self.fail(key, f"{length} numbers", f"{array.size} numbers")
        return array


def _tensor_specs(check: _Checker, items: Any, key: str) -> dict[str, TensorSpec]:
    if not isinstance(items, list) or not items:
        check.fail(key, "a non-empty list of {name, shape, dtype}", items)
    specs: dict[str, TensorSpec] = {}
    for i, item in enumerate(items):
        where = f"{key}[{i}]"
        check.mapping(item, where, ("name", "shape", "dtype"))
        name = check.string(item["name"], f"{where}.name")
        if name in specs:
            check.fail(f"{where}.name", "a name used once", name)
        shape = item["shape"]
        if not isinstance(shape, list) or not shape or not all(
                isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape):
            check.fail(f"{where}.shape", "a static shape (a list of integers >= 1)", shape)
        if item["dtype"] not in DTYPES:
            check.fail(f"{where}.dtype", f"one of {', '.join(DTYPES)}", item["dtype"])
        specs[name] = TensorSpec(tuple(shape), item["dtype"])
    return specs


def _contained_file(check: _Checker, model_dir: Path, value: Any, key: str) -> Path:
    """The absolute path of a file name that must stay inside ``model_dir``."""
    name = check.string(value, key)
    if any(ord(c) < 32 for c in name):
        check.fail(key, "a file name without control characters", name)
    relative = Path(name)
    if relative.is_absolute() or relative.drive or name.startswith(("/", "\\")):
        check.fail(key, "a file name relative to the model folder, not an absolute path", name)
    if ".." in relative.parts or "\\" in name:
        check.fail(key, "a file name inside the model folder (no '..' and no backslash)", name)
    root = model_dir.resolve()
    target = (model_dir / relative)
    resolved = target.resolve()
    if resolved != root and root not in resolved.parents:
        check.fail(key, f"a file inside the model folder, but it resolves to {resolved} (a symlink out of it)", name)
    if not resolved.is_file():
        raise MissingInputError(f"{check.path}: key {key!r}: file {name!r} not found in {model_dir}")
    return target


def _network_entry(check: _Checker, model_dir: Path, name: str, data: Any, key: str,
                   reference: bool = False, precisions: tuple[str, ...] = ("fp32", "fp16")) -> NetworkEntry:
    required = ("file", "sha256", "precision") if reference else (
        "file", "sha256", "opset", "precision", "inputs", "outputs")
    check.mapping(data, key, required)
    path = _contained_file(check, model_dir, data["file"], f"{key}.file")
    sha = data["sha256"]
    if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        check.fail(f"{key}.sha256", "64 lowercase hex digits", sha)
    if data["precision"] not in precisions:
        check.fail(f"{key}.precision", f"one of {', '.join(precisions)}", data["precision"])
    if reference:
        return NetworkEntry(name=name, file=data["file"], path=path, sha256=sha, opset=0,
                            precision=data["precision"], inputs={}, outputs={}, extra=dict(data))
    opset = check.integer(data["opset"], f"{key}.opset", 1)
    inputs = _tensor_specs(check, data["inputs"], f"{key}.inputs")
    outputs = _tensor_specs(check, data["outputs"], f"{key}.outputs")
    ref = None
    if data.get("reference") is not None:
        ref = _network_entry(check, model_dir, name, data["reference"], f"{key}.reference", reference=True)
        ref = replace(ref, opset=opset, inputs=inputs, outputs=outputs)   # the I/O of the graph it stands for
    variants = {}
    if data.get("variants") is not None:
        table = data["variants"]
        if not isinstance(table, dict):
            check.fail(f"{key}.variants", "an object: precision -> {file, sha256, precision}", table)
        for precision, item in table.items():
            where = f"{key}.variants.{precision}"
            if precision not in VARIANT_PRECISIONS:
                check.fail(f"{key}.variants", f"precisions among {', '.join(VARIANT_PRECISIONS)}", precision)
            variant = _network_entry(check, model_dir, name, item, where, reference=True, precisions=(precision,))
            variants[precision] = replace(variant, opset=opset, inputs=inputs, outputs=outputs)
    extra = {k: v for k, v in data.items() if k not in required and k not in ("reference", "variants")}
    return NetworkEntry(name=name, file=data["file"], path=path, sha256=sha, opset=opset,
                        precision=data["precision"], inputs=inputs, outputs=outputs, reference=ref, extra=extra,
                        variants=variants)


def parse_manifest(data: Any, model_dir: str | os.PathLike, path: str | os.PathLike | None = None) -> Manifest:
    """Validate a manifest document (already parsed JSON) whose files live in ``model_dir``.

    ``path`` names the manifest in error messages (default ``model_dir/manifest.json``). Checks keys,
    types, shapes and file containment (not the sha256 of the files: see :meth:`Manifest.verify`).
    """
    model_dir = Path(model_dir)
    path = Path(path) if path is not None else model_dir / MANIFEST_NAME
    check = _Checker(path)
    check.mapping(data, "", ())
    for key in _REQUIRED:
        if key not in data:
            check.fail(key, "to be present", show_got=False)
    if data["format"] != MANIFEST_FORMAT:
        check.fail("format", f"{MANIFEST_FORMAT!r} (re-export the model with this version of unmix)",
                   data["format"])

    networks_data = check.mapping(data["networks"], "networks")
    if not networks_data:
        check.fail("networks", "at least one network", networks_data)
    networks = {}
    for name, entry in networks_data.items():
        if not isinstance(name, str) or not name or not all(c.isalnum() or c in "_-" for c in name):
            check.fail("networks", "network names of letters, digits, '_' or '-'", name)
        networks[name] = _network_entry(check, model_dir, name, entry, f"networks.{name}")

    schedule_data = check.mapping(data["schedule"], "schedule", ("kind", "T", "betas"))
    schedule = {k: v for k, v in schedule_data.items() if k != "betas"}
    from unmix.diffusion.schedule import Schedule

    try:
        expected = Schedule.from_config(dict(schedule)).betas
    except UsageError as exc:
        check.fail("schedule", f"a valid schedule ({exc})", show_got=False)
    T = check.integer(schedule_data["T"], "schedule.T", 2)
    betas = check.numbers(schedule_data["betas"], "schedule.betas", T)
    error = np.abs(betas - expected)
    if not (error <= BETAS_RTOL * expected).all():
        worst = int(np.argmax(error))
        check.fail("schedule.betas", f"the betas of the {schedule['kind']} schedule with T = {T} "
                   f"(index {worst}: {expected[worst]!r})", float(betas[worst]))

    inference = check.mapping(data["inference"], "inference", INFERENCE_REQUIRED)
    for setting in SETTINGS:
        if setting.name in inference:
            try:
                setting.check(inference[setting.name])
            except UsageError as exc:
                check.fail(f"inference.{setting.name}", f"a valid setting ({exc})", show_got=False)
    if inference["t0"] >= T:
        check.fail("inference.t0", f"an integer below schedule.T = {T}", inference["t0"])

    sensor = check.mapping(data["sensor"], "sensor", ("bands", "wavelengths"))
    bands = check.integer(sensor["bands"], "sensor.bands", 1)
    wavelengths = None
    if sensor["wavelengths"] is not None:
        wavelengths = check.numbers(sensor["wavelengths"], "sensor.wavelengths", bands)

    endmembers_data = check.mapping(data["endmembers"], "endmembers", ("names", "spectra"))
    names = endmembers_data["names"]
    if not isinstance(names, list) or len(names) < 2 or not all(isinstance(n, str) and n for n in names):
        check.fail("endmembers.names", "a list of at least 2 non-empty strings", names)
    spectra = endmembers_data["spectra"]
    if not isinstance(spectra, list) or len(spectra) != len(names):
        check.fail("endmembers.spectra", f"{len(names)} spectra (one per name)", spectra)
    endmembers = np.stack([check.numbers(row, f"endmembers.spectra[{k}]", bands)
                           for k, row in enumerate(spectra)]).astype(np.float32)
    # Optional (older manifests have neither): the engine's per-endmember spread and noise estimate.
    spread = endmembers_data.get("spread")
    if spread is not None:
        if not isinstance(spread, list) or len(spread) != len(names):
            check.fail("endmembers.spread", f"{len(names)} spectra (one per name)", spread)
        spread = np.stack([check.numbers(row, f"endmembers.spread[{k}]", bands)
                           for k, row in enumerate(spread)]).astype(np.float32)
        if (spread < 0).any():
            check.fail("endmembers.spread", "non-negative standard deviations", show_got=False)
    noise_std = endmembers_data.get("noise_std")
    if noise_std is not None:
        noise_std = check.number(noise_std, "endmembers.noise_std")
        if not noise_std >= 0:
            check.fail("endmembers.noise_std", "a non-negative number", noise_std)

    # Optional: the closest library spectrum of each endmember found in training (a naming hint).
    hints = endmembers_data.get("library_hints")
    if hints is not None:
        if not isinstance(hints, list) or len(hints) != len(names) or not all(
                isinstance(h, dict) and isinstance(h.get("name"), str) for h in hints):
            check.fail("endmembers.library_hints", f"{len(names)} objects with a 'name' string (one per name)",
                       show_got=False)
        hints = [{**h, "angle_degrees": check.number(h.get("angle_degrees"), f"endmembers.library_hints[{k}].angle_degrees")}
                 for k, h in enumerate(hints)]

    versions = check.mapping(data["versions"], "versions")
    for key, value in versions.items():
        if value is not None and not isinstance(value, str):
            check.fail(f"versions.{key}", "a version string or null", value)

    return Manifest(path=path, model_dir=model_dir, format=data["format"], networks=networks,
                    schedule=schedule, betas=betas, inference=dict(inference), bands=bands,
                    wavelengths=wavelengths, endmember_names=list(names), endmembers=endmembers,
                    versions=dict(versions), data=data, endmember_spread=spread, noise_std=noise_std,
                    library_hints=hints)


def load_manifest(model_dir: str | os.PathLike, verify: bool = False) -> Manifest:
    """Read and validate ``model_dir/manifest.json`` (``model_dir`` may also be the manifest file).

    The sha256 of each network file is checked when that network is opened; ``verify=True`` checks
    them all now.

    Raises:
        MissingInputError: the folder, the manifest or a named file does not exist.
        InputError (:class:`ManifestError`): invalid JSON, a missing key, a wrong type or shape, a file
            name outside the folder, or (on verification) a sha256 mismatch.
    """
    location = Path(model_dir)
    if location.is_file() and location.suffix.lower() != ".json":
        raise InputError(f"{location}: a file; expected the folder written by unmix-export (manifest.json and "
                         "the ONNX networks)")
    if location.is_file():
        path, folder = location, location.parent
    else:
        path, folder = location / MANIFEST_NAME, location
        if not location.is_dir():
            raise MissingInputError(f"{location}: model folder not found")
        if not path.is_file():
            raise MissingInputError(f"{path}: not found (not an exported unmix model; run unmix-export)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InputError(f"{path}: not valid JSON ({str(exc)[:200]})") from None
    manifest = parse_manifest(data, folder, path)
    if verify:
        manifest.verify()
    return manifest


def write_manifest(model_dir: str | os.PathLike, manifest: Mapping[str, Any]) -> Path:
    """Validate ``manifest`` against the files in ``model_dir`` and write ``manifest.json`` atomically.

    numpy values become JSON numbers and lists, NaN and infinities ``null``
    (:mod:`unmix.io.strict_json`). The document replaces ``manifest.json`` whole
    (:func:`unmix.io.files.write_atomic`): a reader sees the old manifest or the new one, never half of
    one. Returns the manifest's path.
    """
    folder = Path(model_dir)
    document = to_plain(dict(manifest))
    target = folder / MANIFEST_NAME
    parse_manifest(document, folder, target)
    try:
        text = json.dumps(document, indent=1, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"manifest is not JSON-serialisable: {exc}") from None
    return write_atomic(target, text + "\n", "write the manifest")


# --------------------------------------------------------------------------------------------------
# Cube against model
# --------------------------------------------------------------------------------------------------

def _describe_grid(bands: int, wavelengths: np.ndarray | None) -> str:
    if wavelengths is None or wavelengths.size == 0:
        return f"{bands} bands (no wavelengths)"
    return f"{bands} bands ({wavelengths[0]:.1f}-{wavelengths[-1]:.1f} nm)"


def wavelength_tolerance(wavelengths: np.ndarray) -> float:
    """Allowed per-band wavelength difference (nm): the larger of :data:`WAVELENGTH_TOLERANCE_NM` and
    :data:`WAVELENGTH_TOLERANCE_FRACTION` of the median band spacing."""
    spacing = np.abs(np.diff(np.asarray(wavelengths, dtype=np.float64)))
    median = float(np.median(spacing)) if spacing.size else 0.0
    return max(WAVELENGTH_TOLERANCE_NM, WAVELENGTH_TOLERANCE_FRACTION * median)


def check_cube(manifest: Manifest, scene: Any) -> list[str]:
    """Refuse a cube that the model was not exported for; returns notes on what could not be checked.

    ``scene`` is a :class:`unmix.io.scene.Scene` (or anything with ``shape`` (H, W, B) and
    ``wavelengths``), or an ``(H, W, B)`` array (band count only). The band count must equal the
    sensor's; when both have wavelengths, every band centre must agree within
    :func:`wavelength_tolerance`. A mismatch raises ``InputError`` with both grids.
    """
    shape = getattr(scene, "shape", None)
    if shape is None or len(shape) != 3:
        raise UsageError(f"expected a Scene or an (H, W, B) cube, got {type(scene).__name__} "
                         f"with shape {shape!r}")
    bands = int(shape[2])
    raw = getattr(scene, "wavelengths", None) if not isinstance(scene, np.ndarray) else None
    wavelengths = None if raw is None else np.asarray(raw, dtype=np.float64).reshape(-1)
    label = getattr(scene, "source", "") or getattr(scene, "name", "") or "the cube"
    model = f"the model in {manifest.model_dir}"
    if bands != manifest.bands:
        raise InputError(f"{label}: the cube has {_describe_grid(bands, wavelengths)} but {model} expects "
                         f"{_describe_grid(manifest.bands, manifest.wavelengths)}; "
                         "use a model exported for this sensor")
    notes: list[str] = []
    if wavelengths is None or manifest.wavelengths is None:
        missing = "the cube" if wavelengths is None else "the model"
        notes.append(f"{missing} has no wavelengths: only the band count ({bands}) was checked")
        return notes
    if wavelengths.size != bands:
        raise InputError(f"{label}: the cube has {bands} bands but {wavelengths.size} wavelengths")
    tolerance = wavelength_tolerance(manifest.wavelengths)
    difference = np.abs(wavelengths - manifest.wavelengths)
    worst = int(np.argmax(difference))
    if not np.isfinite(difference).all() or difference[worst] > tolerance:
        raise InputError(f"{label}: band {worst + 1} is at {wavelengths[worst]:.2f} nm in the cube but at "
                         f"{manifest.wavelengths[worst]:.2f} nm in {model} (tolerance {tolerance:.2f} nm); "
                         f"the cube has {_describe_grid(bands, wavelengths)}, the model "
                         f"{_describe_grid(manifest.bands, manifest.wavelengths)}")
    return notes
