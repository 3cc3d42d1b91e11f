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
- the 12 noise-schedule buffers (`schedule.SCHEDULE_BUFFERS`), which diffusers' converters do
  not write: absent ones are computed from the config (one log line); present ones must equal
  the config's schedule, or loading stops naming the first buffer that differs;
- a missing `scale_factor` buffer (models with `scale_by_std` measure it on their first batch).

A checkpoint that records its `model_settings` (this project's training checkpoints and exports)
must match the model's (`check_model_settings`).

The UNet's first convolution may have more input channels than the checkpoint's (the
editing model concatenates the input-image latent: 8 vs 4). Then channels 0-3 are copied
and the new ones start at zero, for the model and its EMA alike, so the model initially
ignores the image and behaves exactly like the text-to-image checkpoint.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ldm.checkpoint import MODEL_SETTINGS, CheckpointMismatchError, load_strict, read_checkpoint, state_dict_of
from ldm.models.diffusion.schedule import SCHEDULE_BUFFERS
from ldm.util import config_path

log = logging.getLogger(__name__)

INPUT_CONV_KEYS = (
    "model.diffusion_model.input_blocks.0.0.weight",
    "model_ema.diffusion_modelinput_blocks00weight",
)
TOLERATED_KEYS = ("cond_stage_model.transformer.text_model.embeddings.position_ids",)
TOLERATED_UNEXPECTED_PREFIXES = ("first_stage_model.loss.",)
TOLERATED_MISSING = ("scale_factor",)


def expand_input_channels(weight: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Conv weight (out, c_old, k, k) -> (out, c_new, k, k): the first c_old channels copied, the rest zero."""
    if weight.shape[0] != shape[0] or weight.shape[2:] != shape[2:] or weight.shape[1] > shape[1]:
        raise CheckpointMismatchError(
            f"cannot expand input conv {tuple(weight.shape)} to {tuple(shape)}: only input channels may grow"
        )
    expanded = torch.zeros(shape, dtype=weight.dtype)
    expanded[:, : weight.shape[1]] = weight
    return expanded


def check_schedule(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor], path: str | Path) -> None:
    """The checkpoint's noise-schedule buffers are the config's; absent ones (diffusers' converter writes
    none) keep the values computed from the config, said in one line."""
    schedule = [k for k in SCHEDULE_BUFFERS if k in own]
    absent = [k for k in schedule if k not in state]
    if absent:
        log.warning("%s has no %s; computed from the config's schedule", path, "noise-schedule buffers"
                    if len(absent) == len(schedule) else ", ".join(absent))  # fmt: skip
    for key in schedule:
        if key in state and not torch.allclose(state[key].float(), own[key].float(), rtol=2e-3, atol=1e-6):
            t = int((state[key].float() - own[key].float()).abs().argmax())
            raise CheckpointMismatchError(
                f"{path}: {key} differs from the config's noise schedule (t={t}: checkpoint "
                f"{float(state[key][t]):.6g} vs config {float(own[key][t]):.6g}); set timesteps, linear_start, "
                "linear_end and zero_terminal_snr as the checkpoint was trained"
            )


def check_model_settings(model: nn.Module, recorded: dict[str, Any], path: str | Path) -> None:
    """Refuse a checkpoint trained with other `model_settings()` than the model's: the weights would load
    and compute something else (a residual model sampled as a target model, v as eps). Files that record
    nothing (SD, InstructPix2Pix, diffusers exports) are not checked."""
    own = model.model_settings() if hasattr(model, "model_settings") else {}
    for key, value in recorded.items():
        if key in own and own[key] != value:
            raise CheckpointMismatchError(
                f"{path} was trained with {key}: {json.dumps(value)}, but the config has {json.dumps(own[key])}; "
                f"set model.params.{key}: {json.dumps(value)}"  # also after instantiation (load_model)
            )


def init_from_ckpt(model: nn.Module, path: str | Path, ignore_keys: Sequence[str] = (), load_ema: bool = True) -> None:
    """Load weights from `path` (.ckpt, bare state dict, .safetensors, or a diffusers pipeline folder:
    `ldm.diffusers_import`) into `model`, strictly."""
    if Path(path).is_dir():
        from ldm.diffusers_import import read_pipeline_folder

        state = read_pipeline_folder(path, model)
    else:
        checkpoint = read_checkpoint(path)
        check_model_settings(model, checkpoint.get(MODEL_SETTINGS) or {}, path)
        state = state_dict_of(checkpoint)
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
    check_schedule(state, own, path)
    for key in INPUT_CONV_KEYS:
        if key in state and key in own and state[key].shape != own[key].shape:
            old, new = tuple(state[key].shape), tuple(own[key].shape)
            log.info("%s: %s %s -> %s, new input channels zero", path, key, old, new)
            try:
                state[key] = expand_input_channels(state[key], own[key].shape)
            except CheckpointMismatchError as err:
                raise CheckpointMismatchError(f"{path}: {key}: {err}") from err
    load_strict(
        model,
        state,
        path,
        may_miss=lambda k: k in TOLERATED_KEYS + TOLERATED_MISSING + SCHEDULE_BUFFERS
        or bool(ignore and k.startswith(ignore)),
        may_add=lambda k: k in TOLERATED_KEYS or k.startswith(TOLERATED_UNEXPECTED_PREFIXES),
        advice=f"fix the config or list prefixes to skip in {config_path('ignore_keys')}",
    )
    log.info("initialised from %s (%d tensors)", path, len(state))
