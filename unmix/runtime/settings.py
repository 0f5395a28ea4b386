"""Inference settings, defined once: :class:`PipelineConfig` (torch-free).

Every setting is a field of :class:`PipelineConfig` whose metadata gives its :class:`Setting`: its kind
and its range (:data:`SETTINGS` lists them). The same table serves

- the Python pipeline (``PipelineConfig.__post_init__`` checks every field by it),
- the trainer (``unmix.train.config`` records a ``PipelineConfig`` in the checkpoint; the export copies
  it into the manifest's ``inference`` section, the way a diffusers scheduler saves its config),
- the manifest readers (each key of the manifest's ``inference`` checked by its setting; the C++ reader
  by ``settings.inc``),
- the C++ core: ``cpp_bindings/core/settings.inc`` is written by :func:`cpp_table` (``python -m
  unmix.runtime.settings``) and a test checks that it is current; the C++ ``PipelineConfig`` fields, its
  ``validate()`` and the C ABI's option table are expanded from it,
- ``benchmarks/speedlib/cpp.py`` (:func:`c_abi_settings`: the settings ``unmix_set_option`` takes).

Kinds: ``int`` (an integer in ``[minimum, maximum]``), ``float`` (a finite number in ``[minimum,
maximum]``), ``bool``, ``choice`` (one of ``choices``; in the C ABI 1 is the first choice, 0 the second)
and ``seed`` (the Philox key). ``fixed``: set by the exported networks (the tile size), read-only in the
C ABI. Cross-setting rules (``overlap < tile``, the noise counters) are checked after the fields.
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from typing import Any, Mapping

from unmix.diffusion.noise import counter_step
from unmix.errors import UsageError, require_float, require_int

__all__ = ["INITIAL_ENDMEMBERS", "MAX_DC_WEIGHT", "SEED_MAX", "SETTINGS", "PipelineConfig", "Setting",
           "c_abi_settings", "check_setting", "cpp_table"]

#: The largest data-consistency weight (keeps ``w G + I`` well conditioned in float32: cond <= 1 + w p).
MAX_DC_WEIGHT = 1000.0
INITIAL_ENDMEMBERS = ("model", "statistics")
SEED_MAX = 2**53  # seeds travel as doubles (JSON, unmix_set_option): every integer to 2^53 is exact
#: The C core's bound of an ``int`` setting without a maximum of its own (a C ``int``).
INT_MAX = 2**31 - 1


@dataclass(frozen=True)
class Setting:
    """One inference setting: ``name``, ``kind`` (module docstring), range or choices, ``fixed``."""

    name: str
    kind: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    fixed: bool = False

    def check(self, value: Any) -> Any:
        """``value`` checked for this setting (``UsageError`` naming the setting); returns it normalised."""
        if self.kind == "int" or self.kind == "seed":
            return require_int(value, self.name, self.minimum, self.maximum)
        if self.kind == "float":
            return require_float(value, self.name, self.minimum, self.maximum)
        if self.kind == "bool":
            if type(value).__name__ not in ("bool", "bool_"):
                raise UsageError(f"{self.name} must be true or false, got {value!r}")
            return bool(value)
        if value not in self.choices:
            raise UsageError(f"{self.name} must be one of {', '.join(self.choices)}, got {value!r}")
        return value


def _setting(default: Any, kind: str, minimum: float | None = None, maximum: float | None = None,
             choices: tuple[str, ...] = (), fixed: bool = False) -> Any:
    return field(default=default, metadata={"setting": (kind, minimum, maximum, choices, fixed)})


@dataclass
class PipelineConfig:
    """Inference settings.

    Attributes:
        steps: K, 2D DDIM steps per pass 2.
        t0: the abundance refinement starts from A noised to this timestep (``steps <= t0 + 1``).
        eta: DDIM stochasticity of the 2D loop, 0 (deterministic) .. 1 (DDPM variance).
        samples: S, stochastic samples per tile; S > 1 also gives the uncertainty map.
        rounds: R, alternations of (endmembers, abundances).
        tile: T, the networks' static tile size (must match them).
        overlap: pixels shared by neighbouring tiles (``< tile``).
        dc_weight: w, the weight of the data in the 2D step's proximal data consistency
            ``argmin_a w ||y - E^T a||^2 / s + ||a - a_hat||^2`` (``s = trace(E E^T) / p``; 0 disables it,
            at most :data:`MAX_DC_WEIGHT`).
        spectra_steps, spectra_t0, spectra_eta: the 1D DDIM loop over the endmembers.
        spectra_dc_weight: the same weight for the 1D step (data: A^T A, A^T Y; prior: the denoised E).
        refine_spectra: run the 1D loop (else E stays the initial estimate).
        initial_endmembers: ``"model"`` (the spectra learnt with HybridSTU, when given) or
            ``"statistics"`` (non-negative least squares from pass 1's A^T A and A^T Y).
        seed: the Philox key (0 .. 2^53).
    """

    steps: int = _setting(10, "int", 1)
    t0: int = _setting(100, "int", 0)
    eta: float = _setting(0.0, "float", 0.0, 1.0)
    samples: int = _setting(1, "int", 1, 65535)
    rounds: int = _setting(1, "int", 1)
    tile: int = _setting(64, "int", 1, fixed=True)
    overlap: int = _setting(16, "int", 0)
    dc_weight: float = _setting(100.0, "float", 0.0, MAX_DC_WEIGHT)
    spectra_steps: int = _setting(10, "int", 1)
    spectra_t0: int = _setting(200, "int", 0)
    spectra_eta: float = _setting(0.0, "float", 0.0, 1.0)
    spectra_dc_weight: float = _setting(1.0, "float", 0.0, MAX_DC_WEIGHT)
    refine_spectra: bool = _setting(False, "bool")
    initial_endmembers: str = _setting("model", "choice", choices=INITIAL_ENDMEMBERS)
    seed: int = _setting(0, "seed", 0, SEED_MAX)

    def __post_init__(self) -> None:
        for setting in SETTINGS:
            setattr(self, setting.name, setting.check(getattr(self, setting.name)))
        if self.overlap >= self.tile:
            raise UsageError(f"overlap must be smaller than tile ({self.tile}), got {self.overlap}")
        counter_step(self.steps, self.steps - 1, self.rounds - 1)      # raises if the counters overflow
        counter_step(self.spectra_steps, self.spectra_steps - 1, self.rounds - 1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable settings; ``PipelineConfig.from_dict(c.to_dict()) == c``."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, settings: Mapping[str, Any], **overrides: Any) -> "PipelineConfig":
        """Build from a mapping (e.g. a manifest's ``inference``), then ``overrides``.

        Unknown keys raise ``UsageError``.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        merged = {**dict(settings), **overrides}
        unknown = sorted(set(merged) - known)
        if unknown:
            raise UsageError(f"unknown inference setting {unknown[0]!r}; known: {', '.join(sorted(known))}")
        return cls(**merged)


#: Every setting of :class:`PipelineConfig`, in field order.
SETTINGS: tuple[Setting, ...] = tuple(Setting(f.name, *f.metadata["setting"])
                                      for f in dataclasses.fields(PipelineConfig))


def check_setting(name: str, value: Any) -> Any:
    """``value`` checked as the setting ``name`` (``UsageError`` for an unknown name or a bad value)."""
    for setting in SETTINGS:
        if setting.name == name:
            return setting.check(value)
    raise UsageError(f"unknown inference setting {name!r}")


def c_abi_settings() -> tuple[str, ...]:
    """The settings ``unmix_set_option`` takes as numbers: all but the fixed ones and the choices."""
    return tuple(s.name for s in SETTINGS if not s.fixed and s.kind != "choice")


_CPP_KINDS = {"int": "Integer", "float": "Number", "bool": "Flag", "choice": "Choice", "seed": "Seed"}


def _cpp_number(value: Any, kind: str) -> str:
    if value is None:
        return str(INT_MAX)
    if kind == "float":
        return repr(float(value))
    if kind == "seed":
        return f"UINT64_C({int(value)})"
    return str(int(value))


def cpp_table() -> str:
    """The text of ``cpp_bindings/core/settings.inc``: one ``UNMIX_SETTING`` line per setting."""
    lines = [
        "// The inference settings of unmix.runtime.settings.PipelineConfig, in field order. Written by",
        "// `python -m unmix.runtime.settings > cpp_bindings/core/settings.inc`; a test checks it is current.",
        "// UNMIX_SETTING(name, kind, fixed, minimum, maximum, default, choices); a Choice holds true for its",
        "// first choice, false for its second (choices: the names, separated by spaces).",
    ]
    defaults = PipelineConfig()
    for s in SETTINGS:
        kind = _CPP_KINDS[s.kind]
        default = getattr(defaults, s.name)
        if s.kind == "bool":
            low, high, value = "0", "1", "true" if default else "false"
        elif s.kind == "choice":
            low, high, value = "0", "1", "true" if default == s.choices[0] else "false"
        else:
            low, high, value = (_cpp_number(s.minimum, s.kind), _cpp_number(s.maximum, s.kind),
                                _cpp_number(default, s.kind))
        fixed = "true" if s.fixed else "false"
        choices = '"' + " ".join(s.choices) + '"'
        lines.append(f"UNMIX_SETTING({s.name}, {kind}, {fixed}, {low}, {high}, {value}, {choices})")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(cpp_table())
