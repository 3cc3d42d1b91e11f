"""Our editing LatentDiffusion as a diffusers `StableDiffusionInstructPix2PixPipeline` on the same tensors.

The reference for parity tests (tests/test_edit_cli.py, tests/test_loss_vs_diffusers.py) and
the benchmarks (bench/edit_vs_diffusers.py, bench/train_step.py); needs diffusers (the `test`
extra). The model's state dict is an SD checkpoint already; diffusers'
own single-file helpers derive the UNet and VAE configs from our YAML `model` section and
convert the keys. UNet and VAE are built on the meta device and assigned our tensors (no
copy, so both pipelines share memory); the CLIP text model is built normally (its
non-persistent position ids must be real) and loaded, and the tokenizer is our tokenizer object. A
Hugging Face text encoder (the OpenMoji models' MiniLM) goes in as the transformers model it is (a
BertModel), with the two settings that make the pipelines encode prompts as we do.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    StableDiffusionInstructPix2PixPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    create_unet_diffusers_config_from_ldm,
    create_vae_diffusers_config_from_ldm,
)
from transformers import CLIPTextModel, PreTrainedModel, PreTrainedTokenizerBase

from ldm.models.diffusion.ddpm_edit import LatentDiffusion
from ldm.modules.encoders.modules import FrozenCLIPEmbedder, FrozenHFTextEmbedder


def _load_exactly(module: torch.nn.Module, state: dict[str, torch.Tensor], assign: bool) -> None:
    module.load_state_dict(state, strict=True, assign=assign)  # strict: raises on any missing or extra key


def _clip_text_model(
    encoder: FrozenCLIPEmbedder, checkpoint: dict[str, torch.Tensor]
) -> tuple[CLIPTextModel, PreTrainedTokenizerBase]:
    """transformers' CLIPTextModel with the checkpoint's text tower, and our tokenizer."""
    text_encoder = CLIPTextModel(encoder.transformer.config)
    text_state = convert_ldm_clip_checkpoint(checkpoint)  # "text_model.*" keys
    if not hasattr(text_encoder, "text_model"):  # transformers >= 5 flattened CLIPTextModel
        text_state = {k.removeprefix("text_model."): v for k, v in text_state.items()}
    result = text_encoder.load_state_dict(text_state, strict=False)
    assert not result.unexpected_keys and set(result.missing_keys) <= {"text_model.embeddings.position_ids"}
    return text_encoder, encoder.tokenizer


def _hf_text_model(encoder: FrozenHFTextEmbedder) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The encoder's own transformers model (MiniLM: a BertModel), copied, and a tokenizer copy, set up so that
    the diffusers pipelines encode a prompt as `FrozenHFTextEmbedder.encode` does: exactly `max_length` tokens
    (`model_max_length`, which the pipelines pad and truncate to) and the attention mask passed to the model
    (`config.use_attention_mask`, which the pipelines read)."""
    text_encoder = copy.deepcopy(encoder.transformer)
    text_encoder.config.use_attention_mask = True
    tokenizer = copy.deepcopy(encoder.tokenizer)
    tokenizer.model_max_length = encoder.max_length
    return text_encoder, tokenizer


def to_diffusers_pipeline(
    model: LatentDiffusion, model_config: dict[str, Any], scheduler: Any
) -> StableDiffusionInstructPix2PixPipeline | StableDiffusionPipeline:
    """`model` (built from `model_config`, the YAML `model` section) as a diffusers pipeline with `scheduler`:
    StableDiffusionInstructPix2PixPipeline for an editing (hybrid) model, StableDiffusionPipeline for text-to-image.
    The text encoder is CLIP (FrozenCLIPEmbedder) or a Hugging Face model (FrozenHFTextEmbedder: MiniLM)."""
    encoder = model.cond_stage_model
    if not isinstance(encoder, (FrozenCLIPEmbedder, FrozenHFTextEmbedder)):
        raise ValueError(
            f"the text encoder is {type(encoder).__name__}: only CLIP (FrozenCLIPEmbedder) and Hugging Face "
            "encoders (FrozenHFTextEmbedder) can go into a diffusers pipeline"
        )
    if getattr(model, "diffuse_residual", False):
        raise ValueError(
            "diffuse_residual: the model samples the change to the input's latent, which diffusers' "
            "InstructPix2Pix pipeline does not add back; only models trained without it can be exported"
        )
    ddconfig = model_config["params"]["first_stage_config"]["params"]["ddconfig"]
    if ddconfig["attn_resolutions"]:
        raise ValueError("diffusers' VAE converter maps mid-block attention only; attn_resolutions must be []")
    original_config = {"model": model_config}
    checkpoint = {k: v for k, v in model.state_dict().items() if not k.startswith("model_ema.")}

    unet_config = create_unet_diffusers_config_from_ldm(original_config, checkpoint)
    unet_params = model_config["params"]["unet_config"]["params"]
    if unet_config["attention_head_dim"] is None:  # the helper reads num_head_channels for SD2 configs only
        # diffusers' `attention_head_dim` is the number of heads per level (its legacy name)
        width, head_width = unet_params["model_channels"], unet_params["num_head_channels"]
        unet_config["attention_head_dim"] = [width * mult // head_width for mult in unet_params["channel_mult"]]
    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_config)
    _load_exactly(unet, convert_ldm_unet_checkpoint(checkpoint, unet_config), assign=True)

    # diffusers' helper reads neither of these from an LDM config: GroupNorm groups (32 in every SD VAE,
    # fewer in the small OpenMoji ones) and a scale factor measured by `scale_by_std` (a buffer, not a param)
    scale = float(model.scale_factor)
    vae_config = create_vae_diffusers_config_from_ldm(original_config, checkpoint, scaling_factor=scale)
    vae_config["norm_num_groups"] = ddconfig.get("norm_num_groups", 32)
    with torch.device("meta"):
        vae = AutoencoderKL(**vae_config)
    _load_exactly(vae, convert_ldm_vae_checkpoint(checkpoint, vae_config), assign=True)

    if isinstance(encoder, FrozenCLIPEmbedder):
        text_encoder, tokenizer = _clip_text_model(encoder, checkpoint)
    else:
        text_encoder, tokenizer = _hf_text_model(encoder)
    editing = model.model.conditioning_key == "hybrid"
    pipeline = StableDiffusionInstructPix2PixPipeline if editing else StableDiffusionPipeline
    pipe = pipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
