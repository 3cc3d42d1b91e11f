"""Train an (editing) latent diffusion model with PyTorch Lightning.

    python main.py --base configs/train.yaml --train --gpus 0,1,2,3 --name my_run
    python main.py --base configs/train.yaml --train --resume logs/my_run
    python main.py --base a.yaml b.yaml --train model.base_learning_rate=5e-5

Configs are merged in order, then dotted overrides from the command line. A run lives in
`<logdir>/<name>/` (configs/, checkpoints/, images/, logger files). Re-running with the
same `--name` resumes from its `last.ckpt`. A checkpoint without training-loop state (a
released SD / InstructPix2Pix checkpoint) given to `--resume` initialises the weights and
starts a new run instead of failing.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ldm.cli import ArgumentParser, UsageError, int_at_least, run_cli

# Child processes of multi-device runs re-execute this script; they read the run
# directory and resume decision of rank 0 from these variables.
RUN_DIR_ENV = "SKETCH_P2P_RUN_DIR"
RESUME_ENV = "SKETCH_P2P_RESUME_CKPT"

log = logging.getLogger("main")
# Lightning's precision names (lightning_fabric.connector._PRECISION_INPUT), checked before Lightning loads
PRECISIONS = ("32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true", "32", "16", "bf16", "64")


def get_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="main.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-b", "--base", nargs="*", default=[], metavar="config.yaml", help="configs merged in order")
    p.add_argument("-t", "--train", action="store_true", help="train (otherwise validate once)")
    p.add_argument("-n", "--name", default="", help="run name; the run directory is <logdir>/<name>")
    p.add_argument("-r", "--resume", default="", help="a run directory or a checkpoint to resume from")
    p.add_argument("-s", "--seed", type=int_at_least(0), default=23, help="global seed")
    p.add_argument("-l", "--logdir", default="logs", help="parent directory of run directories")
    p.add_argument("--scale_lr", action="store_true",
                   help="learning rate = base_learning_rate * accumulate * devices * nodes * batch size")
    p.add_argument("--gpus", default=None, help="GPU ids, e.g. 0,1,2,3 (sets --accelerator gpu --devices)")
    p.add_argument("--accelerator", default=None, help="cpu, gpu, mps or auto")
    p.add_argument("--devices", default=None, help="device count or comma-separated ids")
    p.add_argument("--num_nodes", type=int_at_least(1), default=None, help="number of nodes (SLURM or torchrun)")
    p.add_argument("--strategy", default=None, help="ddp (default for several devices), fsdp, or any Lightning name")
    p.add_argument("--precision", default=None, choices=PRECISIONS, help="Lightning precision (default: 32)")
    p.add_argument("--max_steps", type=int_at_least(1), default=None, help="stop after this many optimizer steps")
    p.add_argument("--checkpoint_every", type=int_at_least(1), default=None, help="save a checkpoint every N steps")
    p.add_argument("--logger", choices=["tensorboard", "csv", "wandb"], default=None,
                   help="default: tensorboard when installed, else csv")
    return p


def resolve_run(opt: argparse.Namespace) -> tuple[Path, Path | None, list[str], Path | None]:
    """(run dir, checkpoint to resume, saved configs to merge first, weights to initialise from)."""
    if os.environ.get(RUN_DIR_ENV):
        resume = os.environ.get(RESUME_ENV) or None
        run_dir = Path(os.environ[RUN_DIR_ENV])
        return run_dir, Path(resume) if resume else None, saved_configs(run_dir) if resume else [], None
    if opt.resume:
        target = Path(opt.resume)
        if not target.exists():
            raise UsageError(f"--resume {target} does not exist; give a run directory or a .ckpt file")
        if target.is_dir():
            ckpt = newest_checkpoint(target)
            if ckpt is None:
                raise UsageError(f"--resume {target} has no readable checkpoint in checkpoints/ to resume from")
            return target, ckpt, saved_configs(target), None
        from ldm.checkpoint import has_loop_state

        if not has_loop_state(target):
            log.warning("%s holds weights but no training state: starting a new run initialised from it", target)
            return new_run_dir(opt), None, [], target
        run_dir = target.parent.parent if target.parent.name == "checkpoints" else target.parent
        return run_dir, target, saved_configs(run_dir), None
    run_dir = new_run_dir(opt)
    ckpt = newest_checkpoint(run_dir)
    if ckpt is not None:
        log.warning("resuming %s from %s", run_dir, ckpt)
        return run_dir, ckpt, saved_configs(run_dir), None
    return run_dir, None, [], None


def checkpoint_step(path: Path) -> int:
    """The global step a Lightning checkpoint was saved at (CheckpointMismatchError if it does not read)."""
    from ldm.checkpoint import read_checkpoint

    return int(read_checkpoint(path).get("global_step", -1))


def newest_checkpoint(run_dir: Path) -> Path | None:
    """The readable checkpoint of the run with the highest step: `last.ckpt`, or a `step-*.ckpt` when
    last.ckpt is truncated or older (a kill between the two writes); one line for each one passed over."""
    from ldm.errors import CheckpointMismatchError

    folder = run_dir / "checkpoints"
    steps: dict[Path, int] = {}
    for path in [folder / "last.ckpt", *sorted(folder.glob("step-*.ckpt"), reverse=True)]:  # last.ckpt wins a tie
        if path.is_file():
            try:
                steps[path] = checkpoint_step(path)
            except CheckpointMismatchError as err:
                log.warning("passing over %s: %s", path, err)
    if not steps:
        return None
    best = max(steps, key=steps.get)
    if best.name != "last.ckpt" and (folder / "last.ckpt").is_file():
        log.warning("resuming from %s (step %d), the newest readable checkpoint", best, steps[best])
    return best


def new_run_dir(opt: argparse.Namespace) -> Path:
    if opt.name:
        return Path(opt.logdir) / opt.name
    stem = Path(opt.base[-1]).stem if opt.base else "run"
    return Path(opt.logdir) / f"{datetime.datetime.now():%Y-%m-%dT%H-%M-%S}_{stem}"


def saved_configs(run_dir: Path) -> list[str]:
    """The latest merged config a run saved (merged before the command line's configs)."""
    found = sorted((run_dir / "configs").glob("*-project.yaml"))
    return [str(found[-1])] if found else []


def trainer_kwargs(opt: argparse.Namespace, config: DictConfig) -> dict[str, Any]:
    """Lightning Trainer arguments: `lightning.trainer` from the config, then command-line flags."""
    kwargs: dict[str, Any] = OmegaConf.to_container(config.get("lightning", {}).get("trainer", {}), resolve=True)
    if opt.gpus is not None:
        ids = [int(g) for g in str(opt.gpus).split(",") if g.strip()]
        if not ids:
            raise UsageError(f"--gpus {opt.gpus!r} names no GPU; use e.g. --gpus 0,1")
        kwargs.update(accelerator="gpu", devices=ids)
    if opt.devices is not None:
        devices = str(opt.devices)
        kwargs["devices"] = [int(d) for d in devices.split(",") if d] if "," in devices else (
            int(devices) if devices.isdigit() else devices)
    for name in ("accelerator", "num_nodes", "strategy", "precision", "max_steps"):
        if getattr(opt, name) is not None:
            kwargs[name] = getattr(opt, name)
    if "strategy" not in kwargs and world_size(kwargs) > 1:
        kwargs["strategy"] = "ddp"
    return kwargs


def world_size(kwargs: dict[str, Any]) -> int:
    """Processes the trainer arguments ask for (devices x nodes; 1 for "auto")."""
    devices = kwargs.get("devices", 1)
    n = len(devices) if isinstance(devices, list) else devices if isinstance(devices, int) else 1
    return max(n, 1) * kwargs.get("num_nodes", 1)


def learning_rate(opt: argparse.Namespace, config: DictConfig, trainer_cfg: dict[str, Any]) -> float:
    """`model.base_learning_rate`, times accumulate x devices x nodes x batch size with --scale_lr."""
    lr = float(config.model.get("base_learning_rate", 1.0e-4))
    if opt.scale_lr:
        accumulate = trainer_cfg.get("accumulate_grad_batches", 1)
        factor = accumulate * world_size(trainer_cfg) * config.data.params.batch_size
        log.warning("learning rate %.3g = %d (accumulate x devices x batch) x base %.3g", lr * factor, factor, lr)
        lr *= factor
    return lr


def build_model(config: DictConfig, init_ckpt: Path | None, lr: float) -> Any:
    """The model of `config.model`, initialised from `init_ckpt` if given, training at learning rate `lr`."""
    from ldm.util import instantiate_from_config

    model_cfg = OmegaConf.to_container(config.model, resolve=True)
    model_cfg.pop("base_learning_rate", None)
    params = model_cfg.setdefault("params", {})
    if "learning_rate" in params:
        raise UsageError("model.params.learning_rate: set model.base_learning_rate instead (--scale_lr scales it)")
    if init_ckpt is not None:
        params["ckpt_path"] = str(init_ckpt)
    return instantiate_from_config(model_cfg, "model", learning_rate=lr)


def build_callbacks(config: DictConfig, run_dir: Path, every: int) -> list[Any]:
    import pytorch_lightning as pl

    from ldm.callbacks import PendingLogRow, RNGStateCallback, SignalCheckpoint, StepCheckpoint
    from ldm.util import instantiate_from_config

    ckpt_dir = run_dir / "checkpoints"
    callbacks = [
        StepCheckpoint(
            dirpath=ckpt_dir,
            filename="step-{step:06d}",
            auto_insert_metric_name=False,
            every_n_train_steps=every,
            save_top_k=-1,
            save_last=True,
            # a run directory that was moved or copied must still overwrite its last.ckpt, never add last-v1.ckpt
            enable_version_counter=False,
        ),
        pl.callbacks.LearningRateMonitor(logging_interval="step"),
        RNGStateCallback(),
        PendingLogRow(),
        SignalCheckpoint(ckpt_dir / "last.ckpt"),
    ]
    for name, cfg in (config.get("lightning", {}).get("callbacks") or {}).items():
        callbacks.append(instantiate_from_config(cfg, f"lightning.callbacks.{name}"))
    return callbacks


def check_devices(trainer_cfg: dict[str, Any]) -> None:
    """A GPU run on a machine without one is a one-line mistake, not Lightning's traceback."""
    import torch

    if trainer_cfg.get("accelerator") in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UsageError("--gpus / accelerator gpu: no CUDA GPU is available here; drop the flag to train on the CPU")


def check_logger(choice: str | None) -> None:
    """A --logger whose package is missing is a one-line mistake, not Lightning's ModuleNotFoundError."""
    from importlib.util import find_spec

    needs = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",)}.get(choice or "", ())
    if needs and all(find_spec(package) is None for package in needs):
        raise UsageError(f"--logger {choice}: {' or '.join(needs)} is not installed; "
                         f"pip install {needs[0]}, or use --logger csv")  # fmt: skip


def check_writable(run_dir: Path) -> None:
    """The run folder can be made and written in (a logdir that is a file or read-only fails here); creates nothing."""
    ancestor = run_dir
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"--logdir: cannot make the run folder {run_dir}: {ancestor} is a file, not a folder")
    try:  # a real try (os.access passes root, and says nothing of /proc or a read-only mount)
        os.rmdir(tempfile.mkdtemp(prefix=".write-check-", dir=ancestor))
    except OSError as err:
        raise UsageError(f"--logdir: cannot make the run folder {run_dir} in {ancestor} ({err.strerror})") from err


def check_resume_fits(model: Any, ckpt: Path) -> tuple[int, dict[str, Any] | None]:
    """The global step of the checkpoint to resume and the log row it carries (`ldm.callbacks.PendingLogRow`),
    once it is known to hold this model's tensors with this model's shapes; else one line naming the first
    that does not fit (Lightning would print hundreds)."""
    from ldm.callbacks import PENDING_LOG_ROW
    from ldm.checkpoint import check_fits, read_checkpoint

    checkpoint = read_checkpoint(ckpt)
    not_saved = getattr(model, "not_saved", lambda key: False)  # a LoRA run's frozen base comes from ckpt_path
    check_fits(model, checkpoint.get("state_dict", {}), f"--resume {ckpt}", may_miss=not_saved,
               advice="resume with the config the run was trained with")  # fmt: skip
    return int(checkpoint.get("global_step", -1)), checkpoint.get(PENDING_LOG_ROW)


def build_logger(
    choice: str | None, run_dir: Path, name: str, resume_step: int | None, resume_row: dict[str, Any] | None = None
) -> Any:
    """The run's logger; a CSV or TensorBoard log resumed at `resume_step` keeps the rows of the steps before
    it, and `resume_row`, the row logged just after the checkpoint was saved."""
    from pytorch_lightning import loggers

    from ldm.loggers import ResumableCSVLogger, tensorboard_logger

    if choice is None:
        try:
            import tensorboard  # noqa: F401

            choice = "tensorboard"
        except ImportError:
            choice = "csv"
    if choice == "tensorboard":
        return tensorboard_logger(str(run_dir), resume_step, resume_row)
    if choice == "wandb":
        return loggers.WandbLogger(save_dir=run_dir, name=name, project="sketch-pix2pix")
    return ResumableCSVLogger(save_dir=run_dir, name="", version="csv", resume_step=resume_step, resume_row=resume_row)


def run(opt: argparse.Namespace, overrides: list[str]) -> None:
    from ldm.util import check_params, instantiate_from_config, load_config_files

    check_logger(opt.logger)
    run_dir, resume_ckpt, saved, init_ckpt = resolve_run(opt)
    config = load_config_files(saved + list(opt.base), overrides)
    if not opt.base and not saved:
        raise UsageError("no config given; pass --base configs/<file>.yaml")
    import pytorch_lightning as pl  # after the cheap checks: a mistake is reported in a second, not ten

    from ldm.callbacks import AtomicCheckpointIO
    from ldm.io import write_text_atomic

    pl.seed_everything(opt.seed, workers=True)

    trainer_cfg = trainer_kwargs(opt, config)
    check_params(pl.Trainer, trainer_cfg, "lightning.trainer")
    if "data" not in config:
        raise UsageError("the config has no 'data' section")
    if "model" not in config:
        raise UsageError("the config has no 'model' section")
    if not opt.train and "validation" not in config.data.get("params", {}):
        raise UsageError("nothing to validate: the config sets no data.params.validation; pass --train to train")
    check_devices(trainer_cfg)
    check_writable(run_dir)
    data = instantiate_from_config(config.data, "data")
    model = build_model(config, init_ckpt, learning_rate(opt, config, trainer_cfg))
    resume_step, resume_row = (None, None) if resume_ckpt is None else check_resume_fits(model, resume_ckpt)

    every = opt.checkpoint_every or config.get("lightning", {}).get("checkpoint_every", 5000)
    trainer_cfg.setdefault("max_steps", -1)
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    try:
        trainer = pl.Trainer(
            default_root_dir=str(run_dir),
            logger=build_logger(opt.logger, run_dir, run_dir.name, resume_step, resume_row),
            callbacks=build_callbacks(config, run_dir, every),
            plugins=[AtomicCheckpointIO()],
            use_distributed_sampler=False,  # the data module shards by rank itself (exact resume)
            **trainer_cfg,
        )
    except (ValueError, MisconfigurationException) as err:  # e.g. --strategy fsdp with --accelerator cpu
        message = " ".join(str(err).split())
        raise UsageError(f"the trainer settings (lightning.trainer and the flags): {message}") from err
    os.environ[RUN_DIR_ENV] = str(run_dir)
    os.environ[RESUME_ENV] = str(resume_ckpt or "")
    if trainer.is_global_zero:
        (run_dir / "configs").mkdir(parents=True, exist_ok=True)
        stamp = f"{datetime.datetime.now():%Y-%m-%dT%H-%M-%S}"
        # atomic: a resume merges the newest of these first, so a kill mid-write must not leave half a config
        write_text_atomic(run_dir / "configs" / f"{stamp}-project.yaml", OmegaConf.to_yaml(config))
    if opt.train:
        trainer.fit(model, datamodule=data, ckpt_path=str(resume_ckpt) if resume_ckpt else None)
    else:
        trainer.validate(model, datamodule=data)


# Lightning notices about what this project does on purpose: frozen submodules stay in eval mode,
# manual-optimization checkpoints hold the weights after the step, a config may train without
# validation data, a mid-epoch resume is exact (the data module's state restores the sampler's
# position); and deprecations inside third-party code.
INTENDED = (
    r"Found \d+ module\(s\) in eval mode",
    "Using ModelCheckpoint with manual optimization",
    "You defined a `validation_step` but have no `val_dataloader`",
    "You're resuming from a checkpoint that ended before the epoch ended",
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    "pkg_resources is deprecated",  # `clip`, imported by k-diffusion; setuptools<81 keeps it working
)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    for message in INTENDED:
        warnings.filterwarnings("ignore", message=message)
    opt, overrides = get_parser().parse_known_args(argv)

    def train_or_validate() -> int:
        run(opt, overrides)
        return 0

    # config, checkpoint and file mistakes: one line, exit 2 (ldm.cli)
    return run_cli("main.py", train_or_validate, user_errors=(FileNotFoundError,))


if __name__ == "__main__":
    sys.exit(main())
