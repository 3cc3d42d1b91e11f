"""Encode an editing dataset once with a model's frozen autoencoder and text encoder (a latent cache).

    python dataset_creation/encode_dataset.py --base configs/openmoji/train.yaml --out data/openmoji/cache-train
    python dataset_creation/encode_dataset.py --base configs/sketch2pokemon/train_from_sd15.yaml \\
        --out data/pokemon/cache --device cuda:1 --partition 1 --num-partitions 4   # one of 4 GPUs

The dataset is `data.params.<--split>` of the merged config (dotted overrides as in main.py) and the
encoders are the model's, loaded as main.py loads them (`ckpt_path`, the first stage's own
`ckpt_path`). What is stored and how training uses it: `ldm/data/latent_cache.py`; train on it with
`configs/openmoji/train_cached.yaml` or any config whose train dataset is
`ldm.data.latent_cache.CachedEditDataset`.

Shards are written whole (temporary file, then rename), so an interrupted run resumes where it
stopped; `--partition k --num-partitions n` encodes every n-th shard, so n processes (one per GPU)
share a dataset. Random resizes or crops cannot be cached: the dataset must resize to one size and
keep it whole (min_resize_res = max_resize_res = crop_res); a flipping dataset is stored with both
horizontal flips.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ldm.cli import ArgumentParser, UsageError, int_at_least, run_cli

PROG = "encode_dataset.py"


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    p = ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", nargs="+", required=True, metavar="config.yaml", help="training configs, merged in order")
    p.add_argument("--out", help="cache folder (created; an interrupted cache here is resumed) [the config's, when "
                   "data.params.<split> is a CachedEditDataset]")  # fmt: skip
    p.add_argument("--split", default="train", choices=["train", "validation", "test"], help="data.params section")
    p.add_argument("--shard-size", type=int_at_least(1), default=2048, help="samples per shard file")
    p.add_argument("--batch-size", type=int_at_least(1), default=64, help="pairs per encoder call")
    p.add_argument("--partition", type=int_at_least(0), default=0, help="which of --num-partitions this process is")
    p.add_argument("--num-partitions", type=int_at_least(1), default=1, help="processes sharing the dataset")
    p.add_argument("--device", default=None, help="torch device [cuda if available, else cpu]")
    args, overrides = p.parse_known_args(argv)
    if args.partition >= args.num_partitions:
        p.error(f"--partition {args.partition} must be below --num-partitions {args.num_partitions}")
    return args, overrides


def build(config: Any, split: str) -> tuple[Any, Any, str, str | None]:
    """(model, dataset, its config path, the cache folder a CachedEditDataset names) from a training config.

    The dataset is `data.params.<split>`, or the `source` of a CachedEditDataset there.
    """
    from omegaconf import OmegaConf

    from ldm.data.edit_dataset import PairedEditDataset
    from ldm.util import instantiate_from_config

    if "model" not in config or "data" not in config:
        raise UsageError("the config needs 'model' and 'data' sections (a training config)")
    dataset_cfg = OmegaConf.select(config, f"data.params.{split}")
    where = f"data.params.{split}"
    if dataset_cfg is None:
        raise UsageError(f"the config has no {where} dataset")
    out = None
    if dataset_cfg.get("target") == "ldm.data.latent_cache.CachedEditDataset":  # encode its source into its path
        out = dataset_cfg.params.path
        dataset_cfg, where = dataset_cfg.params.source, f"{where}.params.source"
    model_cfg = OmegaConf.to_container(config.model, resolve=True)
    model_cfg.pop("base_learning_rate", None)
    model = instantiate_from_config(model_cfg, "model")
    dataset = instantiate_from_config(dataset_cfg, where)
    if not isinstance(dataset, PairedEditDataset):
        raise UsageError(f"{where}: {type(dataset).__name__} is not an image-pair dataset (EditDataset, CSV pairs)")
    return model, dataset, where, out


def encode(args: argparse.Namespace, overrides: list[str]) -> int:
    import torch
    from omegaconf import OmegaConf

    from ldm.data import latent_cache
    from ldm.util import load_config_files

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    config = load_config_files(args.base, overrides)
    model, dataset, where, configured_out = build(config, args.split)
    if args.out is None and configured_out is None:
        raise UsageError(f"give --out: data.params.{args.split} is an image dataset, not a latent cache config")
    out = Path(args.out or configured_out)
    meta = latent_cache.encode_dataset(
        model.to(device).eval(),
        dataset,
        OmegaConf.select(config, where),
        out,
        shard_size=args.shard_size,
        batch_size=args.batch_size,
        partition=args.partition,
        num_partitions=args.num_partitions,
    )
    missing = latent_cache.missing_shards(out, meta)
    state = "complete" if not missing else f"{len(missing)} shards left to other partitions"
    print(f"{out}: {sum(meta['variants'])} pairs x {meta['flips']} flip(s) in {meta['num_shards']} shards ({state})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args, overrides = parse_args(argv)

    def run() -> int:
        from ldm.image_io import ImageInputError

        try:
            return encode(args, overrides)
        except ImageInputError as err:
            raise UsageError(f"{err}; fix or remove that pair and run again (finished shards are kept)") from err

    return run_cli(PROG, run, user_errors=(FileNotFoundError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
