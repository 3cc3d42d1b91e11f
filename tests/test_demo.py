"""The embedded default end to end, shrunk: scripts/quickstart.sh (what `make demo` runs) on the
first 40 emojis, 2 training steps and 2 sampler steps per edit, in a temporary folder.

It exercises every stage the real demo runs (OpenMoji data -> the shipped reference model's edits ->
an editing model trained through main.py on the reference model's autoencoder -> the fresh model's
edits, instruction off, fixed instructions, the autoencoder's ceiling -> table -> grids); the quality
of a two-step model is not the point, only that each stage hands the next what it needs. The
reference model's quality is tests/test_reference_model.py's job.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("resvg_py")


@pytest.mark.slow
def test_quickstart_runs_every_stage(tmp_path):
    env = {
        **os.environ,
        "PY": sys.executable,
        "DATA": str(tmp_path / "data"),
        "LOGDIR": str(tmp_path / "logs"),
        "OUT": str(tmp_path / "out"),
        "LIMIT": "40",
        "EDIT_STEPS": "2",
        "PER_KIND": "1",
        "SAMPLE_STEPS": "2",
    }
    run = subprocess.run(["bash", "scripts/quickstart.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for stage in ("1/5", "2/5", "3/5", "4/5", "5/5", "done"):
        assert stage in run.stdout

    out = tmp_path / "out"
    table = json.loads((out / "metrics.json").read_text())
    assert table["runs"] == ["reference", "fresh"]
    methods = {row["method"] for row in table["rows"]}
    for run in ("reference", "fresh"):
        assert {f"{run}: model", f"{run}: instruction off (cfg_text 0)", f"{run}: make it red"} <= methods
        report = json.loads((out / run / "metrics.json").read_text())
        expected = ["model", "model_keep_lines", "no_text", "autoencoder", "input_unchanged", "flat_fill"]
        assert report["methods"] == expected
        assert report["results"]["model"]["all"]["pairs"] == report["pairs_scored"] == 3  # PER_KIND 1, 3 kinds
        predictions = sorted(p.name for p in (out / run / "pred").glob("*.png"))
        assert predictions == sorted(p.name for p in (out / run / "pred_notext").glob("*.png"))
        assert len(predictions) == 3 and Image.open(out / run / "pred" / predictions[0]).size == (64, 64)
        fixed = len(list((out / run / "fixed").glob("*.png")))
        assert fixed and fixed % 3 == 0  # up to 3 held-out sketches (40 emojis hold fewer) x red, blue, green
        grid = Image.open(out / run / "grid.png")
        assert grid.height == 128 * (1 + 3 + fixed)
    assert (out / "grid.png").read_bytes() == (out / "reference" / "grid.png").read_bytes()

    # the editing model trained here (under LOGDIR, not the repository's logs/) on the data built here
    config = "".join(path.read_text() for path in (tmp_path / "logs" / "openmoji-edit" / "configs").glob("*.yaml"))
    assert str(tmp_path / "data" / "train") in config and "models/openmoji-64/edit.safetensors" in config
