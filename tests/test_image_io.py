"""One image loader: a training sample holds the pixels `ldm.image_io.load_image` gives inference,
for the files where decoders tend to differ (EXIF rotation, 16-bit gray and RGB, palette
transparency, gray + alpha), and the loader's own decoding of them."""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ldm.data.edit_dataset import EditDataset
from ldm.data.images import to_signed_tensor
from ldm.image_io import ImageInputError, decode_image, keep_lines, load_image

RES = 16  # the dataset's resize = crop size, no flip: its only transform is a Lanczos resize to RES x RES
WIDTH, HEIGHT = 24, 16


def gradient(scale: int) -> np.ndarray:
    """(HEIGHT, WIDTH, 3) uint values up to `scale`: R along x, G along y, B fixed; no symmetry."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    rgb = np.stack([x / (WIDTH - 1), y / (HEIGHT - 1), np.full(x.shape, 0.3)], axis=-1)
    return np.rint(rgb * scale)


def exif_rotated_jpeg(path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the stored pixels are shown rotated 90 degrees clockwise
    Image.fromarray(gradient(255).astype(np.uint8)).save(path, quality=100, subsampling=0, exif=exif)


def gray16_png(path: Path) -> None:
    Image.fromarray(gradient(65535)[..., 0].astype(np.uint16)).save(path)  # mode I;16


def rgb16_png(path: Path) -> None:
    """A 16-bit-per-channel RGB PNG, written by hand (Pillow has no 16-bit RGB mode to save from)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    pixels = gradient(65535).astype(">u2")
    rows = b"".join(b"\x00" + row.tobytes() for row in pixels)  # filter type 0 per row
    header = struct.pack(">IIBBBBB", WIDTH, HEIGHT, 16, 2, 0, 0, 0)  # bit depth 16, color type 2 (RGB)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    )


def palette_with_transparency_png(path: Path) -> None:
    index = (np.arange(WIDTH * HEIGHT).reshape(HEIGHT, WIDTH) % 4).astype(np.uint8)
    image = Image.fromarray(index, mode="P")
    image.putpalette([0, 0, 0, 200, 30, 30, 30, 200, 30, 30, 30, 200])
    image.save(path, transparency=0)  # index 0 transparent: white after loading, black for convert("RGB")


def gray_alpha_png(path: Path) -> None:
    gray = gradient(255)[..., 0].astype(np.uint8)
    Image.fromarray(np.stack([gray, 255 - gray], axis=-1), mode="LA").save(path)


WRITERS: dict[str, tuple[str, Callable[[Path], None]]] = {
    "exif-rotated JPEG": (".jpg", exif_rotated_jpeg),
    "16-bit gray PNG": (".png", gray16_png),
    "16-bit RGB PNG": (".png", rgb16_png),
    "palette PNG with transparency": (".png", palette_with_transparency_png),
    "gray + alpha PNG": (".png", gray_alpha_png),
}
# Where the training loader before the merge (`Image.open(...).convert("RGB")`, alpha over white) gave
# other pixels than inference; the other kinds guard that it stays that way.
TRAINING_DIFFERED = {"exif-rotated JPEG", "16-bit gray PNG"}


def one_pair_dataset(root: Path, suffix: str, write: Callable[[Path], None]) -> tuple[EditDataset, Path]:
    """An InstructPix2Pix folder with one entry whose input and edited images are written by `write`."""
    folder = root / "prompt_000"
    folder.mkdir(parents=True)
    (folder / "prompt.json").write_text(json.dumps({"edit": "color it"}))
    for which in (0, 1):
        write(folder / f"0_{which}{suffix}")
    (root / "seeds.json").write_text(json.dumps([["prompt_000", [0]]]))
    dataset = EditDataset(root, split="train", splits=(1.0, 0.0, 0.0), min_resize_res=RES, max_resize_res=RES,
                          crop_res=RES, flip_prob=0.0)  # fmt: skip
    return dataset, folder / f"0_0{suffix}"


def inference_tensor(image: Image.Image) -> torch.Tensor:
    return to_signed_tensor(image.resize((RES, RES), Image.Resampling.LANCZOS))  # (3, RES, RES)


@pytest.mark.parametrize("kind", list(WRITERS))
def test_training_sample_has_the_inference_pixels(tmp_path: Path, kind: str) -> None:
    suffix, write = WRITERS[kind]
    dataset, path = one_pair_dataset(tmp_path / "data", suffix, write)
    sample = dataset[(0, 0)]
    expected = inference_tensor(load_image(path, max_pixels=10**6))
    assert torch.equal(sample["edit"]["c_concat"], expected)
    assert torch.equal(sample["edited"], expected)
    if kind in TRAINING_DIFFERED:
        with Image.open(path) as image:
            assert not torch.equal(inference_tensor(image.convert("RGB")), expected)  # the case is not vacuous


def test_the_loader_decodes_as_intended(tmp_path: Path) -> None:
    exif_rotated_jpeg(tmp_path / "rot.jpg")
    assert load_image(tmp_path / "rot.jpg").size == (HEIGHT, WIDTH)  # upright: rotated by the EXIF tag
    gray16_png(tmp_path / "g16.png")
    scaled = np.asarray(load_image(tmp_path / "g16.png"))[..., 0]
    assert np.array_equal(scaled, np.rint(gradient(65535)[..., 0] / 257))  # 65535 -> 255, not clipped
    rgb16_png(tmp_path / "rgb16.png")
    assert np.abs(np.asarray(load_image(tmp_path / "rgb16.png")).astype(int) - gradient(255)).max() <= 1
    palette_with_transparency_png(tmp_path / "p.png")
    assert np.asarray(load_image(tmp_path / "p.png"))[0, 0].tolist() == [255, 255, 255]


def test_bytes_decode_like_files_and_errors_are_one_type(tmp_path: Path) -> None:
    exif_rotated_jpeg(tmp_path / "rot.jpg")
    from_bytes = decode_image((tmp_path / "rot.jpg").read_bytes(), "row 3")
    assert np.array_equal(np.asarray(from_bytes), np.asarray(load_image(tmp_path / "rot.jpg")))
    with pytest.raises(ImageInputError, match="row 4: not a readable image") as caught:
        decode_image(b"not an image", "row 4")
    assert caught.value.reason.startswith("not a readable image")
    with pytest.raises(ImageInputError, match="no such file"):
        load_image(tmp_path / "missing.png")


def test_keep_lines_multiplies_the_ink_and_leaves_paper_and_fills_alone() -> None:
    source = np.full((5, 6, 3), 255, np.uint8)  # white paper
    source[0, :] = 0  # a black line
    source[1, :] = 40  # an anti-aliased edge, between INK_LUMA 32 and PAPER_LUMA 63
    source[2, :] = 63  # OpenMoji's dark gray fill #3F3F3F: a fill, not ink
    source[3, :] = (234, 90, 71)  # a red fill: colored, so not ink
    result = np.full((5, 6, 3), (40, 200, 120), np.uint8)
    out = np.asarray(keep_lines(Image.fromarray(result), Image.fromarray(source)))
    assert (out[0] == 0).all()  # the line comes out exactly as drawn
    weight = (63 - 40) / (63 - 32)  # multiply by the ink's luma, at this weight
    assert np.abs(out[1] - result[1] * (1 - weight * (1 - 40 / 255))).max() <= 0.5 + 1e-3
    assert np.array_equal(out[2:], result[2:])  # gray fill, red fill and paper: the result's colors unchanged
    with pytest.raises(ValueError, match="differ in size"):
        keep_lines(Image.fromarray(result), Image.fromarray(source[:2]))
