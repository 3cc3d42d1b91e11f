"""Export a model of this project as a diffusers pipeline folder.

    python scripts/convert_to_diffusers.py --config configs/generate.yaml --ckpt logs/run/checkpoints/last.ckpt \
        --out exported/my-editor [--half]

    from diffusers import StableDiffusionInstructPix2PixPipeline
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained("exported/my-editor")

An editing (8-channel, hybrid) model becomes a `StableDiffusionInstructPix2PixPipeline`, a
text-to-image one a `StableDiffusionPipeline`: `model_index.json`, unet, vae, text_encoder,
tokenizer and scheduler, written by diffusers' and transformers' own `save_pretrained` in
safetensors. Keys go through diffusers' own single-file converters (`ldm/diffusers_export.py`).
The checkpoint's EMA weights are used when it has them (`ldm.inference.load_model`). The
scheduler holds the model's exact betas (zero-terminal-SNR schedules included) and
parameterization; it is Euler when the config's `edit_defaults.sampler` is `euler` (the OpenMoji
models), else Euler ancestral (diffusers' InstructPix2Pix default and edit_cli's).

The text encoder goes in as the transformers model it is: CLIPTextModel for SD models, BertModel
for the OpenMoji models' MiniLM (saved with `use_attention_mask: true` in its config and the
tokenizer's `model_max_length` set to the model's prompt length, so the pipelines encode prompts
exactly as this project does). `from_pretrained` reads the classes from `model_index.json`, so
such a folder loads with the line above and nothing else; the reference model, for example:

    python scripts/convert_to_diffusers.py --config configs/openmoji/reference/generate.yaml \
        --ckpt models/openmoji-64/edit.safetensors --out exported/openmoji-64
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained("exported/openmoji-64")
    pipe("make it red", image=sketch_64px, num_inference_steps=20).images[0]

The folder appears complete or not at all.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ldm.cli import ArgumentParser, UsageError, model_weights, run_cli
from ldm.edit_settings import read_model_config

PROG = "convert_to_diffusers.py"


def convert(args: argparse.Namespace) -> int:
    model_config, defaults = read_model_config(args.config)  # mistakes first, before the slow imports
    ckpt = model_weights(args.ckpt, model_config, args.config)
    out = Path(args.out)
    if out.exists():
        raise UsageError(f"--out {out}: already exists; give a new folder")
    import torch
    from diffusers import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler

    from ldm.diffusers_export import to_diffusers_pipeline
    from ldm.inference import open_model
    from ldm.io import atomic_folder

    model = open_model(model_config, ckpt)
    scheduler_class = EulerDiscreteScheduler if defaults["sampler"] == "euler" else EulerAncestralDiscreteScheduler
    scheduler = scheduler_class(
        num_train_timesteps=model.num_timesteps,
        trained_betas=model.betas.double().numpy().tolist(),
        prediction_type="v_prediction" if model.parameterization == "v" else "epsilon",
    )
    try:
        pipe = to_diffusers_pipeline(model, model_config, scheduler)
    except ValueError as err:
        raise UsageError(f"--config {args.config}: {err}") from err
    if args.half:
        pipe.to(torch.float16)
    with atomic_folder(out) as folder:
        pipe.save_pretrained(folder, safe_serialization=True)
    print(f"wrote {type(pipe).__name__} to {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML whose `model` section builds the model")
    parser.add_argument("--ckpt", help="weights (.ckpt or .safetensors); default: the config's model.params.ckpt_path")
    parser.add_argument("--out", required=True, help="the pipeline folder to create")
    parser.add_argument("--half", action="store_true", help="save fp16 weights")
    args = parser.parse_args(argv)
    return run_cli(PROG, lambda: convert(args))


if __name__ == "__main__":
    sys.exit(main())
