"""Line-art sketches from color images, so any illustration set becomes sketch/color training pairs.

Method (NumPy only; the sketch has the input's size):
1. Transparent pixels are composited over white; L = Rec. 709 luma (0..255) of the encoded RGB.
2. Ink: L < `dark_threshold` (default 64, a quarter of the range): outlines drawn in black or
   near-black, which most line-and-fill illustrations have.
3. Edges: the difference of Gaussians D = G(sigma) * L - G(1.6 sigma) * L (1.6 is the ratio at
   which a DoG approximates the Laplacian of Gaussian, Marr & Hildreth 1980). A pixel is an edge
   where D < -`edge_threshold` (default 5 luma levels): it is darker than its wider surroundings,
   i.e. it lies on the darker side of a boundary between two fills, so each boundary gives one
   thin line (the thresholded DoG at the core of XDoG, Winnemoeller et al. 2012). sigma defaults
   to 1 pixel per 256 pixels of the longer side, so lines scale with the image. Boundaries
   between fills of equal luma (red next to an equally bright green) give no edge.
4. The sketch is black (0) on ink or edge pixels and white (255) elsewhere, written as RGB PNG.

How well this recovers real line art is measured by `bench/sketch_extraction.py` (dark-line
IoU against OpenMoji's own line group).

Folder mode writes `<out>/<stem>.png` for every image of `--input` (not recursive), skipping
sketches already there unless `--overwrite`; each file is written to a temporary name and
renamed. An unreadable image is reported on its own line and skipped; the exit status is then 1.
Sketches of `<dir>/trainB/*.png` written to `<dir>/trainA/` give the layout that
`dataset_creation/sketch2pokemon.py --pairs-dir <dir>` assembles into a dataset.

    python dataset_creation/make_sketches.py --input my_art/trainB --out my_art/trainA
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dataset_creation.openmoji.colors import luma
from ldm.cli import ArgumentParser, finite_float, run_script
from ldm.image_io import ImageInputError, image_extensions, load_image, save_image_atomic

PROG = "make_sketches.py"
DOG_RATIO = 1.6  # sigma of the wide Gaussian / sigma of the narrow one
SIGMA_PER_256_PX = 1.0
MAX_PIXELS = 40_000_000


@dataclass(frozen=True)
class SketchSettings:
    dark_threshold: float = 64.0  # luma below which a pixel is ink
    edge_threshold: float = 5.0  # luma levels by which an edge pixel is darker than its surroundings
    sigma: float | None = None  # narrow Gaussian in pixels; None: 1 per 256 px of the longer side


def gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of (H, W) values -> float; kernel radius 3 sigma, edges replicated."""
    radius = max(1, int(np.ceil(3 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    h, w = x.shape
    rows = np.pad(x, ((0, 0), (radius, radius)), mode="edge")
    x = sum(t * rows[:, i : i + w] for i, t in enumerate(taps))
    cols = np.pad(x, ((radius, radius), (0, 0)), mode="edge")
    return sum(t * cols[i : i + h] for i, t in enumerate(taps))


def default_sigma(height: int, width: int) -> float:
    return SIGMA_PER_256_PX * max(height, width) / 256


def line_mask(rgb: np.ndarray, settings: SketchSettings = SketchSettings()) -> np.ndarray:
    """(H, W, 3) uint8 color image -> (H, W) bool: ink or DoG edge (see the module doc)."""
    lum = luma(rgb)
    sigma = settings.sigma or default_sigma(*lum.shape)
    dog = gaussian_blur(lum, sigma) - gaussian_blur(lum, DOG_RATIO * sigma)
    return (lum < settings.dark_threshold) | (dog < -settings.edge_threshold)


def make_sketch(rgb: np.ndarray, settings: SketchSettings = SketchSettings()) -> np.ndarray:
    """(H, W, 3) uint8 color image -> (H, W, 3) uint8 sketch: black lines on white."""
    sketch = np.full(rgb.shape, 255, dtype=np.uint8)
    sketch[line_mask(rgb, settings)] = 0
    return sketch


def list_images(folder: Path) -> list[Path]:
    extensions = image_extensions()
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in extensions)


def convert_folder(
    input_dir: str | Path,
    out_dir: str | Path,
    settings: SketchSettings = SketchSettings(),
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, list[str]]:
    """Write a sketch per image of `input_dir` to `out_dir/<stem>.png`.

    Returns {"written": [...], "skipped": [...] (already there), "failed": ["name: reason", ...]}.
    Raises ValueError for a missing input folder or one without images.
    """
    from tqdm import tqdm

    input_dir, out_dir = Path(input_dir), Path(out_dir)
    if not input_dir.is_dir():
        raise ValueError(f"input folder {input_dir} does not exist; give --input a folder of color images")
    images = list_images(input_dir)
    if not images:
        raise ValueError(f"{input_dir} holds no image files; give --input a folder of color images")
    stems = [p.stem for p in images]
    clash = sorted({s for s in stems if stems.count(s) > 1})
    if clash:
        raise ValueError(f"{input_dir} has several images named {clash[0]}.* ; sketches are <stem>.png, rename one")
    summary: dict[str, list[str]] = {"written": [], "skipped": [], "failed": []}
    for path in tqdm(images, desc="sketches", disable=not progress):
        target = out_dir / f"{path.stem}.png"
        if target.exists() and not overwrite:
            summary["skipped"].append(path.name)
            continue
        try:
            rgb = np.asarray(load_image(path, MAX_PIXELS))
        except ImageInputError as err:
            summary["failed"].append(str(err))
            continue
        save_image_atomic(Image.fromarray(make_sketch(rgb, settings)), target)
        summary["written"].append(path.name)
    return summary


def parse_args(argv: Iterable[str] | None = None) -> argparse.Namespace:
    defaults = SketchSettings()
    parser = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help="folder of color images")
    parser.add_argument("--out", required=True, help="folder for the sketches (<stem>.png, created)")
    parser.add_argument("--dark-threshold", type=finite_float, default=defaults.dark_threshold,
                        help="luma (0-255) below which a pixel is ink")  # fmt: skip
    parser.add_argument("--edge-threshold", type=finite_float, default=defaults.edge_threshold,
                        help="luma levels an edge pixel is darker than its surround (higher: fewer lines)")  # fmt: skip
    parser.add_argument("--sigma", type=finite_float, default=None,
                        help="narrow Gaussian of the DoG in px (default: 1 per 256 px of the longer side)")  # fmt: skip
    parser.add_argument("--overwrite", action="store_true", help="redo sketches that already exist")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(list(argv) if argv is not None else None)


def main(argv: Iterable[str] | None = None) -> int:
    args = parse_args(argv)
    if args.sigma is not None and args.sigma <= 0:
        raise ValueError(f"--sigma {args.sigma} must be positive")
    settings = SketchSettings(args.dark_threshold, args.edge_threshold, args.sigma)
    summary = convert_folder(args.input, args.out, settings, args.overwrite, progress=not args.no_progress)
    for line in summary["failed"]:
        print(f"{PROG}: skipped: {line}", file=sys.stderr)
    print(
        f"{args.out}: {len(summary['written'])} sketches written, {len(summary['skipped'])} already there, "
        f"{len(summary['failed'])} unreadable",
        file=sys.stderr,
    )
    return 1 if summary["failed"] else 0


def cli(argv: Iterable[str] | None = None) -> int:
    """Console entry point: a ValueError or OSError (missing folder, bad setting, unwritable output) exits 2."""
    return run_script(PROG, main, argv)


if __name__ == "__main__":
    sys.exit(cli())
