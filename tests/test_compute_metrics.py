"""metrics/compute_metrics.py on a tiny editing model and a tiny CLIP: the tables, the plot and the edits it
writes, its numbers recomputed from the saved edits, both dataset layouts, and one-line errors."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from clip_fixtures import write_tiny_clip
from helpers import ROOT, TINY_CONFIG, make_edit_dataset, tiny_model
from omegaconf import OmegaConf
from PIL import Image

from ldm.modules.encoders.clip_image import ClipSimilarity
from metrics import compute_metrics

CFG_IMAGE = ("1.0", "2.0")


def add_captions(root: Path) -> Path:
    """make_edit_dataset writes only "edit"; add the input/output captions InstructPix2Pix prompt.json files carry."""
    for prompt_file in root.glob("*/prompt.json"):
        prompt = json.loads(prompt_file.read_text())
        color = prompt["edit"].removeprefix("color it ")
        prompt_file.write_text(json.dumps({**prompt, "input": "a circle", "output": f"a {color} circle"}))
    return root


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("compute_metrics")
    torch.save({"state_dict": tiny_model().state_dict()}, root / "tiny.ckpt")
    OmegaConf.save({"model": OmegaConf.load(TINY_CONFIG).model}, root / "tiny.yaml")
    clip_config, clip_weights = write_tiny_clip(root / "clip")
    data = add_captions(make_edit_dataset(root / "data", n=8))  # test split by position: the last entry
    return {"root": root, "ckpt": root / "tiny.ckpt", "config": root / "tiny.yaml", "clip_config": clip_config,
            "clip_weights": clip_weights, "data": data}  # fmt: skip


def cli_args(files: dict[str, Path], out: Path, *extra: str, data: Path | None = None) -> list[str]:
    return [
        "--config", str(files["config"]), "--ckpt", str(files["ckpt"]), "--data", str(data or files["data"]),
        "--clip-model", str(files["clip_config"]), "--clip-weights", str(files["clip_weights"]),
        "--steps", "2", "--resolution", "32", "--device", "cpu", "--out", str(out), *extra,
    ]  # fmt: skip


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def test_sweep_writes_tables_plot_and_edits(files, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    extra = ["--split", "train", "--num-samples", "2", "--cfg-image", *CFG_IMAGE, "--flat-color", "#EA5A47"]
    assert compute_metrics.main(cli_args(files, out, *extra)) == 0
    assert "clip_direction" in capsys.readouterr().out

    columns, summary = read_csv(out / "clip_metrics.csv")
    assert columns == ["cfg_text", "cfg_image", "n", "clip_direction", "clip_image", "clip_text_out"]
    settings = [(float(r["cfg_text"]), float(r["cfg_image"]), int(r["n"])) for r in summary]
    assert settings == [(7.5, 1.0, 2), (7.5, 2.0, 2)]
    for row in summary:
        for key in ("clip_direction", "clip_image", "clip_text_out"):
            assert math.isfinite(float(row[key])) and -1 <= float(row[key]) <= 1, (key, row)

    png = Image.open(out / "clip_metrics.png")
    assert png.format == "PNG" and png.size == (640, 480)
    names = ["text_7.5_image_1", "text_7.5_image_2"]
    for name in names:
        assert sorted(p.name for p in (out / "edits" / name).iterdir()) == ["0000.png", "0001.png"]
    assert not list(out.rglob("*.tmp"))

    # the numbers, recomputed from the saved edits and the inputs with the same CLIP
    _, per_sample = read_csv(out / "clip_per_sample.csv")
    assert len(per_sample) == 4
    clip = ClipSimilarity(files["clip_config"], files["clip_weights"])
    pixels = lambda path: torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy()).permute(2, 0, 1) / 255
    for row in per_sample:
        prompt = json.loads((files["data"] / row["pair_id"] / "prompt.json").read_text())
        seed = json.loads((files["data"] / "seeds.json").read_text())[int(row["pair_id"])][1][0]
        edit = out / "edits" / f"text_7.5_image_{float(row['cfg_image']):g}" / f"{row['pair_id']}.png"
        image_0, image_1 = pixels(files["data"] / row["pair_id"] / f"{seed}_0.jpg"), pixels(edit)
        with torch.no_grad():
            expected = clip(image_0[None], image_1[None], [prompt["input"]], [prompt["output"]])
        got = [float(row[k]) for k in ("clip_text_in", "clip_text_out", "clip_direction", "clip_image")]
        assert got == pytest.approx([float(e) for e in expected], abs=1e-5)
    for row in summary:
        rows = [r for r in per_sample if float(r["cfg_image"]) == float(row["cfg_image"])]
        assert float(row["clip_image"]) == pytest.approx(np.mean([float(r["clip_image"]) for r in rows]), abs=1e-9)

    report = json.loads((out / "colorization.json").read_text())
    assert report["pairs_scored"] == 2 and report["methods"][:2] == names
    assert report["settings"]["flat_color"]["hex"] == "#EA5A47"
    assert (out / "colorization.csv").is_file()
    assert json.loads((out / "settings.json").read_text())["cfg_image"] == [1.0, 2.0]


def test_openmoji_layout_uses_the_split_folder_and_its_manifest(files, tmp_path) -> None:
    """python -m dataset_creation.openmoji writes <out>/<split>/seeds.json (whole split) and manifest.json."""
    root = tmp_path / "openmoji"
    add_captions(make_edit_dataset(root / "test", n=3))
    (root / "manifest.json").write_text(json.dumps({"most_common_fill": {"hex": "#FCEA2B"}}))
    out = tmp_path / "out"
    assert compute_metrics.main(cli_args(files, out, "--cfg-image", "1.5", data=root)) == 0
    _, summary = read_csv(out / "clip_metrics.csv")
    assert [int(r["n"]) for r in summary] == [3]  # every entry of test/, not a positional 5%
    assert json.loads((out / "colorization.json").read_text())["settings"]["flat_color"]["hex"] == "#FCEA2B"


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("compute_metrics.py: error: "), errors
    return errors[0]


def test_bad_inputs_give_one_line(files, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    base = cli_args(files, out, "--split", "train", "--num-samples", "1", "--cfg-image", "1.5")

    def error(*replace: str, extra: tuple[str, ...] = ()) -> str:
        args = list(base)
        for flag, value in zip(replace[::2], replace[1::2], strict=True):
            args[args.index(flag) + 1] = value
        assert compute_metrics.main([*args, *extra]) == 2
        return one_error_line(capsys)

    assert "no such folder" in error("--data", str(tmp_path / "nothing"))
    (tmp_path / "empty").mkdir()
    assert "no seeds.json" in error("--data", str(tmp_path / "empty"))
    assert "--ckpt" in error("--ckpt", str(tmp_path / "none.ckpt"))
    assert "--clip-weights" in error("--clip-weights", str(tmp_path / "none.pt"))
    assert "--clip-model" in error("--clip-model", str(tmp_path / "none.json"))
    assert "--splits" in error(extra=("--splits", "0.5", "0.5", "0.5"))
    assert "--colorization on" in error(extra=("--colorization", "on"))
    assert "not a hex color" in error(extra=("--flat-color", "reddish"))
    (tmp_path / "file").write_text("")
    assert "is a file" in error("--out", str(tmp_path / "file"))

    no_captions = make_edit_dataset(tmp_path / "plain", n=2)  # prompt.json with "edit" only
    message = error("--data", str(no_captions))
    assert "prompt.json" in message and "'input' / 'output'" in message

    wrong = json.loads(files["clip_config"].read_text())
    wrong["embed_dim"] = 16
    (tmp_path / "wrong.json").write_text(json.dumps(wrong))
    assert "cannot load it" in error("--clip-model", str(tmp_path / "wrong.json"))
    assert not out.exists()


def test_script_entry_point(files, tmp_path) -> None:
    """Run as a script: imports resolve from the repository root; a mistake is one line, no traceback."""
    args = cli_args(files, tmp_path / "out", data=tmp_path / "nothing")
    result = subprocess.run(
        [sys.executable, str(ROOT / "metrics" / "compute_metrics.py"), *args],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    expected = f"compute_metrics.py: error: --data {tmp_path / 'nothing'}: no such folder"
    assert result.stderr.strip().splitlines() == [expected]
