"""Benchmark our UNetModel against diffusers' UNet2DConditionModel on identical weights (CPU).

Both models hold the same tensors: our random state dict, prefixed as in an SD
checkpoint, goes through diffusers' LDM converter and is assigned (not copied) into a
UNet2DConditionModel built on the meta device. Inputs: batch 3 of 32x32 latents with 4
channels (the SD1.5 text-to-image UNet; the editing UNet's 8-channel first conv changes
nothing measurable), timesteps (3,), context (3, 77, 768). Each row is a warm-up run, then
the median of `--repeats` runs per model, interleaved ours / diffusers; "bf16" is fp32
weights under `torch.autocast("cpu", dtype=torch.bfloat16)`.

Peak memory is the peak resident set size (from /proc/self/statm, polled every
2 ms in a thread) above the level at the start of a run, after returning freed
heap memory to the OS with malloc_trim; for forward+backward it includes the gradients.

Other load on the machine shows up as noise; interleaving keeps it from favouring either
model. On a busy machine multi-threaded wall times mostly measure waiting at thread
barriers, so the table also gives the ratio of process CPU times (all threads), which
time-slicing does not inflate; `--threads 1` makes both columns robust. Progress goes to
stderr, the table to stdout at the end. Usage:
    python bench/unet_vs_diffusers.py [--sizes tiny,full] [--repeats N] [--precisions fp32,bf16]
        [--threads N]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable

import torch
from diffusers import UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_unet_checkpoint,
    create_unet_diffusers_config_from_ldm,
)

from ldm.modules.diffusionmodules.openaimodel import UNetModel

SD15 = dict(
    image_size=32, in_channels=4, out_channels=4, model_channels=320, attention_resolutions=[4, 2, 1],
    num_res_blocks=2, channel_mult=[1, 2, 4, 4], num_heads=8, use_spatial_transformer=True,
    transformer_depth=1, context_dim=768, legacy=False,
)  # fmt: skip
CONFIGS = {
    # SD1.5's layout at 1/10 width without attention at full latent resolution: framework overhead shows
    "tiny": {
        **SD15,
        **dict(model_channels=32, channel_mult=[1, 2, 2], num_res_blocks=1, attention_resolutions=[4, 2]),
    },
    "full": SD15,
}
DEFAULT_REPEATS = {"tiny": 7, "full": 2}  # full-size fp32 forward+backward takes ~40 s on 2 cores
# CPUs without native bf16 (AVX512-BF16 / AMX) emulate it: one full-size bf16 forward took ~440 s
# (ours) and ~450 s (diffusers) on 2 AVX2 cores, so full-size bf16 rows are opt-in.
DEFAULT_PRECISIONS = {"tiny": ["fp32", "bf16"], "full": ["fp32"]}
PRECISIONS = ("fp32", "bf16")
BATCH, LATENT, TOKENS = 3, 32, 77
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

try:
    _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
except (OSError, AttributeError):  # not glibc: freed memory may stay resident, deltas read low
    _malloc_trim = None


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE_SIZE


class PeakRSS:
    """Context manager: `.delta` = peak resident bytes above the level at entry."""

    def __enter__(self) -> PeakRSS:
        if _malloc_trim is not None:
            _malloc_trim(0)
        self.base = self.peak = resident_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, resident_bytes())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, resident_bytes())

    @property
    def delta(self) -> int:
        return self.peak - self.base


@torch.no_grad()
def build_pair(params: dict) -> tuple[UNetModel, UNet2DConditionModel]:
    """Our UNet with random weights (zero-initialised layers too) and diffusers' on the same tensors."""
    ours = UNetModel(**params)
    for p in ours.parameters():
        if not p.any():
            p.normal_(0.0, 0.02)
    checkpoint = {"model.diffusion_model." + k: v for k, v in ours.state_dict().items()}
    original_config = {
        "model": {
            "params": {
                "unet_config": {"params": params},
                "first_stage_config": {"params": {"ddconfig": {"ch_mult": [1, 2, 4, 4]}}},
            }
        }
    }
    config = create_unet_diffusers_config_from_ldm(original_config, checkpoint)
    with torch.device("meta"):
        theirs = UNet2DConditionModel(**config)
    theirs.load_state_dict(convert_ldm_unet_checkpoint(checkpoint, config), strict=True, assign=True)
    return ours, theirs


def step(call: Callable[[], torch.Tensor], mode: str, precision: str) -> None:
    """One forward (no grad) or forward+backward of a mean-square loss, in fp32 or bf16 autocast."""
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    if mode == "forward":
        with torch.no_grad(), amp:
            call()
    else:
        with amp:
            out = call()
        out.float().square().mean().backward()


def bench_config(name: str, precisions: list[str], repeats: int) -> list[tuple]:
    """Rows: config, mode, precision, then for ours and diffusers each: wall s, CPU s, peak bytes."""
    params = CONFIGS[name]
    torch.manual_seed(0)
    ours, theirs = build_pair(params)
    x = torch.randn(BATCH, params["in_channels"], LATENT, LATENT)  # (B, C, H, W)
    t = torch.randint(0, 1000, (BATCH,))  # (B,)
    context = torch.randn(BATCH, TOKENS, params["context_dim"])  # (B, 77, 768)
    models = {"ours": ours, "diffusers": theirs}
    calls = {
        "ours": lambda: ours(x, t, context),
        "diffusers": lambda: theirs(x, t, encoder_hidden_states=context).sample,
    }
    with torch.no_grad():
        diff = (calls["ours"]() - calls["diffusers"]()).abs().max().item()
    n_params = sum(p.numel() for p in ours.parameters())
    print(f"{name}: {n_params:,} parameters, fp32 max |ours - diffusers| = {diff:.1e}", file=sys.stderr)

    rows = []
    for mode in ("forward", "fwd+bwd"):
        for precision in precisions:
            seconds: dict[str, list[float]] = {label: [] for label in calls}
            cpu_seconds: dict[str, list[float]] = {label: [] for label in calls}
            memory: dict[str, list[int]] = {label: [] for label in calls}
            for i in range(repeats + 1):  # the first round is the warm-up
                for label in sorted(calls, reverse=i % 2 == 1):  # who goes first alternates too
                    call = calls[label]
                    with PeakRSS() as mem:
                        start, cpu_start = time.perf_counter(), time.process_time()
                        step(call, mode, precision)
                        seconds[label].append(time.perf_counter() - start)
                        cpu_seconds[label].append(time.process_time() - cpu_start)
                    memory[label].append(mem.delta)
                    models[label].zero_grad(set_to_none=True)
            row = (name, mode, precision) + tuple(
                value
                for label in calls
                for value in (
                    statistics.median(seconds[label][1:]),
                    statistics.median(cpu_seconds[label][1:]),
                    max(memory[label][1:]),
                )
            )
            print(f"{name} {mode} {precision}: ours {row[3]:.3f}s, diffusers {row[6]:.3f}s", file=sys.stderr)
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="tiny,full", help=f"comma-separated subset of {','.join(CONFIGS)}")
    parser.add_argument(
        "--repeats", type=int, help=f"timed runs per model after one warm-up (default: {DEFAULT_REPEATS})"
    )
    parser.add_argument(
        "--precisions",
        help=f"comma-separated subset of {','.join(PRECISIONS)} (default {DEFAULT_PRECISIONS})",
    )
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args()
    sizes = [s for s in args.sizes.split(",") if s]
    precisions = args.precisions.split(",") if args.precisions else None
    if set(sizes) - set(CONFIGS) or (precisions and set(precisions) - set(PRECISIONS)):
        parser.error(f"sizes must be among {','.join(CONFIGS)} and precisions among {','.join(PRECISIONS)}")

    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"batch {BATCH}, latents 4x{LATENT}x{LATENT}, context {BATCH}x{TOKENS}x768, "
        "peak = max resident-set growth during a run (MiB)"
    )
    rows = []
    for size in sizes:
        rows += bench_config(
            size, precisions or DEFAULT_PRECISIONS[size], args.repeats or DEFAULT_REPEATS[size]
        )
    header = (
        f"{'config':<6} {'mode':<8} {'precision':<9} {'ours (s)':>9} {'diffusers (s)':>13} {'ratio':>6} "
        f"{'CPU-time ratio':>14} {'ours peak':>9} {'diffusers peak':>14}"
    )
    print(header)
    print("-" * len(header))
    mib = 2**20
    for name, mode, precision, ours_s, ours_cpu, ours_mem, theirs_s, theirs_cpu, theirs_mem in rows:
        print(
            f"{name:<6} {mode:<8} {precision:<9} {ours_s:>9.3f} {theirs_s:>13.3f} {ours_s / theirs_s:>6.2f} "
            f"{ours_cpu / theirs_cpu:>14.2f} {ours_mem / mib:>9.0f} {theirs_mem / mib:>14.0f}"
        )


if __name__ == "__main__":
    main()
