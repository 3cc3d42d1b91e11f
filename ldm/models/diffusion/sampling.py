"""Sampling through k-diffusion: wrap the model, never change it (design section 8.4).

`denoiser(model)` turns a LatentDiffusion into a k-diffusion denoiser D(x, sigma) using the
model's own `alphas_cumprod` (eps or v parameterization). `CFGDenoiser` adds the
InstructPix2Pix three-way classifier-free guidance in one batch of three:
[text + image, no text + image, no text + no image], combined as
`uncond + s_T * (full - img_only) + s_I * (img_only - uncond)`, optionally rescaled towards the standard
deviation of `full` (`cfg_rescale`, below); given `cfg_scale` instead it is
the two-way guidance of a text-to-image model, `uncond + s * (cond - uncond)` from one batch
[text; no text].
Samplers are chosen by name and called with k-diffusion's signature
`sample_*(model, x, sigmas, extra_args, callback, disable)`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from k_diffusion import external
from k_diffusion import sampling as ks
from torch import nn

from ldm.edit_settings import ANCESTRAL
from ldm.edit_settings import SAMPLERS as SAMPLER_FUNCTIONS
from ldm.models.diffusion.ddpm import Cond

# name -> k-diffusion sampler, `sample_*(model, x, sigmas, extra_args, callback, disable)`
SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {name: getattr(ks, fn) for name, fn in SAMPLER_FUNCTIONS.items()}


def denoiser(model: nn.Module) -> nn.Module:
    """k-diffusion wrapper calling `model.apply_model(x, t, cond)` with t from the model's schedule."""
    if getattr(model, "parameterization", "eps") == "v":
        return external.CompVisVDenoiser(model)
    return external.CompVisDenoiser(model)


class CFGDenoiser(nn.Module):
    """Classifier-free guidance around `inner`, a k-diffusion denoiser: three-way for an editing
    (hybrid) model given `text_cfg_scale` and `image_cfg_scale`, two-way for a text-to-image
    model given `cfg_scale`.

    `cfg_rescale` (phi, three-way only): Lin et al. (2024), "Common Diffusion Noise Schedules and Sample
    Steps are Flawed", section 3.4. Strong guidance inflates the denoised latent's spread (over-saturated,
    over-dark colors); phi = 1 rescales the guided estimate to the per-sample standard deviation of the
    fully conditioned one, phi = 0 (the default) leaves it unchanged, and values between mix the two. It acts
    on the denoised estimate x0, as in the paper, whatever the model's parameterization (diffusers'
    `rescale_noise_cfg` computes the same on whatever its UNet predicts).

    Two-way: the model sees one batch of 2B, the B samples with their text, then the same B
    samples with the empty text, so attention controllers (Prompt-to-Prompt) find the
    conditional half first and each half in the order of `z`. `cfg_scale` is one number or
    one per sample.
    """

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(
        self,
        z: torch.Tensor,
        sigma: torch.Tensor,
        cond: Cond | torch.Tensor,
        uncond: Cond | torch.Tensor,
        text_cfg_scale: float = 1.0,
        image_cfg_scale: float = 1.0,
        cfg_scale: float | torch.Tensor | None = None,
        cfg_rescale: float = 0.0,
    ) -> torch.Tensor:
        if cfg_scale is not None:
            return self.text_guided(z, sigma, cond, uncond, cfg_scale)
        # z (B, C, h, w), sigma (B,); cond/uncond hold c_crossattn [(B, T, D)] and c_concat [(B, C', h, w)]
        text, no_text = cond["c_crossattn"][0], uncond["c_crossattn"][0]
        image, no_image = cond["c_concat"][0], uncond["c_concat"][0]
        batched = {
            "c_crossattn": [torch.cat([text, no_text, no_text])],
            "c_concat": [torch.cat([image, image, no_image])],
        }
        full, img_only, uncond_out = self.inner(torch.cat([z] * 3), torch.cat([sigma] * 3), cond=batched).chunk(3)
        guided = uncond_out + text_cfg_scale * (full - img_only) + image_cfg_scale * (img_only - uncond_out)
        if not cfg_rescale:
            return guided
        dims = list(range(1, guided.ndim))
        factor = full.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True)  # (B, 1, 1, 1)
        return guided * (cfg_rescale * factor + (1 - cfg_rescale))

    def text_guided(
        self,
        z: torch.Tensor,
        sigma: torch.Tensor,
        cond: torch.Tensor,
        uncond: torch.Tensor,
        cfg_scale: float | torch.Tensor,
    ) -> torch.Tensor:
        """Two-way guidance `uncond + s * (cond - uncond)`; z (B, C, h, w), sigma (B,), cond/uncond (B, T, D)."""
        batched = {"c_crossattn": [torch.cat([cond, uncond])]}
        with_text, without_text = self.inner(torch.cat([z, z]), torch.cat([sigma, sigma]), cond=batched).chunk(2)
        scale = torch.as_tensor(cfg_scale, dtype=with_text.dtype, device=z.device)
        scale = scale.view(-1, *[1] * (z.ndim - 1)) if scale.ndim else scale  # (B, 1, 1, 1) or ()
        return without_text + scale * (with_text - without_text)


def get_sigmas(model_denoiser: nn.Module, steps: int, karras: bool = False) -> torch.Tensor:
    """Noise levels (steps + 1,), descending to 0: evenly spaced in t, or Karras et al. (2022) eq. 5 with rho 7."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if karras:
        sigma_min, sigma_max = float(model_denoiser.sigma_min), float(model_denoiser.sigma_max)
        return ks.get_sigmas_karras(steps, sigma_min, sigma_max, device=model_denoiser.sigmas.device)
    return model_denoiser.get_sigmas(steps)


def sample(
    model_fn: nn.Module,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    sampler: str = "euler_a",
    extra_args: dict[str, Any] | None = None,
    generator: torch.Generator | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    disable_progress: bool = True,
    noise_sampler: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Run sampler `sampler` from x = noise * sigmas[0]; ancestral noise comes from `generator`.

    The noise is drawn on the generator's device and moved to x's, so a CPU generator gives
    the same noise whatever device samples. A `noise_sampler(sigma, sigma_next)` returning
    noise of x's shape replaces that (for samples that each draw from their own generator).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    kwargs: dict[str, Any] = {"extra_args": extra_args or {}, "callback": callback, "disable": disable_progress}
    if sampler in ANCESTRAL and noise_sampler is not None:
        kwargs["noise_sampler"] = noise_sampler
    elif sampler in ANCESTRAL:
        noise_device = x.device if generator is None else generator.device
        kwargs["noise_sampler"] = lambda sigma, sigma_next: torch.randn(
            x.shape, generator=generator, device=noise_device, dtype=x.dtype
        ).to(x.device)
    return SAMPLERS[sampler](model_fn, x, sigmas, **kwargs)


def sample_edit(
    model_denoiser: nn.Module,
    cond: Cond,
    uncond: Cond,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    sampler: str,
    text_cfg_scale: float,
    image_cfg_scale: float,
    generator: torch.Generator | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    cfg_rescale: float = 0.0,
) -> torch.Tensor:
    """The editing recipe (edit_cli, the app, training-time samples, benchmarks): x_T = unit `noise`
    (B, C, h, w) x sigmas[0], then `sampler` down `sigmas` through three-way guidance (rescaled by
    `cfg_rescale`, see CFGDenoiser)."""
    extra_args = {
        "cond": cond,
        "uncond": uncond,
        "text_cfg_scale": text_cfg_scale,
        "image_cfg_scale": image_cfg_scale,
        "cfg_rescale": cfg_rescale,
    }
    guided = CFGDenoiser(model_denoiser)
    return sample(guided, noise * sigmas[0], sigmas, sampler, extra_args, generator, callback)
