"""Noise schedule buffers against diffusers' DDPMScheduler and closed forms."""

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from ldm.models.diffusion.schedule import (
    SCHEDULE_BUFFERS,
    extract,
    make_beta_schedule,
    register_schedule,
    sample_timesteps,
)


def sd_module():
    module = torch.nn.Module()
    register_schedule(module, make_beta_schedule("linear", 1000, 0.00085, 0.012))
    return module


def test_sd1_schedule_matches_diffusers_scaled_linear():
    module = sd_module()
    ref = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    # diffusers builds betas in float32, we in float64 then cast: agreement to float32 rounding
    torch.testing.assert_close(module.betas, ref.betas, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(module.alphas_cumprod, ref.alphas_cumprod, rtol=1e-5, atol=1e-7)
    assert module.alphas_cumprod[-1].item() == pytest.approx(0.0047, abs=1e-4)


def test_cosine_schedule_matches_diffusers_squaredcos():
    betas = torch.tensor(make_beta_schedule("cosine", 1000), dtype=torch.float32)
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    # both follow Nichol & Dhariwal; diffusers omits the offset normalisation, so compare loosely
    torch.testing.assert_close(betas[1:-1], ref.betas[1:-1], rtol=2e-2, atol=1e-4)


def test_all_checkpoint_buffers_are_persistent():
    module = sd_module()
    assert set(module.state_dict()) == set(SCHEDULE_BUFFERS)


def test_posterior_coefficients_reconstruct_mean():
    m = sd_module()
    # posterior mean of x_{t-1} given x_0 = x_t = 1 is coef1 + coef2; check the closed form at t = 500
    t = 500
    abar, abar_prev, beta = (m.alphas_cumprod[t].double(), m.alphas_cumprod_prev[t].double(), m.betas[t].double())
    coef1 = beta * abar_prev.sqrt() / (1 - abar)
    coef2 = (1 - abar_prev) * (1 - beta).sqrt() / (1 - abar)
    assert m.posterior_mean_coef1[t].item() == pytest.approx(coef1.item(), rel=1e-5)
    assert m.posterior_mean_coef2[t].item() == pytest.approx(coef2.item(), rel=1e-5)
    assert np.isfinite(m.posterior_log_variance_clipped.numpy()).all()


def test_extract_broadcast_shape():
    m = sd_module()
    out = extract(m.sqrt_alphas_cumprod, torch.tensor([0, 999]), ndim=4)
    assert out.shape == (2, 1, 1, 1)
    assert out[1].item() == pytest.approx(m.sqrt_alphas_cumprod[999].item())


def test_unknown_schedule_names_key():
    with pytest.raises(ValueError, match="beta_schedule: unknown schedule 'quadratic'"):
        make_beta_schedule("quadratic", 10)


def test_sample_timesteps_unshifted_is_the_compvis_randint():
    """shift 1 draws exactly what `torch.randint(0, T, (B,))` draws: seeded runs of old recipes reproduce."""
    torch.manual_seed(5)
    expected = torch.randint(0, 1000, (64,))
    torch.manual_seed(5)
    assert torch.equal(sample_timesteps(64, 1000, 1.0, torch.device("cpu")), expected)


@pytest.mark.parametrize("shift", [2.0, 3.0])
def test_sample_timesteps_shift_follows_its_distribution(shift):
    """The empirical CDF of shifted timesteps against the analytic one: P(t < T x) = x / (s - (s - 1) x)
    (the inverse of u -> s u / (1 + (s - 1) u)), within a Kolmogorov-Smirnov bound for 200,000 draws."""
    torch.manual_seed(0)
    t = sample_timesteps(200_000, 1000, shift, torch.device("cpu"))
    assert t.dtype == torch.int64 and int(t.min()) >= 0 and int(t.max()) <= 999
    x = torch.arange(1, 1000, dtype=torch.float64) / 1000
    empirical = (t.double()[None, :] < (x * 1000)[:, None]).double().mean(dim=1)
    analytic = x / (shift - (shift - 1) * x)
    assert float((empirical - analytic).abs().max()) < 0.005
    assert float((t >= 500).double().mean()) == pytest.approx(shift / (1 + shift), abs=0.005)
