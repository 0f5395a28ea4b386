"""``unmix.Unmixer``: the Python face of the edge runtime (numpy + one backend, never torch).

    import unmix
    unmixer = unmix.Unmixer.load("models/samson", backend="onnxruntime")
    result = unmixer.run("scene.hdr")            # or a Scene, or an (H, W, B) array
    result.abundances.shape, result.endmembers.shape
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unmix.diffusion.schedule import Schedule
from unmix.errors import MissingInputError
from unmix.io.scene import Scene
from unmix.runtime.manifest import Manifest, check_cube, load_manifest
from unmix.runtime.pipeline import PipelineConfig, ProgressCallback, run_pipeline


@dataclass
class Result:
    """One unmixed cube.

    Attributes:
        abundances: (H, W, p) float32 fractions on the simplex (NaN at masked pixels); with a
            ``workspace`` this and the other maps are DiskArrays.
        endmembers: (p, B) float32 spectra >= 0, in the cube's reflectance units.
        names: p endmember names (the abundance file's band names).
        rmse: (H, W) float32 per-pixel reconstruction RMSE.
        uncertainty: (H, W) float32 per-pixel uncertainty of the abundances: the mean over endmembers
            of their standard deviation across samples (S > 1), with the noise and endmember
            uncertainty propagated to the abundances added in quadrature when the model records its
            noise estimate; None when neither applies. unmix-run writes it as ``<stem>.uncertainty``.
        uncertainty_per_endmember: (H, W, p) float32 per-pixel, per-endmember standard deviation of
            the abundances across samples (S > 1, ``ddof = 1``), or None for one sample.
        timings: seconds per stage and network.
        config: the inference settings used.
        notes: what could not be checked or was masked.
        library_hints: per endmember, the closest library spectrum to the model's trained endmember
            (``{"name", "angle_degrees", "library"}``), a naming hint; None when training had no library.
    """

    abundances: np.ndarray
    endmembers: np.ndarray
    names: list[str]
    rmse: np.ndarray
    uncertainty: np.ndarray | None
    timings: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    uncertainty_per_endmember: np.ndarray | None = None
    library_hints: list[dict[str, Any]] | None = None


class Unmixer:
    """Exported networks opened on one backend, ready to unmix cubes from the model's sensor."""

    def __init__(self, manifest: Manifest, networks: dict, backend: str):
        self.manifest = manifest
        self.networks = networks
        self.backend = backend
        self.schedule = Schedule.from_config(manifest.schedule)

    @property
    def precision(self) -> str:
        """The precision the networks run at (``fp32``, ``fp16``, ``bf16``, ``int8``; ``mixed`` if they differ)."""
        found = {getattr(network, "precision", None) or "fp32" for network in self.networks.values()}
        return found.pop() if len(found) == 1 else "mixed"

    @classmethod
    def load(cls, model_dir: str | Path, backend: str = "onnxruntime", threads: int | None = None,
             device: str | None = None, precision: str | None = None) -> "Unmixer":
        """Open ``model_dir`` (written by ``unmix-export``) on ``backend`` (a name of
        :data:`unmix.runtime.backends.BACKENDS`).

        ``threads`` bounds the backend's CPU threads; ``device`` is ``cpu``, ``cuda``, ... (None: the
        backend's default device). ``precision``: ``fp32``, ``fp16``, ``bf16`` or ``int8``
        (:data:`unmix.runtime.backends.RUN_PRECISIONS`; None: the manifest's graphs); ``precision``
        of the Unmixer says what runs.
        """
        from unmix.runtime.backends import load_networks

        manifest = load_manifest(model_dir)
        networks = load_networks(manifest, backend=backend, threads=threads, device=device, precision=precision)
        return cls(manifest, networks, backend)

    def settings(self, **overrides: Any) -> PipelineConfig:
        """The model's inference defaults with ``overrides`` (None values are ignored)."""
        defaults = dict(self.manifest.inference)
        chosen = {k: v for k, v in overrides.items() if v is not None}
        known = {f for f in PipelineConfig.__dataclass_fields__}
        return PipelineConfig.from_dict({k: v for k, v in defaults.items() if k in known}, **chosen)

    def run(self, cube: Scene | np.ndarray | str | Path, progress: ProgressCallback | None = None,
            workspace: str | Path | None = None, reestimate: int | None = None, **overrides: Any) -> Result:
        """Unmix a Scene, an (H, W, B) reflectance array, or an ENVI file path.

        ``overrides`` are inference settings (``steps``, ``samples``, ``eta``, ``seed``, ...).
        ``reestimate``: N >= 100 re-estimates the endmembers on this cube from a sample of at most N
        pixels, starting from the model's (for a model trained on another flight or scene of the same
        sensor; :func:`unmix.runtime.pipeline.run_pipeline`); the 2D step's weight then follows the
        cube's noise unless ``dc_weight`` is among the overrides. ``result.config["endmembers_source"]``
        says which endmembers were used.
        ``workspace``: an existing folder that outlives the result, where the scene-sized maps are kept
        as :class:`unmix.io.diskarray.DiskArray` files (``np.asarray`` reads one) instead of in memory.
        """
        scene = _as_scene(cube)
        notes = check_cube(self.manifest, scene)
        config = self.settings(**overrides)
        result = run_pipeline(scene, self.networks, self.schedule, config, progress=progress,
                              endmembers=self.manifest.endmembers, workspace=workspace, reestimate=reestimate,
                              keep_dc_weight=overrides.get("dc_weight") is not None,
                              endmember_spread=self.manifest.endmember_spread, noise_std=self.manifest.noise_std)
        return Result(abundances=result.abundances, endmembers=result.endmembers,
                      names=list(self.manifest.endmember_names), rmse=result.rmse,
                      uncertainty=result.uncertainty, timings=result.timings, config=result.config, notes=notes,
                      uncertainty_per_endmember=result.uncertainty_per_endmember,
                      library_hints=self.manifest.library_hints)


def _as_scene(cube: Scene | np.ndarray | str | Path) -> Scene:
    if isinstance(cube, Scene):
        return cube
    if isinstance(cube, np.ndarray):
        return Scene.from_array(cube)
    path = Path(cube)
    if not path.exists():
        raise MissingInputError(f"{path}: cube not found")
    from unmix.io.envi import read_cube

    return read_cube(path)
