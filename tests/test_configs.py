"""Every YAML under configs/ instantiates.

SD-family configs (configs/*.yaml, configs/stable-diffusion/) are full size (slow) and must
have SD1.5 shapes. Every other config (tests/, openmoji/) is built whole, model and data,
with checkpoint paths removed and dataset paths pointed at a small fixture, and its parts are
checked to fit: one forward pass of the model (UNet channels, context width, latent size) and,
where the config has data, one loss on the first items of a batch it loads.
"""

from __future__ import annotations

import contextlib
import gc
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from helpers import ROOT, make_edit_dataset
from omegaconf import OmegaConf

from ldm.data.latent_cache import encode_dataset
from ldm.data.shards import write_shards
from ldm.models.autoencoder import AutoencoderKL
from ldm.util import check_params, count_params, instantiate_from_config, load_config_files

CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))
# configs/sketch2pokemon/ are full size too; tests/test_sketch2pokemon.py builds them with its data fixture
CONFIGS = [p for p in CONFIGS if "sketch2pokemon" not in p.parts]
SD_FAMILY = [p for p in CONFIGS if p.parent == ROOT / "configs" or "stable-diffusion" in p.parts]
SMALL = [p for p in CONFIGS if p not in SD_FAMILY]
SD15_UNET_4CH = 859_520_964
# configs that are merged after others (main.py --base BASE... OVERLAY): built as that merge
OVERLAYS = {
    "openmoji/reference/continue.yaml": ["openmoji/reference/train.yaml"],
    "openmoji/reference/grow_attention.yaml": ["openmoji/reference/train.yaml", "openmoji/reference/continue.yaml"],
}


def load(path: Path, dataset: Path | None = None) -> dict[str, Any]:
    """The config (merged after its base if it is an overlay) as a dict, with every ckpt_path cleared
    and dataset paths set to `dataset`."""

    def rewrite(node: Any, in_data: bool) -> Any:
        if isinstance(node, dict):
            out = {}
            for key, value in node.items():
                if key == "ckpt_path":
                    value = None
                elif in_data and key in ("path", "csv_path") and dataset is not None:
                    value = str(dataset)
                out[key] = rewrite(value, in_data or key == "data")
            return out
        if isinstance(node, list):
            return [rewrite(v, in_data) for v in node]
        return node

    bases = OVERLAYS.get(path.relative_to(ROOT / "configs").as_posix(), [])
    files = [str(ROOT / "configs" / base) for base in bases]
    return rewrite(OmegaConf.to_container(load_config_files([*files, str(path)]), resolve=True), False)


def build_model(config: dict[str, Any], device: str | None = None):
    """The config's model; on `device` "meta" its shapes only (no memory, no random init: seconds, not tens)."""
    model_cfg = dict(config["model"])
    model_cfg.pop("base_learning_rate", None)
    with torch.device(device) if device else contextlib.nullcontext():
        return instantiate_from_config(model_cfg, "model")


def check_lightning_section(config: dict[str, Any]) -> None:
    lightning = config.get("lightning", {})
    check_params(pl.Trainer, lightning.get("trainer", {}), "lightning.trainer")
    for name, cb in (lightning.get("callbacks") or {}).items():
        instantiate_from_config(cb, f"lightning.callbacks.{name}")


def first_items(batch: Any, n: int, side: int = 64) -> Any:
    """The first n items of a (nested) batch of tensors and lists, images cropped to side x side (the
    models are convolutional: a crop keeps every check below but the cost of 256 px)."""
    if isinstance(batch, dict):
        return {key: first_items(value, n, side) for key, value in batch.items()}
    return batch[:n, ..., :side, :side] if isinstance(batch, torch.Tensor) and batch.ndim == 4 else batch[:n]


@torch.no_grad()
def check_model_runs(model: pl.LightningModule, batch: dict[str, Any] | None) -> None:
    """The config's parts fit: shapes through one forward pass and, where the config has data, the
    latent size of its images and one loss on the first items of a batch."""
    model.eval()
    if isinstance(model, AutoencoderKL):  # every autoencoder config has data
        x = model.get_input(first_items(batch, 2))  # (2, 3, 64, 64)
        assert model(x)[0].shape == x.shape
        return
    # latent diffusion: a latent of the model's size through the UNet with the conditioning it is built for
    z = torch.randn(1, model.channels, model.image_size, model.image_size)  # (1, C, h, w)
    cond = {"c_crossattn": [model.get_learned_conditioning([""])]}  # (1, T, D): D must be the UNet's context_dim
    if model.model.conditioning_key == "hybrid":
        cond["c_concat"] = [torch.zeros_like(z)]  # the input-image latent: in_channels = 2 C
    assert model.apply_model(z, torch.tensor([999]), cond).shape == z.shape
    if batch is None:
        return
    if "cached" in batch:
        latent_side = batch["cached"]["target_mean"].shape[-1]
    else:  # the autoencoder halves the side at each level but the last
        factor = 2 ** (model.first_stage_model.encoder.num_resolutions - 1)
        latent_side = batch[model.first_stage_key].shape[-1] // factor
    # random training crops (the demo's 48 px of 64) encode smaller; the model samples at image_size
    assert latent_side <= model.image_size, "the data's images must encode to latents of at most image_size"
    loss = model.shared_step(first_items(batch, 2))
    assert loss.ndim == 0 and 0 < loss.item() < 10, loss  # ~1 for an untrained model: a unit-variance target


def check_sampling_size(model: pl.LightningModule, train: dict[str, Any]) -> None:
    """The model samples at image_size; that side in pixels must be one the training images had: between
    the crop (the demo's 48 px windows, IP2P's 256 px crops) and the largest resize (64 px, 288 px)."""
    params = train["params"].get("source", train)["params"]  # a cache or shards: the dataset they hold
    if isinstance(model, AutoencoderKL) or "crop_res" not in params:
        return
    pixels = model.image_size * 2 ** (model.first_stage_model.encoder.num_resolutions - 1)
    assert params["crop_res"] <= pixels <= params["max_resize_res"], (pixels, params)


def test_configs_found():
    assert SMALL and SD_FAMILY


@pytest.mark.parametrize("path", SMALL, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_small_config_instantiates(path, tmp_path):
    dataset = make_edit_dataset(tmp_path / "edits", n=40)  # >= the largest batch of a small config (32)
    config = load(path, dataset)
    params = config["model"]["params"]
    if params.get("lora_config") is not None:  # LoRA adapts a checkpoint: one of the same model, without adapters
        base = build_model({**config, "model": {**config["model"], "params": {**params, "lora_config": None}}})
        torch.save({"state_dict": base.state_dict()}, tmp_path / "base.ckpt")
        params["ckpt_path"] = str(tmp_path / "base.ckpt")
        del base
    model = build_model(config)
    batch = None
    if "data" in config:
        train = config["data"]["params"]["train"]
        if train["target"] == "ldm.data.latent_cache.CachedEditDataset":  # encode the fixture with this model
            train["params"]["path"] = str(tmp_path / "cache")
            source = train["params"]["source"]
            encode_dataset(model, instantiate_from_config(source, "source"), source, tmp_path / "cache")
        if train["target"] == "ldm.data.shards.ShardDataset":  # write the fixture as shards
            train["params"]["url"] = str(tmp_path / "shards")
            source = train["params"]["source"]
            write_shards(instantiate_from_config(source, "source"), source, tmp_path / "shards", shard_bytes=50_000)
        data = instantiate_from_config(config["data"], "data")
        data.setup("fit")
        batch = next(iter(data.train_dataloader()))
        images = batch["cached"]["target_mean"] if "cached" in batch else batch["edited"]
        assert images.shape[0] == config["data"]["params"]["batch_size"]
        check_sampling_size(model, train)
    check_model_runs(model, batch)
    check_lightning_section(config)


@pytest.mark.parametrize("name", ["train_cached.yaml", "train_shards.yaml"])
def test_cached_and_shard_configs_differ_from_the_image_config_only_in_the_train_dataset(name):
    """Outside the dataset they are twins; the cache's source differs only in training on whole pairs
    (a cache holds one encoding per pair and flip, so it has no random crops to take)."""
    plain = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "openmoji" / "train.yaml"))
    other = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "openmoji" / name))
    source = other["data"]["params"]["train"]["params"]["source"]
    if name == "train_cached.yaml":
        assert source["params"]["crop_res"] == source["params"]["max_resize_res"]
        source["params"]["crop_res"] = plain["data"]["params"]["train"]["params"]["crop_res"]
    assert source == plain["data"]["params"]["train"]
    for config in (plain, other):
        del config["data"]["params"]["train"]
    assert other == plain


@pytest.mark.slow
@pytest.mark.parametrize("path", SD_FAMILY, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_sd_family_config_instantiates_full_size(path):
    config = load(path)
    model = build_model(config, "meta")
    in_channels = config["model"]["params"]["unet_config"]["params"]["in_channels"]
    unet = count_params(model.model.diffusion_model)
    print(f"{path.name}: UNet {unet:,} ({in_channels} in-channels), VAE {count_params(model.first_stage_model):,}, "
          f"text {count_params(model.cond_stage_model):,}")  # fmt: skip
    assert unet == SD15_UNET_4CH + (in_channels - 4) * 320 * 9
    assert count_params(model.first_stage_model) == 83_653_863
    assert count_params(model.cond_stage_model) == 123_060_480
    check_lightning_section(config)
    del model
    gc.collect()
