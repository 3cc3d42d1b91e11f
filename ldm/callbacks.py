"""Lightning callbacks and plugins used by main.py: image grids, pre-emption checkpoints,
RNG state and the next log row in checkpoints (exact resume), and atomic checkpoint writes."""

from __future__ import annotations

import logging
import random
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from PIL import Image
from torchvision.utils import make_grid

from ldm.image_io import save_image_atomic
from ldm.io import atomic_writer, remove_stale_temp_files

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint with `ldm.io.atomic_writer` (temporary file, fsync, rename).

    A run killed mid-save (SIGKILL, node failure) leaves the previous checkpoint intact and no
    truncated file under the final name, only a temporary `.<name>.<pid>.<hex>.tmp`: the first
    save into a folder removes those of processes that are gone (`ldm.io.remove_stale_temp_files`).
    Lightning calls this on global rank 0 only.
    """

    def __init__(self) -> None:
        super().__init__()
        self._swept: set[Path] = set()  # folders already cleared of stale temporary files

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options (got {storage_options!r})")
        path = Path(path)
        if path.parent not in self._swept:
            for stale in remove_stale_temp_files(path.parent):
                log.warning("removed %s, left by an interrupted checkpoint save", stale)
            self._swept.add(path.parent)
        with atomic_writer(path) as f:
            torch.save(checkpoint, f)


class StepCheckpoint(pl.callbacks.ModelCheckpoint):
    """ModelCheckpoint that also saves the run's last step when `max_steps` is not a multiple of
    `every_n_train_steps`: `step-<max_steps>.ckpt` and `last.ckpt`.

    Lightning's own `on_train_end` writes `last.ckpt` only when the run saved none before, so a run of
    700 steps saving every 250 ended with `last.ckpt` at step 500: the last 200 steps were trained and
    thrown away, and rerunning the command resumed at 500 to lose them again. Uses ModelCheckpoint's
    private save methods, the ones its step trigger calls.
    """

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step > 0 and not self._should_skip_saving_checkpoint(trainer):
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)
        super().on_train_end(trainer, pl_module)


class RNGStateCallback(pl.Callback):
    """Stores the Python, NumPy and torch (CPU and CUDA) RNG states in every checkpoint and
    restores them on resume, so noise, timesteps and dropout after a resume are those an
    uninterrupted run would have drawn."""

    def state_dict(self) -> dict[str, Any]:
        # Only tensors and plain Python values, so checkpoints load with torch.load(weights_only=True).
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        numpy_state = {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}  # fmt: skip
        state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        random.setstate(state_dict["python"])
        n = state_dict["numpy"]
        keys = n["keys"].numpy().astype(np.uint32)
        np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
        torch.set_rng_state(state_dict["torch"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])


PENDING_LOG_ROW = "pending_log_row"  # checkpoint key: {"step": int, "metrics": {name: float}}


class PendingLogRow(pl.Callback):
    """Flushes the loggers before each checkpoint is written, and puts in it the metrics row that Lightning
    logs right after saving it.

    ModelCheckpoint saves in `on_train_batch_end`, and only then does Lightning log that batch's
    metrics (the row of step N-1 for the checkpoint of global step N) and flush the CSV log, which
    until then holds LearningRateMonitor's row of that step in memory. A run killed between the save
    and the flush lost both rows for good, since its resume starts at step N. Now the first is on disk
    before the checkpoint and a resumed `ldm.loggers.ResumableCSVLogger` writes the second from the
    checkpoint. Reads Lightning's private logger connector: the public `callback_metrics` mixes in
    metrics that are not logged.
    """

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        from lightning_fabric.utilities.apply_func import convert_tensors_to_scalars

        for logger in trainer.loggers:
            logger.save()
        connector = trainer._logger_connector
        if trainer.state.fn != "fit" or not (connector.should_update_logs or trainer.fast_dev_run):
            return
        metrics = convert_tensors_to_scalars(connector.metrics["log"])
        if not metrics:
            return
        step = metrics.pop("step", None)  # as LoggerConnector.log_metrics: a logged "step", else the batches stepped
        if step is None:
            metrics.setdefault("epoch", trainer.current_epoch)
            step = trainer.fit_loop.epoch_loop._batches_that_stepped
        checkpoint[PENDING_LOG_ROW] = {"step": int(step), "metrics": metrics}


class SignalCheckpoint(pl.Callback):
    """On SIGUSR1 (sent by clusters before pre-emption) save `last.ckpt` after the current step and go on.

    The signal may reach any one rank; the flag is OR-reduced across ranks each step so
    every rank takes part in the save (rank 0 writes).
    """

    def __init__(self, ckpt_path: str | Path) -> None:
        self.ckpt_path = Path(ckpt_path)
        self._requested = False

    def _request(self, signum: int, frame: Any) -> None:
        self._requested = True

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if hasattr(signal, "SIGUSR1"):
            previous = signal.getsignal(signal.SIGUSR1)

            def handler(signum: int, frame: Any) -> None:
                self._request(signum, frame)
                if callable(previous):
                    previous(signum, frame)

            signal.signal(signal.SIGUSR1, handler)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if trainer.strategy.reduce_boolean_decision(self._requested, all=False):
            self._requested = False
            if trainer.is_global_zero:
                log.warning("SIGUSR1: saving %s at step %d", self.ckpt_path, trainer.global_step)
            trainer.save_checkpoint(self.ckpt_path)


def to_uint8_grid(columns: list[torch.Tensor]) -> np.ndarray:
    """Images (N, 3, H, W) in [-1, 1] per column -> one (N*H, C*W, 3) uint8 grid, one row per item."""
    n = columns[0].shape[0]
    tiles = torch.stack(columns, dim=1).reshape(n * len(columns), *columns[0].shape[1:])  # row-major
    grid = make_grid(tiles.float().cpu().clamp(-1, 1), nrow=len(columns), padding=2, pad_value=1.0)
    return ((grid + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()


class ImageLogger(pl.Callback):
    """Every `batch_frequency` optimizer steps, rank 0 writes a PNG grid of
    `pl_module.log_images(batch)` (columns input | target | sample, one row per item) to
    `<default_root_dir>/images/train/step-XXXXXX.png`, and to the logger when it accepts images.
    `log_images_kwargs` go to `log_images` (e.g. `steps`, `text_cfg_scale` for the editing model)."""

    def __init__(
        self,
        batch_frequency: int = 2000,
        max_images: int = 4,
        log_first_step: bool = False,
        log_images_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if batch_frequency < 1:
            raise ValueError(f"batch_frequency must be >= 1, got {batch_frequency}")
        self.batch_frequency = batch_frequency
        self.max_images = max_images
        self.log_first_step = log_first_step
        self.log_images_kwargs = dict(log_images_kwargs or {})
        self._last_logged = -1

    def _due(self, step: int) -> bool:
        if step == self._last_logged:
            return False
        return step % self.batch_frequency == 0 and (step > 0 or self.log_first_step)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if not trainer.is_global_zero or not self._due(step) or not hasattr(pl_module, "log_images"):
            return
        self._last_logged = step
        was_training = pl_module.training
        pl_module.eval()
        with torch.random.fork_rng(devices=[]):
            images = pl_module.log_images(batch, n=self.max_images, **self.log_images_kwargs)
        pl_module.train(was_training)
        grid = to_uint8_grid(list(images.values()))
        path = Path(trainer.default_root_dir) / "images" / "train" / f"step-{step:06d}.png"
        save_image_atomic(Image.fromarray(grid), path)
        experiment = getattr(trainer.logger, "experiment", None)
        if hasattr(experiment, "add_image"):
            experiment.add_image("train/" + "|".join(images), grid, step, dataformats="HWC")
