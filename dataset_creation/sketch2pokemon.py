"""Assemble Sketch2Pokemon sketch/color pairs and BLIP captions into an instruction-editing dataset.

Sources (either the first two together, or the third):
- Sketch/color pairs (`--pairs-dir`): the Kaggle dataset "Sketch2Pokemon" (norod78/sketch2pokemon),
  `trainA/` sketches and `trainB/` color images, 256x256 PNG, paired by file stem (826 pairs).
  `--pairs-dir` is the folder holding trainA/ and trainB/, or any folder above them (the one
  pair of such folders below it is used).
- Captions (`--captions`): the Hugging Face dataset svjack/pokemon-blip-captions-en-ja (or -en-zh,
  or their source lambdalabs/pokemon-blip-captions), 833 rows of image + English text: the
  parquet file (column `image` = {bytes, path}, text in `en_text`, or `text`) or a CSV export
  whose image column holds file paths relative to the CSV.
- The seed project's own CSV (`--pairs-csv`): one row per pair with sketch path, color path and
  caption (columns found by name, see `CSV_COLUMNS`; paths relative to the CSV).

Matching captions to color images by content (file names differ between the sources): every
image becomes a descriptor: composited over white, cropped to its content (the box of pixels
with a channel below 200, so faint JPEG ringing in a white margin does not move the box),
padded to a white square, box-filtered to 16 x 16, RGB in [0, 1] (768 values). The distance of
two images is the RMS difference of their descriptors: re-encoding, resizing and a different
margin barely change it (JPEG at quality 75 + 2.5x resize + margin: at most 0.03 on the test
fixture), a small added detail (a dot 1/16 of the width across) moves it by 0.03-0.05, and
different pictures are far apart (> 0.25). Pairs are taken one-to-one in order of increasing distance, up to
`--max-distance` (default 0.06), so a near-duplicate never takes a caption from the closer
true match. Color images left without
a caption are reported by name (stderr and manifest) and skipped, or captioned with a local
BLIP model when `--caption-model` is given (see caption.py; its records are kept in
`<out>/blip_captions.jsonl`, so a rerun does not caption again).

Instructions: the caption's lead-in ("a drawing of", "a cartoon of", "a close up of", ...) is cut
to a description, which fills one of `TEMPLATES` chosen per pair with random.Random(pair_id):
"a drawing of a green pokemon with red eyes" -> "color it as a green pokemon with red eyes" or
"turn it into a drawing of a green pokemon with red eyes". A caption that already is an
instruction ("turn it into ...", as in the seed's CSV) is kept as it is. prompt.json keeps the
original caption.

Split: pairs ranked by sha256(pair_id); the first round(5%) (at least one when there are three
pairs or more) are val, the next as many test, the rest train (`--val-percent`, `--test-percent`).

Layout written under `--out` (as python -m dataset_creation.openmoji):

    manifest.json                  counts, matching report (unmatched names, distances), sources
    train.csv, val.csv, test.csv   pair_id, input_image, edited_image, edit, caption, split
                                   (paths relative to <out>; PairsCSVDataset)
    <split>/seeds.json             [[pair_id, [0]], ...]  (EditDataset)
    <split>/<pair_id>/prompt.json  {"edit", "input", "output", "caption", "caption_source", ...}
    <split>/<pair_id>/0_0.png      sketch, RGB
    <split>/<pair_id>/0_1.png      color image, RGB (alpha over white)

Every file is written to a temporary name and renamed; the indexes (seeds.json, CSVs,
manifest) last. Licenses: the Pokemon images are Nintendo / Game Freak property; the caption
dataset is CC BY-NC-SA 4.0 (non-commercial research use).

    python dataset_creation/sketch2pokemon.py --pairs-dir data/sketch2pokemon-kaggle \\
        --captions data/pokemon-blip-captions-en-ja.parquet --out data/sketch2pokemon
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import random
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ldm.cli import ArgumentParser, finite_float, run_script
from ldm.image_io import ImageInputError, decode_image, image_extensions, load_image
from ldm.io import write_bytes_atomic

PROG = "sketch2pokemon.py"
SPLITS = ("train", "val", "test")
SEED = 0  # the single seed of every pair folder: files 0_0.png / 0_1.png
DESCRIPTOR_SIDE = 16
CONTENT_MAX = 200  # a pixel with a channel below this is content (for the crop box)
MAX_DISTANCE = 0.06
TEXT_COLUMNS = ("en_text", "text", "caption")  # first present is the caption (Hugging Face exports)
CSV_COLUMNS = {  # the seed's CSV: first present name of each role
    "sketch": ("sketch", "sketch_path", "sketch_image", "input_image", "original_image"),
    "color": ("color", "color_path", "color_image", "edited_image", "colored_image"),
    "caption": ("caption", "text", "en_text", "edit_prompt", "edit"),
}
TEMPLATES = (
    "color it as {desc}",
    "turn it into a drawing of {desc}",
    "colorize it as {desc}",
    "paint it as {desc}",
    "make it {desc}",
)
_LEAD_IN = re.compile(
    r"^(?:an?\s+)?(?:(?:black and white|colou?red|cartoon|digital|simple|small|cute)\s+)*"
    r"(?:drawing|picture|image|illustration|painting|cartoon|sketch|close up|closeup|photo|render(?:ing)?)\s+of\s+",
    re.IGNORECASE,
)
_INSTRUCTION = re.compile(r"^(?:turn it into|color it|colour it|colorize it|paint it|make it)\b", re.IGNORECASE)
_INSTRUCTION_LEAD = re.compile(r"^(?:turn it into|(?:color|colour|colorize|paint) it as|make it)\s+", re.IGNORECASE)


class UserError(ValueError):
    """A mistake in the arguments or source files; the message names the file or option and the fix."""


# --- captions -> instructions --------------------------------------------------------------------


def describe(caption: str) -> str:
    """The caption without its lead-in: "a drawing of a green pokemon" -> "a green pokemon" (also after
    an instruction's verb: "turn it into a drawing of a cat" -> "a cat")."""
    caption = " ".join(caption.split()).strip(" .")
    text = _LEAD_IN.sub("", _INSTRUCTION_LEAD.sub("", caption))
    return text or caption


def to_instruction(caption: str, pair_id: str) -> str:
    """An editing instruction from a caption; the template is drawn with random.Random(pair_id)."""
    caption = " ".join(caption.split()).strip(" .")
    if _INSTRUCTION.match(caption):
        return caption
    return random.Random(pair_id).choice(TEMPLATES).format(desc=describe(caption))


# --- matching by content -------------------------------------------------------------------------


def descriptor(image: Image.Image) -> np.ndarray:
    """RGB image -> (768,) float32 in [0, 1]: its content box, padded square, box-filtered to 16 x 16."""
    rgb = np.asarray(image.convert("RGB"))
    ys, xs = np.nonzero(rgb.min(axis=-1) < CONTENT_MAX)
    if len(ys):
        rgb = rgb[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    h, w = rgb.shape[:2]
    side = max(h, w)
    square = np.full((side, side, 3), 255, dtype=np.uint8)
    square[(side - h) // 2 : (side - h) // 2 + h, (side - w) // 2 : (side - w) // 2 + w] = rgb
    small = Image.fromarray(square).resize((DESCRIPTOR_SIDE, DESCRIPTOR_SIDE), Image.Resampling.BOX)
    return (np.asarray(small, dtype=np.float32) / 255.0).reshape(-1)


def distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """RMS distance between descriptor rows: (N, D), (M, D) -> (N, M)."""
    squared = (a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(squared, 0.0) / a.shape[1])


def match(dist: np.ndarray, max_distance: float) -> dict[int, tuple[int, float]]:
    """One-to-one matching, greedy by increasing distance: {row: (column, distance)} for distances <= max."""
    rows, cols = np.nonzero(dist <= max_distance)
    order = np.argsort(dist[rows, cols], kind="stable")
    matched: dict[int, tuple[int, float]] = {}
    used: set[int] = set()
    for r, c in zip(rows[order].tolist(), cols[order].tolist(), strict=True):
        if r not in matched and c not in used:
            matched[r] = (c, float(dist[r, c]))
            used.add(c)
    return matched


# --- reading the sources -------------------------------------------------------------------------


@dataclass
class Pair:
    pair_id: str
    sketch: Path
    color: Path
    caption: str | None = None
    caption_source: str | None = None  # "matched" (content match), "blip", "csv"
    extra: dict[str, Any] = field(default_factory=dict)  # match details for prompt.json (caption_row, distance)


def open_rgb(source: str | Path | bytes, name: str) -> Image.Image:
    """Decode a file or bytes with the model's loader (`ldm.image_io.load_image`: upright RGB, alpha over
    white); UserError naming `name` if unreadable."""
    try:
        return decode_image(source, name) if isinstance(source, bytes) else load_image(source)
    except ImageInputError as err:
        raise UserError(f"{name}: {err.reason}; remove or replace it") from err


def find_pair_folders(root: Path) -> tuple[Path, Path]:
    """(trainA, trainB) directly under `root` or in the one folder below it that has both."""
    if not root.is_dir():
        raise UserError(f"--pairs-dir {root} does not exist; give the folder holding trainA/ and trainB/")
    found = sorted(a.parent for a in root.rglob("trainA") if a.is_dir() and (a.parent / "trainB").is_dir())
    if not found:
        raise UserError(f"--pairs-dir {root} has no trainA/ and trainB/ folders side by side; unpack the Kaggle "
                        "zip there")  # fmt: skip
    if len(found) > 1:
        raise UserError(f"--pairs-dir {root} has several trainA/trainB pairs ({', '.join(map(str, found[:3]))}); "
                        "give one of them")  # fmt: skip
    return found[0] / "trainA", found[0] / "trainB"


def images_by_stem(folder: Path) -> dict[str, Path]:
    extensions = image_extensions()
    return {p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in extensions}


def read_folder_pairs(root: Path) -> tuple[list[Pair], list[str]]:
    """Pairs of trainA/trainB by file stem, and the names found on one side only."""
    sketch_dir, color_dir = find_pair_folders(root)
    sketches, colors = images_by_stem(sketch_dir), images_by_stem(color_dir)
    pairs = [Pair(stem, sketches[stem], colors[stem]) for stem in sorted(sketches.keys() & colors.keys())]
    if not pairs:
        raise UserError(f"{sketch_dir} and {color_dir} share no file names; sketches and colors pair by name")
    one_sided = sorted(f"{d.name}/{p.name}" for d, side, other in ((sketch_dir, sketches, colors),
                       (color_dir, colors, sketches)) for s, p in side.items() if s not in other)  # fmt: skip
    return pairs, one_sided


def pick_column(present: Sequence[str], wanted: str | None, candidates: Sequence[str], what: str, source: Path) -> str:
    if wanted is not None:
        if wanted not in present:
            raise UserError(f"{source} has no column {wanted!r} ({what}); columns present: {', '.join(present)}")
        return wanted
    for name in candidates:
        if name in present:
            return name
    raise UserError(f"{source} has no {what} column (looked for {', '.join(candidates)}); columns present: "
                    f"{', '.join(present) or 'none'}; name it with the matching --*-column option")  # fmt: skip


def read_captions(path: Path, image_column: str, text_column: str | None) -> list[tuple[str, np.ndarray, str]]:
    """(row name, image descriptor, caption) of each row of a Hugging Face parquet or CSV caption file."""
    if not path.is_file():
        raise UserError(f"--captions {path} does not exist; give the parquet (or CSV) of the caption dataset")
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except (OSError, ValueError) as err:
            raise UserError(f"{path} is not a readable parquet file ({err})") from err
        rows, folder = table.to_pylist(), path.parent
        present = table.column_names
    elif path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows, present = list(reader), list(reader.fieldnames or [])
        folder = path.parent
    else:
        raise UserError(f"--captions {path}: expected a .parquet or .csv file")
    image_column = pick_column(present, image_column, (), "image", path)
    text_column = pick_column(present, text_column, TEXT_COLUMNS, "caption text", path)
    out = []
    for i, row in enumerate(rows):
        value, name = row[image_column], f"{path.name} row {i}"
        if isinstance(value, dict):  # datasets' Image feature: {"bytes": ..., "path": ...}
            source = value.get("bytes") or (folder / value["path"] if value.get("path") else None)
            name = f"{name} ({value.get('path') or 'embedded image'})"
        else:
            source = value if isinstance(value, bytes) else folder / str(value) if value else None
        if source is None:
            raise UserError(f"{name} has no image in column {image_column!r}")
        out.append((name, descriptor(open_rgb(source, name)), str(row[text_column] or "")))
    return out


def read_pairs_csv(path: Path, columns: dict[str, str | None]) -> list[Pair]:
    """Pairs of the seed's CSV (sketch path, color path, caption); paths relative to the CSV."""
    if not path.is_file():
        raise UserError(f"--pairs-csv {path} does not exist; give the CSV of sketch path, color path, caption")
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        rows, present = list(reader), list(reader.fieldnames or [])
    chosen = {role: pick_column(present, columns.get(role), CSV_COLUMNS[role], role, path) for role in CSV_COLUMNS}
    pairs, ids = [], set()
    for i, row in enumerate(rows):
        color = path.parent / row[chosen["color"]]
        pair_id = color.stem if color.stem not in ids else f"{color.stem}_{i}"
        ids.add(pair_id)
        pairs.append(Pair(pair_id, path.parent / row[chosen["sketch"]], color, row[chosen["caption"]] or "", "csv"))
    if not pairs:
        raise UserError(f"{path} has no rows")
    return pairs


# --- assembling ----------------------------------------------------------------------------------


def attach_matched_captions(pairs: list[Pair], captions: list[tuple[str, np.ndarray, str]], max_distance: float,
                            progress: bool) -> dict[str, Any]:  # fmt: skip
    """Give each pair the caption whose image matches its color image; returns the matching report."""
    from tqdm import tqdm

    colors = np.stack([descriptor(open_rgb(p.color, str(p.color))) for p in tqdm(pairs, desc="color images",
                                                                                  disable=not progress)])  # fmt: skip
    sources = np.stack([d for _, d, _ in captions])
    dist = distances(colors, sources)  # (pairs, caption rows)
    matched = match(dist, max_distance)
    for row, (col, d) in matched.items():
        pairs[row].caption, pairs[row].caption_source = captions[col][2], "matched"
        pairs[row].extra = {"caption_row": captions[col][0], "match_distance": round(d, 4)}
    accepted = sorted(d for _, d in matched.values())
    unmatched_rows = [r for r in range(len(pairs)) if r not in matched]
    return {
        "method": f"RMS distance of {DESCRIPTOR_SIDE}x{DESCRIPTOR_SIDE} RGB thumbnails of the content box, "
        "one-to-one greedy by increasing distance",
        "max_distance": max_distance,
        "caption_rows": len(captions),
        "matched": len(matched),
        "unused_caption_rows": len(captions) - len(matched),
        "distance_accepted_median": round(float(np.median(accepted)), 4) if accepted else None,
        "distance_accepted_max": round(accepted[-1], 4) if accepted else None,
        "unmatched": [
            {"color_image": pairs[r].color.name, "nearest_distance": round(float(dist[r].min()), 4)}
            for r in unmatched_rows
        ],
    }


def caption_with_blip(pairs: list[Pair], model_dir: Path, out: Path, batch_size: int, progress: bool) -> None:
    """Caption the color images of pairs without a caption (records kept in <out>/blip_captions.jsonl)."""
    from dataset_creation.caption import Captioner, caption_items

    todo = [p for p in pairs if p.caption is None]
    if not todo:
        return
    items = [(f"{p.color.parent.name}/{p.color.name}", p.color) for p in todo]
    result = caption_items(Captioner(model_dir), items, out / "blip_captions.jsonl", batch_size, progress=progress)
    for pair, (key, _) in zip(todo, items, strict=True):
        if key in result["records"]:
            pair.caption, pair.caption_source = result["records"][key]["caption"], "blip"


def split_pairs(pair_ids: Sequence[str], val_percent: float, test_percent: float) -> dict[str, str]:
    """pair_id -> split: ranked by sha256(pair_id), val first, then test, the rest train."""
    if val_percent < 0 or test_percent < 0 or val_percent + test_percent >= 100:
        raise UserError(f"--val-percent {val_percent} and --test-percent {test_percent} must be >= 0 and leave "
                        "room for train")  # fmt: skip
    n = len(pair_ids)

    def count(percent: float) -> int:
        return max(1, round(n * percent / 100)) if percent > 0 and n >= 3 else round(n * percent / 100)

    ranked = sorted(pair_ids, key=lambda p: hashlib.sha256(p.encode()).hexdigest())
    n_val, n_test = count(val_percent), count(test_percent)
    return {p: "val" if i < n_val else "test" if i < n_val + n_test else "train" for i, p in enumerate(ranked)}


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def write_pair(out: Path, split: str, pair: Pair, size: int | None) -> dict[str, str]:
    """Write one pair folder; returns its CSV row."""
    folder = out / split / pair.pair_id
    color = open_rgb(pair.color, str(pair.color))
    sketch = open_rgb(pair.sketch, str(pair.sketch))
    target = (size, size) if size else color.size
    color = color if color.size == target else color.resize(target, Image.Resampling.LANCZOS)
    sketch = sketch if sketch.size == target else sketch.resize(target, Image.Resampling.LANCZOS)
    edit = to_instruction(pair.caption or "", pair.pair_id)
    desc = describe(pair.caption or "")
    write_bytes_atomic(folder / f"{SEED}_0.png", png_bytes(sketch))
    write_bytes_atomic(folder / f"{SEED}_1.png", png_bytes(color))
    prompt = {
        "edit": edit, "input": f"a line drawing of {desc}", "output": pair.caption, "caption": pair.caption,
        "caption_source": pair.caption_source, "pair_id": pair.pair_id, "split": split,
        "sketch_file": pair.sketch.name, "color_file": pair.color.name, **pair.extra,
    }  # fmt: skip
    write_bytes_atomic(folder / "prompt.json", (json.dumps(prompt, indent=1, ensure_ascii=False) + "\n").encode())
    return {
        "pair_id": pair.pair_id, "input_image": f"{split}/{pair.pair_id}/{SEED}_0.png",
        "edited_image": f"{split}/{pair.pair_id}/{SEED}_1.png", "edit": edit, "caption": pair.caption or "",
        "split": split,
    }  # fmt: skip


CSV_FIELDS = ("pair_id", "input_image", "edited_image", "edit", "caption", "split")


def write_indexes(out: Path, rows: list[dict[str, str]]) -> dict[str, Any]:
    """seeds.json per split folder and a CSV per split; returns the manifest's "splits" entry."""
    splits = {}
    for split in SPLITS:
        split_rows = [r for r in rows if r["split"] == split]
        (out / split).mkdir(parents=True, exist_ok=True)
        seeds = [[r["pair_id"], [SEED]] for r in split_rows]
        write_bytes_atomic(out / split / "seeds.json", (json.dumps(seeds) + "\n").encode())
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(split_rows)
        write_bytes_atomic(out / f"{split}.csv", buffer.getvalue().encode())
        fractions = [1.0 if s == split else 0.0 for s in SPLITS]
        splits[split] = {
            "pairs": len(split_rows), "csv": f"{split}.csv", "folder": split,
            "edit_dataset": {"path": split, "split": split, "splits": fractions},
            "pairs_csv_dataset": {"csv_path": f"{split}.csv", "split": split},
        }  # fmt: skip
    return splits


@dataclass
class BuildOptions:
    out: Path
    pairs_dir: Path | None = None
    captions: Path | None = None
    pairs_csv: Path | None = None
    image_column: str = "image"
    text_column: str | None = None
    csv_columns: dict[str, str | None] = field(default_factory=dict)
    max_distance: float = MAX_DISTANCE
    caption_model: Path | None = None
    caption_batch_size: int = 8
    size: int | None = None
    val_percent: float = 5.0
    test_percent: float = 5.0
    progress: bool = True


def gather(options: BuildOptions) -> tuple[list[Pair], dict[str, Any]]:
    """The pairs with their captions (before writing) and the sources part of the manifest."""
    if options.pairs_csv is not None:
        if options.pairs_dir is not None or options.captions is not None or options.caption_model is not None:
            raise UserError("give either --pairs-csv, or --pairs-dir with --captions / --caption-model, not both")
        pairs = read_pairs_csv(options.pairs_csv, options.csv_columns)
        return pairs, {"pairs_csv": str(options.pairs_csv), "matching": None, "one_sided_files": []}
    if options.pairs_dir is None:
        raise UserError("give --pairs-dir (trainA/trainB folders) with --captions, or --pairs-csv")
    pairs, one_sided = read_folder_pairs(options.pairs_dir)
    report = None
    if options.captions is not None:
        captions = read_captions(options.captions, options.image_column, options.text_column)
        report = attach_matched_captions(pairs, captions, options.max_distance, options.progress)
    elif options.caption_model is None:
        raise UserError("give --captions (the caption dataset file) or --caption-model (a local BLIP folder)")
    if options.caption_model is not None:
        caption_with_blip(pairs, options.caption_model, options.out, options.caption_batch_size, options.progress)
    return pairs, {"pairs_dir": str(options.pairs_dir), "captions": str(options.captions), "matching": report,
                   "one_sided_files": one_sided}  # fmt: skip


def build(options: BuildOptions) -> dict[str, Any]:
    """Write the dataset under `options.out`; returns the manifest."""
    from tqdm import tqdm

    if options.size is not None and options.size < 8:
        raise UserError(f"--size {options.size} is too small (>= 8)")
    pairs, sources = gather(options)
    captioned = [p for p in pairs if p.caption]
    uncaptioned = sorted(p.color.name for p in pairs if not p.caption)
    if not captioned:
        raise UserError("no pair got a caption; check --captions / --max-distance, or caption with --caption-model")
    split_of = split_pairs([p.pair_id for p in captioned], options.val_percent, options.test_percent)
    out = options.out
    out.mkdir(parents=True, exist_ok=True)
    rows = [write_pair(out, split_of[p.pair_id], p, options.size)
            for p in tqdm(captioned, desc="pairs", disable=not options.progress)]  # fmt: skip
    manifest = {
        "dataset": "sketch2pokemon", "pairs": len(rows), "splits": write_indexes(out, rows),
        "caption_sources": {s: sum(p.caption_source == s for p in captioned) for s in ("matched", "blip", "csv")},
        "skipped_without_caption": uncaptioned, **sources,
        "split_rule": "pairs ranked by sha256(pair_id): first round(val%) val, next round(test%) test, rest train "
        "(at least one each when there are three pairs or more)",
        "templates": list(TEMPLATES), "image_format": "PNG, RGB, 0_0.png sketch, 0_1.png color image, seed 0",
        "size": options.size,
        "licenses": "Pokemon images: Nintendo / Creatures / Game Freak; captions (pokemon-blip-captions): "
        "CC BY-NC-SA 4.0, non-commercial use",
    }  # fmt: skip
    write_bytes_atomic(out / "manifest.json", (json.dumps(manifest, indent=1, ensure_ascii=False) + "\n").encode())
    return manifest


def parse_args(argv: Iterable[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--pairs-dir", type=Path, help="folder holding trainA/ (sketches) and trainB/ (colors)")
    parser.add_argument("--captions", type=Path, help="caption dataset: .parquet (image + en_text) or .csv")
    parser.add_argument("--pairs-csv", type=Path, help="instead: CSV of sketch path, color path, caption")
    parser.add_argument("--image-column", default="image", help="image column of --captions")
    parser.add_argument("--text-column", default=None, help=f"caption column (default: first of {TEXT_COLUMNS})")
    for role in CSV_COLUMNS:
        parser.add_argument(f"--{role}-column", default=None, help=f"{role} column of --pairs-csv")
    parser.add_argument("--max-distance", type=finite_float, default=MAX_DISTANCE,
        help="largest accepted match distance")
    parser.add_argument("--caption-model", type=Path, help="local BLIP folder: caption color images left unmatched")
    parser.add_argument("--caption-batch-size", type=int, default=8, help="images per BLIP batch")
    parser.add_argument("--size", type=int, default=None, help="resize both images to SIZE x SIZE (default: keep)")
    parser.add_argument("--val-percent", type=finite_float, default=5.0, help="share of pairs in val")
    parser.add_argument("--test-percent", type=finite_float, default=5.0, help="share of pairs in test")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser.parse_args(list(argv) if argv is not None else None)


def main(argv: Iterable[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    options = BuildOptions(
        out=args.out, pairs_dir=args.pairs_dir, captions=args.captions, pairs_csv=args.pairs_csv,
        image_column=args.image_column, text_column=args.text_column,
        csv_columns={role: getattr(args, f"{role}_column") for role in CSV_COLUMNS},
        max_distance=args.max_distance, caption_model=args.caption_model,
        caption_batch_size=args.caption_batch_size, size=args.size, val_percent=args.val_percent,
        test_percent=args.test_percent, progress=not args.no_progress,
    )  # fmt: skip
    manifest = build(options)
    for name in manifest["skipped_without_caption"]:
        print(f"{PROG}: no caption for {name}; pair skipped (manifest.json 'matching' lists distances)",
              file=sys.stderr)  # fmt: skip
    for name in manifest["one_sided_files"]:
        print(f"{PROG}: {name} has no partner of the same name; skipped", file=sys.stderr)
    counts = ", ".join(f"{s} {manifest['splits'][s]['pairs']}" for s in SPLITS)
    print(f"{args.out}: {manifest['pairs']} pairs ({counts})", file=sys.stderr)
    return manifest


def cli(argv: Iterable[str] | None = None) -> int:
    """Console entry point: a ValueError or OSError (missing or unreadable sources, bad options) exits 2."""
    return run_script(PROG, main, argv)


if __name__ == "__main__":
    sys.exit(cli())
