"""KL-regularised autoencoder: the frozen first stage of latent diffusion, trainable on small data.

Attribute names are the checkpoint format: `encoder.*`, `decoder.*`, `quant_conv.*`,
`post_quant_conv.*` and `loss.*` (SD checkpoints hold them under `first_stage_model.`).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from ldm.checkpoint import load_state_dict_file, load_strict
from ldm.modules.diffusionmodules.model import Decoder, Encoder
from ldm.modules.distributions.distributions import DiagonalGaussianDistribution
from ldm.util import ConfigError, accepted_params, config_path, instantiate_from_config

logger = logging.getLogger(__name__)

SD_PREFIX = "first_stage_model."


def check_ddconfig(ddconfig: Mapping[str, Any]) -> None:
    """Raise ConfigError naming `<config path>.ddconfig.<key>` for an unknown or missing key.

    Encoder and Decoder take the same keys, so one check covers both.
    """
    named, _ = accepted_params(Encoder)
    where = config_path("ddconfig")
    for key in ddconfig:
        if key not in named:
            raise ConfigError(f"{where}.{key}: unknown ddconfig key (it takes: {', '.join(sorted(named))})")
    for name, param in named.items():
        if param.default is inspect.Parameter.empty and name not in ddconfig:
            raise ConfigError(f"{where}.{name}: required ddconfig key not set")
    if not ddconfig.get("double_z", True):
        raise ConfigError(f"{where}.double_z: AutoencoderKL needs mean and log-variance (double_z: true)")


class AutoencoderKL(pl.LightningModule):
    """Image (B, 3, H, W) in [-1, 1] <-> latent (B, embed_dim, H/f, W/f), f = 2**(len(ch_mult)-1).

    `ddconfig` is passed to both Encoder and Decoder (see their docstrings for the keys each
    ignores) and must have `double_z: true`. `lossconfig` builds the training loss,
    `torch.nn.Identity` in inference configs. `learning_rate` is the optimizers': main.py passes
    `model.base_learning_rate`, scaled by `--scale_lr`.

    Training uses manual optimization with one Adam for the autoencoder and, when the loss has
    a discriminator, a second one for it. Lightning 2 counts every optimizer step in
    `global_step`, so with a discriminator `max_steps` is twice the number of batches; the loss
    receives the batch count (`global_step // number of optimizers`), as in the original.
    """

    def __init__(
        self,
        ddconfig: Mapping[str, Any],
        lossconfig: Mapping[str, Any],
        embed_dim: int,
        ckpt_path: str | None = None,
        ignore_keys: Iterable[str] = (),
        image_key: str = "image",
        learning_rate: float = 4.5e-6,
    ) -> None:
        super().__init__()
        ddconfig = dict(ddconfig)
        check_ddconfig(ddconfig)
        self.image_key = image_key
        self.encoder = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
        self.loss = instantiate_from_config(lossconfig, path="lossconfig")
        z_channels = ddconfig["z_channels"]
        self.quant_conv = nn.Conv2d(2 * z_channels, 2 * embed_dim, kernel_size=1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, kernel_size=1)
        self.embed_dim = embed_dim
        self.learning_rate = learning_rate
        self.automatic_optimization = False
        if ckpt_path is not None:
            self.init_from_ckpt(ckpt_path, ignore_keys=ignore_keys)

    def init_from_ckpt(self, path: str | Path, ignore_keys: Iterable[str] = ()) -> None:
        """Load weights from an autoencoder or full SD checkpoint (`first_stage_model.*` keys).

        Strict, with one allow-list: `loss.*` keys may be missing or unexpected, because inference
        configs use `torch.nn.Identity` as the loss while training checkpoints carry LPIPS and
        discriminator weights (and a fresh discriminator may start from an SD checkpoint).
        Keys starting with a prefix in `ignore_keys` are dropped and keep their fresh values.
        """
        state_dict = load_state_dict_file(path)
        if any(k.startswith(SD_PREFIX) for k in state_dict):
            state_dict = {k[len(SD_PREFIX) :]: v for k, v in state_dict.items() if k.startswith(SD_PREFIX)}
        ignore_keys = tuple(ignore_keys)
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(ignore_keys)}
        allowed = lambda key: key.startswith(("loss.", *ignore_keys))
        load_strict(self, state_dict, path, may_miss=allowed, may_add=allowed)
        logger.info("restored AutoencoderKL from %s (%d tensors)", path, len(state_dict))

    def encode(self, x: torch.Tensor) -> DiagonalGaussianDistribution:
        """(B, C, H, W) image -> posterior over (B, embed_dim, H/f, W/f) latents."""
        moments = self.quant_conv(self.encoder(x))  # (B, 2*embed_dim, H/f, W/f)
        return DiagonalGaussianDistribution(moments)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, embed_dim, h, w) latent -> (B, out_ch, h*f, w*f) image."""
        return self.decoder(self.post_quant_conv(z))

    def forward(
        self, input: torch.Tensor, sample_posterior: bool = True
    ) -> tuple[torch.Tensor, DiagonalGaussianDistribution]:
        posterior = self.encode(input)
        z = posterior.sample() if sample_posterior else posterior.mode()
        return self.decode(z), posterior

    def get_input(self, batch: Mapping[str, Any], key: str | None = None) -> torch.Tensor:
        """Batch images (B, C, H, W) in [-1, 1], as every dataset in `ldm.data` yields them, as float.

        (The CompVis autoencoder datasets yielded (B, H, W, C); the InstructPix2Pix datasets, and
        so this project's, yield channels first.)
        """
        x = batch[self.image_key if key is None else key]
        if x.ndim != 4:
            raise ValueError(f"batch[{self.image_key!r}] must be (B, C, H, W), got shape {tuple(x.shape)}")
        return x.contiguous().float()

    def get_last_layer(self) -> torch.Tensor:
        """Weight of the decoder's output conv, where the adaptive GAN weight compares gradients."""
        return self.decoder.conv_out.weight

    def _has_discriminator(self) -> bool:
        return getattr(self.loss, "discriminator", None) is not None

    def _batches_seen(self) -> int:
        """Training batches so far: `global_step` counts the steps of every optimizer."""
        return self.global_step // (2 if self._has_discriminator() else 1)

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        inputs = self.get_input(batch)
        reconstructions, posterior = self(inputs)
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        step = self._batches_seen()

        aeloss, log_ae = self.loss(
            inputs, reconstructions, posterior, 0, step, last_layer=self.get_last_layer(), split="train"
        )
        optimizers[0].zero_grad()
        self.manual_backward(aeloss)
        optimizers[0].step()
        batch_size = inputs.shape[0]
        self.log("aeloss", aeloss.detach(), prog_bar=True, on_step=True, on_epoch=True, batch_size=batch_size)
        self.log_dict(log_ae, on_step=True, on_epoch=False, batch_size=batch_size)

        if self._has_discriminator():
            discloss, log_disc = self.loss(inputs, reconstructions, posterior, 1, step, split="train")
            optimizers[1].zero_grad()
            self.manual_backward(discloss)
            optimizers[1].step()
            self.log("discloss", discloss.detach(), prog_bar=True, on_step=True, on_epoch=True, batch_size=batch_size)
            self.log_dict(log_disc, on_step=True, on_epoch=False, batch_size=batch_size)

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        inputs = self.get_input(batch)
        reconstructions, posterior = self(inputs)
        step = self._batches_seen()
        _, log_ae = self.loss(
            inputs, reconstructions, posterior, 0, step, last_layer=self.get_last_layer(), split="val"
        )
        self.log_dict(log_ae, batch_size=inputs.shape[0])
        if self._has_discriminator():
            _, log_disc = self.loss(inputs, reconstructions, posterior, 1, step, split="val")
            self.log_dict(log_disc, batch_size=inputs.shape[0])

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        if isinstance(self.loss, nn.Identity):
            raise ConfigError(
                "lossconfig: torch.nn.Identity is for inference only; to train the autoencoder use "
                "ldm.modules.losses.LPIPSWithDiscriminator"
            )
        ae_params = [
            *self.encoder.parameters(),
            *self.decoder.parameters(),
            *self.quant_conv.parameters(),
            *self.post_quant_conv.parameters(),
        ]
        if self.loss.learn_logvar:
            ae_params.append(self.loss.logvar)
        optimizers = [torch.optim.Adam(ae_params, lr=self.learning_rate, betas=(0.5, 0.9))]
        if self._has_discriminator():
            disc_params = self.loss.discriminator.parameters()
            optimizers.append(torch.optim.Adam(disc_params, lr=self.learning_rate, betas=(0.5, 0.9)))
        return optimizers

    @torch.no_grad()
    def log_images(self, batch: Mapping[str, Any], n: int | None = None) -> dict[str, torch.Tensor]:
        """Inputs, reconstructions and decodes of N(0, I) latents for the first `n` items (default all),
        each (n, C, H, W) in [-1, 1]."""
        inputs = self.get_input(batch)[:n].to(self.device)
        reconstructions, posterior = self(inputs)
        samples = self.decode(torch.randn_like(posterior.sample()))
        return {
            "inputs": inputs,
            "reconstructions": reconstructions.clamp(-1.0, 1.0),
            "samples": samples.clamp(-1.0, 1.0),
        }
