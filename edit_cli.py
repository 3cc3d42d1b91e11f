"""Edit images from a text instruction with an InstructPix2Pix-style editing model.

    python edit_cli.py --input sketch.png --output out.png --edit "color it red" --ckpt model.ckpt
    python edit_cli.py --input sketches/ --output colored/ --edit "color it red" --ckpt model.ckpt
    python edit_cli.py --input jobs.jsonl --ckpt model.ckpt    # lines {"input": ..., "edit": ..., "output": ...}

As the original InstructPix2Pix `edit_cli.py`: the input is resized to the model's grid,
encoded once (VAE posterior mode, unscaled) with the instruction, sampled with a k-diffusion
sampler through the three-way classifier-free-guidance denoiser, and decoded. An empty
`--edit` writes the resized input.

Mistakes in arguments or files print one line `edit_cli.py: error: ...` and exit with 1
(argument syntax errors: argparse's usage line and 2). In a batch, every bad job is reported
and skipped, the others are written, and the exit status is 1 at the end. torch and the model
code are imported only once the arguments and the first input check out, so those errors are
immediate. Results are written atomically (see `ldm.image_io.save_image_atomic`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import random
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image
from tqdm import tqdm

from ldm.cli import UsageError, int_at_least, report_error, run_cli
from ldm.image_io import (
    ImageInputError,
    fit_to_stride,
    image_extensions,
    load_image,
    output_format,
    save_image_atomic,
)

if TYPE_CHECKING:
    import torch

    from ldm.models.diffusion.ddpm_edit import LatentDiffusion

# `clip` (imported by k-diffusion) warns about pkg_resources on import; not the user's concern.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)

PROG = "edit_cli.py"
ROOT = Path(__file__).resolve().parent
DEFAULT_CONFIG = ROOT / "configs" / "openmoji" / "reference" / "generate.yaml"  # models/openmoji-64
# Sampling settings a config's optional `edit_defaults` section may set for its model (a 64 px model
# wants 64 px edits); a flag on the command line wins, else the config's value, else these (the
# original InstructPix2Pix CLI's).
EDIT_DEFAULTS = {"resolution": 512, "steps": 100, "sampler": "euler_a", "cfg_text": 7.5, "cfg_image": 1.5}
# The keys of ldm.models.diffusion.sampling.SAMPLERS (listed here so --help needs no torch; a test compares).
SAMPLER_NAMES = ("euler_a", "euler", "heun", "dpmpp_2m", "dpmpp_2s_a", "lms")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
JOB_KEYS = ("input", "edit", "output")
# optional per-job overrides of --cfg-text / --cfg-image (a guidance sweep or a baseline in one model load)
JOB_GUIDANCE_KEYS = ("cfg_text", "cfg_image")


@dataclass(frozen=True)
class SamplingOptions:
    """How to sample one edit (defaults: the original CLI's)."""

    steps: int = 100
    sampler: str = "euler_a"
    karras: bool = False
    cfg_text: float = 7.5
    cfg_image: float = 1.5


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
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Edit images from a text instruction (InstructPix2Pix).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--input", required=True, help='an image, a folder of images, or a .jsonl of {"input", "edit", "output"} jobs')
    add("--output", help="a file for one image; a folder for a folder (or the base of relative JSONL outputs)")
    add("--edit", help='the instruction (JSONL jobs may carry their own); "" writes the resized input')
    add("--config", default=str(DEFAULT_CONFIG), help="YAML whose `model` section builds the model")
    add("--ckpt", help="weights (.ckpt or .safetensors); required unless the config sets model.params.ckpt_path")
    add("--vae-ckpt", help="replace the autoencoder weights from an autoencoder or SD checkpoint")
    add("--steps", type=int_at_least(1), help="sampling steps [100, or the config's edit_defaults]")
    add("--resolution", type=int_at_least(1), help="longer side of the edited image in pixels [512, or the config's]")
    add("--cfg-text", type=float, help="text guidance scale: higher follows the instruction [7.5, or the config's]")
    add("--cfg-image", type=float, help="image guidance scale: higher stays closer to the input [1.5, or the config's]")
    add("--seed", type=_seed, help="random seed (sample i of each input uses seed + i); random and printed if absent")
    add("--sampler", choices=SAMPLER_NAMES, help="k-diffusion sampler [euler_a, or the config's]")
    add("--karras", action="store_true", help="Karras et al. (2022) noise levels instead of evenly spaced timesteps")
    add("--num-samples", type=int_at_least(1), default=1, help="edits per input: out.png -> out_0.png, out_1.png, ...")
    add("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps")
    add("--precision", choices=PRECISIONS, default="auto", help="autocast dtype; auto = fp16 on CUDA, else fp32")
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
        not_number = [k for k, v in guidance.items() if isinstance(v, bool) or not isinstance(v, int | float)]
        if unknown or bad or not_number:
            if unknown:
                detail = f"unknown key {unknown[0]!r}"
            elif bad:
                detail = f"{bad[0]!r} missing or not a string"
            else:
                detail = f"{not_number[0]!r} is not a number"
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
    planned, claimed = [], set()
    for job in jobs:
        problem = next(filter(None, map(output_problem, job.outputs)), None)
        taken = [str(p) for p in job.outputs if p.resolve() in claimed]
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


# ---- model --------------------------------------------------------------------------------------
def read_model_config(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the `model` section of a YAML config as a plain dict without `base_learning_rate`, its sampling
    defaults: EDIT_DEFAULTS updated by the config's `edit_defaults` section)."""
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--config {path}: no such file")
    try:
        config = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except (OSError, ValueError, yaml.YAMLError, OmegaConfBaseException) as err:
        raise UsageError(f"--config {path}: cannot read it ({err})") from err
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise UsageError(f"--config {path}: no `model` section with target and params")
    model = dict(config["model"])
    model.pop("base_learning_rate", None)  # a training setting main.py reads
    defaults = dict(config.get("edit_defaults") or {})
    unknown = sorted(set(defaults) - set(EDIT_DEFAULTS))
    if unknown:
        raise UsageError(f"--config {path}: edit_defaults.{unknown[0]} is not one of {', '.join(EDIT_DEFAULTS)}")
    if defaults.get("sampler", "euler_a") not in SAMPLER_NAMES:
        raise UsageError(f"--config {path}: edit_defaults.sampler {defaults['sampler']!r} is not a sampler name")
    return model, {**EDIT_DEFAULTS, **defaults}


def checkpoint_keys(path: str | Path) -> set[str]:
    """Tensor names in a checkpoint, without reading the tensors where the format allows."""
    import torch

    from ldm.util import load_state_dict_file

    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return set(f.keys())
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04" and magic[:1] != b"\x80":  # torch.save's zip archive, or a bare pickle
        raise ValueError(f"{path} is not a PyTorch checkpoint (.ckpt / .pt) or a .safetensors file")
    try:  # zip-format torch.save files: memory-mapped, nothing read but the pickle
        checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except (RuntimeError, ValueError, OSError, pickle.UnpicklingError):
        return set(load_state_dict_file(path))  # legacy format or pickled objects besides tensors
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path} holds a {type(checkpoint).__name__}, not a state dict")
    return set(checkpoint.get("state_dict", checkpoint))


def load_model(model_config: dict[str, Any], ckpt: str | Path, vae_ckpt: str | Path | None = None) -> LatentDiffusion:
    """Build the model from its config and load `ckpt` strictly (then `vae_ckpt` into the autoencoder).

    EMA: released InstructPix2Pix checkpoints carry the UNet's EMA under `model_ema.*` beside
    the trained weights, and the EMA weights are the better model. When a checkpoint has
    them they are loaded (strictly, like everything else) and copied into the UNet, whatever
    the config's `use_ema` says. (The original CLI sampled with `model.diffusion_model.*`:
    its generate.yaml has `use_ema: false`, so `ema_scope()` did nothing.) Without
    `model_ema.*` ("emaonly" exports, our own inference checkpoints) the UNet weights are used.
    """
    from ldm.models.diffusion.loading import init_from_ckpt
    from ldm.util import instantiate_from_config

    params = dict(model_config.get("params") or {})
    params.pop("ckpt_path", None)  # loaded below, with the EMA decided from the file
    has_ema = any(key.startswith("model_ema.") for key in checkpoint_keys(ckpt))
    params.update(use_ema=has_ema, load_ema=has_ema)
    model = instantiate_from_config({**model_config, "params": params}, "model")
    init_from_ckpt(model, ckpt, ignore_keys=params.get("ignore_keys", ()), load_ema=has_ema)
    if has_ema:
        model.model_ema.copy_to(model.model)
        del model.model_ema  # no longer needed: the UNet holds the EMA weights
        model.use_ema = False
    if vae_ckpt is not None:
        model.first_stage_model.init_from_ckpt(vae_ckpt)
    return model.eval()


def model_stride(model: LatentDiffusion) -> int:
    """Pixels per UNet cell at its coarsest level: VAE downsampling x UNet downsampling (SD: 8 x 8 = 64)."""
    from ldm.modules.diffusionmodules.openaimodel import Downsample

    unet_levels = sum(isinstance(m, Downsample) for m in model.model.diffusion_model.modules())
    vae_levels = model.first_stage_model.encoder.num_resolutions - 1
    return 2 ** (unet_levels + vae_levels)


def pick_device(name: str) -> torch.device:
    """`auto`: cuda if available, then mps, then cpu; otherwise the named device, which must exist."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UsageError(f"--device {name}: not a device name ({err})") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA GPU is available")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {name}: MPS is not available")
    if device.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"--device {name}: use cpu, cuda or mps")
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for --precision on `device`; None = float32 throughout."""
    import torch

    if precision == "auto":
        precision = "fp16" if device.type == "cuda" else "fp32"  # the original ran fp16 autocast on CUDA
    if precision == "fp32":
        return None
    if precision == "fp16" and device.type == "cpu":
        raise UsageError("--precision fp16: float16 autocast is not supported on the CPU; use bf16 or fp32")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UsageError("--precision bf16: this GPU does not support bfloat16; use fp16 or fp32")
    return torch.bfloat16 if precision == "bf16" else torch.float16


class ImageEditor:
    """Edits with a loaded model: one encoding of image and instruction per input, one sampling per seed."""

    def __init__(self, model: LatentDiffusion, device: torch.device, dtype: torch.dtype | None = None) -> None:
        from ldm.models.diffusion.sampling import CFGDenoiser, denoiser

        self.model = model.eval().to(device)
        self.device = device
        self.dtype = dtype
        self.denoiser = denoiser(self.model)  # after .to(device): its sigma buffers live there
        self.cfg_denoiser = CFGDenoiser(self.denoiser)
        self.stride = model_stride(self.model)

    def _autocast(self) -> contextlib.AbstractContextManager:
        import torch

        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def encode(self, image: Image.Image, instruction: str) -> tuple[dict, dict]:
        """RGB image (sides multiples of `stride`) and instruction -> (cond, uncond) for CFGDenoiser."""
        import torch

        from ldm.data.images import to_signed_tensor

        if image.width % self.stride or image.height % self.stride:
            raise ValueError(f"image size {image.size} is not a multiple of {self.stride}; use fit_to_stride")
        x = to_signed_tensor(image)[None]  # (1, 3, H, W) in [-1, 1]
        with torch.inference_mode(), self._autocast():
            cond = self.model.encode_edit_conditioning(x, [instruction])  # c_concat (1, 4, H/f, W/f)
            return cond, self.model.unconditional(cond)

    def sample_latents(
        self,
        cond: dict,
        uncond: dict,
        seed: int,
        options: SamplingOptions,
        callback: Callable[[dict[str, Any]], None] | None = None,
    ) -> torch.Tensor:
        """Final latent (1, 4, h, w). Initial and ancestral noise come from a CPU generator seeded with `seed`."""
        import torch

        from ldm.models.diffusion.sampling import get_sigmas, sample

        generator = torch.Generator().manual_seed(seed)
        shape = cond["c_concat"][0].shape
        noise = torch.randn(shape, generator=generator).to(self.device)  # (1, 4, h, w), float32
        extra_args = {
            "cond": cond,
            "uncond": uncond,
            "text_cfg_scale": options.cfg_text,
            "image_cfg_scale": options.cfg_image,
        }
        with torch.inference_mode(), self._autocast():
            sigmas = get_sigmas(self.denoiser, options.steps, options.karras)  # (steps + 1,)
            return sample(
                self.cfg_denoiser,
                noise * sigmas[0],
                sigmas,
                options.sampler,
                extra_args=extra_args,
                generator=generator,
                callback=callback,
            )

    def decode(self, z: torch.Tensor) -> Image.Image:
        """Latent (1, 4, h, w) -> RGB image, [-1, 1] mapped to 0..255 with rounding."""
        import torch

        with torch.inference_mode(), self._autocast():
            x = self.model.decode_first_stage(z)  # (1, 3, H, W)
        pixels = ((x[0].float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)  # (3, H, W)
        return Image.fromarray(pixels.permute(1, 2, 0).cpu().numpy())

    def edit(
        self,
        image: Image.Image,
        instruction: str,
        seeds: Sequence[int],
        options: SamplingOptions,
        callback: Callable[[dict[str, Any]], None] | None = None,
    ) -> list[Image.Image]:
        """One edited image per seed. CUDA/MPS out-of-memory is raised as MemoryError with advice."""
        import torch

        try:
            cond, uncond = self.encode(image, instruction)
            return [self.decode(self.sample_latents(cond, uncond, s, options, callback)) for s in seeds]
        except torch.OutOfMemoryError as err:
            raise MemoryError(
                f"out of memory on {self.device} at {image.width}x{image.height}; "
                "lower --resolution, or use --precision fp16/bf16"
            ) from err


def load_editor(args: argparse.Namespace, model_config: dict[str, Any], ckpt: Path) -> ImageEditor:
    """Device and precision (chosen once, here), the model, and the editor; UsageError for any failure."""
    from safetensors import SafetensorError

    from ldm.models.diffusion.loading import CheckpointMismatchError
    from ldm.util import ConfigError

    device = pick_device(args.device)
    dtype = autocast_dtype(args.precision, device)
    try:
        model = load_model(model_config, ckpt, args.vae_ckpt)
    except (CheckpointMismatchError, ConfigError) as err:
        raise UsageError(str(err)) from err
    except (OSError, ValueError, RuntimeError, EOFError, KeyError, pickle.UnpicklingError, SafetensorError) as err:
        raise UsageError(f"cannot load the model from {ckpt}: {err}") from err
    return ImageEditor(model, device, dtype)


# ---- running ------------------------------------------------------------------------------------
def _existing_file(flag: str, path: str | None) -> Path | None:
    if path is None:
        return None
    if not Path(path).is_file():
        raise UsageError(f"{flag} {path}: no such file")
    return Path(path)


def run(args: argparse.Namespace) -> int:
    """Plan, check, then edit job by job; 0 if every job was written, else 1."""
    jobs, problems = plan_jobs(args)
    model_config, defaults = read_model_config(args.config)
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    ckpt = _existing_file("--ckpt", args.ckpt or (model_config.get("params") or {}).get("ckpt_path"))
    if ckpt is None:
        raise UsageError(f"--ckpt is required: {args.config} sets no model.params.ckpt_path")
    _existing_file("--vae-ckpt", args.vae_ckpt)
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
            editor = editor or load_editor(args, model_config, ckpt)
            image = fit_to_stride(image, args.resolution, editor.stride)
            if job.edit == "":
                results = [image] * args.num_samples
                bar.update(args.num_samples * args.steps)
            else:
                try:
                    job_options = replace(options, **job.guidance)
                    results = editor.edit(image, job.edit, seeds, job_options, callback=lambda _: bar.update())
                except MemoryError as err:
                    raise UsageError(err) from err
            for path, result in zip(job.outputs, results, strict=True):
                try:
                    save_image_atomic(result, path)
                except OSError as err:
                    report_error(PROG, f"cannot write {path}: {err}")
                    failures += 1
                else:
                    tqdm.write(f"wrote {path}", file=sys.stdout)
    return 1 if failures else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    return run_cli(PROG, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
