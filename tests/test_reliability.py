"""Faults a user or an operator meets: SIGKILL at any moment of a training run, a full disk, an output
folder built with other settings, CLIP weights of another model. Each ends in a result that is right
or in one line and a documented exit code, and leaves no temporary file behind."""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ROOT, TINY_CONFIG, main_env, make_edit_dataset, tiny_model
from omegaconf import OmegaConf
from PIL import Image, ImageDraw

from ldm.checkpoint import read_checkpoint
from ldm.io import TEMP_NAME


def temp_files(folder: Path) -> list[Path]:
    """Every temporary file or folder of the atomic writer (`ldm.io.TEMP_NAME`) or named *.tmp under `folder`."""
    return sorted(p for p in folder.rglob("*") if TEMP_NAME.fullmatch(p.name) or ".tmp" in p.suffixes)


# ---------------------------------------------------------------------------------------------------
# Fault injection: SIGKILL a tiny training run at seeded random moments and rerun it until it is done.

STEPS = 12  # optimizer steps of the run
EVERY = 2  # a checkpoint every EVERY steps: step-N.ckpt, then last.ckpt
KILLS = 10


def one_thread_env() -> dict[str, str]:
    return {**main_env(), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # both runs compute alike


def start_run(dataset: Path, logdir: Path, name: str, log: Path) -> subprocess.Popen:
    """main.py training the tiny model for STEPS steps in <logdir>/<name>; rerunning it resumes."""
    args = ["--base", str(TINY_CONFIG), "--train", "--name", name, "--logdir", str(logdir), "--logger", "csv",
            "--max_steps", str(STEPS), "--checkpoint_every", str(EVERY), f"data.params.train.params.path={dataset}",
            "lightning.trainer.log_every_n_steps=1", "lightning.callbacks.image_logger.params.batch_frequency=3",
            "lightning.trainer.enable_progress_bar=false"]  # fmt: skip
    with open(log, "a") as out:
        return subprocess.Popen([sys.executable, str(ROOT / "main.py"), *args], cwd=logdir, env=one_thread_env(),
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip


def newest_step(run_dir: Path) -> int:
    """The step a rerun resumes from: that of the newest readable checkpoint (0 when there is none)."""
    steps = [0]
    for path in (run_dir / "checkpoints").glob("*.ckpt"):
        try:
            steps.append(int(read_checkpoint(path)["global_step"]))
        except Exception:  # a truncated file: main.py passes over it too
            pass
    return max(steps)


def checkpoint_temps(run_dir: Path) -> set[str]:
    try:
        return {e.name for e in os.scandir(run_dir / "checkpoints") if TEMP_NAME.fullmatch(e.name)}
    except FileNotFoundError:
        return set()


def kill_when(process: subprocess.Popen, run_dir: Path, trigger: tuple[str, float]) -> tuple[bool, float | None]:
    """SIGKILL `process` at `trigger`: (False if it exited first, the seconds from its start to its first
    checkpoint write or None if there was none). ("write", j): while the j-th checkpoint
    temporary file of this process exists (odd j: a step-N.ckpt, even j: the last.ckpt after it);
    ("after_write", s): s seconds after its first checkpoint write began; ("delay", s): s seconds after
    its start (import, resume, logger set-up)."""
    kind, value = trigger
    start, stale, seen, first_write = time.monotonic(), checkpoint_temps(run_dir), set(), None
    killed = False
    while not killed and process.poll() is None:
        new = checkpoint_temps(run_dir) - stale - seen
        if new:
            seen |= new  # the temporary files of this process met so far
            first_write = first_write or time.monotonic()
        if (kind == "write" and new and len(seen) >= value
                or kind == "after_write" and first_write and time.monotonic() - first_write >= value
                or kind == "delay" and time.monotonic() - start >= value):  # fmt: skip
            process.send_signal(signal.SIGKILL)
            process.wait()
            killed = True
        else:
            time.sleep(0.002)
    return killed, None if first_write is None else first_write - start


def plan(rng: random.Random, resume_step: int, startup: float | None) -> tuple[str, float]:
    """A kill moment that comes before the run ends (at least one checkpoint write is left after it).
    A "delay" kill falls within `startup`, the shortest start-up measured so far (seconds to the first
    checkpoint write), so it lands before the first write however fast this machine is; it is not
    drawn until one start-up has been measured."""
    writes_left = 2 * (STEPS - resume_step) // EVERY
    kind = rng.choice(["write", "write", "after_write"] + ["delay"] * (startup is not None))
    if kind == "write":
        return kind, rng.randint(1, max(1, min(3, writes_left - 2)))
    if kind == "after_write":
        return kind, rng.uniform(0.0, 1.0) if writes_left > 4 else 0.0
    return kind, rng.uniform(0.1, 0.9) * startup


def rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_sigkill_at_random_moments_then_rerun_gives_the_uninterrupted_run(tmp_path: Path) -> None:
    """Acceptance 2 of issue 14. About 12 process starts of main.py (~15 s each on 2 cores) dominate the cost."""
    dataset = make_edit_dataset(tmp_path / "data", n=8)
    whole = start_run(dataset, tmp_path, "whole", tmp_path / "whole.log")  # alongside: one thread each
    rng, kills, log = random.Random(14), [], tmp_path / "killed.log"
    startups: list[float] = []  # seconds from a process start to its first checkpoint write, as measured
    while len(kills) < KILLS:
        resume_step = newest_step(tmp_path / "killed")
        trigger = plan(rng, resume_step, min(startups, default=None))
        process = start_run(dataset, tmp_path, "killed", log)
        killed, startup = kill_when(process, tmp_path / "killed", trigger)
        if startup is not None:
            startups.append(startup)
        if killed:
            kills.append((resume_step, trigger))
        else:
            pytest.fail(f"exit {process.returncode} before the kill {trigger}:\n{log.read_text()[-4000:]}")
    final = start_run(dataset, tmp_path, "killed", log)
    assert final.wait(timeout=600) == 0, log.read_text()[-4000:]
    assert whole.wait(timeout=600) == 0, (tmp_path / "whole.log").read_text()[-4000:]

    a = read_checkpoint(tmp_path / "whole" / "checkpoints" / "last.ckpt")
    b = read_checkpoint(tmp_path / "killed" / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == STEPS
    assert a["state_dict"].keys() == b["state_dict"].keys()
    differ = [k for k, v in a["state_dict"].items() if not torch.equal(v, b["state_dict"][k])]
    assert not differ, f"{len(differ)} tensors differ after the kills {kills}, e.g. {differ[:3]}"
    assert temp_files(tmp_path / "killed") == []
    losses = [int(r["step"]) for r in rows(tmp_path / "killed") if r["train/loss_simple"]]
    assert losses == list(range(STEPS)), f"logged steps {losses} after the kills {kills}"
    assert rows(tmp_path / "killed") == rows(tmp_path / "whole"), kills  # every row once, with the same values


# ---------------------------------------------------------------------------------------------------
# A full disk: a small tmpfs mounted by the test (root only), filled up by a file the test can delete.


@pytest.fixture
def disk(tmp_path: Path):
    """An empty 2 MiB tmpfs at <tmp_path>/disk, unmounted at the end; skipped where it cannot be mounted."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("a full disk is a small tmpfs mounted by the test, which needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    command = ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def fill(disk: Path, leave: int = 0) -> Path:
    """Fill `disk` up, then free `leave` bytes (whole pages); returns the filling file (delete it to make room)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for chunk in (65536, 4096, 1):
            while True:
                try:
                    os.write(fd, b"\0" * chunk)
                except OSError:
                    break
    finally:
        os.close(fd)
    os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


def one_line(stderr: str, prog: str, *fragments: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: ") and "Traceback" not in stderr, stderr[-3000:]
    assert all(f in lines[0] for f in fragments), lines[0]
    return lines[0]


def noise_image(size: int = 256) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8))


@pytest.mark.parametrize("name", ["out.jpg", "out.webp", "out.png"])
def test_an_image_saved_on_a_full_disk_raises_and_leaves_nothing(disk: Path, name: str) -> None:
    from ldm.image_io import save_image_atomic

    fill(disk, leave=8192)  # room for the first pages of the file, not for all of it (noise compresses badly)
    with pytest.raises(OSError, match="No space left") as raised:
        save_image_atomic(noise_image(), disk / name)
    assert raised.value.filename == str(disk / name)  # the file asked for, not the temporary one
    assert sorted(p.name for p in disk.iterdir()) == ["filler"]


@pytest.fixture(scope="module")
def editor_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny editing checkpoint, its config and a sketch (as tests/test_edit_cli.py)."""
    root = tmp_path_factory.mktemp("editor")
    torch.save({"state_dict": tiny_model().state_dict()}, root / "tiny.ckpt")
    OmegaConf.save({"model": OmegaConf.load(TINY_CONFIG).model}, root / "tiny.yaml")
    sketch = Image.new("RGB", (32, 32), "white")
    ImageDraw.Draw(sketch).ellipse((4, 4, 26, 27), outline="black", width=2)
    sketch.save(root / "in.png")
    return {"ckpt": root / "tiny.ckpt", "config": root / "tiny.yaml", "input": root / "in.png"}


def edit_args(files: dict[str, Path], output: Path) -> list[str]:
    return ["--input", str(files["input"]), "--output", str(output), "--edit", "color it red", "--seed", "0",
            "--config", str(files["config"]), "--ckpt", str(files["ckpt"]), "--resolution", "32",
            "--steps", "2"]  # fmt: skip


def test_edit_cli_on_a_full_disk_is_one_line_and_leaves_nothing(disk, editor_files, capsys) -> None:
    import edit_cli

    fill(disk)
    assert edit_cli.main(edit_args(editor_files, disk / "out.jpg")) == 1
    captured = capsys.readouterr()
    one_line(captured.err, "edit_cli.py", f"cannot write {disk / 'out.jpg'}", "No space left on device")
    assert "wrote" not in captured.out
    assert sorted(p.name for p in disk.iterdir()) == ["filler"]


def test_edit_cli_out_of_cpu_memory_is_one_line(editor_files, tmp_path, capsys, monkeypatch) -> None:
    """torch's CPU allocator raises RuntimeError (CUDA's OutOfMemoryError is turned into MemoryError by ImageEditor)."""
    import edit_cli
    from ldm.inference import ImageEditor

    monkeypatch.setattr(ImageEditor, "edit", lambda *args, **kwargs: torch.empty(2**50, dtype=torch.uint8))
    assert edit_cli.main(edit_args(editor_files, tmp_path / "out.png")) == 1
    one_line(capsys.readouterr().err, "edit_cli.py", "out of memory on the CPU (asked for 1048576.0 GiB more)",
             "--resolution")  # fmt: skip
    assert not (tmp_path / "out.png").exists()


def openmoji(out: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "dataset_creation.openmoji", "--out", str(out), "--no-progress", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_openmoji_on_a_full_disk_is_one_line_and_a_rerun_finishes(disk: Path) -> None:
    build = ["--size", "32", "--limit", "20", "--workers", "2"]
    filler = fill(disk, leave=400_000)  # about a third of the build (4 KiB pages per file)
    failed = openmoji(disk / "om", *build)
    assert failed.returncode == 1, failed.stderr[-3000:]
    one_line(failed.stderr, "openmoji", f"--out {disk / 'om'}", "No space left on device", "run the same command")
    assert temp_files(disk) == []
    filler.unlink()
    done = openmoji(disk / "om", *build)
    assert done.returncode == 0 and "pairs (" in done.stderr, done.stderr[-3000:]
    assert temp_files(disk) == []


def test_openmoji_refuses_a_folder_built_with_other_settings(tmp_path: Path, capsys) -> None:
    from dataset_creation.openmoji import cli

    out = tmp_path / "om"
    assert cli.main(["--out", str(out), "--size", "32", "--limit", "3", "--workers", "1", "--no-progress"]) == 0
    capsys.readouterr()
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    status = cli.main(["--out", str(out), "--size", "16", "--limit", "3", "--kinds", "original", "--workers", "1",
                       "--no-progress"])  # fmt: skip
    assert status == 2
    one_line(capsys.readouterr().err, "openmoji", f"--out {out}", "--size 32 (this build: 16)",
             "--kinds original,recolor,edit (this build: original)", "another --out", f"delete {out}")  # fmt: skip
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_generate_txt_dataset_on_a_full_disk_is_one_line_and_a_rerun_finishes(disk, tmp_path, capsys, monkeypatch):
    from test_generate_txt_dataset import RUN_ARGS, FakeOpenAI

    from dataset_creation import generate_txt_dataset as gtd

    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    source, target = tmp_path / "captions.txt", disk / "edits.jsonl"
    source.write_text("".join(f"a red car number {i}\n" for i in range(120)), encoding="utf-8")
    filler = fill(disk, leave=4096)  # room for about 40 lines: the run stops in the middle of one
    with FakeOpenAI() as server:
        argv = ["--input", str(source), "--output", str(target), "--base-url", server.url, *RUN_ARGS]
        assert gtd.main(argv) == 1
        one_line(capsys.readouterr().err, "generate_txt_dataset.py", f"--output {target}", "No space left on device",
                 "run again")  # fmt: skip
        kept = target.read_text(encoding="utf-8")
        assert kept.endswith("\n") and all(json.loads(line)["id"] for line in kept.splitlines())
        filler.unlink()
        assert gtd.main(argv) == 0
    records = [json.loads(line) for line in target.read_text(encoding="utf-8").splitlines()]
    assert len({r["id"] for r in records}) == len(records) == 120 and target.read_text().startswith(kept)


# ---------------------------------------------------------------------------------------------------
# CLIP weights of another model given to metrics/compute_metrics.py.


def test_compute_metrics_with_clip_weights_of_another_model_is_one_line(tmp_path, capsys) -> None:
    from clip_fixtures import TINY_CLIP_CONFIG, write_tiny_clip
    from test_compute_metrics import add_captions

    from metrics import compute_metrics

    torch.save({"state_dict": tiny_model().state_dict()}, tmp_path / "tiny.ckpt")
    OmegaConf.save({"model": OmegaConf.load(TINY_CONFIG).model}, tmp_path / "tiny.yaml")
    data = add_captions(make_edit_dataset(tmp_path / "data", n=2))
    config, weights = write_tiny_clip(tmp_path / "clip")
    (tmp_path / "garbage.pt").write_bytes(b"\x80\x04 not a pickle of tensors" * 8)
    wider = {**TINY_CLIP_CONFIG, "embed_dim": 16, "vision_cfg": {**TINY_CLIP_CONFIG["vision_cfg"], "layers": 3}}
    (tmp_path / "wider.json").write_text(json.dumps(wider))

    def error(clip_model: str, clip_weights: Path) -> str:
        args = ["--config", str(tmp_path / "tiny.yaml"), "--ckpt", str(tmp_path / "tiny.ckpt"), "--data", str(data),
                "--split", "train", "--num-samples", "1", "--cfg-image", "1.5", "--clip-model", clip_model,
                "--clip-weights", str(clip_weights), "--steps", "2", "--resolution", "32", "--device", "cpu",
                "--out", str(tmp_path / "out")]  # fmt: skip
        assert compute_metrics.main(args) == 2
        return one_line(capsys.readouterr().err, "compute_metrics.py", f"--clip-weights {clip_weights}")

    assert "cannot load it into ViT-B-32" in error("ViT-B-32", weights)  # open_clip's assertion on the embedding
    assert "cannot load it into" in error(str(tmp_path / "wider.json"), weights)  # strict loading
    assert "cannot load it into" in error(str(config), tmp_path / "garbage.pt")  # not a state dict at all
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------------
# main.py --logger naming a package that is not installed (both are, in this project's venv: hidden here).


def test_a_logger_whose_package_is_missing_is_one_line(tmp_path, capsys, monkeypatch) -> None:
    import importlib.util

    import main

    packages = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",)}
    hidden = {p for needs in packages.values() for p in needs}
    real_find_spec = importlib.util.find_spec
    def find_spec(name: str, *args):
        return None if name in hidden else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    dataset = make_edit_dataset(tmp_path / "data", n=2)
    for name in packages:
        args = ["--base", str(TINY_CONFIG), "--train", "--logdir", str(tmp_path / "logs"), "--logger", name,
                f"data.params.train.params.path={dataset}"]  # fmt: skip
        assert main.main(args) == 2
        one_line(capsys.readouterr().err, "main.py", f"--logger {name}: ", "is not installed", "--logger csv")
    assert not (tmp_path / "logs").exists()


def test_a_resumed_csv_log_drops_a_cut_short_row_and_puts_back_the_checkpoint_row(tmp_path) -> None:
    """What a kill leaves in metrics.csv (a cut-short last row, a missing row after the checkpoint), without main.py."""
    from ldm.loggers import ResumableCSVLogger

    folder = tmp_path / "csv"
    folder.mkdir()
    (folder / "metrics.csv").write_text("epoch,loss,lr,step\n,,0.1,0\n0,0.9,,0\n,,0.2,1\n0,0.8,,1\n,,0.3,2\n0,0.7")
    row = {"step": 2, "metrics": {"loss": 0.75, "epoch": 0}}  # PendingLogRow's, for a checkpoint at step 3
    logger = ResumableCSVLogger(save_dir=tmp_path, name="", version="csv", resume_step=3, resume_row=row)
    logger.log_metrics({"lr": 0.4}, step=3)
    logger.save()
    assert (folder / "metrics.csv").read_text().splitlines() == [
        "epoch,loss,lr,step", ",,0.1,0", "0,0.9,,0", ",,0.2,1", "0,0.8,,1", ",,0.3,2", "0,0.75,,2", ",,0.4,3"
    ]
    assert temp_files(tmp_path) == []
