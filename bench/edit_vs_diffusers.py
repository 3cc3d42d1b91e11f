"""Benchmark one edit with edit_cli's code path against diffusers' InstructPix2Pix pipeline (CPU).

Both pipelines hold the same tensors: our LatentDiffusion with random weights is exported
with ldm/diffusers_export.py (UNet and VAE assigned, not copied). One edit is what
`edit_cli.py` does per input after loading: encode the instruction and the 256x256 input
image, run `steps` Euler steps with three-way guidance (batch 3, scales 7.5 / 1.5), decode,
convert to a PIL image. diffusers runs `StableDiffusionInstructPix2PixPipeline.__call__` with
its EulerDiscreteScheduler (SD1 betas) and `output_type="pil"`. Steps: 20 for the tiny model
(configs/tests/tiny_edit.yaml), 10 for the SD1.5-shaped model (configs/generate.yaml: 8-channel
UNet, VAE, CLIP ViT-L/14 text tower) to keep a full-size row to minutes on a CPU.

Precision: fp32, and bf16 autocast (ours: `ImageEditor(dtype=torch.bfloat16)`; diffusers:
its call inside `torch.autocast("cpu", dtype=torch.bfloat16)`). Each row: one warm-up edit of
one step per pipeline, then `--repeats` timed edits per pipeline, alternating, median reported.
Peak memory: the peak resident set size above the level at the start of an edit (weights
are shared and already resident, so this is activations and workspace).

Usage: python bench/edit_vs_diffusers.py [--sizes tiny,full] [--precisions fp32,bf16] [--repeats N]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import EulerDiscreteScheduler
from omegaconf import OmegaConf
from PIL import Image, ImageDraw
from unet_vs_diffusers import PeakRSS

from ldm.diffusers_export import to_diffusers_pipeline
from ldm.edit_settings import SamplingOptions
from ldm.inference import ImageEditor
from ldm.util import instantiate_from_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"tiny": ROOT / "configs" / "tests" / "tiny_edit.yaml", "full": ROOT / "configs" / "generate.yaml"}
STEPS = {"tiny": 20, "full": 10}
DEFAULT_REPEATS = {"tiny": 3, "full": 1}
RESOLUTION = 256
INSTRUCTION = "color it as a green dragon with red wings"
CFG_TEXT, CFG_IMAGE = 7.5, 1.5


def build(size: str) -> tuple[ImageEditor, object]:
    """Our model (random weights, zero-initialised layers made non-zero) and diffusers' on the same tensors."""
    config = OmegaConf.to_container(OmegaConf.load(CONFIGS[size]).model, resolve=True)
    config.pop("base_learning_rate", None)
    config["params"]["use_ema"] = False
    torch.manual_seed(0)
    model = instantiate_from_config(config, "model").eval()
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0.0, 0.02)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    return ImageEditor(model, torch.device("cpu")), to_diffusers_pipeline(model, config, scheduler)


def input_image() -> Image.Image:
    image = Image.new("RGB", (RESOLUTION, RESOLUTION), "white")
    ImageDraw.Draw(image).ellipse((40, 40, 216, 216), outline="black", width=4)
    return image


def edit_calls(
    editor: ImageEditor, pipe: object, image: Image.Image, dtype: torch.dtype | None
) -> dict[str, Callable[[int], Image.Image]]:
    """steps -> edited image, for our editor and for diffusers, in fp32 (dtype None) or autocast to `dtype`,
    on the editor's device."""
    ours_editor = ImageEditor(editor.model, editor.device, dtype)

    def ours(steps: int) -> Image.Image:
        options = SamplingOptions(steps=steps, sampler="euler", cfg_text=CFG_TEXT, cfg_image=CFG_IMAGE)
        return ours_editor.edit(image, INSTRUCTION, [0], options)[0]

    def diffusers(steps: int) -> Image.Image:
        amp = torch.autocast(editor.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with amp:
            result = pipe(
                INSTRUCTION,
                image=image,
                num_inference_steps=steps,
                guidance_scale=CFG_TEXT,
                image_guidance_scale=CFG_IMAGE,
                generator=torch.Generator().manual_seed(0),
            )
        return result.images[0]

    return {"ours": ours, "diffusers": diffusers}


def bench_size(size: str, precisions: list[str], repeats: int) -> list[tuple]:
    editor, pipe = build(size)
    image = input_image()
    n_params = sum(p.numel() for p in editor.model.parameters())
    print(f"{size}: {n_params:,} parameters, stride {editor.stride}, {STEPS[size]} Euler steps at {RESOLUTION} px")
    rows = []
    for precision in precisions:
        calls = edit_calls(editor, pipe, image, torch.bfloat16 if precision == "bf16" else None)
        for call in calls.values():
            assert call(1).size == image.size  # warm-up
        seconds: dict[str, list[float]] = {label: [] for label in calls}
        memory: dict[str, list[int]] = {label: [] for label in calls}
        for _ in range(repeats):
            for label, call in calls.items():
                with PeakRSS() as mem:
                    start = time.perf_counter()
                    call(STEPS[size])
                    seconds[label].append(time.perf_counter() - start)
                memory[label].append(mem.delta)
        rows.append(
            (size, precision)
            + tuple(statistics.median(seconds[label]) for label in calls)
            + tuple(max(memory[label]) for label in calls)
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="tiny,full", help="comma-separated subset of: " + ",".join(CONFIGS))
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated subset of: fp32,bf16")
    parser.add_argument("--repeats", type=int, help=f"timed edits per pipeline (default: {DEFAULT_REPEATS})")
    args = parser.parse_args()
    sizes = [s for s in args.sizes.split(",") if s]
    precisions = [p for p in args.precisions.split(",") if p]
    if set(sizes) - set(CONFIGS) or set(precisions) - {"fp32", "bf16"}:
        parser.error(f"sizes from {sorted(CONFIGS)}, precisions from fp32, bf16")

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, one {RESOLUTION}x{RESOLUTION} edit")
    rows = [row for size in sizes for row in bench_size(size, precisions, args.repeats or DEFAULT_REPEATS[size])]
    mib = 2**20
    header = (
        f"{'config':<6} {'precision':<9} {'ours (s)':>9} {'diffusers (s)':>13} {'ratio':>6} "
        f"{'ours peak RSS (MiB)':>19} {'diffusers peak RSS (MiB)':>24}"
    )
    print(header)
    print("-" * len(header))
    for size, precision, ours_s, theirs_s, ours_mem, theirs_mem in rows:
        print(
            f"{size:<6} {precision:<9} {ours_s:>9.2f} {theirs_s:>13.2f} {ours_s / theirs_s:>6.2f} "
            f"{ours_mem / mib:>19.0f} {theirs_mem / mib:>24.0f}"
        )


if __name__ == "__main__":
    main()
