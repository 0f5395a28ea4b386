"""unmix's networks: HybridSTU (tile -> abundances) and one ResUNet for 1D spectra and 2D abundance maps.

Both are fully convolutional and export with ``torch.onnx.export(dynamo=True, opset_version=20)``:
shapes are handled with static ops only (pad, crop, reshape), never with Python branches on tensor
values. For fp16 exports the parts that must stay float32 do so inside the modules: HybridSTU's
softmax, and ResUNet's timestep embedding (sinusoid and MLP) and GroupNorm statistics.

Every network records its constructor arguments (``config()``, JSON-serialisable) so a checkpoint can
rebuild it from ``config.json`` without pickling; :data:`NETWORKS` maps class names to classes.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from unmix.errors import UsageError, require_int

__all__ = [
    "HybridSTU",
    "NETWORKS",
    "ResUNet",
    "build_network",
    "count_parameters",
    "flops_per_call",
    "timestep_embedding",
]


def _replicate_pad_hw(x: torch.Tensor, r: int) -> torch.Tensor:
    """Pad the last two axes by ``r`` on each side, repeating the edge (any rank >= 3).

    Leading axes are merged so the pad is always a 4D ``Pad(mode=edge)`` in ONNX.
    """
    shape = x.shape
    padded = F.pad(x.reshape(shape[0], -1, shape[-2], shape[-1]), (r, r, r, r), mode="replicate")
    return padded.reshape(*shape[:-2], shape[-2] + 2 * r, shape[-1] + 2 * r)


# --------------------------------------------------------------------------------------------------
# HybridSTU
# --------------------------------------------------------------------------------------------------

def _plain_eager_cpu(x: torch.Tensor) -> bool:
    """True for float32 CPU tensors in plain eager mode (not compiling/exporting, no dispatch mode)."""
    try:
        from torch.utils._python_dispatch import _get_current_dispatch_mode
    except ImportError:  # pragma: no cover - private API moved: take the plain path
        return False
    return (x.device.type == "cpu" and x.dtype == torch.float32 and torch.backends.mkldnn.is_available()
            and torch.backends.mkldnn.enabled and not torch.compiler.is_compiling()
            and not torch.jit.is_tracing() and _get_current_dispatch_mode() is None)


class SpectralConv3d(nn.Conv3d):
    """``nn.Conv3d`` that calls oneDNN directly in eager float32 CPU mode.

    For a single small-channel tile (N = 1) torch's heuristic picks its im2col fallback
    (``slow_conv3d``), many times slower than oneDNN on these shapes; the direct call is the same
    convolution (same numbers to float32 rounding, autograd included). Under export, compile,
    tracing or a dispatch mode (e.g. FlopCounterMode) it is a plain ``nn.Conv3d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding_mode == "zeros" and _plain_eager_cpu(x):
            return torch.mkldnn_convolution(x, self.weight, self.bias, self.padding, self.stride, self.dilation,
                                            self.groups)
        return super().forward(x)


class HybridSTU(nn.Module):
    """Spectral-spatial CNN: a reflectance tile -> abundance maps on the simplex.

    Layers: an optional learned 1x1 spectral reduction ``bands -> reduced_bands``; ``depth3d`` Conv3d
    over (band, row, col) with kernels (7, 3, 3), (5, 3, 3), then (3, 3, 3), the first two with a
    spectral stride of 2 (while at least 4 bands remain); the band axis folded into channels;
    ``depth2d`` 3x3 Conv2d; a 1x1 head to ``endmembers`` logits; a softmax over endmembers computed in
    float32. Activations are LeakyReLU(0.1), with He-normal initialisation. Spatial padding repeats the
    edge pixels (``replicate``), so a tile border looks like its own edge, not like black (zero
    reflectance) neighbours; the band axis is zero-padded. Any H, W >= 1 in one pass; output H, W =
    input H, W. Receptive field: ``2 * (depth3d + depth2d) + 1`` pixels square.

    Widths: Conv3d channels ``(width // 2, width, width, ...)``, Conv2d channels ``4 * width``.

    Args:
        bands: B, input bands.
        endmembers: p, output abundance maps (>= 2).
        reduced_bands: bands after the 1x1 reduction (<= bands), or None for none.
        width: channel scale (see above).
        depth3d: number of Conv3d layers (>= 1).
        depth2d: number of 3x3 Conv2d layers after the fold (>= 1).

    Forward: ``(N, B, H, W)`` float reflectance -> ``(N, p, H, W)`` float32 abundances (>= 0, sum 1).
    """

    def __init__(self, bands: int, endmembers: int, reduced_bands: int | None = 32, width: int = 16,
                 depth3d: int = 3, depth2d: int = 2):
        super().__init__()
        bands = require_int(bands, "bands", 1)
        endmembers = require_int(endmembers, "endmembers", 2)
        if reduced_bands is not None:
            reduced_bands = require_int(reduced_bands, "reduced_bands", 1)
            if reduced_bands > bands:
                raise UsageError(f"reduced_bands must be <= bands = {bands}, got {reduced_bands}")
        width = require_int(width, "width", 1)
        depth3d = require_int(depth3d, "depth3d", 1)
        depth2d = require_int(depth2d, "depth2d", 1)
        self._config = {"bands": bands, "endmembers": endmembers, "reduced_bands": reduced_bands,
                        "width": width, "depth3d": depth3d, "depth2d": depth2d}

        self.reduce = nn.Conv2d(bands, reduced_bands, 1) if reduced_bands is not None else None
        length = reduced_bands if reduced_bands is not None else bands
        channels_in = 1
        convs3d = []
        for i in range(depth3d):
            k = (7, 5)[i] if i < 2 else 3
            channels = max(1, width // 2) if i == 0 else width
            stride = 2 if i < 2 and (length + 1) // 2 >= 4 else 1
            convs3d.append(SpectralConv3d(channels_in, channels, (k, 3, 3), stride=(stride, 1, 1),
                                          padding=(k // 2, 0, 0)))
            length = (length + 2 * (k // 2) - k) // stride + 1
            channels_in = channels
        self.convs3d = nn.ModuleList(convs3d)
        self.folded_channels = channels_in * length
        hidden = 4 * width
        convs2d = []
        channels_in = self.folded_channels
        for _ in range(depth2d):
            convs2d.append(nn.Conv2d(channels_in, hidden, 3))
            channels_in = hidden
        self.convs2d = nn.ModuleList(convs2d)
        self.head = nn.Conv2d(hidden, endmembers, 1)
        self.act = nn.LeakyReLU(self.SLOPE)
        self._init_weights()

    SLOPE = 0.1

    def _init_weights(self) -> None:
        """He-normal convs for LeakyReLU (torch's default init shrinks the signal ~3x per layer, which
        stalls the first hundred steps), zero biases, and a near-zero head (uniform abundances at start)."""
        for conv in [*self.convs3d, *self.convs2d]:
            nn.init.kaiming_normal_(conv.weight, a=self.SLOPE, nonlinearity="leaky_relu")
            nn.init.zeros_(conv.bias)
        if self.reduce is not None:
            nn.init.kaiming_normal_(self.reduce.weight, nonlinearity="linear")
            nn.init.zeros_(self.reduce.bias)
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    @torch.no_grad()
    def standardize_input(self, mean: np.ndarray | torch.Tensor, std: np.ndarray | torch.Tensor) -> None:
        """Fold a per-band standardisation ``(x - mean) / std`` into the 1x1 reduction's weights.

        Scenes whose endmembers are highly correlated (Sim1: condition number of E E^T ~3e4) vary by a
        few percent around a large common spectrum; on raw reflectance the network's first layer sees
        almost only that spectrum, and the softmax head settles on one constant map. Standardised inputs
        put the variation at unit scale. Folding it into the weights (``W' = W / std``,
        ``b' = b - W mean / std``) keeps the exported network's input raw reflectance. No-op without
        the reduction layer.
        """
        if self.reduce is None:
            return
        mean = torch.as_tensor(np.asarray(mean, dtype=np.float32)).reshape(-1)
        std = torch.as_tensor(np.asarray(std, dtype=np.float32)).reshape(-1).clamp_min(1e-6)
        if mean.numel() != self.bands or std.numel() != self.bands:
            raise UsageError(f"standardize_input needs {self.bands} band means and deviations, "
                             f"got {mean.numel()} and {std.numel()}")
        weight = self.reduce.weight[:, :, 0, 0] / std           # (reduced, B)
        self.reduce.bias.sub_(weight @ mean)
        self.reduce.weight.copy_(weight[:, :, None, None])

    def config(self) -> dict[str, Any]:
        """Constructor arguments (JSON-serialisable): ``HybridSTU(**model.config())`` rebuilds it."""
        return dict(self._config)

    @property
    def bands(self) -> int:
        return self._config["bands"]

    @property
    def endmembers(self) -> int:
        return self._config["endmembers"]

    def forward(self, cube: torch.Tensor) -> torch.Tensor:
        """``(N, B, H, W)`` reflectance -> ``(N, p, H, W)`` float32 abundances (softmax over p)."""
        x = self.reduce(cube) if self.reduce is not None else cube
        x = x.unsqueeze(1)                                   # (N, 1, bands, H, W)
        for conv in self.convs3d:
            x = self.act(conv(_replicate_pad_hw(x, 1)))
        n, c, b, h, w = x.shape
        x = x.reshape(n, c * b, h, w)
        for conv in self.convs2d:
            x = self.act(conv(_replicate_pad_hw(x, 1)))
        logits = self.head(x)
        return torch.softmax(logits.float(), dim=1)


# --------------------------------------------------------------------------------------------------
# ResUNet (improved-diffusion style, one class for 1D and 2D)
# --------------------------------------------------------------------------------------------------

def conv_nd(dims: int, *args, **kwargs) -> nn.Module:
    """``nn.Conv1d`` or ``nn.Conv2d``."""
    return (nn.Conv1d, nn.Conv2d)[dims - 1](*args, **kwargs)


def avg_pool_nd(dims: int, *args, **kwargs) -> nn.Module:
    """``nn.AvgPool1d`` or ``nn.AvgPool2d``."""
    return (nn.AvgPool1d, nn.AvgPool2d)[dims - 1](*args, **kwargs)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a module's parameters in place and return it (output layers start as the zero map)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (N,) float timesteps -> (N, dim), always float32.

    ``[cos(t * f_k), sin(t * f_k)]`` with ``f_k = max_period^(-k / (dim // 2))``, ``k < dim // 2``
    (improved-diffusion's convention); an odd ``dim`` gets a trailing zero column. float32 because in
    fp16 ``t * f`` near t = 999 has an error of 0.25 (fp16 spacing near 1000 is 0.5).
    """
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=t.device) * (-math.log(max_period) / half))
    args = t.to(torch.float32)[:, None] * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class Linear32(nn.Linear):
    """A Linear layer that always computes in float32 (for the timestep path of an fp16 model)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.float()
        return F.linear(x.float(), self.weight.float(), bias)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm whose statistics and affine transform are computed in float32; output in x's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(),
                            self.eps).to(x.dtype)


def _norm(channels: int, groups: int) -> GroupNorm32:
    return GroupNorm32(math.gcd(groups, channels), channels)


class TimestepBlock(nn.Module):
    """A block that takes the timestep embedding as a second input."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class TimestepSequential(nn.Sequential, TimestepBlock):
    """Sequential that routes the embedding only to the children that take it."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class ResBlock(TimestepBlock):
    """GroupNorm -> SiLU -> conv3, + Linear(embedding), GroupNorm -> SiLU -> zero-init conv3, + skip."""

    def __init__(self, dims: int, channels: int, emb_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.in_layers = nn.Sequential(_norm(channels, groups), nn.SiLU(),
                                       conv_nd(dims, channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), Linear32(emb_channels, out_channels))
        self.out_layers = nn.Sequential(_norm(out_channels, groups), nn.SiLU(),
                                        zero_module(conv_nd(dims, out_channels, out_channels, 3, padding=1)))
        self.skip = nn.Identity() if channels == out_channels else conv_nd(dims, channels, out_channels, 1)
        self.dims = dims

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        scale = self.emb_layers(emb).to(h.dtype)
        h = h + scale.reshape(scale.shape + (1,) * self.dims)
        return self.skip(x) + self.out_layers(h)


class Downsample(nn.Module):
    """Halve the spatial (or spectral) size: a stride-2 conv3 (or a 2x average pool)."""

    def __init__(self, dims: int, channels: int, use_conv: bool):
        super().__init__()
        self.op = conv_nd(dims, channels, channels, 3, stride=2, padding=1) if use_conv else avg_pool_nd(dims, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Double the size: nearest-neighbour upsampling, then (optionally) a conv3."""

    def __init__(self, dims: int, channels: int, use_conv: bool):
        super().__init__()
        self.conv = conv_nd(dims, channels, channels, 3, padding=1) if use_conv else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class ResUNet(nn.Module):
    """Timestep-conditioned residual UNet over 1D spectra (``dims=1``) or 2D maps (``dims=2``).

    improved-diffusion's layout without attention: an input conv3 to ``base_channels``; per level
    ``num_res_blocks`` ResBlocks at ``base_channels * channel_mult[level]`` then a stride-2 downsample
    (not after the last level); two ResBlocks in the middle; the mirrored decoder with
    ``num_res_blocks + 1`` ResBlocks per level fed by skip connections and nearest+conv upsampling; a
    GroupNorm -> SiLU -> zero-initialised conv3 output (so the network outputs 0 at init). The last
    conv of every ResBlock is zero-initialised too. GroupNorm uses ``gcd(groups, channels)`` groups.

    Odd sizes: the input is padded (edge values repeated) at the end of each spatial axis to a multiple
    of ``2 ** (len(channel_mult) - 1)`` and the output cropped back; the pad amount comes from the
    static shape, so the exported graph has no data-dependent control flow.

    Args:
        dims: 1 (input ``(N, C, L)``, e.g. one spectrum of L bands with C = 1) or 2 (``(N, C, H, W)``,
            e.g. p abundance maps).
        in_channels: C.
        out_channels: output channels (default ``in_channels``).
        base_channels, channel_mult, num_res_blocks, groups: widths and depth (see above).
        time_embed_dim: width of the timestep MLP (default ``4 * base_channels``).
        conv_resample: stride-2 convs and nearest+conv for resampling (else average pool / nearest).

    Forward: ``x (N, C, *spatial)``, ``t (N,)`` float timesteps in ``[0, T)`` (an int tensor is cast;
    shape (1,) broadcasts) -> ``(N, out_channels, *spatial)`` in x's dtype.
    """

    def __init__(self, dims: int, in_channels: int, out_channels: int | None = None, base_channels: int = 32,
                 channel_mult: Sequence[int] = (1, 2), num_res_blocks: int = 1, groups: int = 8,
                 time_embed_dim: int | None = None, conv_resample: bool = True):
        super().__init__()
        if dims not in (1, 2) or isinstance(dims, bool):
            raise UsageError(f"dims must be 1 or 2, got {dims!r}")
        in_channels = require_int(in_channels, "in_channels", 1)
        out_channels = in_channels if out_channels is None else require_int(out_channels, "out_channels", 1)
        base_channels = require_int(base_channels, "base_channels", 1)
        channel_mult = tuple(require_int(m, "channel_mult entries", 1) for m in channel_mult)
        if not channel_mult:
            raise UsageError("channel_mult must name at least one level")
        num_res_blocks = require_int(num_res_blocks, "num_res_blocks", 1)
        groups = require_int(groups, "groups", 1)
        time_embed_dim = 4 * base_channels if time_embed_dim is None else require_int(time_embed_dim,
                                                                                       "time_embed_dim", 1)
        self._config = {"dims": dims, "in_channels": in_channels, "out_channels": out_channels,
                        "base_channels": base_channels, "channel_mult": list(channel_mult),
                        "num_res_blocks": num_res_blocks, "groups": groups, "time_embed_dim": time_embed_dim,
                        "conv_resample": bool(conv_resample)}
        self.dims = dims
        self.base_channels = base_channels
        self.multiple = 2 ** (len(channel_mult) - 1)

        self.time_embed = nn.Sequential(Linear32(base_channels, time_embed_dim), nn.SiLU(),
                                        Linear32(time_embed_dim, time_embed_dim))
        ch = base_channels
        self.input_blocks = nn.ModuleList([TimestepSequential(conv_nd(dims, in_channels, ch, 3, padding=1))])
        skip_channels = [ch]
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                block = ResBlock(dims, ch, time_embed_dim, base_channels * mult, groups)
                ch = base_channels * mult
                self.input_blocks.append(TimestepSequential(block))
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(TimestepSequential(Downsample(dims, ch, conv_resample)))
                skip_channels.append(ch)
        self.middle_block = TimestepSequential(ResBlock(dims, ch, time_embed_dim, ch, groups),
                                               ResBlock(dims, ch, time_embed_dim, ch, groups))
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers: list[nn.Module] = [ResBlock(dims, ch + skip_channels.pop(), time_embed_dim,
                                                    base_channels * mult, groups)]
                ch = base_channels * mult
                if level and i == num_res_blocks:
                    layers.append(Upsample(dims, ch, conv_resample))
                self.output_blocks.append(TimestepSequential(*layers))
        self.out = nn.Sequential(_norm(ch, groups), nn.SiLU(),
                                 zero_module(conv_nd(dims, ch, out_channels, 3, padding=1)))

    def config(self) -> dict[str, Any]:
        """Constructor arguments (JSON-serialisable): ``ResUNet(**model.config())`` rebuilds it."""
        return {k: (list(v) if isinstance(v, list) else v) for k, v in self._config.items()}

    def time_embedding(self, t: torch.Tensor) -> torch.Tensor:
        """(N,) timesteps -> (N, time_embed_dim) float32 (sinusoid and MLP both in float32)."""
        return self.time_embed(timestep_embedding(t, self.base_channels))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``x (N, C, *spatial)``, ``t (N,)`` -> ``(N, out_channels, *spatial)``."""
        sizes = x.shape[2:]
        pads: list[int] = []
        for size in reversed(sizes):                         # F.pad order: last axis first
            pads += [0, (-size) % self.multiple]
        h = F.pad(x, pads, mode="replicate") if self.multiple > 1 else x
        emb = self.time_embedding(t.reshape(-1).expand(x.shape[0]))
        skips = []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        h = self.out(h)
        if self.dims == 1:
            return h[:, :, : sizes[0]]
        return h[:, :, : sizes[0], : sizes[1]]


# --------------------------------------------------------------------------------------------------
# Registry and reporting helpers
# --------------------------------------------------------------------------------------------------

NETWORKS: dict[str, type[nn.Module]] = {"HybridSTU": HybridSTU, "ResUNet": ResUNet}


def build_network(class_name: str, args: dict[str, Any]) -> nn.Module:
    """Rebuild a network from its class name and ``config()`` (raises UsageError if unknown)."""
    if class_name not in NETWORKS:
        raise UsageError(f"unknown network class {class_name!r}; known: {', '.join(NETWORKS)}")
    return NETWORKS[class_name](**args)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (elements) of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def flops_per_call(module: nn.Module, example_inputs: Sequence[torch.Tensor] | torch.Tensor) -> int:
    """Floating-point operations of one forward call (2 per multiply-add; convs and matmuls only),
    counted by ``torch.utils.flop_counter.FlopCounterMode``."""
    from torch.utils.flop_counter import FlopCounterMode

    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        module(*inputs)
    return int(counter.get_total_flops())
