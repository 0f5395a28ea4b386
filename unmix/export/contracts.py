"""Each pipeline network's contract: its tensors and its realistic sample inputs (numpy only, no torch).

For B bands, p endmembers and T x T tiles (the tensors of :func:`unmix.runtime.network.pipeline_specs`,
all float32, static shapes):

- ``hybridstu``: ``cube (1, B, T, T)`` -> ``abundances (1, p, T, T)``.
- ``abundance_step``: the fused 2D DDIM step -> ``x_prev (1, p, T, T)``.
- ``spectra_step``: the fused 1D DDIM step -> ``x_prev (p, 1, B)``.

Sample inputs are drawn from a :class:`SampleSource` (endmembers E ``(p, B)``, the first DDIM step
t = t0 of the inference settings and its row c of the DDIM table, with eta = 1 so the noise input
matters). Writing c2 = sqrt(alpha_bar_t), c3 = sqrt(1 - alpha_bar_t):

- a tile: abundances a ~ Dirichlet(1) per pixel, ``cube = sum_k a_k E_k + N(0, 0.005^2)``;
- ``abundance_step``: ``x_t = c2 (2a - 1) + c3 eps``, the tile's cube, E, ``t = t0``, ``dc_weight = 1``;
- ``spectra_step``: ``x_t = c2 x0 + c3 eps`` with ``x0 = 2 E / s - 1`` and ``s = max_b E``; the data
  statistics ``AtA = A^T A / n`` and ``AtY = A^T Y / n`` of a tile's n pixels (A their abundances, Y
  their spectra).

One contract class per network (:data:`CONTRACTS`) owns its names, shapes and sample recipe. The ONNX
exporter (:mod:`unmix.export.onnx_export`) traces each network on its contract's sample inputs and
checks the graph against the contract; the TensorRT builder (:mod:`unmix.export.tensorrt_build`) takes
its static input shapes and its check inputs from the same contracts (:func:`manifest_contracts`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import numpy as np

from unmix.errors import UsageError
from unmix.runtime.network import NetworkSpec, TensorSpec, pipeline_specs

__all__ = [
    "AbundanceStepContract",
    "CONTRACTS",
    "HybridSTUContract",
    "NetworkContract",
    "SampleSource",
    "SpectraStepContract",
    "manifest_contracts",
    "network_contracts",
]


@dataclass(frozen=True)
class SampleSource:
    """What sample inputs are drawn from: ``endmembers`` E ``(p, B)`` float64 (>= 1e-3), the first DDIM
    step's ``timestep`` t0 and its row ``coef`` of the DDIM table (eta = 1)."""

    endmembers: np.ndarray
    coef: np.ndarray
    timestep: float

    @classmethod
    def create(cls, endmembers: Any, schedule: Mapping[str, Any], inference: Mapping[str, Any],
               bands: int, p: int, seed: int = 0) -> "SampleSource":
        """From endmembers (random ones when missing or not ``(p, B)`` finite values), a schedule
        configuration (the default schedule when it is not valid) and inference settings (``t0``,
        ``steps``; defaults 0.3 T and 10)."""
        from unmix.diffusion.schedule import Schedule, ddim_coefficients, ddim_timesteps

        spectra = np.asarray(endmembers, np.float64) if endmembers is not None else None
        if spectra is None or spectra.shape != (p, bands) or not np.isfinite(spectra).all():
            spectra = 0.05 + 0.9 * np.random.default_rng(seed).random((p, bands))
        try:
            chosen = Schedule.from_config(dict(schedule))
        except UsageError:
            chosen = Schedule()
        t0 = min(max(int(inference.get("t0", chosen.T * 3 // 10)), 1), chosen.T - 1)
        steps = min(int(inference.get("steps", 10)), t0 + 1)
        timesteps = ddim_timesteps(chosen.T, steps, t0)
        coef = ddim_coefficients(chosen, timesteps, eta=1.0).as_table()[0]
        return cls(endmembers=np.clip(spectra, 1e-3, None), coef=np.asarray(coef, np.float64),
                   timestep=float(timesteps[0]))

    @classmethod
    def from_config(cls, config: Mapping[str, Any], bands: int, p: int, seed: int = 0) -> "SampleSource":
        """From a checkpoint's configuration (its estimated endmembers, schedule and recorded inference)."""
        train = config.get("train")
        inference = (train.get("inference") or {}) if isinstance(train, dict) else {}
        return cls.create((config.get("endmembers") or {}).get("estimated"), config.get("schedule") or {},
                          inference, bands, p, seed)

    @classmethod
    def from_manifest(cls, manifest) -> "SampleSource":
        """From an exported model's :class:`unmix.runtime.manifest.Manifest`."""
        return cls.create(manifest.endmembers, manifest.schedule, manifest.inference, manifest.bands,
                          manifest.endmember_count)

    @property
    def noise_scales(self) -> tuple[float, float]:
        """(c2, c3): sqrt(alpha_bar_t) and sqrt(1 - alpha_bar_t) at the sample step."""
        from unmix.diffusion.schedule import Coef

        return float(self.coef[Coef.SQRT_ALPHA_BAR_T]), float(self.coef[Coef.SQRT_ONE_MINUS_ALPHA_BAR_T])

    def tile(self, tile: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Abundances ``(1, p, T, T)`` on the simplex and the cube ``(1, B, T, T)`` they mix (with noise)."""
        p, bands = self.endmembers.shape
        abundances = rng.dirichlet(np.ones(p), size=(1, tile, tile)).transpose(0, 3, 1, 2)
        cube = np.einsum("nphw,pb->nbhw", abundances, self.endmembers) + rng.normal(0, 0.005, (1, bands, tile, tile))
        return abundances, cube


@dataclass(frozen=True)
class NetworkContract:
    """One pipeline network for B ``bands``, p ``endmembers`` and T ``tile``: names, shapes, samples.

    Class attributes: ``name`` (the network's name in the manifest) and ``weights`` (the checkpoint
    networks whose weights its module holds).
    """

    name: ClassVar[str]
    weights: ClassVar[tuple[str, ...]]
    bands: int
    endmembers: int
    tile: int

    @property
    def spec(self) -> NetworkSpec:
        return pipeline_specs(self.bands, self.endmembers, self.tile)[self.name]

    @property
    def inputs(self) -> dict[str, TensorSpec]:
        """name -> :class:`TensorSpec`, in call order (the graph's input order)."""
        return dict(self.spec.inputs)

    @property
    def outputs(self) -> dict[str, TensorSpec]:
        return dict(self.spec.outputs)

    def input_shapes(self) -> dict[str, list[int]]:
        """name -> static shape of each input (what the TensorRT builder fixes)."""
        return {key: list(spec.shape) for key, spec in self.inputs.items()}

    def sample_inputs(self, source: SampleSource, seed: int = 0) -> dict[str, np.ndarray]:
        """Realistic inputs drawn from ``source`` (the module docstring), in call order, as the contract's dtypes."""
        values = self._samples(source, np.random.default_rng(seed))
        return {key: np.ascontiguousarray(np.asarray(values[key]).reshape(spec.shape).astype(spec.dtype))
                for key, spec in self.inputs.items()}

    def _samples(self, source: SampleSource, rng: np.random.Generator) -> dict[str, np.ndarray]:
        raise NotImplementedError


class HybridSTUContract(NetworkContract):
    name = "hybridstu"
    weights = ("hybridstu",)

    def _samples(self, source, rng):
        return {"cube": source.tile(self.tile, rng)[1]}


class AbundanceStepContract(NetworkContract):
    name = "abundance_step"
    weights = ("abundance",)

    def _samples(self, source, rng):
        c2, c3 = source.noise_scales
        abundances, cube = source.tile(self.tile, rng)
        return {"x_t": c2 * (2 * abundances - 1) + c3 * rng.standard_normal(abundances.shape),
                "t": np.full(1, source.timestep), "coef": source.coef,
                "noise": rng.standard_normal(abundances.shape), "cube": cube,
                "endmembers": source.endmembers, "dc_weight": np.ones(1)}


class SpectraStepContract(NetworkContract):
    name = "spectra_step"
    weights = ("spectra",)

    def _samples(self, source, rng):
        c2, c3 = source.noise_scales
        endmembers = source.endmembers
        p, bands = endmembers.shape
        abundances, cube = source.tile(self.tile, rng)
        pixels = abundances.transpose(0, 2, 3, 1).reshape(-1, p)
        observed = cube.transpose(0, 2, 3, 1).reshape(-1, bands)
        scale = endmembers.max(axis=1)
        x0 = (2 * endmembers / scale[:, None] - 1)[:, None, :]
        return {"x_t": c2 * x0 + c3 * rng.standard_normal(x0.shape), "t": np.full(p, source.timestep),
                "coef": source.coef, "noise": rng.standard_normal(x0.shape),
                "AtA": pixels.T @ pixels / len(pixels), "AtY": pixels.T @ observed / len(pixels),
                "scale": scale, "dc_weight": np.ones(1)}


CONTRACTS: dict[str, type[NetworkContract]] = {
    cls.name: cls for cls in (HybridSTUContract, AbundanceStepContract, SpectraStepContract)}


def network_contracts(bands: int, endmembers: int, tile: int) -> dict[str, NetworkContract]:
    """The contract of each pipeline network, in the pipeline's order (sizes checked as integers)."""
    pipeline_specs(bands, endmembers, tile)
    return {name: cls(int(bands), int(endmembers), int(tile)) for name, cls in CONTRACTS.items()}


def manifest_contracts(manifest) -> dict[str, NetworkContract]:
    """The contracts of an exported model: its band count, endmember count and ``inference.tile``."""
    return network_contracts(manifest.bands, manifest.endmember_count, manifest.inference["tile"])
