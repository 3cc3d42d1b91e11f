"""Cached conditioning: an editing dataset encoded once by the frozen autoencoder and text encoder.

On a CPU the frozen encoders cost about 40% of a small editing model's training step; on GPUs
the VAE encode of both images costs more FLOPs than the UNet at SD shapes. A cache made by
`dataset_creation/encode_dataset.py` stores, per pair and per horizontal flip:

- `target_mean`, `target_std`: the edited image's posterior N(mean, std^2), (C, h, w), so
  training still draws a fresh latent sample every step;
- `input_mode`: the input image's posterior mode (the editing model's c_concat), (C, h, w);
- `text`: the instruction's token embeddings (the cross-attention context), (T, D);

in fp16 safetensors shards of `shard_size` samples (`shard-00000.safetensors`, ...), with
`cache.json` recording the source dataset, the shapes, and the identity of both encoders (class,
settings and a sha256 of their weights). A model trained on a cache checks that identity against
its own encoders before the first step (`check_identity`), so a cache made with another
autoencoder or text encoder is refused.

`CachedEditDataset` yields `{"cached": {"target_mean", "target_std", "c_concat", "c_crossattn"}}`
(float32). It draws its random choices like the dataset it was encoded from (which pair of a
multi-pair sample, then PairedTransform's resize/crop/flip draws), so for the same `(index, seed)`
items a cached run sees the same pairs and flips as an uncached one, and `LatentDiffusion` takes the
cached tensors where it would have run the encoders. Everything after the encoders (the posterior
sample, conditioning dropout, noise, loss) is unchanged.
"""

from __future__ import annotations

import hashlib
import json
import math
import operator
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ldm.data.edit_dataset import PairedEditDataset, draw_variant
from ldm.data.images import PairedTransform
from ldm.io import write_bytes_atomic, write_text_atomic
from ldm.util import ConfigError

FORMAT = "sketch-pix2pix latent cache v1"
META_FILE = "cache.json"
CACHE_KEY = "cached"  # the batch key that marks a cached batch
FIELDS = ("target_mean", "target_std", "input_mode")  # (N, F, C, h, w) each; F = 1 or 2 flips
_MAX_DRAWN_SEED = 2**63 - 1


class CacheMismatchError(ConfigError):
    """A cache that does not match the model or the configuration it is used with."""


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def weights_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the names, dtypes, shapes and bytes of a state dict's tensors, in key order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def module_identity(module: nn.Module) -> dict[str, Any]:
    """What decides a frozen encoder's outputs: class, tokenizer settings (text encoders), weights."""
    settings = {name: getattr(module, name) for name in ("max_length", "layer") if hasattr(module, name)}
    cls = type(module)
    name = f"{cls.__module__}.{cls.__qualname__}"
    return {"class": name, "settings": settings, "sha256": weights_sha256(module.state_dict())}


def encoder_identity(model: nn.Module) -> dict[str, Any]:
    """{"first_stage": ..., "cond_stage": ...} of a LatentDiffusion model's frozen encoders."""
    return {
        "first_stage": module_identity(model.first_stage_model),
        "cond_stage": module_identity(model.cond_stage_model),
    }


_ENCODER_NAMES = {"first_stage": "autoencoder (first stage)", "cond_stage": "text encoder (cond stage)"}


def check_identity(cache: Mapping[str, Any], model: Mapping[str, Any], where: str) -> None:
    """Raise CacheMismatchError (one line) unless the cache's encoder identity equals the model's."""
    for key, label in _ENCODER_NAMES.items():
        made, have = cache.get(key, {}), model[key]
        if made != have:
            made_desc = f"{made.get('class', '?')} sha256 {str(made.get('sha256', '?'))[:12]}"
            have_desc = f"{have['class']} sha256 {have['sha256'][:12]}"
            if made.get("sha256") == have["sha256"]:
                made_desc += f" {made.get('settings')}"
                have_desc += f" {have['settings']}"
            raise CacheMismatchError(
                f"{where}: the cache was encoded with another {label} ({made_desc}) than the model's ({have_desc}); "
                "re-encode it with dataset_creation/encode_dataset.py and this config"
            )


def read_meta(path: str | Path) -> dict[str, Any]:
    """The cache's `cache.json`; FileNotFoundError / CacheMismatchError name the file and the fix."""
    meta_file = Path(path) / META_FILE
    if not meta_file.is_file():
        raise FileNotFoundError(
            f"latent cache {path} has no {META_FILE}; build it with dataset_creation/encode_dataset.py"
        )
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CacheMismatchError(f"cannot read {meta_file}: {err}") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CacheMismatchError(f"{meta_file} is not a {FORMAT!r} file; rebuild it with encode_dataset.py")
    return meta


def _plain(config: Any) -> Any:
    """A config (DictConfig or mapping) as plain dicts and lists, for comparison with cache.json."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(config, (DictConfig, ListConfig)):
        return OmegaConf.to_container(config, resolve=True)
    return json.loads(json.dumps(config))


def missing_shards(path: str | Path, meta: Mapping[str, Any]) -> list[int]:
    return [k for k in range(meta["num_shards"]) if not (Path(path) / shard_name(k)).is_file()]


def encode_dataset(
    model: nn.Module,
    dataset: PairedEditDataset,
    dataset_config: Any,
    out: str | Path,
    shard_size: int = 2048,
    batch_size: int = 64,
    partition: int = 0,
    num_partitions: int = 1,
) -> dict[str, Any]:
    """Encode `dataset` (built from `dataset_config`) with `model`'s frozen encoders into the cache `out`.

    Writes `cache.json` (or checks that an existing one describes the same dataset and encoders),
    then every shard `k` with `k % num_partitions == partition` that is not on disk yet, each whole
    (temporary file, rename). Returns the cache's metadata. The dataset's transform must be
    deterministic but for the flip (`PairedTransform.is_deterministic`).
    """
    from safetensors.torch import save
    from tqdm import tqdm

    t = dataset.transform
    if not t.is_deterministic:
        raise CacheMismatchError(
            f"random resizes or crops cannot be cached (min_resize_res={t.min_resize_res}, "
            f"max_resize_res={t.max_resize_res}, crop_res={t.crop_res}); set all three to one size"
        )
    out = Path(out)
    flips = 2 if t.flip_prob > 0 else 1
    whole = PairedTransform(t.crop_res, t.crop_res, t.crop_res, 0.0)
    variants = [dataset.num_variants(i) for i in range(len(dataset))]
    rows = [(i, v) for i, n in enumerate(variants) for v in range(n)]  # stored sample by sample
    meta = {
        "format": FORMAT,
        "dataset": _plain(dataset_config),
        "resolution": t.crop_res,
        "flips": flips,
        "flip_prob": t.flip_prob,
        "shard_size": shard_size,
        "num_shards": math.ceil(len(rows) / shard_size),
        "draws_variant": dataset.draws_variant,
        "variants": variants,
        "encoders": encoder_identity(model),
    }
    if (out / META_FILE).is_file():
        existing = read_meta(out)
        if existing != meta:
            differs = sorted(k for k in meta if existing.get(k) != meta[k])
            raise CacheMismatchError(
                f"{out} holds a cache of another dataset or encoders (differs in: {', '.join(differs)}); "
                "choose another folder or delete it"
            )
    else:
        write_text_atomic(out / META_FILE, json.dumps(meta, indent=1))
    mine = [k for k in range(meta["num_shards"]) if k % num_partitions == partition]
    todo = [k for k in mine if not (out / shard_name(k)).is_file()]
    size_of = {k: len(rows[k * shard_size : (k + 1) * shard_size]) for k in mine}
    bar = tqdm(total=sum(size_of.values()), initial=sum(size_of[k] for k in mine if k not in todo), unit="pair",
               desc=f"encode {out.name} [{partition + 1}/{num_partitions}]", disable=None)  # fmt: skip
    for k in todo:
        shard_rows = rows[k * shard_size : (k + 1) * shard_size]
        parts: dict[str, list[torch.Tensor]] = {name: [] for name in (*FIELDS, "text")}
        for start in range(0, len(shard_rows), batch_size):
            batch = [dataset.load_variant(i, v) for i, v in shard_rows[start : start + batch_size]]
            pairs = [whole(input_image, edited_image) for input_image, edited_image, _ in batch]
            device = next(model.first_stage_model.parameters()).device
            inputs = torch.stack([p[0] for p in pairs]).to(device)  # (B, 3, res, res)
            edited = torch.stack([p[1] for p in pairs]).to(device)
            per_flip: dict[str, list[torch.Tensor]] = {name: [] for name in FIELDS}
            with torch.no_grad():
                for flip in range(flips):
                    x_in, x_out = (inputs.flip(-1), edited.flip(-1)) if flip else (inputs, edited)
                    posterior = model.encode_first_stage(x_out)
                    per_flip["target_mean"].append(posterior.mean)
                    per_flip["target_std"].append(posterior.std)
                    per_flip["input_mode"].append(model.encode_first_stage(x_in).mode())
                text = model.get_learned_conditioning([instruction for _, _, instruction in batch])  # (B, T, D)
            for name in FIELDS:
                parts[name].append(torch.stack(per_flip[name], dim=1).half().cpu())  # (B, F, C, h, w)
            parts["text"].append(text.half().cpu())
            bar.update(len(batch))
        write_bytes_atomic(out / shard_name(k), save({name: torch.cat(chunks) for name, chunks in parts.items()}))
    bar.close()
    return meta


class CachedEditDataset(Dataset):
    """Samples of the latent cache at `path`, encoded from the dataset config `source`.

    `source` (target/params of an image-pair dataset) is what `encode_dataset.py` encodes into
    `path`; here it must equal the config recorded in the cache, so a cache of other data (another
    folder, split or flip setting) is refused. Flips are drawn with the source's `flip_prob`.
    Indexed like the editing datasets: an `(index, seed)` pair, or an int (seed drawn from torch's
    global RNG). Shards are memory-mapped on first use in each process (DataLoader workers included).
    """

    def __init__(self, path: str | Path, source: Mapping[str, Any]) -> None:
        self.path = Path(path)
        self.meta = read_meta(self.path)
        source = _plain(source)
        if self.meta["dataset"] != source:
            made, want = self.meta["dataset"], source
            differs = sorted(k for k in {*made.get("params", {}), *want.get("params", {})}
                             if made.get("params", {}).get(k) != want.get("params", {}).get(k))  # fmt: skip
            what = f"params {', '.join(differs)}" if differs else "target"
            raise CacheMismatchError(
                f"latent cache {self.path} was encoded from another dataset than `source` (differs in {what}); "
                "re-encode it with dataset_creation/encode_dataset.py and this config"
            )
        missing = missing_shards(self.path, self.meta)
        if missing:
            raise CacheMismatchError(
                f"latent cache {self.path} is incomplete: {len(missing)} of {self.meta['num_shards']} shards missing "
                f"(first {shard_name(missing[0])}); run dataset_creation/encode_dataset.py again to finish it"
            )
        res = self.meta["resolution"]
        self.transform = PairedTransform(res, res, res, float(self.meta["flip_prob"]))
        self.encoder_identity: dict[str, Any] = self.meta["encoders"]
        self.draws_variant = bool(self.meta["draws_variant"])
        # sample index -> first row of its variants; rows are stored sample by sample
        self.variants: list[int] = list(self.meta["variants"])
        self.first_row: list[int] = []
        row = 0
        for n in self.variants:
            self.first_row.append(row)
            row += n
        self.shard_size = int(self.meta["shard_size"])
        self._shards: dict[int, Any] = {}

    @classmethod
    def check_sources(cls, params: Mapping[str, Any], prefix: str = "") -> None:
        """Raise FileNotFoundError if `params["path"]` is not a latent cache; `prefix` is its config path."""
        path = Path(params["path"])
        key = f"{prefix}.path" if prefix else "path"
        if not (path / META_FILE).is_file():
            raise FileNotFoundError(
                f"latent cache {path} does not exist (no {META_FILE}); set {key} to a folder made by "
                "dataset_creation/encode_dataset.py"
            )

    def __len__(self) -> int:
        return len(self.variants)

    def _shard(self, k: int) -> Any:
        if k not in self._shards:
            from safetensors import safe_open

            self._shards[k] = safe_open(str(self.path / shard_name(k)), framework="pt", device="cpu")
        return self._shards[k]

    def __getstate__(self) -> dict[str, Any]:
        # open shard handles are per process; DataLoader workers reopen theirs
        return {**self.__dict__, "_shards": {}}

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        if isinstance(item, (tuple, list)):
            index, seed = (operator.index(v) for v in item)
        else:
            index = operator.index(item)
            seed = int(torch.randint(_MAX_DRAWN_SEED, ()))
        variant, flip = cache_draws(self.variants[index], self.draws_variant, self.transform, seed)
        row = self.first_row[index] + variant
        shard = self._shard(row // self.shard_size)
        r = row % self.shard_size
        return cached_sample({name: shard.get_slice(name)[r : r + 1][0] for name in (*FIELDS, "text")}, flip)


def cache_draws(num_variants: int, draws_variant: bool, transform: PairedTransform, seed: int) -> tuple[int, int]:
    """(variant, flip) of a cached sample: the draws the source dataset makes with the sample's seed."""
    generator = torch.Generator().manual_seed(seed)
    variant = draw_variant(num_variants, draws_variant, generator)
    return variant, int(transform.draw(generator)[3])


def cached_sample(row: Mapping[str, torch.Tensor], flip: int) -> dict[str, Any]:
    """The training sample of one stored pair: FIELDS (F, C, h, w) and "text" (T, D), fp16, with flip `flip`."""
    target_mean, target_std, input_mode = (row[name][flip].float() for name in FIELDS)  # (C, h, w) each
    return {
        CACHE_KEY: {
            "target_mean": target_mean,
            "target_std": target_std,
            "c_concat": input_mode,
            "c_crossattn": row["text"].float(),  # (T, D)
        }
    }
