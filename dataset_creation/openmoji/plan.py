"""What pairs to build: kinds, eligibility, splits, instruction templates and the plan of each emoji's pairs.

Pairs (each kind selectable with `--kinds`):
- original: sketch (only the line group rendered) -> original colors;
  "color it as a green dragon with red details" (main colors by rendered area).
- recolor:  sketch -> the SVG with every non-white, non-black fill color remapped one-to-one to
  another palette color; the instruction names the new colors ("make it a blue dragon with
  yellow details"). `--recolor-variants N` mappings per emoji.
- edit:     original color image -> the same image with one fill color changed
  ("turn the green parts purple"). `--recolor-variants N` edits per emoji.
Each choice (mapping, template) is drawn from `random.Random(f"{code}:{kind}:{variant}")`, so a
pair depends only on its emoji, kind and variant (not on `--limit` or on the other variants).

Which emojis give pairs: an emoji needs a remappable fill color (not white, not black) covering
at least `MIN_VISIBLE_PIXELS` pixels of the 64 px analysis render; the sketch kinds also need
a visible line group (some icons draw everything in fill groups). Skips are counted in the
manifest.

Split (the same for every kind): by emoji, never by pair. An emoji's group is the connected
component of (a) its code with skin-tone modifiers and FE0F removed and (b) its line group's
markup, so skin-tone variants and emojis with identical line art (e.g. every flag is a
rectangle) share one split: no test line art appears in training in any kind. The group's
key is the smallest such code; `sha256(key) % 100` gives train < 90 <= val < 95 <= test.
Groups are computed over the whole set, so `--limit` never moves an emoji to another split.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from dataset_creation.openmoji.colors import FIXED_COLORS, RECOLOR_TARGETS, color_name, luma
from dataset_creation.openmoji.naming import VS15, VS16, is_skin_tone, subject_name
from dataset_creation.openmoji.source import code_points

KINDS = ("original", "recolor", "edit")
SKETCH_KINDS = ("original", "recolor")
SPLITS = ("train", "val", "test")
SPLIT_PERCENT = {"train": 90, "val": 5, "test": 5}
MIN_VISIBLE_PIXELS = 6  # of 64 x 64: a color covering fewer pixels is not asked for
DETAIL_SHARE = 0.03  # a color is a "detail" when it covers >= 3% of the emoji's filled area
MAX_DETAILS = 2
# Bumped when the planning of pairs changes: records of older builds are redone.
PLAN_VERSION = 1

# --- splits ----------------------------------------------------------------------------------


def split_key(code: str) -> str:
    """The code without skin-tone modifiers and variation selectors: shared by skin-tone variants."""
    return "-".join(f"{cp:X}" for cp in code_points(code) if cp not in (VS16, VS15) and not is_skin_tone(cp))


def split_of_key(key: str) -> str:
    """train / val / test from sha256 of a group key (90 / 5 / 5)."""
    bucket = int(hashlib.sha256(key.encode()).hexdigest(), 16) % 100
    if bucket < SPLIT_PERCENT["train"]:
        return "train"
    return "val" if bucket < SPLIT_PERCENT["train"] + SPLIT_PERCENT["val"] else "test"


def assign_splits(codes: Sequence[str], signatures: Sequence[str]) -> dict[str, str]:
    """Split of every emoji: union of skin-tone-stripped codes and identical line art (see module doc)."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    for code, signature in zip(codes, signatures, strict=True):
        union("code:" + code, "key:" + split_key(code))
        union("code:" + code, "line:" + signature)
    group_key: dict[str, str] = {}
    for code in sorted(codes, key=code_points):
        root = find("code:" + code)
        group_key.setdefault(root, split_key(code))  # the group's first key in code-point order
    return {code: split_of_key(group_key[find("code:" + code)]) for code in codes}


# --- instructions ----------------------------------------------------------------------------

ORIGINAL_TEMPLATES = (
    "color it as {desc}",
    "colorize the sketch as {desc}",
    "turn this drawing into {desc}",
    "paint it as {desc}",
    "fill it in as {desc}",
)
RECOLOR_TEMPLATES = (
    "make it {desc}",
    "color the sketch as {desc}",
    "draw it as {desc}",
    "give it the colors of {desc}",
    "render it as {desc}",
)
EDIT_TEMPLATES = (
    "turn the {old} parts {new}",
    "make the {old} areas {new}",
    "change the {old} to {new}",
    "recolor the {old} parts {new}",
    "replace the {old} with {new}",
)
DETAIL_PHRASES = ("with {d} details", "with {d} accents", "with touches of {d}")


def main_colors(areas: Mapping[str, int]) -> tuple[str, list[str]]:
    """(main color name, detail names) by visible area.

    Main: the largest color other than white (white only when nothing else shows: a "white man
    cook" reads wrong); details: up to MAX_DETAILS more colors with >= DETAIL_SHARE of the
    filled area and a name of their own.
    """
    total = sum(areas.values())
    ranked = sorted(((n, h) for h, n in areas.items() if n > 0), key=lambda t: (-t[0], t[1]))
    if not ranked:
        raise ValueError("no visible fill color")
    first = next((i for i, (_, h) in enumerate(ranked) if h != "#FFFFFF"), 0)
    main = color_name(ranked[first][1])
    details: list[str] = []
    for n, h in ranked[:first] + ranked[first + 1 :]:
        name = color_name(h)
        if n >= DETAIL_SHARE * total and name != main and name not in details:
            details.append(name)
        if len(details) == MAX_DETAILS:
            break
    return main, details


def _article(phrase: str) -> str:
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


def describe(subject: str, areas: Mapping[str, int], rng: random.Random) -> str:
    """'a green dragon with red details' from the visible areas of each color."""
    main, details = main_colors(areas)
    phrase = f"{main} {subject}"
    if details:
        phrase += " " + rng.choice(DETAIL_PHRASES).format(d=" and ".join(details))
    return _article(phrase)


def remapped_areas(areas: Mapping[str, int], mapping: Mapping[str, str]) -> dict[str, int]:
    out: Counter[str] = Counter()
    for h, n in areas.items():
        out[mapping.get(h, h)] += n
    return dict(out)


@dataclass(frozen=True)
class PairPlan:
    """One pair before rendering: which images, which instruction."""

    pair_id: str
    kind: str
    variant: int
    edit: str
    input_caption: str
    output_caption: str
    input_mapping: dict[str, str] | None  # None: the sketch; else the color SVG recolored by it
    output_mapping: dict[str, str]


def remappable(areas: Mapping[str, int]) -> list[str]:
    """Fill colors that may be remapped: visible and neither white nor black (sorted)."""
    return sorted(h for h, n in areas.items() if h not in FIXED_COLORS and n >= MIN_VISIBLE_PIXELS)


def sketch_is_visible(sketch: np.ndarray) -> bool:
    """The line group draws something: at least 0.2% of the pixels (8 at 64 px) darker than mid-gray."""
    return int((luma(sketch) < 128).sum()) >= max(1, round(0.002 * sketch.shape[0] * sketch.shape[1]))


def plan_pairs(code: str, areas: Mapping[str, int], kinds: Sequence[str], variants: int) -> list[PairPlan]:
    """Every pair of one emoji for `kinds` (which kinds an emoji is eligible for: `build.process_emoji`).

    A recolor remaps every fill color but white and black, one-to-one where the palette allows;
    an edit changes one color that is visible (`remappable`).
    """
    subject = subject_name(code)
    colors = remappable(areas)
    recolored = sorted(h for h in areas if h not in FIXED_COLORS)
    visible = {h: n for h, n in areas.items() if n > 0}
    plans: list[PairPlan] = []
    if "original" in kinds:
        rng = random.Random(f"{code}:original:0")
        desc = describe(subject, visible, rng)
        plans.append(
            PairPlan(
                f"{code}_original", "original", 0, rng.choice(ORIGINAL_TEMPLATES).format(desc=desc),
                f"a line drawing of {_article(subject)}", desc, None, {},
            )
        )  # fmt: skip
    for variant in range(variants if "recolor" in kinds else 0):
        rng = random.Random(f"{code}:recolor:{variant}")
        mapping: dict[str, str] = {}
        for h in recolored:
            others = [t for t in RECOLOR_TARGETS if t != h]
            mapping[h] = rng.choice([t for t in others if t not in mapping.values()] or others)
        desc = describe(subject, remapped_areas(visible, mapping), rng)
        plans.append(
            PairPlan(
                f"{code}_recolor{variant}", "recolor", variant, rng.choice(RECOLOR_TEMPLATES).format(desc=desc),
                f"a line drawing of {_article(subject)}", desc, None, mapping,
            )
        )  # fmt: skip
    for variant in range(variants if "edit" in kinds else 0):
        rng = random.Random(f"{code}:edit:{variant}")
        old = rng.choice(colors)
        new = rng.choice([t for t in RECOLOR_TARGETS if t != old])
        template = rng.choice(EDIT_TEMPLATES)
        before = describe(subject, visible, random.Random(f"{code}:original:0"))
        after = describe(subject, remapped_areas(visible, {old: new}), random.Random(f"{code}:original:0"))
        plans.append(
            PairPlan(
                f"{code}_edit{variant}", "edit", variant, template.format(old=color_name(old), new=color_name(new)),
                before, after, {}, {old: new},
            )
        )  # fmt: skip
    return plans
