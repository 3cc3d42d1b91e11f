"""Write a diffusers pipeline folder as an original-layout checkpoint, for tools that need one.

    python scripts/convert_from_diffusers.py --config configs/generate.yaml \
        --ckpt instruct-pix2pix-diffusers/ --out checkpoints/my-editor.safetensors [--half]

This project needs no conversion step (`--ckpt` and `model.params.ckpt_path` take the folder
itself, `ldm/diffusers_import.py`); this script is for other CompVis-layout tools. `--config`
builds the model the folder must match (a missing or extra key is one line naming it); the
output holds its full state dict under our keys, schedule buffers included, as `.safetensors`
or a `.ckpt` (`{"state_dict": ...}`), written atomically.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ldm.cli import ArgumentParser, UsageError, model_weights, run_cli
from ldm.edit_settings import read_model_config

PROG = "convert_from_diffusers.py"


def convert(args: argparse.Namespace) -> int:
    import torch

    from ldm.inference import open_model
    from ldm.io import atomic_writer

    model_config, _ = read_model_config(args.config)
    folder = model_weights(args.ckpt, model_config, args.config)
    if not folder.is_dir():
        raise UsageError(f"--ckpt {folder}: not a folder; give a diffusers pipeline folder (or its unet/)")
    out = Path(args.out)
    if out.suffix not in (".safetensors", ".ckpt"):
        raise UsageError(f"--out {out}: name a .safetensors or .ckpt file")
    if out.exists():
        raise UsageError(f"--out {out}: already exists; give a new file")
    state = open_model(model_config, folder).state_dict()
    if args.half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    with atomic_writer(out) as file:
        if out.suffix == ".safetensors":
            from safetensors.torch import save

            file.write(save({k: v.contiguous() for k, v in state.items()}))
        else:
            torch.save({"state_dict": state}, file)
    print(f"wrote {len(state)} tensors to {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML whose `model` section builds the model")
    parser.add_argument("--ckpt", help="the diffusers pipeline folder (or its unet/); default: the config's ckpt_path")
    parser.add_argument("--out", required=True, help="the checkpoint to write (.safetensors or .ckpt)")
    parser.add_argument("--half", action="store_true", help="save fp16 weights")
    args = parser.parse_args(argv)
    return run_cli(PROG, lambda: convert(args))


if __name__ == "__main__":
    sys.exit(main())
