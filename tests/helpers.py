"""Shared test fixtures: a tiny edit dataset on disk, a tiny editing model, running main.py, and a
weights-dump callback."""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from PIL import Image, ImageDraw

from ldm.util import instantiate_from_config

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "configs" / "tests" / "tiny_edit.yaml"
COLORS = {"red": (220, 40, 40), "blue": (40, 60, 220), "green": (40, 180, 60), "yellow": (240, 220, 40)}


def make_edit_dataset(root: Path, n: int = 40, size: int = 32) -> Path:
    """Original folder layout: seeds.json, <prompt>/prompt.json and {seed}_0.jpg (outline) / {seed}_1.jpg (filled)."""
    rng = random.Random(0)
    root.mkdir(parents=True, exist_ok=True)
    seeds = []
    for i in range(n):
        name = f"{i:04d}"
        folder = root / name
        folder.mkdir(exist_ok=True)
        color = rng.choice(sorted(COLORS))
        (folder / "prompt.json").write_text(json.dumps({"edit": f"color it {color}"}))
        x0, y0 = rng.randint(2, size // 3), rng.randint(2, size // 3)
        box = (x0, y0, x0 + size // 2, y0 + size // 2)
        sketch = Image.new("RGB", (size, size), "white")
        ImageDraw.Draw(sketch).ellipse(box, outline="black", width=2)
        colored = sketch.copy()
        ImageDraw.Draw(colored).ellipse(box, fill=COLORS[color], outline="black", width=2)
        seed = 100 + i
        sketch.save(folder / f"{seed}_0.jpg")
        colored.save(folder / f"{seed}_1.jpg")
        seeds.append([name, [seed]])
    (root / "seeds.json").write_text(json.dumps(seeds))
    return root


def main_env() -> dict[str, str]:
    """The environment main.py runs in: the test directory importable (for test callbacks), no run of a parent."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), str(ROOT), env.get("PYTHONPATH", "")])
    env.pop("SKETCH_P2P_RUN_DIR", None)
    env.pop("SKETCH_P2P_RESUME_CKPT", None)
    return env


def run_main(args: list[str], cwd: Path, timeout: float = 600, **popen) -> subprocess.CompletedProcess:
    """Run main.py in a subprocess (`main_env`)."""
    cmd = [sys.executable, str(ROOT / "main.py"), *args]
    return subprocess.run(cmd, cwd=cwd, env=main_env(), capture_output=True, text=True, timeout=timeout, **popen)


def kill_main_when(args: list[str], cwd: Path, checkpoint: Path, timeout: float = 300) -> None:
    """Start main.py with `args` and SIGKILL it, with every process it started (DDP ranks), once `checkpoint` exists."""
    cmd = [sys.executable, str(ROOT / "main.py"), *args]
    proc = subprocess.Popen(cmd, cwd=cwd, env=main_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # fmt: skip
    deadline = time.time() + timeout
    while not checkpoint.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline, f"no {checkpoint} after {timeout} s"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()


class DumpWeights(pl.Callback):
    """At the end of training each rank saves its model state dict to <out_dir>/rank<r>.pt, and the world
    size it trained in to <out_dir>/rank<r>.world."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        torch.save(state, self.out_dir / f"rank{trainer.global_rank}.pt")
        (self.out_dir / f"rank{trainer.global_rank}.world").write_text(str(trainer.world_size))


class DumpBatches(pl.Callback):
    """Each rank appends one JSON line per training batch to <out_dir>/rank<r>.jsonl: the step it starts and a
    sha256 of each sample's target image (a sample's identity: its pixels after augmentation)."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        record = {"step": trainer.global_step + 1, "samples": [sample_hash(x) for x in batch["edited"]]}
        with open(self.out_dir / f"rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")


def sample_hash(image: torch.Tensor) -> str:
    return hashlib.sha256(image.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def tiny_model_config(**params) -> dict:
    """The `model` section of the tiny test config (EMA off unless asked), as a plain dict."""
    config = OmegaConf.to_container(OmegaConf.load(TINY_CONFIG).model, resolve=True)
    config.pop("base_learning_rate")
    config["params"].update({"use_ema": False, **params})
    return config


@torch.no_grad()
def tiny_model(seed: int = 0, scale: float = 0.1, **params):
    """Tiny editing model whose zero-initialised UNet layers (output conv, transformer proj_out) get
    N(0, scale^2 / fan_in) weights, so the UNet predicts non-zero noise of about `scale` size."""
    torch.manual_seed(seed)
    model = instantiate_from_config(tiny_model_config(**params), "model")
    generator = torch.Generator().manual_seed(seed)
    for p in model.model.parameters():
        if not p.any():
            p.copy_(scale * torch.randn(p.shape, generator=generator) / math.sqrt(max(1, p[0].numel())))
    return model.eval()


SD_EULER = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}  # SD1's training schedule


def pinned_euler(sigmas: torch.Tensor, timesteps: torch.Tensor):
    """A diffusers EulerDiscreteScheduler that samples on exactly our `sigmas` (steps + 1,) and hands the
    UNet our `timesteps` (steps,): the pipeline calls `set_timesteps(steps)` itself, hence a subclass
    (tests/test_edit_cli.py's parity test explains why the defaults differ)."""
    from diffusers import EulerDiscreteScheduler

    class PinnedEuler(EulerDiscreteScheduler):
        def set_timesteps(self, num_inference_steps=None, device=None, **kwargs) -> None:
            assert num_inference_steps == len(timesteps)
            super().set_timesteps(sigmas=sigmas.tolist(), device=device)
            self.timesteps = timesteps.clone()

    return PinnedEuler(**SD_EULER)
