"""Editing datasets: the InstructPix2Pix folder layout and a CSV of sketch/color pairs.

Both yield the sample format the editing model trains on:
`{"edited": (3, H, W), "edit": {"c_concat": (3, H, W) input image, "c_crossattn": instruction}}`,
images float32 in [-1, 1], augmented by `PairedTransform` (same resize, crop and flip for
both images).

Randomness: a dataset is indexed either by an `(index, seed)` pair (what
`ldm.data.sampler.ResumableSampler` yields) or by a plain int. Every random choice of a
sample (EditDataset's seed folder, resize size, crop window, flip) is drawn from a
`torch.Generator` seeded with that seed, so `dataset[(i, s)]` is the same tensor whatever
the global RNG, the DataLoader workers or the call order. A plain int index draws the seed
from torch's global RNG first (so `torch.manual_seed` makes plain use reproducible).

Unreadable files: with `on_bad_image="skip"` a sample whose image or prompt cannot be read
is replaced by the next readable one (index + 1, + 2, ... wrapping around), augmented with
the original sample's seed (each try restarts the generator from it); a warning names the
file once, and `num_skipped` counts the distinct unreadable files met by this
process (each DataLoader worker keeps its own count). With `on_bad_image="raise"` the
`ldm.image_io.ImageInputError` naming the file propagates (images are decoded by
`ldm.image_io.load_image`, the loader inference uses).
"""

from __future__ import annotations

import abc
import csv
import json
import math
import operator
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from ldm.data.images import PairedTransform
from ldm.errors import DatasetError
from ldm.image_io import ImageInputError, load_image
from ldm.util import ConfigError

SPLITS = ("train", "val", "test")
BAD_IMAGE_POLICIES = ("skip", "raise")
SPLIT_COLUMN = "split"

Sample = dict[str, Any]
# seeds drawn for plain int indices: [0, 2**63 - 1), the range torch.randint can draw
_MAX_DRAWN_SEED = 2**63 - 1


def _key(prefix: str, name: str) -> str:
    """Where parameter `name` sits in the user's config (`data.params.train.params.path`), or just `name`."""
    return f"{prefix}.{name}" if prefix else name


def split_range(num_items: int, splits: Sequence[float], split: str) -> range:
    """Index range of `split` when `num_items` ordered items are cut into train/val/test fractions.

    As in the original: train is [0, floor(s0 * n)), val up to floor((s0 + s1) * n), test the rest.
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r} must be one of {', '.join(SPLITS)}")
    if len(splits) != 3 or any(s < 0 for s in splits) or not math.isclose(sum(splits), 1.0, abs_tol=1e-6):
        raise ValueError(f"splits={list(splits)} must be three non-negative fractions (train, val, test) summing to 1")
    bounds = (0.0, splits[0], splits[0] + splits[1], 1.0)
    k = SPLITS.index(split)
    # Round before flooring so 0.29 * 100 = 28.999... counts as 29.
    start, stop = (math.floor(round(b * num_items, 6)) for b in bounds[k : k + 2])
    return range(start, stop)


def draw_variant(num_variants: int, draws_variant: bool, generator: torch.Generator) -> int:
    """Which pair of a multi-pair sample to use: the first draw of the sample's generator, if the dataset draws."""
    return int(torch.randint(num_variants, (), generator=generator)) if draws_variant else 0


def edit_sample(
    transform: PairedTransform, input_image: Image.Image, edited_image: Image.Image, instruction: str,
    generator: torch.Generator,
) -> Sample:
    """The training sample of one decoded pair, augmented by `transform` with draws from `generator`."""
    input_tensor, edited_tensor = transform(input_image, edited_image, generator)  # 2 x (3, H, W)
    return {"edited": edited_tensor, "edit": {"c_concat": input_tensor, "c_crossattn": instruction}}


class PairedEditDataset(Dataset, abc.ABC):
    """Shared sample assembly: load a pair, transform it, skip or raise on unreadable files.

    Subclasses implement `__len__` and `variant_files(index, variant) -> (input image file, edited
    image file, instruction)`, raising `ImageInputError` for an instruction that cannot be read (an
    unreadable image raises it when loaded); one with several pairs per sample also overrides
    `num_variants` and sets `draws_variant`.
    """

    def __init__(
        self,
        source: Path,
        split: str | None,
        min_resize_res: int,
        max_resize_res: int,
        crop_res: int,
        flip_prob: float,
        on_bad_image: str,
    ) -> None:
        if on_bad_image not in BAD_IMAGE_POLICIES:
            raise ValueError(f"on_bad_image={on_bad_image!r} must be one of {', '.join(BAD_IMAGE_POLICIES)}")
        self.source = source
        self.split = split
        self.transform = PairedTransform(min_resize_res, max_resize_res, crop_res, flip_prob)
        self.on_bad_image = on_bad_image
        self.num_skipped = 0
        self._bad_files: set[Path] = set()

    @abc.abstractmethod
    def __len__(self) -> int: ...

    # Whether `load_pair` draws which variant of a sample to load (the first draw of its generator).
    draws_variant = False

    def num_variants(self, index: int) -> int:
        """How many image pairs sample `index` has (InstructPix2Pix entries have one per seed)."""
        return 1

    @abc.abstractmethod
    def variant_files(self, index: int, variant: int) -> tuple[Path, Path, str]:
        """(input image file, edited image file, instruction) of pair `variant` of sample `index`."""

    def load_variant(self, index: int, variant: int) -> tuple[Image.Image, Image.Image, str]:
        """(input image, edited image, instruction) of pair `variant` of sample `index`, before augmentation."""
        input_path, edited_path, instruction = self.variant_files(index, variant)
        return load_image(input_path), load_image(edited_path), instruction

    def load_pair(self, index: int, generator: torch.Generator) -> tuple[Image.Image, Image.Image, str]:
        """(input image, edited image, instruction) of sample `index`, before augmentation; draws the
        variant from `generator` when the dataset `draws_variant`."""
        return self.load_variant(index, draw_variant(self.num_variants(index), self.draws_variant, generator))

    def __getitem__(self, item: int | tuple[int, int]) -> Sample:
        """Sample `item`: an `(index, seed)` pair, or an int index (seed drawn from torch's global RNG)."""
        if isinstance(item, (tuple, list)):
            index, seed = (operator.index(v) for v in item)
        else:
            index = operator.index(item)
            seed = int(torch.randint(_MAX_DRAWN_SEED, ()))
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} samples")
        last_error: ImageInputError | None = None
        for offset in range(n):
            generator = torch.Generator().manual_seed(seed)
            try:
                input_image, edited_image, instruction = self.load_pair((index + offset) % n, generator)
            except ImageInputError as err:
                if self.on_bad_image == "raise":
                    raise
                self._note_bad_file(err)
                last_error = err
                continue
            return edit_sample(self.transform, input_image, edited_image, instruction, generator)
        raise DatasetError(
            f"no readable sample in {self.source} (split {self.split}): all {n} samples tried from index {index} "
            f"failed; last error: {last_error}"
        )

    def _note_bad_file(self, err: ImageInputError) -> None:
        if err.path in self._bad_files:
            return
        self._bad_files.add(err.path)
        self.num_skipped = len(self._bad_files)
        warnings.warn(f"skipping a sample of {self.source}: {err}", stacklevel=3)


def _pair_image(folder: Path, seed: int, which: int) -> Path:
    """`{seed}_{which}.jpg` as in the original layout, else the `.png` of the same name."""
    jpg = folder / f"{seed}_{which}.jpg"
    png = jpg.with_suffix(".png")
    return png if not jpg.exists() and png.exists() else jpg


class EditDataset(PairedEditDataset):
    """The InstructPix2Pix folder layout.

    `path/seeds.json` lists `[prompt_dir, [seed, ...]]`; `path/<prompt_dir>/prompt.json` holds the
    instruction under "edit"; `path/<prompt_dir>/{seed}_0.jpg` is the input and `{seed}_1.jpg` the
    edited image (`.png` is accepted too: lossless line art at small sizes). Entries are split by
    their position in seeds.json; each access picks one seed of the entry at random (the first
    draw of the sample's generator).
    """

    def __init__(
        self,
        path: str | Path,
        split: str = "train",
        splits: Sequence[float] = (0.9, 0.05, 0.05),
        min_resize_res: int = 256,
        max_resize_res: int = 256,
        crop_res: int = 256,
        flip_prob: float = 0.0,
        on_bad_image: str = "skip",
    ) -> None:
        self.check_sources({"path": path})
        self.path = Path(path)
        super().__init__(self.path, split, min_resize_res, max_resize_res, crop_res, flip_prob, on_bad_image)
        seeds_file = self.path / "seeds.json"
        try:
            entries = json.loads(seeds_file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DatasetError(f"cannot read {seeds_file}: {err}") from err
        if not isinstance(entries, list):
            raise DatasetError(f"{seeds_file} must hold a JSON list of [prompt_dir, [seed, ...]] entries")
        for i, entry in enumerate(entries):
            if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], list) and entry[1]):
                raise DatasetError(f"{seeds_file} entry {i} is {entry!r}; expected [prompt_dir, [seed, ...]]")
        rows = split_range(len(entries), splits, split)
        self.entries: list[tuple[str, list[int]]] = [
            (str(name), seeds) for name, seeds in entries[rows.start : rows.stop]
        ]
        if not self.entries:
            raise DatasetError(
                f"split {split!r} of {seeds_file} is empty ({len(entries)} entries, splits {list(splits)}); "
                "add entries or change splits"
            )

    @classmethod
    def check_sources(cls, params: Mapping[str, Any], prefix: str = "") -> None:
        """Raise FileNotFoundError if `params["path"]` is not a folder with seeds.json; `prefix` is its config path."""
        key = _key(prefix, "path")
        root = Path(params["path"])
        if not root.is_dir():
            raise FileNotFoundError(f"dataset path {root} does not exist; set {key} to a folder with seeds.json")
        if not (root / "seeds.json").is_file():
            raise FileNotFoundError(
                f"dataset path {root} has no seeds.json; set {key} to an InstructPix2Pix dataset folder "
                "(seeds.json plus one folder per prompt)"
            )

    def __len__(self) -> int:
        return len(self.entries)

    draws_variant = True

    def num_variants(self, index: int) -> int:
        return len(self.entries[index][1])

    def variant_files(self, index: int, variant: int) -> tuple[Path, Path, str]:
        name, seeds = self.entries[index]
        folder = self.path / name
        seed = seeds[variant]
        prompt_file = folder / "prompt.json"
        try:
            instruction = json.loads(prompt_file.read_text())["edit"]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
            raise ImageInputError(prompt_file, f"no readable 'edit' instruction ({err!r})") from err
        return _pair_image(folder, seed, 0), _pair_image(folder, seed, 1), str(instruction)


class PairsCSVDataset(PairedEditDataset):
    """Pairs listed in a CSV with a header: input image, edited image and instruction columns.

    Relative image paths resolve against the CSV's folder. With `split` set, a `split` column
    (values train/val/test) selects rows; without that column the rows are cut by position
    with `splits`, as EditDataset does. With `split=None` every row is used.
    """

    def __init__(
        self,
        csv_path: str | Path,
        input_column: str = "input_image",
        edited_column: str = "edited_image",
        instruction_column: str = "edit",
        min_resize_res: int = 256,
        max_resize_res: int = 256,
        crop_res: int = 256,
        flip_prob: float = 0.0,
        split: str | None = None,
        splits: Sequence[float] = (0.9, 0.05, 0.05),
        on_bad_image: str = "skip",
    ) -> None:
        self.check_sources({"csv_path": csv_path})
        self.csv_path = Path(csv_path)
        super().__init__(self.csv_path, split, min_resize_res, max_resize_res, crop_res, flip_prob, on_bad_image)
        with self.csv_path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            present = list(reader.fieldnames or [])
        columns = {
            "input_column": input_column,
            "edited_column": edited_column,
            "instruction_column": instruction_column,
        }
        for param, column in columns.items():
            if column not in present:
                raise ConfigError(
                    f"{param}: {self.csv_path} has no column {column!r}; columns present: "
                    f"{', '.join(present) or 'none (empty file)'}"
                )
        if split is not None:
            if SPLIT_COLUMN in present:
                if split not in SPLITS:
                    raise ValueError(f"split={split!r} must be one of {', '.join(SPLITS)}")
                rows = [row for row in rows if (row[SPLIT_COLUMN] or "").strip() == split]
            else:
                selected = split_range(len(rows), splits, split)
                rows = rows[selected.start : selected.stop]
        if not rows:
            which = f"split {split!r} of {self.csv_path}" if split is not None else str(self.csv_path)
            raise DatasetError(f"{which} has no rows; add rows or change split/splits")
        folder = self.csv_path.parent
        # (input path, edited path, instruction) per row; absolute paths in the CSV stay as they are.
        self.pairs: list[tuple[Path, Path, str]] = [
            (folder / (row[input_column] or ""), folder / (row[edited_column] or ""), row[instruction_column] or "")
            for row in rows
        ]

    @classmethod
    def check_sources(cls, params: Mapping[str, Any], prefix: str = "") -> None:
        """Raise FileNotFoundError if `params["csv_path"]` is not a file; `prefix` is its config path."""
        csv_path = Path(params["csv_path"])
        if not csv_path.is_file():
            raise FileNotFoundError(
                f"dataset CSV {csv_path} does not exist; set {_key(prefix, 'csv_path')} to a CSV file with a header "
                "(input image, edited image and instruction columns)"
            )

    def __len__(self) -> int:
        return len(self.pairs)

    def variant_files(self, index: int, variant: int) -> tuple[Path, Path, str]:
        return self.pairs[index]
