"""Merge LoRA adapters into their base model and write a full checkpoint; or re-write an adapter for diffusers.

    python scripts/merge_lora.py --lora logs/openmoji-lora/checkpoints/last.ckpt --out merged.safetensors
    python scripts/merge_lora.py --config configs/generate.yaml --ckpt checkpoints/instruct-pix2pix-00-22000.ckpt \\
        --lora a.safetensors --lora b.safetensors --lora-scale 1 --lora-scale 0.5 --out merged.ckpt
    python scripts/merge_lora.py --lora logs/run/checkpoints/last.ckpt --export-adapter adapter.safetensors

`--config` (the inference config, default the reference model's) builds the model and `--ckpt` (default the
config's `ckpt_path`) is the base, loaded as `edit_cli.py` loads it (EMA weights preferred). Each `--lora` is a
diffusers-layout `.safetensors` adapter or a LoRA run's `.ckpt` (its EMA adapter); a run's checkpoint must name
the base by the same sha256, else nothing is written. Adapters are merged in order, each times its
`--lora-scale` (one per --lora, or one for all; default 1): W + s (alpha / r) B A, and a trained conv_in
W + s (W_adapter - W).

`--out` gets the merged weights (the UNet without EMA copies, the autoencoder, the text encoder unless the
config's `ignore_keys` leaves it out and no adapter changed it), as `.safetensors` or a `{"state_dict": ...}`
`.ckpt`, for `edit_cli.py --ckpt`, `scripts/eval_openmoji.py --ckpt` or `scripts/convert_to_diffusers.py`.
`--export-adapter` instead writes the one `--lora` as a diffusers-layout `.safetensors` adapter, for
`StableDiffusionInstructPix2PixPipeline.load_lora_weights`. Files are written atomically; a mistake is one
line and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ldm.cli import ArgumentParser, UsageError, existing_file, finite_float, lora_files, run_cli
from ldm.edit_settings import DEFAULT_CONFIG, read_model_config

PROG = "merge_lora.py"
OUT_SUFFIXES = (".safetensors", ".ckpt")


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="inference YAML (its `model` section)")
    p.add_argument("--ckpt", help="base weights [the config's model.params.ckpt_path]")
    p.add_argument("--lora", action="append", required=True, metavar="FILE", help="adapter file or LoRA run .ckpt")
    p.add_argument("--lora-scale", action="append", type=finite_float, default=[], metavar="S",
                   help="strength per --lora, or one for all [1]")  # fmt: skip
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("--out", help="merged checkpoint to write (.safetensors or .ckpt)")
    out.add_argument("--export-adapter", metavar="FILE", help="write the --lora as a diffusers .safetensors adapter")
    return p


def check_base(lora: Path, base: Path) -> None:
    """A LoRA run's checkpoint must have been trained on `base` (same sha256)."""
    from ldm.checkpoint import read_checkpoint
    from ldm.modules.lora import file_sha256

    if lora.suffix == ".safetensors":
        return
    reference = (read_checkpoint(lora).get("lora") or {}).get("base")
    if reference and reference["sha256"] != file_sha256(base):
        raise UsageError(
            f"--lora {lora} adapted {reference['path']} (sha256 {reference['sha256'][:12]}), not --ckpt {base}; "
            "give its base with --ckpt"
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def run() -> int:
        model_config, _ = read_model_config(args.config)
        params = model_config.get("params") or {}
        base = existing_file("--ckpt", args.ckpt or params.get("ckpt_path"))
        if base is None:
            raise UsageError(f"--ckpt is required: {args.config} sets no model.params.ckpt_path")
        files, scales = zip(*lora_files(args.lora, args.lora_scale), strict=True)
        target = Path(args.out or args.export_adapter)
        if args.export_adapter and (len(files) != 1 or args.lora_scale):
            raise UsageError("--export-adapter writes one --lora as it is: give one --lora and no --lora-scale")
        if target.suffix not in (OUT_SUFFIXES if args.out else (".safetensors",)):
            flag = "--out" if args.out else "--export-adapter"
            raise UsageError(f"{flag} {target}: write a {' or '.join(OUT_SUFFIXES if args.out else OUT_SUFFIXES[:1])}")
        if target.resolve() in {base.resolve(), *(f.resolve() for f in files)}:
            raise UsageError(f"{target}: would overwrite an input")
        for f in files:
            check_base(f, base)

        from ldm.inference import open_model  # torch: only once the arguments check out
        from ldm.modules.lora import TEXT, apply_adapter, read_adapter, save_adapter

        model = open_model(model_config, base)
        adapters = []
        for f, scale in zip(files, scales, strict=True):
            try:
                adapters.append(read_adapter(f, model))
                if args.out:
                    apply_adapter(model, adapters[-1], scale)
            except (OSError, ValueError, ImportError) as err:
                raise UsageError(f"--lora {f}: cannot use the adapter ({err})") from err
        if args.export_adapter:
            save_adapter(adapters[0], model, target)
            print(f"wrote {target}: {len(adapters[0].lora)} LoRA layers, {len(adapters[0].full)} full tensors")
            return 0
        touched_text = any(m.startswith(TEXT) for adapter in adapters for m in adapter.lora)
        ignore = () if touched_text else tuple(params.get("ignore_keys") or ())
        state = {k: v.contiguous() for k, v in model.state_dict().items() if not (ignore and k.startswith(ignore))}
        write(state, target)
        print(f"wrote {target}: {len(state)} tensors, {target.stat().st_size / 2**20:.1f} MiB")
        return 0

    return run_cli(PROG, run, user_errors=(OSError,))


def write(state: dict, target: Path) -> None:
    """`state` as safetensors or as a `{"state_dict": ...}` torch checkpoint, by suffix, atomically."""
    import torch
    from safetensors.torch import save

    from ldm.io import atomic_writer, write_bytes_atomic

    if target.suffix == ".safetensors":
        write_bytes_atomic(target, save(state))
        return
    with atomic_writer(target) as f:
        torch.save({"state_dict": state}, f)


if __name__ == "__main__":
    sys.exit(main())
