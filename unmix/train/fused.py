"""Eager torch Networks of a checkpoint: the pipeline's three modules run in torch.

:class:`TorchNetwork` adapts a torch module to :class:`unmix.runtime.network.Network`;
:func:`load_torch_networks` builds the pipeline's networks from a checkpoint with the fused DDIM step
modules of :mod:`unmix.export.steps` (the graphs the export writes), so ``run_pipeline`` can run the
same arithmetic eagerly (tests, benchmarks).
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from unmix.errors import InputError, UsageError
from unmix.export.steps import fused_modules
from unmix.runtime.network import NetworkSpec, TensorSpec, pipeline_specs

__all__ = ["TorchNetwork", "example_inputs", "load_torch_networks"]


class TorchNetwork:
    """Runs an eager torch module as a :class:`unmix.runtime.network.Network`.

    Args:
        module: called as ``module(*inputs)`` in the order of ``inputs``; returns one tensor or a tuple
            in the order of ``outputs``. Put in eval mode.
        inputs, outputs: name -> :class:`TensorSpec` (e.g. from :func:`unmix.runtime.network.pipeline_specs`).
        device: where the module runs (default: where its parameters are, else CPU).

    ``network(feeds)`` converts the numpy feeds to tensors, runs under ``torch.inference_mode`` and
    returns float32 (or the declared dtype) numpy arrays that own their memory.
    """

    def __init__(self, module: nn.Module, inputs: Mapping[str, TensorSpec], outputs: Mapping[str, TensorSpec],
                 device: str | torch.device | None = None):
        if not inputs or not outputs:
            raise UsageError("a TorchNetwork needs at least one input and one output")
        self.module = module.eval()
        self.inputs = dict(inputs)
        self.outputs = dict(outputs)
        if device is None:
            first = next(iter(module.parameters()), None)
            device = first.device if first is not None else torch.device("cpu")
        self.device = torch.device(device)

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        tensors = []
        for name, spec in self.inputs.items():
            if name not in feeds:
                raise InputError(f"TorchNetwork: input {name!r} is missing")
            array = np.ascontiguousarray(feeds[name], dtype=np.dtype(spec.dtype))
            if not array.flags.writeable:      # torch.from_numpy warns about read-only buffers
                array = array.copy()
            tensors.append(torch.from_numpy(array).to(self.device))
        with torch.inference_mode():
            result = self.module(*tensors)
        results = (result,) if isinstance(result, torch.Tensor) else tuple(result)
        if len(results) != len(self.outputs):
            raise InputError(f"TorchNetwork: the module returned {len(results)} outputs, expected {len(self.outputs)}")
        return {name: tensor.detach().to("cpu", getattr(torch, spec.dtype)).numpy().copy()
                for (name, spec), tensor in zip(self.outputs.items(), results)}


def example_inputs(spec: NetworkSpec, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random tensors matching ``spec.inputs`` in call order (for export and checks); free axes get 1."""
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.rand(tuple(1 if s == -1 else s for s in item.shape), generator=gen,
                            dtype=getattr(torch, item.dtype)) for item in spec.inputs.values())


def load_torch_networks(checkpoint_dir: str | os.PathLike, tile: int, ema: bool = False,
                        device: str | torch.device = "cpu") -> tuple[dict[str, TorchNetwork], dict[str, Any]]:
    """Eager Networks for :func:`unmix.runtime.pipeline.run_pipeline` from a checkpoint folder.

    Returns ``(networks, config)``: ``"hybridstu"``, ``"abundance_step"`` and ``"spectra_step"`` as
    :class:`TorchNetwork` with the static shapes of ``pipeline_specs(B, p, tile)``, and the
    checkpoint's ``config.json`` (``Schedule.from_config(config["schedule"])`` rebuilds the schedule;
    ``config["train"]["inference"]`` holds the recorded inference settings).
    """
    from unmix.train.checkpoint import load_checkpoint

    models, config = load_checkpoint(checkpoint_dir, ema=ema, map_location=device)
    modules = fused_modules(models)
    hybridstu = modules["hybridstu"]
    specs = pipeline_specs(hybridstu.bands, hybridstu.endmembers, tile)
    networks = {name: TorchNetwork(module, specs[name].inputs, specs[name].outputs, device=device)
                for name, module in modules.items()}
    return networks, config
