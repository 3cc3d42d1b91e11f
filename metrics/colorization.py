"""Colorization quality on OpenMoji pairs, for predictions and baselines scored by one function.

Per pair (prediction P, ground truth G, input I, all RGB; P is resized to G's size if needed):
- palette accuracy: over G's *filled* pixels, the share where P's nearest palette color equals
  G's nearest palette color (nearest = Euclidean CIELAB over the 28 OpenMoji palette colors of
  `dataset_creation.openmoji.colors.PALETTE`, white and black included).
- CIEDE2000: mean color difference P vs G over the same filled pixels (Sharma et al. 2005).
- line IoU: intersection over union of the dark-line masks of P and G (1.0 when both are empty).
- PSNR: over the whole image, 0..255 scale, capped at 100 dB (identical images).
Line mask: Rec. 709 luma of the encoded RGB values below `LINE_LUMA` = 48, i.e. the black
strokes' dark cores; 48 sits below every palette fill except black and very dark brown
(#352318, luma 38), so dark fills hardly count as line. Filled pixels, taken on G: not within
`LINE_MARGIN` = 1 pixel (8-neighbourhood) of a line pixel, which drops the anti-aliased stroke
edges (mixtures of black and fill), and not background (every channel >= 245). White fills
cannot be told from the background and are left out too.

Aggregates are means over pairs, per kind and over all pairs ("all"); palette accuracy and
CIEDE2000 skip pairs without filled pixels (counted in `pairs_without_fill`).

Methods: every `--pred-dir` (predictions named `<pair_id>.png`, `pair_id` being the CSV column
written by `python -m dataset_creation.openmoji`) and two baselines computed here:
- input_unchanged: P = I.
- flat_fill: P = I, with every pixel of G's filled mask that is not line in I painted the
  training set's most common fill color (the manifest's `most_common_fill`, or `--flat-color`).
  It borrows G's filled mask (an oracle silhouette), so it is an optimistic flat baseline.
The model with text guidance off is one more prediction folder (the editor run with cfg-text 0).

    python metrics/colorization.py --pairs data/openmoji/test.csv --pred-dir outputs/demo/pred \\
        --out outputs/demo/metrics.json

writes the JSON (aggregates, settings, per-pair scores), a CSV of the aggregate table beside it
(`metrics.csv`) and prints the table.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy.ndimage import binary_dilation

# The Lab conversion is the palette's own (`colors.srgb_to_lab`, also behind palette naming and accuracy), kept
# rather than skimage.color.rgb2lab: that uses the older 6-digit sRGB -> XYZ matrix (0.412453, ...) and differs
# by up to 0.005 Lab units (a test measures it), so palette accuracy and CIEDE2000 would use two Labs.
from dataset_creation.openmoji.colors import (
    PALETTE,
    color_name,
    hex_to_rgb,
    luma,
    nearest_palette_index,
    normalize_hex,
    srgb_to_lab,
)
from ldm.cli import ArgumentParser, finite_float, run_script
from ldm.image_io import load_image
from ldm.io import write_files_atomic

LINE_LUMA = 48.0
BACKGROUND_MIN = 245  # a pixel whose channels are all >= this is background (white)
LINE_MARGIN = 1  # pixels around a line pixel that are not "filled" (anti-aliased stroke edges)
PSNR_CAP = 100.0
HUE_TIE = 1e-9  # degrees; float64 hue rounding is ~1e-13, the nearest Sharma pair off the tie is 2e-3 away
METRICS = ("palette_accuracy", "ciede2000", "line_iou", "psnr")
BASELINES = ("input_unchanged", "flat_fill")

PROG = "colorization.py"


def ciede2000(lab1: np.ndarray | Sequence, lab2: np.ndarray | Sequence) -> np.ndarray:
    """CIEDE2000 color difference (kL = kC = kH = 1) of CIELAB arrays (..., 3) -> (...).

    Follows equations (1)-(17) of Sharma, Wu & Dalal, "The CIEDE2000 Color-Difference Formula:
    Implementation Notes, Supplementary Test Data, and Mathematical Observations" (2005).

    Kept instead of skimage.color.deltaE_ciede2000, which agrees to 1e-9 off the hue tie (a test checks it)
    but decides the tie with a bare `abs(h1 - h2) > pi`: one ulp less from arctan2 turns its Sharma pair 10
    from 7.1792 into 7.2195, the kind of AMD EPYC failure described below. This version has a tie tolerance.
    """
    lab1 = np.asarray(lab1, dtype=np.float64)
    lab2 = np.asarray(lab2, dtype=np.float64)
    l1, a1, b1 = lab1[..., 0], lab1[..., 1], lab1[..., 2]
    l2, a2, b2 = lab2[..., 0], lab2[..., 1], lab2[..., 2]
    c_bar = (np.hypot(a1, b1) + np.hypot(a2, b2)) / 2
    g = 0.5 * (1 - np.sqrt(c_bar**7 / (c_bar**7 + 25.0**7)))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = np.hypot(a1p, b1), np.hypot(a2p, b2)
    h1p = np.degrees(np.arctan2(b1, a1p)) % 360
    h2p = np.degrees(np.arctan2(b2, a2p)) % 360
    chroma_product = c1p * c2p
    dh = h2p - h1p
    dh = np.where(dh > 180, dh - 360, np.where(dh < -180, dh + 360, dh))
    dh = np.where(chroma_product == 0, 0.0, dh)
    d_l = l2 - l1
    d_c = c2p - c1p
    d_h = 2 * np.sqrt(chroma_product) * np.sin(np.radians(dh / 2))
    l_bar = (l1 + l2) / 2
    cp_bar = (c1p + c2p) / 2
    h_sum = h1p + h2p
    # Sharma's pairs 10 and 14 sit exactly on the 180-degree discontinuity, where the mean hue jumps by
    # 180 degrees. Whether arctan2's rounding lands a hair above or below 180 differs between numpy's SIMD
    # paths (AVX-512 on AMD EPYC gave 4.7461 for pair 14 instead of 4.8045), so differences within
    # HUE_TIE of 180 count as exactly 180, the reference's exact-arithmetic reading.
    shifted = np.where(h_sum < 360, (h_sum + 360) / 2, (h_sum - 360) / 2)
    h_bar = np.where(np.abs(h1p - h2p) <= 180 + HUE_TIE, h_sum / 2, shifted)
    h_bar = np.where(chroma_product == 0, h_sum, h_bar)
    t = (
        1
        - 0.17 * np.cos(np.radians(h_bar - 30))
        + 0.24 * np.cos(np.radians(2 * h_bar))
        + 0.32 * np.cos(np.radians(3 * h_bar + 6))
        - 0.20 * np.cos(np.radians(4 * h_bar - 63))
    )
    d_theta = 30 * np.exp(-(((h_bar - 275) / 25) ** 2))
    r_c = 2 * np.sqrt(cp_bar**7 / (cp_bar**7 + 25.0**7))
    s_l = 1 + 0.015 * (l_bar - 50) ** 2 / np.sqrt(20 + (l_bar - 50) ** 2)
    s_c = 1 + 0.045 * cp_bar
    s_h = 1 + 0.015 * cp_bar * t
    r_t = -np.sin(np.radians(2 * d_theta)) * r_c
    tl, tc, th = d_l / s_l, d_c / s_c, d_h / s_h
    return np.sqrt(tl**2 + tc**2 + th**2 + r_t * tc * th)


def line_mask(image: np.ndarray, threshold: float = LINE_LUMA) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) bool: dark-line pixels."""
    return luma(image) < threshold


def filled_mask(image: np.ndarray, threshold: float = LINE_LUMA) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) bool: not white background and not within one pixel of a line
    pixel (the anti-aliased edge of a stroke is a mixture of line and fill, not a fill color)."""
    square = np.ones((2 * LINE_MARGIN + 1, 2 * LINE_MARGIN + 1), dtype=bool)  # LINE_MARGIN px, 8-neighbourhood
    return ~binary_dilation(line_mask(image, threshold), square) & ~(image.min(axis=-1) >= BACKGROUND_MIN)


class Truth:
    """A ground-truth image with what every method's score reuses (masks, Lab, palette indices)."""

    def __init__(self, image: np.ndarray, threshold: float = LINE_LUMA) -> None:
        self.image = image
        self.threshold = threshold
        self.filled = filled_mask(image, threshold)  # (H, W)
        self.lines = line_mask(image, threshold)  # (H, W)
        pixels = image[self.filled]  # (N, 3)
        self.lab = srgb_to_lab(pixels)  # (N, 3)
        self.nearest = nearest_palette_index(pixels)  # (N,)


def score(pred: np.ndarray, truth: Truth) -> dict[str, float]:
    """Metrics of one prediction (H, W, 3) uint8 against its ground truth (see module doc)."""
    if pred.shape != truth.image.shape:
        raise ValueError(f"prediction shape {pred.shape} != ground truth shape {truth.image.shape}")
    n = int(truth.filled.sum())
    if n:
        pixels = pred[truth.filled]
        accuracy = float((nearest_palette_index(pixels) == truth.nearest).mean())
        delta_e = float(ciede2000(srgb_to_lab(pixels), truth.lab).mean())
    else:
        accuracy = delta_e = math.nan
    lines = line_mask(pred, truth.threshold)
    union = int((lines | truth.lines).sum())
    iou = float((lines & truth.lines).sum() / union) if union else 1.0
    mse = float(((pred.astype(np.float64) - truth.image.astype(np.float64)) ** 2).mean())
    psnr = min(PSNR_CAP, 10 * math.log10(255.0**2 / mse)) if mse > 0 else PSNR_CAP
    return {"palette_accuracy": accuracy, "ciede2000": delta_e, "line_iou": iou, "psnr": psnr, "filled_pixels": n}


def flat_fill(input_image: np.ndarray, truth: Truth, rgb: Sequence[int]) -> np.ndarray:
    """The flat baseline: G's filled pixels that are not line in the input get one color."""
    out = input_image.copy()
    out[truth.filled & ~line_mask(input_image, truth.threshold)] = np.asarray(rgb, dtype=np.uint8)
    return out


def _load(path: Path, size: tuple[int, int] | None = None) -> tuple[np.ndarray, bool]:
    """RGB array of an image (alpha over white), resized (bicubic) to `size` = (W, H) if it differs."""
    image = load_image(path)
    resized = size is not None and image.size != size
    if resized:
        image = image.resize(size, Image.BICUBIC)
    return np.asarray(image), resized


def read_pairs(pairs_csv: Path, id_column: str = "pair_id", split: str | None = None) -> list[dict[str, str]]:
    with pairs_csv.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        present = list(reader.fieldnames or [])
    for column in (id_column, "input_image", "edited_image", "kind"):
        if column not in present:
            raise ValueError(f"{pairs_csv} has no column {column!r}; columns: {', '.join(present) or 'none'}")
    if split is not None:
        if "split" not in present:
            raise ValueError(f"--split {split}: {pairs_csv} has no 'split' column")
        rows = [row for row in rows if row["split"] == split]
    return rows


def default_flat_color(pairs_csv: Path) -> str:
    """The manifest's most common training fill color (manifest.json beside the CSV)."""
    manifest = pairs_csv.parent / "manifest.json"
    try:
        return json.loads(manifest.read_text())["most_common_fill"]["hex"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"no most_common_fill in {manifest} ({err!r}); pass --flat-color") from err


def evaluate(
    pairs_csv: str | Path,
    pred_dirs: Mapping[str, str | Path] | None = None,
    flat_color: str | None = None,
    split: str | None = None,
    id_column: str = "pair_id",
    allow_missing: bool = False,
    threshold: float = LINE_LUMA,
) -> dict[str, Any]:
    """Score every pair of `pairs_csv` for each prediction folder and the baselines.

    With `allow_missing`, only pairs predicted in every folder are scored (baselines included);
    otherwise a missing prediction is an error.
    """
    pairs_csv = Path(pairs_csv)
    pred_dirs = {name: Path(d) for name, d in (pred_dirs or {}).items()}
    clash = [name for name in pred_dirs if name in BASELINES]
    if clash:
        raise ValueError(f"prediction names {clash} clash with the baselines {list(BASELINES)}")
    flat_hex = normalize_hex(flat_color or default_flat_color(pairs_csv))
    if flat_hex is None:
        raise ValueError(f"--flat-color {flat_color!r} is not a hex color")
    rows = read_pairs(pairs_csv, id_column, split)
    missing = {
        name: [row[id_column] for row in rows if not (folder / f"{row[id_column]}.png").is_file()]
        for name, folder in pred_dirs.items()
    }
    absent = sorted({pair for pairs in missing.values() for pair in pairs})
    if absent and not allow_missing:
        detail = "; ".join(f"{name}: {len(p)} missing, e.g. {p[0]}.png" for name, p in missing.items() if p)
        raise FileNotFoundError(f"predictions missing for {len(absent)} of {len(rows)} pairs ({detail})")
    scored_rows = [row for row in rows if row[id_column] not in set(absent)]
    if not scored_rows:
        raise ValueError(f"no pair of {pairs_csv} to score")
    folder = pairs_csv.parent
    flat_rgb = hex_to_rgb(flat_hex)
    per_pair: list[dict[str, Any]] = []
    resized = dict.fromkeys(pred_dirs, 0)
    for row in scored_rows:
        gt, _ = _load(folder / row["edited_image"])
        truth = Truth(gt, threshold)
        size = (gt.shape[1], gt.shape[0])
        input_image, _ = _load(folder / row["input_image"], size)
        predictions = {"input_unchanged": input_image, "flat_fill": flat_fill(input_image, truth, flat_rgb)}
        for name, pred_dir in pred_dirs.items():
            predictions[name], was_resized = _load(pred_dir / f"{row[id_column]}.png", size)
            resized[name] += was_resized
        for method, pred in predictions.items():
            per_pair.append({"method": method, "pair_id": row[id_column], "kind": row["kind"], **score(pred, truth)})
    methods = [*pred_dirs, *BASELINES]
    return {
        "pairs_csv": str(pairs_csv),
        "split": split,
        "pairs_in_csv": len(rows),
        "pairs_scored": len(scored_rows),
        "pairs_missing_predictions": len(absent),
        "methods": methods,
        "results": aggregate(per_pair, methods),
        "settings": {
            "line_luma_threshold": threshold,
            "background_min": BACKGROUND_MIN,
            "psnr_cap_db": PSNR_CAP,
            "flat_color": {"hex": flat_hex, "name": color_name(flat_hex)},
            "palette": dict(PALETTE),
            "prediction_dirs": {name: str(d) for name, d in pred_dirs.items()},
            "predictions_resized": resized,
        },
        "per_pair": per_pair,
    }


def aggregate(per_pair: Sequence[Mapping[str, Any]], methods: Sequence[str]) -> dict[str, dict[str, dict]]:
    """{method: {kind or "all": {"pairs", "pairs_without_fill", metric means}}}."""
    kinds = sorted({row["kind"] for row in per_pair})
    out: dict[str, dict[str, dict]] = {}
    for method in methods:
        out[method] = {}
        for kind in [*kinds, "all"]:
            rows = [r for r in per_pair if r["method"] == method and kind in (r["kind"], "all")]
            if not rows:
                continue
            entry: dict[str, Any] = {
                "pairs": len(rows),
                "pairs_without_fill": sum(r["filled_pixels"] == 0 for r in rows),
            }
            for metric in METRICS:
                values = [r[metric] for r in rows if not math.isnan(r[metric])]
                entry[metric] = float(np.mean(values)) if values else math.nan
            out[method][kind] = entry
    return out


TABLE_COLUMNS = ("method", "kind", "pairs", *METRICS)


def table_rows(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [
        {"method": method, "kind": kind, **{k: entry[k] for k in ("pairs", *METRICS)}}
        for method, kinds in report["results"].items()
        for kind, entry in kinds.items()
    ]


def format_table(report: Mapping[str, Any]) -> str:
    """The aggregate table as aligned text (higher is better except CIEDE2000)."""
    header = ["method", "kind", "pairs", "palette_acc", "ciede2000 (lower)", "line_iou", "psnr_db"]
    lines = [header]
    for row in table_rows(report):
        lines.append(
            [row["method"], row["kind"], str(row["pairs"])]
            + [f"{row[m]:.4f}" if m != "psnr" else f"{row[m]:.2f}" for m in METRICS]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) for line in lines)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def write_report(report: Mapping[str, Any], out_json: str | Path) -> Path:
    """Write the JSON report (NaN -> null) and the aggregate table as CSV beside it; returns the CSV path.

    Both are written together (`ldm.io.write_files_atomic`): the CSV is renamed into place first,
    the JSON last, and a failure before that leaves both files as they were.
    """
    out_json = Path(out_json)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=TABLE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(table_rows(report))
    out_csv = out_json.with_suffix(".csv")
    report_text = json.dumps(_json_safe(dict(report)), indent=1) + "\n"
    write_files_atomic({out_csv: buffer.getvalue().encode("utf-8"), out_json: report_text.encode("utf-8")})
    return out_csv


def parse_pred_dirs(values: Iterable[str]) -> dict[str, Path]:
    """'DIR' (named "model") or 'NAME=DIR', repeatable."""
    values = list(values)
    out: dict[str, Path] = {}
    for value in values:
        name, sep, folder = value.partition("=")
        if not sep:
            name, folder = "model", value
        if name in out:
            raise ValueError(f"--pred-dir name {name!r} given twice; use NAME=DIR")
        out[name] = Path(folder)
    return out


def main(argv: Iterable[str] | None = None) -> dict[str, Any]:
    parser = ArgumentParser(prog="colorization.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", required=True, help="pairs CSV (e.g. data/openmoji/test.csv)")
    parser.add_argument(
        "--pred-dir", action="append", default=[], help="predictions <pair_id>.png: DIR or NAME=DIR, repeatable"
    )
    parser.add_argument("--out", default=None, help="JSON report path (the table CSV is written beside it)")
    parser.add_argument("--flat-color", default=None, help="hex color of the flat baseline (default: manifest)")
    parser.add_argument("--split", default=None, help="only rows whose 'split' column has this value")
    parser.add_argument("--id-column", default="pair_id", help="CSV column naming the prediction files")
    parser.add_argument("--line-threshold", type=finite_float, default=LINE_LUMA,
        help="luma below which a pixel is line")
    parser.add_argument(
        "--allow-missing", action="store_true", help="score only pairs predicted in every folder (else: error)"
    )
    args = parser.parse_args(list(argv) if argv is not None else None)
    report = evaluate(
        args.pairs,
        parse_pred_dirs(args.pred_dir),
        flat_color=args.flat_color,
        split=args.split,
        id_column=args.id_column,
        allow_missing=args.allow_missing,
        threshold=args.line_threshold,
    )
    print(format_table(report))
    if report["pairs_missing_predictions"]:
        print(f"note: {report['pairs_missing_predictions']} pairs without predictions were not scored")
    if args.out:
        out_csv = write_report(report, args.out)
        print(f"wrote {args.out} and {out_csv}")
    return report


def cli(argv: Iterable[str] | None = None) -> int:
    """Console entry point: a ValueError or OSError (bad CSV, missing predictions or folders) is one line and exit 2."""
    return run_script(PROG, main, argv)


if __name__ == "__main__":
    sys.exit(cli())
