"""Small helpers shared by the UNet and its attention layers.

Names follow the original `ldm.modules.diffusionmodules.util` so that readers of the
CompVis code find the same functions; only what this project uses is kept.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.utils.checkpoint
from torch import nn


def checkpoint(fn: Callable[..., torch.Tensor], inputs: tuple, enabled: bool) -> torch.Tensor:
    """Run `fn(*inputs)`, recomputing its activations in backward when `enabled`.

    Checkpointing only pays off while autograd records a graph, so it is skipped under
    `torch.no_grad()`. PyTorch's non-reentrant implementation is used: it accepts `None`
    inputs, tracks the parameters `fn` closes over without listing them, and restores the
    RNG state, so dropout masks agree between the forward and the recomputation.
    """
    if enabled and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(fn, *inputs, use_reentrant=False)
    return fn(*inputs)


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal timestep embedding, SD1 convention: `[cos(t f), sin(t f)]`.

    `timesteps` (B,) may be fractional; frequencies are `f_i = max_period^(-i / half)` for
    `i < half = dim // 2` (diffusers: `flip_sin_to_cos=True, freq_shift=0`). An odd `dim`
    gets a trailing zero column. Returns (B, dim) float32.
    """
    half = dim // 2
    # Same operation order as the original and diffusers, so the float32 results agree bitwise.
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    )
    args = timesteps.float()[:, None] * freqs[None]  # (B, half)
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, 2 * half)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


def zero_module(module: nn.Module) -> nn.Module:
    """Zero every parameter of `module` in place and return it (residual branches start as identity)."""
    for p in module.parameters():
        p.detach().zero_()
    return module


class GroupNorm32(nn.GroupNorm):
    """GroupNorm evaluated in float32 and cast back to the input dtype (as the original)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            return super().forward(x)
        return super().forward(x.float()).to(x.dtype)


def normalization(channels: int) -> nn.Module:
    """The UNet's standard normalisation: GroupNorm with 32 groups, eps 1e-5, float32 statistics."""
    return GroupNorm32(32, channels)


_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_AVG_POOL = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}


def conv_nd(dims: int, *args, **kwargs) -> nn.Module:
    """`nn.Conv1d`, `nn.Conv2d` or `nn.Conv3d` chosen by `dims`."""
    if dims not in _CONV:
        raise ValueError(f"unsupported dimensions: {dims}")
    return _CONV[dims](*args, **kwargs)


def avg_pool_nd(dims: int, *args, **kwargs) -> nn.Module:
    """`nn.AvgPool1d`, `nn.AvgPool2d` or `nn.AvgPool3d` chosen by `dims`."""
    if dims not in _AVG_POOL:
        raise ValueError(f"unsupported dimensions: {dims}")
    return _AVG_POOL[dims](*args, **kwargs)


def linear(*args, **kwargs) -> nn.Module:
    """`nn.Linear` (kept as a named helper for parity with the original code)."""
    return nn.Linear(*args, **kwargs)
