"""Reading images for the model and writing results atomically (Pillow and NumPy only, no torch).

`load_image` is the one image loader: training (`ldm.data`), inference (`edit_cli.py`), the
metrics and the dataset tools all decode through it, so the model is trained on the pixels it
is run on. It turns any file into an upright 8-bit RGB image: EXIF orientation applied,
transparency composited over white (line art is often black strokes on alpha), 16-bit
grayscale scaled to 8 bits, palette / CMYK / grayscale converted; files that are not images,
are truncated, or are larger than a pixel limit raise `ImageInputError` with the reason
(`decode_image` does the same for bytes in memory). `fit_to_stride` resizes to the model's
grid as the original InstructPix2Pix `edit_cli.py` did. `keep_lines` lays the input's line
art over a result (multiply), as colorists do. `save_image_atomic` writes a temporary
file beside the target and renames it over the target, so a reader never sees a partial image
and a failure leaves nothing.
"""

from __future__ import annotations

import io
import math
import struct
import warnings
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from ldm.io import atomic_writer

WHITE = (255, 255, 255, 255)
TRANSPARENT_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # "I" (int32) as Pillow opens some 16-bit files
LOSSY_QUALITY = 95  # JPEG / WebP quality of written results (Pillow's default, 75, shows artifacts)
# What Pillow raises for a file that is not an image or is damaged (PNG chunk errors surface as
# SyntaxError, short reads as EOFError / struct.error).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, struct.error)


class ImageInputError(ValueError):
    """An input file (an image, or the prompt file of a training pair) cannot be used; the message
    names the file and the reason (also kept apart: `path`, `reason`)."""

    def __init__(self, path: str | Path, reason: object) -> None:
        super().__init__(f"cannot use {path}: {reason}")
        self.path = Path(path)
        self.reason = str(reason)


def image_extensions() -> set[str]:
    """Lower-case file extensions (".png", ...) Pillow can open."""
    Image.init()
    return {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


def output_format(path: str | Path) -> str:
    """Pillow format name for writing `path`, from its extension; ValueError if there is none."""
    Image.init()
    suffix = Path(path).suffix.lower()
    fmt = Image.registered_extensions().get(suffix)
    if fmt is None or fmt not in Image.SAVE:
        shown = f"'{suffix}'" if suffix else "no extension"
        raise ValueError(f"{path}: cannot tell an image format to write from {shown}; use .png, .jpg or .webp")
    return fmt


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB; transparent pixels over white, 16-bit values scaled (65535 -> 255)."""
    if image.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.float64)  # (H, W), 0..65535
        image = Image.fromarray(np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8))  # "L"
    if image.mode in TRANSPARENT_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, WHITE), rgba).convert("RGB")
    return image.convert("RGB")


def load_image(path: str | Path, max_pixels: int | None = None) -> Image.Image:
    """Decode `path` as upright 8-bit RGB (`to_rgb` after the EXIF orientation); ImageInputError if
    unreadable or above `max_pixels`.

    The size is checked from the header, before any pixel data is decoded. Pillow's own
    decompression-bomb guard (about 179 megapixels) still applies above `max_pixels`, and is the
    only limit when it is None (training data, written by our own tools).
    """
    path = Path(path)
    if not path.is_file():
        raise ImageInputError(path, "no such file" if not path.exists() else "not a file")
    return _decode(path, path, max_pixels)


def decode_image(data: bytes, name: str, max_pixels: int | None = None) -> Image.Image:
    """`load_image` for an encoded image held in memory (a dataset cell); errors name `name`."""
    return _decode(io.BytesIO(data), name, max_pixels)


def _decode(source: Path | BinaryIO, name: str | Path, max_pixels: int | None) -> Image.Image:
    """The body of `load_image` and `decode_image`: open `source`, check, decode, convert."""
    try:
        with warnings.catch_warnings():
            if max_pixels is not None:
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit below decides
            with Image.open(source) as image:
                width, height = image.size
                if max_pixels is not None and width * height > max_pixels:
                    raise ImageInputError(
                        name,
                        f"{width}x{height} is {width * height / 1e6:.1f} megapixels, more than the limit of "
                        f"{max_pixels / 1e6:g} (raise it with --max-pixels)",
                    )
                image.load()
                return to_rgb(ImageOps.exif_transpose(image))
    except ImageInputError:
        raise
    except Image.DecompressionBombError as err:
        raise ImageInputError(name, err) from err
    except DECODE_ERRORS as err:
        raise ImageInputError(name, f"not a readable image ({err})") from err


def edit_size(width: int, height: int, resolution: int, stride: int) -> tuple[int, int]:
    """(width, height) of the edited image: multiples of `stride`, the longer side about `resolution`.

    The original InstructPix2Pix rule, in exact arithmetic: scale so the longer side is
    `resolution`, round the shorter side UP to a multiple of the stride, rescale, round both
    sides DOWN to multiples of the stride. Then each side is at least one stride (tiny images
    and small resolutions) and at most `resolution` rounded up to the stride (the original
    could exceed it by up to a stride times the aspect ratio, unbounded for thin strips).
    """
    short = min(width, height)
    factor = Fraction(resolution, max(width, height))
    factor = math.ceil(short * factor / stride) * stride / Fraction(short)
    largest = max(stride, math.ceil(resolution / stride) * stride)
    return tuple(min(max(int(side * factor // stride) * stride, stride), largest) for side in (width, height))


def fit_to_stride(image: Image.Image, resolution: int, stride: int) -> Image.Image:
    """Resize (Lanczos) to `edit_size`, cropping the centre where the aspect ratio must change (ImageOps.fit)."""
    size = edit_size(*image.size, resolution, stride)
    if size == image.size:
        return image
    return ImageOps.fit(image, size, method=Image.Resampling.LANCZOS)


LINE_NEUTRAL = 32  # max - min of R, G, B at or below which an input pixel is ink (black to gray), not a fill
# luma at or below which neutral ink is laid over fully, and at or above which not at all: OpenMoji's dark
# gray fill #3F3F3F (luma 63) and lighter grays are fills, not ink. In between (anti-aliased edges) it fades.
# Measured on 150 held-out pairs (see README): palette accuracy unchanged, line IoU 0.596 -> 0.717; a ramp
# to luma 160 darkened gray fills and cost the edit kind 0.05 palette accuracy.
INK_LUMA, PAPER_LUMA = 32.0, 63.0


def keep_lines(result: Image.Image, source: Image.Image) -> Image.Image:
    """Composite the source's dark line art over `result` with a multiply layer, so lines come out as drawn.

    Ink is the source's neutral pixels (channel spread <= LINE_NEUTRAL), weighted from 1 at luma
    INK_LUMA down to 0 at PAPER_LUMA; colored pixels, gray fills and paper leave the result alone.
    Black lines stay exactly black, as under a colorist's multiply line layer. Both images have one size.
    """
    if result.size != source.size:
        raise ValueError(f"keep_lines: result {result.size} and source {source.size} differ in size")
    source = to_rgb(source)
    ink = np.asarray(source, dtype=np.int16)  # (H, W, 3)
    neutral = ink.max(axis=2) - ink.min(axis=2) <= LINE_NEUTRAL  # (H, W)
    luma = np.asarray(source.convert("L"), dtype=np.float32)  # (H, W), ITU-R 601
    weight = np.where(neutral, np.clip((PAPER_LUMA - luma) / (PAPER_LUMA - INK_LUMA), 0.0, 1.0), 0.0)
    layer = 1.0 - weight * (1.0 - luma / 255.0)  # (H, W): the multiply factor, 1 where no ink
    colors = np.asarray(to_rgb(result), dtype=np.float32)  # (H, W, 3)
    return Image.fromarray(np.rint(colors * layer[..., None]).astype(np.uint8))


def save_image_atomic(image: Image.Image, path: str | Path) -> None:
    """Write `image` to `path` in the format of its extension (`ldm.io.atomic_writer`: all or nothing).

    An OSError (a full disk) names `path`, not the temporary file, which is gone by then."""
    fmt = output_format(path)
    options = {"quality": LOSSY_QUALITY} if fmt in ("JPEG", "WEBP") else {}
    try:
        with atomic_writer(path) as f:
            image.save(f, format=fmt, **options)
    except OSError as err:
        if err.errno is None:
            raise
        raise OSError(err.errno, err.strerror, str(path)) from err
