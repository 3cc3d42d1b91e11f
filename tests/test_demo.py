"""The embedded default end to end, shrunk: scripts/quickstart.sh (what `make demo` runs) on the
first 40 emojis, 2 training steps per model and 2 sampler steps per edit, in a temporary folder.

It exercises every stage the real demo runs (OpenMoji data -> autoencoder through main.py ->
editing model through main.py, initialised from that autoencoder -> edit_cli batch edits,
instruction off, fixed instructions -> the autoencoder's ceiling -> colorization metrics ->
grid); the quality of two-step models is not the point, only that each stage hands the next
what it needs.
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
        "AE_STEPS": "2",
        "EDIT_STEPS": "2",
        "PER_KIND": "1",
        "SAMPLE_STEPS": "2",
    }
    run = subprocess.run(["bash", "scripts/quickstart.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for stage in ("1/6", "2/6", "3/6", "4/6", "5/6", "6/6", "done"):
        assert stage in run.stdout

    out = tmp_path / "out"
    report = json.loads((out / "metrics.json").read_text())
    assert report["methods"] == ["model", "no_text", "autoencoder", "input_unchanged", "flat_fill"]
    scored = report["results"]["model"]["all"]
    assert scored["pairs"] == report["pairs_scored"] > 0
    assert 0.0 <= scored["palette_accuracy"] <= 1.0 and 0.0 <= scored["line_iou"] <= 1.0

    jobs = [json.loads(line) for line in (out / "jobs.jsonl").read_text().splitlines()]
    fixed = [json.loads(line) for line in (out / "jobs_fixed.jsonl").read_text().splitlines()]
    assert jobs and fixed
    for job in jobs + fixed:
        assert Image.open(job["output"]).size == (64, 64)
    assert len(list((out / "pred_notext").glob("*.png"))) == len(list((out / "autoencoder").glob("*.png"))) == len(jobs)
    grid = Image.open(out / "grid.png")
    assert grid.width > grid.height / 10 and grid.height >= 128 * (len(fixed) + 2)

    # the editing model was built on the autoencoder this run trained, not on the repository's logs/
    config = (tmp_path / "logs" / "openmoji-edit" / "configs").glob("*.yaml")
    assert any(str(tmp_path / "logs" / "openmoji-autoencoder") in path.read_text() for path in config)
