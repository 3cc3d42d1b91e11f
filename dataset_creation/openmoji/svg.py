"""SVG handling: parse, recolor, keep only the line art, hash the line art, rasterize, measure color areas.

Every OpenMoji SVG has a `<g id="line">` group (black strokes: the sketch) and fill groups
(`color`, `skin`, `hair`, `skin-shadow`, `color-foreground`, `line-supplement`) painted from
the palette (`colors.PALETTE`). Recoloring a fill color inside the SVG gives the exact image an
instruction asks for.
"""

from __future__ import annotations

import copy
import hashlib
import io
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping

import numpy as np
from PIL import Image

from dataset_creation.openmoji.colors import normalize_hex, rgb_to_hex

SVG_NS = "http://www.w3.org/2000/svg"
ET.register_namespace("", SVG_NS)

LINE_GROUP = "line"
# Attributes that carry a paint color; group-level values are inherited by children.
COLOR_ATTRIBUTES = ("fill", "stroke", "stop-color", "color")
ANALYSIS_SIZE = 64  # color areas are measured at 64 px whatever --size, so instructions do not depend on it


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
