"""Index a generated dataset: write `<root>/seeds.json` so training never walks the tree.

    python dataset_creation/prepare_dataset.py data/pairs

A prompt folder is `<root>/<name>/` (names starting with "." are skipped: `.partial` folders of
a running or killed `generate_img_dataset.py`) holding a `prompt.json` object with a string
"edit" and at least one complete pair `{seed}_0.jpg` + `{seed}_1.jpg` (`.png` accepted for
either, as EditDataset reads). seeds.json lists `[name, [seed, ...]]` for every such folder,
sorted by name, seeds in increasing order (integer seeds as numbers, others, such as "007", as
strings so that `{seed}_0.jpg` names the file):
EditDataset's format. It is written to a temporary file and renamed, so a reader never sees
half of it.

Folders that do not qualify are counted by reason on stderr (a folder with no pair is normal:
no candidate passed the CLIP filter). Exit status 1, with one line, when the root is not a
folder or no folder qualifies (then seeds.json is left as it was).
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from ldm.cli import ArgumentParser, UsageError, run_cli
from ldm.io import write_text_atomic

PROG = "prepare_dataset.py"
IMAGE_SUFFIXES = (".jpg", ".png")


def pair_seeds(folder: Path) -> list[int | str]:
    """Seeds with both `{seed}_0` and `{seed}_1` images in `folder`, integers first in numeric order."""
    stems = {p.stem for p in folder.iterdir() if p.suffix in IMAGE_SUFFIXES and p.is_file()}
    seeds = [stem[:-2] for stem in stems if stem.endswith("_0") and f"{stem[:-2]}_1" in stems and stem[:-2]]
    parsed = [int(s) if s.isdigit() and str(int(s)) == s else s for s in seeds]  # "007" stays a string
    return sorted(parsed, key=lambda s: (isinstance(s, str), s))


def has_instruction(folder: Path) -> bool:
    """Whether `folder/prompt.json` is a JSON object with a string "edit"."""
    try:
        prompt = json.loads((folder / "prompt.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(prompt, dict) and isinstance(prompt.get("edit"), str)


def scan(root: Path) -> tuple[list[list], Counter]:
    """(seeds.json entries, skipped folders counted by reason)."""
    entries: list[list] = []
    skipped: Counter = Counter()
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if folder.name.startswith("."):
            skipped["hidden or unfinished (.partial)"] += 1
        elif not has_instruction(folder):
            skipped['no prompt.json with an "edit" string'] += 1
        elif not (seeds := pair_seeds(folder)):
            skipped["no complete {seed}_0 / {seed}_1 pair"] += 1
        else:
            entries.append([folder.name, seeds])
    return entries, skipped


def run(root: Path) -> str:
    """Write root/seeds.json; returns the summary line."""
    if not root.is_dir():
        raise UsageError(f"{root}: not a folder (give the --out folder of generate_img_dataset.py)")
    entries, skipped = scan(root)
    if not entries:
        raise UsageError(f"{root}: no prompt folder has prompt.json and a complete pair; nothing to index")
    write_text_atomic(root / "seeds.json", json.dumps(entries) + "\n")
    for reason, count in sorted(skipped.items()):
        print(f"{PROG}: skipped {count} folder(s): {reason}", file=sys.stderr)
    pairs = sum(len(seeds) for _, seeds in entries)
    return f"{root / 'seeds.json'}: {len(entries)} prompts, {pairs} pairs"


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog=PROG, description="Write seeds.json for a generated edit dataset.")
    parser.add_argument("root", help="dataset folder (one sub-folder per prompt)")
    args = parser.parse_args(argv)

    def index() -> int:
        print(run(Path(args.root)))
        return 0

    return run_cli(PROG, index)


if __name__ == "__main__":
    sys.exit(main())
