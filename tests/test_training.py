"""Training through main.py on a tiny config: learning, DDP, exact resume, signals, bad input."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import ROOT, TINY_CONFIG, kill_main_when, make_edit_dataset, run_main

from ldm.checkpoint import read_checkpoint

pytestmark = pytest.mark.slow  # each test starts main.py (seconds of imports) and trains


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_edit_dataset(tmp_path_factory.mktemp("data") / "edits", n=40)


def train_args(dataset: Path, logdir: Path, name: str, *extra: str) -> list[str]:
    return [
        "--base", str(TINY_CONFIG), "--train", "--name", name, "--logdir", str(logdir),
        f"data.params.train.params.path={dataset}", *extra,
    ]  # fmt: skip


def losses(run_dir: Path) -> list[float]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return [float(r["train/loss_simple"]) for r in csv.DictReader(f) if r.get("train/loss_simple")]


def checkpoint(path: Path) -> dict:
    return read_checkpoint(path)


def assert_states_equal(a: dict, b: dict, atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=atol, msg=key)


def test_trains_logs_checkpoints_and_config_reproduces(dataset, tmp_path):
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "main.py"),
         *train_args(dataset, tmp_path, "run", "--max_steps", "30", "--logger", "csv")],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    run_dir = tmp_path / "run"
    deadline = time.time() + 300
    while not (run_dir / "checkpoints" / "step-000005.ckpt").exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGUSR1)  # clusters send this before pre-emption: save and go on
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert "SIGUSR1: saving" in err

    values = losses(run_dir)
    assert len(values) == 30
    first, last = sum(values[:10]) / 10, sum(values[-10:]) / 10
    assert last < first, (first, last)
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 30
    assert sorted(p.name for p in (run_dir / "images" / "train").glob("*.png"))[:1] == ["step-000005.png"]
    assert not list(run_dir.rglob(".*.tmp")), "no temporary files left behind"

    # The saved merged config alone (no overrides) reproduces the run.
    saved = sorted((run_dir / "configs").glob("*-project.yaml"))
    assert len(saved) == 1
    again = run_main(["--base", str(saved[0]), "--train", "--name", "again", "--logdir", str(tmp_path),
                      "--max_steps", "30", "--logger", "csv"], cwd=tmp_path)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert losses(tmp_path / "again") == pytest.approx(values, abs=1e-6)
    assert_states_equal(
        checkpoint(run_dir / "checkpoints" / "last.ckpt")["state_dict"],
        checkpoint(tmp_path / "again" / "checkpoints" / "last.ckpt")["state_dict"],
    )


def test_ddp_two_cpu_processes(dataset, tmp_path):
    dump = tmp_path / "dump"
    result = run_main(
        train_args(
            dataset, tmp_path, "ddp", "--accelerator", "cpu", "--devices", "2", "--max_steps", "10",
            "lightning.callbacks.dump.target=helpers.DumpWeights", f"lightning.callbacks.dump.params.out_dir={dump}",
        ),
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = torch.load(dump / "rank0.pt"), torch.load(dump / "rank1.pt")
    assert_states_equal(rank0, rank1, atol=0)
    assert [p.name for p in tmp_path.iterdir() if p.name not in ("dump",)] == ["ddp"], "exactly one run directory"
    ckpts = sorted(p.name for p in (tmp_path / "ddp" / "checkpoints").iterdir())
    assert ckpts == ["last.ckpt", "step-000005.ckpt", "step-000010.ckpt"]
    assert checkpoint(tmp_path / "ddp" / "checkpoints" / "last.ckpt")["global_step"] == 10


def test_resume_after_sigkill_is_exact(dataset, tmp_path):
    n = 5
    straight = run_main(train_args(dataset, tmp_path, "straight", "--max_steps", str(2 * n)), cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr[-3000:]

    args = train_args(dataset, tmp_path, "killed", "--max_steps", str(2 * n))
    step_n = tmp_path / "killed" / "checkpoints" / f"step-{n:06d}.ckpt"
    kill_main_when(args, tmp_path, step_n)

    resumed = run_main(["--resume", str(step_n), "--train", "--max_steps", str(2 * n)], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = checkpoint(tmp_path / "straight" / "checkpoints" / "last.ckpt")
    b = checkpoint(tmp_path / "killed" / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 2 * n
    assert any(k.startswith("model_ema.") for k in a["state_dict"])
    assert_states_equal(a["state_dict"], b["state_dict"])  # weights and EMA weights
    opt_a, opt_b = a["optimizer_states"][0], b["optimizer_states"][0]
    for pid in opt_a["state"]:
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(opt_a["state"][pid][key], opt_b["state"][pid][key], rtol=0, atol=1e-6)
    assert a["lr_schedulers"][0]["_last_lr"] == pytest.approx(b["lr_schedulers"][0]["_last_lr"], abs=1e-12)


def test_moved_run_trains_longer_into_its_own_last_ckpt(dataset, tmp_path):
    first = run_main(train_args(dataset, tmp_path, "cluster", "--max_steps", "2", "--logger", "csv"), cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    (tmp_path / "cluster").rename(tmp_path / "laptop")  # a run directory copied elsewhere, then trained on
    longer = run_main(["--resume", str(tmp_path / "laptop"), "--train", "--max_steps", "4"], cwd=tmp_path)
    assert longer.returncode == 0, longer.stderr[-3000:]
    checkpoints = sorted(p.name for p in (tmp_path / "laptop" / "checkpoints").iterdir())
    assert not [name for name in checkpoints if name.startswith("last-")], checkpoints
    assert checkpoint(tmp_path / "laptop" / "checkpoints" / "last.ckpt")["global_step"] == 4


def test_released_checkpoint_given_to_resume_fine_tunes(dataset, tmp_path):
    first = run_main(train_args(dataset, tmp_path, "base", "--max_steps", "2"), cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    released = tmp_path / "released.ckpt"
    state = checkpoint(tmp_path / "base" / "checkpoints" / "last.ckpt")["state_dict"]
    torch.save({"state_dict": state, "global_step": 2}, released)  # weights only, like a released file

    tuned = run_main(["--resume", str(released), *train_args(dataset, tmp_path, "tuned", "--max_steps", "2")],
                     cwd=tmp_path)  # fmt: skip
    assert tuned.returncode == 0, tuned.stderr[-3000:]
    assert "starting a new run initialised from it" in tuned.stderr
    assert checkpoint(tmp_path / "tuned" / "checkpoints" / "last.ckpt")["global_step"] == 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["data.params.train.params.path=/nonexistent/edits"], "/nonexistent/edits"),
        (["model.params.unet_config.params.num_heds=4"], "model.params.unet_config.params.num_heds"),
        (["--resume", "/nonexistent/run"], "--resume /nonexistent/run does not exist"),
        (["--base", "/nonexistent.yaml"], "config file /nonexistent.yaml does not exist"),
        (["--strategy", "fsdp", "--accelerator", "cpu"], "the trainer settings (lightning.trainer and the flags)"),
    ],
)
def test_bad_input_is_one_clear_line(dataset, tmp_path, extra, message):
    assert_one_error(run_main(train_args(dataset, tmp_path, "bad", "--max_steps", "2", *extra), cwd=tmp_path), message)
    assert not list(tmp_path.rglob("*.ckpt")), "no checkpoint written"


def assert_one_error(result: subprocess.CompletedProcess, message: str) -> None:
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("main.py: error:")]
    assert len(error_lines) == 1 and message in error_lines[0], result.stderr[-2000:]


def test_yaml_data_and_logdir_mistakes_are_one_line(dataset, tmp_path):
    (tmp_path / "bad.yaml").write_text("model: [\n")
    corrupt = shutil.copytree(dataset, tmp_path / "corrupt")
    (corrupt / "seeds.json").write_text('[["0000", [100]')
    unreadable = shutil.copytree(dataset, tmp_path / "unreadable")
    for image in unreadable.rglob("*.jpg"):
        image.write_bytes(b"not an image")
    cases = [
        (["--base", str(tmp_path / "bad.yaml")], "bad.yaml is not valid YAML (while parsing a flow node"),
        ([f"data.params.train.params.path={corrupt}"], "cannot read " + str(corrupt / "seeds.json")),
        # raised in a DataLoader worker: the worker's traceback is cut to the line
        ([f"data.params.train.params.path={unreadable}", "data.params.num_workers=1"], "no readable sample in"),
    ]
    if Path("/proc/self").is_dir():  # a folder no one can make anything in, root included
        cases.append((["--logdir", "/proc/sp2p-logs"], "--logdir: cannot make the run folder"))
    for extra, message in cases:
        assert_one_error(run_main(train_args(dataset, tmp_path / "logs", "bad", "--max_steps", "2", *extra),
                                  cwd=tmp_path), message)  # fmt: skip
    assert not list(tmp_path.rglob("*.ckpt")), "no checkpoint written"
