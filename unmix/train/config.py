"""Training configuration: presets, TOML overrides, validation.

Every hyper-parameter lives in :class:`TrainConfig`; a preset fills it, a TOML file overrides any
field (same section and key names as ``TrainConfig.to_dict()``), and the resolved dictionary is stored
in the checkpoint so a run can be repeated exactly.

Presets: ``tiny`` (demo and CI, the shortest), ``default`` (used when no preset is named: accuracy
within a CPU time budget; ``benchmarks/train_time.py`` measures it), ``full`` (best accuracy,
no time bound).
"""
from __future__ import annotations

import copy
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from unmix.errors import InputError, MissingInputError, UsageError
from unmix.runtime.settings import PipelineConfig


@dataclass
class CNNConfig:
    """HybridSTU and the joint endmember fit."""

    steps: int = 500
    lr: float = 3e-3
    lr_endmembers: float = 3e-4   # slow: faster drift pulls E into the data cloud on highly mixed scenes
    crop: int = 32            # training crop (pixels); scenes smaller than this are padded
    batch: int = 2            # crops per step for the unsupervised reconstruction loss
    synthetic_batch: int = 4  # synthetic mixtures per step (supervised abundance loss)
    synthetic_weight: float = 1.0
    sam_weight: float = 1.0
    mse_weight: float = 10.0
    purity_weight: float = 0.0  # weight of the mean abundance entropy on the scene (pulls E toward the data)
    variability: float = 0.05  # relative per-pixel scaling of endmembers in synthetic mixtures
    reduced_bands: int = 32
    width: int = 16
    vca_seeds: int = 5


@dataclass
class DiffusionConfig:
    """One DDPM-trained ResUNet (the 1D spectra prior or the 2D abundance prior)."""

    steps: int = 400
    lr: float = 2e-3
    batch: int = 32
    base_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 1
    crop: int = 32             # 2D only: abundance crop size
    ema_decay: float = 0.995


@dataclass
class ScheduleConfig:
    kind: str = "cosine"
    T: int = 1000
    prediction: str = "epsilon"


@dataclass
class InferenceConfig(PipelineConfig):
    """The inference settings recorded with the checkpoint (:class:`unmix.runtime.settings.PipelineConfig`,
    its defaults and checks); the export copies them into the manifest. One difference: ``dc_weight``
    None (the default) is set at training from the scene's estimated noise
    (:func:`unmix.runtime.pipeline.dc_weight_for_noise`)."""

    dc_weight: float | None = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        weight = self.dc_weight
        if weight is None:
            self.dc_weight = PipelineConfig.dc_weight
        super().__post_init__()
        if weight is None:
            self.dc_weight = None


@dataclass
class TrainConfig:
    preset: str = "default"
    seed: int = 0
    library: str = "earthlib"   # 'earthlib', 'none', or a path to an ENVI .sli
    save_every_s: float = 15.0  # resumable training state is saved at most this often (and at stage ends)
    cnn: CNNConfig = field(default_factory=CNNConfig)
    spectra: DiffusionConfig = field(default_factory=DiffusionConfig)
    abundance: DiffusionConfig = field(default_factory=lambda: DiffusionConfig(base_channels=16))
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for section in ("spectra", "abundance"):
            data[section]["channel_mult"] = list(data[section]["channel_mult"])
        return data


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "cnn": {"steps": 200, "vca_seeds": 3},
        "spectra": {"steps": 150, "base_channels": 16},
        "abundance": {"steps": 150, "batch": 16},
    },
    "default": {
        "cnn": {"steps": 350},
        "spectra": {"steps": 150},
        "abundance": {"steps": 300},
    },
    "full": {
        "cnn": {"steps": 3000, "vca_seeds": 10, "crop": 64},
        "spectra": {"steps": 4000, "base_channels": 48},
        "abundance": {"steps": 4000, "base_channels": 48, "crop": 64},
    },
}


def _apply(target: Any, overrides: dict[str, Any], where: str) -> None:
    known = {f.name: f for f in fields(target)}
    for key, value in overrides.items():
        if key not in known:
            raise UsageError(f"{where}: unknown setting {key!r}; known: {', '.join(sorted(known))}")
        current = getattr(target, key)
        if current is None and isinstance(value, (int, float)) and not isinstance(value, bool):
            setattr(target, key, float(value))     # an optional number (None: derived at training)
            continue
        if hasattr(current, "__dataclass_fields__"):
            if not isinstance(value, dict):
                raise UsageError(f"{where}: [{key}] must be a table of settings, got {value!r}")
            _apply(current, value, f"{where} [{key}]")
            continue
        if isinstance(current, tuple):
            value = tuple(value)
        elif isinstance(current, bool) or not isinstance(value, type(current)):
            if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            elif not isinstance(value, type(current)):
                raise UsageError(
                    f"{where}: setting {key!r} expected {type(current).__name__}, got {value!r}")
        setattr(target, key, value)


def resolve_config(preset: str | None = None, toml_path: str | Path | None = None,
                   overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Build the configuration: defaults, then the preset, then the TOML file, then ``overrides``."""
    file_settings: dict[str, Any] = {}
    if toml_path is not None:
        path = Path(toml_path)
        if not path.is_file():
            raise MissingInputError(f"{path}: config file not found")
        try:
            file_settings = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: not valid TOML ({exc})") from None
    name = preset or file_settings.pop("preset", None) or "default"
    file_settings.pop("preset", None)
    if name not in PRESETS:
        raise UsageError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    config = TrainConfig(preset=name)
    _apply(config, copy.deepcopy(PRESETS[name]), f"preset {name}")
    if file_settings:
        _apply(config, file_settings, str(toml_path))
    if overrides:
        _apply(config, overrides, "overrides")
    _validate(config)
    return config


def _validate(config: TrainConfig) -> None:
    for section in ("cnn", "spectra", "abundance"):
        part = getattr(config, section)
        if part.steps < 0:
            raise UsageError(f"[{section}] steps must be >= 0, got {part.steps}")
        if part.lr <= 0:
            raise UsageError(f"[{section}] lr must be > 0, got {part.lr}")
    if config.schedule.kind not in ("linear", "cosine"):
        raise UsageError(f"[schedule] kind must be 'linear' or 'cosine', got {config.schedule.kind!r}")
    if config.schedule.prediction not in ("epsilon", "v"):
        raise UsageError(f"[schedule] prediction must be 'epsilon' or 'v', got {config.schedule.prediction!r}")
    try:
        config.inference = replace(config.inference)    # the settings' own checks
    except UsageError as exc:
        raise UsageError(f"[inference] {exc}") from None
    if not 0 < config.inference.t0 < config.schedule.T:
        raise UsageError(f"[inference] t0 must be in 1..{config.schedule.T - 1}, got {config.inference.t0}")
