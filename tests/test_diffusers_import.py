"""Diffusers pipeline folders as checkpoints (ldm/diffusers_import.py): edit_cli.py --ckpt <folder>
against the diffusers pipeline that wrote it, strict keys, the scheduler check, the unet/ form
and scripts/convert_from_diffusers.py."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ROOT, TINY_CONFIG, pinned_euler, tiny_model, tiny_model_config
from omegaconf import OmegaConf
from PIL import Image
from safetensors.torch import load_file, save_file

import edit_cli
from ldm.inference import ImageEditor, load_model

pytest.importorskip("diffusers")
STEPS, SEED, INSTRUCTION = 6, 3, "make it red"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory):
    """A pipeline folder saved by diffusers' own save_pretrained, with weights set in diffusers'
    modules (our tiny architecture, moved away from our initialisation by seeded noise)."""
    from ldm.diffusers_export import to_diffusers_pipeline

    root = tmp_path_factory.mktemp("diffusers_import")
    model = tiny_model()
    editor = ImageEditor(model, torch.device("cpu"))
    sigmas = editor.denoiser.get_sigmas(STEPS)  # (steps + 1,)
    scheduler = pinned_euler(sigmas, editor.denoiser.sigma_to_t(sigmas[:-1]))  # our sigmas and UNet timesteps
    pipe = to_diffusers_pipeline(model, tiny_model_config(), scheduler)
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for module in (pipe.unet, pipe.vae, pipe.text_encoder):
            for p in module.parameters():
                p.copy_(p + 0.02 * torch.randn(p.shape, generator=generator))
    pipe.save_pretrained(root / "pipe", safe_serialization=True)
    OmegaConf.save({"model": OmegaConf.load(TINY_CONFIG).model}, root / "tiny.yaml")
    image = Image.fromarray((torch.rand(32, 32, 3, generator=torch.Generator().manual_seed(5)) * 255)
                            .to(torch.uint8).numpy())  # fmt: skip
    image.save(root / "in.png")
    noise = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(SEED))  # edit_cli's initial noise
    with torch.no_grad():
        theirs = pipe(INSTRUCTION, image=image, num_inference_steps=STEPS, guidance_scale=7.5,
                      image_guidance_scale=1.5, latents=noise, output_type="np").images[0]  # fmt: skip
    return {"root": root, "pipe": root / "pipe", "config": root / "tiny.yaml", "input": root / "in.png",
            "theirs": theirs}  # fmt: skip


def edit(folder: dict, ckpt: Path, out: Path) -> int:
    return edit_cli.main(["--input", str(folder["input"]), "--output", str(out), "--edit", INSTRUCTION, "--config",
                          str(folder["config"]), "--ckpt", str(ckpt), "--resolution", "32", "--steps", str(STEPS),
                          "--sampler", "euler", "--seed", str(SEED)])  # fmt: skip


@pytest.mark.parametrize("form", ["pipeline", "unet"])
def test_edit_cli_on_a_diffusers_folder_matches_the_diffusers_pipeline(folder, tmp_path, form) -> None:
    ckpt = folder["pipe"] if form == "pipeline" else folder["pipe"] / "unet"
    assert edit(folder, ckpt, tmp_path / "ours.png") == 0
    ours = np.asarray(Image.open(tmp_path / "ours.png"), dtype=np.float64) / 255
    theirs = folder["theirs"]  # (32, 32, 3) in [0, 1]
    assert theirs.std() > 0.05
    assert np.abs(ours - theirs).max() <= 1 / 255 + 1 / 510  # diffusers' float image vs our 8-bit rounding of it
    save_file({k: v.contiguous() for k, v in tiny_model().state_dict().items()}, tmp_path / "tiny.safetensors")
    assert edit(folder, tmp_path / "tiny.safetensors", tmp_path / "before.png") == 0  # the weights diffusers moved
    assert np.abs(ours - np.asarray(Image.open(tmp_path / "before.png")) / 255).max() > 10 / 255


@pytest.mark.parametrize("change", ["missing", "extra", "schedule"])
def test_a_folder_that_does_not_fit_is_one_line(folder, tmp_path, capsys, change) -> None:
    pipe = Path(shutil.copytree(folder["pipe"], tmp_path / "pipe"))
    weights = pipe / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(weights))
    if change == "missing":
        del tensors["conv_in.bias"]
    elif change == "extra":
        tensors["conv_extra.weight"] = torch.zeros(3)
    if change == "schedule":
        path = pipe / "scheduler" / "scheduler_config.json"
        config = json.loads(path.read_text())
        path.write_text(json.dumps({**config, "beta_end": 0.02, "trained_betas": None}))
    else:
        save_file(tensors, str(weights))
    assert edit(folder, pipe, tmp_path / "out.png") == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("edit_cli.py: error: ")
    expected = {"missing": "no tensor conv_in.bias", "extra": "conv_extra.weight is not a weight", "schedule": "betas"}
    assert expected[change] in err[0]
    assert not (tmp_path / "out.png").exists()


def test_convert_from_diffusers_writes_an_original_layout_checkpoint(folder, tmp_path) -> None:
    out = tmp_path / "converted.safetensors"
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "convert_from_diffusers.py"), "--config",
                          str(folder["config"]), "--ckpt", str(folder["pipe"]), "--out", str(out)],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr
    from_file = load_model(tiny_model_config(), out).state_dict()
    from_folder = load_model(tiny_model_config(), folder["pipe"]).state_dict()
    assert from_file.keys() == from_folder.keys()
    assert all(torch.equal(from_file[k], from_folder[k]) for k in from_file)
    assert "betas" in load_file(str(out))  # schedule buffers included, for tools that need them


def _peak_rss_gib() -> float:
    """This process's peak resident set since the last `_reset_peak_rss` (Linux: VmHWM)."""
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 2**20  # kB


def _reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM := the current resident set


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="measures memory through Linux's /proc")
def test_an_sd15_shaped_editing_model_round_trips_bit_identical(tmp_path: Path) -> None:
    """configs/generate.yaml at full size (8-channel SD1.5 UNet, VAE, CLIP ViT-L/14 text tower) with random
    weights: exported as a pipeline folder with diffusers' save_pretrained and read back by the import
    (what --ckpt <folder> loads), every weight comes back bit for bit under its own key. Prints the
    seconds and the peak resident memory above the model itself of each step."""
    import time

    from diffusers import EulerDiscreteScheduler
    from helpers import SD_EULER

    from ldm.diffusers_export import to_diffusers_pipeline
    from ldm.diffusers_import import read_pipeline_folder
    from ldm.edit_settings import read_model_config
    from ldm.util import instantiate_from_config

    model_config, _ = read_model_config(ROOT / "configs" / "generate.yaml")
    model_config["params"] = {**model_config["params"], "use_ema": False, "ckpt_path": None}
    torch.manual_seed(0)
    model = instantiate_from_config(model_config, "model").eval()
    with torch.no_grad():
        for p in model.parameters():  # the zero-initialised output layers get values too
            if not p.any():
                p.normal_(0.0, 0.02)
    state = model.state_dict()
    seconds, peak = {}, {}
    for way in ("export", "import", "compare"):
        _reset_peak_rss()
        base = _peak_rss_gib()
        start = time.perf_counter()
        if way == "export":
            to_diffusers_pipeline(model, model_config, EulerDiscreteScheduler(**SD_EULER)).save_pretrained(
                tmp_path / "pipe", safe_serialization=True
            )
        elif way == "import":
            back = read_pipeline_folder(tmp_path / "pipe", model)  # memory-mapped: read when first used
        else:
            different = [k for k in back if not (back[k].dtype == state[k].dtype and torch.equal(back[k], state[k]))]
        seconds[way], peak[way] = time.perf_counter() - start, _peak_rss_gib() - base
    weights = {k for k in state if k.startswith(("model.diffusion_model.", "first_stage_model.",
                                                 "cond_stage_model."))}  # fmt: skip
    assert sorted(set(back) ^ (weights | ({"scale_factor"} & set(state)))) == []  # a buffer where scale_by_std
    assert not different, f"{len(different)} tensors differ, the first {different[0]}"
    size = sum(state[k].numel() * state[k].element_size() for k in weights) / 2**30
    print(f"{len(weights)} tensors, {size:.2f} GiB: export {seconds['export']:.0f} s (+{peak['export']:.1f} GiB "
          f"peak), import {seconds['import']:.1f} s, then reading and comparing every tensor "
          f"{seconds['compare']:.0f} s (+{peak['compare']:.1f} GiB peak)")  # fmt: skip
