"""Data-loading throughput: streaming shards against the folder layout they were written from, one process.

Both columns load the same OpenMoji pairs at `--size` px (default 256) through the DataLoader the
data module builds (batch `--batch`, `--workers` worker processes, the same augmentation: Lanczos
resize, flip): "folder" is `EditDataset` (seeds.json, one PNG file per image) sampled by
`ResumableSampler`; "shards" is `ShardDataset` over the shards `dataset_creation/write_shards.py`
wrote from it, sampled by `ShardSampler`. Each cell is one epoch; the two run in turn `--repeats`
times and the median is printed; ratio = shards img/s / folder img/s. An "img" is one training pair.
With `litdata` installed (not a dependency) a third row reads the same files' bytes from Lightning's
litdata chunks (`litdata.optimize`, `StreamingDataset` + `StreamingDataLoader`, shuffled), decoded and
augmented alike: the format this project did not pick, measured beside the one it did.
Files are read from the page cache after the first pass (a warm local disk); a cold network file
system is where shards matter most, which this machine cannot show.

The dataset (`--emojis` emojis, all kinds) is built into `--data` once and reused.

Usage: python bench/shard_loading.py [--emojis 150] [--size 256] [--batch 8] [--workers 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import statistics
import time
from collections.abc import Iterable
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from dataset_creation.openmoji import cli as openmoji
from ldm.data.datamodule import DataModuleFromConfig
from ldm.data.edit_dataset import PairedEditDataset, edit_sample
from ldm.data.images import PairedTransform
from ldm.data.sampler import sample_seed
from ldm.data.shards import ShardDataset, describe, read_index, write_shards
from ldm.image_io import decode_image
from ldm.util import instantiate_from_config

ROOT = Path(__file__).resolve().parents[1]


def source_config(folder: Path, size: int) -> dict:
    return {
        "target": "ldm.data.edit_dataset.EditDataset",
        "params": {"path": str(folder), "split": "train", "splits": [1.0, 0.0, 0.0], "min_resize_res": size,
                   "max_resize_res": size, "crop_res": size, "flip_prob": 0.5},
    }  # fmt: skip


def loader(config: dict, batch: int, workers: int) -> DataLoader:
    """The training DataLoader main.py's data module builds for `config`."""
    module = DataModuleFromConfig(batch_size=batch, train=config, num_workers=workers, seed=0)
    return module.train_dataloader()


def litdata_item(dataset: PairedEditDataset, index: int) -> dict:
    """What litdata stores per pair: the index, both files' bytes and the instruction."""
    input_path, edited_path, instruction = dataset.variant_files(index, 0)
    return {"index": index, "input": Path(input_path).read_bytes(), "edited": Path(edited_path).read_bytes(),
            "instruction": instruction}  # fmt: skip


def litdata_loader(dataset: PairedEditDataset, out: Path, batch: int, workers: int) -> Iterable[dict]:
    """litdata chunks of `dataset` (written once into `out`), read shuffled and augmented like the others."""
    import litdata

    if not (out / "index.json").is_file():
        litdata.optimize(fn=functools.partial(litdata_item, dataset), inputs=list(range(len(dataset))),
                         output_dir=str(out), chunk_bytes="256MB", num_workers=1)  # fmt: skip

    decoded = DecodedLitdata(str(out), shuffle=True, seed=0)
    decoded.pair_transform = dataset.transform
    return litdata.StreamingDataLoader(decoded, batch_size=batch, num_workers=workers, drop_last=True)


if importlib.util.find_spec("litdata") is not None:
    import litdata

    class DecodedLitdata(litdata.StreamingDataset):
        """litdata's dataset, each pair decoded and augmented as the editing datasets do (seed 0, epoch 0)."""

        pair_transform: PairedTransform  # litdata itself uses `transform`

        def __getitem__(self, index):  # type: ignore[no-untyped-def]
            item = super().__getitem__(index)
            generator = torch.Generator().manual_seed(sample_seed(0, 0, item["index"]))
            images = (decode_image(item[k], k) for k in ("input", "edited"))
            return edit_sample(self.pair_transform, *images, item["instruction"], generator)


def epoch_seconds(data: Iterable[dict]) -> tuple[float, int]:
    start = time.perf_counter()
    count = sum(len(batch["edited"]) for batch in data)
    return time.perf_counter() - start, count


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--emojis", type=int, default=150)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--data", type=Path, default=None, help="dataset folder [data/bench/openmoji-<size>-<emojis>]")
    args = p.parse_args()
    torch.set_num_threads(1)  # the workers decode; the main process only collates
    folder = args.data or ROOT / "data" / "bench" / f"openmoji-{args.size}-{args.emojis}"
    if openmoji.main(["--out", str(folder), "--size", str(args.size), "--limit", str(args.emojis),
                      "--no-progress"]) != 0:  # fmt: skip
        raise SystemExit("building the OpenMoji dataset failed")
    source = source_config(folder / "train", args.size)
    shard_dir = folder.with_name(folder.name + "-shards")
    write_shards(instantiate_from_config(source, "source"), source, shard_dir)
    print(f"folder: {folder / 'train'}; shards: {shard_dir}: {describe(read_index(str(shard_dir)))}")
    configs = {
        "folder": source,
        "shards": {"target": "ldm.data.shards.ShardDataset", "params": {"url": str(shard_dir)}},
    }
    assert isinstance(instantiate_from_config(configs["shards"], "shards"), ShardDataset)
    loaders = {name: functools.partial(loader, config, args.batch, args.workers) for name, config in configs.items()}
    if importlib.util.find_spec("litdata") is not None:
        dataset = instantiate_from_config(source, "source")
        lit_dir = folder.with_name(folder.name + "-litdata")
        loaders["litdata"] = functools.partial(litdata_loader, dataset, lit_dir, args.batch, args.workers)
    rates: dict[str, list[float]] = {name: [] for name in loaders}
    for _ in range(args.repeats):
        for name, make in loaders.items():
            seconds, count = epoch_seconds(make())
            rates[name].append(count / seconds)
    medians = {name: statistics.median(values) for name, values in rates.items()}
    print(f"{'layout':<8} {'img/s':>8} {'ratio':>6}   ({args.size} px, batch {args.batch}, {args.workers} workers, "
          f"median of {args.repeats} epochs; ratio against folder)")  # fmt: skip
    for name, rate in medians.items():
        print(f"{name:<8} {rate:8.1f} {rate / medians['folder']:6.2f}")
    print(json.dumps({"img_per_s": medians}))


if __name__ == "__main__":
    main()
