"""How well `dataset_creation/make_sketches.py` recovers line art: dark-line IoU against OpenMoji's own.

OpenMoji gives exact ground truth: each SVG's `<g id="line">` group is the artist's line art.
For N emojis (a fixed random sample, seed 0, of those whose line group draws something) this
renders the color image and the line group alone at `--size` px, extracts a sketch from the
color image, and scores it with `metrics.colorization.score` (IoU of the luma < 48 masks).

Rows:
- make_sketches (ink + DoG edges): the default method, from the full color render.
- ink only / DoG edges only: the method's two parts alone.
- color render as its own sketch: no extraction, the metric's dark mask of the color image
  (OpenMoji draws its lines in black, so this is what "just take the dark pixels" gives).
- make_sketches on fills only: the color render without its line group, i.e. an illustration
  with no drawn outlines; only the edges can find lines there, one or two pixels wide against
  strokes about 7 px wide at 256 px, so this row is low by construction.

Usage: python bench/sketch_extraction.py [--count 200] [--size 256]
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dataset_creation.make_sketches import SketchSettings, make_sketch
from dataset_creation.openmoji.plan import sketch_is_visible
from dataset_creation.openmoji.source import list_emojis, openmoji_svg_dir
from dataset_creation.openmoji.svg import LINE_GROUP, line_only, parse_svg, render
from metrics.colorization import Truth, line_mask, score

ROOT = Path(__file__).resolve().parents[1]

NEVER = -1.0  # a dark threshold no luma is below
OFF = float("inf")  # an edge threshold no DoG value is below


def without_line_group(root):
    out = copy.deepcopy(root)
    for child in list(out):
        if child.get("id") == LINE_GROUP:
            out.remove(child)
    return out


def render_sample(count: int, size: int) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """(code, color render, fills-only render, line-group render), each (size, size, 3) uint8."""
    svg_dir = openmoji_svg_dir()
    codes = list_emojis(svg_dir)
    random.Random(0).shuffle(codes)
    sample = []
    for code in codes:
        root = parse_svg((svg_dir / f"{code}.svg").read_text(encoding="utf-8"))
        lines = render(line_only(root), size)
        if sketch_is_visible(lines):
            sample.append((code, render(root, size), render(without_line_group(root), size), lines))
        if len(sample) == count:
            break
    return sample


def as_sketch(mask: np.ndarray) -> np.ndarray:
    sketch = np.full((*mask.shape, 3), 255, dtype=np.uint8)
    sketch[mask] = 0
    return sketch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200, help="emojis in the sample")
    parser.add_argument("--size", type=int, default=256, help="render size in pixels")
    args = parser.parse_args()

    start = time.perf_counter()
    sample = render_sample(args.count, args.size)
    print(f"rendered {len(sample)} emojis at {args.size} px in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    truths = [Truth(lines) for _, _, _, lines in sample]
    defaults = SketchSettings()
    rows: dict[str, tuple[int, Callable[[np.ndarray], np.ndarray]]] = {
        "make_sketches (ink + DoG edges)": (1, lambda im: make_sketch(im, defaults)),
        f"ink only (luma < {defaults.dark_threshold:g})": (1, lambda im: make_sketch(im, SketchSettings(
            defaults.dark_threshold, OFF))),
        f"DoG edges only (threshold {defaults.edge_threshold:g})": (1, lambda im: make_sketch(im, SketchSettings(
            NEVER, defaults.edge_threshold))),
        "color render as its own sketch": (1, lambda im: as_sketch(line_mask(im))),
        "make_sketches on fills only (no drawn lines)": (2, lambda im: make_sketch(im, defaults)),
    }  # fmt: skip
    print("| method | mean line IoU | median | min | ms / image (incl. scoring) |\n| --- | --- | --- | --- | --- |")
    for name, (column, method) in rows.items():
        start = time.perf_counter()
        ious = [score(method(item[column]), truth)["line_iou"] for item, truth in zip(sample, truths, strict=True)]
        ms = 1000 * (time.perf_counter() - start) / len(sample)
        print(f"| {name} | {statistics.mean(ious):.3f} | {statistics.median(ious):.3f} | {min(ious):.3f} | {ms:.0f} |")


if __name__ == "__main__":
    main()
