"""main.py resumes keep the CSV and TensorBoard history and fall back to the newest readable checkpoint."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from helpers import TINY_CONFIG, make_edit_dataset, run_main

from ldm.checkpoint import read_checkpoint

pytestmark = pytest.mark.slow  # each case runs main.py two or three times


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_edit_dataset(tmp_path_factory.mktemp("data") / "edits", n=16)


def train(dataset: Path, logdir: Path, name: str, steps: int, logger: str = "csv", *extra: str) -> str:
    args = ["--base", str(TINY_CONFIG), "--train", "--name", name, "--logdir", str(logdir), "--logger", logger,
            "--max_steps", str(steps), "--checkpoint_every", "3", f"data.params.train.params.path={dataset}",
            "lightning.trainer.log_every_n_steps=1", *extra]  # fmt: skip
    result = run_main(args, cwd=logdir)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr


def logged_steps(run_dir: Path) -> list[int]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        return [int(float(r["step"])) for r in csv.DictReader(f) if r.get("train/loss_simple")]


def test_a_resumed_csv_log_holds_every_step_once(dataset, tmp_path) -> None:
    train(dataset, tmp_path, "whole", 9)
    train(dataset, tmp_path, "resumed", 6)
    before = logged_steps(tmp_path / "resumed")
    train(dataset, tmp_path, "resumed", 9)  # same --name: resumes from last.ckpt at step 6
    assert logged_steps(tmp_path / "resumed") == logged_steps(tmp_path / "whole")
    assert logged_steps(tmp_path / "resumed")[: len(before)] == before  # the rows before the resume are kept


def tensorboard_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} as TensorBoard shows the run (purged events left out)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_a_resumed_tensorboard_log_shows_every_step_once(dataset, tmp_path) -> None:
    pytest.importorskip("tensorboard")
    train(dataset, tmp_path, "whole", 9, "tensorboard")
    train(dataset, tmp_path, "resumed", 9, "tensorboard")
    # as after a kill just after step 3's checkpoint: steps 4-9 are in the log and are trained and logged again
    step3 = tmp_path / "resumed" / "checkpoints" / "step-000003.ckpt"
    result = run_main(["--resume", str(step3), "--train", "--max_steps", "9", "--logger", "tensorboard"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list((tmp_path / "resumed" / "tensorboard").glob("events.out.tfevents.*"))) == 2
    whole, resumed = tensorboard_scalars(tmp_path / "whole"), tensorboard_scalars(tmp_path / "resumed")
    assert "train/loss_simple" in whole and whole.keys() == resumed.keys()
    for tag, points in whole.items():
        assert [step for step, _ in resumed[tag]] == [step for step, _ in points], tag  # each step once
        assert [v for _, v in resumed[tag]] == pytest.approx([v for _, v in points], abs=1e-6), tag


def test_a_truncated_last_ckpt_falls_back_to_the_newest_step_checkpoint(dataset, tmp_path) -> None:
    train(dataset, tmp_path, "run", 6)
    checkpoints = tmp_path / "run" / "checkpoints"
    last = checkpoints / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # a kill in the middle of writing it
    err = train(dataset, tmp_path, "run", 9)
    assert f"passing over {last}" in err and "step-000006.ckpt (step 6)" in err
    assert read_checkpoint(last)["global_step"] == 9
    assert logged_steps(tmp_path / "run") == list(range(len(logged_steps(tmp_path / "run"))))  # no step twice


def one_error(result, *fragments: str) -> None:
    errors = [line for line in result.stderr.splitlines() if line.startswith("main.py: error: ")]
    assert result.returncode == 2 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert all(f in errors[0] for f in fragments), errors[0]


def test_a_resume_with_another_architecture_is_one_line_and_writes_nothing(dataset, tmp_path) -> None:
    train(dataset, tmp_path, "run", 3)
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "run").rglob("*"))
    result = run_main(["--resume", str(tmp_path / "run"), "--train", "--max_steps", "6",
                       "model.params.unet_config.params.model_channels=64"], cwd=tmp_path)  # fmt: skip
    one_error(result, "--resume", "tensors have the wrong shape, e.g. model.diffusion_model.", "trained with")
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "run").rglob("*")) == before
    narrow = run_main(["--resume", str(tmp_path / "run"), "--train", "--max_steps", "6",
                       "model.params.unet_config.params.model_channels=16"], cwd=tmp_path)  # fmt: skip
    one_error(narrow, "model.params.unet_config.params.model_channels: 16", "multiple of 32")


def test_run_folder_and_device_mistakes_are_one_line(dataset, tmp_path) -> None:
    import torch

    (tmp_path / "afile").write_text("not a folder")
    args = ["--base", str(TINY_CONFIG), "--train", f"data.params.train.params.path={dataset}"]
    one_error(run_main([*args, "--logdir", str(tmp_path / "afile")], cwd=tmp_path), "--logdir", "is a file")
    if not torch.cuda.is_available():
        one_error(run_main([*args, "--logdir", str(tmp_path), "--gpus", "0,"], cwd=tmp_path), "no CUDA GPU")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_the_last_step_is_saved_when_max_steps_is_not_a_multiple_of_checkpoint_every(dataset, tmp_path) -> None:
    train(dataset, tmp_path, "odd", 5)  # checkpoints every 3 steps
    checkpoints = tmp_path / "odd" / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("*.ckpt")) == ["last.ckpt", "step-000003.ckpt", "step-000005.ckpt"]
    assert read_checkpoint(checkpoints / "last.ckpt")["global_step"] == 5  # Lightning's own callback left it at 3
    assert read_checkpoint(checkpoints / "step-000005.ckpt")["global_step"] == 5
