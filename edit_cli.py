"""Edit images from a text instruction with an InstructPix2Pix-style editing model.

    python edit_cli.py --input sketch.png --output out.png --edit "color it red" --ckpt model.ckpt
    python edit_cli.py --input sketches/ --output colored/ --edit "color it red" --ckpt model.ckpt
    python edit_cli.py --input jobs.jsonl --ckpt model.ckpt    # lines {"input": ..., "edit": ..., "output": ...}

As the original InstructPix2Pix `edit_cli.py`: the input is resized to the model's grid,
encoded once (VAE posterior mode, unscaled) with the instruction, sampled with a k-diffusion
sampler through the three-way classifier-free-guidance denoiser, and decoded. An empty
`--edit` writes the resized input.

Mistakes in arguments, config or files print one line `edit_cli.py: error: ...` and exit with 2
(`ldm.cli`). In a batch, every bad job is reported and skipped, the others are written, and
the exit status is 1 at the end; running out of memory also exits with 1. torch and the model
code are imported only once the arguments and the first input check out, so those errors are
immediate. Results are written atomically (see `ldm.image_io.save_image_atomic`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from ldm.cli import (
    ArgumentParser,
    UsageError,
    add_device_arguments,
    add_weights_arguments,
    existing_file,
    finite_float,
    int_at_least,
    lora_files,
    model_weights,
    report_error,
    run_cli,
)
from ldm.edit_settings import SAMPLERS, SamplingOptions, read_model_config
from ldm.image_io import (
    ImageInputError,
    fit_to_stride,
    image_extensions,
    keep_lines,
    load_image,
    output_format,
    save_image_atomic,
)

if TYPE_CHECKING:
    from ldm.inference import ImageEditor

# `clip` (imported by k-diffusion) warns about pkg_resources on import; not the user's concern.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)

PROG = "edit_cli.py"
JOB_KEYS = ("input", "edit", "output")
# optional per-job overrides of --cfg-text / --cfg-image (a guidance sweep or a baseline in one model load)
JOB_GUIDANCE_KEYS = ("cfg_text", "cfg_image")


@dataclass
class Job:
    """One input image, its instruction, and one output path per sample."""

    input: Path
    edit: str
    outputs: list[Path]
    guidance: dict[str, float] = field(default_factory=dict)  # SamplingOptions fields set by this job


# ---- arguments ----------------------------------------------------------------------------------
def _seed(text: str) -> int:
    value = int(text)
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**63), got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Edit images from a text instruction (InstructPix2Pix).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--input", required=True, help='an image, a folder of images, or a .jsonl of {"input", "edit", "output"} jobs')
    add("--output", help="a file for one image; a folder for a folder (or the base of relative JSONL outputs)")
    add("--edit", help='the instruction (JSONL jobs may carry their own); "" writes the resized input')
    add_weights_arguments(parser)
    add("--steps", type=int_at_least(1), help="sampling steps [100, or the config's edit_defaults]")
    add("--resolution", type=int_at_least(1), help="longer side of the edited image in pixels [512, or the config's]")
    add("--cfg-text", type=finite_float,
        help="text guidance scale: higher follows the instruction [7.5, or the config's]")
    add("--cfg-image", type=finite_float,
        help="image guidance scale: higher stays closer to the input [1.5, or the config's]")
    add("--seed", type=_seed, help="random seed (sample i of each input uses seed + i); random and printed if absent")
    add("--sampler", choices=list(SAMPLERS), help="k-diffusion sampler [euler_a, or the config's]")
    add("--karras", action="store_true", help="Karras et al. (2022) noise levels instead of evenly spaced timesteps")
    add("--keep-lines", action="store_true",
        help="lay the input's line art over each result (multiply), so the lines come out exactly as drawn")
    add("--num-samples", type=int_at_least(1), default=1, help="edits per input: out.png -> out_0.png, out_1.png, ...")
    add_device_arguments(parser)
    add("--max-pixels", type=int_at_least(1), default=40_000_000, help="refuse inputs with more pixels")
    return parser


# ---- jobs ---------------------------------------------------------------------------------------
def sample_paths(output: Path, num_samples: int) -> list[Path]:
    """`out.png` for one sample, else `out_0.png`, `out_1.png`, ..."""
    if num_samples == 1:
        return [output]
    return [output.with_name(f"{output.stem}_{i}{output.suffix}") for i in range(num_samples)]


def output_problem(path: Path) -> str | None:
    """Why `path` cannot be written (unknown format, a folder, an ancestor that is a file, no permission)."""
    try:
        output_format(path)
    except ValueError as err:
        return str(err)
    if path.is_dir():
        return f"cannot write {path}: it is a folder"
    ancestor = path.parent
    while not ancestor.exists():  # the first existing ancestor must be a writable folder
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"cannot write {path}: {ancestor} is a file, not a folder"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"cannot write {path}: no permission to write in {ancestor}"
    return None


def _require_edit(args: argparse.Namespace) -> str:
    if args.edit is None:
        raise UsageError('--edit is required (the instruction; "" writes the resized input)')
    return args.edit


def _folder_jobs(args: argparse.Namespace, source: Path) -> list[Job]:
    if args.output is None:
        raise UsageError("--output is required: the folder to write the edited images to")
    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--output {out_dir}: a folder input needs an output folder, and this is a file")
    if out_dir.resolve() == source.resolve():
        raise UsageError(f"--output {out_dir}: must differ from the input folder (the inputs would be overwritten)")
    edit = _require_edit(args)
    extensions = image_extensions()
    files = sorted(
        p for p in source.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in extensions
    )
    if not files:
        raise UsageError(f"--input {source}: the folder holds no images")
    return [Job(f, edit, sample_paths(out_dir / f.name, args.num_samples)) for f in files]


def _jsonl_jobs(args: argparse.Namespace, source: Path) -> tuple[list[Job], list[str]]:
    """Jobs of a JSONL file: paths relative to its folder (outputs: to --output if given)."""
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"--input {source}: cannot read the job list ({err})") from err
    out_base = Path(args.output) if args.output is not None else source.parent
    jobs, problems = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{source}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            problems.append(f"{where}: not a JSON object ({err.msg})")
            continue
        if not isinstance(record, dict):
            problems.append(f"{where}: not a JSON object")
            continue
        record.setdefault("edit", args.edit)
        unknown = sorted(set(record) - set(JOB_KEYS) - set(JOB_GUIDANCE_KEYS))
        bad = [key for key in JOB_KEYS if not isinstance(record.get(key), str)]
        guidance = {key: record[key] for key in JOB_GUIDANCE_KEYS if key in record}
        not_number = [
            k for k, v in guidance.items()
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v)
        ]  # fmt: skip
        if unknown or bad or not_number:
            if unknown:
                detail = f"unknown key {unknown[0]!r}"
            elif bad:
                detail = f"{bad[0]!r} missing or not a string"
            else:
                detail = f"{not_number[0]!r} is not a finite number"
            problems.append(
                f"{where}: {detail} (a job has {', '.join(JOB_KEYS)}, optionally {', '.join(JOB_GUIDANCE_KEYS)}; "
                "edit may come from --edit)"
            )
            continue
        output = out_base / record["output"]
        outputs = sample_paths(output, args.num_samples)
        guidance = {key: float(value) for key, value in guidance.items()}
        jobs.append(Job(source.parent / record["input"], record["edit"], outputs, guidance))
    if not jobs and not problems:
        raise UsageError(f"--input {source}: no jobs in the file")
    return jobs, problems


def plan_jobs(args: argparse.Namespace) -> tuple[list[Job], list[str]]:
    """The jobs to run and the problems found in a batch (bad JSONL lines, unwritable outputs).

    A single input raises UsageError for any problem instead.
    """
    source = Path(args.input)
    if not source.exists():
        raise UsageError(f"--input {source}: no such file or folder")
    problems: list[str] = []
    if source.is_dir():
        jobs = _folder_jobs(args, source)
    elif source.suffix.lower() == ".jsonl":
        jobs, problems = _jsonl_jobs(args, source)
    else:
        if args.output is None:
            raise UsageError("--output is required: the file to write the edited image to")
        output = Path(args.output)
        if output.is_dir():
            raise UsageError(f"--output {output} is a folder; give a file name such as {output / source.name}")
        jobs = [Job(source, _require_edit(args), sample_paths(output, args.num_samples))]
    batch = source.is_dir() or source.suffix.lower() == ".jsonl"
    inputs = {job.input.resolve() for job in jobs}  # a run never overwrites what it reads
    planned, claimed = [], set()
    for job in jobs:
        problem = next(filter(None, map(output_problem, job.outputs)), None)
        taken = [str(p) for p in job.outputs if p.resolve() in claimed]
        overwrites = [str(p) for p in job.outputs if p.resolve() in inputs]
        if overwrites and problem is None:
            problem = f"{overwrites[0]} is an input of this run; write the edit to another file"
        if taken and problem is None:
            problem = f"{taken[0]} is also the output of an earlier job"
        if problem is not None:
            if not batch:
                raise UsageError(problem)
            problems.append(problem)
            continue
        claimed.update(p.resolve() for p in job.outputs)
        planned.append(job)
    return planned, problems


# ---- running ------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    """Plan, check, then edit job by job; 0 if every job was written, else 1."""
    jobs, problems = plan_jobs(args)
    model_config, defaults = read_model_config(args.config)  # a ConfigError exits 2
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    ckpt = model_weights(args.ckpt, model_config, args.config)
    existing_file("--vae-ckpt", args.vae_ckpt)
    loras = lora_files(args.lora, args.lora_scale)
    for problem in problems:
        report_error(PROG, problem)

    seed = args.seed if args.seed is not None else random.randrange(2**31)
    print(f"seed: {seed}", flush=True)
    options = SamplingOptions(args.steps, args.sampler, args.karras, args.cfg_text, args.cfg_image)
    seeds = [seed + i for i in range(args.num_samples)]
    editor: ImageEditor | None = None  # loaded for the first readable input
    failures = len(problems)
    total_steps = len(jobs) * args.num_samples * args.steps
    with tqdm(total=total_steps, unit="step", disable=None, dynamic_ncols=True) as bar:
        for number, job in enumerate(jobs, start=1):
            bar.set_description(f"image {number}/{len(jobs)}")
            try:
                image = load_image(job.input, args.max_pixels)
            except ImageInputError as err:
                report_error(PROG, err)
                failures += 1
                bar.update(args.num_samples * args.steps)
                continue
            if editor is None:
                from ldm.inference import load_editor  # torch: only once the arguments and an input check out

                editor = load_editor(model_config, ckpt, args.vae_ckpt, args.device, args.precision, loras)
            image = fit_to_stride(image, args.resolution, editor.stride)
            if job.edit == "":
                results = [image] * args.num_samples
                bar.update(args.num_samples * args.steps)
            else:
                job_options = replace(options, **job.guidance)
                results = editor.edit(image, job.edit, seeds, job_options, callback=lambda _: bar.update())
                if args.keep_lines:
                    results = [keep_lines(result, image) for result in results]
            for path, result in zip(job.outputs, results, strict=True):
                try:
                    save_image_atomic(result, path)
                except OSError as err:
                    report_error(PROG, f"cannot write {path}: {err}")
                    failures += 1
                else:
                    tqdm.write(f"wrote {path}", file=sys.stdout)
    return 1 if failures else 0


def run_out_of_memory_as_memory_error(args: argparse.Namespace) -> int:
    """`run`, with torch's CPU out-of-memory error (a RuntimeError, unlike CUDA's) raised as MemoryError."""
    try:
        return run(args)
    except RuntimeError as err:
        if "can't allocate memory" not in str(err):  # DefaultCPUAllocator's message (c10/core/impl/alloc_cpu.cpp)
            raise
        size = re.search(r"allocate (\d+) bytes", str(err))
        wanted = f" (asked for {int(size[1]) / 2**30:.1f} GiB more)" if size else ""
        raise MemoryError(
            f"out of memory on the CPU{wanted}; lower --resolution or --num-samples, or edit on a GPU"
        ) from err


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    return run_cli(PROG, lambda: run_out_of_memory_as_memory_error(args), failures=(MemoryError,))


if __name__ == "__main__":
    sys.exit(main())
