"""Training loss of the KL autoencoder: reconstruction + KL + optional patch-GAN (and LPIPS).

From taming-transformers we take only the PatchGAN `NLayerDiscriminator` with its
`weights_init`, the `hinge_d_loss`/`vanilla_d_loss` GAN losses and `adopt_weight`, so the
discriminator matches the one SD's VAE was trained with; taming's LPIPS is not used because it
downloads VGG weights at run time, so `LPIPS` below loads every weight from a local file.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from taming.modules.discriminator.model import NLayerDiscriminator, weights_init
from taming.modules.losses.vqperceptual import adopt_weight, hinge_d_loss, vanilla_d_loss
from torch import nn
from torchvision.models.vgg import cfgs as vgg_cfgs
from torchvision.models.vgg import make_layers

from ldm.checkpoint import load_state_dict_file
from ldm.modules.distributions.distributions import DiagonalGaussianDistribution

# VGG16 feature indices of the five LPIPS slices, ending after relu1_2 ... relu5_3.
_VGG_SLICES = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))
_VGG_CHANNELS = (64, 128, 256, 512, 512)


class LPIPS(nn.Module):
    """LPIPS distance (VGG16 variant, Zhang et al. 2018) with all weights from `ckpt_path`.

    The state dict layout is taming's `LPIPS` (`scaling_layer.shift`, `net.slice1.0.weight`, ...,
    `lin0.model.1.weight`), VGG weights included; on a machine with network access one can be
    written with `torch.save(taming.modules.losses.lpips.LPIPS().state_dict(), path)`.
    The VGG16 features are built by torchvision without pretrained weights, then loaded strictly.
    """

    def __init__(self, ckpt_path: str) -> None:
        super().__init__()
        self.scaling_layer = nn.Module()
        self.scaling_layer.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None])
        self.scaling_layer.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None])
        features = make_layers(vgg_cfgs["D"], batch_norm=False)  # VGG16 `features`, random init
        self.net = nn.Module()
        for k, (start, stop) in enumerate(_VGG_SLICES, start=1):
            layers = OrderedDict((str(i), features[i]) for i in range(start, stop))
            setattr(self.net, f"slice{k}", nn.Sequential(layers))
        for k, channels in enumerate(_VGG_CHANNELS):
            lin = nn.Module()
            lin.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, kernel_size=1, bias=False))
            setattr(self, f"lin{k}", lin)
        self.load_state_dict(load_state_dict_file(ckpt_path), strict=True)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPS:
        """Stay in eval mode: LPIPS is a fixed metric (no dropout), whatever mode its parent is in."""
        return super().train(False)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Distance per image, (B, 1, 1, 1), for images (B, 3, H, W) in [-1, 1]."""
        h0 = (input - self.scaling_layer.shift) / self.scaling_layer.scale
        h1 = (target - self.scaling_layer.shift) / self.scaling_layer.scale
        total = 0.0
        for k in range(len(_VGG_SLICES)):
            feature_slice = getattr(self.net, f"slice{k + 1}")
            h0, h1 = feature_slice(h0), feature_slice(h1)
            diff = (_unit_channels(h0) - _unit_channels(h1)).pow(2)
            total = total + getattr(self, f"lin{k}").model(diff).mean(dim=(2, 3), keepdim=True)
        return total


def _unit_channels(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Normalise each position's feature vector to unit length (over dim 1)."""
    return x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


class LPIPSWithDiscriminator(nn.Module):
    """Loss of the KL autoencoder; called once per optimizer (0: autoencoder, 1: discriminator).

    Autoencoder loss (original LDM): sum(rec / exp(logvar) + logvar) / B + kl_weight * KL / B
    + d_weight * disc_factor * g_loss, where rec is L1 or L2 (`rec_loss`) plus
    `perceptual_weight` * LPIPS, and d_weight balances the GAN term by the ratio of gradient
    norms at the decoder's last layer (Esser et al. 2021, eq. 7) times `disc_weight`.

    `disc_start=None` builds no discriminator. Otherwise the discriminator terms are multiplied
    by 0 before step `disc_start` and by `disc_factor` from then on. `learn_logvar` only tells
    the autoencoder to optimise `logvar`; the original kept it fixed at `logvar_init`.
    """

    def __init__(
        self,
        disc_start: int | None = None,
        logvar_init: float = 0.0,
        learn_logvar: bool = False,
        kl_weight: float = 1.0,
        rec_loss: str = "l1",
        perceptual_weight: float = 0.0,
        lpips_ckpt: str | None = None,
        disc_num_layers: int = 3,
        disc_in_channels: int = 3,
        disc_factor: float = 1.0,
        disc_weight: float = 1.0,
        disc_loss: str = "hinge",
    ) -> None:
        super().__init__()
        if rec_loss not in ("l1", "l2"):
            raise ValueError(f"rec_loss must be 'l1' or 'l2', got {rec_loss!r}")
        if disc_loss not in ("hinge", "vanilla"):
            raise ValueError(f"disc_loss must be 'hinge' or 'vanilla', got {disc_loss!r}")
        if perceptual_weight > 0 and lpips_ckpt is None:
            raise ValueError(
                "perceptual_weight > 0 needs lpips_ckpt: a local LPIPS-VGG16 state dict (VGG features "
                "included); LPIPS weights are never downloaded. Set lpips_ckpt or perceptual_weight: 0."
            )
        self.kl_weight = kl_weight
        self.rec_loss = rec_loss
        self.perceptual_weight = perceptual_weight
        self.perceptual_loss = LPIPS(lpips_ckpt) if perceptual_weight > 0 else None
        self.learn_logvar = learn_logvar
        self.logvar = nn.Parameter(torch.ones(()) * logvar_init, requires_grad=learn_logvar)

        self.discriminator_iter_start = disc_start
        self.disc_factor = disc_factor
        self.discriminator_weight = disc_weight
        self.disc_loss = hinge_d_loss if disc_loss == "hinge" else vanilla_d_loss
        if disc_start is None:
            self.discriminator = None
        else:
            self.discriminator = NLayerDiscriminator(input_nc=disc_in_channels, n_layers=disc_num_layers)
            self.discriminator.apply(weights_init)

    def calculate_adaptive_weight(
        self, nll_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor
    ) -> torch.Tensor:
        """disc_weight * |grad nll| / (|grad g_loss| + 1e-4) at `last_layer`, clamped to [0, 1e4]."""
        nll_grads = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
        g_grads = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
        d_weight = torch.norm(nll_grads) / (torch.norm(g_grads) + 1e-4)
        return torch.clamp(d_weight, 0.0, 1e4).detach() * self.discriminator_weight

    def forward(
        self,
        inputs: torch.Tensor,
        reconstructions: torch.Tensor,
        posteriors: DiagonalGaussianDistribution,
        optimizer_idx: int,
        global_step: int,
        last_layer: torch.Tensor | None = None,
        split: str = "train",
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return (loss, logs) for `optimizer_idx` 0 (autoencoder) or 1 (discriminator).

        `inputs`, `reconstructions`: (B, C, H, W) in [-1, 1]. `global_step` counts training
        batches; `last_layer` is the decoder's output conv weight (for the adaptive weight).
        """
        if optimizer_idx == 0:
            return self._autoencoder_loss(inputs, reconstructions, posteriors, global_step, last_layer, split)
        if optimizer_idx == 1:
            return self._discriminator_loss(inputs, reconstructions, global_step, split)
        raise ValueError(f"optimizer_idx must be 0 or 1, got {optimizer_idx}")

    def _autoencoder_loss(
        self,
        inputs: torch.Tensor,
        reconstructions: torch.Tensor,
        posteriors: DiagonalGaussianDistribution,
        global_step: int,
        last_layer: torch.Tensor | None,
        split: str,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.rec_loss == "l1":
            rec_loss = (inputs - reconstructions).abs()  # (B, C, H, W)
        else:
            rec_loss = (inputs - reconstructions).pow(2)
        if self.perceptual_loss is not None:
            rec_loss = rec_loss + self.perceptual_weight * self.perceptual_loss(inputs, reconstructions)
        batch_size = inputs.shape[0]
        nll_loss = torch.sum(rec_loss / torch.exp(self.logvar) + self.logvar) / batch_size
        kl_loss = torch.sum(posteriors.kl()) / batch_size
        loss = nll_loss + self.kl_weight * kl_loss

        zero = torch.zeros((), device=inputs.device)
        g_loss, d_weight, disc_factor = zero, zero, 0.0
        if self.discriminator is not None:
            disc_factor = adopt_weight(self.disc_factor, global_step, threshold=self.discriminator_iter_start)
        if disc_factor > 0:
            g_loss = -torch.mean(self.discriminator(reconstructions.contiguous()))
            if torch.is_grad_enabled():  # no adaptive weight (no gradients) in validation
                d_weight = self.calculate_adaptive_weight(nll_loss, g_loss, last_layer)
            loss = loss + d_weight * disc_factor * g_loss

        logs = {
            "total_loss": loss,
            "logvar": self.logvar,
            "kl_loss": kl_loss,
            "nll_loss": nll_loss,
            "rec_loss": rec_loss.mean(),
            "d_weight": d_weight,
            "disc_factor": torch.tensor(float(disc_factor)),
            "g_loss": g_loss,
        }
        return loss, {f"{split}/{k}": v.detach().clone() for k, v in logs.items()}

    def _discriminator_loss(
        self, inputs: torch.Tensor, reconstructions: torch.Tensor, global_step: int, split: str
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.discriminator is None:
            raise ValueError("optimizer_idx 1 needs a discriminator; this loss was built with disc_start: null")
        logits_real = self.discriminator(inputs.contiguous().detach())  # (B, 1, h, w) patch logits
        logits_fake = self.discriminator(reconstructions.contiguous().detach())
        # Before disc_start the factor is 0: the step still runs (zero gradients), as in the original.
        disc_factor = adopt_weight(self.disc_factor, global_step, threshold=self.discriminator_iter_start)
        d_loss = disc_factor * self.disc_loss(logits_real, logits_fake)
        logs = {
            "disc_loss": d_loss,
            "logits_real": logits_real.mean(),
            "logits_fake": logits_fake.mean(),
        }
        return d_loss, {f"{split}/{k}": v.detach().clone() for k, v in logs.items()}
