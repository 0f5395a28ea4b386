"""The TensorRT engine cache: serialized plans keyed by what they were built from (numpy and json only).

A TensorRT engine runs only on the TensorRT version and GPU architecture that built it, and only for
the graph and shapes it was built from. Each plan is therefore stored as ``<name>.<key[:16]>.plan``
beside a JSON sidecar ``<name>.<key[:16]>.json`` (format ``unmix-engine/1``) holding:

- the key fields: ``onnx_sha256``, ``precision``, ``input_shapes`` (name -> list of sizes),
  ``trt_version``, ``compute_capability`` (``"8.7"``), and ``key``, the sha256 of their canonical JSON
  (:func:`engine_cache_key`);
- the plan's ``plan_sha256`` and ``plan_bytes``;
- ``build_seconds``, ``builder_flags`` (workspace, strongly typed, timing cache, ...) and ``created``.

Rules: a plan is run only when its sidecar exists, parses, names the requested key (recomputed from
its own fields) and the plan's bytes hash to ``plan_sha256``, **and** the deserializer accepts it
(TensorRT's ``deserialize_cuda_engine`` returns None for a plan of another version or GPU). Anything
else is a miss with a one-line reason: :func:`load_or_build` then rebuilds from the ONNX, or, when
rebuilding is not allowed (no ONNX, no builder), raises :class:`EngineCacheError` with that reason.
The plan is written before its sidecar, each atomically, so an interrupted write leaves a plan with
no sidecar, which is never run.

Nothing here imports TensorRT: the builder and deserializer are callables handed in (the real ones:
:func:`unmix.export.tensorrt_build.build_serialized_engine` and
:func:`unmix.runtime.backends.tensorrt_backend.deserializer`).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from unmix.errors import InputError, UsageError
from unmix.io.files import write_atomic

__all__ = [
    "ENGINE_FORMAT",
    "CacheLookup",
    "EngineCacheError",
    "EngineIdentity",
    "EngineSidecar",
    "LoadedEngine",
    "engine_cache_key",
    "engine_paths",
    "find_engine",
    "load_or_build",
    "store_engine",
]

ENGINE_FORMAT = "unmix-engine/1"
_PRECISIONS = ("fp32", "fp16")


class EngineCacheError(InputError):
    """A cached engine that cannot be used and cannot be rebuilt (one sentence naming the plan)."""


def _shapes(input_shapes: Mapping[str, Any]) -> dict[str, list[int]]:
    if not isinstance(input_shapes, Mapping) or not input_shapes:
        raise UsageError(f"input_shapes must be a non-empty name -> shape mapping, got {input_shapes!r}")
    shapes = {}
    for name, shape in input_shapes.items():
        try:
            sizes = [int(size) for size in shape]
        except (TypeError, ValueError):
            raise UsageError(f"input {name!r}: shape must be a sequence of integers, got {shape!r}") from None
        if any(size < 1 for size in sizes) or any(isinstance(size, bool) for size in shape):
            raise UsageError(f"input {name!r}: an engine needs static sizes >= 1, got {list(shape)}")
        shapes[str(name)] = sizes
    return shapes


def engine_cache_key(onnx_sha256: str, precision: str, input_shapes: Mapping[str, Any], trt_version: str,
                     compute_capability: str) -> str:
    """sha256 (hex) of the canonical JSON of everything an engine depends on.

    Args:
        onnx_sha256: the graph file's sha256 (hex, as in the manifest).
        precision: ``"fp32"`` or ``"fp16"`` (of the graph; the engine is built strongly typed).
        input_shapes: input name -> static shape. Order of the names does not matter.
        trt_version: ``tensorrt.__version__``.
        compute_capability: the GPU's ``"major.minor"``, e.g. ``"9.0"``.
    """
    for value, label in ((onnx_sha256, "onnx_sha256"), (trt_version, "trt_version"),
                         (compute_capability, "compute_capability")):
        if not isinstance(value, str) or not value:
            raise UsageError(f"{label} must be a non-empty string, got {value!r}")
    if precision not in _PRECISIONS:
        raise UsageError(f"precision must be one of {', '.join(_PRECISIONS)}, got {precision!r}")
    document = {"format": ENGINE_FORMAT, "onnx_sha256": onnx_sha256.lower(), "precision": precision,
                "input_shapes": _shapes(input_shapes), "trt_version": trt_version,
                "compute_capability": compute_capability}
    text = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class EngineIdentity:
    """What one engine is built from; :attr:`key` is its :func:`engine_cache_key`."""

    name: str
    onnx_sha256: str
    precision: str
    input_shapes: dict[str, list[int]]
    trt_version: str
    compute_capability: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or any(c in self.name for c in "/\\\0") \
                or self.name.startswith("."):
            raise UsageError(f"engine name must be a plain file-name stem, got {self.name!r}")
        object.__setattr__(self, "input_shapes", _shapes(self.input_shapes))

    @property
    def key(self) -> str:
        return engine_cache_key(self.onnx_sha256, self.precision, self.input_shapes, self.trt_version,
                                self.compute_capability)


@dataclass(frozen=True)
class EngineSidecar:
    """The JSON written beside a plan (module docstring)."""

    name: str
    key: str
    onnx_sha256: str
    precision: str
    input_shapes: dict[str, list[int]]
    trt_version: str
    compute_capability: str
    plan_sha256: str
    plan_bytes: int
    build_seconds: float
    builder_flags: dict[str, Any] = field(default_factory=dict)
    created: str = ""

    @property
    def identity(self) -> EngineIdentity:
        return EngineIdentity(self.name, self.onnx_sha256, self.precision, self.input_shapes, self.trt_version,
                              self.compute_capability)

    def to_dict(self) -> dict[str, Any]:
        return {"format": ENGINE_FORMAT, "name": self.name, "key": self.key, "onnx_sha256": self.onnx_sha256,
                "precision": self.precision, "input_shapes": self.input_shapes, "trt_version": self.trt_version,
                "compute_capability": self.compute_capability, "plan_sha256": self.plan_sha256,
                "plan_bytes": self.plan_bytes, "build_seconds": self.build_seconds,
                "builder_flags": self.builder_flags, "created": self.created}

    @classmethod
    def from_dict(cls, data: Any, where: str | os.PathLike = "sidecar") -> "EngineSidecar":
        """Parse a sidecar document (InputError naming ``where`` and the key when it is malformed)."""
        if not isinstance(data, Mapping):
            raise InputError(f"{where}: expected a JSON object, got {type(data).__name__}")
        if data.get("format") != ENGINE_FORMAT:
            raise InputError(f"{where}: key 'format': expected {ENGINE_FORMAT!r}, got {data.get('format')!r}")
        kinds = {"name": str, "key": str, "onnx_sha256": str, "precision": str, "input_shapes": dict,
                 "trt_version": str, "compute_capability": str, "plan_sha256": str, "plan_bytes": int,
                 "build_seconds": (int, float), "builder_flags": dict, "created": str}
        for key, kind in kinds.items():
            if not isinstance(data.get(key), kind) or isinstance(data.get(key), bool):
                raise InputError(f"{where}: key {key!r}: expected {getattr(kind, '__name__', 'a number')}, "
                                 f"got {data.get(key)!r}")
        try:
            shapes = _shapes(data["input_shapes"])
        except UsageError as exc:
            raise InputError(f"{where}: key 'input_shapes': {exc}") from None
        return cls(name=data["name"], key=data["key"], onnx_sha256=data["onnx_sha256"], precision=data["precision"],
                   input_shapes=shapes, trt_version=data["trt_version"],
                   compute_capability=data["compute_capability"], plan_sha256=data["plan_sha256"],
                   plan_bytes=data["plan_bytes"], build_seconds=float(data["build_seconds"]),
                   builder_flags=dict(data["builder_flags"]), created=data["created"])

    def write(self, path: str | os.PathLike) -> Path:
        """Write the sidecar atomically (temporary file in the same folder, then rename)."""
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"
        return write_atomic(path, text)

    @classmethod
    def read(cls, path: str | os.PathLike) -> "EngineSidecar":
        """Read and parse a sidecar (InputError when it is not valid JSON or not a sidecar)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"{path}: not a valid engine sidecar ({exc})") from None
        return cls.from_dict(data, path)


def engine_paths(cache_dir: str | os.PathLike, name: str, key: str) -> tuple[Path, Path]:
    """``(plan, sidecar)`` paths of an engine: ``<cache_dir>/<name>.<key[:16]>.plan`` / ``.json``."""
    stem = Path(cache_dir) / f"{name}.{key[:16]}"
    return stem.with_name(stem.name + ".plan"), stem.with_name(stem.name + ".json")


@dataclass(frozen=True)
class CacheLookup:
    """The outcome of :func:`find_engine`: the plan's bytes and sidecar on a hit, else the reason."""

    plan_path: Path
    sidecar_path: Path
    plan: bytes | None = None
    sidecar: EngineSidecar | None = None
    reason: str = ""

    @property
    def hit(self) -> bool:
        return self.plan is not None


def find_engine(cache_dir: str | os.PathLike, identity: EngineIdentity) -> CacheLookup:
    """Look up the plan for ``identity``; a hit has a matching sidecar and intact plan bytes.

    Never raises for a bad cache entry: the lookup is a miss whose ``reason`` says what was wrong
    (no plan, no sidecar, unreadable sidecar, a sidecar for other inputs/TensorRT/GPU, a truncated
    or modified plan). Deserialization is checked by :func:`load_or_build`.
    """
    key = identity.key
    plan_path, sidecar_path = engine_paths(cache_dir, identity.name, key)
    miss = lambda reason: CacheLookup(plan_path, sidecar_path, reason=reason)  # noqa: E731
    if not plan_path.is_file():
        return miss(f"{plan_path}: no cached engine")
    if not sidecar_path.is_file():
        return miss(f"{plan_path}: its sidecar {sidecar_path.name} is missing (an interrupted write?)")
    try:
        sidecar = EngineSidecar.read(sidecar_path)
    except (InputError, OSError) as exc:
        return miss(f"{sidecar_path}: unreadable sidecar ({exc})")
    if sidecar.key != key or sidecar.identity.key != key or sidecar.name != identity.name:
        fields = [f for f in ("onnx_sha256", "precision", "input_shapes", "trt_version", "compute_capability")
                  if getattr(sidecar, f) != getattr(identity, f)]
        what = ", ".join(f"{f} {getattr(sidecar, f)!r} != {getattr(identity, f)!r}" for f in fields) or \
            "its key fields do not hash to its key"
        return miss(f"{sidecar_path}: the sidecar does not match the requested engine ({what})")
    try:
        plan = plan_path.read_bytes()
    except OSError as exc:
        return miss(f"{plan_path}: unreadable ({exc.strerror or exc})")
    if not plan:
        return miss(f"{plan_path}: empty plan file (an interrupted write?)")
    if len(plan) != sidecar.plan_bytes:
        return miss(f"{plan_path}: {len(plan)} bytes, its sidecar records {sidecar.plan_bytes} (truncated?)")
    if hashlib.sha256(plan).hexdigest() != sidecar.plan_sha256:
        return miss(f"{plan_path}: sha256 differs from its sidecar's plan_sha256 (the plan was modified)")
    return CacheLookup(plan_path, sidecar_path, plan=plan, sidecar=sidecar)


def store_engine(cache_dir: str | os.PathLike, identity: EngineIdentity, plan: bytes, build_seconds: float,
                 builder_flags: Mapping[str, Any] | None = None) -> EngineSidecar:
    """Write ``plan`` then its sidecar (each atomically) and return the sidecar."""
    if not isinstance(plan, (bytes, bytearray, memoryview)) or len(plan) == 0:
        raise UsageError(f"{identity.name}: an engine plan must be non-empty bytes")
    plan = bytes(plan)
    key = identity.key
    plan_path, sidecar_path = engine_paths(cache_dir, identity.name, key)
    sidecar = EngineSidecar(name=identity.name, key=key, onnx_sha256=identity.onnx_sha256,
                            precision=identity.precision, input_shapes=identity.input_shapes,
                            trt_version=identity.trt_version, compute_capability=identity.compute_capability,
                            plan_sha256=hashlib.sha256(plan).hexdigest(), plan_bytes=len(plan),
                            build_seconds=round(float(build_seconds), 3),
                            builder_flags=dict(builder_flags or {}),
                            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    sidecar_path.unlink(missing_ok=True)           # an old sidecar must never describe the new plan
    write_atomic(plan_path, plan)
    sidecar.write(sidecar_path)
    return sidecar


@dataclass
class LoadedEngine:
    """What :func:`load_or_build` returns: the deserialized engine, its sidecar and how it was obtained."""

    engine: Any
    sidecar: EngineSidecar
    plan_path: Path
    status: str                                    # "cached", "built" or "rebuilt"
    reason: str = ""                               # why a cached plan was not used ("" when cached)


def load_or_build(cache_dir: str | os.PathLike, identity: EngineIdentity, deserialize: Callable[[bytes], Any],
                  build: Callable[[], tuple[bytes, Mapping[str, Any]]] | None = None) -> LoadedEngine:
    """The engine for ``identity``: the cached plan when it is valid, else a fresh build.

    Args:
        cache_dir: the cache folder (created on a build).
        identity: what the engine must be built from.
        deserialize: ``plan bytes -> engine`` or None when the plan cannot be used (TensorRT's
            ``Runtime.deserialize_cuda_engine`` on a GPU machine).
        build: ``() -> (plan bytes, builder flags)`` from the ONNX graph, or None when rebuilding is not
            possible (then a miss raises :class:`EngineCacheError`).

    Raises:
        EngineCacheError: no usable plan and no ``build``, or a freshly built plan that the deserializer
            refuses.
    """
    lookup = find_engine(cache_dir, identity)
    reason = lookup.reason
    if lookup.hit:
        engine = deserialize(lookup.plan)
        if engine is not None:
            return LoadedEngine(engine, lookup.sidecar, lookup.plan_path, "cached")
        reason = (f"{lookup.plan_path}: the plan could not be deserialized (built by another TensorRT "
                  f"version or for another GPU?)")
    if build is None:
        raise EngineCacheError(f"{reason}; refusing to run it and no ONNX graph to rebuild {identity.name!r} from")
    started = time.perf_counter()
    plan, flags = build()
    seconds = time.perf_counter() - started
    sidecar = store_engine(cache_dir, identity, plan, seconds, flags)
    engine = deserialize(bytes(plan))
    if engine is None:
        raise EngineCacheError(f"{lookup.plan_path}: a freshly built plan for {identity.name!r} could not be "
                               "deserialized by this runtime")
    status = "built" if reason.endswith("no cached engine") else "rebuilt"
    return LoadedEngine(engine, sidecar, lookup.plan_path, status, "" if status == "built" else reason)
