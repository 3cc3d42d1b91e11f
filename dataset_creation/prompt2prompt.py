"""Prompt-to-Prompt (Hertz et al. 2022) image pairs from a text-to-image LatentDiffusion.

A pair is the source caption and the edited caption sampled in one batch from the same
initial noise (and, for ancestral samplers, the same noise at every step), with the edited
image's attention maps replaced by the source image's during the first `p` fraction of the
steps: the layout is fixed early, the edit shows in the details.

What is shared, at step i of n (0-based) while i / n < p (so p = 0 shares nothing, p = 1
every step; InstructPix2Pix draws p ~ U(0.1, 0.9) per pair):
- self-attention maps (what the original InstructPix2Pix `generate_img_dataset.py` shares,
  in every layer; it left cross-attention alone);
- cross-attention maps, with word alignment: the token ids of the two captions are aligned
  as a diff (difflib's matching blocks), each edited token found in the source caption takes
  the source token's map column, and tokens only in the edited caption keep their own (the
  "refinement" edit of Prompt-to-Prompt, which is the "replace" edit when the captions
  differ only by swapped words: then the swapped words keep their own columns). Padding
  tokens align like any other token.
`Sharing` chooses either or both kinds and, optionally, the layers (by module name).

Batch layout the controller relies on: `CFGDenoiser` runs [conditional; unconditional]
groups, and the latents of each group are [b source samples; b edited samples]. In the
unconditional group both captions are "", so its cross-attention maps are shared one to one.

The controller learns the step from the noise level: `StepTracker` wraps the guided
denoiser and, on every model evaluation at sigma, sets `controller.step` to the last
schedule index i with sigmas[i] >= sigma (to a relative 1e-4, against rounding). Every
evaluation of single-evaluation samplers (Euler, Euler ancestral, LMS, DPM++ 2M) is at
sigmas[i]; the second evaluation of Heun's step i and the midpoint of DPM++ 2S ancestral's
(at eta 1) are at sigmas[i + 1] and count as step i + 1.

Cost: layers with a controller compute the attention probabilities explicitly (memory
O(N_query * N_key) per head and sample, about 2 GB per sample for SD's 64 x 64 self-attention
at 512 px in float32), for every step of the sampling run.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ldm.models.diffusion.sampling import CFGDenoiser, sample
from ldm.modules.attention import set_attention_controller

NoiseSampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Sharing:
    """Which attention maps Prompt-to-Prompt shares: kinds, and layers by name (None = every layer)."""

    self_attention: bool = True
    cross_attention: bool = True
    layers: frozenset[str] | None = None

    def applies(self, name: str, is_cross: bool) -> bool:
        kind = self.cross_attention if is_cross else self.self_attention
        return kind and (self.layers is None or name in self.layers)


def align_tokens(source_ids: Sequence[int], edited_ids: Sequence[int]) -> torch.Tensor:
    """For each edited token, the position of the same token in the source aligned as a diff, else -1: (N_edited,)."""
    mapping = torch.full((len(edited_ids),), -1, dtype=torch.long)
    matcher = difflib.SequenceMatcher(None, list(source_ids), list(edited_ids), autojunk=False)
    for source_start, edited_start, size in matcher.get_matching_blocks():
        mapping[edited_start : edited_start + size] = torch.arange(source_start, source_start + size)
    return mapping


class AttentionSharing:
    """Attention controller (see `ldm.modules.attention`): edited maps := source maps while a pair shares.

    `p` (b,): the fraction of the `n_steps` steps during which each of the b pairs shares.
    `token_maps` (groups, N_key): per guidance group, the source token position of each edited
    token or -1 (`align_tokens`). Both live on the device of the attention maps, which arrive
    as (groups * 2 * b, heads, N_query, N_key), each group [b source; b edited]. `step` is set
    by `StepTracker`.
    """

    def __init__(self, p: torch.Tensor, n_steps: int, token_maps: torch.Tensor, sharing: Sharing) -> None:
        self.p = p
        self.n_steps = n_steps
        self.token_maps = token_maps
        self.sharing = sharing
        self.max_p = float(p.max())
        self.step = 0

    def __call__(self, probs: torch.Tensor, *, name: str, is_cross: bool) -> torch.Tensor:
        fraction = self.step / self.n_steps
        if fraction >= self.max_p or not self.sharing.applies(name, is_cross):
            return probs
        groups = self.token_maps.shape[0]
        pairs = probs.view(groups, 2, -1, *probs.shape[1:])  # (groups, 2, b, heads, N_q, N_k)
        source, edited = pairs[:, 0], pairs[:, 1]
        shared = self._aligned_source(source, edited) if is_cross else source
        active = (self.p > fraction).view(1, -1, 1, 1, 1)  # (1, b, 1, 1, 1)
        return torch.stack([source, torch.where(active, shared, edited)], dim=1).view_as(probs)

    def _aligned_source(self, source: torch.Tensor, edited: torch.Tensor) -> torch.Tensor:
        # source/edited (groups, b, heads, N_q, N_k): column k of the result is the source's
        # column token_maps[g, k], or the edited map's own where the token has no match
        maps = self.token_maps.view(source.shape[0], 1, 1, 1, -1)  # (groups, 1, 1, 1, N_k)
        gathered = torch.gather(source, -1, maps.clamp(min=0).expand_as(source))
        return torch.where(maps >= 0, gathered, edited)


class StepTracker(nn.Module):
    """Wraps a k-diffusion denoiser; before each evaluation sets `controller.step` from sigma (see module doc)."""

    def __init__(self, inner: nn.Module, controller: AttentionSharing, sigmas: torch.Tensor) -> None:
        super().__init__()
        self.inner = inner
        self.controller = controller
        self.levels = sigmas[:-1]  # (n,) descending: the noise level at the start of each step

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        self.controller.step = max(int((self.levels >= sigma.max() * (1 - 1e-4)).sum()) - 1, 0)
        return self.inner(x, sigma, **kwargs)


@contextmanager
def attention_controller(unet: nn.Module, controller: AttentionSharing) -> Iterator[None]:
    """Attach `controller` to every attention layer of `unet` for the body, then detach it."""
    set_attention_controller(unet, controller)
    try:
        yield
    finally:
        set_attention_controller(unet, None)


def sample_pairs(
    model: nn.Module,
    model_denoiser: nn.Module,
    captions: tuple[str, str],
    noise: torch.Tensor,
    p: torch.Tensor,
    cfg_scale: torch.Tensor,
    sigmas: torch.Tensor,
    sampler: str = "euler_a",
    noise_sampler: NoiseSampler | None = None,
    sharing: Sharing = Sharing(),
) -> torch.Tensor:
    """Latents (2, b, C, h, w) of b pairs: [source caption images; edited caption images].

    `noise` (b, C, h, w) is each pair's initial noise (unit variance), `p` and `cfg_scale` (b,)
    its sharing fraction and guidance scale; `noise_sampler(sigma, sigma_next)` gives each
    pair's ancestral noise (b, C, h, w) (default: torch's global RNG). `model_denoiser` is
    `ldm.models.diffusion.sampling.denoiser(model)` and `sigmas` its schedule.
    """
    b = noise.shape[0]
    text = model.get_learned_conditioning([*captions, ""])  # (3, T, D): source, edited, empty
    cond = text[:2].repeat_interleave(b, dim=0)  # (2b, T, D): [source x b; edited x b]
    uncond = text[2:].expand(2 * b, -1, -1)
    token_ids = model.cond_stage_model.tokenize(list(captions))["input_ids"]  # (2, T)
    identity = torch.arange(token_ids.shape[1], device=token_ids.device)
    token_maps = torch.stack([align_tokens(token_ids[0].tolist(), token_ids[1].tolist()).to(identity), identity])
    controller = AttentionSharing(p.to(noise.device), len(sigmas) - 1, token_maps, sharing)
    guided = StepTracker(CFGDenoiser(model_denoiser), controller, sigmas)
    draw = noise_sampler or (lambda sigma, sigma_next: torch.randn_like(noise))
    pair_noise = lambda sigma, sigma_next: draw(sigma, sigma_next).repeat(2, 1, 1, 1)  # same noise for both
    extra_args = {"cond": cond, "uncond": uncond, "cfg_scale": cfg_scale.repeat(2)}
    with attention_controller(model.model.diffusion_model, controller):
        z = sample(guided, noise.repeat(2, 1, 1, 1) * sigmas[0], sigmas, sampler, extra_args, noise_sampler=pair_noise)
    return z.view(2, b, *z.shape[1:])

