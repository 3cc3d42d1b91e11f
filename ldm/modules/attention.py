"""Transformer layers of the SD 1.x UNet, with the checkpoint's parameter names.

`SpatialTransformer` (norm, proj_in, transformer_blocks, proj_out) wraps
`BasicTransformerBlock`s (self-attention `attn1`, cross-attention `attn2` on the text,
gated feed-forward `ff`). Attention runs through `F.scaled_dot_product_attention`.

Attention controller hook (used by Prompt-to-Prompt)
----------------------------------------------------
`set_attention_controller(model, controller)` attaches a controller to every
`CrossAttention` inside `model` (or detaches it with `controller=None`). A controller is
any callable

    controller(probs, *, name, is_cross) -> probs

- `probs`: (B, heads, N_query, N_key) float32 attention probabilities, rows summing to 1.
  For a 2-D feature map of size H x W, N_query = H * W (row-major); for cross-attention
  N_key is the number of context tokens.
- `name`: the layer's dotted module name relative to the `model` passed to
  `set_attention_controller`, e.g. `input_blocks.1.1.transformer_blocks.0.attn2`.
- `is_cross`: True for attention over a context (text), False for self-attention.

It returns a tensor of the same shape (the input itself to only observe, or a
replacement), which the layer uses instead of the softmax. Controlled layers compute the
probabilities explicitly (memory O(N_query * N_key)); layers without a controller take
the fused SDPA path and pay one `is None` check. Under activation checkpointing the
controller is called again while gradients are recomputed in backward.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ldm.modules.diffusionmodules.util import checkpoint, zero_module

AttentionController = Callable[..., torch.Tensor]


class CrossAttention(nn.Module):
    """Multi-head attention of `x` over `context` (over `x` itself when context is None)."""

    def __init__(
        self,
        query_dim: int,
        context_dim: int | None = None,
        heads: int = 8,
        dim_head: int = 64,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        inner_dim = heads * dim_head
        context_dim = query_dim if context_dim is None else context_dim
        self.heads = heads
        self.dim_head = dim_head
        self.scale = dim_head**-0.5
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, query_dim), nn.Dropout(dropout))
        self.controller: AttentionController | None = None
        self.attention_name = ""

    def set_controller(self, controller: AttentionController | None, name: str) -> None:
        """Attach (or with None, detach) an attention controller; see the module docstring."""
        # object.__setattr__ bypasses nn.Module registration: a controller that happens to be
        # an nn.Module must not become a submodule (and enter the UNet's state dict).
        object.__setattr__(self, "controller", controller)
        self.attention_name = name

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        # x: (B, N, query_dim); context: (B, M, context_dim) or None for self-attention
        b = x.shape[0]
        source = x if context is None else context
        q, k, v = (
            t.view(b, -1, self.heads, self.dim_head).transpose(1, 2)  # (B, heads, N or M, dim_head)
            for t in (self.to_q(x), self.to_k(source), self.to_v(source))
        )
        if self.controller is None:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            sim = torch.matmul(q, k.transpose(-1, -2)).float() * self.scale  # (B, heads, N, M)
            probs = self.controller(
                sim.softmax(dim=-1), name=self.attention_name, is_cross=context is not None
            )
            out = torch.matmul(probs.to(v.dtype), v)
        out = out.transpose(1, 2).reshape(b, -1, self.heads * self.dim_head)  # (B, N, heads * dim_head)
        return self.to_out(out)


def set_attention_controller(model: nn.Module, controller: AttentionController | None) -> int:
    """Attach `controller` to every `CrossAttention` in `model` (None detaches); returns the count.

    Each layer is told its dotted name within `model`, which the controller receives as
    `name`. See the module docstring for the controller protocol.
    """
    count = 0
    for name, module in model.named_modules():
        if isinstance(module, CrossAttention):
            module.set_controller(controller, name)
            count += 1
    return count


class GEGLU(nn.Module):
    """Gated GELU projection (Shazeer 2020): `a * gelu(b)` with `[a, b] = proj(x)`."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)  # 2 x (..., dim_out)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    """SD's gated feed-forward: GEGLU to `mult * dim`, dropout, linear back (keys `net.0.proj`, `net.2`)."""

    def __init__(self, dim: int, dim_out: int | None = None, mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        inner_dim = dim * mult
        self.net = nn.Sequential(
            GEGLU(dim, inner_dim), nn.Dropout(dropout), nn.Linear(inner_dim, dim_out or dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Pre-norm block: self-attention, cross-attention on `context`, gated feed-forward."""

    def __init__(
        self,
        dim: int,
        n_heads: int,
        d_head: int,
        dropout: float = 0.0,
        context_dim: int | None = None,
        checkpoint: bool = False,
    ) -> None:
        super().__init__()
        self.attn1 = CrossAttention(dim, heads=n_heads, dim_head=d_head, dropout=dropout)
        self.ff = FeedForward(dim, dropout=dropout)
        self.attn2 = CrossAttention(
            dim, context_dim=context_dim, heads=n_heads, dim_head=d_head, dropout=dropout
        )
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.checkpoint = checkpoint

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return checkpoint(self._forward, (x, context), self.checkpoint)

    def _forward(self, x: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        # x: (B, N, dim); context: (B, M, context_dim) or None
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context=context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """Transformer over the pixels of a feature map, conditioned on `context`.

    GroupNorm (eps 1e-6), project to `n_heads * d_head` channels (1x1 conv as in SD 1.x,
    or a linear layer on tokens with `use_linear`, as in SD 2.x), `depth` transformer
    blocks over the H*W tokens, project back (zero-initialised) and add the input.
    """

    def __init__(
        self,
        in_channels: int,
        n_heads: int,
        d_head: int,
        depth: int = 1,
        dropout: float = 0.0,
        context_dim: int | None = None,
        use_linear: bool = False,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        inner_dim = n_heads * d_head
        self.use_linear = use_linear
        self.norm = nn.GroupNorm(num_groups=32, num_channels=in_channels, eps=1e-6)
        if use_linear:
            self.proj_in = nn.Linear(in_channels, inner_dim)
        else:
            self.proj_in = nn.Conv2d(in_channels, inner_dim, kernel_size=1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner_dim, n_heads, d_head, dropout, context_dim, checkpoint=use_checkpoint)
            for _ in range(depth)
        )
        if use_linear:
            self.proj_out = zero_module(nn.Linear(inner_dim, in_channels))
        else:
            self.proj_out = zero_module(nn.Conv2d(inner_dim, in_channels, kernel_size=1))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        # x: (B, C, H, W); context: (B, M, context_dim) or None
        b, c, h, w = x.shape
        x_in = x
        x = self.norm(x)
        if not self.use_linear:
            x = self.proj_in(x)  # (B, inner, H, W)
        # Both layout changes copy (reshape alone would return strided views): norms, matmuls and
        # residual adds downstream are markedly slower on channels-last strides, on CPU at least.
        x = x.permute(0, 2, 3, 1).reshape(b, h * w, -1).contiguous()  # (B, H*W, C or inner)
        if self.use_linear:
            x = self.proj_in(x)  # (B, H*W, inner)
        for block in self.transformer_blocks:
            x = block(x, context=context)
        if self.use_linear:
            x = self.proj_out(x)  # (B, H*W, C)
        x = x.transpose(1, 2).reshape(b, -1, h, w).contiguous()  # (B, inner or C, H, W)
        if not self.use_linear:
            x = self.proj_out(x)  # (B, C, H, W)
        return x + x_in
