"""unmix.train: the PyTorch side of unmix (needs the ``train`` extra: torch, safetensors, earthlib).

- ``unmix.train.fit(scene, endmembers, ...)`` — train the three networks on a scene (behind ``unmix-train``;
  implemented in :mod:`unmix.train.trainer`).
- :mod:`unmix.train.models` — ``HybridSTU`` (tile -> abundances) and ``ResUNet(dims=1|2)`` (the diffusion
  priors over spectra and abundance maps), with ``count_parameters`` and ``flops_per_call``.
- :mod:`unmix.train.ddpm` — DDPM training pieces: ``q_sample``, ``diffusion_loss``, ``EMA``, ``sam_loss``.
- :mod:`unmix.train.checkpoint` — ``save_checkpoint`` / ``load_checkpoint`` (safetensors + config.json).

Nothing is imported eagerly, so ``import unmix.train`` costs nothing until something is used.
"""
from __future__ import annotations


def __getattr__(name: str):
    if name in ("fit", "FitResult"):
        from unmix.train import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'unmix.train' has no attribute {name!r}")
