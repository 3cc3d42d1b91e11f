"""scripts/convert_to_diffusers.py: the saved folder loads with diffusers' from_pretrained and computes as our model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import ROOT, TINY_CONFIG, tiny_model
from omegaconf import OmegaConf

pytest.importorskip("diffusers")
SCRIPT = ROOT / "scripts" / "convert_to_diffusers.py"


def convert(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_an_editing_model_round_trips_through_a_pipeline_folder(tmp_path: Path) -> None:
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline

    model = tiny_model()
    torch.save({"state_dict": model.state_dict()}, tmp_path / "tiny.ckpt")
    OmegaConf.save({"model": OmegaConf.load(TINY_CONFIG).model}, tmp_path / "tiny.yaml")
    result = convert("--config", "tiny.yaml", "--ckpt", "tiny.ckpt", "--out", "pipe", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "StableDiffusionInstructPix2PixPipeline" in result.stdout
    for part in ("unet", "vae", "text_encoder"):
        assert list((tmp_path / "pipe" / part).glob("*.safetensors")), part
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(tmp_path / "pipe", safety_checker=None)
    assert isinstance(pipe.scheduler, EulerAncestralDiscreteScheduler)
    torch.testing.assert_close(pipe.scheduler.betas, model.betas, rtol=1e-6, atol=0)

    generator = torch.Generator().manual_seed(0)
    z = torch.randn(2, 4, 8, 8, generator=generator)
    image_latent = torch.randn(2, 4, 8, 8, generator=generator)
    t = torch.tensor([10, 900])
    with torch.no_grad():
        context = model.get_learned_conditioning(["make it red", ""])  # (2, 77, D)
        ids = pipe.tokenizer(["make it red", ""], padding="max_length", max_length=77, return_tensors="pt").input_ids
        torch.testing.assert_close(pipe.text_encoder(ids)[0], context, rtol=1e-5, atol=1e-5)
        ours = model.apply_model(z, t, {"c_concat": [image_latent], "c_crossattn": [context]})
        theirs = pipe.unet(torch.cat([z, image_latent], dim=1), t, encoder_hidden_states=context).sample
        torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(pipe.vae.decode(z).sample, model.first_stage_model.decode(z), rtol=1e-5, atol=1e-5)

    half = convert("--config", "tiny.yaml", "--ckpt", "tiny.ckpt", "--out", "half", "--half", cwd=tmp_path)
    assert half.returncode == 0, half.stderr[-3000:]
    from safetensors import safe_open

    [weights] = (tmp_path / "half" / "unet").glob("*.safetensors")
    with safe_open(str(weights), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    loaded = StableDiffusionInstructPix2PixPipeline.from_pretrained(tmp_path / "half", torch_dtype=torch.float16)
    assert loaded.unet.dtype == torch.float16


def test_the_reference_model_edits_alike_through_its_exported_folder(tmp_path: Path) -> None:
    """The shipped OpenMoji model: MiniLM goes in as a BertModel that the pipeline feeds as
    FrozenHFTextEmbedder does, and the folder's own scheduler (Euler: the config's default sampler, on the
    zero-terminal-SNR v-prediction betas) with noise from the same seed gives edit_cli's edit; imported back,
    the folder gives edit_cli's edit exactly.
    (bench/reference_via_diffusers.py does this on 10 held-out sketches at 20 steps and scores both.)"""
    import random

    import numpy as np
    from diffusers import EulerDiscreteScheduler, StableDiffusionInstructPix2PixPipeline

    from dataset_creation.openmoji.examples import HeldOutExamples
    from ldm.edit_settings import SamplingOptions, read_model_config
    from ldm.inference import load_editor

    config = ROOT / "configs" / "openmoji" / "reference" / "generate.yaml"
    result = convert("--config", str(config), "--out", "pipe", cwd=tmp_path)  # --ckpt: the config's ckpt_path
    assert result.returncode == 0, result.stderr[-3000:]
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(tmp_path / "pipe", local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe.text_encoder).__name__ == "BertModel" and isinstance(pipe.scheduler, EulerDiscreteScheduler)
    assert pipe.scheduler.config.prediction_type == "v_prediction"

    model_config, _ = read_model_config(config)
    editor = load_editor(model_config, model_config["params"]["ckpt_path"], device="cpu", precision="fp32")
    example = HeldOutExamples(64).example(random.Random(1))
    options = SamplingOptions(steps=6, sampler="euler", cfg_text=7.5, cfg_image=1.5)
    ours = np.asarray(editor.edit(example.sketch, example.instruction, [3], options)[0], dtype=np.int16)
    theirs = pipe(example.instruction, image=example.sketch, num_inference_steps=6, guidance_scale=7.5,
                  image_guidance_scale=1.5, generator=torch.Generator().manual_seed(3)).images[0]  # fmt: skip
    assert np.abs(ours - np.asarray(theirs)).max() <= 1
    assert np.abs(ours - np.asarray(example.sketch, dtype=np.int16)).mean() > 5  # an edit, not the input
    # and back: the folder as --ckpt gives the very same edit (scale_factor comes from the VAE's scaling_factor)
    imported = load_editor(model_config, tmp_path / "pipe", device="cpu", precision="fp32")
    again = imported.edit(example.sketch, example.instruction, [3], options)[0]
    assert np.array_equal(np.asarray(again, dtype=np.int16), ours)


def test_mistakes_are_one_line_and_write_nothing(tmp_path: Path) -> None:
    from helpers import tiny_model_config

    config = tiny_model_config()
    config["params"]["first_stage_config"]["params"]["ddconfig"]["attn_resolutions"] = [8]  # beyond diffusers'
    OmegaConf.save({"model": config}, tmp_path / "attn.yaml")
    from ldm.util import instantiate_from_config

    torch.save(instantiate_from_config(config, "model").state_dict(), tmp_path / "attn.ckpt")
    result = convert("--config", "attn.yaml", "--ckpt", "attn.ckpt", "--out", "pipe", cwd=tmp_path)
    assert result.returncode == 2 and "attn_resolutions" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("convert_to_diffusers.py: error: --config attn.yaml")
    (tmp_path / "taken").mkdir()
    result = convert("--config", "attn.yaml", "--ckpt", "attn.ckpt", "--out", "taken", cwd=tmp_path)
    assert result.returncode == 2 and "already exists" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["attn.ckpt", "attn.yaml", "taken"]
    from ldm.diffusers_export import to_diffusers_pipeline

    residual = tiny_model_config(diffuse_residual=True)  # diffusers' pipeline would not add the input back
    with pytest.raises(ValueError, match="^diffuse_residual: "):
        to_diffusers_pipeline(instantiate_from_config(residual, "model"), residual, scheduler=None)


@torch.no_grad()
def test_the_exported_autoencoder_keeps_its_group_norm_groups_and_scale_factor() -> None:
    """diffusers' config helper reads neither from an LDM config; a VAE with 8 groups exported as 32 would
    have the same tensor shapes and silently decode something else."""
    from diffusers import EulerDiscreteScheduler
    from helpers import tiny_model_config

    from ldm.diffusers_export import to_diffusers_pipeline
    from ldm.util import instantiate_from_config

    config = tiny_model_config(scale_factor=0.3)
    config["params"]["first_stage_config"]["params"]["ddconfig"]["norm_num_groups"] = 8
    torch.manual_seed(0)
    model = instantiate_from_config(config, "model").eval()
    vae = to_diffusers_pipeline(model, config, EulerDiscreteScheduler()).vae
    assert vae.config.scaling_factor == pytest.approx(0.3)
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    ours, theirs = model.first_stage_model.decode(z), vae.decode(z).sample  # (1, 3, 16, 16) each
    assert ours.std() > 0.01
    assert (ours - theirs).abs().max() < 1e-5


@torch.no_grad()
def test_exported_folders_edit_and_generate_as_this_project_does(tmp_path: Path) -> None:
    """Acceptance of the export: a tiny random editing model through StableDiffusionInstructPix2PixPipeline
    and a tiny text-to-image model through StableDiffusionPipeline, each loaded with from_pretrained from the
    folder the script writes, give our images within 1/255 with a fixed seed and deterministic Euler steps
    (the folder's scheduler on our sigmas and UNet timesteps: helpers.pinned_euler)."""
    import numpy as np
    from diffusers import StableDiffusionInstructPix2PixPipeline, StableDiffusionPipeline
    from helpers import pinned_euler
    from PIL import Image
    from test_prompt2prompt import save_tiny_txt2img

    from ldm.edit_settings import SamplingOptions, read_model_config
    from ldm.inference import ImageEditor, load_model, to_image
    from ldm.models.diffusion.sampling import CFGDenoiser, get_sigmas, sample

    steps, seed, prompt = 4, 3, "make it red"
    torch.save({"state_dict": tiny_model().state_dict()}, tmp_path / "edit.ckpt")
    OmegaConf.save({"model": OmegaConf.load(TINY_CONFIG).model}, tmp_path / "edit.yaml")
    txt2img_config, txt2img_ckpt = save_tiny_txt2img(tmp_path)
    for config, ckpt, out in (("edit.yaml", "edit.ckpt", "edit"), (txt2img_config, txt2img_ckpt, "txt2img")):
        result = convert("--config", str(config), "--ckpt", str(ckpt), "--out", out, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]

    def pinned(editor: ImageEditor):
        sigmas = get_sigmas(editor.denoiser, steps)  # (steps + 1,)
        return sigmas, pinned_euler(sigmas, editor.denoiser.sigma_to_t(sigmas[:-1]))

    # editing: edit_cli's editor against the InstructPix2Pix pipeline
    editor = ImageEditor(load_model(read_model_config(tmp_path / "edit.yaml")[0], tmp_path / "edit.ckpt"),
                         torch.device("cpu"))  # fmt: skip
    image = Image.fromarray((torch.rand(32, 32, 3, generator=torch.Generator().manual_seed(1)) * 255).byte().numpy())
    options = SamplingOptions(steps=steps, sampler="euler", cfg_text=7.5, cfg_image=1.5)
    ours = np.asarray(editor.edit(image, prompt, [seed], options)[0], dtype=np.int16)
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(tmp_path / "edit", safety_checker=None)
    pipe.scheduler = pinned(editor)[1]
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(prompt, image=image, num_inference_steps=steps, guidance_scale=7.5, image_guidance_scale=1.5,
                  generator=torch.Generator().manual_seed(seed)).images[0]  # fmt: skip
    assert ours.std() > 5 and np.abs(ours - np.asarray(theirs)).max() <= 1

    # text to image: two-way guidance with our sampler against StableDiffusionPipeline
    model = load_model(read_model_config(txt2img_config)[0], txt2img_ckpt)
    generator = ImageEditor(model, torch.device("cpu"))
    sigmas, scheduler = pinned(generator)
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(seed))  # (1, C, h, w)
    cond, uncond = model.get_learned_conditioning([prompt]), model.get_learned_conditioning([""])
    z = sample(CFGDenoiser(generator.denoiser), noise * sigmas[0], sigmas, "euler",
               extra_args={"cond": cond, "uncond": uncond, "cfg_scale": 7.5})  # fmt: skip
    ours = np.asarray(to_image(model.decode_first_stage(z)[0]), dtype=np.int16)
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "txt2img", safety_checker=None)
    pipe.scheduler = scheduler
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(prompt, height=32, width=32, num_inference_steps=steps, guidance_scale=7.5,
                  generator=torch.Generator().manual_seed(seed)).images[0]  # fmt: skip
    assert ours.std() > 5 and np.abs(ours - np.asarray(theirs)).max() <= 1
