"""model.params.throughput (ldm/modules/throughput.py): strict settings, and switches that leave the
checkpoint and the training step's result as they were. Speed is bench/throughput_switches.py's job."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_model_config

from ldm.util import ConfigError, instantiate_from_config


def build(**throughput):
    torch.manual_seed(0)
    return instantiate_from_config(tiny_model_config(throughput=throughput), "model").train()


def batch() -> dict:
    g = torch.Generator().manual_seed(1)
    images = torch.rand(4, 3, 16, 16, generator=g) * 2 - 1
    return {"edited": images, "edit": {"c_concat": images.flip(-1), "c_crossattn": ["make it red"] * 4}}


def one_step(model) -> dict[str, torch.Tensor]:
    """The weights after one training step of `training_step`'s loss with `configure_optimizers`' optimizer."""
    optimizer = model.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    torch.manual_seed(2)
    with model.throughput.attention():
        loss = model.shared_step(batch())
    loss.backward()
    optimizer.step()
    return {k: v.detach().clone() for k, v in model.model.state_dict().items()}


@pytest.mark.parametrize(
    ("throughput", "message"),
    [
        ({"channel_last": True}, "throughput.channel_last: unknown key"),
        ({"channels_last": "yes"}, "throughput.channels_last: must be true or false"),
        ({"sdpa_backend": "fast"}, "throughput.sdpa_backend: 'fast' is not null or one of math"),
        ({"fused_adamw": True, "adam_8bit": True}, "fused_adamw and adam_8bit are two optimizers"),
    ],
)
def test_bad_settings_name_the_key(throughput, message) -> None:
    with pytest.raises(ConfigError, match=message):
        build(**throughput)


def test_8bit_adam_is_refused_off_cuda_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"model.params.throughput.adam_8bit: .* CUDA only"):
        build(adam_8bit=True).configure_optimizers()


def test_switches_change_neither_the_checkpoint_nor_the_step() -> None:
    default, switched = build(), build(channels_last=True, sdpa_backend="math", fused_adamw=True)
    state, switched_state = default.state_dict(), switched.state_dict()
    assert list(state) == list(switched_state)
    assert all(state[k].shape == switched_state[k].shape and state[k].dtype == switched_state[k].dtype for k in state)
    conv = switched.model.diffusion_model.input_blocks[0][0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    optimizer = switched.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    assert optimizer.defaults["fused"] is True
    before = {k: v.clone() for k, v in default.model.state_dict().items()}
    ours, theirs = one_step(default), one_step(switched)
    assert any(not torch.equal(before[k], ours[k]) for k in ours)  # the step trained something
    for key in ours:
        torch.testing.assert_close(theirs[key], ours[key], rtol=1e-4, atol=1e-6, msg=key)


def test_compile_wraps_the_unet_forward_and_keeps_its_keys() -> None:
    model = build(compile_unet=True)
    unet = model.model.diffusion_model
    assert "forward" in vars(unet)  # an instance attribute: the compiled function, not the class's method
    assert list(model.state_dict()) == list(build().state_dict())  # no `_orig_mod.` prefixes
