"""Caption images with a BLIP-family model from a local folder (transformers), batched and resumable.

The model folder is what `save_pretrained` writes (config.json, weights, and the processor's
files), e.g. a download of Salesforce/blip-image-captioning-large; it is read with
`local_files_only=True`, so nothing is fetched from a hub. Supported `model_type`s: blip,
blip-2, instructblip (config.json says which).

Output: JSON Lines, one record per image, `{"image": key, "caption": ...}` where key is the
image's path relative to `--images` (a folder, searched recursively), or the path as written in
a list file (`--images list.txt`, one path per line, relative to the list's folder). Records
are appended after every batch and flushed to disk; a rerun skips the keys already in the file,
so an interrupted run continues where it stopped (a torn last line is dropped first).

Sketch captions (`--sketch`): a captioner describes a sketch as "a black and white drawing of a
dragon on a white background"; to prompt a text-to-image model for the colored picture, the
stop phrases of the seed project (`STOP_PHRASES`: "drawing", "sketch", "doodle", "white
background", ...) are removed and "a photo of" is put in front. The record then also holds
`"prompt": "a photo of a dragon"`.

    python dataset_creation/caption.py --model models/blip-large --images data/colors --out captions.jsonl
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ldm.cli import ArgumentParser, run_script
from ldm.image_io import ImageInputError, image_extensions, load_image
from ldm.io import append_text_durable

PROG = "caption.py"
MAX_PIXELS = 40_000_000
# config.json model_type -> transformers class (all in transformers >= 4.40).
MODEL_CLASSES = {
    "blip": "BlipForConditionalGeneration",
    "blip-2": "Blip2ForConditionalGeneration",
    "instructblip": "InstructBlipForConditionalGeneration",
}
# The seed project's stop words for turning a sketch caption into a photo prompt.
STOP_PHRASES = (
    "on a white background", "white background", "a drawing", "a doodle", "drawn in",
    "drawing", "sketch", "doodle", "draw", "drew",
)  # fmt: skip
# "a (black and white) drawing of", "a pencil sketch of": the whole lead-in goes, not just the noun.
_LEAD_IN = re.compile(r"\b(?:an?\s+)?(?:[\w-]+\s+){0,3}?(?:drawing|sketch|doodle)s?\s+of\s+", re.IGNORECASE)
_STOP = re.compile(
    r"\b(?:" + "|".join(re.escape(p) for p in sorted(STOP_PHRASES, key=len, reverse=True)) + r")\b", re.IGNORECASE
)
_DANGLING = re.compile(r"^(?:(?:of|in|on|with)\s+)+", re.IGNORECASE)  # left in front after the cuts


def clean_sketch_caption(caption: str) -> str:
    """Remove the sketch words of a caption: "a drawing of a cat on a white background" -> "a cat"."""
    text = _LEAD_IN.sub("", caption)
    text = _STOP.sub(" ", text)
    text = re.sub(r"\s+", " ", text).strip(" ,.;:")
    return _DANGLING.sub("", text).strip(" ,.;:")


def photo_prompt(caption: str) -> str:
    """A text-to-image prompt for the colored picture a sketch caption describes."""
    cleaned = clean_sketch_caption(caption)
    return f"a photo of {cleaned}" if cleaned else "a photo"


# --- the JSONL file ------------------------------------------------------------------------------


def read_done(out_jsonl: Path) -> dict[str, dict[str, Any]]:
    """Records already written, by key; a torn or unparsable last line (an interrupted write) is cut off."""
    if not out_jsonl.exists():
        return {}
    data = out_jsonl.read_bytes()
    records: dict[str, dict[str, Any]] = {}
    good_end = 0
    for line in data.splitlines(keepends=True):
        try:
            record = json.loads(line)
            key = record["image"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
            break
        if not line.endswith(b"\n"):
            break
        records[str(key)] = record
        good_end += len(line)
    if good_end < len(data):
        if data[good_end:].count(b"\n") > 1:
            raise ValueError(f"{out_jsonl} line {len(records) + 1} is not a caption record; fix or move the file")
        with out_jsonl.open("r+b") as f:
            f.truncate(good_end)
    return records


def append_records(out_jsonl: Path, records: Iterable[dict[str, Any]]) -> None:
    """Append records as JSON lines and fsync them (a crash loses at most the batch being written)."""
    append_text_durable(out_jsonl, "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))


# --- inputs --------------------------------------------------------------------------------------


def list_items(images: str | Path) -> list[tuple[str, Path]]:
    """(key, path) of every image: a folder searched recursively, or a text file of paths."""
    images = Path(images)
    if images.is_dir():
        extensions = image_extensions()
        paths = sorted(p for p in images.rglob("*") if p.is_file() and p.suffix.lower() in extensions)
        if not paths:
            raise ValueError(f"{images} holds no image files; give --images a folder of images or a list file")
        return [(p.relative_to(images).as_posix(), p) for p in paths]
    if images.is_file():
        lines = [line.strip() for line in images.read_text(encoding="utf-8").splitlines()]
        return [(line, images.parent / line) for line in lines if line]
    raise ValueError(f"--images {images} does not exist; give a folder of images or a text file of image paths")


def batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# --- the model -----------------------------------------------------------------------------------


class Captioner:
    """A BLIP-family model and its processor from a local folder, on one device and dtype."""

    def __init__(
        self, model_dir: str | Path, device: str = "auto", max_new_tokens: int = 30, num_beams: int = 1
    ) -> None:
        import torch
        import transformers

        model_dir = Path(model_dir)
        config_file = model_dir / "config.json"
        if not config_file.is_file():
            raise ValueError(f"{config_file} does not exist; give --model a folder written by save_pretrained")
        model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
        if model_type not in MODEL_CLASSES:
            raise ValueError(
                f"{config_file} has model_type {model_type!r}; {PROG} runs BLIP-family models "
                f"({', '.join(MODEL_CLASSES)})"
            )
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                                   "cpu" if device == "auto" else device)  # fmt: skip
        # fp16 on CUDA (BLIP-2 is 3.9B parameters), fp32 elsewhere.
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.processor = transformers.AutoProcessor.from_pretrained(model_dir, local_files_only=True)
        model_class = getattr(transformers, MODEL_CLASSES[model_type])
        self.model = model_class.from_pretrained(model_dir, local_files_only=True).to(self.device, self.dtype).eval()
        self.generate_kwargs = {"max_new_tokens": max_new_tokens, "num_beams": num_beams}

    def __call__(self, images: Sequence[Any], prompt: str | None = None) -> list[str]:
        """Captions of PIL images; `prompt` starts every caption (BLIP conditional captioning)."""
        import torch

        text = [prompt] * len(images) if prompt else None
        inputs = self.processor(images=list(images), text=text, return_tensors="pt").to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        with torch.inference_mode():
            tokens = self.model.generate(**inputs, **self.generate_kwargs)
        return [t.strip() for t in self.processor.batch_decode(tokens, skip_special_tokens=True)]


def caption_items(
    captioner: Captioner,
    items: Sequence[tuple[str, Path]],
    out_jsonl: str | Path,
    batch_size: int = 8,
    prompt: str | None = None,
    sketch: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Caption the items not yet in `out_jsonl`, appending a record per image after each batch.

    Returns {"records": {key: record} for every item captioned now or before, "captioned": n new,
    "failed": ["path: reason", ...] (unreadable images, skipped)}.
    """
    from tqdm import tqdm

    if batch_size < 1:
        raise ValueError(f"batch size {batch_size} must be at least 1")
    out_jsonl = Path(out_jsonl)
    out_jsonl.parent.mkdir(parents=True, exist_ok=True)
    done = read_done(out_jsonl)
    todo = [(key, path) for key, path in items if key not in done]
    failed: list[str] = []
    captioned = 0
    bar = tqdm(total=len(todo), desc="captions", disable=not progress)
    for batch in batches(todo, batch_size):
        loaded = []
        for key, path in batch:
            try:
                loaded.append((key, load_image(path, MAX_PIXELS)))
            except ImageInputError as err:
                failed.append(str(err))
        if loaded:
            captions = captioner([image for _, image in loaded], prompt)
            records = []
            for (key, _), caption in zip(loaded, captions, strict=True):
                record = {"image": key, "caption": caption}
                if sketch:
                    record["prompt"] = photo_prompt(caption)
                records.append(record)
            append_records(out_jsonl, records)
            done.update((r["image"], r) for r in records)
            captioned += len(records)
        bar.update(len(batch))
    bar.close()
    wanted = {key for key, _ in items}
    return {"records": {k: r for k, r in done.items() if k in wanted}, "captioned": captioned, "failed": failed}


def parse_args(argv: Iterable[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="local folder of a BLIP / BLIP-2 / InstructBLIP model")
    parser.add_argument("--images", required=True, help="folder of images (recursive) or a text file of paths")
    parser.add_argument("--out", required=True, help="JSONL file of captions (appended to; done images skipped)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per generate call")
    parser.add_argument("--prompt", default=None, help='text every caption starts with, e.g. "a drawing of"')
    parser.add_argument("--sketch", action="store_true", help="images are sketches: add a cleaned photo prompt")
    parser.add_argument("--max-new-tokens", type=int, default=30, help="caption length limit in tokens")
    parser.add_argument("--num-beams", type=int, default=1, help="beam search width (1: greedy)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(list(argv) if argv is not None else None)


def main(argv: Iterable[str] | None = None) -> int:
    args = parse_args(argv)
    items = list_items(args.images)
    captioner = Captioner(args.model, args.device, args.max_new_tokens, args.num_beams)
    result = caption_items(
        captioner, items, args.out, args.batch_size, args.prompt, args.sketch, progress=not args.no_progress
    )
    for line in result["failed"]:
        print(f"{PROG}: skipped: {line}", file=sys.stderr)
    print(
        f"{args.out}: {len(result['records'])} of {len(items)} images captioned ({result['captioned']} now), "
        f"{len(result['failed'])} unreadable",
        file=sys.stderr,
    )
    return 1 if result["failed"] else 0


def cli(argv: Iterable[str] | None = None) -> int:
    """Console entry point: a ValueError or OSError (missing folder or model, bad file) is one line and exit 2."""
    return run_script(PROG, main, argv)


if __name__ == "__main__":
    sys.exit(cli())
