"""Reading a diffusers pipeline folder as a checkpoint of this project.

`--ckpt` (edit_cli.py, edit_app.py) and `model.params.ckpt_path` (training) may name a folder
written by diffusers' `save_pretrained` (what `train_instruct_pix2pix.py` leaves behind), or its
`unet/` folder beside `vae/` and `text_encoder/`. The weights of the three components are read
(safetensors) and renamed to our keys by `ldm.diffusers_keys` (diffusers' own converters), then
loaded strictly like any checkpoint: a key the model lacks or a model weight the folder lacks is
one error naming it. The 12 noise-schedule buffers are computed from the config, after checking
that the folder's scheduler has the same betas and parameterization; `scale_factor` is the VAE's
`scaling_factor`. A text encoder other than CLIP (the OpenMoji models' MiniLM, exported as a
BertModel) is read under our keys like CLIP's.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from ldm.diffusers_keys import COMPONENTS, diffusers_names
from ldm.errors import CheckpointMismatchError

WEIGHT_FILES = {"unet": "diffusion_pytorch_model.safetensors", "vae": "diffusion_pytorch_model.safetensors",
                "text_encoder": "model.safetensors"}  # fmt: skip
# transformers keeps the CLIP text model's position ids out of its checkpoints (or in, by version)
TOLERATED = {"text_encoder": {"text_model.embeddings.position_ids", "embeddings.position_ids"}}


def pipeline_root(path: str | Path) -> Path | None:
    """The pipeline folder that `path` names (itself, or the parent of its `unet/`); None if it names none."""
    path = Path(path)
    if not path.is_dir():
        return None
    if (path / "model_index.json").is_file() or (path / "unet").is_dir():
        return path
    if path.name == "unet" and (path / "config.json").is_file():
        return path.parent
    return None


def _component_tensors(root: Path, component: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    file = root / component / WEIGHT_FILES[component]
    if not file.is_file():
        raise CheckpointMismatchError(f"{root}: no {component}/{WEIGHT_FILES[component]} (a diffusers pipeline "
                                      "folder saved with safe_serialization holds one per component)")  # fmt: skip
    try:
        return load_file(str(file), device="cpu")
    except SafetensorError as err:
        raise CheckpointMismatchError(f"{file} is not a readable .safetensors file ({err})") from err


def diffusers_betas(config: dict, path: Path) -> torch.Tensor:
    """The betas a diffusers scheduler config describes (float64)."""
    if config.get("trained_betas") is not None:
        return torch.tensor(config["trained_betas"], dtype=torch.float64)
    steps, start, end = config.get("num_train_timesteps", 1000), config["beta_start"], config["beta_end"]
    schedule = config.get("beta_schedule", "linear")
    if schedule == "scaled_linear":  # SD's "linear": evenly spaced on the square-root scale
        return torch.linspace(math.sqrt(start), math.sqrt(end), steps, dtype=torch.float64) ** 2
    if schedule == "linear":
        return torch.linspace(start, end, steps, dtype=torch.float64)
    raise CheckpointMismatchError(f"{path}: beta_schedule {schedule!r} is not one this project's configs describe")


def check_scheduler(root: Path, model: nn.Module) -> None:
    """The folder's training schedule must be the config's (the buffers are computed from the config)."""
    path = root / "scheduler" / "scheduler_config.json"
    if not path.is_file():
        return
    config = json.loads(path.read_text(encoding="utf-8"))
    theirs, ours = diffusers_betas(config, path), model.betas.double()
    if theirs.shape != ours.shape or not torch.allclose(theirs, ours, rtol=1e-5, atol=0):
        raise CheckpointMismatchError(
            f"{path}: its betas ({len(theirs)} steps, {theirs[0]:.6g} -> {theirs[-1]:.6g}) are not the config's "
            f"({len(ours)} steps, {ours[0]:.6g} -> {ours[-1]:.6g}); fix linear_start / linear_end / timesteps"
        )
    prediction = "v_prediction" if model.parameterization == "v" else "epsilon"
    if config.get("prediction_type", "epsilon") != prediction:
        raise CheckpointMismatchError(f"{path}: prediction_type {config['prediction_type']!r}, but the config's "
                                      f"parameterization is {model.parameterization!r}")  # fmt: skip


def read_pipeline_folder(path: str | Path, model: nn.Module) -> dict[str, torch.Tensor]:
    """The folder's UNet, VAE and text-encoder weights under our keys, shaped as `model`'s."""
    from ldm.modules.encoders.modules import FrozenCLIPEmbedder, FrozenHFTextEmbedder

    root = pipeline_root(path)
    if root is None:
        raise CheckpointMismatchError(f"{path}: a folder, but not a diffusers pipeline (no model_index.json or unet/)")
    if not isinstance(model.cond_stage_model, (FrozenCLIPEmbedder, FrozenHFTextEmbedder)):
        raise CheckpointMismatchError(f"{path}: diffusers pipelines carry a transformers text encoder; the config "
                                      f"builds {type(model.cond_stage_model).__name__}")  # fmt: skip
    check_scheduler(root, model)
    own = model.state_dict()
    state: dict[str, torch.Tensor] = {}
    used: dict[str, set[str]] = {component: set() for component in COMPONENTS}
    tensors = {component: _component_tensors(root, component) for component in COMPONENTS}
    for ours, (component, key) in diffusers_names(model).items():
        found = tensors[component]
        if key not in found and key.removeprefix("text_model.") in found:  # transformers 5's flat CLIPTextModel
            key = key.removeprefix("text_model.")
        if key not in found and key in TOLERATED.get(component, ()):
            continue
        if key not in found:
            raise CheckpointMismatchError(f"{root / component}: no tensor {key} (the model's {ours}); the folder "
                                          "holds another architecture than the config builds")  # fmt: skip
        value = found[key]
        if value.numel() != own[ours].numel():
            raise CheckpointMismatchError(f"{root / component}: {key} has shape {tuple(value.shape)}, the model's "
                                          f"{ours} {tuple(own[ours].shape)}; fix the config")  # fmt: skip
        state[ours] = value.reshape(own[ours].shape)  # the VAE's linear attention weights are our 1x1 convs
        used[component].add(key)
    vae_config = root / "vae" / "config.json"
    if "scale_factor" in own and vae_config.is_file():  # a buffer here, the VAE's `scaling_factor` there
        scaling = json.loads(vae_config.read_text(encoding="utf-8")).get("scaling_factor")
        if scaling is not None:
            state["scale_factor"] = torch.tensor(float(scaling), dtype=own["scale_factor"].dtype)
    for component, found in tensors.items():
        extra = sorted(set(found) - used[component] - TOLERATED.get(component, set()))
        if extra:
            raise CheckpointMismatchError(f"{root / component}: {extra[0]} is not a weight of the model the config "
                                          f"builds ({len(extra)} such tensors); fix the config")  # fmt: skip
    return state
