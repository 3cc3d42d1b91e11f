"""The instruction-editing LatentDiffusion (InstructPix2Pix).

Batches are `{"edited": (B, 3, H, W), "edit": {"c_concat": (B, 3, H, W), "c_crossattn": [str]}}`
with images in [-1, 1]. The target latent is a posterior sample times `scale_factor`; the
input-image latent is the posterior mode, NOT scaled (the released checkpoints were trained
so), concatenated to the noisy latent: the UNet sees 8 channels. The instruction is the
cross-attention context.

Conditioning dropout (training only) teaches the unconditional branches that three-way
classifier-free guidance needs. With u ~ U(0, 1) per sample:
text only is dropped for u < p_text, both for p_text <= u < p_text + p_both, and the image
only for the next p_image; the original rates are 5% each. Dropped text is the embedding
of the empty prompt, a dropped image is zeros in latent space.

`diffuse_residual` (off in SD/InstructPix2Pix checkpoints): the diffusion runs on the target latent
minus the input image's latent (both times `scale_factor`), as SRDiff (Li et al. 2022) diffuses the
residual of an upsampled image. The residual is zero wherever the edit keeps the input (its lines,
the background, the colors an instruction does not name), so training spends its steps on the change
rather than on reproducing the input. Samplers see the residual; `edit_latent` adds the input back
before decoding. `scale_factor` stays the target's: the residual then has about 0.45 of its std on
OpenMoji, and scaling the residual to unit variance instead was measured worse (docs/ablations.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ldm.data.latent_cache import CACHE_KEY
from ldm.models.diffusion import ddpm
from ldm.models.diffusion.sampling import denoiser, get_sigmas, sample_edit
from ldm.util import ConfigError, config_path

Cond = ddpm.Cond


class LatentDiffusion(ddpm.LatentDiffusion):
    """Editing model; takes every parameter of `ddpm.LatentDiffusion` plus the dropout rates."""

    def __init__(
        self,
        *args: Any,
        first_stage_key: str = "edited",
        cond_stage_key: str = "edit",
        conditioning_key: str = "hybrid",
        cond_drop_text: float = 0.05,
        cond_drop_both: float = 0.05,
        cond_drop_image: float = 0.05,
        diffuse_residual: bool = False,
        **kwargs: Any,
    ) -> None:
        if conditioning_key != "hybrid":
            raise ConfigError(
                f"{config_path('conditioning_key')}: the editing model concatenates the input image's latent "
                f"and attends to the instruction, so it must be hybrid, not {conditioning_key!r}"
            )
        if min(cond_drop_text, cond_drop_both, cond_drop_image) < 0 or (
            cond_drop_text + cond_drop_both + cond_drop_image > 1
        ):
            raise ConfigError(f"{config_path('cond_drop_text')}: cond_drop_* rates must be >= 0 and sum to at most 1")
        self.diffuse_residual = diffuse_residual  # before the base loads ckpt_path and checks model_settings()
        super().__init__(
            *args,
            first_stage_key=first_stage_key,
            cond_stage_key=cond_stage_key,
            conditioning_key=conditioning_key,
            **kwargs,
        )
        self.cond_drop = (cond_drop_text, cond_drop_both, cond_drop_image)

    def model_settings(self) -> dict[str, Any]:
        return {**super().model_settings(), "diffuse_residual": self.diffuse_residual}

    def dropout_masks(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(drop_text (B,), drop_image (B,)) boolean masks from one uniform draw per sample."""
        p_text, p_both, p_image = self.cond_drop
        u = torch.rand(batch_size, device=self.device)
        drop_text = u < p_text + p_both
        drop_image = (u >= p_text) & (u < p_text + p_both + p_image)
        return drop_text, drop_image

    def encode_edit_conditioning(self, images: torch.Tensor, texts: list[str]) -> Cond:
        """Input image (B, 3, H, W) and instructions -> {"c_concat": [mode latent], "c_crossattn": [text]}."""
        image_latent = self.encode_first_stage(images.to(self.device).float()).mode()
        return {"c_concat": [image_latent], "c_crossattn": [self.get_learned_conditioning(texts)]}

    def unconditional(self, cond: Cond) -> Cond:
        """The "no text, no image" conditioning matching `cond`'s batch size."""
        image = cond["c_concat"][0]
        text = self.cond_stage_model.empty_embedding().to(image.dtype)
        return {"c_concat": [torch.zeros_like(image)], "c_crossattn": [text.expand(image.shape[0], -1, -1)]}

    def edit_conditioning(self, batch: Mapping[str, Any], n: int | None = None) -> Cond:
        """Conditioning of the first n items: cached latents and embeddings, else encoded from the batch."""
        cached = batch.get(CACHE_KEY)
        if cached is None:
            edit = batch[self.cond_stage_key]
            return self.encode_edit_conditioning(edit["c_concat"][:n], list(edit["c_crossattn"])[:n])
        image_latent = cached["c_concat"][:n].to(self.device).float()
        return {"c_concat": [image_latent], "c_crossattn": [self.text_conditioning(batch, n)]}

    def edit_latent(self, z: torch.Tensor, cond: Cond) -> torch.Tensor:
        """A sampled diffusion-space latent (B, C, h, w) -> the edited image's latent, for decode_first_stage."""
        if not self.diffuse_residual:
            return z
        return z + self.scale_factor * cond["c_concat"][0]

    def get_input(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, Cond]:
        z = self.get_first_stage_encoding(self.target_posterior(batch))
        cond = self.edit_conditioning(batch)
        if self.diffuse_residual:  # before dropout: the residual is of the real input
            z = z - self.scale_factor * cond["c_concat"][0]
        if self.training:
            drop_text, drop_image = self.dropout_masks(z.shape[0])
            empty = self.cond_stage_model.empty_embedding().to(cond["c_crossattn"][0].dtype)
            cond["c_crossattn"] = [torch.where(drop_text[:, None, None], empty, cond["c_crossattn"][0])]
            cond["c_concat"] = [cond["c_concat"][0] * (~drop_image).to(z.dtype)[:, None, None, None]]
        return z, cond

    @torch.no_grad()
    def log_images(
        self,
        batch: Mapping[str, Any],
        n: int = 4,
        steps: int = 20,
        text_cfg_scale: float = 7.5,
        image_cfg_scale: float = 1.5,
        seed: int = 0,
    ) -> dict[str, torch.Tensor]:
        """Input, target and an EMA sample (Euler, deterministic) for the first n items, each (n, 3, H, W)."""
        cond = self.edit_conditioning(batch, n)
        cached = batch.get(CACHE_KEY)
        if cached is None:
            inputs = batch[self.cond_stage_key]["c_concat"][:n].to(self.device).float()
            target = batch[self.first_stage_key][:n].to(self.device).float()
        else:  # the cache holds latents: show their decodings (input mode, target mean)
            inputs = self.first_stage_model.decode(cond["c_concat"][0]).clamp(-1, 1)
            target = self.first_stage_model.decode(cached["target_mean"][:n].to(self.device).float()).clamp(-1, 1)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        latent = cond["c_concat"][0]
        with self.ema_scope():
            wrapped = denoiser(self)
            sigmas = get_sigmas(wrapped, steps)
            noise = torch.randn(latent.shape, generator=generator, device=self.device, dtype=latent.dtype)
            uncond = self.unconditional(cond)
            z = sample_edit(wrapped, cond, uncond, noise, sigmas, "euler", text_cfg_scale, image_cfg_scale)
        return {
            "input": inputs,
            "target": target,
            "sample": self.decode_first_stage(self.edit_latent(z, cond)).clamp(-1, 1),
        }
