"""Discrete DDPM noise schedules and the buffers that Stable Diffusion checkpoints carry.

SD 1.x uses the "linear" schedule of the CompVis code: linear on the square root of beta,
from 0.00085 to 0.012 over 1000 steps (diffusers calls it "scaled_linear").
The buffer names below are the checkpoint format and must not change.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

SCHEDULE_BUFFERS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)


def make_beta_schedule(
    schedule: str,
    n_timestep: int,
    linear_start: float = 1e-4,
    linear_end: float = 2e-2,
    cosine_s: float = 8e-3,
) -> np.ndarray:
    """Betas (n_timestep,) in float64 for `linear` (SD), `cosine` (Nichol & Dhariwal), `sqrt_linear`, `sqrt`."""
    if schedule == "linear":
        betas = np.linspace(linear_start**0.5, linear_end**0.5, n_timestep, dtype=np.float64) ** 2
    elif schedule == "cosine":
        # Improved DDPM, eq. 17: alpha_bar(t) = cos^2(((t/T + s) / (1 + s)) * pi/2)
        steps = np.arange(n_timestep + 1, dtype=np.float64) / n_timestep + cosine_s
        alphas_bar = np.cos(steps / (1 + cosine_s) * math.pi / 2) ** 2
        alphas_bar = alphas_bar / alphas_bar[0]
        betas = np.clip(1 - alphas_bar[1:] / alphas_bar[:-1], 0, 0.999)
    elif schedule == "sqrt_linear":
        betas = np.linspace(linear_start, linear_end, n_timestep, dtype=np.float64)
    elif schedule == "sqrt":
        betas = np.linspace(linear_start, linear_end, n_timestep, dtype=np.float64) ** 0.5
    else:
        raise ValueError(f"beta_schedule: unknown schedule {schedule!r} (linear, cosine, sqrt_linear, sqrt)")
    return betas


# abar at the last step of a zero-terminal-SNR schedule: 0 exactly would make sigma_max infinite in the
# k-diffusion samplers; 2^-24 (sigma_max 4096) as diffusers' Euler schedulers use for rescaled schedules.
TERMINAL_ALPHA_BAR = 2.0**-24


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Betas whose last step has (almost) zero SNR: Algorithm 1 of Lin et al. (2024), "Common Diffusion
    Noise Schedules and Sample Steps are Flawed".

    sqrt(abar) is shifted so its last value is 0 and scaled so its first value is unchanged; the last
    abar is then raised to TERMINAL_ALPHA_BAR. Without this, SD's schedule leaves sqrt(abar_T) = 0.068
    of the image in x_T, so training teaches the model to keep the mean color of its input noise, and
    samples started from pure noise cannot pick the colors an instruction names.
    """
    sqrt_abar = np.sqrt(np.cumprod(1.0 - betas))
    first, last = sqrt_abar[0], sqrt_abar[-1]
    sqrt_abar = (sqrt_abar - last) * first / (first - last)
    abar = sqrt_abar**2
    abar[-1] = TERMINAL_ALPHA_BAR
    return 1.0 - np.concatenate([abar[:1], abar[1:] / abar[:-1]])


def schedule_tensors(betas: np.ndarray, v_posterior: float = 0.0) -> dict[str, torch.Tensor]:
    """All schedule buffers (float32, (T,)) derived from betas, computed in float64 first."""
    alphas = 1.0 - betas
    alphas_cumprod = np.cumprod(alphas, axis=0)
    alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
    # q(x_{t-1} | x_t, x_0) variance; v_posterior interpolates towards beta_t (eq. 7 of Ho et al.)
    posterior_variance = (1 - v_posterior) * betas * (1.0 - alphas_cumprod_prev) / (
        1.0 - alphas_cumprod
    ) + v_posterior * betas
    values = {
        "betas": betas,
        "alphas_cumprod": alphas_cumprod,
        "alphas_cumprod_prev": alphas_cumprod_prev,
        "sqrt_alphas_cumprod": np.sqrt(alphas_cumprod),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - alphas_cumprod),
        "log_one_minus_alphas_cumprod": np.log(1.0 - alphas_cumprod),
        "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod - 1),
        "posterior_variance": posterior_variance,
        # the posterior variance is 0 at t=0; clamp before the log, as the CompVis code does
        "posterior_log_variance_clipped": np.log(np.maximum(posterior_variance, 1e-20)),
        "posterior_mean_coef1": betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
        "posterior_mean_coef2": (1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod),
    }
    return {name: torch.tensor(values[name], dtype=torch.float32) for name in SCHEDULE_BUFFERS}


def register_schedule(module: nn.Module, betas: np.ndarray, v_posterior: float = 0.0) -> None:
    """Register every schedule buffer on `module` (persistent, so checkpoints carry them)."""
    for name, value in schedule_tensors(betas, v_posterior).items():
        module.register_buffer(name, value)


def extract(a: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """Gather a (T,) schedule at timesteps t (B,) and shape it (B, 1, ..., 1) for broadcasting."""
    return a.gather(-1, t).reshape(t.shape[0], *((1,) * (ndim - 1)))


def sample_timesteps(batch: int, num_timesteps: int, shift: float, device: torch.device) -> torch.Tensor:
    """Training timesteps (batch,), int64. `shift` 1: uniform over [0, T), torch.randint as the CompVis
    code. `shift` s > 1 moves them towards the noisy end with SD3's timestep shift (Esser et al. 2024,
    section 5.3.2) applied to the index fraction: u ~ U[0, 1), t = floor(T s u / (1 + (s - 1) u)), so
    P(t >= T / 2) = s / (1 + s)."""
    if shift == 1.0:
        return torch.randint(0, num_timesteps, (batch,), device=device)
    u = torch.rand(batch, device=device)
    shifted = shift * u / (1 + (shift - 1) * u)
    return (shifted * num_timesteps).long().clamp_(max=num_timesteps - 1)
