"""Every YAML under configs/ instantiates: tiny ones fully, full-size ones (slow) with SD1.5 shapes."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import pytorch_lightning as pl
from helpers import ROOT, make_edit_dataset
from omegaconf import OmegaConf

from ldm.util import check_params, count_params, instantiate_from_config

CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))
TINY = [p for p in CONFIGS if "tests" in p.parts]
FULL = [p for p in CONFIGS if "tests" not in p.parts]
SD15_UNET_4CH = 859_520_964


def build_model(path: Path, **overrides):
    cfg = OmegaConf.to_container(OmegaConf.load(path).model, resolve=True)
    cfg.pop("base_learning_rate", None)
    cfg["params"].update(overrides)
    return instantiate_from_config(cfg, "model")


def check_lightning_section(path: Path) -> None:
    lightning = OmegaConf.to_container(OmegaConf.load(path).get("lightning", OmegaConf.create()), resolve=True)
    check_params(pl.Trainer, lightning.get("trainer", {}), "lightning.trainer")
    for name, cb in (lightning.get("callbacks") or {}).items():
        instantiate_from_config(cb, f"lightning.callbacks.{name}")


def test_configs_found():
    assert TINY and FULL


@pytest.mark.parametrize("path", TINY, ids=lambda p: p.name)
def test_tiny_config_instantiates(path, tmp_path):
    model = build_model(path)
    assert count_params(model.model) > 0
    config = OmegaConf.load(path)
    if "data" in config:
        dataset = make_edit_dataset(tmp_path / "edits", n=20)
        config.data.params.train.params.path = str(dataset)
        data = instantiate_from_config(config.data, "data")
        data.setup("fit")
        batch = next(iter(data.train_dataloader()))
        assert batch["edited"].shape[0] == config.data.params.batch_size
    check_lightning_section(path)


@pytest.mark.slow
@pytest.mark.parametrize("path", FULL, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_full_size_config_instantiates(path):
    model = build_model(path, ckpt_path=None) if "ckpt_path" in OmegaConf.load(path).model.params else build_model(path)
    in_channels = OmegaConf.load(path).model.params.unet_config.params.in_channels
    unet = count_params(model.model.diffusion_model)
    print(f"{path.name}: UNet {unet:,} ({in_channels} in-channels), VAE {count_params(model.first_stage_model):,}, "
          f"text {count_params(model.cond_stage_model):,}")  # fmt: skip
    assert unet == SD15_UNET_4CH + (in_channels - 4) * 320 * 9
    assert count_params(model.first_stage_model) == 83_653_863
    assert count_params(model.cond_stage_model) == 123_060_480
    check_lightning_section(path)
    del model
    gc.collect()
