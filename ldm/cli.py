"""The one command-line convention of every entry point: a mistake is one stderr line, not a traceback.

- `prog: error: <message>` on one line (`report_error`), for argparse's own errors too (`ArgumentParser`);
- exit 2 for the user's mistakes (arguments, config, files: `ldm.errors.UserError` and what a
  script names as such), 1 for runtime failures (a backend down, a full disk, failed jobs of a
  batch), 130 for Ctrl-C.

Torch-free on purpose: scripts import this before their arguments are checked, so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from tqdm import tqdm

from ldm.errors import UserError

EXIT_FAILURE = 1
EXIT_USAGE = 2  # argparse's own status for a bad command line
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C


class UsageError(UserError):
    """A mistake in the arguments, files or environment found by a script; reported as one line."""


def report_error(prog: str, message: object) -> None:
    """`<prog>: error: <message>` on stderr, whitespace (newlines too) folded to one line, clear of a progress bar."""
    tqdm.write(f"{prog}: error: {' '.join(str(message).split())}", file=sys.stderr)


def run_cli(
    prog: str,
    run: Callable[[], int],
    user_errors: tuple[type[Exception], ...] = (),
    failures: tuple[type[Exception], ...] = (),
    interrupted: str = "interrupted",
) -> int:
    """The exit status of `run()`; a `UserError` (or one of `user_errors`) is reported and gives 2,
    one of `failures` is reported and gives 1, Ctrl-C is reported and gives 130. Anything else is
    a bug and keeps its traceback."""
    try:
        return run()
    except (UserError, *user_errors) as err:
        report_error(prog, err)
        return EXIT_USAGE
    except failures as err:
        report_error(prog, err)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        report_error(prog, interrupted)
        return EXIT_INTERRUPTED


def run_script(
    prog: str,
    main: Callable[[Sequence[str] | None], int | object],
    argv: Sequence[str] | None = None,
    user_errors: tuple[type[Exception], ...] = (ValueError, OSError),
) -> int:
    """`run_cli` for a script whose `main(argv)` raises ValueError/OSError for bad input and returns
    its exit status, or a summary (a dict: success, 0)."""

    def run() -> int:
        result = main(argv)
        return result if isinstance(result, int) else 0

    return run_cli(prog, run, user_errors=user_errors)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the one-line error: `prog: error: <message> (see --help)`, exit 2."""

    def error(self, message: str) -> NoReturn:
        report_error(self.prog, f"{message} (see {self.prog} --help)")
        sys.exit(EXIT_USAGE)


def existing_file(flag: str, path: str | None) -> Path | None:
    """`path` as a Path (None stays None); a UsageError naming `flag` if it is not a file."""
    if path is not None and not Path(path).is_file():
        raise UsageError(f"{flag} {path}: no such file")
    return None if path is None else Path(path)


def model_weights(ckpt: str | None, model_config: dict, config: str | Path) -> Path:
    """The weights to load: `--ckpt`, else the config's `model.params.ckpt_path`. A file, or a diffusers
    pipeline folder (or its unet/); a UsageError naming --ckpt when it is neither or when none is given."""
    path = ckpt or (model_config.get("params") or {}).get("ckpt_path")
    if path is None:
        raise UsageError(f"--ckpt is required: {config} sets no model.params.ckpt_path")
    if Path(path).is_dir():
        return Path(path)
    return existing_file("--ckpt", str(path))


def add_weights_arguments(parser: argparse.ArgumentParser) -> None:
    """--config, --ckpt, --vae-ckpt, --lora and --lora-scale, as edit_cli.py and edit_app.py take them."""
    from ldm.edit_settings import DEFAULT_CONFIG

    add = parser.add_argument
    add("--config", default=str(DEFAULT_CONFIG), help="YAML whose `model` section builds the model")
    add("--ckpt", help="weights (.ckpt, .safetensors, or a diffusers pipeline folder); required unless the config "
        "sets model.params.ckpt_path")  # fmt: skip
    add("--vae-ckpt", help="replace the autoencoder weights from an autoencoder or SD checkpoint")
    add("--lora", action="append", default=[], metavar="FILE",
        help="merge a LoRA adapter (diffusers-layout .safetensors, or a LoRA run's .ckpt); repeatable")
    add("--lora-scale", action="append", type=finite_float, default=[], metavar="S",
        help="adapter strength (0 = off, 1 = as trained): one per --lora in order, or one for all [1]")


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """--device and --precision, as every command that runs a model takes them (`ldm.inference.load_editor`)."""
    from ldm.edit_settings import PRECISIONS

    parser.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="autocast dtype; auto = fp16 on CUDA, else fp32")  # fmt: skip


def lora_files(files: Sequence[str], scales: Sequence[float]) -> list[tuple[Path, float]]:
    """(adapter file, scale) pairs of --lora / --lora-scale: no scale means 1, one scale serves every file."""
    if scales and not files:
        raise UsageError("--lora-scale needs a --lora FILE to scale")
    if len(scales) not in (0, 1, len(files)):
        raise UsageError(f"--lora-scale: give one scale for all or one per --lora ({len(files)}), not {len(scales)}")
    scales = list(scales) * len(files) if len(scales) == 1 else list(scales) or [1.0] * len(files)
    return [(existing_file("--lora", f), s) for f, s in zip(files, scales, strict=True)]


def finite_float(text: str) -> float:
    """An argparse `type` for real numbers: NaN and infinities are refused (they give black images, IoU 1.0, ...)."""
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


finite_float.__name__ = "float"  # argparse names the type in "invalid float value" messages


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse `type` for integers >= `minimum`; a smaller value is a usage error naming it."""

    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = "int"  # argparse names the type in "invalid int value" messages
    return parse
