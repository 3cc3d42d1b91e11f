"""Color science and names: the OpenMoji palette, hex parsing, CIELAB nearest-color naming, luma.

Color names: `PALETTE` names every fill color used in the set (a test checks this); a color
outside it is named after its nearest palette entry in CIELAB (Euclidean, D65).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

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


def luma(image: np.ndarray) -> np.ndarray:
    """Rec. 709 luma of 0..255 RGB (on the encoded values): (..., 3) -> (...)."""
    rgb = image.astype(np.float32)
    return 0.2126 * rgb[..., 0] + 0.7152 * rgb[..., 1] + 0.0722 * rgb[..., 2]
