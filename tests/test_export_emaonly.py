"""scripts/export_emaonly.py: the EMA becomes the UNet, dropped prefixes are fingerprinted, edit_cli loads it."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import tiny_model, tiny_model_config
from safetensors import safe_open

from ldm.data.latent_cache import weights_sha256
from ldm.errors import CheckpointMismatchError
from ldm.inference import load_model
from scripts import export_emaonly


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_export_emaonly_loads_as_the_ema_model(tmp_path, dtype):
    model = tiny_model(use_ema=True)
    with torch.no_grad():
        for buffer in model.model_ema.buffers():
            if buffer.is_floating_point() and buffer.ndim:
                buffer.add_(0.01)  # the EMA differs from the trained weights
    ckpt = tmp_path / "train.ckpt"
    torch.save({"state_dict": model.state_dict(), "global_step": 7}, ckpt)
    out = tmp_path / "emaonly.safetensors"
    args = ["--ckpt", str(ckpt), "--out", str(out), "--dtype", dtype, "--drop", "cond_stage_model."]
    assert export_emaonly.main(args) == 0
    with safe_open(str(out), framework="pt") as f:
        keys, meta = set(f.keys()), f.metadata()
        assert f.get_tensor("alphas_cumprod").dtype == torch.float32
    assert not any(k.startswith(("model_ema.", "cond_stage_model.")) for k in keys)
    assert meta["global_step"] == "7" and json.loads(meta["dropped_prefixes"]) == ["cond_stage_model."]
    text_state = {k[len("cond_stage_model.") :]: v for k, v in model.state_dict().items()
                  if k.startswith("cond_stage_model.")}  # fmt: skip
    assert meta["sha256:cond_stage_model."] == weights_sha256(text_state)
    config = tiny_model_config(ignore_keys=["cond_stage_model."])
    torch.manual_seed(0)  # tiny_model's seed: the same random text encoder as the exported model
    loaded = load_model(config, out)
    tolerance = {"fp32": 0.0, "fp16": 1e-3}[dtype]
    model.model_ema.copy_to(model.model)
    for (name, theirs), mine in zip(model.model.state_dict().items(), loaded.model.state_dict().values(), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=tolerance, atol=tolerance, msg=name)


def test_export_without_ema_is_one_clear_line(tmp_path, capsys):
    ckpt = tmp_path / "plain.ckpt"
    torch.save({"state_dict": tiny_model().state_dict()}, ckpt)
    assert export_emaonly.main(["--ckpt", str(ckpt), "--out", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no EMA weights" in err[0]
    assert not (tmp_path / "x.safetensors").exists()


def test_recorded_model_settings_refuse_a_config_that_would_compute_something_else(tmp_path):
    """A diffuse_residual model's training checkpoint and its export record that setting; loading either
    with a config without it stops in one line naming the key and the fix, and with it loads."""
    model = tiny_model(use_ema=True, diffuse_residual=True)
    checkpoint = {"state_dict": model.state_dict(), "global_step": 3}
    model.on_save_checkpoint(checkpoint)  # what Lightning calls before writing a .ckpt
    assert checkpoint["model_settings"] == {"parameterization": "eps", "diffuse_residual": True}
    ckpt = tmp_path / "train.ckpt"
    torch.save(checkpoint, ckpt)
    out = tmp_path / "emaonly.safetensors"
    assert export_emaonly.main(["--ckpt", str(ckpt), "--out", str(out)]) == 0
    with safe_open(str(out), framework="pt") as f:
        assert json.loads(f.metadata()["model_settings"]) == checkpoint["model_settings"]
    for path in (ckpt, out):
        with pytest.raises(CheckpointMismatchError) as err:
            load_model(tiny_model_config(), path)
        message = str(err.value)
        assert "\n" not in message and str(path) in message
        assert "diffuse_residual: true, but the config has false; set model.params.diffuse_residual: true" in message
        assert load_model(tiny_model_config(diffuse_residual=True), path).diffuse_residual
    # files that record nothing (SD, InstructPix2Pix, earlier exports) load under either setting
    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": checkpoint["state_dict"]}, plain)
    assert not load_model(tiny_model_config(), plain).diffuse_residual
