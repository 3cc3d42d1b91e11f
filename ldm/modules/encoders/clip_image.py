"""CLIP similarities of an edit, as in InstructPix2Pix's `metrics/clip_similarity.py`.

Used by the dataset builder's CLIP filter (`dataset_creation/generate_img_dataset.py`) and by the
evaluation (`metrics/compute_metrics.py`), so it lives here rather than under either of them.

For an input image I0 with caption T0 and its edit I1 with caption T1 (L2-normalised CLIP
features i0, i1, t0, t1):
- sim_0 = cos(i0, t0) and sim_1 = cos(i1, t1): how well each image matches its caption;
- sim_direction = cos(i1 - i0, t1 - t0): whether the image changed the way the caption did
  (the "CLIP text-image direction similarity" of Gal et al. 2021, StyleGAN-NADA);
- sim_image = cos(i0, i1): how much of the input survived the edit.

The paper used OpenAI's CLIP ViT-L/14. Here the model is built by open_clip from its built-in
config (`ViT-L-14`) or from a config JSON file, and its weights come from a local file only,
never from a hub:
- an open_clip state dict (.pt / .bin / .safetensors, e.g. `open_clip_pytorch_model.bin`);
- OpenAI's TorchScript archive (`ViT-L-14.pt`, what `clip.load` caches). OpenAI's models use
  QuickGELU, so the model is built with it for such a file. Plain state dicts of OpenAI
  weights need the `-quickgelu` config (`ViT-L-14-quickgelu`): strict loading cannot tell the
  activations apart.
"""

from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch import Tensor

# OpenAI's TorchScript files hold these scalars beside the weights.
_TORCHSCRIPT_EXTRAS = ("input_resolution", "context_length", "vocab_size")


def direction_similarity(image_0: Tensor, image_1: Tensor, text_0: Tensor, text_1: Tensor) -> Tensor:
    """cos(image_1 - image_0, text_1 - text_0) per row: features (B, D) each -> (B,); 0 where a change is 0."""
    return F.cosine_similarity(image_1 - image_0, text_1 - text_0, dim=-1)


def clip_config(model_name: str | Path) -> dict[str, Any]:
    """The open_clip model config of a built-in model name or of a config JSON file.

    Configs whose towers come from Hugging Face (hf_model_name, hf_tokenizer_name) are refused:
    building them reaches the hub.
    """
    path = Path(model_name)
    if path.suffix == ".json":
        if not path.is_file():
            raise FileNotFoundError(f"CLIP model config {path}: no such file")
        config = json.loads(path.read_text(encoding="utf-8"))
        config = config.get("model_cfg", config)  # open_clip_config.json files nest it
    else:
        if ":" in str(model_name):  # open_clip's hf-hub: / local-dir: schemas
            raise ValueError(f"CLIP model {model_name!r}: give an open_clip model name or a config .json file")
        config = open_clip.get_model_config(str(model_name))
        if config is None:
            raise ValueError(f"CLIP model {model_name!r}: not an open_clip model name or a config .json file")
    if not isinstance(config, dict) or not {"embed_dim", "vision_cfg", "text_cfg"} <= set(config):
        raise ValueError(f"CLIP model config {model_name}: needs embed_dim, vision_cfg and text_cfg")
    hub_keys = {"hf_model_name", "hf_tokenizer_name"} & set(config["text_cfg"])
    if hub_keys:
        raise ValueError(f"CLIP model {model_name}: its text tower comes from the Hugging Face hub ({min(hub_keys)})")
    return config


def is_torchscript_archive(path: Path) -> bool:
    """Whether `path` is a TorchScript zip archive (OpenAI's released CLIP files)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") or name == "constants.pkl" for name in archive.namelist())


def load_clip_weights(model: torch.nn.Module, path: Path) -> None:
    """Load a local weights file strictly (open_clip converts the known third-party layouts)."""
    if is_torchscript_archive(path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated"
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
        # A scripted module also lists its non-persistent buffers (open_clip's attn_mask): rebuilt, not loaded.
        persistent = set(model.state_dict())
        recomputed = {name for name, _ in model.named_buffers()} - persistent
        for key in (*_TORCHSCRIPT_EXTRAS, *recomputed):
            state.pop(key, None)
        model.load_state_dict(state, strict=True)
    else:
        open_clip.load_checkpoint(model, str(path), strict=True)


class ClipSimilarity(torch.nn.Module):
    """Frozen CLIP model giving (sim_0, sim_1, sim_direction, sim_image) for image/caption pairs.

    `model_name`: an open_clip model name (`ViT-L-14`, as the paper) or a config JSON file.
    `pretrained`: a local weights file; None leaves random weights (tests only).
    """

    def __init__(self, model_name: str | Path = "ViT-L-14", pretrained: str | Path | None = None) -> None:
        super().__init__()
        config = clip_config(model_name)
        weights = None if pretrained is None else Path(pretrained)
        if weights is not None and not weights.is_file():
            raise FileNotFoundError(f"CLIP weights {weights}: no such file")
        if weights is not None and is_torchscript_archive(weights):
            config["quick_gelu"] = True  # every OpenAI CLIP was trained with QuickGELU
        model_class = open_clip.CustomTextCLIP if config.pop("custom_text", False) else open_clip.CLIP
        self.model = model_class(**config)
        if weights is not None:
            load_clip_weights(self.model, weights)
        self.model.eval().requires_grad_(False)

        text_cfg = config["text_cfg"]
        if Path(model_name).suffix == ".json":
            context = text_cfg.get("context_length", open_clip.tokenizer.DEFAULT_CONTEXT_LENGTH)
            self.tokenizer = open_clip.SimpleTokenizer(context_length=context, **text_cfg.get("tokenizer_kwargs", {}))
        else:
            self.tokenizer = open_clip.get_tokenizer(str(model_name))  # BPE vocabulary shipped with open_clip
        size = self.model.visual.image_size
        self.size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)  # (height, width)
        self.register_buffer("mean", torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1), persistent=False)

    def encode_text(self, text: list[str]) -> Tensor:
        """Captions -> L2-normalised features (B, D)."""
        tokens = self.tokenizer(list(text)).to(self.mean.device)  # (B, context_length)
        return self.model.encode_text(tokens, normalize=True)

    def encode_image(self, image: Tensor) -> Tensor:
        """Images (B, 3, H, W) in [0, 1] -> L2-normalised features (B, D).

        Resized to the model's input size (bicubic, antialiased, clamped back to [0, 1] against
        bicubic overshoot), then CLIP's mean/std normalisation.
        """
        x = image.to(self.mean.device, torch.float32)
        x = F.interpolate(x, size=self.size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        x = (x - self.mean) / self.std  # (B, 3, S, S)
        dtype = next(self.model.parameters()).dtype
        return self.model.encode_image(x.to(dtype), normalize=True).float()

    def forward(
        self, image_0: Tensor, image_1: Tensor, text_0: list[str], text_1: list[str]
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(sim_0, sim_1, sim_direction, sim_image), each (B,), for images (B, 3, H, W) in [0, 1] and B captions."""
        image_features_0, image_features_1 = self.encode_image(image_0), self.encode_image(image_1)  # (B, D)
        text_features_0, text_features_1 = self.encode_text(text_0).float(), self.encode_text(text_1).float()
        sim_0 = F.cosine_similarity(image_features_0, text_features_0, dim=-1)
        sim_1 = F.cosine_similarity(image_features_1, text_features_1, dim=-1)
        sim_direction = direction_similarity(image_features_0, image_features_1, text_features_0, text_features_1)
        sim_image = F.cosine_similarity(image_features_0, image_features_1, dim=-1)
        return sim_0, sim_1, sim_direction, sim_image
