"""Each training-speed switch of `model.params.throughput` against the default, in one process.

One step is what main.py runs per batch: `training_step`'s loss under the switch's SDPA backend
(`LatentDiffusion.shared_step`: frozen encoders online, posterior sample, conditioning dropout,
noise, UNet, loss), backward, the optimizer `configure_optimizers` builds, the EMA update. The
model is the demo's (configs/openmoji/train.yaml: 64 px, MiniLM, batch 8) with random weights;
data loading is left out. All rows' models are built first; after a warm-up step each (for
compile_unet: the compilation) they are timed round-robin, one step of each per round, `--repeats`
rounds, median per row; ratio = the row's img/s / the default's.

Usage: python bench/throughput_switches.py [--repeats N] [--threads N] [--device cpu] [--no-compile]
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch
from cached_training import CONFIGS, batches, build_model, seconds_of, training_step

SWITCHES = {
    "default": {},
    "channels_last": {"channels_last": True},
    "sdpa_backend: math": {"sdpa_backend": "math"},
    "fused_adamw": {"fused_adamw": True},
    "compile_unet": {"compile_unet": True},
}


def switched_step(switch: dict, device: torch.device) -> Callable[[], None]:
    """One training step of the demo model built with `switch` as its throughput settings, with the
    optimizer its `configure_optimizers` builds."""
    path, batch, side = CONFIGS["demo"]
    model = build_model(path, device, throughput=switch)
    online, _ = batches(model, batch, side, device)
    optimizer = model.configure_optimizers()
    return training_step(model, online, optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer)


def interleaved_seconds(steps: dict[str, Callable[[], None]], repeats: int, device: torch.device) -> dict:
    """Median seconds per step of each, timed round-robin (one step of each per round), so that the
    machine's drift (clock, other jobs) falls on all rows alike; a warm-up step each first."""
    for step in steps.values():
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            times[name].append(seconds_of(step, device))
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-compile", action="store_true", help="leave out the compile_unet row")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    steps = {name: switched_step(switch, device) for name, switch in SWITCHES.items()
             if not (name == "compile_unet" and args.no_compile)}  # fmt: skip
    batch = CONFIGS["demo"][1]
    rows = {name: batch / seconds for name, seconds in interleaved_seconds(steps, args.repeats, device).items()}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {device}, demo model, "
          f"batch {CONFIGS['demo'][1]} at {CONFIGS['demo'][2]} px, median of {args.repeats} steps")  # fmt: skip
    print(f"{'switch':<20} {'img/s':>8} {'ratio':>6}")
    for name, value in rows.items():
        print(f"{name:<20} {value:>8.2f} {value / rows['default']:>6.2f}")


if __name__ == "__main__":
    main()
