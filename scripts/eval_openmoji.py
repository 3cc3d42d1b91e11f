"""Score an OpenMoji editing model on held-out test pairs, batched: the reference-model benchmark.

    python scripts/eval_openmoji.py --out outputs/eval/reference   # the reference model, all 1,400 test pairs
    python scripts/eval_openmoji.py --config configs/openmoji/generate.yaml \\
        --ckpt logs/openmoji-edit/checkpoints/last.ckpt --per-kind 12 --out outputs/eval/quick

Edits every chosen test pair of `--pairs` (all of them by default, or the first `--per-kind` of each
kind) with the instruction and with the instruction off (`cfg_text 0`), reports the edit with the
input's line art laid over it (`model_keep_lines`, as `edit_cli.py --keep-lines`) as its own row,
passes the ground truth through the autoencoder alone (the ceiling of any editor on it), and scores
them all beside the baselines with `metrics/colorization.py`. Also edits `--fixed` held-out sketches with "make it
red / blue / green" and reports the share of each sketch's fill region (the filled mask of its
ground truth) whose color falls in the named hue family (HUE_FAMILIES below). Sampling is Euler,
`--steps` steps, three-way guidance as edit_cli.py, seed `--seed` per pair (independent of the
batching). Prints the table and the time; writes `metrics.json`, `hue.json` and the images.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ldm.cli import ArgumentParser, existing_file, finite_float, int_at_least, run_cli
from ldm.edit_settings import DEFAULT_CONFIG, read_model_config

FIXED = ("red", "blue", "green")
# Hue families in HSV (hue in degrees, half-open ranges), for pixels with saturation >= 0.3 and
# value >= 0.25 (below either a color is a gray or black, in no family). The ranges follow the
# OpenMoji palette: red #EA5A47 is 6 deg, dark orange #E27022 24 deg (not red), green #B1CC33 71 deg
# and #5C9E31 96 deg, light blue #92D3F5 201 deg to dark blue #1E50A0 217 deg.
HUE_FAMILIES = {"red": ((345.0, 360.0), (0.0, 15.0)), "green": ((65.0, 170.0),), "blue": ((185.0, 250.0),)}
MIN_SATURATION, MIN_VALUE = 0.3, 0.25


def in_family(rgb: np.ndarray, family: str) -> np.ndarray:
    """(N, 3) uint8 -> (N,) bool: the color is in the hue family."""
    hsv = np.asarray(Image.fromarray(rgb[None].astype(np.uint8)).convert("HSV"))[0].astype(np.float64)
    hue, sat, val = hsv[:, 0] * 360 / 256, hsv[:, 1] / 255, hsv[:, 2] / 255
    ok = (sat >= MIN_SATURATION) & (val >= MIN_VALUE)
    ranges = np.zeros(len(rgb), dtype=bool)
    for lo, hi in HUE_FAMILIES[family]:
        ranges |= (hue >= lo) & (hue < hi)
    return ok & ranges


class BatchEditor:
    """Three-way-guided Euler edits of many images at once."""

    def __init__(
        self, model, steps: int, cfg_text: float, cfg_image: float, seed: int, cfg_rescale: float = 0.0
    ) -> None:
        from ldm.models.diffusion.sampling import denoiser, get_sigmas

        self.model = model
        self.wrapped = denoiser(model)
        self.sigmas = get_sigmas(self.wrapped, steps)
        self.cfg_text, self.cfg_image, self.seed, self.cfg_rescale = cfg_text, cfg_image, seed, cfg_rescale

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor, texts: list[str], cfg_text: float | None = None) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] and instructions -> edited images (B, 3, H, W)."""
        from ldm.models.diffusion.sampling import sample_edit

        cond = self.model.encode_edit_conditioning(images, texts)
        shape = cond["c_concat"][0].shape[1:]
        noise = torch.cat([torch.randn((1, *shape), generator=torch.Generator().manual_seed(self.seed))
                           for _ in texts])  # fmt: skip
        uncond = self.model.unconditional(cond)
        cfg_text = self.cfg_text if cfg_text is None else cfg_text
        z = sample_edit(self.wrapped, cond, uncond, noise, self.sigmas, "euler", cfg_text, self.cfg_image,
                        cfg_rescale=self.cfg_rescale)  # fmt: skip
        return self.model.decode_first_stage(self.model.edit_latent(z, cond))


def chosen_pairs(rows: list[dict[str, str]], per_kind: int | None) -> list[dict[str, str]]:
    if per_kind is None:
        return rows
    counts: dict[str, int] = {}
    out = []
    for row in rows:
        if counts.get(row["kind"], 0) < per_kind:
            counts[row["kind"]] = counts.get(row["kind"], 0) + 1
            out.append(row)
    return out


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(
        prog="eval_openmoji.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="the model's inference config")
    p.add_argument("--ckpt", default="models/openmoji-64/edit.safetensors", help="editing checkpoint [the reference]")
    p.add_argument("--pairs", default="data/openmoji/test.csv")
    p.add_argument("--out", required=True)
    p.add_argument("--per-kind", type=int_at_least(1), default=None, help="the first N pairs of each kind [all pairs]")
    p.add_argument("--fixed", type=int_at_least(0), default=10, help="held-out sketches for make it red/blue/green")
    p.add_argument("--steps", type=int_at_least(1), help="Euler steps [the config's edit_defaults]")
    p.add_argument("--cfg-text", type=finite_float, help="text guidance [the config's edit_defaults]")
    p.add_argument("--cfg-image", type=finite_float, help="image guidance [the config's edit_defaults]")
    p.add_argument("--cfg-rescale", type=finite_float, default=0.0,
                   help="guidance rescale phi (Lin et al. 2024; ldm.models.diffusion.sampling.CFGDenoiser)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int_at_least(1), default=64)
    p.add_argument("--threads", type=int_at_least(1), default=None, help="torch.set_num_threads")
    args = p.parse_args(argv)
    return run_cli("eval_openmoji.py", lambda: evaluate(args))


def evaluate(args: argparse.Namespace) -> int:
    """Edit the chosen pairs, score them, write `--out`; 0 when done."""
    existing_file("--pairs", args.pairs)
    existing_file("--ckpt", args.ckpt)
    config, defaults = read_model_config(args.config)
    for name in ("steps", "cfg_text", "cfg_image"):
        if getattr(args, name) is None:
            setattr(args, name, defaults[name])
    from ldm.data.images import to_signed_tensor
    from ldm.image_io import keep_lines, load_image, save_image_atomic
    from ldm.inference import load_model, to_image
    from metrics import colorization as cm

    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    pairs_csv, out = Path(args.pairs), Path(args.out)
    model = load_model(config, args.ckpt)
    editor = BatchEditor(model, args.steps, args.cfg_text, args.cfg_image, args.seed, args.cfg_rescale)
    all_rows = cm.read_pairs(pairs_csv)
    rows = chosen_pairs(all_rows, args.per_kind)
    root = pairs_csv.parent

    def images_of(batch_rows: list[dict[str, str]], column: str) -> torch.Tensor:
        return torch.stack([to_signed_tensor(load_image(root / r[column])) for r in batch_rows])

    edits = 0
    for i in range(0, len(rows), args.batch):
        batch = rows[i : i + args.batch]
        inputs, texts = images_of(batch, "input_image"), [r["edit"] for r in batch]
        for folder, cfg_text in (("pred", None), ("pred_notext", 0.0)):
            for row, x in zip(batch, editor(inputs, texts, cfg_text), strict=True):
                edited = to_image(x)
                save_image_atomic(edited, out / folder / f"{row['pair_id']}.png")
                if folder == "pred":  # the same edit with the input's lines laid over it (edit_cli --keep-lines)
                    lined = keep_lines(edited, load_image(root / row["input_image"]))
                    save_image_atomic(lined, out / "pred_lines" / f"{row['pair_id']}.png")
            edits += len(batch)
        with torch.inference_mode():
            autoencoder = model.first_stage_model
            recon = autoencoder.decode(autoencoder.encode(images_of(batch, "edited_image")).mode())
        for row, x in zip(batch, recon, strict=True):
            save_image_atomic(to_image(x), out / "autoencoder" / f"{row['pair_id']}.png")
        print(f"  {min(i + args.batch, len(rows))}/{len(rows)} pairs, {time.perf_counter() - start:.0f} s", flush=True)
    # make it red / blue / green on held-out sketches (one per emoji, recolor pairs: input = the sketch)
    seen, sketches = set(), []
    for row in all_rows:
        if row["kind"] == "recolor" and row["emoji"] not in seen and len(sketches) < args.fixed:
            seen.add(row["emoji"])
            sketches.append(row)
    hue: dict[str, dict] = {}
    if sketches:
        inputs = images_of(sketches, "input_image")
        for color in FIXED:
            results = editor(inputs, [f"make it {color}"] * len(sketches))
            shares = []
            for row, x in zip(sketches, results, strict=True):
                pixels = np.asarray(to_image(x))
                save_image_atomic(Image.fromarray(pixels), out / "fixed" / f"{row['pair_id']}_{color}.png")
                mask = cm.filled_mask(np.asarray(load_image(root / row["edited_image"])))
                shares.append(float(in_family(pixels[mask], color).mean()) if mask.any() else float("nan"))
            edits += len(sketches)
            hue[color] = {"mean_share": float(np.nanmean(shares)), "per_sketch": dict(zip(
                [r["pair_id"] for r in sketches], shares, strict=True))}  # fmt: skip
    seconds = time.perf_counter() - start
    predictions = {"model": out / "pred", "model_keep_lines": out / "pred_lines", "no_text": out / "pred_notext",
                   "autoencoder": out / "autoencoder"}  # fmt: skip
    report = cm.evaluate(pairs_csv, predictions, allow_missing=True)
    report["settings"]["sampling"] = {
        "steps": args.steps, "sampler": "euler", "cfg_text": args.cfg_text, "cfg_image": args.cfg_image,
        "cfg_rescale": args.cfg_rescale, "seed": args.seed, "ckpt": str(args.ckpt),
    }  # fmt: skip
    report["edit_seconds"] = seconds
    cm.write_report(report, out / "metrics.json")
    (out / "hue.json").write_text(json.dumps({"families": HUE_FAMILIES, "min_saturation": MIN_SATURATION,
                                              "min_value": MIN_VALUE, "results": hue}, indent=1))  # fmt: skip
    print(cm.format_table(report))
    for color, result in hue.items():
        print(f"make it {color}: {result['mean_share']:.3f} of filled pixels in the {color} family "
              f"({len(sketches)} held-out sketches)")  # fmt: skip
    print(f"{edits} edits ({args.steps} Euler steps) + {len(rows)} autoencoder round trips in {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
