"""Error reporting shared by the command-line scripts: a user's mistake is one stderr line, not a traceback.

Torch-free on purpose: scripts import this before their arguments are checked, so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from tqdm import tqdm

EXIT_USAGE = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C


class UsageError(Exception):
    """A mistake in the arguments, files or environment; reported as one line, no traceback."""


def report_error(prog: str, message: object) -> None:
    """`<prog>: error: <message>` on stderr, whitespace (newlines too) folded to one line, clear of a progress bar."""
    tqdm.write(f"{prog}: error: {' '.join(str(message).split())}", file=sys.stderr)


def run_cli(
    prog: str,
    run: Callable[[], int],
    errors: tuple[type[Exception], ...] = (UsageError,),
    interrupted: str = "interrupted",
) -> int:
    """The exit status of `run()`; one of `errors` is reported and gives 1, Ctrl-C is reported and gives 130."""
    try:
        return run()
    except errors as err:
        report_error(prog, err)
        return EXIT_USAGE
    except KeyboardInterrupt:
        report_error(prog, interrupted)
        return EXIT_INTERRUPTED


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse `type` for integers >= `minimum`; a smaller value is a usage error naming it."""

    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = "int"  # argparse names the type in "invalid int value" messages
    return parse
