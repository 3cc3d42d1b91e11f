"""ldm/checkpoint.py: one reader for every format, never running pickled code, with one error type."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ldm.checkpoint import checkpoint_keys, has_loop_state, load_state_dict_file, load_strict, read_checkpoint
from ldm.errors import CheckpointMismatchError, UserError

RAN = []  # what the pickled class's code did when it was unpickled


class Callback:
    """Stands for a Lightning callback pickled into a released checkpoint; unpickling it would run code."""

    def __init__(self) -> None:
        self.best = 0.5

    def __setstate__(self, state: dict) -> None:
        RAN.append("setstate")
        self.__dict__.update(state)


def save_with_foreign_class(path: Path) -> dict[str, torch.Tensor]:
    """A .ckpt holding a state dict, a numpy scalar and an instance of a class from a module that then goes away."""
    import numpy as np

    module = types.ModuleType("some_library_callbacks")
    module.Callback = Callback
    Callback.__module__ = module.__name__
    sys.modules[module.__name__] = module
    state = {"w": torch.arange(6.0).view(2, 3)}
    try:
        torch.save({"state_dict": state, "callbacks": {"cb": Callback()}, "score": np.float64(0.5)}, path)
    finally:
        del sys.modules[module.__name__]
        Callback.__module__ = __name__
    return state


def test_foreign_pickled_classes_are_read_without_running_their_code(tmp_path: Path) -> None:
    state = save_with_foreign_class(tmp_path / "released.ckpt")
    RAN.clear()
    loaded = load_state_dict_file(tmp_path / "released.ckpt")
    assert loaded.keys() == state.keys() and torch.equal(loaded["w"], state["w"])
    assert RAN == []  # the stand-in kept the state; Callback.__setstate__ never ran
    assert type(read_checkpoint(tmp_path / "released.ckpt")["callbacks"]["cb"]).__name__ == "_Inert"


def test_formats_agree_and_keys_are_listed_without_loading(tmp_path: Path) -> None:
    state = {"a.weight": torch.randn(3, 2), "b": torch.zeros(4)}
    torch.save({"state_dict": state, "global_step": 7}, tmp_path / "lightning.ckpt")
    torch.save(state, tmp_path / "bare.pt")
    save_file(state, tmp_path / "weights.safetensors")
    for name in ("lightning.ckpt", "bare.pt", "weights.safetensors"):
        loaded = load_state_dict_file(tmp_path / name)
        assert all(torch.equal(loaded[k], v) for k, v in state.items()) and loaded.keys() == state.keys(), name
        assert checkpoint_keys(tmp_path / name) == set(state), name
    assert read_checkpoint(tmp_path / "lightning.ckpt")["global_step"] == 7


def test_loop_state_tells_a_training_checkpoint_from_weights(tmp_path: Path) -> None:
    torch.save({"state_dict": {}, "loops": {}, "optimizer_states": []}, tmp_path / "run.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "weights.ckpt")
    assert has_loop_state(tmp_path / "run.ckpt") and not has_loop_state(tmp_path / "weights.ckpt")


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated zip", b"\x80\x02 broken pickle", b"hello"])
def test_unreadable_files_are_one_user_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.ckpt"
    path.write_bytes(content)
    with pytest.raises(CheckpointMismatchError, match="bad.ckpt") as info:
        load_state_dict_file(path)
    assert isinstance(info.value, UserError)
    (tmp_path / "bad.safetensors").write_bytes(content)
    with pytest.raises(CheckpointMismatchError, match="bad.safetensors"):
        load_state_dict_file(tmp_path / "bad.safetensors")
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        read_checkpoint(tmp_path / "missing.ckpt")


def test_load_strict_names_what_does_not_fit() -> None:
    module = torch.nn.Linear(2, 3)
    full = {"weight": torch.ones(3, 2), "bias": torch.ones(3)}
    load_strict(module, full, "x.ckpt")
    assert torch.equal(module.weight, full["weight"])
    with pytest.raises(CheckpointMismatchError, match=r"x.ckpt does not match Linear \(missing keys: 1 \(bias\)\)"):
        load_strict(module, {"weight": full["weight"]}, "x.ckpt")
    load_strict(module, {"weight": full["weight"]}, "x.ckpt", may_miss=lambda k: k == "bias")
    with pytest.raises(CheckpointMismatchError, match=r"unexpected keys: 1 \(extra\)"):
        load_strict(module, {**full, "extra": torch.zeros(1)}, "x.ckpt")
    with pytest.raises(CheckpointMismatchError, match=r"weight: checkpoint \(2, 2\) vs model \(3, 2\)"):
        load_strict(module, {**full, "weight": torch.ones(2, 2)}, "x.ckpt")


def test_schedule_buffers_may_be_absent_but_never_different(tmp_path: Path, caplog) -> None:
    """diffusers' diffusers-to-original script writes no schedule buffers: they come from the config, and a
    checkpoint whose buffers are another schedule is refused naming the first one."""
    from helpers import tiny_model, tiny_model_config

    from ldm.models.diffusion.loading import init_from_ckpt
    from ldm.models.diffusion.schedule import SCHEDULE_BUFFERS
    from ldm.util import instantiate_from_config

    source = tiny_model(use_ema=False)
    state = {k: v for k, v in source.state_dict().items() if k not in SCHEDULE_BUFFERS}
    torch.save(state, tmp_path / "no_schedule.ckpt")
    fresh = instantiate_from_config(tiny_model_config(use_ema=False), "model")
    with caplog.at_level("WARNING"):
        init_from_ckpt(fresh, tmp_path / "no_schedule.ckpt")
    assert "no_schedule.ckpt has no noise-schedule buffers; computed from the config's schedule" in caplog.text
    for key, value in source.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key

    torch.save(source.state_dict(), tmp_path / "full.ckpt")
    other = instantiate_from_config(tiny_model_config(use_ema=False, linear_end=0.02), "model")
    with pytest.raises(CheckpointMismatchError, match=r"full.ckpt: betas differs from the config's noise schedule"):
        init_from_ckpt(other, tmp_path / "full.ckpt")
