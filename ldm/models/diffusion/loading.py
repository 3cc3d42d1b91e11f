"""Initialising a LatentDiffusion from SD 1.x / InstructPix2Pix checkpoints, strictly.

Every key of the checkpoint must land in the model and every model key must be filled,
except for a short documented allow-list:

- `cond_stage_model.transformer.text_model.embeddings.position_ids`: a constant buffer
  some transformers versions saved and others do not;
- `first_stage_model.loss.*`: the autoencoder's training loss, which inference and
  diffusion configs replace with `torch.nn.Identity`;
- `model_ema.*` in the checkpoint when `load_ema` is off (its EMA is not wanted; a new
  EMA starts from the loaded weights);
- model keys under `ignore_keys` prefixes, which the user asked to leave untouched;
- a missing `scale_factor` buffer (models with `scale_by_std` measure it on their first batch).

The UNet's first convolution may have more input channels than the checkpoint's (the
editing model concatenates the input-image latent: 8 vs 4). Then channels 0-3 are copied
and the new ones start at zero, for the model and its EMA alike, so the model initially
ignores the image and behaves exactly like the text-to-image checkpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ldm.util import config_path, load_state_dict_file

log = logging.getLogger(__name__)

INPUT_CONV_KEYS = (
    "model.diffusion_model.input_blocks.0.0.weight",
    "model_ema.diffusion_modelinput_blocks00weight",
)
TOLERATED_KEYS = ("cond_stage_model.transformer.text_model.embeddings.position_ids",)
TOLERATED_UNEXPECTED_PREFIXES = ("first_stage_model.loss.",)
TOLERATED_MISSING = ("scale_factor",)


class CheckpointMismatchError(ValueError):
    """The checkpoint's keys or shapes do not fit the model; the message lists them."""


def expand_input_channels(weight: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Conv weight (out, c_old, k, k) -> (out, c_new, k, k): the first c_old channels copied, the rest zero."""
    if weight.shape[0] != shape[0] or weight.shape[2:] != shape[2:] or weight.shape[1] > shape[1]:
        raise CheckpointMismatchError(
            f"cannot expand input conv {tuple(weight.shape)} to {tuple(shape)}: only input channels may grow"
        )
    expanded = torch.zeros(shape, dtype=weight.dtype)
    expanded[:, : weight.shape[1]] = weight
    return expanded


def _describe(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:3])
    return f"{len(keys)} ({shown}{', ...' if len(keys) > 3 else ''})"


def init_from_ckpt(model: nn.Module, path: str | Path, ignore_keys: Sequence[str] = (), load_ema: bool = True) -> None:
    """Load weights from `path` (.ckpt, bare state dict or .safetensors) into `model`, strictly."""
    state = load_state_dict_file(path)
    ignore = tuple(ignore_keys)
    state = {k: v for k, v in state.items() if not k.startswith(ignore)} if ignore else state
    if not load_ema:
        dropped = [k for k in state if k.startswith("model_ema.")]
        state = {k: v for k, v in state.items() if not k.startswith("model_ema.")}
        if dropped:
            log.info("%s: not loading its EMA (%d tensors) because load_ema is off", path, len(dropped))
    elif hasattr(model, "model_ema") and not any(k.startswith("model_ema.") for k in state):
        raise CheckpointMismatchError(
            f"{path} has no EMA weights (model_ema.*), but load_ema is on; set {config_path('load_ema')}: false "
            "to start the EMA from the loaded weights"
        )

    own = model.state_dict()
    for key in INPUT_CONV_KEYS:
        if key in state and key in own and state[key].shape != own[key].shape:
            old, new = tuple(state[key].shape), tuple(own[key].shape)
            log.info("%s: %s %s -> %s, new input channels zero", path, key, old, new)
            try:
                state[key] = expand_input_channels(state[key], own[key].shape)
            except CheckpointMismatchError as err:
                raise CheckpointMismatchError(f"{path}: {key}: {err}") from err
    wrong_shape = [k for k in state if k in own and state[k].shape != own[k].shape]
    if wrong_shape:
        k = wrong_shape[0]
        raise CheckpointMismatchError(
            f"{path}: {len(wrong_shape)} tensors have the wrong shape, e.g. {k}: checkpoint "
            f"{tuple(state[k].shape)} vs model {tuple(own[k].shape)}; is the config the checkpoint's architecture?"
        )

    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [
        k for k in missing if k not in TOLERATED_KEYS + TOLERATED_MISSING and not (ignore and k.startswith(ignore))
    ]
    unexpected = [k for k in unexpected if k not in TOLERATED_KEYS and not k.startswith(TOLERATED_UNEXPECTED_PREFIXES)]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {_describe(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_describe(unexpected)}")
        raise CheckpointMismatchError(
            f"{path} does not match the model ({'; '.join(parts)}); fix the config or list prefixes to skip "
            f"in {config_path('ignore_keys')}"
        )
    log.info("initialised from %s (%d tensors)", path, len(state))
