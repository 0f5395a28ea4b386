"""``unmix.train.fit``: train HybridSTU, the 1D spectra prior and the 2D abundance prior on one scene.

The semi-blind protocol (README explains it to users):

1. **Endmembers** — the endmember engine (:mod:`unmix.physics.endmembers`) over the scene's finite
   pixels; spectra the user knows (``known``) are kept as the first endmembers.
2. **HybridSTU + endmembers** (stage ``cnn``) — the CNN maps a tile to abundances (softmax: on the
   simplex) and the endmembers E (p, B) are learnt with it. Losses: SAM + MSE of the cube's
   reconstruction A·E (unsupervised, on random crops of the scene) plus abundance MSE on synthetic
   mixtures of the current endmembers with spectral variability and the scene's noise level
   (supervised: labels are exact).
3. **1D prior** (stage ``spectra``) — a ResUNet1D trained with DDPM on max-normalised spectra: the
   library (earthlib by default, resampled to the sensor's wavelengths) plus the scene's own
   estimates (endmembers with variability and the purest pixels).
4. **2D prior** (stage ``abundance``) — a ResUNet2D trained with DDPM on abundance fields: random
   crops of the CNN's abundances on the scene plus synthetic smooth fields.

Every stage is seeded per step, checkpointed atomically, and resumable after a kill.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist

from unmix.diffusion.schedule import Schedule
from unmix.errors import InputError, MissingInputError, UsageError
from unmix.io.scene import Scene
from unmix.physics.endmembers import data_criterion, spatial_means
from unmix.runtime.pipeline import dc_weight_for_noise
from unmix.train import data as train_data
from unmix.train.checkpoint import load_checkpoint, save_checkpoint
from unmix.train.config import TrainConfig, resolve_config
from unmix.train.ddpm import EMA, diffusion_loss, sam_loss
from unmix.train.models import HybridSTU, ResUNet
from unmix.train.state import TrainState

STAGES = ("cnn", "spectra", "abundance")
#: The network each stage trains.
STAGE_NETWORK = {"cnn": "hybridstu", "spectra": "spectra", "abundance": "abundance"}
CHECKPOINT_FORMAT = "unmix-checkpoint/1"


@dataclass
class FitResult:
    """What :func:`fit` produced.

    Attributes:
        out_dir: the checkpoint folder (``config.json`` + one ``.safetensors`` per network).
        endmembers: (p, B) float32 estimated endmember spectra (reflectance).
        abundances: (H, W, p) float32 HybridSTU abundances on the training scene.
        summary: the JSON-serialisable summary (timings, losses, choices made).
    """

    out_dir: Path
    endmembers: np.ndarray
    abundances: np.ndarray
    summary: dict[str, Any] = field(default_factory=dict)


class _Distributed:
    """Data-parallel context: one process (default) or torchrun's ``WORLD_SIZE`` processes (gloo on CPU)."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        if self.world == 1:
            return module
        return torch.nn.parallel.DistributedDataParallel(module)

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's share of a global batch drawn identically on every rank."""
        if self.world == 1:
            return batch
        if batch.shape[0] % self.world:
            raise UsageError(f"a global batch of {batch.shape[0]} does not split over {self.world} processes")
        share = batch.shape[0] // self.world
        return batch[self.rank * share:(self.rank + 1) * share]

    def close(self) -> None:
        """Wait for every rank, then tear the process group down while the interpreter is fully alive.

        Called on the successful path only: after an error on one rank, a barrier would wait for ranks
        that never arrive. A process of a multi-process run should then end with :func:`end_process`.
        """
        if self.world > 1 and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def end_process(code: int = 0) -> None:
    """Flush and end a process of a multi-process run without the interpreter's teardown.

    After the work is done and the process group destroyed, torch's C++ teardown at interpreter exit
    still aborts a rank now and then under CPU load ("terminate called without an active exception",
    SIGABRT from a thread with no Python frame, seen in 1 of 8 two-rank runs beside two busy processes),
    which torchrun reports as a failed run. Nothing is left to clean up by then, so the rank leaves at once.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _log_to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _progress(total: int, description: str, enabled: bool):
    """A progress bar on a terminal; in a log (stderr not a terminal), a line at each tenth of the steps."""
    if enabled and not sys.stderr.isatty():
        return _LineProgress(total, description)
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, disable=not enabled, file=sys.stderr, leave=False,
                dynamic_ncols=True)


class _LineProgress:
    """tqdm's ``update``/``set_postfix`` as whole lines on stderr, for logs: ``cnn: 40/200 steps, loss=0.0946``."""

    def __init__(self, total: int, description: str):
        self.total, self.description, self.done, self.postfix, self.shown = total, description, 0, "", 0

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{key}={value}" for key, value in values.items())

    def update(self, n: int = 1) -> None:
        self.done += n
        tenth = self.done * 10 // max(self.total, 1)
        if tenth > self.shown and self.done:
            self.shown = tenth
            print(f"{self.description}: {self.done}/{self.total} steps" + (f", {self.postfix}" if self.postfix else ""),
                  file=sys.stderr, flush=True)


def load_scene(source: Scene | str | Path | np.ndarray) -> Scene:
    """A Scene from a Scene, an (H, W, B) array, a benchmark name (e.g. ``samson``) or an ENVI path."""
    if isinstance(source, Scene):
        return source
    if isinstance(source, np.ndarray):
        return Scene.from_array(source)
    from unmix.io.sources import open_cube

    return open_cube(source)


def read_wavelengths(path: str | Path) -> np.ndarray:
    """Band centres in nm from a text file: one number per line, or comma/space separated."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: wavelengths file not found")
    text = path.read_text().replace(",", " ").split()
    try:
        values = np.array([float(v) for v in text], dtype=np.float64)
    except ValueError:
        raise InputError(f"{path}: expected numbers (band centres in nm), found non-numeric text") from None
    if values.size and values.max() < 100:  # micrometres
        values = values * 1000.0
    return values


def fit(
    scene: Scene | str | Path | np.ndarray,
    endmembers: int,
    *,
    preset: str | None = None,
    config: TrainConfig | str | Path | None = None,
    library: str | Path | None = None,
    known: np.ndarray | None = None,
    known_names: list[str] | None = None,
    wavelengths: np.ndarray | str | Path | None = None,
    stage: str = "all",
    out: str | Path | None = None,
    resume: bool = False,
    restart: bool = False,
    device: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = _log_to_stderr,
) -> FitResult:
    """Train unmix's three networks on one scene and write a checkpoint.

    Args:
        scene: a Scene, an (H, W, B) reflectance array, an ENVI path or a benchmark name.
        endmembers: the number of endmembers p (2 <= p <= B).
        preset: ``tiny``, ``default`` or ``full`` (ignored when ``config`` is a TrainConfig).
        config: a TrainConfig, or a TOML file overriding the preset.
        library: ``earthlib`` (default), ``none``, or an ENVI ``.sli`` for the 1D prior.
        known: (k, B) spectra of materials known to be present, kept as the first k endmembers.
        wavelengths: (B,) band centres in nm (or a text file of them) for cubes without any.
        stage: ``all`` or one of ``cnn``, ``spectra``, ``abundance`` (the others are taken from the
            checkpoint already in ``out``).
        out: the checkpoint folder; default ``runs/<scene name>``.
        resume: continue an interrupted run from its last saved step.
        restart: discard an interrupted run's saved progress (without it, or ``resume``, such progress
            makes the call fail with a UsageError rather than be lost).
        device: ``cpu`` or ``cuda``; default CUDA when available.

    Returns:
        FitResult with the checkpoint folder, endmembers (p, B) and abundances (H, W, p).
    """
    started = time.perf_counter()
    if stage != "all" and stage not in STAGES:
        raise UsageError(f"--stage must be 'all' or one of {', '.join(STAGES)}, got {stage!r}")
    if isinstance(config, TrainConfig):
        cfg = config
    else:
        cfg = resolve_config(preset, config)
    if library is not None:
        cfg.library = str(library)
    scene = load_scene(scene)
    out_dir = Path(out) if out is not None else Path("runs") / scene.name
    if isinstance(wavelengths, (str, Path)):
        wavelengths = read_wavelengths(wavelengths)
    prepared = train_data.prepare_scene(scene, endmembers, wavelengths)
    ddp = _Distributed()
    torch_device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    show = progress and ddp.main
    say = log if ddp.main else (lambda message: None)
    torch.manual_seed(cfg.seed)

    masked = int((~prepared.mask).sum())
    if masked:
        say(f"{scene.name}: {masked} pixels with NaN or Inf values are masked out of training")
    previous = _previous_checkpoint(out_dir) if stage != "all" else None
    run_stages = STAGES if stage == "all" else (stage,)
    fingerprint = hashlib.sha256(json.dumps([cfg.to_dict(), prepared.digest, endmembers, stage,
                                             None if known is None else np.asarray(known).tolist()],
                                            sort_keys=True).encode()).hexdigest()
    state = TrainState(out_dir / ".train_state", resume=resume, every_seconds=cfg.save_every_s,
                       fingerprint=fingerprint, restart=restart)
    if resume:
        say(f"resuming: {state.progress() or 'no saved progress, starting from step 0'}")

    # 1. Endmember initialisation.
    pixels = prepared.valid_pixels      # (N, B) finite pixels, one copy for the engine and the input scaling
    if previous is not None:
        e0 = np.asarray(previous["config"]["endmembers"]["initial"], dtype=np.float32)
        noise_std = float(previous["config"]["noise_std"])
        engine = previous["config"]["endmembers"].get("engine", {})
    else:
        if known is not None:
            known = np.asarray(known, dtype=np.float32)
            if known.ndim != 2 or known.shape[1] != prepared.cube.shape[2] or len(known) > endmembers:
                raise UsageError(f"known spectra must have shape (k <= {endmembers}, {prepared.cube.shape[2]}), "
                                 f"got {known.shape}")
        smoothed = spatial_means(np.where(prepared.mask[..., None], prepared.cube, np.nan))
        e0, noise_std, engine = train_data.initial_endmembers(pixels, endmembers, cfg.cnn.vca_seeds,
                                                              cfg.seed, known, smoothed=smoothed)
    names = list(known_names or []) + [f"endmember_{k + 1}" for k in range(len(known_names or []), endmembers)]
    say(f"{scene.name}: {prepared.cube.shape[0]}x{prepared.cube.shape[1]} px, {prepared.cube.shape[2]} bands, "
        f"p={endmembers}; initial endmembers from the engine ({engine.get('mode', '?')} family, misfit ratio "
        f"{engine.get('misfit_ratio', float('nan')):.2f}, reconstruction RMSE {noise_std:.4f})")

    schedule = Schedule(kind=cfg.schedule.kind, T=cfg.schedule.T, prediction=cfg.schedule.prediction)
    alphas_cumprod = torch.tensor(schedule.alphas_cumprod, dtype=torch.float32, device=torch_device)
    bands = prepared.cube.shape[2]
    models = {
        "hybridstu": HybridSTU(bands=bands, endmembers=endmembers, reduced_bands=min(cfg.cnn.reduced_bands, bands),
                               width=cfg.cnn.width),
        "spectra": ResUNet(dims=1, in_channels=1, base_channels=cfg.spectra.base_channels,
                           channel_mult=tuple(cfg.spectra.channel_mult), num_res_blocks=cfg.spectra.num_res_blocks),
        "abundance": ResUNet(dims=2, in_channels=endmembers, base_channels=cfg.abundance.base_channels,
                             channel_mult=tuple(cfg.abundance.channel_mult),
                             num_res_blocks=cfg.abundance.num_res_blocks),
    }
    endmember_param = torch.tensor(e0, dtype=torch.float32)
    models["hybridstu"].standardize_input(pixels.mean(axis=0), pixels.std(axis=0))
    if previous is not None:
        for name in STAGES:
            if name not in run_stages:
                network = STAGE_NETWORK[name]
                models[network].load_state_dict(previous["models"][network].state_dict())
        endmember_param = torch.tensor(np.asarray(previous["config"]["endmembers"]["estimated"], np.float32))
    for model in models.values():
        model.to(torch_device)
    cube_t = torch.from_numpy(np.ascontiguousarray(prepared.cube.transpose(2, 0, 1))).to(torch_device)
    mask_t = torch.from_numpy(prepared.mask).to(torch_device)
    timings: dict[str, float] = {}
    losses: dict[str, float] = {}

    # 2. HybridSTU + endmembers.
    if "cnn" in run_stages:
        t = time.perf_counter()
        endmember_param, losses["cnn"] = _train_cnn(models["hybridstu"], endmember_param.to(torch_device), cube_t,
                                                    mask_t, cfg, noise_std, state, ddp, show)
        timings["cnn_s"] = time.perf_counter() - t
    endmembers_est = endmember_param.detach().cpu().numpy().astype(np.float32)
    if "cnn" in run_stages and previous is None and not np.array_equal(endmembers_est, e0):
        endmembers_est, engine["joint_learning"] = _keep_better(pixels, e0, endmembers_est, cfg.seed,
                                                                smoothed)
        say(f"endmembers: {engine['joint_learning']['kept']} kept (data criterion: engine "
            f"{engine['joint_learning']['engine']:.5g}, learnt {engine['joint_learning']['learnt']:.5g})")
    abundances = _predict_abundances(models["hybridstu"], cube_t)
    if cfg.inference.dc_weight is None and "noise_rms" in engine:
        weight = dc_weight_for_noise(endmembers_est, engine["noise_rms"])
        cfg = dataclasses.replace(cfg, inference=dataclasses.replace(cfg.inference, dc_weight=weight))
        say(f"data-consistency weight {cfg.inference.dc_weight:.4g} from the estimated noise "
            f"({engine['noise_rms']:.3g} RMS)")

    # 3. The 1D spectra prior.
    library_note = "not trained in this run"
    library_hints_found: list[dict[str, Any]] = []
    if "spectra" in run_stages:
        t = time.perf_counter()
        spectra_set, library_note, library_hints_found = _spectra_training_set(prepared, endmembers_est, abundances,
                                                                                cfg, say, names)
        losses["spectra"] = _train_diffusion(models["spectra"], "spectra", spectra_set, cfg.spectra, cfg,
                                             alphas_cumprod, state, ddp, show, _spectra_batch)
        timings["spectra_s"] = time.perf_counter() - t
    elif previous is not None:
        library_note = previous["config"].get("library", {}).get("note", library_note)
        library_hints_found = previous["config"].get("library", {}).get("hints", [])

    # 4. The 2D abundance prior.
    if "abundance" in run_stages:
        t = time.perf_counter()
        abundance_set = torch.from_numpy(abundances.transpose(2, 0, 1).copy())
        losses["abundance"] = _train_diffusion(models["abundance"], "abundance", abundance_set, cfg.abundance, cfg,
                                               alphas_cumprod, state, ddp, show, _abundance_batch)
        timings["abundance_s"] = time.perf_counter() - t

    timings["total_s"] = time.perf_counter() - started
    summary = {
        "format": CHECKPOINT_FORMAT,
        "train": cfg.to_dict(),
        "schedule": schedule.to_config(),
        "sensor": {"bands": bands,
                   "wavelengths": None if prepared.wavelengths is None else [float(w) for w in prepared.wavelengths]},
        "endmembers": {"count": endmembers, "names": names, "initial": e0.tolist(),
                       "estimated": endmembers_est.tolist(), "engine": engine},
        "normalisation": {"spectra": "x0 = 2 * s / max(s) - 1 per spectrum", "abundance": "x0 = 2 * A - 1"},
        "noise_std": noise_std,
        "scene": {"name": scene.name, "source": scene.source, "shape": list(prepared.cube.shape),
                  "sha256": prepared.digest, "masked_pixels": masked},
        "library": {"setting": cfg.library, "note": library_note, "hints": library_hints_found},
        "stages_trained": list(run_stages),
        "timings": timings,
        "losses": losses,
        "versions": {"unmix": _unmix_version(), "torch": torch.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
        "world_size": ddp.world,
    }
    if ddp.main:
        save_checkpoint(out_dir, {name: model.cpu() for name, model in models.items()}, summary)
        state.clear()
        say(f"checkpoint written to {out_dir} in {timings['total_s']:.1f} s")
    ddp.close()
    return FitResult(out_dir=out_dir, endmembers=endmembers_est, abundances=abundances, summary=summary)


def _keep_better(pixels: np.ndarray, engine: np.ndarray, learnt: np.ndarray, seed: int,
                 smoothed: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """The engine's or the jointly learnt endmembers, whichever the engine's data criterion prefers."""

    family, before = data_criterion(pixels, engine, seed=seed, smoothed=smoothed)
    _, after = data_criterion(pixels, learnt, seed=seed, smoothed=smoothed)
    kept = "learnt" if after < before else "engine"
    return (learnt if kept == "learnt" else engine), {"family": family, "engine": before, "learnt": after,
                                                      "kept": kept}


def _unmix_version() -> str:
    from unmix import __version__

    return __version__


def _previous_checkpoint(out_dir: Path) -> dict[str, Any]:
    if not (out_dir / "config.json").is_file():
        raise MissingInputError(f"{out_dir / 'config.json'}: training one stage needs an existing checkpoint there "
                                "(run all stages first)")
    models, config = load_checkpoint(out_dir)
    return {"models": models, "config": config}


def _predict_abundances(model: torch.nn.Module, cube_t: torch.Tensor) -> np.ndarray:
    """(H, W, p) abundances of the whole training scene (one pass; fully convolutional)."""
    model.eval()
    with torch.inference_mode():
        abundances = model(cube_t[None])[0]
    model.train()
    return abundances.permute(1, 2, 0).cpu().numpy().astype(np.float32)


def _train_cnn(model: HybridSTU, endmembers: torch.Tensor, cube_t: torch.Tensor, mask_t: torch.Tensor,
               cfg: TrainConfig, noise_std: float, state: TrainState, ddp: _Distributed,
               show: bool) -> tuple[torch.Tensor, float]:
    c = cfg.cnn
    endmembers = torch.nn.Parameter(endmembers.clone())
    net = ddp.wrap(model)
    optimizer = torch.optim.Adam([{"params": model.parameters(), "lr": c.lr},
                                  {"params": [endmembers], "lr": c.lr_endmembers}])
    start = state.restore("cnn", {"hybridstu": model}, optimizer, {"endmembers": endmembers})
    crop = min(c.crop, max(cube_t.shape[1], cube_t.shape[2]))
    loss_value = math.nan
    with _progress(c.steps, "cnn", show) as bar:
        bar.update(start)
        for step in range(start, c.steps):
            gen = train_data.step_generator(cfg.seed, "cnn", step)
            crops, masks = train_data.random_crops(cube_t.cpu(), mask_t.cpu(), c.batch * ddp.world, crop, gen)
            synth, labels = train_data.synthetic_mixtures(endmembers.detach().cpu(), c.synthetic_batch * ddp.world,
                                                          crop, c.variability, noise_std, gen)
            crops, masks = ddp.shard(crops).to(cube_t.device), ddp.shard(masks).to(cube_t.device)
            synth, labels = ddp.shard(synth).to(cube_t.device), ddp.shard(labels).to(cube_t.device)
            inputs = torch.cat([crops, synth])
            predicted = net(inputs)
            real = predicted[: len(crops)]
            recon = torch.einsum("nphw,pb->nbhw", real, endmembers)
            valid = masks[:, None].float()
            pixels_pred = recon.permute(0, 2, 3, 1)[masks]
            pixels_true = crops.permute(0, 2, 3, 1)[masks]
            loss = c.sam_weight * sam_loss(pixels_pred, pixels_true, dim=-1)
            loss = loss + c.mse_weight * (((recon - crops) ** 2) * valid).sum() / (valid.sum() * crops.shape[1])
            if c.synthetic_weight > 0:
                loss = loss + c.synthetic_weight * c.mse_weight * torch.mean((predicted[len(crops):] - labels) ** 2)
            if c.purity_weight > 0:
                # Mean per-pixel entropy of the scene's abundances: low when pixels are pure. With the
                # reconstruction terms it pulls the endmembers in toward the data (a soft minimum volume).
                fractions = real.permute(0, 2, 3, 1)[masks].clamp_min(1e-8)
                loss = loss + c.purity_weight * -(fractions * fractions.log()).sum(dim=-1).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if ddp.world > 1:
                dist.all_reduce(endmembers.grad)
                endmembers.grad /= ddp.world
            optimizer.step()
            with torch.no_grad():
                endmembers.clamp_(min=0.0)
            loss_value = float(loss.detach())
            bar.set_postfix(loss=f"{loss_value:.4f}")
            bar.update(1)
            if ddp.main and state.due(step + 1, c.steps):
                state.save("cnn", step + 1, {"hybridstu": model}, optimizer, {"endmembers": endmembers})
    return endmembers.detach(), loss_value


def library_hints(endmembers: np.ndarray, library: np.ndarray, names: list[str]) -> list[dict[str, Any]]:
    """For each endmember, the library spectrum at the smallest spectral angle: ``{"name", "angle_degrees"}``.

    A hint for naming a material, not an identification: a library seldom holds the scene's own material.
    """
    e = np.asarray(endmembers, np.float64)
    lib = np.asarray(library, np.float64)
    usable = np.isfinite(lib).all(axis=1) & (np.linalg.norm(lib, axis=1) > 0)
    if not usable.any():
        return []
    lib, lib_names = lib[usable], [n for n, keep in zip(names, usable) if keep]
    cos = (e / np.linalg.norm(e, axis=1, keepdims=True)) @ (lib / np.linalg.norm(lib, axis=1, keepdims=True)).T
    best = np.argmax(cos, axis=1)
    angles = np.degrees(np.arccos(np.clip(cos[np.arange(len(e)), best], -1.0, 1.0)))
    return [{"name": lib_names[j], "angle_degrees": round(float(a), 2)} for j, a in zip(best, angles)]


def _spectra_training_set(prepared: train_data.SceneData, endmembers: np.ndarray, abundances: np.ndarray,
                          cfg: TrainConfig, say: Callable[[str], None],
                          endmember_names: list[str] | None = None) -> tuple[torch.Tensor, str, list[dict[str, Any]]]:
    """(N, B) spectra for the 1D prior: library spectra on the sensor grid plus the scene's own; the note said;
    the closest library spectrum of each endmember (:func:`library_hints`, empty without a library)."""
    scene_spectra = [endmembers]
    pure = abundances.max(axis=-1) > 0.9
    if pure.any():
        pixels = prepared.cube[pure & prepared.mask]
        rng = np.random.default_rng(cfg.seed)
        scene_spectra.append(pixels[rng.choice(len(pixels), min(len(pixels), 2048), replace=False)])
    scene_set = np.concatenate(scene_spectra).astype(np.float32)
    library_set = None
    hints: list[dict[str, Any]] = []
    setting = cfg.library
    if setting == "none":
        note = "library prior left out (library = none)"
    elif prepared.wavelengths is None:
        note = "library prior left out: the cube has no wavelengths (give --wavelengths to use it)"
    else:
        try:
            from unmix.io.libraries import load_earthlib, resample
            from unmix.io.envi import read_library

            if setting == "earthlib":
                library = load_earthlib("spectra")
            else:
                from unmix.io.libraries import SpectralLibrary

                raw = read_library(setting)
                if raw.wavelengths is None:
                    raise InputError(f"{setting}: the library has no wavelengths")
                library = SpectralLibrary(spectra=raw.spectra, wavelengths=raw.wavelengths, names=raw.names,
                                          classes=None, source=str(setting))
            resampled = resample(library, prepared.wavelengths)
            library_set = resampled.spectra
            note = f"library prior: {len(library_set)} spectra from {setting} resampled to the sensor"
            hints = library_hints(endmembers, library_set, list(resampled.names))
        except InputError as exc:
            note = f"library prior left out: {exc}"
    say(note)
    names = endmember_names or [f"endmember_{k + 1}" for k in range(len(endmembers))]
    for name, hint in zip(names, hints):
        say(f"{name}: closest {setting} spectrum {hint['name']!r} at {hint['angle_degrees']:.1f} deg (a hint, not "
            "an identification)")
    parts = [scene_set] if library_set is None else [scene_set, library_set.astype(np.float32)]
    spectra = np.concatenate(parts)
    spectra = spectra[np.isfinite(spectra).all(axis=1) & (spectra.max(axis=1) > 1e-6)]
    return torch.from_numpy(spectra), note, hints


def _spectra_batch(dataset: torch.Tensor, size: int, crop: int, gen: torch.Generator) -> torch.Tensor:
    """(size, 1, B) max-normalised spectra in [-1, 1] with smooth multiplicative variability."""
    index = torch.randint(0, len(dataset), (size,), generator=gen)
    spectra = dataset[index]
    bands = spectra.shape[1]
    ramp = torch.linspace(-1, 1, bands)
    tilt = 1.0 + 0.05 * torch.randn(size, 1, generator=gen) * ramp
    spectra = spectra * tilt.clamp(min=0.5)
    spectra = spectra / spectra.amax(dim=1, keepdim=True).clamp(min=1e-6)
    return (2.0 * spectra - 1.0)[:, None]


def _abundance_batch(dataset: torch.Tensor, size: int, crop: int, gen: torch.Generator) -> torch.Tensor:
    """(size, p, crop, crop) abundance fields in [-1, 1]: half scene crops, half synthetic fields."""
    real = size // 2
    mask = torch.ones(dataset.shape[1:], dtype=torch.bool)
    crops, _ = train_data.random_crops(dataset, mask, real, crop, gen)
    if dataset.shape[1] < crop or dataset.shape[2] < crop:  # padded crops: fill the pad with the first endmember
        pad = crops.sum(dim=1, keepdim=True) < 0.5
        crops[:, :1] = torch.where(pad, torch.ones_like(crops[:, :1]), crops[:, :1])
    fields = train_data.smooth_fields(size - real, dataset.shape[0], crop, gen)
    return 2.0 * torch.cat([crops, fields]) - 1.0


def _train_diffusion(model: ResUNet, name: str, dataset: torch.Tensor, part, cfg: TrainConfig,
                     alphas_cumprod: torch.Tensor, state: TrainState, ddp: _Distributed, show: bool,
                     make_batch: Callable[[torch.Tensor, int, int, torch.Generator], torch.Tensor]) -> float:
    net = ddp.wrap(model)
    ema = EMA(model, decay=part.ema_decay)
    optimizer = torch.optim.Adam(model.parameters(), lr=part.lr)
    start = state.restore(name, {name: model, f"{name}_ema": ema.shadow}, optimizer, {})
    loss_value = math.nan
    with _progress(part.steps, name, show) as bar:
        bar.update(start)
        for step in range(start, part.steps):
            gen = train_data.step_generator(cfg.seed, name, step)
            x0 = make_batch(dataset, part.batch * ddp.world, part.crop, gen)
            t = torch.randint(0, alphas_cumprod.numel(), (x0.shape[0],), generator=gen)
            noise = torch.randn(x0.shape, generator=gen)
            device = alphas_cumprod.device
            loss = diffusion_loss(net, ddp.shard(x0).to(device), ddp.shard(t).to(device),
                                  ddp.shard(noise).to(device), alphas_cumprod, cfg.schedule.prediction)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            ema.update(model)
            loss_value = float(loss.detach())
            bar.set_postfix(loss=f"{loss_value:.4f}")
            bar.update(1)
            if ddp.main and state.due(step + 1, part.steps):
                state.save(name, step + 1, {name: model, f"{name}_ema": ema.shadow}, optimizer, {})
    ema.copy_to(model)
    return loss_value
