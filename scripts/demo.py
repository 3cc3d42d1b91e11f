"""Helpers of the embedded-default demo (scripts/quickstart.sh): edit jobs and the result grid.

    python scripts/demo.py jobs --pairs data/openmoji/test.csv --out outputs/demo --per-kind 24
    python scripts/demo.py grid --pairs data/openmoji/test.csv --out outputs/demo

`jobs` writes three edit_cli.py job files under --out: `jobs.jsonl` (test pairs, a fixed
number per kind, predictions to `pred/<pair_id>.png`), `jobs_notext.jsonl` (the same inputs,
to `pred_notext/`, with `"cfg_text": 0` for the "instruction off" baseline) and
`jobs_fixed.jsonl` (a few sketches with "make it red/blue/green", to `fixed/`).
`reconstruct` passes the ground truth of the same test pairs through the trained autoencoder
alone (`autoencoder/<pair_id>.png`): scored like a model, it is the ceiling any editing model
on that autoencoder can reach.
`grid` draws `grid.png`: one row per shown pair, columns input | instruction | result |
ground truth, then the fixed-instruction rows.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

FIXED_INSTRUCTIONS = ("make it red", "make it blue", "make it green")
CELL = 128  # pixels per image in the grid
TEXT_WIDTH = 320


def read_pairs(pairs_csv: Path) -> list[dict[str, str]]:
    with open(pairs_csv, newline="") as f:
        return list(csv.DictReader(f))


def pick(rows: list[dict[str, str]], per_kind: int) -> list[dict[str, str]]:
    """The first `per_kind` rows of each kind, in file order (deterministic)."""
    chosen, counts = [], {}
    for row in rows:
        if counts.get(row["kind"], 0) < per_kind:
            counts[row["kind"]] = counts.get(row["kind"], 0) + 1
            chosen.append(row)
    return chosen


def write_jobs(pairs_csv: Path, out: Path, per_kind: int, fixed: int) -> None:
    # absolute paths: edit_cli reads relative job paths against the JSONL file's folder
    root, out = pairs_csv.resolve().parent, out.resolve()
    rows = pick(read_pairs(pairs_csv), per_kind)
    out.mkdir(parents=True, exist_ok=True)
    for name, folder, guidance in (("jobs.jsonl", "pred", {}), ("jobs_notext.jsonl", "pred_notext", {"cfg_text": 0})):
        with open(out / name, "w") as f:
            for row in rows:
                job = {"input": str(root / row["input_image"]), "edit": row["edit"],
                       "output": str(out / folder / f"{row['pair_id']}.png"), **guidance}  # fmt: skip
                f.write(json.dumps(job) + "\n")
    first_of_emoji = {r["emoji"]: r for r in reversed(rows) if r["kind"] == "recolor"}  # file order kept below
    sketches = [r for r in rows if r["kind"] == "recolor" and first_of_emoji[r["emoji"]] is r][:fixed]
    with open(out / "jobs_fixed.jsonl", "w") as f:
        for row in sketches:
            for instruction in FIXED_INSTRUCTIONS:
                output = out / "fixed" / f"{row['pair_id']}_{instruction.split()[-1]}.png"
                f.write(json.dumps({"input": str(root / row["input_image"]), "edit": instruction,
                                    "output": str(output)}) + "\n")  # fmt: skip
    print(f"{len(rows)} test pairs and {len(sketches) * len(FIXED_INSTRUCTIONS)} fixed edits -> {out}")


def reconstruct(pairs_csv: Path, out: Path, config: Path, ckpt: Path) -> None:
    import numpy as np
    import torch
    from omegaconf import OmegaConf

    from ldm.data.images import load_rgb, to_signed_tensor
    from ldm.image_io import save_image_atomic
    from ldm.util import instantiate_from_config

    model_config = OmegaConf.to_container(OmegaConf.load(config).model, resolve=True)
    model_config.pop("base_learning_rate", None)
    model_config["params"].update({"ckpt_path": str(ckpt), "monitor": None})
    model = instantiate_from_config(model_config, "model").eval()
    by_id = {r["pair_id"]: r for r in read_pairs(pairs_csv)}
    jobs = [json.loads(line) for line in open(out / "jobs.jsonl")]
    for job in jobs:
        pair_id = Path(job["output"]).stem
        target = to_signed_tensor(load_rgb(pairs_csv.parent / by_id[pair_id]["edited_image"]))[None]  # (1, 3, H, W)
        with torch.inference_mode():
            x = model.decode(model.encode(target).mode())[0]  # (3, H, W) in about [-1, 1]
        pixels = ((x / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        save_image_atomic(Image.fromarray(np.ascontiguousarray(pixels)), out / "autoencoder" / f"{pair_id}.png")
    print(f"{len(jobs)} ground-truth images through the autoencoder -> {out / 'autoencoder'}")


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


def draw_grid(pairs_csv: Path, out: Path, rows_shown: int) -> Path:
    root = pairs_csv.parent
    by_id = {r["pair_id"]: r for r in read_pairs(pairs_csv)}
    jobs = [json.loads(line) for line in open(out / "jobs.jsonl")]
    fixed = [json.loads(line) for line in open(out / "jobs_fixed.jsonl")]
    rows = []
    per_kind: dict[str, int] = {}
    for job in jobs:
        pair = by_id[Path(job["output"]).stem]
        if per_kind.get(pair["kind"], 0) < rows_shown:
            per_kind[pair["kind"]] = per_kind.get(pair["kind"], 0) + 1
            rows.append((Path(job["input"]), f"[{pair['kind']}] {job['edit']}", Path(job["output"]),
                         root / pair["edited_image"]))  # fmt: skip
    rows += [(Path(j["input"]), j["edit"], Path(j["output"]), None) for j in fixed]
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
    path = out / "grid.png"
    grid.save(path)
    print(f"grid of {len(rows)} rows -> {path}")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    jobs = sub.add_parser("jobs", help="write the edit_cli.py job files")
    jobs.add_argument("--pairs", type=Path, required=True)
    jobs.add_argument("--out", type=Path, required=True)
    jobs.add_argument("--per-kind", type=int, default=24)
    jobs.add_argument("--fixed", type=int, default=3, help="sketches edited with the fixed instructions")
    recon = sub.add_parser("reconstruct", help="the autoencoder round trip of the jobs' ground truth")
    recon.add_argument("--pairs", type=Path, required=True)
    recon.add_argument("--out", type=Path, required=True)
    recon.add_argument("--config", type=Path, default=Path("configs/openmoji/autoencoder.yaml"))
    recon.add_argument("--ckpt", type=Path, required=True)
    grid = sub.add_parser("grid", help="draw grid.png from the finished jobs")
    grid.add_argument("--pairs", type=Path, required=True)
    grid.add_argument("--out", type=Path, required=True)
    grid.add_argument("--rows-per-kind", type=int, default=3)
    args = parser.parse_args()
    if args.command == "jobs":
        write_jobs(args.pairs, args.out, args.per_kind, args.fixed)
    elif args.command == "reconstruct":
        reconstruct(args.pairs, args.out, args.config, args.ckpt)
    else:
        draw_grid(args.pairs, args.out, args.rows_per_kind)


if __name__ == "__main__":
    main()
