"""Memory and step time of LoRA fine-tuning against full fine-tuning, SD1.5 UNet shapes, CPU.

Each configuration runs in a fresh subprocess (so one's freed memory cannot hide another's peak) that
builds our editing LatentDiffusion with the SD1.5 UNet (8 input channels, gradient checkpointing on,
`use_checkpoint: true`) beside the tiny test autoencoder and text encoder (cached latents: the frozen
stages do not run), then trains with AdamW on batch 1 of 32x32 latents (256 px) and a 77x768 context:
noise, UNet forward, loss, backward, optimizer step (`LatentDiffusion.p_losses`, as main.py trains).
Full: every UNet parameter trains. LoRA rank r: `ldm.modules.lora.add_adapters` on the attention
projections (to_q, to_k, to_v, to_out.0; alpha = r), only the adapters in the optimizer.

Reported per configuration: trainable parameters, the median of `--steps` timed steps after one
warm-up step, and the subprocess's peak resident memory (`ru_maxrss`: weights, gradients, AdamW state,
activations, and the process's own baseline, the same in every row). Ratios are LoRA / full.
The goal of issue 17 is LoRA peak memory <= 0.5 x full.

    python bench/bench_lora.py                 # full, lora4, lora64 (full needs ~15 GiB of RAM)
    python bench/bench_lora.py --configs lora4,lora64 --steps 3
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "configs" / "tests" / "tiny_edit.yaml"
SD15_EDIT_UNET = dict(
    image_size=32, in_channels=8, out_channels=4, model_channels=320, attention_resolutions=[4, 2, 1],
    num_res_blocks=2, channel_mult=[1, 2, 4, 4], num_heads=8, use_spatial_transformer=True,
    transformer_depth=1, context_dim=768, legacy=False, use_checkpoint=True,
)  # fmt: skip
CONFIGS = {"full": None, "lora4": 4, "lora64": 64}


def child(name: str, steps: int) -> dict:
    """Build, train `steps` + 1 steps, and report (runs inside the subprocess)."""
    import torch
    from omegaconf import OmegaConf

    from ldm.modules.lora import LoraSettings, add_adapters
    from ldm.util import instantiate_from_config

    cfg = OmegaConf.to_container(OmegaConf.load(TINY_CONFIG).model, resolve=True)
    cfg.pop("base_learning_rate")
    cfg["params"].update(use_ema=False, scheduler_config=None)
    cfg["params"]["unet_config"]["params"] = dict(SD15_EDIT_UNET)
    torch.manual_seed(0)
    model = instantiate_from_config(cfg, "model")
    rank = CONFIGS[name]
    if rank is not None:  # as lora_config does after loading the base weights
        model.lora = LoraSettings(rank=rank)
        add_adapters(model, model.lora)
    params = model.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(1, 4, 32, 32, generator=generator)  # (B, 4, h, w) target latent
    cond = {"c_concat": [torch.randn(1, 4, 32, 32, generator=generator)],
            "c_crossattn": [torch.randn(1, 77, 768, generator=generator)]}  # fmt: skip
    model.train()
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        t = torch.randint(0, model.num_timesteps, (1,), generator=generator)
        loss = model.p_losses(z, cond, t)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return {
        "name": name,
        "trainable": sum(p.numel() for p in params),
        "unet": sum(p.numel() for p in model.model.diffusion_model.parameters()),
        "step_s": statistics.median(times[1:]),
        "warmup_s": times[0],
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,  # KiB on Linux
        "loss": float(loss),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated subset of {', '.join(CONFIGS)}")
    parser.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up step")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.steps)))
        return 0
    names = args.configs.split(",")
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        parser.error(f"--configs: unknown {unknown[0]!r}")
    rows = {}
    for name in names:
        result = subprocess.run([sys.executable, __file__, "--child", name, "--steps", str(args.steps)],
                                capture_output=True, text=True)  # fmt: skip
        if result.returncode != 0:
            print(f"{name}: failed (exit {result.returncode}): {result.stderr.strip()[-500:]}", file=sys.stderr)
            continue
        rows[name] = json.loads(result.stdout.strip().splitlines()[-1])
        row = rows[name]
        print(f"{name:7s} trainable {row['trainable']:>12,} of {row['unet']:,}  step {row['step_s']:7.2f} s "
              f"(warm-up {row['warmup_s']:.1f} s)  peak RSS {row['peak_rss_gib']:6.2f} GiB", flush=True)  # fmt: skip
    if "full" in rows:
        full = rows["full"]
        for name, row in rows.items():
            if name != "full":
                memory = row["peak_rss_gib"] / full["peak_rss_gib"]
                print(f"{name} / full: step time {row['step_s'] / full['step_s']:.2f}x, peak memory {memory:.2f}x "
                      f"(goal <= 0.5x: {'met' if memory <= 0.5 else 'missed'})")  # fmt: skip
    return 0 if len(rows) == len(names) else 1


if __name__ == "__main__":
    sys.exit(main())
