"""Build a text-instructed sketch-colorization dataset from OpenMoji.

    python -m dataset_creation.openmoji --out data/openmoji --size 64

A mistake in the options or the output folder is one `openmoji: error: ...` line on stderr and exit
status 2 (`ldm.cli`); a write that fails (a full disk) is one line and exit 1. Ctrl-C or a failure
stops a build that the same command resumes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dataset_creation.openmoji.build import MIN_SIZE, build
from dataset_creation.openmoji.plan import KINDS
from dataset_creation.openmoji.source import openmoji_svg_dir
from ldm.cli import ArgumentParser, UsageError, int_at_least, run_cli

PROG = "openmoji"


class BuildFailed(Exception):
    """A write into --out failed (a full disk, a folder that went away); the finished pairs are kept."""


def _kinds(text: str) -> tuple[str, ...]:
    """An argparse `type`: 'original, edit' -> ('original', 'edit'); an empty or unknown kind is a usage error."""
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        found = f"unknown kind {', '.join(unknown)}" if unknown else "no kind"
        raise argparse.ArgumentTypeError(f"{found} in {text!r}; choose from {','.join(KINDS)}")
    return kinds


def parse_args(argv: Iterable[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--out", required=True, help="output folder (resumable: done pairs are kept)")
    add("--size", type=int_at_least(MIN_SIZE), default=64, help="image size in pixels (64: CPU demo; 256: GPU configs)")
    add("--kinds", type=_kinds, default=KINDS, help=f"comma-separated subset of {','.join(KINDS)}")
    add("--recolor-variants", type=int_at_least(0), default=2, help="recolor and edit pairs per emoji")
    add("--limit", type=int_at_least(0), default=None, help="only the first N emojis in code-point order")
    add("--workers", type=int, default=2, help="processes (1: no multiprocessing)")
    add("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(list(argv) if argv is not None else None)


def _writable_folder(out: str) -> Path:
    """The --out folder, created if missing; UsageError if it cannot be created or written in."""
    path = Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise UsageError(f"--out {out}: cannot create or write in this folder ({err.strerror or err})") from err
    return path


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Check the output folder and the source, build, print one summary line on stderr; returns the summary."""
    out = _writable_folder(args.out)
    try:
        svg_dir = openmoji_svg_dir()
    except ImportError as err:
        raise UsageError(err) from err
    try:
        summary = build(
            out,
            size=args.size,
            kinds=args.kinds,
            variants=args.recolor_variants,
            limit=args.limit,
            workers=args.workers,
            progress=not args.no_progress,
            svg_dir=svg_dir,
        )
    except OSError as err:
        raise BuildFailed(  # err.filename would name a temporary file, removed by now
            f"--out {args.out}: {err.strerror or err}; the finished pairs are kept: "
            "free space (or fix the folder) and run the same command again to go on"
        ) from err
    per_kind = ", ".join(f"{k} {sum(v.values())}" for k, v in summary["counts"].items())
    print(
        f"{args.out}: {sum(s['pairs'] for s in summary['splits'].values())} pairs ({per_kind}); "
        f"{summary['pairs_written']} written in {summary['seconds']} s",
        file=sys.stderr,
    )
    return summary


def main(argv: Iterable[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = parse_args(argv)

    def build_from_args() -> int:
        run(args)
        return 0

    interrupted = "interrupted (the same command resumes the build)"
    return run_cli(PROG, build_from_args, failures=(BuildFailed,), interrupted=interrupted)
