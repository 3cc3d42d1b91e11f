"""Image loading and the paired augmentation shared by the editing datasets.

An editing sample is a pair (input image, edited image) that must stay pixel-aligned:
both are resized to the same random square size, then cropped by the same window and
flipped together, by stacking them on the channel axis before torchvision's random
transforms (as the original InstructPix2Pix `EditDataset` does).

Randomness: every draw (resize size, crop window, flip) comes from torch's global RNG,
so `torch.manual_seed` alone makes the augmentation reproducible; Python's `random` and
NumPy's RNG are not used.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms import RandomCrop, RandomHorizontalFlip
from torchvision.transforms.functional import pil_to_tensor


class UnreadableFileError(OSError):
    """A file of one sample (image or prompt) is missing or cannot be decoded; `path` names it."""

    def __init__(self, path: str | Path, reason: object) -> None:
        super().__init__(f"cannot read {path}: {reason}")
        self.path = Path(path)


def load_rgb(path: str | Path) -> Image.Image:
    """Decode an image as RGB; transparent pixels are composited over white (line art on alpha)."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
                rgba = image.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                return Image.alpha_composite(white, rgba).convert("RGB")
            return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise UnreadableFileError(path, err) from err


def to_signed_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> (3, H, W) float32 in [-1, 1]."""
    return pil_to_tensor(image).float() / 127.5 - 1.0


class PairedTransform:
    """Resize two images to one random square size in [min_resize_res, max_resize_res]
    (Lanczos), then apply the same random `crop_res` crop and the same horizontal flip."""

    def __init__(self, min_resize_res: int, max_resize_res: int, crop_res: int, flip_prob: float) -> None:
        if not 1 <= min_resize_res <= max_resize_res:
            raise ValueError(
                f"min_resize_res={min_resize_res} and max_resize_res={max_resize_res}: "
                "need 1 <= min_resize_res <= max_resize_res"
            )
        if not 1 <= crop_res <= min_resize_res:
            raise ValueError(
                f"crop_res={crop_res} must be between 1 and min_resize_res={min_resize_res} "
                "(the crop is taken inside the resized image)"
            )
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob={flip_prob} must be a probability in [0, 1]")
        self.min_resize_res = min_resize_res
        self.max_resize_res = max_resize_res
        self.crop = RandomCrop(crop_res)
        self.flip = RandomHorizontalFlip(flip_prob)

    def __call__(self, input_image: Image.Image, edited_image: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        """Two PIL images of any sizes -> two aligned (3, crop_res, crop_res) tensors in [-1, 1]."""
        res = int(torch.randint(self.min_resize_res, self.max_resize_res + 1, ()).item())
        pair = torch.cat(
            [
                to_signed_tensor(image.resize((res, res), Image.Resampling.LANCZOS))
                for image in (input_image, edited_image)
            ]
        )  # (6, res, res)
        input_tensor, edited_tensor = self.flip(self.crop(pair)).chunk(2)  # 2 x (3, crop_res, crop_res)
        return input_tensor, edited_tensor
