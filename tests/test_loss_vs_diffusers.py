"""The editing training loss against diffusers' InstructPix2Pix training script.

Ours is `LatentDiffusion.shared_step` in training mode (the code `training_step` runs: encode the
target and the input image, conditioning dropout, timesteps, noise, UNet, MSE). Theirs is a line
by line transcription of the loss in diffusers' examples/instruct_pix2pix/train_instruct_pix2pix.py
on the same weights converted to `UNet2DConditionModel`, `AutoencoderKL` and `CLIPTextModel`
(ldm/diffusers_export.py), with a `DDPMScheduler` holding our betas for `add_noise` and
`get_velocity`.

How the random draws are lined up:
- The target latent is a posterior sample on both sides, drawn with `torch.randn` of the
  latent's shape as the first draw after the same `torch.manual_seed`.
- Dropout: both draw one uniform u per sample and map it to masks (text dropped for
  u < 2p, image for p <= u < 3p; ours with rates (p, p, p)). Our draw `torch.rand(B)`,
  the timesteps `torch.randint(0, 1000, (B,))` and the noise `torch.randn_like(z)` are
  replaced by given tensors (each must be asked for exactly once, with those arguments), and
  diffusers' code gets the same tensors.
- The empty-prompt embedding on their side comes from their text encoder and tokenizer
  (`tokenize_captions([""])`), ours from `cond_stage_model.empty_embedding()`.

Tolerance: rtol = atol = 1e-6 on the scalar loss (~2), compared in float64. Both sides run in
float32; the UNets agree to ~1e-7 of their output (tests/test_unet.py), and diffusers' float32
`alphas_cumprod` differs from ours (float64, then rounded) by a few ulp. Measured: 0 or 1 ulp of
the loss (2.4e-7).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from helpers import tiny_model, tiny_model_config

from ldm.diffusers_export import to_diffusers_pipeline

P = 0.05  # the dropout rate of each band, our default (cond_drop_text = cond_drop_both = cond_drop_image)
SEED = 11  # of the posterior sample of the target latent
T = torch.tensor([0, 480, 999])  # one timestep per sample: both ends of the schedule and one between
# one uniform draw per sample, the same for the whole batch: which conditioning is kept
DRAWS = {"keep both": 0.5, "drop text only": 0.02, "drop image only": 0.12, "drop both": 0.07}


def batch(n: int = 3) -> dict:
    g = torch.Generator().manual_seed(1)
    return {
        "edited": torch.rand(n, 3, 32, 32, generator=g) * 2 - 1,
        "edit": {
            "c_concat": torch.rand(n, 3, 32, 32, generator=g) * 2 - 1,
            "c_crossattn": ["make it red", "color the cat blue", "green"][:n],
        },
    }


@pytest.fixture(scope="module", params=["eps", "v"])
def models(request):
    """(our model, diffusers pipeline on the same tensors, DDPMScheduler with our betas), eps and v."""
    parameterization = request.param
    # scale 1: UNet outputs of about unit size, so conditioning changes the loss far beyond the tolerance
    model = tiny_model(scale=1.0, parameterization=parameterization)
    prediction_type = {"eps": "epsilon", "v": "v_prediction"}[parameterization]
    scheduler = DDPMScheduler(num_train_timesteps=model.num_timesteps, trained_betas=model.betas.numpy(),
                              prediction_type=prediction_type)  # fmt: skip
    pipe = to_diffusers_pipeline(model, tiny_model_config(parameterization=parameterization), scheduler)
    return model, pipe, scheduler


@contextmanager
def injected_draws(
    monkeypatch: pytest.MonkeyPatch, u: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
) -> Iterator[dict[str, int]]:
    """Replace the dropout uniforms, timesteps and noise of one training step by `u`, `t`, `noise`."""
    calls = {"rand": 0, "randint": 0, "randn_like": 0}

    def rand(*size, **kwargs):
        assert tuple(size) == tuple(u.shape), size
        calls["rand"] += 1
        return u.clone()

    def randint(low, high, size, **kwargs):
        assert (low, high, tuple(size)) == (0, 1000, tuple(t.shape)), (low, high, size)
        calls["randint"] += 1
        return t.clone()

    def randn_like(x, **kwargs):
        assert x.shape == noise.shape, x.shape
        calls["randn_like"] += 1
        return noise.clone()

    with monkeypatch.context() as patch:
        patch.setattr(torch, "rand", rand)
        patch.setattr(torch, "randint", randint)
        patch.setattr(torch, "randn_like", randn_like)
        yield calls


@torch.no_grad()
def our_loss(model, b: dict, u: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    model.train()
    try:
        with pytest.MonkeyPatch.context() as monkeypatch, injected_draws(monkeypatch, u, t, noise) as calls:
            torch.manual_seed(SEED)
            loss = model.shared_step(b)
    finally:
        model.eval()
    assert calls == {"rand": 1, "randint": 1, "randn_like": 1}  # each draw replaced, and only once
    return loss


@torch.no_grad()
def diffusers_loss(pipe, scheduler: DDPMScheduler, b: dict, u: torch.Tensor, t: torch.Tensor, noise: torch.Tensor):
    """train_instruct_pix2pix.py's loss (conditioning_dropout_prob = P, fp32), its variable names."""
    vae, text_encoder, unet, tokenizer = pipe.vae, pipe.text_encoder, pipe.unet, pipe.tokenizer

    def tokenize_captions(captions: list[str]) -> torch.Tensor:
        inputs = tokenizer(captions, max_length=tokenizer.model_max_length, padding="max_length", truncation=True,
                           return_tensors="pt")  # fmt: skip
        return inputs.input_ids

    torch.manual_seed(SEED)
    latents = vae.encode(b["edited"]).latent_dist.sample()
    latents = latents * vae.config.scaling_factor
    bsz = latents.shape[0]
    timesteps = t.long()
    noisy_latents = scheduler.add_noise(latents, noise, timesteps)
    encoder_hidden_states = text_encoder(tokenize_captions(list(b["edit"]["c_crossattn"])))[0]
    original_image_embeds = vae.encode(b["edit"]["c_concat"]).latent_dist.mode()

    random_p = u
    prompt_mask = random_p < 2 * P
    prompt_mask = prompt_mask.reshape(bsz, 1, 1)
    null_conditioning = text_encoder(tokenize_captions([""]))[0]
    encoder_hidden_states = torch.where(prompt_mask, null_conditioning, encoder_hidden_states)
    image_mask_dtype = original_image_embeds.dtype
    image_mask = 1 - ((random_p >= P).to(image_mask_dtype) * (random_p < 3 * P).to(image_mask_dtype))
    image_mask = image_mask.reshape(bsz, 1, 1, 1)
    original_image_embeds = image_mask * original_image_embeds

    concatenated_noisy_latents = torch.cat([noisy_latents, original_image_embeds], dim=1)
    if scheduler.config.prediction_type == "epsilon":
        target = noise
    else:
        target = scheduler.get_velocity(latents, noise, timesteps)
    model_pred = unet(concatenated_noisy_latents, timesteps, encoder_hidden_states, return_dict=False)[0]
    return F.mse_loss(model_pred.float(), target.float(), reduction="mean")


def noise_for(b: dict) -> torch.Tensor:
    return torch.randn(len(b["edited"]), 4, 8, 8, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("case", list(DRAWS))
def test_loss_matches_diffusers_training_script(models, case):
    model, pipe, scheduler = models
    b = batch()
    u = torch.full((3,), DRAWS[case])
    noise = noise_for(b)
    ours = our_loss(model, b, u, T, noise)
    theirs = diffusers_loss(pipe, scheduler, b, u, T, noise)
    torch.testing.assert_close(ours.double(), theirs.double(), rtol=1e-6, atol=1e-6)
    # magnitude guard: dropping conditioning moves the loss 100x beyond the tolerance, so a swapped
    # mask, a wrong empty embedding or a changed concat order cannot pass unseen
    if case != "keep both":
        kept = diffusers_loss(pipe, scheduler, b, torch.full((3,), DRAWS["keep both"]), T, noise)
        assert (theirs - kept).abs() > 1e-4, (case, theirs.item(), kept.item())


def test_mixed_batch_matches_diffusers(models):
    """All four cases in one batch, each sample at its own timestep: the masks index the right samples."""
    model, pipe, scheduler = models
    b = batch(4)
    b["edit"]["c_crossattn"] = ["make it red", "color the cat blue", "green", "yellow sun"]
    u = torch.tensor([DRAWS["drop text only"], DRAWS["keep both"], DRAWS["drop both"], DRAWS["drop image only"]])
    t = torch.tensor([999, 3, 250, 700])
    noise = noise_for(b)
    ours = our_loss(model, b, u, t, noise)
    torch.testing.assert_close(ours.double(), diffusers_loss(pipe, scheduler, b, u, t, noise).double(),
                               rtol=1e-6, atol=1e-6)  # fmt: skip


def test_dropout_bands_match_diffusers_on_the_same_uniforms():
    """Our masks from u (one `torch.rand(B)` draw) are the script's for every band edge."""
    model = tiny_model()
    u = torch.tensor([0.0, 0.0499, 0.05, 0.0999, 0.1, 0.1499, 0.15, 0.5, 0.9999])
    torch.manual_seed(0)
    with pytest.MonkeyPatch.context() as monkeypatch, injected_draws(monkeypatch, u, T, torch.zeros(1)) as calls:
        drop_text, drop_image = model.dropout_masks(len(u))
    assert calls["rand"] == 1
    assert drop_text.tolist() == (u < 2 * P).tolist()
    assert drop_image.tolist() == ((u >= P) & (u < 3 * P)).tolist()
    assert drop_text.tolist() == [True, True, True, True, False, False, False, False, False]
    assert drop_image.tolist() == [False, False, True, True, True, True, False, False, False]
