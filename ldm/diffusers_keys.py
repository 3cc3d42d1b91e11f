"""The one mapping between this project's checkpoint keys and diffusers' pipeline components.

Nothing here is a hand-kept table: diffusers' own single-file converters
(`convert_ldm_unet_checkpoint`, `convert_ldm_vae_checkpoint`, `convert_ldm_clip_checkpoint`, the
ones `ldm.diffusers_export` exports with) are run on the model's own tensors, and each converted
tensor is traced back to the key it came from by its storage (the converters move tensors and
take views, e.g. the VAE's 1x1-conv attention weights become (C, C) linear weights; they never
copy). Used to read diffusers pipeline folders (`ldm.diffusers_import`) and by the LoRA adapters
(`ldm.modules.lora`) for their diffusers-layout names. Needs diffusers.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ldm.errors import CheckpointMismatchError

# our key prefix of each pipeline component
COMPONENTS = {
    "unet": "model.diffusion_model.",
    "vae": "first_stage_model.",
    "text_encoder": "cond_stage_model.transformer.",
}


def layers_per_block(unet: nn.Module) -> int:
    """ResBlocks per level of our UNet (diffusers' `layers_per_block`): input blocks before the first Downsample."""
    from ldm.modules.diffusionmodules.openaimodel import Downsample

    blocks = list(unet.input_blocks)[1:]
    for i, block in enumerate(blocks):
        if isinstance(block[0], Downsample):
            return i
    return len(blocks)


def _storage(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()


def convert(state: Mapping[str, torch.Tensor], model: nn.Module, components: tuple[str, ...] = tuple(COMPONENTS)):
    """{component: {diffusers key: tensor}} of `state` (our keys) by diffusers' converters; `model`
    gives the shapes the converters need (UNet blocks per level, VAE levels)."""
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )

    converters = {
        "unet": lambda: convert_ldm_unet_checkpoint(
            dict(state), {"layers_per_block": layers_per_block(model.model.diffusion_model)}
        ),
        "vae": lambda: convert_ldm_vae_checkpoint(
            dict(state),
            {"down_block_types": [None] * model.first_stage_model.encoder.num_resolutions,
             "up_block_types": [None] * model.first_stage_model.decoder.num_resolutions},
        ),  # fmt: skip
        "text_encoder": lambda: convert_ldm_clip_checkpoint(dict(state)),
    }
    return {component: converters[component]() for component in components}


def diffusers_names(model: nn.Module, components: tuple[str, ...] = tuple(COMPONENTS)) -> dict[str, tuple[str, str]]:
    """Our state-dict key -> (pipeline component, diffusers key) for every weight of `components`.

    Raises CheckpointMismatchError when a converter leaves one of the component's weights
    unmapped (an architecture diffusers' pipelines do not have)."""
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("model_ema.")}
    owner = {_storage(v): k for k, v in state.items() if v.numel()}
    names: dict[str, tuple[str, str]] = {}
    for component, tensors in convert(state, model, components).items():
        for key, tensor in tensors.items():
            names[owner[_storage(tensor)]] = (component, key)
    for component in components:
        unmapped = [k for k in state if k.startswith(COMPONENTS[component]) and k not in names]
        if unmapped:
            raise CheckpointMismatchError(f"diffusers' {component} converter does not map {unmapped[0]}")
    return names
