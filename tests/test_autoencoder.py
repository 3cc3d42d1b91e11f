"""KL autoencoder: parity with diffusers on the same weights, SD1.5 key layout, training, loading."""

from __future__ import annotations

import copy
import inspect
import math
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader

from ldm.checkpoint import CheckpointMismatchError
from ldm.models.autoencoder import AutoencoderKL
from ldm.modules.diffusionmodules.model import Decoder, Encoder
from ldm.modules.losses.contperceptual import LPIPSWithDiscriminator
from ldm.util import ConfigError, instantiate_from_config

TARGET = "ldm.models.autoencoder.AutoencoderKL"
IDENTITY_LOSS = {"target": "torch.nn.Identity"}


def tiny_ddconfig(attn_resolutions: tuple[int, ...] = (), **extra) -> dict:
    return {
        **extra,
        "double_z": True,
        "z_channels": 4,
        "resolution": 32,
        "in_channels": 3,
        "out_ch": 3,
        "ch": 32,
        "ch_mult": [1, 2],
        "num_res_blocks": 1,
        "attn_resolutions": list(attn_resolutions),
        "dropout": 0.0,
    }


SD15_DDCONFIG = {
    "double_z": True,
    "z_channels": 4,
    "resolution": 256,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 128,
    "ch_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_resolutions": [],
    "dropout": 0.0,
}


def loss_config(**params) -> dict:
    return {"target": "ldm.modules.losses.LPIPSWithDiscriminator", "params": params}


def randomize_(model: torch.nn.Module, seed: int = 0) -> None:
    """Every parameter gets fresh random values (norm scales around 1) so swapped weights show."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            if p.ndim > 1:
                p.copy_(noise / math.sqrt(p[0].numel()))
            elif ".norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(0.1 * noise)


def diffusers_config(ddconfig: dict) -> dict:
    """diffusers AutoencoderKL config for an LDM ddconfig (attention per level as AttnDown/AttnUp blocks)."""
    levels = range(len(ddconfig["ch_mult"]))
    resolutions = [ddconfig["resolution"] // 2**i for i in levels]
    has_attn = [r in ddconfig["attn_resolutions"] for r in resolutions]
    return {
        "in_channels": ddconfig["in_channels"],
        "out_channels": ddconfig["out_ch"],
        "down_block_types": ["AttnDownEncoderBlock2D" if a else "DownEncoderBlock2D" for a in has_attn],
        "up_block_types": ["AttnUpDecoderBlock2D" if a else "UpDecoderBlock2D" for a in reversed(has_attn)],
        "block_out_channels": [ddconfig["ch"] * m for m in ddconfig["ch_mult"]],
        "layers_per_block": ddconfig["num_res_blocks"],
        "latent_channels": ddconfig["z_channels"],
        "norm_num_groups": ddconfig.get("norm_num_groups", 32),
        "sample_size": ddconfig["resolution"],
    }


_ATTN_NAMES = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def rename_level_attention(checkpoint: dict, num_levels: int) -> dict:
    """diffusers' converter maps only the mid-block attention; it passes per-level attention
    (`encoder.down.{i}.attn.{j}.*`, `decoder.up.{i}.attn.{j}.*`) through unchanged. Rename those
    keys with the same rules (up blocks in reverse order, 1x1 convs -> linear weights)."""
    out = {}
    for key, value in checkpoint.items():
        parts = key.split(".")
        if len(parts) == 7 and parts[1] in ("down", "up") and parts[3] == "attn":
            side, kind, level, _, j, layer, leaf = parts
            block = f"down_blocks.{level}" if kind == "down" else f"up_blocks.{num_levels - 1 - int(level)}"
            key = f"{side}.{block}.attentions.{j}.{_ATTN_NAMES[layer]}.{leaf}"
            if value.ndim == 4:
                value = value[:, :, 0, 0]
        out[key] = value
    return out


def to_diffusers(model: AutoencoderKL, ddconfig: dict):
    from diffusers import AutoencoderKL as DiffusersAutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    config = diffusers_config(ddconfig)
    checkpoint = {f"first_stage_model.{k}": v for k, v in model.state_dict().items()}
    converted = convert_ldm_vae_checkpoint(checkpoint, config)
    converted = rename_level_attention(converted, len(ddconfig["ch_mult"]))
    reference = DiffusersAutoencoderKL(**config)
    result = reference.load_state_dict(converted, strict=False)
    return reference, converted, result


@pytest.mark.parametrize(
    ("attn_resolutions", "extra"),
    [((), {}), ((16,), {}), ((16,), {"norm_num_groups": 8})],
    ids=["no-attn", "attn-16", "attn-16-groups-8"],
)
def test_matches_diffusers_on_same_weights(attn_resolutions, extra):
    ddconfig = tiny_ddconfig(attn_resolutions, **extra)
    model = AutoencoderKL(ddconfig=ddconfig, lossconfig=IDENTITY_LOSS, embed_dim=4).eval()
    randomize_(model)
    reference, _, result = to_diffusers(model, ddconfig)
    assert result.missing_keys == [] and result.unexpected_keys == []
    reference.eval()
    if attn_resolutions:
        assert len(model.encoder.down[1].attn) == 1 and len(model.decoder.up[1].attn) == 2
    groups = {m.num_groups for m in model.modules() if isinstance(m, torch.nn.GroupNorm)}
    assert groups == {extra.get("norm_num_groups", 32)}

    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    z = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        posterior = model.encode(x)
        expected = reference.encode(x).latent_dist
        decoded, expected_decoded = model.decode(z), reference.decode(z).sample
    assert posterior.mean.shape == (2, 4, 16, 16) and decoded.shape == (2, 3, 32, 32)
    assert posterior.mean.abs().max() > 0.1 and decoded.abs().max() > 0.1  # not a trivially small signal
    torch.testing.assert_close(posterior.mean, expected.mean, atol=1e-5, rtol=0)
    torch.testing.assert_close(posterior.logvar, expected.logvar, atol=1e-5, rtol=0)
    torch.testing.assert_close(decoded, expected_decoded, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_sd15_shapes_load_into_diffusers():
    model = AutoencoderKL(ddconfig=SD15_DDCONFIG, lossconfig=IDENTITY_LOSS, embed_dim=4)
    reference, converted, result = to_diffusers(model, SD15_DDCONFIG)
    assert result.missing_keys == [] and result.unexpected_keys == []
    reference_state = reference.state_dict()
    assert set(converted) == set(reference_state)
    assert all(converted[k].shape == reference_state[k].shape for k in converted)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"SD1.5 VAE parameters: {n_params:,}")
    assert n_params == sum(p.numel() for p in reference.parameters()) == 83_653_863


def fixed_batch(n: int = 4, size: int = 16) -> torch.Tensor:
    """Smooth colour images, (N, C, H, W) in [-1, 1]: easy to reconstruct, far from constant."""
    coords = torch.linspace(0, 1, size)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    images = []
    for i in range(n):
        channels = [torch.sin(2 * math.pi * (xx * (c + 1) + yy * (i + 1)) / 2 + i) for c in range(3)]
        images.append(torch.stack(channels, dim=0))
    return torch.stack(images) * 0.9


class ImageDataset(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i]}


class MetricHistory(pl.Callback):
    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.rows.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")})


def fit(model: AutoencoderKL, batches: int, optimizers: int) -> MetricHistory:
    history = MetricHistory()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=batches * optimizers,  # Lightning counts the steps of every optimizer
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[history],
    )
    loader = DataLoader(ImageDataset(fixed_batch()), batch_size=4, shuffle=False)
    trainer.fit(model, train_dataloaders=loader)
    assert len(history.rows) == batches
    return history


def reconstruction_error(model: AutoencoderKL) -> float:
    """Mean |x - decode(mode(encode(x)))| on the training batch: the noise-free training signal."""
    x = model.get_input({"image": fixed_batch()})
    with torch.no_grad():
        return (model(x, sample_posterior=False)[0] - x).abs().mean().item()


def test_trains_with_discriminator_after_disc_start():
    pl.seed_everything(0)
    lossconfig = loss_config(disc_start=2, kl_weight=1e-6, rec_loss="l1", disc_weight=0.5, disc_num_layers=2)
    model = AutoencoderKL(ddconfig=tiny_ddconfig(), lossconfig=lossconfig, embed_dim=4, learning_rate=1e-3)
    before = reconstruction_error(model)
    history = fit(model, batches=8, optimizers=2).rows
    assert reconstruction_error(model) < 0.8 * before

    disc_factor = [row["train/disc_factor"] for row in history]
    assert disc_factor == [0.0, 0.0] + [1.0] * 6
    for row in history[:2]:
        assert row["train/g_loss"] == 0.0 and row["train/d_weight"] == 0.0 and row["train/disc_loss"] == 0.0
    for row in history[2:]:
        assert row["train/g_loss"] != 0.0 and row["train/d_weight"] > 0.0 and row["train/disc_loss"] > 0.0

    val_loader = DataLoader(ImageDataset(fixed_batch()), batch_size=4)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    metrics = trainer.validate(model, dataloaders=val_loader, verbose=False)[0]
    assert math.isfinite(metrics["val/rec_loss"])


def test_trains_l2_without_discriminator():
    pl.seed_everything(0)
    lossconfig = loss_config(kl_weight=1e-6, rec_loss="l2")
    model = AutoencoderKL(ddconfig=tiny_ddconfig(), lossconfig=lossconfig, embed_dim=4, learning_rate=1e-3)
    assert model.loss.discriminator is None
    before = reconstruction_error(model)
    history = fit(model, batches=8, optimizers=1).rows
    assert reconstruction_error(model) < 0.8 * before
    assert "train/disc_loss" not in history[-1] and history[-1]["train/g_loss"] == 0.0


@pytest.mark.parametrize("rec_loss", ["l1", "l2"])
def test_loss_terms(rec_loss):
    torch.manual_seed(0)
    loss = LPIPSWithDiscriminator(disc_start=5, kl_weight=0.5, rec_loss=rec_loss, logvar_init=0.3)
    x, xrec = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    posterior = SimpleNamespace(kl=lambda: torch.tensor([1.0, 3.0]))
    total, logs = loss(x, xrec, posterior, 0, global_step=4, last_layer=None)
    err = (x - xrec).abs() if rec_loss == "l1" else (x - xrec).pow(2)
    nll = (err / math.exp(0.3) + 0.3).sum() / 2
    torch.testing.assert_close(logs["train/rec_loss"], err.mean())
    torch.testing.assert_close(total, nll + 0.5 * 2.0)
    d_loss, logs = loss(x, xrec, posterior, 1, global_step=4)
    assert d_loss.item() == 0.0
    d_loss, logs = loss(x, xrec, posterior, 1, global_step=5, split="val")
    assert d_loss.item() > 0.0 and "val/logits_real" in logs


def test_perceptual_loss_needs_local_weights():
    with pytest.raises(ValueError, match="lpips_ckpt"):
        LPIPSWithDiscriminator(perceptual_weight=1.0)


def test_lpips_matches_taming_layout(tmp_path, monkeypatch):
    """taming's LPIPS with random VGG weights (its download patched out) loads strictly and agrees."""
    import taming.modules.losses.lpips as taming_lpips
    from torchvision.models.vgg import cfgs, make_layers

    monkeypatch.setattr(
        taming_lpips,
        "models",
        SimpleNamespace(vgg16=lambda pretrained: SimpleNamespace(features=make_layers(cfgs["D"]))),
    )
    monkeypatch.setattr(taming_lpips.LPIPS, "load_from_pretrained", lambda self: None)
    torch.manual_seed(0)
    reference = taming_lpips.LPIPS().eval()
    with torch.no_grad():
        for name, p in reference.named_parameters():
            if name.startswith("lin"):
                p.uniform_(0.0, 1.0)
    path = tmp_path / "lpips_vgg.pth"
    torch.save(reference.state_dict(), path)

    loss = LPIPSWithDiscriminator(perceptual_weight=1.0, lpips_ckpt=str(path))
    loss.train()
    assert not loss.perceptual_loss.training
    x, y = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loss.perceptual_loss(x, y), reference(x, y))
    total, logs = loss(x, y, SimpleNamespace(kl=lambda: torch.zeros(2)), 0, global_step=0)
    assert torch.isfinite(total)


def test_init_from_ckpt_round_trip(tmp_path):
    lossconfig = loss_config(disc_start=1)
    source = AutoencoderKL(ddconfig=tiny_ddconfig(), lossconfig=lossconfig, embed_dim=4)
    randomize_(source)
    full = {f"first_stage_model.{k}": v.clone() for k, v in source.state_dict().items()}
    full["model.diffusion_model.out.2.weight"] = torch.zeros(4, 320, 3, 3)  # rest of an SD checkpoint
    torch.save({"state_dict": full, "global_step": 7}, tmp_path / "sd.ckpt")
    save_file(full, str(tmp_path / "sd.safetensors"))

    for name in ("sd.ckpt", "sd.safetensors"):
        config = {
            "target": TARGET,
            "params": {
                "ddconfig": tiny_ddconfig(),
                "lossconfig": IDENTITY_LOSS,  # inference config: `loss.*` keys are allowed extras
                "embed_dim": 4,
                "ckpt_path": str(tmp_path / name),
            },
        }
        loaded = instantiate_from_config(config, path="model.params.first_stage_config")
        expected = {k: v for k, v in source.state_dict().items() if not k.startswith("loss.")}
        assert set(loaded.state_dict()) == set(expected)
        for key, value in loaded.state_dict().items():
            assert torch.equal(value, expected[key]), key

    torch.save(dict(source.state_dict()), tmp_path / "bare.ckpt")
    trainable = AutoencoderKL(ddconfig=tiny_ddconfig(), lossconfig=lossconfig, embed_dim=4)
    trainable.init_from_ckpt(tmp_path / "bare.ckpt")
    for key, value in trainable.state_dict().items():
        assert torch.equal(value, source.state_dict()[key]), key


def test_init_from_ckpt_is_strict(tmp_path):
    model = AutoencoderKL(ddconfig=tiny_ddconfig(), lossconfig=IDENTITY_LOSS, embed_dim=4)
    state = {f"first_stage_model.{k}": v for k, v in model.state_dict().items()}

    extra = dict(state, **{"first_stage_model.encoder.conv_extra.weight": torch.zeros(1)})
    torch.save(extra, tmp_path / "extra.ckpt")
    with pytest.raises(CheckpointMismatchError, match=r"unexpected keys: 1 \(encoder\.conv_extra\.weight\)"):
        copy.deepcopy(model).init_from_ckpt(tmp_path / "extra.ckpt")

    fewer = {k: v for k, v in state.items() if not k.startswith("first_stage_model.decoder.conv_out.")}
    torch.save(fewer, tmp_path / "fewer.ckpt")
    missing = r"missing keys: 2 \(decoder\.conv_out\.weight, decoder\.conv_out\.bias\)"
    with pytest.raises(CheckpointMismatchError, match=missing):
        copy.deepcopy(model).init_from_ckpt(tmp_path / "fewer.ckpt")
    copy.deepcopy(model).init_from_ckpt(tmp_path / "fewer.ckpt", ignore_keys=["decoder.conv_out"])


def test_config_typo_names_the_key():
    ddconfig = tiny_ddconfig()
    ddconfig["z_channel"] = ddconfig.pop("z_channels")
    config = {"target": TARGET, "params": {"ddconfig": ddconfig, "lossconfig": IDENTITY_LOSS, "embed_dim": 4}}
    with pytest.raises(ConfigError, match=r"^model\.params\.ddconfig\.z_channel: unknown"):
        instantiate_from_config(config, path="model")
    del config["params"]["ddconfig"]["z_channel"]
    with pytest.raises(ConfigError, match=r"^model\.params\.ddconfig\.z_channels: required"):
        instantiate_from_config(config, path="model")
    assert inspect.signature(Encoder) == inspect.signature(Decoder)  # one ddconfig fits both

    config = {
        "target": TARGET,
        "params": {"ddconfig": tiny_ddconfig(), "lossconfig": loss_config(kl_weigth=1.0), "embed_dim": 4},
    }
    with pytest.raises(ConfigError, match=r"^model\.params\.lossconfig\.params\.kl_weigth"):
        instantiate_from_config(config, path="model")


def test_log_images_in_range():
    model = AutoencoderKL(ddconfig=tiny_ddconfig(), lossconfig=IDENTITY_LOSS, embed_dim=4).eval()
    images = model.log_images({"image": fixed_batch(3, 32)}, n=2)
    assert set(images) == {"inputs", "reconstructions", "samples"}
    for value in images.values():
        assert value.shape == (2, 3, 32, 32) and value.min() >= -1 and value.max() <= 1
