"""caption.py: a tiny random BLIP saved offline, batched resumable JSONL captions, sketch-caption cleanup."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import ROOT
from PIL import Image

from dataset_creation import caption as cap

SCRIPT = ROOT / "dataset_creation" / "caption.py"
WORDS = ["a", "drawing", "of", "green", "pokemon", "with", "red", "eyes", "sketch", "on", "white", "background"]


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory) -> Path:
    """A randomly initialised BLIP captioner and its processor, written with save_pretrained (no hub)."""
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    folder = tmp_path_factory.mktemp("blip")
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]  # ids 0-5; [DEC] starts a caption
    (folder / "vocab.txt").write_text("\n".join(specials + WORDS) + "\n")
    tokenizer = BertTokenizer(str(folder / "vocab.txt"), bos_token="[DEC]")
    BlipProcessor(BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer).save_pretrained(folder)
    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    config = BlipConfig(
        text_config={**small, "vocab_size": len(specials) + len(WORDS), "encoder_hidden_size": 32,
                     "max_position_embeddings": 64, "bos_token_id": 5, "pad_token_id": 0, "sep_token_id": 3,
                     "eos_token_id": 3},
        vision_config={**small, "image_size": 32, "patch_size": 8},
        projection_dim=32,
    )  # fmt: skip
    torch.manual_seed(0)
    BlipForConditionalGeneration(config).save_pretrained(folder)
    return folder


@pytest.fixture
def images(tmp_path) -> Path:
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    for i, color in enumerate(["red", "green", "blue", "yellow"]):
        Image.new("RGB", (40 + 8 * i, 40), color).save(folder / f"{i}.png")
    Image.new("RGBA", (30, 30), (0, 0, 0, 0)).save(folder / "sub" / "clear.png")
    return folder


@pytest.mark.parametrize(
    "caption, cleaned",
    [
        ("a drawing of a green pokemon with red eyes", "a green pokemon with red eyes"),
        ("a black and white drawing of a dragon on a white background", "a dragon"),
        ("a cartoon drawing of a man holding balloons", "a man holding balloons"),
        ("a pencil sketch of a house, white background", "a house"),
        ("a doodle of a car", "a car"),
        ("a cat sketch", "a cat"),
        ("drawing of a bird", "a bird"),
        ("a red apple", "a red apple"),
    ],
)
def test_sketch_captions_lose_their_sketch_words(caption, cleaned):
    assert cap.clean_sketch_caption(caption) == cleaned
    assert cap.photo_prompt(caption) == f"a photo of {cleaned}"


def test_photo_prompt_of_an_empty_caption():
    assert cap.photo_prompt("a drawing") == "a photo"


def test_captions_are_batched_and_resumed(blip_dir, images, tmp_path, monkeypatch):
    out = tmp_path / "captions.jsonl"
    captioner = cap.Captioner(blip_dir, device="cpu", max_new_tokens=6)
    calls = []
    real_call = cap.Captioner.__call__
    monkeypatch.setattr(cap.Captioner, "__call__", lambda self, ims, prompt=None: calls.append(len(ims)) or
                        real_call(self, ims, prompt))  # fmt: skip
    items = cap.list_items(images)
    assert [k for k, _ in items] == ["0.png", "1.png", "2.png", "3.png", "sub/clear.png"]
    result = cap.caption_items(captioner, items, out, batch_size=2, sketch=True, progress=False)
    assert calls == [2, 2, 1] and result["captioned"] == 5 and result["failed"] == []
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["image"] for r in records] == [k for k, _ in items]
    assert all(isinstance(r["caption"], str) and r["prompt"].startswith("a photo") for r in records)
    assert set(result["records"]) == {k for k, _ in items}

    # A rerun captions nothing; a new image alone is captioned.
    calls.clear()
    again = cap.caption_items(captioner, items, out, batch_size=2, progress=False)
    assert calls == [] and again["captioned"] == 0 and again["records"] == result["records"]
    Image.new("RGB", (40, 40), "purple").save(images / "4.png")
    more = cap.caption_items(captioner, cap.list_items(images), out, batch_size=2, progress=False)
    assert calls == [1] and more["captioned"] == 1 and len(out.read_text().splitlines()) == 6


def test_a_torn_last_line_is_dropped_and_redone(tmp_path):
    out = tmp_path / "captions.jsonl"
    out.write_text('{"image": "a.png", "caption": "a cat"}\n{"image": "b.png", "capt')
    assert list(cap.read_done(out)) == ["a.png"]
    assert out.read_text() == '{"image": "a.png", "caption": "a cat"}\n'
    out.write_text('{"image": "a.png", "caption": "a cat"}\nnot json\n{"image": "b.png", "caption": "x"}\n')
    with pytest.raises(ValueError, match="line 2 is not a caption record"):
        cap.read_done(out)


def test_unreadable_images_are_skipped_and_reported(blip_dir, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (32, 32), "red").save(folder / "ok.png")
    (folder / "bad.png").write_bytes(b"broken")
    code = cap.main(["--model", str(blip_dir), "--images", str(folder), "--out", str(tmp_path / "c.jsonl"),
                     "--device", "cpu", "--max-new-tokens", "4", "--no-progress"])  # fmt: skip
    assert code == 1
    assert [json.loads(line)["image"] for line in (tmp_path / "c.jsonl").read_text().splitlines()] == ["ok.png"]


def test_model_folder_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="config.json does not exist"):
        cap.Captioner(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "clip"}')
    with pytest.raises(ValueError, match="model_type 'clip'; caption.py runs BLIP-family models"):
        cap.Captioner(tmp_path)


def test_cli_error_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--model", str(tmp_path), "--images",
                           str(tmp_path / "none"), "--out", str(tmp_path / "c.jsonl")], capture_output=True,
                          text=True)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"caption.py: error: --images {tmp_path / 'none'} does not exist; give a folder of images or a text file "
        "of image paths"
    ]
