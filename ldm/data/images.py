"""Tensor conversion and the paired augmentation shared by the editing datasets.

Images are decoded by `ldm.image_io.load_image`, the loader inference and the metrics use (EXIF
orientation, 16-bit scaling, alpha over white), so training sees the pixels the model is run on.

An editing sample is a pair (input image, edited image) that must stay pixel-aligned:
both are resized to the same random square size, stacked on the channel axis, then
cropped by one window and flipped together (the original InstructPix2Pix `EditDataset`
did the same with torchvision's RandomCrop/RandomHorizontalFlip).

Randomness: every draw (resize size, crop window, flip) comes from the `generator` passed
to `PairedTransform`, or from torch's global RNG when it is None; Python's `random` and
NumPy's RNG are not used. The datasets pass a generator seeded per sample, so a sample's
augmentation does not depend on the global RNG (see `ldm.data.sampler`).
"""

from __future__ import annotations

import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor


def to_signed_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> (3, H, W) float32 in [-1, 1]."""
    return pil_to_tensor(image).float() / 127.5 - 1.0


class PairedTransform:
    """Resize two images to one random square size in [min_resize_res, max_resize_res]
    (Lanczos), then apply the same random `crop_res` crop and the same horizontal flip.

    Draws, in this order: resize size, crop top, crop left, flip (always drawn, whatever
    `flip_prob`, so the draws of one generator do not depend on the configuration).
    """

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
        self.crop_res = crop_res
        self.flip_prob = flip_prob

    @property
    def is_deterministic(self) -> bool:
        """True when only the flip is random: one resize size and the crop is the whole resized image."""
        return self.min_resize_res == self.max_resize_res == self.crop_res

    def draw(self, generator: torch.Generator | None = None) -> tuple[int, int, int, bool]:
        """The random choices of one call: (resize size, crop top, crop left, flip)."""
        res = int(torch.randint(self.min_resize_res, self.max_resize_res + 1, (), generator=generator))
        top, left = (int(torch.randint(res - self.crop_res + 1, (), generator=generator)) for _ in range(2))
        flip = bool(torch.rand((), generator=generator) < self.flip_prob)
        return res, top, left, flip

    def __call__(
        self, input_image: Image.Image, edited_image: Image.Image, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Two PIL images of any sizes -> two aligned (3, crop_res, crop_res) tensors in [-1, 1].

        `generator=None` draws from torch's global RNG.
        """
        res, top, left, flip = self.draw(generator)
        pair = torch.cat(
            [
                to_signed_tensor(image.resize((res, res), Image.Resampling.LANCZOS))
                for image in (input_image, edited_image)
            ]
        )  # (6, res, res)
        # a copy, so the returned tensors do not keep the whole resized pair alive
        pair = pair[:, top : top + self.crop_res, left : left + self.crop_res].contiguous()  # (6, crop_res, crop_res)
        if flip:
            pair = pair.flip(-1)
        input_tensor, edited_tensor = pair.chunk(2)  # 2 x (3, crop_res, crop_res)
        return input_tensor, edited_tensor
