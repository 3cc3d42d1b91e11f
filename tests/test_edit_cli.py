"""edit_cli.py: parity with diffusers' InstructPix2Pix pipeline, reproducibility, guidance math,
input handling, checkpoint loading, and one-line errors for bad inputs (through the CLI)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ROOT, SD_EULER, TINY_CONFIG, pinned_euler, tiny_model, tiny_model_config
from omegaconf import OmegaConf
from PIL import Image, ImageDraw
from safetensors.torch import save_file

import edit_cli
from ldm.edit_settings import SamplingOptions
from ldm.image_io import ImageInputError, edit_size, fit_to_stride, load_image, save_image_atomic
from ldm.inference import ImageEditor, load_model, pick_device
from ldm.models.diffusion.sampling import SAMPLERS, CFGDenoiser
from ldm.util import instantiate_from_config

STEPS = 2
STEPS_P = 8  # parity test: 999 / 7 is fractional, so the UNets see fractional timesteps
TINY_ARGS = ["--resolution", "32", "--steps", str(STEPS)]


# ---- tiny models and files ----------------------------------------------------------------------
def sketch(size: tuple[int, int] = (40, 30)) -> Image.Image:
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).ellipse((4, 4, size[0] - 6, size[1] - 5), outline="black", width=2)
    return image


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny checkpoint (.ckpt and .safetensors), its config (a full YAML `model` section), input images."""
    root = tmp_path_factory.mktemp("edit_cli")
    model = tiny_model()
    state = model.state_dict()
    torch.save({"state_dict": state, "global_step": 7}, root / "tiny.ckpt")
    save_file({k: v.contiguous() for k, v in state.items()}, root / "tiny.safetensors")
    OmegaConf.save({"model": OmegaConf.load(TINY_CONFIG).model}, root / "tiny.yaml")  # with base_learning_rate
    sketch().save(root / "in.png")
    return {"root": root, "ckpt": root / "tiny.ckpt", "safetensors": root / "tiny.safetensors",
            "config": root / "tiny.yaml", "input": root / "in.png"}  # fmt: skip


def cli_args(files: dict[str, Path], *args: str, ckpt: str = "ckpt") -> list[str]:
    return [*args, "--config", str(files["config"]), "--ckpt", str(files[ckpt]), *TINY_ARGS]


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "edit_cli.py"), *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def assert_one_error_line(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Non-zero exit, no traceback, exactly one `edit_cli.py: error:` line on stderr containing `fragments`."""
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("edit_cli.py: error: "), result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def no_temp_files(root: Path) -> bool:
    return not [p for p in root.rglob("*") if p.name.endswith(".tmp")]


# ---- 1. parity with diffusers -------------------------------------------------------------------
@torch.no_grad()
def test_parity_with_diffusers_instruct_pix2pix_pipeline() -> None:
    """Same tiny weights, image, instruction, guidance, Euler, sigma schedule, timesteps and noise.

    Where the two pipelines differ by design, and how the test lines them up:
    - Sigma schedule: k-diffusion's `get_sigmas` interpolates log-sigma at evenly spaced t,
      diffusers' Euler (linspace spacing) interpolates sigma linearly in t, so the schedules
      differ; diffusers also computes alphas_cumprod in float32 where ours come from float64.
      Our sigmas are passed to diffusers (`set_timesteps(sigmas=...)`).
    - Timesteps: both map sigma -> t by interpolating log-sigma between the two neighbouring
      training sigmas (k-diffusion `DiscreteSchedule.sigma_to_t`, diffusers `_sigma_to_t`),
      but in torch vs NumPy float32 on different alphas; the scheduler is given our exact t
      values, so the UNets see identical (fractional) timesteps.
    - The pipeline calls `set_timesteps(num_inference_steps)` itself, so the pinned schedule
      lives in a scheduler subclass.
    - Initial noise: diffusers multiplies `latents=` by `init_noise_sigma` (= max sigma for
      linspace spacing = our sigmas[0]); ours is noise * sigmas[0]: same tensor.
    - Guidance: diffusers combines noise predictions, we combine k-diffusion denoised
      predictions x - sigma * eps; the weights (1 - s_I, s_I - s_T, s_T) sum to 1, so the two
      are equal up to rounding. Batch order is the same, [text+image, image, neither], and
      both use the posterior mode of the input image, unscaled, and zeros for "no image".
    - Input scaling: x / sqrt(sigma^2 + 1) (diffusers) vs x * (1 / sqrt(sigma^2 + 1)): 1 ulp.
    - Preprocessing: diffusers' VaeImageProcessor maps pixels p to p / 255 * 2 - 1, ours to
      p / 127.5 - 1 (1 ulp); we hand diffusers the image already resized to our grid (a
      multiple of the model stride, hence of its VAE factor), so it does not resize.

    Tolerance on the final latents: float32 spacing at |z| <= 64 is 2^-18 = 3.8e-6, and each
    Euler update rounds once, so the 8 updates contribute up to 8 * 3.8e-6 = 3.0e-5; the UNets
    agree to delta ~ 1e-6 of their output (tests/test_unet.py), about 1.2e-7 here (outputs
    ~0.35), the guidance multiplies an eps error by at most |1 - s_I| + |s_I - s_T| + |s_T| = 14,
    and Euler integrates it over sum |dt| = sigma_max = 14.6, adding 2.5e-5. Bound ~5.5e-5, so
    1e-4 (measured 2e-5 to 4e-5). The untrained model leaves most of the initial noise in the latents,
    hence |z| up to ~45; with UNet outputs ~1 the same bound reaches ~1.6e-4, which is why the
    random output layers are scaled to 0.1. Decoded images in [0, 1]: 1/255 as asked
    (measured < 1e-6).
    """
    from diffusers import EulerDiscreteScheduler

    from ldm.diffusers_export import to_diffusers_pipeline

    steps, seed, instruction = STEPS_P, 3, "make it red"
    model = tiny_model()
    editor = ImageEditor(model, torch.device("cpu"))
    pixels = torch.rand(32, 32, 3, generator=torch.Generator().manual_seed(5)) * 255
    image = Image.fromarray(pixels.to(torch.uint8).numpy())
    unet_timesteps = {"ours": [], "diffusers": []}

    def record(name: str):
        return lambda module, args: unet_timesteps[name].append(args[1].flatten()[0].item())

    model.model.diffusion_model.register_forward_pre_hook(record("ours"))
    options = SamplingOptions(steps=steps, sampler="euler", cfg_text=7.5, cfg_image=1.5)
    cond, uncond = editor.encode(image, instruction)
    ours = editor.sample_latents(cond, uncond, seed, options)  # (1, 4, 8, 8)
    sigmas = editor.denoiser.get_sigmas(steps)  # (steps + 1,)
    timesteps = editor.denoiser.sigma_to_t(sigmas[:-1])  # (steps,) what our UNet receives

    pipe = to_diffusers_pipeline(model, tiny_model_config(), pinned_euler(sigmas, timesteps))
    pipe.unet.register_forward_pre_hook(record("diffusers"))
    noise = torch.randn(ours.shape, generator=torch.Generator().manual_seed(seed))  # our initial noise
    final = {}

    def keep_latents(pipe, step, t, tensors):
        final["latents"] = tensors["latents"]
        return tensors

    out = pipe(instruction, image=image, num_inference_steps=steps, guidance_scale=7.5, image_guidance_scale=1.5,
               latents=noise, output_type="pt", callback_on_step_end=keep_latents)  # fmt: skip
    theirs, their_image = final["latents"], out.images  # (1, 4, 8, 8), (1, 3, 32, 32) in [0, 1]

    assert unet_timesteps["diffusers"] == unet_timesteps["ours"] == timesteps.tolist()
    assert torch.equal(pipe.scheduler.sigmas, sigmas)
    default = EulerDiscreteScheduler(**SD_EULER)
    default.set_timesteps(steps)
    assert 1e-6 < (default.sigmas - sigmas).abs().max() < 1e-4  # the schedules differ by design, slightly
    moved = ours - noise * sigmas[0]  # what the model contributed, (1, 4, 8, 8)
    assert moved.abs().max() > 1 and ours.abs().max() < 64  # non-trivial, and in the range the bound assumes
    assert (ours - theirs).abs().max().item() <= 1e-4
    our_image = (editor.model.decode_first_stage(ours) / 2 + 0.5).clamp(0, 1)
    assert our_image.std() > 0.05
    assert (our_image - their_image).abs().max().item() <= 1 / 255


# ---- 2. reproducibility -------------------------------------------------------------------------
def test_same_seed_is_bit_identical_and_seeds_differ(files, tmp_path, capsys) -> None:
    out = tmp_path / "out"

    def edit(name: str, *extra: str, ckpt: str = "ckpt") -> int:
        args = ["--input", str(files["input"]), "--output", str(out / name), "--edit", "color it red", *extra]
        return edit_cli.main(cli_args(files, *args, ckpt=ckpt))

    assert edit("n.png", "--num-samples", "2") == 0  # no --seed: a random one, printed
    seed = int(capsys.readouterr().out.split("seed: ")[1].split()[0])
    assert edit("a.png", "--seed", str(seed), ckpt="safetensors") == 0
    assert edit("b.png", "--seed", str(seed + 1)) == 0
    data = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(data) == ["a.png", "b.png", "n_0.png", "n_1.png"]
    assert data["n_0.png"] == data["a.png"]  # same seed, same bytes (from .ckpt and from .safetensors)
    assert data["n_1.png"] == data["b.png"]  # sample i uses seed + i
    assert data["a.png"] != data["b.png"]
    assert Image.open(out / "a.png").size == (32, 24)  # 40x30 at resolution 32, stride 8: see test_edit_size


# ---- 3. guidance math ---------------------------------------------------------------------------
class StubDenoiser(torch.nn.Module):
    """D(x, sigma) = x + sigma + 100 * text + 10 * image (per-sample constants), recording its inputs."""

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: dict) -> torch.Tensor:
        self.seen = (x, sigma, cond)
        text = cond["c_crossattn"][0].flatten(1)[:, :1, None, None]  # (3B, 1, 1, 1)
        image = cond["c_concat"][0].flatten(1)[:, :1, None, None]
        return x + sigma[:, None, None, None] + 100 * text + 10 * image


def test_cfg_denoiser_batch_order_and_combination() -> None:
    x = torch.full((1, 4, 2, 2), 2.0)
    sigma = torch.tensor([3.0])
    cond = {"c_crossattn": [torch.full((1, 5, 8), 1.0)], "c_concat": [torch.full((1, 4, 2, 2), 1.0)]}
    uncond = {"c_crossattn": [torch.full((1, 5, 8), 0.0)], "c_concat": [torch.full((1, 4, 2, 2), 0.0)]}
    stub = StubDenoiser()
    out = CFGDenoiser(stub)(x, sigma, cond, uncond, text_cfg_scale=7.5, image_cfg_scale=1.5)

    seen_x, seen_sigma, seen_cond = stub.seen
    assert torch.equal(seen_x, torch.cat([x] * 3)) and torch.equal(seen_sigma, torch.tensor([3.0] * 3))
    assert seen_cond["c_crossattn"][0][:, 0, 0].tolist() == [1.0, 0.0, 0.0]  # text, no text, no text
    assert seen_cond["c_concat"][0][:, 0, 0, 0].tolist() == [1.0, 1.0, 0.0]  # image, image, no image
    full, image_only, neither = 2 + 3 + 100 + 10, 2 + 3 + 10, 2 + 3  # 115, 15, 5
    expected = neither + 7.5 * (full - image_only) + 1.5 * (image_only - neither)  # 5 + 750 + 15
    assert expected == 770.0
    assert torch.equal(out, torch.full_like(x, expected))

    ones = CFGDenoiser(stub)(x, sigma, cond, uncond, text_cfg_scale=1.0, image_cfg_scale=1.0)
    assert torch.equal(ones, torch.full_like(x, float(full)))  # scales 1, 1: the fully conditioned prediction
    text_off = CFGDenoiser(stub)(x, sigma, cond, uncond, text_cfg_scale=0.0, image_cfg_scale=1.0)
    assert torch.equal(text_off, torch.full_like(x, float(image_only)))


class SpreadStub(torch.nn.Module):
    """D(x, sigma) = x * (1 + text) + image: the text widens the spread of the estimate (per-sample constants)."""

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: dict) -> torch.Tensor:
        text = cond["c_crossattn"][0].flatten(1)[:, :1, None, None]  # (3B, 1, 1, 1)
        image = cond["c_concat"][0].flatten(1)[:, :1, None, None]
        return x * (1 + text) + image


def test_cfg_rescale_equals_diffusers_rescale_noise_cfg() -> None:
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

    x = torch.randn((2, 4, 3, 3), generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([3.0, 3.0])
    cond = {"c_crossattn": [torch.tensor([1.0, 2.0])[:, None, None].expand(2, 5, 8)],
            "c_concat": [torch.full((2, 4, 3, 3), 0.5)]}  # fmt: skip
    uncond = {"c_crossattn": [torch.zeros((2, 5, 8))], "c_concat": [torch.zeros((2, 4, 3, 3))]}
    guide = CFGDenoiser(SpreadStub())
    guided = guide(x, sigma, cond, uncond, text_cfg_scale=7.5, image_cfg_scale=1.5)
    full = guide(x, sigma, cond, uncond, text_cfg_scale=1.0, image_cfg_scale=1.0)  # the fully conditioned estimate
    rescaled = guide(x, sigma, cond, uncond, text_cfg_scale=7.5, image_cfg_scale=1.5, cfg_rescale=0.7)
    torch.testing.assert_close(rescaled, rescale_noise_cfg(guided, full, guidance_rescale=0.7))
    assert (rescaled - guided).abs().min() > 0  # it changed every value
    std = rescaled.std(dim=(1, 2, 3))
    assert (std < guided.std(dim=(1, 2, 3))).all() and (std > full.std(dim=(1, 2, 3))).all()
    fully = guide(x, sigma, cond, uncond, text_cfg_scale=7.5, image_cfg_scale=1.5, cfg_rescale=1.0)
    torch.testing.assert_close(fully.std(dim=(1, 2, 3)), full.std(dim=(1, 2, 3)))  # phi = 1: full's spread


# ---- 4. bad inputs through the CLI --------------------------------------------------------------
def test_missing_input_file(files, tmp_path) -> None:
    result = run_cli(cli_args(files, "--input", "nope.png", "--output", "out.png", "--edit", "x"), tmp_path)
    assert_one_error_line(result, "nope.png", "no such file")
    assert list(tmp_path.iterdir()) == []


def test_non_image_file(files, tmp_path) -> None:
    (tmp_path / "notes.png").write_text("not an image\n")
    result = run_cli(cli_args(files, "--input", "notes.png", "--output", "out/out.png", "--edit", "x"), tmp_path)
    assert_one_error_line(result, "notes.png", "not a readable image")
    assert [p.name for p in tmp_path.iterdir()] == ["notes.png"]


def test_truncated_png(files, tmp_path) -> None:
    data = files["input"].read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    result = run_cli(cli_args(files, "--input", "cut.png", "--output", "out.png", "--edit", "x"), tmp_path)
    assert_one_error_line(result, "cut.png", "truncated")
    assert [p.name for p in tmp_path.iterdir()] == ["cut.png"]


def test_folder_with_one_bad_image(files, tmp_path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    sketch((32, 32)).save(folder / "a.png")
    (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    sketch((24, 40)).save(folder / "c.jpg")
    (folder / "readme.txt").write_text("not an image: skipped")
    result = run_cli(cli_args(files, "--input", "in", "--output", "out/edited", "--edit", "x", "--seed", "0"), tmp_path)
    assert result.returncode == 1
    assert_one_error_line(result, "b.png")
    written = sorted(p.name for p in (tmp_path / "out" / "edited").iterdir())
    assert written == ["a.png", "c.jpg"]  # good ones written, hidden temp files none
    assert Image.open(tmp_path / "out" / "edited" / "c.jpg").format == "JPEG"
    assert "wrote" in result.stdout and no_temp_files(tmp_path)


def test_missing_checkpoint(files, tmp_path) -> None:
    args = ["--input", str(files["input"]), "--output", "out.png", "--edit", "x", "--config", str(files["config"])]
    result = run_cli([*args, "--ckpt", "missing.ckpt"], tmp_path)
    assert_one_error_line(result, "missing.ckpt", "no such file")
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_for_another_architecture_names_the_first_mismatching_key(files, tmp_path) -> None:
    config = tiny_model_config()
    config["params"]["unet_config"]["params"]["context_dim"] = 64  # a 64-d text encoder's checkpoint
    config["params"]["cond_stage_config"]["params"]["text_config"]["hidden_size"] = 64
    other = instantiate_from_config(config, "model").state_dict()
    torch.save({"state_dict": other}, tmp_path / "other.ckpt")
    ours = tiny_model().state_dict()
    first = next(k for k, v in other.items() if k in ours and ours[k].shape != v.shape)

    args = ["--input", str(files["input"]), "--output", "out.png", "--edit", "x", "--config", str(files["config"])]
    result = run_cli([*args, "--ckpt", "other.ckpt"], tmp_path)
    assert_one_error_line(result, first, "other.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.ckpt"]


def test_unwritable_output_path(files, tmp_path) -> None:
    (tmp_path / "taken").write_text("a file where the output folder should be")
    result = run_cli(cli_args(files, "--input", str(files["input"]), "--output", "taken/out.png", "--edit", "x"),
                     tmp_path)  # fmt: skip
    assert_one_error_line(result, "taken/out.png", "is a file")
    assert [p.name for p in tmp_path.iterdir()] == ["taken"] and (tmp_path / "taken").is_file()


# ---- batch, loading and options (in process) ----------------------------------------------------
def test_jsonl_jobs_with_a_bad_line(files, tmp_path, capsys) -> None:
    sketch((32, 32)).save(tmp_path / "a.png")
    jobs = [
        {"input": "a.png", "edit": "make it blue", "output": "out/a_blue.webp"},
        {"input": "a.png", "output": "out/a_default.png"},  # edit from --edit
        {"input": "a.png", "edit": "x"},  # no output
        {"input": "a.png", "edit": "", "output": "out/a_same.png"},  # "" = the resized input
    ]
    lines = [json.dumps(job) for job in jobs] + ["{not json"]
    (tmp_path / "jobs.jsonl").write_text("\n".join(lines) + "\n")
    status = edit_cli.main(cli_args(files, "--input", str(tmp_path / "jobs.jsonl"), "--edit", "make it red"))
    errors = capsys.readouterr().err.splitlines()
    assert status == 1
    assert [e.split(": ")[2] for e in errors if e.startswith("edit_cli.py: error:")] == [
        f"{tmp_path / 'jobs.jsonl'}:3",
        f"{tmp_path / 'jobs.jsonl'}:5",
    ]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_blue.webp", "a_default.png", "a_same.png"]
    assert Image.open(tmp_path / "out" / "a_blue.webp").format == "WEBP"
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "a_same.png")), np.asarray(sketch((32, 32))))


def test_jsonl_job_guidance_overrides_the_flags(files, tmp_path, capsys) -> None:
    sketch((32, 32)).save(tmp_path / "a.png")
    jobs = [
        {"input": "a.png", "edit": "make it blue", "output": "default.png"},
        {"input": "a.png", "edit": "make it blue", "output": "job.png", "cfg_text": 0, "cfg_image": 2.5},
        {"input": "a.png", "edit": "make it blue", "output": "bad.png", "cfg_text": "high"},
    ]
    (tmp_path / "jobs.jsonl").write_text("".join(json.dumps(job) + "\n" for job in jobs))
    assert edit_cli.main(cli_args(files, "--input", str(tmp_path / "jobs.jsonl"), "--seed", "7")) == 1
    assert "jobs.jsonl:3: 'cfg_text' is not a finite number" in capsys.readouterr().err
    args = ["--input", str(tmp_path / "a.png"), "--edit", "make it blue", "--cfg-text", "0", "--cfg-image", "2.5",
            "--seed", "7"]  # fmt: skip
    assert edit_cli.main(cli_args(files, *args, "--output", str(tmp_path / "flags.png"))) == 0
    assert (tmp_path / "job.png").read_bytes() == (tmp_path / "flags.png").read_bytes()
    assert (tmp_path / "job.png").read_bytes() != (tmp_path / "default.png").read_bytes()
    assert not (tmp_path / "bad.png").exists()


def test_empty_edit_returns_resized_input(files, tmp_path) -> None:
    sketch((80, 48)).save(tmp_path / "wide.png")
    args = ["--input", str(tmp_path / "wide.png"), "--output", str(tmp_path / "same.png"), "--edit", ""]
    assert edit_cli.main(cli_args(files, *args)) == 0
    expected = fit_to_stride(sketch((80, 48)), 32, 8)
    assert expected.size == (32, 24)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "same.png")), np.asarray(expected))


def test_ema_weights_are_preferred(tmp_path) -> None:
    """A checkpoint's model_ema.* weights end up in the UNet; without them, its model weights."""
    model, ema_source = tiny_model(seed=0), tiny_model(seed=1)
    state = model.state_dict()
    ema = {"model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates": torch.tensor(10, dtype=torch.int)}
    for name, p in ema_source.model.named_parameters():
        ema["model_ema." + name.replace(".", "")] = p.detach().clone()
    torch.save({"state_dict": {**state, **ema}}, tmp_path / "with_ema.ckpt")
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "no_ema.safetensors")
    for name, source in (("with_ema.ckpt", ema_source), ("no_ema.safetensors", model)):
        loaded = load_model(tiny_model_config(), tmp_path / name)
        assert not hasattr(loaded, "model_ema") and not loaded.use_ema
        for key, value in source.model.state_dict().items():
            assert torch.equal(loaded.model.state_dict()[key], value), (name, key)


def test_vae_checkpoint_and_config_ckpt_path(files, tmp_path) -> None:
    vae = tiny_model(seed=2).first_stage_model
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(0.01)
    torch.save({"state_dict": vae.state_dict()}, tmp_path / "vae.ckpt")  # an autoencoder checkpoint
    model = load_model(tiny_model_config(), files["ckpt"], tmp_path / "vae.ckpt")
    for key, value in vae.state_dict().items():
        assert torch.equal(model.first_stage_model.state_dict()[key], value), key
    assert not hasattr(model, "model_ema")

    config = tiny_model_config(ckpt_path=str(files["ckpt"]))
    OmegaConf.save({"model": config}, tmp_path / "with_ckpt.yaml")  # no --ckpt needed
    args = ["--input", str(files["input"]), "--output", str(tmp_path / "o.png"), "--edit", "", *TINY_ARGS]
    assert edit_cli.main([*args, "--config", str(tmp_path / "with_ckpt.yaml")]) == 0
    assert (tmp_path / "o.png").is_file()


@pytest.mark.parametrize("karras", [False, True], ids=["uniform", "karras"])
def test_every_sampler_runs(karras: bool) -> None:
    editor = ImageEditor(tiny_model(), torch.device("cpu"))
    cond, uncond = editor.encode(sketch((32, 32)), "make it red")
    for name in SAMPLERS:
        options = SamplingOptions(steps=3, sampler=name, karras=karras)
        steps = []
        z = editor.sample_latents(cond, uncond, 0, options, callback=steps.append)
        assert z.shape == (1, 4, 8, 8) and torch.isfinite(z).all(), name
        assert len(steps) == 3, name  # one progress tick per step


def test_bf16_autocast_and_fp16_refused_on_cpu(files, tmp_path, capsys) -> None:
    args = ["--input", str(files["input"]), "--output", str(tmp_path / "o.png"), "--edit", "x", "--seed", "1"]
    assert edit_cli.main(cli_args(files, *args, "--precision", "fp16", "--device", "cpu")) == 2
    assert "fp16" in capsys.readouterr().err and not (tmp_path / "o.png").exists()
    assert edit_cli.main(cli_args(files, *args, "--precision", "bf16", "--device", "cpu")) == 0
    assert Image.open(tmp_path / "o.png").size == (32, 24)
    if not torch.cuda.is_available() and not torch.backends.mps.is_available():
        assert pick_device("auto") == torch.device("cpu")


# ---- input images -------------------------------------------------------------------------------
def saved(image: Image.Image, path: Path, **options) -> Path:
    image.save(path, **options)
    return path


def test_image_modes_become_rgb_on_white(tmp_path) -> None:
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    rgba.putpixel((1, 1), (0, 0, 255, 255))
    out = load_image(saved(rgba, tmp_path / "rgba.png"), max_pixels=10**6)
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (255, 255, 255) and out.getpixel((1, 1)) == (0, 0, 255)

    la = Image.new("LA", (4, 4), (0, 0))
    la.putpixel((0, 0), (0, 255))
    out = load_image(saved(la, tmp_path / "la.png"), 10**6)
    assert out.getpixel((0, 0)) == (0, 0, 0) and out.getpixel((1, 1)) == (255, 255, 255)

    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    palette.putpixel((0, 0), 0)
    out = load_image(saved(palette, tmp_path / "p.png", transparency=0), 10**6)
    assert out.getpixel((0, 0)) == (255, 255, 255) and out.getpixel((1, 1)) == (200, 10, 10)

    cmyk = load_image(saved(Image.new("CMYK", (4, 4), (0, 255, 255, 0)), tmp_path / "cmyk.jpg", quality=100), 10**6)
    assert cmyk.mode == "RGB" and cmyk.getpixel((1, 1))[0] > 200 and cmyk.getpixel((1, 1))[1] < 60

    sixteen = Image.fromarray(np.array([[0, 257 * 128, 65535, 1000]], dtype=np.uint16))
    assert sixteen.mode == "I;16"
    out = load_image(saved(sixteen, tmp_path / "g16.png"), 10**6)
    assert [out.getpixel((x, 0)) for x in range(4)] == [(0, 0, 0), (128,) * 3, (255,) * 3, (4,) * 3]
    as_int32 = Image.fromarray(np.array([[65535, 257 * 64]], dtype=np.int32))
    assert as_int32.mode == "I"
    out = load_image(saved(as_int32, tmp_path / "i32.tif"), 10**6)
    assert [out.getpixel((x, 0)) for x in range(2)] == [(255,) * 3, (64,) * 3]

    gray = load_image(saved(Image.new("L", (3, 3), 77), tmp_path / "gray.png"), 10**6)
    assert gray.getpixel((2, 2)) == (77, 77, 77)
    bilevel = load_image(saved(Image.new("1", (3, 3), 1), tmp_path / "bw.png"), 10**6)
    assert bilevel.getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied(tmp_path) -> None:
    image = Image.new("RGB", (6, 4), "white")
    image.putpixel((0, 0), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display needs a 90 degree clockwise turn
    out = load_image(saved(image, tmp_path / "rot.png", exif=exif), 10**6)
    assert out.size == (4, 6)
    assert out.getpixel((3, 0)) == (255, 0, 0)  # top-left pixel ends up top-right


def test_huge_images_are_refused_before_decoding(tmp_path) -> None:
    path = saved(Image.new("RGB", (200, 100)), tmp_path / "big.png")
    with pytest.raises(ImageInputError, match=r"200x100 .*limit of 0\.01 .*--max-pixels"):
        load_image(path, max_pixels=10_000)
    assert load_image(path, max_pixels=20_000).size == (200, 100)


@pytest.mark.parametrize(
    ("size", "resolution", "stride", "expected"),
    [
        ((512, 512), 512, 64, (512, 512)),
        ((512, 300), 512, 64, (512, 320)),  # the shorter side rounds up (as the original)
        ((1024, 768), 512, 64, (512, 384)),
        ((1000, 490), 512, 64, (512, 256)),
        ((900, 300), 512, 64, (512, 192)),  # the original gave 576 wide; capped at the resolution
        ((10000, 10), 512, 64, (512, 64)),  # thin strip: one stride high, not 64000 wide
        ((5, 5), 512, 64, (512, 512)),  # tiny images are upscaled
        ((40, 30), 32, 64, (64, 64)),  # a resolution below one stride gives one stride
        ((40, 30), 32, 8, (32, 24)),
    ],
)
def test_edit_size(size, resolution, stride, expected) -> None:
    assert edit_size(*size, resolution, stride) == expected


def test_atomic_save_leaves_nothing_on_failure(tmp_path, monkeypatch) -> None:
    target = tmp_path / "deep" / "er" / "out.png"
    save_image_atomic(sketch(), target)  # parent folders created
    assert Image.open(target).size == (40, 30) and [p.name for p in target.parent.iterdir()] == ["out.png"]
    before = target.read_bytes()

    def failing_save(self, fp, *args, **kwargs):
        fp.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_image_atomic(sketch((10, 10)), target)
    assert target.read_bytes() == before and [p.name for p in target.parent.iterdir()] == ["out.png"]
    with pytest.raises(ValueError, match="format"):
        save_image_atomic(sketch(), tmp_path / "out.unknown")


def test_jpeg_output_from_extension(tmp_path) -> None:
    save_image_atomic(sketch(), tmp_path / "o.JPG")
    assert Image.open(io.BytesIO((tmp_path / "o.JPG").read_bytes())).format == "JPEG"
    assert oct(os.stat(tmp_path / "o.JPG").st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
