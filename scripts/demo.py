"""The embedded-default demo's report (scripts/quickstart.sh): one table for both models and their grids.

    python scripts/demo.py --pairs data/openmoji/test.csv --out outputs/demo --runs reference fresh

Each run is a folder written by `scripts/eval_openmoji.py` under --out (`<run>/metrics.json`,
`<run>/hue.json`, `pred/`, `fixed/`). This prints the per-kind table of every run (the model, the
model with its instruction off, its autoencoder's round trip of the ground truth, which no editor on
that autoencoder can beat) beside the baselines (input unchanged, flat fill), writes it to
`<out>/metrics.json`, and draws `<out>/<run>/grid.png`: one row per shown pair (input | instruction
| result | ground truth), then the fixed "make it red / blue / green" rows. The first run's grid is
also `<out>/grid.png`.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ldm.cli import ArgumentParser

CELL = 128  # pixels per image in the grid
TEXT_WIDTH = 320
NAMES = {
    "model": "model",
    "model_keep_lines": "model, input lines laid over (--keep-lines)",
    "no_text": "instruction off (cfg_text 0)",
    "autoencoder": "autoencoder round trip (ceiling)",
}
METRICS = ("palette_accuracy", "ciede2000", "line_iou", "psnr")


def read_pairs(pairs_csv: Path) -> list[dict[str, str]]:
    with open(pairs_csv, newline="") as f:
        return list(csv.DictReader(f))


def cell(path: Path | None) -> Image.Image:
    if path is None or not path.is_file():
        return Image.new("RGB", (CELL, CELL), (235, 235, 235))
    return Image.open(path).convert("RGB").resize((CELL, CELL), Image.Resampling.NEAREST)


def text_cell(text: str) -> Image.Image:
    image = Image.new("RGB", (TEXT_WIDTH, CELL), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=16)
    words, lines, line = text.split(), [], ""
    for word in words:  # greedy wrap
        candidate = f"{line} {word}".strip()
        if draw.textlength(candidate, font=font) > TEXT_WIDTH - 16 and line:
            lines.append(line)
            line = word
        else:
            line = candidate
    lines.append(line)
    draw.multiline_text((8, 8), "\n".join(lines), fill="black", font=font, spacing=4)
    return image


def draw_grid(pairs_csv: Path, run: Path, rows_per_kind: int) -> Path:
    """grid.png of an eval_openmoji.py run: `rows_per_kind` pairs per kind, then the fixed instructions."""
    root = pairs_csv.parent
    rows, per_kind = [], {}
    by_id = {}
    for pair in read_pairs(pairs_csv):
        by_id[pair["pair_id"]] = pair
        result = run / "pred" / f"{pair['pair_id']}.png"
        if result.is_file() and per_kind.get(pair["kind"], 0) < rows_per_kind:
            per_kind[pair["kind"]] = per_kind.get(pair["kind"], 0) + 1
            rows.append((root / pair["input_image"], f"[{pair['kind']}] {pair['edit']}", result,
                         root / pair["edited_image"]))  # fmt: skip
    for result in sorted((run / "fixed").glob("*.png")):
        pair_id, color = result.stem.rsplit("_", 1)
        rows.append((root / by_id[pair_id]["input_image"], f"make it {color}", result, None))
    width = 3 * CELL + TEXT_WIDTH
    grid = Image.new("RGB", (width, CELL * (len(rows) + 1)), "white")
    header = ImageDraw.Draw(grid)
    for x, title in ((0, "input"), (CELL, "instruction"), (CELL + TEXT_WIDTH, "result"),
                     (2 * CELL + TEXT_WIDTH, "ground truth")):  # fmt: skip
        header.text((x + 8, CELL // 2), title, fill="black", font=ImageFont.load_default(size=18))
    for i, (source, instruction, result, truth) in enumerate(rows, start=1):
        y = i * CELL
        grid.paste(cell(source), (0, y))
        grid.paste(text_cell(instruction), (CELL, y))
        grid.paste(cell(result), (CELL + TEXT_WIDTH, y))
        grid.paste(cell(truth), (2 * CELL + TEXT_WIDTH, y))
    path = run / "grid.png"
    grid.save(path)
    return path


def table(out: Path, runs: list[str]) -> tuple[list[dict], str]:
    """Rows {run, method, kind, pairs, metrics...} of every run, then the baselines (from the first run)."""
    rows = []
    for i, run in enumerate(runs):
        report = json.loads((out / run / "metrics.json").read_text())
        methods = [*NAMES, *(("input_unchanged", "flat_fill") if i == len(runs) - 1 else ())]
        for method in methods:
            for kind, entry in report["results"][method].items():
                label = f"{run}: {NAMES[method]}" if method in NAMES else method.replace("_", " ")
                rows.append({"method": label, "kind": kind, "pairs": entry["pairs"],
                             **{m: entry[m] for m in METRICS}})  # fmt: skip
        hue = json.loads((out / run / "hue.json").read_text())["results"]
        for color, result in hue.items():
            rows.append({"method": f"{run}: make it {color}", "kind": "in hue family",
                         "pairs": len(result["per_sketch"]), "palette_accuracy": result["mean_share"]})  # fmt: skip
    header = ["method", "kind", "pairs", "palette acc", "CIEDE2000", "line IoU", "PSNR dB"]
    lines = [header]
    for row in rows:
        values = [f"{row[m]:.3f}" if m in row and m != "psnr" else f"{row.get(m, float('nan')):.1f}" for m in METRICS]
        if "line_iou" not in row:
            values = [values[0], "", "", ""]
        lines.append([row["method"], row["kind"], str(row["pairs"]), *values])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines)
    return rows, text


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--runs", nargs="+", required=True, help="eval_openmoji.py folders under --out")
    parser.add_argument("--rows-per-kind", type=int, default=3)
    args = parser.parse_args()
    rows, text = table(args.out, args.runs)
    (args.out / "metrics.json").write_text(json.dumps({"runs": args.runs, "rows": rows}, indent=1))
    print(text)
    for i, run in enumerate(args.runs):
        path = draw_grid(args.pairs, args.out / run, args.rows_per_kind)
        if i == 0:
            (args.out / "grid.png").write_bytes(path.read_bytes())
        print(f"grid -> {path}")


if __name__ == "__main__":
    main()
