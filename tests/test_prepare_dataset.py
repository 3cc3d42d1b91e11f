"""prepare_dataset.py: which folders and seeds seeds.json lists, deterministic order, atomic write,
reports, and that EditDataset reads the result."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from dataset_creation import prepare_dataset
from ldm.data.edit_dataset import EditDataset


def folder(root: Path, name: str, images: list[str], prompt: object = None) -> Path:
    """A prompt folder with 8x8 images named `images` and prompt.json holding `prompt` (skipped when None)."""
    path = root / name
    path.mkdir(parents=True)
    for image in images:
        Image.new("RGB", (8, 8), "red" if "_1" in image else "white").save(path / image)
    if prompt is not None:
        (path / "prompt.json").write_text(json.dumps(prompt))
    return path


EDIT = {"input": "a", "edit": "make it red", "output": "b"}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "pairs"
    folder(root, "0000002", ["10_0.jpg", "10_1.jpg", "9_0.jpg", "9_1.jpg", "11_0.jpg"], EDIT)  # 11 has no edit
    folder(root, "0000001", ["5_0.png", "5_1.png", "007_0.jpg", "007_1.png"], EDIT)  # png and mixed pairs
    folder(root, "0000003", [], EDIT)  # no candidate passed the CLIP filter
    folder(root, ".0000004.partial", ["1_0.jpg", "1_1.jpg"], EDIT)  # an unfinished generation
    folder(root, "0000005", ["1_0.jpg", "1_1.jpg"])  # no prompt.json
    folder(root, "0000006", ["1_0.jpg", "1_1.jpg"], ["not", "an", "object"])
    (root / "0000007").mkdir()
    (root / "0000007" / "prompt.json").write_text("{ broken")
    (root / "generation.json").write_text("{}")  # files beside the folders are ignored
    return root


def test_seeds_json_lists_complete_pairs_in_order(root: Path, capsys) -> None:
    assert prepare_dataset.main([str(root)]) == 0
    entries = json.loads((root / "seeds.json").read_text())
    assert entries == [["0000001", [5, "007"]], ["0000002", [9, 10]]]
    out, err = capsys.readouterr()
    assert "2 prompts, 4 pairs" in out
    assert "skipped 1 folder(s): no complete {seed}_0 / {seed}_1 pair" in err
    assert "skipped 1 folder(s): hidden or unfinished (.partial)" in err
    assert 'skipped 3 folder(s): no prompt.json with an "edit" string' in err
    assert [p.name for p in root.iterdir() if p.name.endswith(".tmp")] == []


def test_edit_dataset_reads_every_listed_pair(root: Path) -> None:
    prepare_dataset.main([str(root)])
    dataset = EditDataset(root, splits=(1, 0, 0), min_resize_res=8, max_resize_res=8, crop_res=8)
    assert len(dataset) == 2
    for index in range(2):
        for seed in range(4):
            sample = dataset[(index, seed)]
            assert sample["edited"].shape == (3, 8, 8) and sample["edit"]["c_crossattn"] == "make it red"
    assert dataset.num_skipped == 0


def test_same_tree_same_bytes(root: Path) -> None:
    prepare_dataset.main([str(root)])
    first = (root / "seeds.json").read_bytes()
    (root / "seeds.json").unlink()
    os.utime(root / "0000001", (0, 0))  # listing order and times do not matter
    prepare_dataset.main([str(root)])
    assert (root / "seeds.json").read_bytes() == first


def test_nothing_to_index_leaves_seeds_json_alone(tmp_path: Path, capsys) -> None:
    root = tmp_path / "pairs"
    folder(root, "0000001", ["1_0.jpg"], EDIT)
    (root / "seeds.json").write_text("[]")
    assert prepare_dataset.main([str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("prepare_dataset.py: error: ") and "no prompt folder" in err and "\n" not in err
    assert (root / "seeds.json").read_text() == "[]"


def test_not_a_folder(tmp_path: Path, capsys) -> None:
    assert prepare_dataset.main([str(tmp_path / "missing")]) == 2
    assert "missing: not a folder" in capsys.readouterr().err


def test_a_failed_write_keeps_the_old_index(root: Path, monkeypatch) -> None:
    (root / "seeds.json").write_text("old")

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        prepare_dataset.run(root)
    assert (root / "seeds.json").read_text() == "old"
    assert [p.name for p in root.iterdir() if p.name.endswith(".tmp")] == []
