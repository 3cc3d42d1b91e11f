"""LoRA (ldm/modules/lora.py): training touches only the adapters, merging and scaling, the diffusers
oracle both ways, merge_lora.py, and an exact resume of a killed LoRA run with a small checkpoint."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ROOT, TINY_CONFIG, kill_main_when, make_edit_dataset, run_main, tiny_model, tiny_model_config
from omegaconf import OmegaConf
from PIL import Image

import edit_cli
from ldm.checkpoint import read_checkpoint
from ldm.errors import ConfigError
from ldm.modules.lora import (
    UNET,
    LoraSettings,
    adapter_from_model,
    apply_adapter,
    ema_key,
    merge_and_unload,
    read_adapter,
    save_adapter,
    set_scale,
)
from ldm.util import instantiate_from_config

STEPS, SEED, INSTRUCTION = 8, 3, "make it red"
BASE = tiny_model()  # the base model of every test; copies of it are cheaper than new ones


def base_model():
    return copy.deepcopy(BASE)


# ---- tiny models --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny base model as a checkpoint, its config (a YAML `model` section) and a 32 px input image."""
    root = tmp_path_factory.mktemp("lora")
    torch.save({"state_dict": BASE.state_dict()}, root / "base.ckpt")
    OmegaConf.save({"model": OmegaConf.load(TINY_CONFIG).model}, root / "tiny.yaml")
    pixels = torch.rand(32, 32, 3, generator=torch.Generator().manual_seed(5)) * 255
    Image.fromarray(pixels.to(torch.uint8).numpy()).save(root / "in.png")
    return {"root": root, "base": root / "base.ckpt", "config": root / "tiny.yaml", "input": root / "in.png"}


def lora_model(base: Path, **lora):
    config = tiny_model_config(ckpt_path=str(base), use_ema=True, lora_config={"rank": 4, "alpha": 8, **lora})
    return instantiate_from_config(config, "model")


def edit_batch(n: int = 2, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(2 * n, 3, 32, 32, generator=g) * 2 - 1
    return {"edited": images[:n], "edit": {"c_concat": images[n:], "c_crossattn": ["make it red", "color it blue"][:n]}}


def train(model, steps: int = 4, lr: float = 3e-2):
    """A few AdamW steps on the trainable parameters, with the EMA update, as training_step + optimizer_step."""
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=lr)
    model.train()
    for step in range(steps):
        torch.manual_seed(step)
        loss = model.shared_step(edit_batch(seed=step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.model_ema(model.model)
    return model.eval(), optimizer


@torch.no_grad()
def unet_output(model) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    z, image = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    context = model.get_learned_conditioning(["make it red", ""])
    return model.apply_model(z, torch.tensor([10, 900]), {"c_concat": [image], "c_crossattn": [context]})


# ---- 1. training, merging, scale ----------------------------------------------------------------
def test_only_the_adapters_train_and_the_base_stays_bit_identical(files) -> None:
    model = lora_model(files["base"], train_conv_in=True)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n or n.startswith(f"{UNET}input_blocks.0.0.") for n in trainable)
    assert {n.rsplit(".", 4)[-4] for n in trainable if ".lora_" in n} >= {"to_q", "to_k", "to_v"}
    ema = {k for k in model.state_dict() if k.startswith("model_ema.")} - {"model_ema.decay", "model_ema.num_updates"}
    assert ema == {ema_key(n) for n in trainable}, "the EMA tracks exactly the trainable parameters"
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model, optimizer = train(model)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(trainable)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == trainable | ema | {"model_ema.num_updates"}
    base = torch.load(files["base"], weights_only=True)["state_dict"]
    for key, value in after.items():  # every frozen tensor is the base checkpoint's, bit for bit
        plain = key.replace(".base_layer.", ".")
        if key not in changed and plain in base:
            assert torch.equal(value, base[plain]), key


def test_merged_equals_unmerged_and_scale_zero_is_the_base(files) -> None:
    model, _ = train(lora_model(files["base"], train_conv_in=True, feed_forward=True))
    unmerged = unet_output(model)
    base = base_model()
    assert (unmerged - unet_output(base)).abs().max() > 1e-3, "the trained adapter changes the output"

    merged = copy.deepcopy(model)
    assert merge_and_unload(merged.model.diffusion_model) == 32 + 8  # 8 attention layers x 4 + 4 feed-forwards x 2
    assert not [k for k in merged.model.diffusion_model.state_dict() if "lora_" in k or "base_layer" in k]
    torch.testing.assert_close(unet_output(merged), unmerged, rtol=0, atol=1e-5)

    adapter = adapter_from_model(model)
    into_base = base_model()
    apply_adapter(into_base, adapter, 1.0)
    torch.testing.assert_close(unet_output(into_base), unmerged, rtol=0, atol=1e-5)
    off = base_model()
    apply_adapter(off, adapter, 0.0)
    assert torch.equal(unet_output(off), unet_output(base))
    half = base_model()  # scales are linear in the adapter's update (conv_in interpolates)
    apply_adapter(half, adapter, 0.5)
    expected = {k: (v + into_base.state_dict()[k]) / 2 for k, v in base.state_dict().items()}
    for key, value in half.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=1e-6, msg=key)

    no_conv = copy.deepcopy(model)  # a live adapter at scale 0 (no conv_in here) computes the base model
    no_conv.model.diffusion_model.input_blocks[0][0].load_state_dict(base.model.diffusion_model.input_blocks[0][0].state_dict())
    set_scale(no_conv.model.diffusion_model, 0.0)
    torch.testing.assert_close(unet_output(no_conv), unet_output(base), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("lora", "message"),
    [
        ({"rnak": 4}, "model.params.lora_config.rnak: unknown key"),
        ({"rank": 0}, "model.params.lora_config.rank: must be an integer >= 1"),
        ({"alpha": -1}, "model.params.lora_config.alpha"),
        ({"dropout": 1.0}, "model.params.lora_config.dropout"),
        ({"targets": "to_q"}, "model.params.lora_config.targets: must be a list"),
        ({"targets": ["to_qq"]}, "model.params.lora_config.targets: 'to_qq' names no linear layer"),
        ({"text_encoder_targets": ["query"]}, "model.params.lora_config.text_encoder_targets: 'query'"),
        ({"targets": []}, "nothing would train"),
    ],
)
def test_bad_lora_configs_name_the_key(files, lora, message) -> None:
    config = tiny_model_config(ckpt_path=str(files["base"]), lora_config=lora)
    with pytest.raises(ConfigError, match=message):
        instantiate_from_config(config, "model")


def test_lora_needs_a_base_checkpoint() -> None:
    with pytest.raises(ConfigError, match="model.params.lora_config: LoRA adapts trained weights; set model.params"):
        instantiate_from_config(tiny_model_config(lora_config={}), "model")


def test_the_shipped_lora_configs_are_valid() -> None:
    openmoji = OmegaConf.load(ROOT / "configs" / "openmoji" / "lora.yaml")
    assert LoraSettings.from_config(OmegaConf.to_container(openmoji.model.params.lora_config), "x").rank == 8
    full = OmegaConf.load(ROOT / "configs" / "sketch2pokemon" / "train.yaml")
    merged = OmegaConf.merge(full, OmegaConf.load(ROOT / "configs" / "sketch2pokemon" / "lora" / "lora.yaml"))
    settings = LoraSettings.from_config(OmegaConf.to_container(merged.model.params.lora_config), "x")
    assert settings.train_conv_in is False and settings.rank >= 4
    assert merged.model.params.ckpt_path == full.model.params.ckpt_path
    assert merged.model.params.unet_config == full.model.params.unet_config  # an overlay: the same model
    tiny = tiny_model_config(ckpt_path=None, lora_config=OmegaConf.to_container(merged.model.params.lora_config))
    with pytest.raises(ConfigError, match="set model.params.ckpt_path"):  # everything but the base checks out
        instantiate_from_config(tiny, "model")


# ---- 2. the diffusers oracle --------------------------------------------------------------------
def diffusers_pipe(files: dict[str, Path]):
    """The base model as StableDiffusionInstructPix2PixPipeline (ldm.diffusers_export) with an Euler scheduler
    pinned to our sigmas and timesteps (see tests/test_edit_cli.py, the parity test), and the base model."""
    from diffusers import EulerDiscreteScheduler

    from ldm.diffusers_export import to_diffusers_pipeline
    from ldm.inference import ImageEditor

    model = base_model()
    editor = ImageEditor(model, torch.device("cpu"))
    sigmas = editor.denoiser.get_sigmas(STEPS)
    timesteps = editor.denoiser.sigma_to_t(sigmas[:-1])

    class PinnedEuler(EulerDiscreteScheduler):
        def set_timesteps(self, num_inference_steps=None, device=None, **kwargs) -> None:
            super().set_timesteps(sigmas=sigmas.tolist(), device=device)
            self.timesteps = timesteps.clone()

    euler = PinnedEuler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    return to_diffusers_pipeline(model, tiny_model_config(), euler), model


@torch.no_grad()
def diffusers_edit(pipe, files) -> np.ndarray:
    """(32, 32, 3) in [0, 1]: the pipeline's edit with our initial noise for SEED."""
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(SEED))
    out = pipe(INSTRUCTION, image=Image.open(files["input"]), num_inference_steps=STEPS, guidance_scale=7.5,
               image_guidance_scale=1.5, latents=noise, output_type="pt")  # fmt: skip
    return out.images[0].permute(1, 2, 0).numpy()


def cli_edit(files: dict[str, Path], out: Path, *extra: str) -> np.ndarray:
    args = ["--input", str(files["input"]), "--output", str(out), "--edit", INSTRUCTION, "--config",
            str(files["config"]), "--ckpt", str(files["base"]), "--resolution", "32", "--steps", str(STEPS),
            "--sampler", "euler", "--seed", str(SEED), "--cfg-text", "7.5", "--cfg-image", "1.5", *extra]  # fmt: skip
    assert edit_cli.main(args) == 0
    return np.asarray(Image.open(out).convert("RGB"), dtype=np.float64) / 255


def test_an_adapter_trained_here_loads_into_diffusers_and_edits_the_same(files, tmp_path) -> None:
    pytest.importorskip("diffusers")
    model, _ = train(lora_model(files["base"]), steps=6, lr=0.1)
    adapter = adapter_from_model(model)
    save_adapter(adapter, model, tmp_path / "adapter.safetensors")
    pipe, _ = diffusers_pipe(files)
    without = diffusers_edit(pipe, files)
    pipe.load_lora_weights(str(tmp_path), weight_name="adapter.safetensors")
    assert len(pipe.get_list_adapters()["unet"]) == 1
    theirs = diffusers_edit(pipe, files)
    ours = cli_edit(files, tmp_path / "ours.png", "--lora", str(tmp_path / "adapter.safetensors"))
    print(f"adapter effect {np.abs(theirs - without).max() * 255:.1f}/255, ours vs diffusers "
          f"{np.abs(ours - theirs).max() * 255:.2f}/255")
    assert np.abs(theirs - without).max() > 5 / 255, "the adapter visibly changes the edit"
    assert np.abs(ours - theirs).max() <= 1 / 255
    adapter_file = str(tmp_path / "adapter.safetensors")
    plain = cli_edit(files, tmp_path / "plain.png", "--lora", adapter_file, "--lora-scale", "0")
    assert np.abs(plain - without).max() <= 1 / 255


def test_a_diffusers_made_adapter_loads_here_and_edits_the_same(files, tmp_path) -> None:
    pytest.importorskip("diffusers")
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    pipe, _ = diffusers_pipe(files)
    targets = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"]
    unet_config = LoraConfig(r=4, lora_alpha=8, target_modules=targets)
    pipe.unet.add_adapter(unet_config)  # diffusers' own
    text_config = LoraConfig(r=2, lora_alpha=2, target_modules=["q_proj", "k_proj", "v_proj", "out_proj"])
    # peft directly: transformers' add_adapter asks for a newer peft than PyPI has
    inject_adapter_in_model(text_config, pipe.text_encoder)
    text_layers = {k.replace(".default.", "."): v for k, v in pipe.text_encoder.state_dict().items() if ".lora_" in k}
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in [*pipe.unet.named_parameters(), *pipe.text_encoder.named_parameters()]:
            if "lora_B" in name:  # peft starts B at zero; a trained adapter's is not (large: the tiny UNet's
                p.copy_(torch.randn(p.shape, generator=g))  # transformers add little to the residual stream)
    pipe.save_lora_weights(
        tmp_path, weight_name="theirs.safetensors",
        unet_lora_layers=get_peft_model_state_dict(pipe.unet),
        text_encoder_lora_layers=text_layers,
        unet_lora_adapter_metadata=unet_config.to_dict(),
        text_encoder_lora_adapter_metadata=text_config.to_dict(),
    )  # fmt: skip
    theirs = diffusers_edit(pipe, files)
    model = base_model()
    adapter = read_adapter(tmp_path / "theirs.safetensors", model)
    assert len(adapter.lora) == 32 + 8 + 2 * 4  # UNet attention and feed-forward, 2 text layers x 4
    assert {alpha / a.shape[0] for a, _, alpha in adapter.lora.values()} == {2, 1}  # alpha / r from the metadata
    ours = cli_edit(files, tmp_path / "ours.png", "--lora", str(tmp_path / "theirs.safetensors"))
    plain = cli_edit(files, tmp_path / "plain.png")
    print(f"adapter effect {np.abs(plain - theirs).max() * 255:.1f}/255, ours vs diffusers "
          f"{np.abs(ours - theirs).max() * 255:.2f}/255")
    assert np.abs(plain - theirs).max() > 5 / 255, "the adapter visibly changes the edit"
    assert np.abs(ours - theirs).max() <= 1 / 255


# ---- 3. merge_lora.py and edit_cli's options ----------------------------------------------------
def merge(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    script = ROOT / "scripts" / "merge_lora.py"
    return subprocess.run([sys.executable, str(script), *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_merge_lora_writes_a_checkpoint_that_edits_as_the_adapter(files, tmp_path) -> None:
    model, _ = train(lora_model(files["base"], train_conv_in=True))
    save_adapter(adapter_from_model(model), model, tmp_path / "a.safetensors")
    common = ["--config", str(files["config"]), "--ckpt", str(files["base"]), "--lora", str(tmp_path / "a.safetensors")]
    result = merge(*common, "--lora-scale", "0.7", "--out", "merged.safetensors", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    merged = cli_edit({**files, "base": tmp_path / "merged.safetensors"}, tmp_path / "merged.png")
    direct = cli_edit(files, tmp_path / "direct.png", "--lora", str(tmp_path / "a.safetensors"), "--lora-scale", "0.7")
    assert np.array_equal(merged, direct)
    assert np.abs(direct - cli_edit(files, tmp_path / "base.png")).max() > 0

    taken = merge(*common, "--out", "a.safetensors", cwd=tmp_path)
    assert taken.returncode == 2 and "would overwrite an input" in taken.stderr
    bad = merge(*common, "--lora-scale", "1", "--lora-scale", "2", "--out", "m.ckpt", cwd=tmp_path)
    assert bad.returncode == 2 and "one per --lora" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "m.ckpt").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--lora", "missing.safetensors"], "--lora missing.safetensors: no such file"),
        (["--lora-scale", "0.5"], "--lora-scale needs a --lora FILE"),
        (["--lora", "{base}", "--lora-scale", "1", "--lora-scale", "2"], "one per --lora (1), not 2"),
        (["--lora", "{base}"], "--lora {base}: "),  # a full checkpoint is not an adapter
        (["--lora", "{junk}"], "--lora {junk}: "),
    ],
)
def test_edit_cli_lora_mistakes_are_one_line(files, tmp_path, capsys, extra, message) -> None:
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    names = {"base": str(files["base"]), "junk": str(tmp_path / "junk.safetensors")}
    extra = [e.format(**names) for e in extra]
    args = ["--input", str(files["input"]), "--output", str(tmp_path / "o.png"), "--edit", "x",
            "--config", str(files["config"]), "--ckpt", str(files["base"]), "--steps", "1", *extra]  # fmt: skip
    assert edit_cli.main(args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and message.format(**names) in err[0] and "Traceback" not in err[0], err
    assert not (tmp_path / "o.png").exists()


# ---- 4. resuming a killed LoRA run --------------------------------------------------------------
@pytest.mark.slow
def test_a_killed_lora_run_resumes_exactly_and_its_checkpoint_is_small(files, tmp_path) -> None:
    dataset = make_edit_dataset(tmp_path / "edits", n=16)
    lora = ["model.params.lora_config.rank=4", "model.params.lora_config.train_conv_in=true",
            f"model.params.ckpt_path={files['base']}"]  # fmt: skip

    def args(name: str, *extra: str) -> list[str]:
        return ["--base", str(TINY_CONFIG), "--train", "--name", name, "--logdir", str(tmp_path), "--max_steps", "10",
                f"data.params.train.params.path={dataset}", *extra]  # fmt: skip

    straight = run_main(args("straight", *lora), cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr[-3000:]
    step5 = tmp_path / "killed" / "checkpoints" / "step-000005.ckpt"
    kill_main_when(args("killed", *lora), tmp_path, step5)
    resumed = run_main(["--resume", str(step5), "--train", "--max_steps", "10"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    a = read_checkpoint(tmp_path / "straight" / "checkpoints" / "last.ckpt")
    b = read_checkpoint(tmp_path / "killed" / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 10
    assert a["lora"] == b["lora"] and b["lora"]["base"]["path"] == str(files["base"])
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(".lora_" in k or "input_blocks.0.0" in k or "input_blocks00" in k or k.startswith("model_ema.")
               for k in a["state_dict"])  # fmt: skip
    for key in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][key], b["state_dict"][key], rtol=0, atol=1e-6, msg=key)
    for pid, state in a["optimizer_states"][0]["state"].items():
        for name in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(state[name], b["optimizer_states"][0]["state"][pid][name], rtol=0, atol=1e-6)

    full = run_main(args("full", "--max_steps", "1"), cwd=tmp_path)
    assert full.returncode == 0, full.stderr[-3000:]
    full_size = (tmp_path / "full" / "checkpoints" / "last.ckpt").stat().st_size
    lora_size = (tmp_path / "straight" / "checkpoints" / "last.ckpt").stat().st_size
    print(f"LoRA checkpoint {lora_size / 2**10:.0f} KiB, full {full_size / 2**10:.0f} KiB "
          f"({lora_size / full_size:.2%})")
    assert lora_size < 0.05 * full_size

    # the run's checkpoint is an adapter for edit_cli, and a changed base is refused on resume
    edited = cli_edit(files, tmp_path / "run.png", "--lora", str(tmp_path / "straight" / "checkpoints" / "last.ckpt"))
    assert edited.shape == (32, 32, 3)
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": tiny_model(seed=1).state_dict()}, other)
    moved = run_main(["--resume", str(tmp_path / "straight"), "--train", "--max_steps", "12",
                      f"model.params.ckpt_path={other}"], cwd=tmp_path)  # fmt: skip
    assert moved.returncode != 0 and "sha256" in moved.stderr, moved.stderr[-2000:]


def test_lora_trains_under_two_process_ddp(files, tmp_path) -> None:
    """DDP (gloo, 2 CPU processes) with adapters: one world of 2, both ranks end with the same weights, the
    frozen base weights are the base checkpoint's, bit for bit, and the adapters moved."""
    dataset, dump = make_edit_dataset(tmp_path / "edits", n=16), tmp_path / "dump"
    run = run_main(["--base", str(TINY_CONFIG), "--train", "--name", "ddp", "--logdir", str(tmp_path), "--max_steps",
                    "3", "--accelerator", "cpu", "--devices", "2", "--logger", "csv",
                    f"data.params.train.params.path={dataset}", "data.params.num_workers=0",
                    "model.params.lora_config.rank=4", f"model.params.ckpt_path={files['base']}",
                    "lightning.callbacks.dump.target=helpers.DumpWeights",
                    f"lightning.callbacks.dump.params.out_dir={dump}"], cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert [(dump / f"rank{r}.world").read_text() for r in (0, 1)] == ["2", "2"]
    rank0, rank1 = torch.load(dump / "rank0.pt"), torch.load(dump / "rank1.pt")
    assert rank0.keys() == rank1.keys() and all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    base = BASE.state_dict()
    adapters = [k for k in rank0 if ".lora_" in k and not k.startswith("model_ema.")]
    assert adapters and any(k.endswith("lora_B.default.weight") and rank0[k].any() for k in adapters)  # trained
    frozen = [k for k in rank0 if ".lora_" not in k and k.startswith("model.diffusion_model.")]
    for key in frozen:  # peft wraps a target layer as `<layer>.base_layer`: its weight is the base's
        assert torch.equal(rank0[key], base[key.replace(".base_layer.", ".")]), key
