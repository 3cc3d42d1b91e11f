"""Every YAML under configs/ instantiates.

SD-family configs (configs/*.yaml, configs/stable-diffusion/) are full size (slow) and must
have SD1.5 shapes. Every other config (tests/, openmoji/) is built whole, model and data,
with checkpoint paths removed and dataset paths pointed at a small fixture.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
from helpers import ROOT, make_edit_dataset
from omegaconf import OmegaConf

from ldm.data.latent_cache import encode_dataset
from ldm.util import check_params, count_params, instantiate_from_config

CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))
# configs/sketch2pokemon/ are full size too; tests/test_sketch2pokemon.py builds them with its data fixture
CONFIGS = [p for p in CONFIGS if "sketch2pokemon" not in p.parts]
SD_FAMILY = [p for p in CONFIGS if p.parent == ROOT / "configs" or "stable-diffusion" in p.parts]
SMALL = [p for p in CONFIGS if p not in SD_FAMILY]
SD15_UNET_4CH = 859_520_964


def load(path: Path, dataset: Path | None = None) -> dict[str, Any]:
    """The config as a dict, with every ckpt_path cleared and dataset paths set to `dataset`."""

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

    return rewrite(OmegaConf.to_container(OmegaConf.load(path), resolve=True), False)


def build_model(config: dict[str, Any]):
    model_cfg = dict(config["model"])
    model_cfg.pop("base_learning_rate", None)
    return instantiate_from_config(model_cfg, "model")


def check_lightning_section(config: dict[str, Any]) -> None:
    lightning = config.get("lightning", {})
    check_params(pl.Trainer, lightning.get("trainer", {}), "lightning.trainer")
    for name, cb in (lightning.get("callbacks") or {}).items():
        instantiate_from_config(cb, f"lightning.callbacks.{name}")


def test_configs_found():
    assert SMALL and SD_FAMILY


@pytest.mark.parametrize("path", SMALL, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_small_config_instantiates(path, tmp_path):
    dataset = make_edit_dataset(tmp_path / "edits", n=40)  # >= the largest batch of a small config (32)
    config = load(path, dataset)
    model = build_model(config)
    assert count_params(model) > 0
    if "data" in config:
        train = config["data"]["params"]["train"]
        if train["target"] == "ldm.data.latent_cache.CachedEditDataset":  # encode the fixture with this model
            train["params"]["path"] = str(tmp_path / "cache")
            source = train["params"]["source"]
            encode_dataset(model, instantiate_from_config(source, "source"), source, tmp_path / "cache")
        data = instantiate_from_config(config["data"], "data")
        data.setup("fit")
        batch = next(iter(data.train_dataloader()))
        images = batch["cached"]["target_mean"] if "cached" in batch else batch["edited"]
        assert images.shape[0] == config["data"]["params"]["batch_size"]
    check_lightning_section(config)


def test_cached_config_differs_from_its_image_config_only_in_the_train_dataset():
    plain = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "openmoji" / "train.yaml"))
    cached = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "openmoji" / "train_cached.yaml"))
    assert cached["data"]["params"]["train"]["params"]["source"] == plain["data"]["params"]["train"]
    for config in (plain, cached):
        del config["data"]["params"]["train"]
    assert cached == plain


@pytest.mark.slow
@pytest.mark.parametrize("path", SD_FAMILY, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_sd_family_config_instantiates_full_size(path):
    config = load(path)
    model = build_model(config)
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
