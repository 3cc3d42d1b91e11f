"""Write a training dataset as streaming shards (webdataset tar files) for multi-node training.

    python dataset_creation/write_shards.py --base configs/openmoji/train.yaml --out data/openmoji/shards-train
    python dataset_creation/write_shards.py --base configs/openmoji/train_cached.yaml --out data/openmoji/shards-cache
    python dataset_creation/write_shards.py --base configs/openmoji/train_shards.yaml   # to its url

The dataset is `data.params.<--split>` of the merged config (dotted overrides as in main.py): the
InstructPix2Pix folder layout or a pairs CSV (the image files are stored as they are, each checked
to decode), or a latent cache (its fp16 tensors). When that section is already a ShardDataset, its
`source` is written to its `url`. Train on the shards with a config whose dataset is
`ldm.data.shards.ShardDataset` (configs/openmoji/train_shards.yaml); the format, the reading order
and resume are described in ldm/data/shards.py.

Shards are written whole (temporary file, then rename) and listed in shards.json one by one, so an
interrupted run resumes after the last listed shard. Copy the folder to any fsspec store (S3, GCS,
HTTP) and set `url` to it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ldm.cli import ArgumentParser, UsageError, int_at_least, run_cli

PROG = "write_shards.py"
SHARD_DATASET = "ldm.data.shards.ShardDataset"


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    p = ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", nargs="+", required=True, metavar="config.yaml", help="training configs, merged in order")
    p.add_argument("--out", help="shard folder (created; an interrupted write here is resumed) [the config's url, "
                   "when data.params.<split> is a ShardDataset]")  # fmt: skip
    p.add_argument("--split", default="train", choices=["train", "validation", "test"], help="data.params section")
    p.add_argument("--shard-mb", type=int_at_least(1), default=256, help="about this many MB per shard")
    order = p.add_mutually_exclusive_group()
    order.add_argument("--order-seed", type=int_at_least(0), default=0, help="seed of the written order's shuffle")
    order.add_argument("--keep-order", action="store_true", help="write the samples in dataset order")
    return p.parse_known_args(argv)


def write(args: argparse.Namespace, overrides: list[str]) -> int:
    from omegaconf import OmegaConf

    from ldm.data import shards
    from ldm.data.edit_dataset import PairedEditDataset
    from ldm.data.latent_cache import CachedEditDataset
    from ldm.image_io import ImageInputError
    from ldm.util import instantiate_from_config, load_config_files

    config = load_config_files(args.base, overrides)
    where = f"data.params.{args.split}"
    dataset_cfg = OmegaConf.select(config, where)
    if dataset_cfg is None:
        raise UsageError(f"the config has no {where} dataset")
    out = args.out
    if dataset_cfg.get("target") == SHARD_DATASET:
        out = out or dataset_cfg.params.url
        if dataset_cfg.params.get("source") is None:
            raise UsageError(f"{where}.params.source: give the dataset config to write to {dataset_cfg.params.url}")
        dataset_cfg, where = dataset_cfg.params.source, f"{where}.params.source"
    if out is None:
        raise UsageError(f"give --out: {where} is not a ShardDataset config")
    if "://" in str(out):
        raise UsageError(f"--out {out}: write to a local folder, then copy it to the store")
    dataset = instantiate_from_config(dataset_cfg, where)
    if not isinstance(dataset, (PairedEditDataset, CachedEditDataset)):
        raise UsageError(f"{where}: {type(dataset).__name__} is not an image-pair dataset or a latent cache")
    try:
        index = shards.write_shards(
            dataset, dataset_cfg, Path(out), shard_bytes=args.shard_mb * 1_000_000,
            order_seed=None if args.keep_order else args.order_seed,
        )  # fmt: skip
    except ImageInputError as err:
        raise UsageError(f"{err}; fix or remove that pair and run again (finished shards are kept)") from err
    print(f"{out}: {shards.describe(index)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args, overrides = parse_args(argv)
    return run_cli(PROG, lambda: write(args, overrides), user_errors=(FileNotFoundError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
