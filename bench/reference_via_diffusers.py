"""The shipped reference model through diffusers: export it, edit held-out sketches both ways, score both.

    python bench/reference_via_diffusers.py [--sketches 10] [--example-seed 0]

The model (configs/openmoji/reference/generate.yaml, models/openmoji-64/edit.safetensors) is exported
with `scripts/convert_to_diffusers.py` into a temporary folder, which diffusers'
`StableDiffusionInstructPix2PixPipeline.from_pretrained` loads as any user would (MiniLM comes back
as a transformers BertModel, the scheduler is the folder's own). `--sketches` held-out OpenMoji
sketches (the test split, drawn as the app's "Load Example" does, with the dataset's instruction
and ground truth) are edited by `edit_cli.py`'s editor and by the pipeline with the config's
defaults (20 Euler steps, text CFG 7.5, image CFG 1.5), seed i for sketch i on both sides, fp32.
Both are scored with `metrics/colorization.py`. Prints the mean palette accuracy, CIEDE2000 and
line IoU of each side and their difference, the largest pixel difference, and the seconds of each
side with their ratio (one run, same process).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import convert_to_diffusers  # noqa: E402 (scripts/ is not a package)

from dataset_creation.openmoji.examples import HeldOutExamples  # noqa: E402
from ldm.edit_settings import SamplingOptions, read_model_config  # noqa: E402
from ldm.inference import load_editor  # noqa: E402
from metrics.colorization import Truth, score  # noqa: E402

CONFIG = ROOT / "configs" / "openmoji" / "reference" / "generate.yaml"
CKPT = ROOT / "models" / "openmoji-64" / "edit.safetensors"
METRICS = ("palette_accuracy", "ciede2000", "line_iou")


def held_out(count: int, seed: int, size: int) -> list:
    """`count` held-out examples of distinct emojis."""
    examples, rng, seen = [], random.Random(seed), set()
    source = HeldOutExamples(size)
    while len(examples) < count:
        example = source.example(rng)
        if example.code not in seen:
            seen.add(example.code)
            examples.append(example)
    return examples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sketches", type=int, default=10, help="held-out sketches to edit")
    parser.add_argument("--example-seed", type=int, default=0, help="which held-out sketches")
    args = parser.parse_args()
    from diffusers import StableDiffusionInstructPix2PixPipeline

    model_config, defaults = read_model_config(CONFIG)
    options = SamplingOptions(**{k: defaults[k] for k in ("steps", "sampler", "cfg_text", "cfg_image")})
    editor = load_editor(model_config, CKPT, device="cpu", precision="fp32")
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work) / "openmoji-64"
        convert_to_diffusers.main(["--config", str(CONFIG), "--ckpt", str(CKPT), "--out", str(folder)])
        pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    print(f"diffusers: {type(pipe.text_encoder).__name__} text encoder, {type(pipe.scheduler).__name__}")

    examples = held_out(args.sketches, args.example_seed, defaults["resolution"])
    scores: dict[str, list[dict]] = {"edit_cli": [], "diffusers": []}
    seconds = dict.fromkeys(scores, 0.0)
    largest = 0
    for seed, example in enumerate(examples):
        truth = Truth(np.asarray(example.target))
        start = time.perf_counter()
        ours = editor.edit(example.sketch, example.instruction, [seed], options)[0]
        seconds["edit_cli"] += time.perf_counter() - start
        start = time.perf_counter()
        theirs = pipe(
            example.instruction,
            image=example.sketch,
            num_inference_steps=options.steps,
            guidance_scale=options.cfg_text,
            image_guidance_scale=options.cfg_image,
            generator=torch.Generator().manual_seed(seed),
        ).images[0]
        seconds["diffusers"] += time.perf_counter() - start
        ours_pixels, theirs_pixels = np.asarray(ours), np.asarray(theirs)
        largest = max(largest, int(np.abs(ours_pixels.astype(int) - theirs_pixels).max()))
        scores["edit_cli"].append(score(ours_pixels, truth))
        scores["diffusers"].append(score(theirs_pixels, truth))
        print(f"{example.code} {example.instruction!r}: palette {scores['edit_cli'][-1]['palette_accuracy']:.3f} "
              f"(edit_cli) {scores['diffusers'][-1]['palette_accuracy']:.3f} (diffusers)")  # fmt: skip

    means = {side: {m: float(np.nanmean([s[m] for s in rows])) for m in METRICS} for side, rows in scores.items()}
    print(f"\n{len(examples)} held-out sketches, {options.steps} {options.sampler} steps, "
          f"CFG {options.cfg_text}/{options.cfg_image}")  # fmt: skip
    print(f"{'side':<10} " + " ".join(f"{m:>16}" for m in METRICS) + f" {'seconds':>8}")
    for side in scores:
        print(f"{side:<10} " + " ".join(f"{means[side][m]:>16.4f}" for m in METRICS) + f" {seconds[side]:>8.2f}")
    print(f"{'difference':<10} " + " ".join(f"{means['diffusers'][m] - means['edit_cli'][m]:>+16.4f}" for m in METRICS)
          + f" {seconds['edit_cli'] / seconds['diffusers']:>7.2f}x")  # fmt: skip
    print(f"largest pixel difference between the two sides: {largest}/255")


if __name__ == "__main__":
    main()
