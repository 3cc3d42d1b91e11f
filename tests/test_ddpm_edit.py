"""The editing LatentDiffusion: conditioning, dropout rates, initialisation from SD-layout checkpoints."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import TINY_CONFIG
from omegaconf import OmegaConf
from safetensors.torch import save_file

from ldm.models.diffusion.loading import CheckpointMismatchError
from ldm.util import ConfigError, instantiate_from_config


def model_config(**params) -> dict:
    cfg = OmegaConf.to_container(OmegaConf.load(TINY_CONFIG).model, resolve=True)
    cfg.pop("base_learning_rate")
    cfg["params"].update(params)
    return cfg


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return instantiate_from_config(model_config(), "model")


def batch(n: int = 2) -> dict:
    g = torch.Generator().manual_seed(1)
    return {
        "edited": torch.rand(n, 3, 32, 32, generator=g) * 2 - 1,
        "edit": {"c_concat": torch.rand(n, 3, 32, 32, generator=g) * 2 - 1, "c_crossattn": ["make it red"] * n},
    }


def test_conditioning_latents(model):
    model.eval()
    b = batch()
    z, cond = model.get_input(b)
    posterior = model.first_stage_model.encode(b["edit"]["c_concat"])
    # input-image latent: posterior mode, not scaled; target latent: a scaled sample
    torch.testing.assert_close(cond["c_concat"][0], posterior.mode())
    assert z.shape == cond["c_concat"][0].shape == (2, 4, 8, 8)
    assert cond["c_crossattn"][0].shape == (2, 77, 32)
    x = torch.cat([z, cond["c_concat"][0]], dim=1)
    assert model.model.diffusion_model.input_blocks[0][0].in_channels == x.shape[1] == 8


def test_dropout_rates_over_20000_draws(model):
    torch.manual_seed(0)
    drop_text, drop_image = model.dropout_masks(20_000)
    rates = {
        "text only": (drop_text & ~drop_image).float().mean().item(),
        "both": (drop_text & drop_image).float().mean().item(),
        "image only": (~drop_text & drop_image).float().mean().item(),
    }
    for name, rate in rates.items():
        assert abs(rate - 0.05) < 0.01, (name, rate)


def test_dropout_applies_empty_text_and_zero_image(model):
    model.train()
    model.cond_drop = (0.0, 1.0, 0.0)  # drop both for every sample
    try:
        _, cond = model.get_input(batch())
    finally:
        model.cond_drop = (0.05, 0.05, 0.05)
        model.eval()
    assert torch.count_nonzero(cond["c_concat"][0]) == 0
    torch.testing.assert_close(cond["c_crossattn"][0], model.cond_stage_model.empty_embedding().expand(2, -1, -1))


def test_bad_dropout_rates_name_the_key():
    with pytest.raises(ConfigError, match=r"model\.params\.cond_drop_text"):
        instantiate_from_config(model_config(cond_drop_text=0.9, cond_drop_both=0.2), "model")


def test_timestep_shift_below_one_names_the_key():
    with pytest.raises(ConfigError, match=r"model\.params\.timestep_shift: must be >= 1"):
        instantiate_from_config(model_config(timestep_shift=0.5), "model")


def sd_layout_checkpoint(edit_model, with_ema: bool) -> dict:
    """A 4-channel text-to-image state dict in SD key layout, made from the editing model's own keys."""
    state = copy.deepcopy(edit_model.state_dict())
    for key in ("model.diffusion_model.input_blocks.0.0.weight", "model_ema.diffusion_modelinput_blocks00weight"):
        state[key] = torch.randn(state[key].shape[0], 4, *state[key].shape[2:])
    if not with_ema:
        state = {k: v for k, v in state.items() if not k.startswith("model_ema.")}
    state = {k: v + 0.5 if v.is_floating_point() and k.startswith("model") else v for k, v in state.items()}
    state["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    return state


@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors"])
def test_init_from_4_channel_checkpoint_with_ema(model, tmp_path, suffix):
    state = sd_layout_checkpoint(model, with_ema=True)
    path = tmp_path / f"sd{suffix}"
    if suffix == ".ckpt":
        torch.save({"state_dict": state, "global_step": 470000}, path)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    edit = instantiate_from_config(model_config(ckpt_path=str(path), load_ema=True), "model")
    for key in ("model.diffusion_model.input_blocks.0.0.weight", "model_ema.diffusion_modelinput_blocks00weight"):
        loaded = edit.state_dict()[key]
        assert loaded.shape[1] == 8
        torch.testing.assert_close(loaded[:, :4], state[key])
        assert torch.count_nonzero(loaded[:, 4:]) == 0
    torch.testing.assert_close(
        edit.state_dict()["model.diffusion_model.out.2.weight"], state["model.diffusion_model.out.2.weight"]
    )


def test_init_from_emaonly_checkpoint_builds_ema_after_loading(model, tmp_path):
    state = sd_layout_checkpoint(model, with_ema=False)
    path = tmp_path / "emaonly.ckpt"
    torch.save(state, path)  # a bare state dict
    edit = instantiate_from_config(model_config(ckpt_path=str(path), load_ema=False), "model")
    sd = edit.state_dict()
    torch.testing.assert_close(sd["model_ema.diffusion_modelinput_blocks00weight"],
                               sd["model.diffusion_model.input_blocks.0.0.weight"])  # fmt: skip
    assert torch.count_nonzero(sd["model_ema.diffusion_modelinput_blocks00weight"][:, 4:]) == 0

    with pytest.raises(CheckpointMismatchError, match="no EMA weights.*model.params.load_ema"):
        instantiate_from_config(model_config(ckpt_path=str(path), load_ema=True), "model")


def test_unexpected_and_missing_keys_fail_with_names(model, tmp_path):
    state = sd_layout_checkpoint(model, with_ema=False)
    state["model.diffusion_model.extra.weight"] = torch.zeros(1)
    del state["first_stage_model.decoder.conv_out.bias"]
    path = tmp_path / "bad.ckpt"
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointMismatchError) as info:
        instantiate_from_config(model_config(ckpt_path=str(path), load_ema=False), "model")
    message = str(info.value)
    assert "model.diffusion_model.extra.weight" in message and "first_stage_model.decoder.conv_out.bias" in message
    # ignore_keys skips what the user names (left as built), and everything else is loaded
    torch.manual_seed(1)  # another initialisation than the checkpoint's source model
    ok = instantiate_from_config(
        model_config(ckpt_path=str(path), load_ema=False,
                     ignore_keys=["model.diffusion_model.extra", "first_stage_model.decoder.conv_out"]),
        "model",
    )  # fmt: skip
    loaded = ok.state_dict()
    conv_out = "first_stage_model.decoder.conv_out.weight"
    assert not torch.equal(loaded[conv_out], state[conv_out])  # in the checkpoint, but ignored
    position_ids = "cond_stage_model.transformer.text_model.embeddings.position_ids"  # a non-persistent buffer
    assert set(state) - set(loaded) == {"model.diffusion_model.extra.weight", position_ids}
    for key in sorted(set(state) & set(loaded) - {conv_out}):
        value = state[key]
        if key == "model.diffusion_model.input_blocks.0.0.weight":  # 4 -> 8 input channels, the new ones zero
            value = torch.cat([value, torch.zeros_like(value)], dim=1)
        assert torch.equal(loaded[key], value), key


def test_log_images_shapes_and_determinism(model):
    model.eval()
    a = model.log_images(batch(), n=2, steps=2)
    b = model.log_images(batch(), n=2, steps=2)
    assert set(a) == {"input", "target", "sample"}
    assert a["sample"].shape == (2, 3, 32, 32)
    torch.testing.assert_close(a["sample"], b["sample"], rtol=0, atol=0)


def test_scale_by_std_measures_first_batch(tmp_path):
    from types import SimpleNamespace

    edit = instantiate_from_config(model_config(scale_by_std=True, use_ema=False), "model")
    edit._trainer = SimpleNamespace(
        global_step=0, ckpt_path=None, strategy=SimpleNamespace(reduce=lambda x, reduce_op: x)
    )
    b = batch(4)
    torch.manual_seed(0)
    expected = 1.0 / edit.first_stage_model.encode(b["edited"]).sample().std().item()
    torch.manual_seed(0)
    edit.on_train_batch_start(b, 0)
    assert edit.scale_factor.item() == pytest.approx(expected, rel=1e-5)
    assert "scale_factor" in edit.state_dict()
    z, _ = edit.get_input(b)
    assert 0.3 < z.std().item() < 3.0  # unit-ish scale (a fresh sample, not the measured one)


def test_scale_by_std_keeps_the_scale_factor_of_loaded_weights(tmp_path):
    """A fine-tune (ckpt_path, no --resume) starts at step 0 but its UNet was trained with the
    checkpoint's scale_factor: measuring a new one would shift every latent it sees."""
    from types import SimpleNamespace

    from safetensors.torch import save_file

    trained = instantiate_from_config(model_config(scale_by_std=True, use_ema=False), "model")
    trained.scale_factor.fill_(0.4321)
    path = tmp_path / "trained.safetensors"
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(path))
    tuned = instantiate_from_config(
        model_config(scale_by_std=True, use_ema=True, load_ema=False, ckpt_path=str(path)), "model"
    )
    tuned._trainer = SimpleNamespace(
        global_step=0, ckpt_path=None, strategy=SimpleNamespace(reduce=lambda x, reduce_op: x)
    )
    tuned.on_train_batch_start(batch(4), 0)
    assert tuned.scale_factor.item() == pytest.approx(0.4321)


def test_v_parameterization_target_and_sampling_denoiser_agree():
    """v = sqrt(abar) eps - sqrt(1 - abar) x0 (diffusers' get_velocity); an oracle UNet that returns
    exactly that v makes our k-diffusion denoiser return x0, so training and sampling use one convention."""
    from diffusers import DDPMScheduler

    from ldm.models.diffusion.sampling import denoiser

    torch.manual_seed(0)
    model = instantiate_from_config(model_config(parameterization="v", use_ema=False), "model").eval()
    g = torch.Generator().manual_seed(3)
    x0, noise = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([10, 500, 999])
    reference = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    v = model.target(x0, t, noise)
    torch.testing.assert_close(v, reference.get_velocity(x0, noise, t), rtol=1e-4, atol=1e-5)

    x_t = model.q_sample(x0, t, noise)  # VP form; k-diffusion sees x = x_t / sqrt(abar) at sigma
    abar = model.alphas_cumprod[t]
    sigma = ((1 - abar) / abar).sqrt()
    model.apply_model = lambda x, timestep, cond: model.target(x0, timestep.round().long(), noise)  # oracle
    denoised = denoiser(model)(x_t / abar.sqrt()[:, None, None, None], sigma, cond={})
    torch.testing.assert_close(denoised, x0, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("parameterization", ["eps", "v"])
def test_min_snr_weighted_loss_matches_diffusers_training_script(parameterization):
    """snr_gamma weights as diffusers' train_text_to_image / train_instruct_pix2pix: compute_snr, then
    min(snr, gamma) / snr (epsilon) or / (snr + 1) (v_prediction), per-sample MSE times the weight."""
    import torch.nn.functional as F
    from diffusers import DDPMScheduler
    from diffusers.training_utils import compute_snr

    torch.manual_seed(0)
    cfg = model_config(parameterization=parameterization, snr_gamma=5.0, use_ema=False)
    model = instantiate_from_config(cfg, "model").eval()
    g = torch.Generator().manual_seed(4)
    x0, noise = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 4, 8, 8, generator=g)
    cond = {"c_concat": [torch.randn(4, 4, 8, 8, generator=g)], "c_crossattn": [torch.randn(4, 77, 32, generator=g)]}
    t = torch.tensor([0, 20, 300, 999])
    ours = model.p_losses(x0, cond, t, noise)
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    with torch.no_grad():
        pred = model.apply_model(scheduler.add_noise(x0, noise, t), t, cond)
    target = noise if parameterization == "eps" else scheduler.get_velocity(x0, noise, t)
    snr = compute_snr(scheduler, t)
    weights = torch.stack([snr, 5.0 * torch.ones_like(t)], dim=1).min(dim=1)[0]
    weights = weights / snr if parameterization == "eps" else weights / (snr + 1)
    theirs = (F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3)) * weights).mean()
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-7)
    unweighted = instantiate_from_config(model_config(parameterization=parameterization, use_ema=False), "model")
    unweighted.load_state_dict(model.state_dict())
    assert not torch.allclose(unweighted.p_losses(x0, cond, t, noise), ours)  # the weighting changes the loss


def test_zero_terminal_snr_schedule_matches_diffusers_and_samples():
    """Lin et al. Algorithm 1 as diffusers' rescale_zero_terminal_snr, except the last abar, which is 2^-24
    (diffusers' Euler schedulers use the same floor) so the k-diffusion samplers get a finite sigma_max."""
    from diffusers.schedulers.scheduling_ddpm import rescale_zero_terminal_snr

    from ldm.models.diffusion.sampling import denoiser, get_sigmas, sample

    torch.manual_seed(0)
    model = instantiate_from_config(model_config(parameterization="v", zero_terminal_snr=True, use_ema=False), "model")
    plain = instantiate_from_config(model_config(parameterization="v", use_ema=False), "model")
    theirs = rescale_zero_terminal_snr(plain.betas.double())
    torch.testing.assert_close(model.betas[:-1], theirs[:-1].float(), rtol=1e-5, atol=1e-8)
    assert model.alphas_cumprod[-1].item() == pytest.approx(2**-24, rel=1e-4)
    assert plain.sqrt_alphas_cumprod[-1] > 0.06 and model.sqrt_alphas_cumprod[-1] < 3e-4
    torch.testing.assert_close(model.alphas_cumprod[0], plain.alphas_cumprod[0])
    wrapped = denoiser(model.eval())
    sigmas = get_sigmas(wrapped, 4)
    assert sigmas[0].item() == pytest.approx(4096, rel=1e-3)
    cond = {"c_concat": [torch.randn(1, 4, 8, 8)], "c_crossattn": [torch.randn(1, 77, 32)]}
    out = sample(wrapped, torch.randn(1, 4, 8, 8) * sigmas[0], sigmas, "euler", extra_args={"cond": cond})
    assert torch.isfinite(out).all() and out.abs().max() < 100
    with pytest.raises(ConfigError, match="zero_terminal_snr: needs parameterization: v"):
        instantiate_from_config(model_config(zero_terminal_snr=True), "model")



def test_diffuse_residual_trains_on_the_change_and_the_edit_path_adds_the_input_back():
    """diffuse_residual: the diffusion target is the target latent minus the scaled input latent; the editor
    (ImageEditor, behind edit_cli and the app) samples that residual and returns it plus the input's latent."""
    from PIL import Image

    from ldm.edit_settings import SamplingOptions
    from ldm.inference import ImageEditor

    torch.manual_seed(0)
    residual = instantiate_from_config(model_config(use_ema=False, diffuse_residual=True), "model").eval()
    plain = copy.deepcopy(residual)
    plain.diffuse_residual = False
    b = batch()
    torch.manual_seed(1)
    z, cond = residual.get_input(b)
    torch.manual_seed(1)
    z_plain, cond_plain = plain.get_input(b)
    torch.testing.assert_close(cond["c_concat"][0], cond_plain["c_concat"][0])
    torch.testing.assert_close(z, z_plain - residual.scale_factor * cond["c_concat"][0])

    pixels = torch.rand(32, 32, 3, generator=torch.Generator().manual_seed(2)) * 255
    image = Image.fromarray(pixels.to(torch.uint8).numpy())
    options = SamplingOptions(steps=4, sampler="euler", cfg_text=3.0, cfg_image=1.5)
    latents = []
    for model in (residual, plain):
        editor = ImageEditor(model, torch.device("cpu"))
        cond, uncond = editor.encode(image, "make it red")
        latents.append(editor.sample_latents(cond, uncond, 0, options))
    assert (latents[0] - latents[1]).abs().max() > 0.1  # the input's latent is not small
    torch.testing.assert_close(latents[0], latents[1] + residual.scale_factor * cond["c_concat"][0])
