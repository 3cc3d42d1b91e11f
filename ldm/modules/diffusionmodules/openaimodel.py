"""The Stable Diffusion 1.x UNet (`model.diffusion_model.*` in checkpoints).

Layout and parameter names are those of the original `openaimodel.py` (OpenAI's
guided-diffusion UNet as adapted by CompVis), so SD 1.x and InstructPix2Pix state dicts
load without renaming:

    time_embed      Linear -> SiLU -> Linear on the sinusoidal timestep embedding
    input_blocks    [conv_in] + per level: num_res_blocks x (ResBlock [+ SpatialTransformer]),
                    then a Downsample between levels
    middle_block    ResBlock, SpatialTransformer, ResBlock
    output_blocks   per level, reversed: (num_res_blocks + 1) x (ResBlock on the concatenated
                    skip [+ SpatialTransformer]), then an Upsample between levels
    out             GroupNorm -> SiLU -> conv to out_channels

Only the spatial-transformer (text-conditioned) variant is implemented; options of the
original that select the other variants raise an error instead of being ignored.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ldm.errors import ConfigError
from ldm.modules.attention import SpatialTransformer
from ldm.modules.diffusionmodules.util import (
    avg_pool_nd,
    checkpoint,
    conv_nd,
    linear,
    normalization,
    timestep_embedding,
    zero_module,
)
from ldm.util import config_path


class TimestepBlock(nn.Module):
    """A module whose forward takes the timestep embedding as a second argument."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class TimestepEmbedSequential(nn.Sequential, TimestepBlock):
    """Sequential that hands `emb` to TimestepBlocks and `context` to SpatialTransformers."""

    def forward(
        self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, TimestepBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling of every spatial axis, then optionally a 3x3 conv (key `conv`)."""

    def __init__(self, channels: int, use_conv: bool, dims: int = 2, out_channels: int | None = None) -> None:
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        if use_conv:
            self.conv = conv_nd(dims, self.channels, self.out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")  # (B, C, H, W) -> (B, C, 2H, 2W)
        return self.conv(x) if self.use_conv else x  # (B, C_out, 2H, 2W)


class Downsample(nn.Module):
    """2x downsampling of every spatial axis: a stride-2 3x3 conv (key `op`), or average pooling."""

    def __init__(self, channels: int, use_conv: bool, dims: int = 2, out_channels: int | None = None) -> None:
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        if use_conv:
            self.op = conv_nd(dims, self.channels, self.out_channels, 3, stride=2, padding=1)
        else:
            if self.channels != self.out_channels:
                raise ValueError("Downsample without a conv cannot change the number of channels")
            self.op = avg_pool_nd(dims, kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)  # (B, C, H, W) -> (B, C_out, H/2, W/2)


class ResBlock(TimestepBlock):
    """Residual block conditioned on the timestep embedding.

    in_layers (GroupNorm, SiLU, conv) -> add the projected embedding (or, with
    `use_scale_shift_norm`, modulate the second GroupNorm as `norm(h) * (1 + scale) + shift`)
    -> out_layers (GroupNorm, SiLU, dropout, zero-initialised conv) -> add the skip
    connection (identity, or a 1x1 conv when the channel count changes).
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int | None = None,
        use_scale_shift_norm: bool = False,
        dims: int = 2,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.use_checkpoint = use_checkpoint
        self.in_layers = nn.Sequential(
            normalization(channels),
            nn.SiLU(),
            conv_nd(dims, channels, self.out_channels, 3, padding=1),
        )
        self.emb_layers = nn.Sequential(
            nn.SiLU(),
            linear(emb_channels, 2 * self.out_channels if use_scale_shift_norm else self.out_channels),
        )
        self.out_layers = nn.Sequential(
            normalization(self.out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            zero_module(conv_nd(dims, self.out_channels, self.out_channels, 3, padding=1)),
        )
        if self.out_channels == channels:
            self.skip_connection = nn.Identity()
        else:
            self.skip_connection = conv_nd(dims, channels, self.out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return checkpoint(self._forward, (x, emb), self.use_checkpoint)

    def _forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        # x: (B, C, H, W); emb: (B, emb_channels)
        h = self.in_layers(x)  # (B, C_out, H, W)
        emb_out = self.emb_layers(emb).to(h.dtype)
        emb_out = emb_out.view(emb_out.shape + (1,) * (h.ndim - 2))  # (B, C_out or 2 C_out, 1, 1)
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            for layer in self.out_layers[1:]:
                h = layer(h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class UNetModel(nn.Module):
    """The SD 1.x denoiser: `forward(x, timesteps, context) -> eps` (or v), shaped like `x`.

    The constructor takes the original config names. Attention heads follow the original
    rules: with `num_head_channels == -1` every transformer has `num_heads` heads of
    `ch // num_heads` channels, otherwise `ch // num_head_channels` heads of
    `num_head_channels`; `legacy=True` then resets the head width to `ch // heads` (the
    same unless `num_head_channels` does not divide `ch`). `attention_resolutions` lists
    downsampling factors (1, 2, 4, ...) at which a SpatialTransformer follows each ResBlock.
    `in_channels` is free: the editing model uses 8 (noisy latent + input-image latent).
    `use_checkpoint` recomputes ResBlock and transformer-block activations in backward
    (non-reentrant `torch.utils.checkpoint`). `use_linear_in_transformer` (an SD 2.x option)
    makes the transformers' proj_in/proj_out linear layers. `image_size` is only recorded:
    the network is fully convolutional.
    """

    def __init__(
        self,
        image_size: int,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: int,
        attention_resolutions: Sequence[int],
        dropout: float = 0.0,
        channel_mult: Sequence[int] = (1, 2, 4, 8),
        conv_resample: bool = True,
        dims: int = 2,
        num_classes: int | None = None,
        use_checkpoint: bool = False,
        use_fp16: bool = False,
        num_heads: int = -1,
        num_head_channels: int = -1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = False,
        use_new_attention_order: bool = False,
        use_spatial_transformer: bool = False,
        transformer_depth: int = 1,
        context_dim: int | None = None,
        n_embed: int | None = None,
        legacy: bool = True,
        use_linear_in_transformer: bool = False,
    ) -> None:
        super().__init__()
        if not use_spatial_transformer:
            raise NotImplementedError(
                "only the spatial-transformer UNet (use_spatial_transformer: true, SD 1.x) is implemented"
            )
        if context_dim is None:
            raise ValueError("use_spatial_transformer needs context_dim (the text embedding width)")
        if dims != 2:
            raise NotImplementedError(f"dims={dims}: SpatialTransformer works on 2-D feature maps only")
        if num_classes is not None:
            raise NotImplementedError("class-conditional UNet (num_classes) is not implemented")
        if n_embed is not None:
            raise NotImplementedError("codebook prediction (n_embed) is not implemented")
        if use_fp16:
            raise NotImplementedError(
                "use_fp16: choose precision in the trainer (autocast / model.to(dtype))"
            )
        if resblock_updown:
            raise NotImplementedError("resblock_updown is not implemented; SD 1.x uses Downsample/Upsample")
        if use_new_attention_order or num_heads_upsample != -1:
            raise ValueError(
                "use_new_attention_order and num_heads_upsample only configure the legacy AttentionBlock, "
                "which the spatial-transformer UNet does not use"
            )
        if num_heads == -1 and num_head_channels == -1:
            raise ValueError("set num_heads or num_head_channels")
        widths = [model_channels * mult for mult in (1, *channel_mult)]
        if any(width % 32 for width in widths):
            raise ConfigError(
                f"{config_path('model_channels')}: {model_channels} x channel_mult {list(channel_mult)} gives widths "
                f"{widths}; each must be a multiple of 32 (the GroupNorm groups), e.g. model_channels 32 or 64"
            )

        self.image_size = image_size
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
        time_embed_dim = model_channels * 4

        def heads_and_width(ch: int) -> tuple[int, int]:
            if num_head_channels == -1:
                heads, dim_head = num_heads, ch // num_heads
            else:
                heads, dim_head = ch // num_head_channels, num_head_channels
            if legacy:
                dim_head = ch // heads
            return heads, dim_head

        def res_block(ch: int, out_ch: int) -> ResBlock:
            return ResBlock(
                ch,
                time_embed_dim,
                dropout,
                out_channels=out_ch,
                use_scale_shift_norm=use_scale_shift_norm,
                dims=dims,
                use_checkpoint=use_checkpoint,
            )

        def transformer(ch: int) -> SpatialTransformer:
            heads, dim_head = heads_and_width(ch)
            return SpatialTransformer(
                ch,
                heads,
                dim_head,
                depth=transformer_depth,
                context_dim=context_dim,
                use_linear=use_linear_in_transformer,
                use_checkpoint=use_checkpoint,
            )

        self.time_embed = nn.Sequential(
            linear(model_channels, time_embed_dim),
            nn.SiLU(),
            linear(time_embed_dim, time_embed_dim),
        )

        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(conv_nd(dims, in_channels, model_channels, 3, padding=1))]
        )
        skip_channels = [model_channels]
        ch = model_channels
        ds = 1  # current downsampling factor
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res_block(ch, model_channels * mult)]
                ch = model_channels * mult
                if ds in attention_resolutions:
                    layers.append(transformer(ch))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch, conv_resample, dims=dims)))
                skip_channels.append(ch)
                ds *= 2

        self.middle_block = TimestepEmbedSequential(res_block(ch, ch), transformer(ch), res_block(ch, ch))

        self.output_blocks = nn.ModuleList([])
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                layers = [res_block(ch + skip_channels.pop(), model_channels * mult)]
                ch = model_channels * mult
                if ds in attention_resolutions:
                    layers.append(transformer(ch))
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch, conv_resample, dims=dims))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(
            normalization(ch),
            nn.SiLU(),
            zero_module(conv_nd(dims, model_channels, out_channels, 3, padding=1)),
        )

    def forward(
        self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        # x: (B, in_channels, H, W); timesteps: (B,); context: (B, M, context_dim)
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))  # (B, 4 * model_channels)
        skips = []
        h = x
        for module in self.input_blocks:
            h = module(h, emb, context)
            skips.append(h)
        h = self.middle_block(h, emb, context)
        for module in self.output_blocks:
            h = module(torch.cat([h, skips.pop()], dim=1), emb, context)
        return self.out(h)  # (B, out_channels, H, W)
