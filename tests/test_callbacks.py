"""Callbacks and plugins of main.py, in process."""

import io
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from ldm.callbacks import AtomicCheckpointIO, ImageLogger, RNGStateCallback, to_uint8_grid


def test_rng_state_survives_weights_only_checkpoint():
    cb = RNGStateCallback()
    state = cb.state_dict()
    expected = (random.random(), float(np.random.rand()), torch.rand(1).item())
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    cb.load_state_dict(torch.load(buf, weights_only=True))
    assert (random.random(), float(np.random.rand()), torch.rand(1).item()) == expected


def test_atomic_checkpoint_replaces_and_leaves_no_temp(tmp_path):
    io_plugin = AtomicCheckpointIO()
    path = tmp_path / "ckpts" / "last.ckpt"
    io_plugin.save_checkpoint({"step": 1}, path)
    io_plugin.save_checkpoint({"step": 2}, path)
    assert torch.load(path, weights_only=True) == {"step": 2}
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_failed_save_keeps_previous_checkpoint(tmp_path):
    io_plugin = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io_plugin.save_checkpoint({"step": 1}, path)
    with pytest.raises(Exception):  # noqa: B017 - any pickling failure
        io_plugin.save_checkpoint({"bad": lambda: None}, path)
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_first_save_into_a_folder_removes_temp_files_of_killed_saves(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()  # a writer that is gone, as after a SIGKILL mid-save
    stale = tmp_path / f".step-000010.ckpt.{child.pid}.0123abcd.tmp"
    stale.write_bytes(b"half a checkpoint")
    io_plugin = AtomicCheckpointIO()
    io_plugin.save_checkpoint({"step": 20}, tmp_path / "step-000020.ckpt")
    assert [p.name for p in tmp_path.iterdir()] == ["step-000020.ckpt"]
    with pytest.raises(TypeError, match="storage_options"):
        io_plugin.save_checkpoint({"step": 21}, tmp_path / "last.ckpt", storage_options={"a": 1})


def test_grid_layout():
    columns = [torch.full((2, 3, 8, 8), v) for v in (-1.0, 0.0, 1.0)]
    grid = to_uint8_grid(columns)
    assert grid.shape == (2 * 8 + 3 * 2, 3 * 8 + 4 * 2, 3) and grid.dtype == np.uint8
    assert grid[2, 2].tolist() == [0, 0, 0] and grid[2, 2 + 8 + 2 + 8 + 2].tolist() == [255, 255, 255]


def test_image_logger_schedule():
    logger = ImageLogger(batch_frequency=5)
    assert [s for s in range(12) if logger._due(s)] == [5, 10]
    with pytest.raises(ValueError, match="batch_frequency"):
        ImageLogger(batch_frequency=0)
