"""The denoising objective: per-sample regression loss between UNet output and target."""

from __future__ import annotations

import torch

LOSS_TYPES = ("l2", "l1")


def diffusion_loss(output: torch.Tensor, target: torch.Tensor, loss_type: str = "l2") -> torch.Tensor:
    """Per-sample loss (B,), the mean over every non-batch dimension; `loss_type` is l2 (MSE) or l1."""
    if loss_type == "l2":
        err = (output.float() - target.float()) ** 2
    elif loss_type == "l1":
        err = (output.float() - target.float()).abs()
    else:
        raise ValueError(f"loss_type {loss_type!r} is not one of {LOSS_TYPES}")
    return err.mean(dim=tuple(range(1, err.ndim)))


def min_snr_weights(alphas_cumprod: torch.Tensor, gamma: float, parameterization: str) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR
    Weighting Strategy"), (B,) from abar_t (B,).

    With SNR = abar / (1 - abar), the x0-space weight min(SNR, gamma) becomes min(SNR, gamma) / SNR
    on the eps loss and min(SNR, gamma) / (SNR + 1) on the v loss (as diffusers' training scripts).
    """
    snr = alphas_cumprod / (1 - alphas_cumprod)
    clipped = torch.clamp(snr, max=gamma)
    return clipped / snr if parameterization == "eps" else clipped / (snr + 1)
