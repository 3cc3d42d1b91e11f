"""Evaluate an editing checkpoint as InstructPix2Pix did: CLIP image vs CLIP direction similarity over a guidance sweep.

    python metrics/compute_metrics.py --ckpt model.ckpt --data data/openmoji --split test \\
        --clip-weights ViT-L-14.pt --out outputs/metrics

Each test input is edited with its instruction once per guidance setting (text guidance
`--cfg-text`, default 7.5; image guidance `--cfg-image`, default 1.0, 1.2, ..., 2.2, the sweep of
the paper's figure), with the same seed per input across settings, through `edit_cli.py`'s
editor. CLIP (`ldm/modules/encoders/clip_image.py`; the paper used OpenAI's ViT-L/14, whose weights
must be a local file) then scores every edit against its input and captions:
- clip_direction: cos(CLIP(output) - CLIP(input), CLIP(output caption) - CLIP(input caption));
- clip_image: cos(CLIP(input), CLIP(output)), how much of the input survived;
- clip_text_out: cos(CLIP(output), CLIP(output caption)).
More image guidance moves the points up (closer to the input) and left (less of the edit).

Data (`--data`): an InstructPix2Pix dataset folder (seeds.json, <prompt_dir>/prompt.json with
"edit", "input" and "output" captions, {seed}_0 / {seed}_1 images; split by position with
`--splits`, as EditDataset does, first seed of each entry) or the output folder of
`python -m dataset_creation.openmoji` (its `<split>/` folder is used whole). CLIP direction needs both
captions, so a prompt.json without them is an error. The first `--num-samples` entries of the
split are evaluated.

Colorization metrics (`metrics/colorization.py`: palette accuracy, CIEDE2000, line IoU, PSNR,
beside its baselines) score the edits of each setting against the `{seed}_1` targets. `auto`
runs them on OpenMoji builds (exact ground truth; the flat baseline's color from its manifest)
or when `--flat-color` is given.

Image-quality metrics (`--quality`; `metrics/image_quality.py`: FID/KID/IS with `--inception-weights`,
LPIPS with `--lpips-weights`, SSIM/MS-SSIM/PSNR, and CLIP score against the output captions with the
CLIP above) score the edits of each setting against the `{seed}_1` targets, per kind; a metric whose
weights are not given is skipped and the report says so. They go to quality/<setting>/quality.json
and quality_pairs.csv.

Written under `--out` (each file atomically): clip_metrics.csv (one row per setting: cfg_text,
cfg_image, n, clip_direction, clip_image, clip_text_out), clip_per_sample.csv, clip_metrics.png
(the plot), settings.json, edits/<setting>/<pair_id>.png, and with colorization
colorization.json / colorization.csv (+ colorization_pairs.csv, the pairs it scored).
Mistakes in arguments or files print one line `compute_metrics.py: error: ...` and exit with 1.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import pickle
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image
from tqdm import tqdm

from ldm.cli import (
    ArgumentParser,
    UsageError,
    add_device_arguments,
    existing_file,
    finite_float,
    int_at_least,
    model_weights,
    run_cli,
)
from ldm.edit_settings import DEFAULT_CONFIG, SAMPLERS, SamplingOptions, read_model_config
from ldm.image_io import ImageInputError, fit_to_stride, load_image, save_image_atomic
from ldm.io import write_bytes_atomic
from metrics import image_quality

if TYPE_CHECKING:
    import torch

    from ldm.inference import ImageEditor
    from ldm.modules.encoders.clip_image import ClipSimilarity

PROG = "compute_metrics.py"
CFG_IMAGE_SWEEP = (1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.2)  # the image guidance values of the paper's figure
SPLIT_NAMES = ("train", "val", "test")  # ldm.data.edit_dataset.SPLITS (listed here so --help needs no torch)
DEFAULT_SPLITS = (0.9, 0.05, 0.05)  # EditDataset's default
MAX_PIXELS = 40_000_000  # edit_cli.py's --max-pixels default
MEAN_COLUMNS = ("clip_direction", "clip_image", "clip_text_out")  # means over the pairs of one setting
SUMMARY_COLUMNS = ("cfg_text", "cfg_image", "n", *MEAN_COLUMNS)
SAMPLE_COLUMNS = ("pair_id", "cfg_text", "cfg_image", "clip_text_in", "clip_text_out", "clip_direction", "clip_image")


@dataclass(frozen=True)
class EvalPair:
    """One test entry: its images, instruction and the captions before and after the edit."""

    pair_id: str
    input: Path
    target: Path
    edit: str
    input_caption: str
    output_caption: str
    kind: str


@dataclass(frozen=True)
class Setting:
    """One point of the guidance sweep."""

    cfg_text: float
    cfg_image: float

    @property
    def name(self) -> str:
        return f"text_{self.cfg_text:g}_image_{self.cfg_image:g}"


# ---- arguments ----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="CLIP image vs direction similarity of an editing checkpoint over a guidance sweep.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--config", default=str(DEFAULT_CONFIG), help="YAML whose `model` section builds the model")
    add("--ckpt", help="editing model weights; required unless the config sets model.params.ckpt_path")
    add("--vae-ckpt", help="replace the autoencoder weights from an autoencoder or SD checkpoint")
    add("--data", required=True, help="InstructPix2Pix dataset folder (seeds.json) or dataset_creation.openmoji's")
    add("--split", choices=SPLIT_NAMES, default="test", help="which split to evaluate")
    add("--splits", type=finite_float, nargs=3, default=DEFAULT_SPLITS,
        help="train/val/test fractions (seeds.json order)")
    add("--num-samples", type=int_at_least(1), default=100, help="evaluate the first N entries of the split")
    add("--clip-model", default="ViT-L-14", help="open_clip model name (the paper: ViT-L-14) or a config .json")
    add("--clip-weights", required=True, help="local CLIP weights (open_clip state dict or OpenAI's ViT-L-14.pt)")
    add("--cfg-text", type=finite_float, nargs="+", default=[7.5], help="text guidance scale(s)")
    add("--cfg-image", type=finite_float, nargs="+", default=list(CFG_IMAGE_SWEEP), help="image guidance scales")
    add("--steps", type=int_at_least(1), default=100, help="sampling steps")
    add("--sampler", choices=list(SAMPLERS), default="euler_a", help="k-diffusion sampler")
    add("--resolution", type=int_at_least(1), default=512, help="longer side of the edited image (pixels)")
    add("--seed", type=int_at_least(0), default=0, help="entry i of the split uses seed + i, in every setting")
    add("--colorization", choices=("auto", "on", "off"), default="auto", help="colorization metrics (see --help)")
    add("--flat-color", help="hex color of the colorization flat baseline (default: the OpenMoji manifest's)")
    add("--quality", action="store_true", help="also metrics/image_quality.py's metrics of the edits (see --help)")
    image_quality.add_weight_arguments(parser, clip=False)
    add("--out", required=True, help="folder for the tables, the plot and the edited images")
    add_device_arguments(parser)
    return parser


def settings_of(args: argparse.Namespace) -> list[Setting]:
    return [Setting(t, i) for t in dict.fromkeys(args.cfg_text) for i in dict.fromkeys(args.cfg_image)]


# ---- data ---------------------------------------------------------------------------------------
def _read_prompt(prompt_file: Path) -> dict[str, Any]:
    try:
        prompt = json.loads(prompt_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UsageError(f"--data: cannot read {prompt_file} ({err})") from err
    if not isinstance(prompt, dict):
        raise UsageError(f"--data: {prompt_file} holds no JSON object")
    missing = [key for key in ("edit", "input", "output") if not isinstance(prompt.get(key), str)]
    if missing:
        raise UsageError(
            f"--data: {prompt_file} has no {' / '.join(map(repr, missing))} text; CLIP direction similarity needs "
            "the instruction and the input and output captions (InstructPix2Pix prompt.json keys edit, input, output)"
        )
    return prompt


def dataset_folder(data: Path, split: str, splits: Sequence[float]) -> tuple[Path, Sequence[float]]:
    """The EditDataset folder and split fractions: `data` itself, or an OpenMoji build's `<split>/` folder whole."""
    if (data / "seeds.json").is_file():
        return data, splits
    if (data / split / "seeds.json").is_file():
        return data / split, [1.0 if name == split else 0.0 for name in SPLIT_NAMES]
    raise UsageError(
        f"--data {data}: no seeds.json in it or in {data / split}; give an InstructPix2Pix dataset folder "
        "or the output folder of python -m dataset_creation.openmoji"
    )


def read_eval_pairs(data: Path, split: str, splits: Sequence[float], num_samples: int) -> list[EvalPair]:
    """The first `num_samples` entries of the split (first seed of each), captions checked."""
    from ldm.data.edit_dataset import EditDataset, _pair_image

    if not data.is_dir():
        raise UsageError(f"--data {data}: no such folder")
    folder, fractions = dataset_folder(data, split, splits)
    try:
        entries = EditDataset(folder, split=split, splits=fractions).entries
    except (ValueError, FileNotFoundError) as err:
        raise UsageError(f"--data {data}: {err}") from err
    pairs = []
    for name, seeds in entries[:num_samples]:
        prompt = _read_prompt(folder / name / "prompt.json")
        pairs.append(
            EvalPair(
                pair_id=name,
                input=_pair_image(folder / name, seeds[0], 0),
                target=_pair_image(folder / name, seeds[0], 1),
                edit=prompt["edit"],
                input_caption=prompt["input"],
                output_caption=prompt["output"],
                kind=str(prompt.get("kind", "edit")),
            )
        )
    return pairs


def colorization_flat_color(args: argparse.Namespace, data: Path) -> str | None:
    """The flat baseline's color when colorization metrics run, else None (see the module doc)."""
    from dataset_creation.openmoji.colors import normalize_hex
    from metrics.colorization import default_flat_color

    if args.colorization == "off":
        return None
    if args.flat_color is not None:
        if normalize_hex(args.flat_color) is None:
            raise UsageError(f"--flat-color {args.flat_color}: not a hex color such as #FCEA2B")
        return args.flat_color
    try:
        return default_flat_color(data / f"{args.split}.csv")  # reads the manifest.json beside it
    except ValueError as err:
        if args.colorization == "auto":
            return None
        raise UsageError(
            f"--colorization on: {data} is not a dataset_creation.openmoji build with a manifest.json; "
            "pass --flat-color for the flat baseline"
        ) from err


# ---- outputs ------------------------------------------------------------------------------------
def csv_bytes(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode()


def plot_png(summary: Sequence[dict[str, Any]], title: str) -> bytes:
    """CLIP image similarity (y) vs direction similarity (x), one line per text guidance, points labelled."""
    from matplotlib.figure import Figure  # no pyplot: no global state, Agg canvas for PNG

    fig = Figure(figsize=(6.4, 4.8), dpi=100)  # 640 x 480 pixels
    ax = fig.subplots()
    for cfg_text in dict.fromkeys(row["cfg_text"] for row in summary):
        rows = [row for row in summary if row["cfg_text"] == cfg_text]
        x, y = [row["clip_direction"] for row in rows], [row["clip_image"] for row in rows]
        ax.plot(x, y, marker="o", label=f"text guidance {cfg_text:g}")
        for row in rows:
            point = (row["clip_direction"], row["clip_image"])
            ax.annotate(f"{row['cfg_image']:g}", point, textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("CLIP text-image direction similarity")
    ax.set_ylabel("CLIP image similarity (input vs edit)")
    ax.set_title(title, fontsize=10)
    ax.legend(title="point labels: image guidance", fontsize=8, title_fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def write_colorization(pairs: Sequence[EvalPair], settings: Sequence[Setting], flat_color: str, out: Path) -> str:
    """Colorization metrics of every setting's edits; writes colorization.json / .csv; returns the table."""
    from metrics.colorization import evaluate, format_table, write_report

    columns = ("pair_id", "input_image", "edited_image", "kind")
    rows = [dict(zip(columns, (p.pair_id, p.input.resolve(), p.target.resolve(), p.kind), strict=True)) for p in pairs]
    pairs_csv = out / "colorization_pairs.csv"
    write_bytes_atomic(pairs_csv, csv_bytes(rows, columns))
    pred_dirs = {s.name: out / "edits" / s.name for s in settings}
    try:
        report = evaluate(pairs_csv, pred_dirs, flat_color=flat_color)
    except (ValueError, OSError) as err:
        raise UsageError(f"colorization metrics: {err}") from err
    write_report(report, out / "colorization.json")  # and colorization.csv beside it, atomically
    return format_table(report)


def write_quality(
    pairs: Sequence[EvalPair], settings: Sequence[Setting], networks: image_quality.Networks, device: Any, out: Path
) -> str:
    """image_quality's metrics of every setting's edits against the targets; writes quality/<setting>/."""
    tables = []
    for setting in settings:
        edits = out / "edits" / setting.name
        quality_pairs = [
            image_quality.Pair(p.pair_id, edits / f"{p.pair_id}.png", p.target, p.kind, p.output_caption) for p in pairs
        ]
        report = image_quality.evaluate(quality_pairs, networks, device=device)
        image_quality.write_report(report, out / "quality" / setting.name)
        tables.append(f"image quality, {setting.name}:\n{image_quality.format_table(report)}")
    return "\n".join(tables)


# ---- running ------------------------------------------------------------------------------------
def to_unit_tensor(image: Image.Image) -> torch.Tensor:
    """RGB image -> (3, H, W) float in [0, 1]."""
    import numpy as np
    import torch

    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255


def load_clip(args: argparse.Namespace, device: torch.device) -> ClipSimilarity:
    from ldm.modules.encoders.clip_image import ClipSimilarity

    try:
        return ClipSimilarity(args.clip_model, args.clip_weights).to(device)
    except FileNotFoundError as err:
        raise UsageError(str(err)) from err
    # weights of another model or not weights at all: strict loading's RuntimeError, open_clip's shape assertion
    # (a resized position embedding), unpickling errors, a file that holds no state dict
    except (ValueError, RuntimeError, OSError, AssertionError, EOFError, pickle.UnpicklingError, AttributeError,
            KeyError, TypeError) as err:  # fmt: skip
        reason = " ".join(str(err).split()) or type(err).__name__
        reason = reason if len(reason) <= 300 else reason[:300] + " ..."
        raise UsageError(
            f"--clip-weights {args.clip_weights}: cannot load it into {args.clip_model} ({reason}); "
            "give the weights of that model, or the --clip-model they belong to"
        ) from err


def evaluate_pairs(
    editor: ImageEditor,
    clip: ClipSimilarity,
    pairs: Sequence[EvalPair],
    settings: Sequence[Setting],
    args: argparse.Namespace,
    out: Path,
) -> list[dict[str, Any]]:
    """Edit every pair in every setting, save the edits, and return one CLIP row per (pair, setting)."""
    import torch

    per_sample = []
    with tqdm(total=len(pairs) * len(settings) * args.steps, unit="step", disable=None, dynamic_ncols=True) as bar:
        for index, pair in enumerate(pairs):
            bar.set_description(f"entry {index + 1}/{len(pairs)}")
            try:
                image = fit_to_stride(load_image(pair.input, MAX_PIXELS), args.resolution, editor.stride)
            except ImageInputError as err:
                raise UsageError(f"--data: {err}") from err
            edits = []
            for setting in settings:
                options = SamplingOptions(args.steps, args.sampler, False, setting.cfg_text, setting.cfg_image)
                try:
                    (edited,) = editor.edit(image, pair.edit, [args.seed + index], options, lambda _: bar.update())
                except MemoryError as err:
                    raise UsageError(err) from err
                save_image_atomic(edited, out / "edits" / setting.name / f"{pair.pair_id}.png")
                edits.append(edited)
            image_0 = to_unit_tensor(image)[None].expand(len(settings), -1, -1, -1)  # (S, 3, H, W)
            image_1 = torch.stack([to_unit_tensor(e) for e in edits])  # (S, 3, H, W)
            n = len(settings)
            with torch.inference_mode():
                sims = clip(image_0, image_1, [pair.input_caption] * n, [pair.output_caption] * n)  # 4 x (S,)
            for k, setting in enumerate(settings):
                values = (pair.pair_id, setting.cfg_text, setting.cfg_image, *(float(s[k]) for s in sims))
                per_sample.append(dict(zip(SAMPLE_COLUMNS, values, strict=True)))
    return per_sample


def summarize(per_sample: Sequence[dict[str, Any]], settings: Sequence[Setting]) -> list[dict[str, Any]]:
    """Means over the pairs, one row per setting."""
    summary = []
    for s in settings:
        rows = [r for r in per_sample if (r["cfg_text"], r["cfg_image"]) == (s.cfg_text, s.cfg_image)]
        means = {key: sum(r[key] for r in rows) / len(rows) for key in MEAN_COLUMNS}
        summary.append({"cfg_text": s.cfg_text, "cfg_image": s.cfg_image, "n": len(rows), **means})
    return summary


def format_summary(summary: Sequence[dict[str, Any]]) -> str:
    lines = ["  ".join(SUMMARY_COLUMNS)]
    for row in summary:
        means = [f"{row[key]:.4f}" for key in MEAN_COLUMNS]
        lines.append("  ".join([f"{row['cfg_text']:g}", f"{row['cfg_image']:g}", str(row["n"]), *means]))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Check everything, then edit, score and write; returns 0."""
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: is a file; give a folder")
    if not math.isclose(sum(args.splits), 1.0, abs_tol=1e-6) or min(args.splits) < 0:
        raise UsageError(f"--splits {' '.join(map(str, args.splits))}: give three non-negative fractions summing to 1")
    existing_file("--clip-weights", args.clip_weights)
    if args.clip_model.endswith(".json"):
        existing_file("--clip-model", args.clip_model)
    if args.quality:
        image_quality.check_weights(args)
    model_config, _ = read_model_config(args.config)
    ckpt = model_weights(args.ckpt, model_config, args.config)
    existing_file("--vae-ckpt", args.vae_ckpt)
    data = Path(args.data)
    pairs = read_eval_pairs(data, args.split, args.splits, args.num_samples)
    flat_color = colorization_flat_color(args, data)
    settings = settings_of(args)

    from ldm.inference import load_editor

    editor = load_editor(model_config, ckpt, args.vae_ckpt, args.device, args.precision)  # device, precision: once
    clip = load_clip(args, editor.device)
    networks = image_quality.load_networks(args, clip=clip) if args.quality else None  # bad weights fail before editing
    per_sample = evaluate_pairs(editor, clip, pairs, settings, args, out)
    summary = summarize(per_sample, settings)

    write_bytes_atomic(out / "clip_metrics.csv", csv_bytes(summary, SUMMARY_COLUMNS))
    write_bytes_atomic(out / "clip_per_sample.csv", csv_bytes(per_sample, SAMPLE_COLUMNS))
    title = f"{ckpt.name}: guidance sweep on {len(pairs)} {args.split} edits"
    write_bytes_atomic(out / "clip_metrics.png", plot_png(summary, title))
    recorded = {**vars(args), "device": str(editor.device), "pairs": len(pairs)}
    write_bytes_atomic(out / "settings.json", (json.dumps(recorded, indent=1) + "\n").encode())
    print(format_summary(summary))
    if flat_color is None:
        print("colorization metrics: skipped (not an OpenMoji build; --flat-color or --colorization on to run them)")
    else:
        print(write_colorization(pairs, settings, flat_color, out))
    if networks is not None:
        print(write_quality(pairs, settings, networks, editor.device, out))
    print(f"wrote {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    return run_cli(PROG, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
