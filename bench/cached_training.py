"""Training throughput with the latent cache against online encoding, in one process (CPU or GPU).

Both columns run the code main.py trains with: `LatentDiffusion.shared_step` (posterior sample,
conditioning dropout, noise, UNet, loss), backward, AdamW step and the EMA update, on one batch.
"online" gets images and instructions and runs the frozen autoencoder on both images and the text
encoder every step; "cached" gets the same batch as `CachedEditDataset` yields it (posterior mean
and std of the target, the input's mode, the token embeddings; stored fp16, used as fp32).
Weights are random (throughput does not depend on them); data loading is left out of both.

Rows: `demo` (configs/openmoji/train.yaml: 64 px, batch 8, MiniLM text encoder) and `sd15`
(configs/sketch2pokemon/train_from_sd15.yaml: SD1.5 UNet with 8 input channels, SD VAE,
CLIP ViT-L/14 text tower, 256 px, batch 2). Each cell is a warm-up step, then the median of
`--repeats` steps; ratio = cached img/s / online img/s.

Usage: python bench/cached_training.py [--sizes demo,sd15] [--repeats N] [--threads N] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import OmegaConf

from ldm.data.latent_cache import CACHE_KEY
from ldm.util import instantiate_from_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "demo": (ROOT / "configs" / "openmoji" / "train.yaml", 8, 64),  # config, batch, image side
    "sd15": (ROOT / "configs" / "sketch2pokemon" / "train_from_sd15.yaml", 2, 256),
}
DEFAULT_REPEATS = {"demo": 20, "sd15": 2}


def build_model(path: Path, device: torch.device, **params: object) -> torch.nn.Module:
    """The config's model with random weights (`params` override its model.params), in train mode."""
    cfg = OmegaConf.to_container(OmegaConf.load(path).model, resolve=True)
    cfg.pop("base_learning_rate", None)
    cfg["params"].update(params)
    cfg["params"].pop("ckpt_path", None)
    cfg["params"]["first_stage_config"]["params"].pop("ckpt_path", None)
    torch.manual_seed(0)
    model = instantiate_from_config(cfg, "model").to(device)
    with torch.no_grad():
        for p in model.model.parameters():
            if not p.any():
                p.normal_(0.0, 0.02)  # zero-initialised output layers would skip no work, but keep grads honest
    return model.train()


def batches(model: torch.nn.Module, batch: int, side: int, device: torch.device) -> tuple[dict, dict]:
    """(online batch of images and instructions, the same batch as the cache stores it)."""
    g = torch.Generator().manual_seed(0)
    edited = torch.rand(batch, 3, side, side, generator=g) * 2 - 1
    inputs = torch.rand(batch, 3, side, side, generator=g) * 2 - 1
    texts = ["turn the red parts blue with yellow details"] * batch
    online = {"edited": edited.to(device), "edit": {"c_concat": inputs.to(device), "c_crossattn": texts}}
    with torch.no_grad():
        posterior = model.encode_first_stage(online["edited"])
        cached = {
            CACHE_KEY: {
                "target_mean": posterior.mean.half().float(),
                "target_std": posterior.std.half().float(),
                "c_concat": model.encode_first_stage(online["edit"]["c_concat"]).mode().half().float(),
                "c_crossattn": model.get_learned_conditioning(texts).half().float(),
            }
        }
    return online, cached


def seconds_of(step: Callable[[], None], device: torch.device) -> float:
    """Wall seconds of one call of `step` (CUDA work included)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def median_seconds(step: Callable[[], None], repeats: int, device: torch.device) -> float:
    step()  # warm-up
    return statistics.median(seconds_of(step, device) for _ in range(repeats))


def training_step(model: torch.nn.Module, data: dict, optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    """One step as main.py trains: the loss under the model's SDPA setting, backward, optimizer, EMA."""

    def run() -> None:
        with model.throughput.attention():
            loss = model.shared_step(data)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if model.use_ema:
            model.model_ema(model.model)

    return run


def bench(size: str, repeats: int, device: torch.device) -> tuple:
    path, batch, side = CONFIGS[size]
    model = build_model(path, device)
    online, cached = batches(model, batch, side, device)
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-6)
    online_s = median_seconds(training_step(model, online, optimizer), repeats, device)
    cached_s = median_seconds(training_step(model, cached, optimizer), repeats, device)
    return size, batch, side, batch / online_s, batch / cached_s, online_s / cached_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="demo,sd15")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads [torch's default]")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads")
    header = ("config", "batch", "px", "online img/s", "cached img/s", "cached/online")
    print("{:<6} {:>5} {:>4} {:>13} {:>13} {:>14}".format(*header))
    for size in args.sizes.split(","):
        row = bench(size, args.repeats or DEFAULT_REPEATS[size], device)
        print("{:<6} {:>5} {:>4} {:>13.2f} {:>13.2f} {:>13.2f}x".format(*row), flush=True)


if __name__ == "__main__":
    main()
