"""The README's image-quality table: metrics/image_quality.py on an eval_openmoji.py run, per method and kind.

    python scripts/eval_openmoji.py --per-kind 50 --fixed 0 --out outputs/eval/quality50
    python scripts/quality_table.py --eval-dir outputs/eval/quality50 \\
        [--inception-weights pt_inception-2015-12-05-6726825d.pth] [--lpips-weights alexnet-owt-7be5be79.pth] \\
        [--clip-weights ViT-L-14.pt]

Methods: the prediction folders eval_openmoji.py writes (model = pred, model_keep_lines = pred_lines,
no_text = pred_notext, autoencoder: the ground truth through the autoencoder, the ceiling), and the
baselines of metrics/colorization.py, written as images under `--out`/baselines: input_unchanged (the
sketch) and flat_fill (the sketch with the ground truth's filled mask in the training set's most common
fill). Only the pairs the model predicted are scored, every method on the same pairs. Each method's
quality.json / quality_pairs.csv goes to `--out`/<method>/, the Markdown table to `--out`/table.md.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ldm.cli import ArgumentParser, UsageError, existing_file, int_at_least, run_cli
from ldm.image_io import load_image, save_image_atomic
from ldm.io import write_text_atomic
from metrics import colorization as cm
from metrics import image_quality as iq

PROG = "quality_table.py"
FOLDERS = {"model": "pred", "model_keep_lines": "pred_lines", "no_text": "pred_notext", "autoencoder": "autoencoder"}
COLUMNS = ("fid", "kid_mean", "is_mean", "lpips", "ssim", "ms_ssim", "psnr", "clip_score", "clip_image")


def write_baselines(pairs: Sequence[iq.Pair], pairs_csv: Path, out: Path) -> dict[str, Path]:
    """input_unchanged and flat_fill as <pair_id>.png folders under out/baselines (metrics/colorization.py's)."""
    rows = {row["pair_id"]: row for row in cm.read_pairs(pairs_csv)}
    rgb = cm.hex_to_rgb(cm.default_flat_color(pairs_csv))
    folders = {name: out / "baselines" / name for name in cm.BASELINES}
    for pair in pairs:
        truth = cm.Truth(np.asarray(load_image(pair.ref)))
        sketch = load_image(pairs_csv.parent / rows[pair.pair_id]["input_image"]).resize(
            (truth.image.shape[1], truth.image.shape[0]), Image.BICUBIC
        )
        save_image_atomic(sketch, folders["input_unchanged"] / f"{pair.pair_id}.png")
        flat = cm.flat_fill(np.asarray(sketch), truth, rgb)
        save_image_atomic(Image.fromarray(flat), folders["flat_fill"] / f"{pair.pair_id}.png")
    return folders


def markdown(results: dict[str, dict]) -> str:
    """One row per (method, kind), one column per metric some method computed."""
    first = next(iter(results.values()))
    columns = [c for c in COLUMNS if c in first["metrics"]]
    lines = ["| method | kind | pairs | " + " | ".join(columns) + " |", "|---" * (len(columns) + 3) + "|"]
    for method, report in results.items():
        for kind, entry in report["results"].items():
            cells = [f"{entry[c]:.3f}" if c != "kid_mean" else f"{entry[c]:.4f}" for c in columns]
            lines.append(f"| {method} | {kind} | {entry['pairs']} | " + " | ".join(cells) + " |")
    reasons: dict[str, list[str]] = {}
    for metric, why in first["skipped"].items():
        reasons.setdefault(why, []).append(metric)
    lines += ["", *[f"Skipped {', '.join(metrics)}: {why.rstrip('.')}." for why, metrics in reasons.items()]]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    eval_dir, pairs_csv = Path(args.eval_dir), existing_file("--pairs", args.pairs)
    if not (eval_dir / "pred").is_dir():
        raise UsageError(f"--eval-dir {eval_dir}: no pred/ folder; run scripts/eval_openmoji.py --out {eval_dir} first")
    iq.check_weights(args)
    out = Path(args.out or eval_dir / "quality")
    pairs = iq.pairs_from_csv(eval_dir / "pred", pairs_csv, allow_missing=True)
    folders = {name: eval_dir / folder for name, folder in FOLDERS.items() if (eval_dir / folder).is_dir()}
    folders.update(write_baselines(pairs, pairs_csv, out))
    networks = iq.load_networks(args)
    results = {}
    for method, folder in folders.items():
        method_pairs = [iq.Pair(p.pair_id, folder / p.pred.name, p.ref, p.kind, p.caption) for p in pairs]
        results[method] = iq.evaluate(method_pairs, networks, batch=args.batch, device=args.device)
        iq.write_report(results[method], out / method)
    table = markdown(results)
    write_text_atomic(out / "table.md", table)
    print(table, end="")
    print(f"wrote {out / 'table.md'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eval-dir", required=True, help="the --out folder of scripts/eval_openmoji.py")
    parser.add_argument("--pairs", default="data/openmoji/test.csv", help="the pairs CSV it evaluated")
    parser.add_argument("--out", help="folder for the reports and table.md [EVAL_DIR/quality]")
    parser.add_argument("--batch", type=int_at_least(1), default=16, help="images per network call")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    iq.add_weight_arguments(parser)
    args = parser.parse_args(argv)
    return run_cli(PROG, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
