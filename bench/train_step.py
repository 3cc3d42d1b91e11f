"""Training throughput of our editing LatentDiffusion against an equivalent diffusers step (CPU).

Both sides train the same UNet weights (ours converted with diffusers' own LDM converter,
then copied so each side owns its tensors) on the same batch of cached latents: the
8-channel input is the noisy target latent + the input-image latent, the context is a
text embedding. One step = sample noise and timesteps, noise the latent, UNet forward,
MSE to the noise, backward, AdamW step. Ours runs `LatentDiffusion.p_losses` (the code
`main.py` trains with, EMA off); diffusers runs `DDPMScheduler.add_noise` +
`UNet2DConditionModel` + `F.mse_loss`, as its InstructPix2Pix training script does.
Encoding images and text is left out of both (the frozen stages cost the same on either
side; with cached latents the UNet step is the whole cost).

Rows: tiny (configs/tests/tiny_edit.yaml UNet, batch 8, 8x8 latents) and full SD1.5 shape
(batch 2, 32x32 latents = 256 px, context 77x768), fp32 and bf16 autocast. Each cell is
a warm-up step, then the median of `--repeats` steps; ratio = our step time / theirs.
Peak memory = peak resident bytes above the start of a row (weights, grads, AdamW state).

Usage: python bench/train_step.py [--sizes tiny,full] [--repeats N]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from omegaconf import OmegaConf
from unet_vs_diffusers import SD15, PeakRSS

from ldm.diffusers_export import to_diffusers_pipeline
from ldm.util import instantiate_from_config

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "configs" / "tests" / "tiny_edit.yaml"
SHAPES = {"tiny": (8, 8, 32), "full": (2, 32, 768)}  # batch, latent side, context width
DEFAULT_REPEATS = {"tiny": 10, "full": 2}


def build_models(size: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Our LatentDiffusion (tiny VAE and text encoder, the UNet of `size`) and an independent diffusers UNet copy."""
    cfg = OmegaConf.to_container(OmegaConf.load(TINY_CONFIG).model, resolve=True)
    cfg.pop("base_learning_rate")
    cfg["params"]["use_ema"] = False
    if size == "full":
        cfg["params"]["unet_config"]["params"] = {**SD15, "in_channels": 8}
    model = instantiate_from_config(cfg, "model")
    with torch.no_grad():
        for p in model.model.parameters():
            if not p.any():
                p.normal_(0.0, 0.02)  # zero-initialised layers would make both sides trivially equal
    theirs = copy.deepcopy(to_diffusers_pipeline(model, cfg, DDPMScheduler()).unet)  # own tensors: both train
    return model, theirs


def median_step(step: Callable[[], None], repeats: int) -> float:
    step()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(size: str, repeats: int) -> list[tuple]:
    batch, side, width = SHAPES[size]
    torch.manual_seed(0)
    model, theirs = build_models(size)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear")  # fmt: skip
    target = torch.randn(batch, 4, side, side)
    image_latent = torch.randn(batch, 4, side, side)
    context = torch.randn(batch, 77, width)
    cond = {"c_concat": [image_latent], "c_crossattn": [context]}

    def ours_loss() -> torch.Tensor:
        return model.p_losses(target, cond, torch.randint(0, 1000, (batch,)))

    def theirs_loss() -> torch.Tensor:
        noise = torch.randn_like(target)
        t = torch.randint(0, 1000, (batch,))
        noisy = scheduler.add_noise(target, noise, t)
        pred = theirs(torch.cat([noisy, image_latent], dim=1), t, encoder_hidden_states=context).sample
        return F.mse_loss(pred.float(), noise.float())

    rows = []
    for precision in ("fp32", "bf16-autocast"):
        ours_time, ours_mem = time_training(ours_loss, model.model, precision, repeats)
        theirs_time, theirs_mem = time_training(theirs_loss, theirs, precision, repeats)
        rows.append((size, precision, batch / ours_time, batch / theirs_time, ours_time / theirs_time,
                     ours_mem / 2**30, theirs_mem / 2**30))  # fmt: skip
    return rows


def time_training(loss_fn: Callable[[], torch.Tensor], module: torch.nn.Module, precision: str, repeats: int):
    """(median seconds per AdamW step, peak resident bytes above the start) for `loss_fn`."""
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-6)

    def step() -> None:
        amp = torch.autocast("cpu", dtype=torch.bfloat16) if precision != "fp32" else contextlib.nullcontext()
        with amp:
            loss = loss_fn()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    with PeakRSS() as memory:
        seconds = median_step(step, repeats)
    return seconds, memory.delta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="tiny,full")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    header = ("config", "precision", "ours img/s", "diffusers img/s", "time ratio", "ours GiB", "diffusers GiB")
    print("{:<6} {:<14} {:>10} {:>16} {:>11} {:>9} {:>14}".format(*header))
    for size in args.sizes.split(","):
        for row in bench(size, args.repeats or DEFAULT_REPEATS[size]):
            print("{:<6} {:<14} {:>10.2f} {:>16.2f} {:>11.3f} {:>9.2f} {:>14.2f}".format(*row))


if __name__ == "__main__":
    main()
