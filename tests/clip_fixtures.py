"""A tiny open_clip CLIP (config JSON + random weights) for tests of the CLIP metrics."""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import torch

TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def write_tiny_clip(root: Path, seed: int = 0) -> tuple[Path, Path]:
    """Write `tiny_clip.json` and `tiny_clip.pt` (random weights, open_clip state dict) under `root`."""
    root.mkdir(parents=True, exist_ok=True)
    config_path, weights_path = root / "tiny_clip.json", root / "tiny_clip.pt"
    config_path.write_text(json.dumps(TINY_CLIP_CONFIG))
    torch.manual_seed(seed)
    model = open_clip.CLIP(**json.loads(config_path.read_text()))
    torch.save(model.state_dict(), weights_path)
    return config_path, weights_path
