"""UNet tests: numeric parity with diffusers on the same weights, SD1.5 key compatibility,
activation checkpointing, and the attention controller hook.

diffusers is the oracle: our state dict, prefixed as in an SD checkpoint, goes through
diffusers' own LDM converter into `UNet2DConditionModel`, which must load it strictly and
produce the same outputs.
"""

from __future__ import annotations

import math

import pytest
import torch

from ldm.modules.attention import CrossAttention, set_attention_controller
from ldm.modules.diffusionmodules.openaimodel import UNetModel
from ldm.util import ConfigError, count_params, instantiate_from_config

diffusers = pytest.importorskip("diffusers")
from diffusers.loaders.single_file_utils import (  # noqa: E402
    convert_ldm_unet_checkpoint,
    create_unet_diffusers_config_from_ldm,
)

UNET_PREFIX = "model.diffusion_model."

TINY_CONFIGS = {
    "4ch-2heads-attn12": dict(
        in_channels=4, model_channels=32, channel_mult=[1, 2], num_res_blocks=1,
        attention_resolutions=[1, 2], num_heads=2, context_dim=16, legacy=False,
    ),
    "8ch-headchannels-depth2-scaleshift": dict(
        in_channels=8, model_channels=32, channel_mult=[1, 2, 2], num_res_blocks=2,
        attention_resolutions=[2, 4], num_head_channels=16, transformer_depth=2, context_dim=24,
        use_scale_shift_norm=True,
    ),
    "8ch-4heads-linear-attn1": dict(
        in_channels=8, model_channels=64, channel_mult=[1, 1, 2], num_res_blocks=1,
        attention_resolutions=[1], num_heads=4, context_dim=32, legacy=False, use_linear_in_transformer=True,
    ),
}  # fmt: skip

SD15_EDIT_PARAMS = dict(
    image_size=32, in_channels=8, out_channels=4, model_channels=320, attention_resolutions=[4, 2, 1],
    num_res_blocks=2, channel_mult=[1, 2, 4, 4], num_heads=8, use_spatial_transformer=True,
    transformer_depth=1, context_dim=768, use_checkpoint=False, legacy=False,
)  # fmt: skip


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads; on a busy machine threads only wait at barriers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def unet_params(name: str, **overrides) -> dict:
    """Full constructor params of a tiny config (16x16 latents, 4 output channels)."""
    params = dict(image_size=16, out_channels=4, use_spatial_transformer=True, **TINY_CONFIGS[name])
    params.update(overrides)
    return params


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Overwrite every parameter with random values, none zero (zero-initialised convs included)."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=gen)
        if p.ndim > 1:  # conv / linear weights: variance-preserving scale
            p.copy_(noise / math.sqrt(p[0].numel()))
        elif name.endswith("weight"):  # norm scales
            p.copy_(1 + 0.1 * noise)
        else:  # biases
            p.copy_(0.1 * noise)


def diffusers_config(params: dict) -> dict:
    """UNet2DConditionModel config for our params, built by hand.

    diffusers' `attention_head_dim` is (historically) the number of heads per block; it is
    computed here with the original head rules, which diffusers' own config helper only
    covers for `num_heads`.
    """
    channels = [params["model_channels"] * m for m in params["channel_mult"]]
    with_attention = [2**level in params["attention_resolutions"] for level in range(len(channels))]
    nhc = params.get("num_head_channels", -1)
    heads = [params["num_heads"] if nhc == -1 else ch // nhc for ch in channels]
    return dict(
        sample_size=params["image_size"],
        in_channels=params["in_channels"],
        out_channels=params["out_channels"],
        down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in with_attention],
        up_block_types=["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(with_attention)],
        block_out_channels=channels,
        layers_per_block=params["num_res_blocks"],
        cross_attention_dim=params["context_dim"],
        attention_head_dim=heads,
        transformer_layers_per_block=params.get("transformer_depth", 1),
        use_linear_projection=params.get("use_linear_in_transformer", False),
        resnet_time_scale_shift="scale_shift" if params.get("use_scale_shift_norm") else "default",
    )


def convert_to_diffusers(model: UNetModel, config: dict) -> dict:
    """Our weights as an SD checkpoint, converted by diffusers; asserts nothing was dropped."""
    checkpoint = {UNET_PREFIX + k: v for k, v in model.state_dict().items()}
    converted = convert_ldm_unet_checkpoint(checkpoint, config)
    assert len(converted) == len(checkpoint), "the converter dropped or duplicated keys"
    assert {id(v) for v in converted.values()} == {id(v) for v in checkpoint.values()}
    return converted


def random_inputs(params: dict, batch: int = 2, tokens: int = 7, seed: int = 1) -> tuple:
    gen = torch.Generator().manual_seed(seed)
    size = params["image_size"]
    x = torch.randn(batch, params["in_channels"], size, size, generator=gen)  # (B, C, H, W)
    t = torch.randint(0, 1000, (batch,), generator=gen)  # (B,)
    context = torch.randn(batch, tokens, params["context_dim"], generator=gen)  # (B, M, D)
    return x, t, context


def tiny_unet(name: str, seed: int = 0, **overrides) -> tuple[UNetModel, dict]:
    params = unet_params(name, **overrides)
    model = UNetModel(**params)
    randomize(model, seed)
    return model, params


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
@torch.no_grad()
def test_numeric_parity_with_diffusers(name: str) -> None:
    model, params = tiny_unet(name)
    config = diffusers_config(params)
    reference = diffusers.UNet2DConditionModel(**config)
    result = reference.load_state_dict(convert_to_diffusers(model, config), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    model.eval()
    reference.eval()
    x, t, context = random_inputs(params)
    ours = model(x, t, context)
    theirs = reference(x, t, encoder_hidden_states=context).sample
    assert ours.shape == (2, 4, 16, 16)
    assert ours.abs().mean() > 0.1  # outputs of O(1), so the absolute tolerance means something
    assert (ours - theirs).abs().max().item() <= 1e-5


def test_original_style_config_instantiates_strictly() -> None:
    target = "ldm.modules.diffusionmodules.openaimodel.UNetModel"
    config = {"target": target, "params": unet_params("4ch-2heads-attn12")}
    model = instantiate_from_config(config, path="model.params.unet_config")
    assert isinstance(model, UNetModel)
    bad = {**config, "params": {**config["params"], "num_heds": 8}}
    with pytest.raises(ConfigError, match="model.params.unet_config.params.num_heds"):
        instantiate_from_config(bad, path="model.params.unet_config")


@pytest.mark.parametrize(
    "overrides",
    [
        dict(use_spatial_transformer=False),
        dict(context_dim=None),
        dict(num_classes=10),
        dict(resblock_updown=True),
        dict(num_heads=-1),
        dict(use_fp16=True),
    ],
)
def test_unsupported_options_raise(overrides: dict) -> None:
    with pytest.raises((ValueError, NotImplementedError)):
        UNetModel(**unet_params("4ch-2heads-attn12", **overrides))


@torch.no_grad()
def test_resampling_without_convs() -> None:
    model, params = tiny_unet("4ch-2heads-attn12", conv_resample=False)
    assert not any(k.endswith((".op.weight", ".conv.weight")) for k in model.state_dict())
    x, t, context = random_inputs(params)
    assert model(x, t, context).shape == (2, 4, 16, 16)


def test_timestep_embedding_matches_diffusers() -> None:
    from diffusers.models.embeddings import get_timestep_embedding

    from ldm.modules.diffusionmodules.util import timestep_embedding

    t = torch.tensor([0.0, 1.0, 17.5, 999.0])
    for dim in (32, 33, 320):
        expected = get_timestep_embedding(t, dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        assert torch.equal(timestep_embedding(t, dim), expected)


def test_checkpointing_gives_same_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    plain, params = tiny_unet("8ch-headchannels-depth2-scaleshift", dropout=0.1)
    checkpointed = UNetModel(**{**params, "use_checkpoint": True})
    checkpointed.load_state_dict(plain.state_dict())
    calls = []
    real_checkpoint = torch.utils.checkpoint.checkpoint

    def counting_checkpoint(*args, **kwargs):
        calls.append(kwargs.get("use_reentrant"))
        return real_checkpoint(*args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counting_checkpoint)
    x, t, context = random_inputs(params)
    grads = []
    for model in (plain, checkpointed):
        model.train()
        torch.manual_seed(0)  # same dropout masks in both runs (checkpointing restores the RNG state)
        model(x, t, context).square().mean().backward()
        grads.append({k: p.grad for k, p in model.named_parameters()})
    n_resblocks = sum(type(m).__name__ == "ResBlock" for m in plain.modules())
    n_transformer_blocks = sum(type(m).__name__ == "BasicTransformerBlock" for m in plain.modules())
    assert calls == [False] * (n_resblocks + n_transformer_blocks)
    for key, grad in grads[0].items():
        assert torch.allclose(grad, grads[1][key], rtol=0, atol=1e-6), key


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, bool, tuple[int, ...]]] = []

    def __call__(self, probs: torch.Tensor, *, name: str, is_cross: bool) -> torch.Tensor:
        self.calls.append((name, is_cross, tuple(probs.shape)))
        return probs


@torch.no_grad()
def test_attention_controller_records_every_layer() -> None:
    model, params = tiny_unet("8ch-headchannels-depth2-scaleshift")
    recorder = Recorder()
    n_layers = set_attention_controller(model, recorder)
    attention_names = [n for n, m in model.named_modules() if isinstance(m, CrossAttention)]
    assert n_layers == len(attention_names) > 0
    x, t, context = random_inputs(params, batch=2, tokens=7)
    model(x, t, context)
    assert [name for name, _, _ in recorder.calls] == attention_names  # forward order = module order
    assert "input_blocks.4.1.transformer_blocks.1.attn2" in attention_names
    for name, is_cross, shape in recorder.calls:
        assert is_cross == name.endswith("attn2")
        batch, heads, n_query, n_key = shape
        assert batch == 2 and n_query in (8 * 8, 4 * 4)  # attention at downsampling 2 and 4
        assert heads == 64 // 16  # 64 channels at both levels, num_head_channels 16
        assert n_key == (7 if is_cross else n_query)


@torch.no_grad()
def test_attention_controller_identity_matches_sdpa_and_replacement_changes_output() -> None:
    model, params = tiny_unet("4ch-2heads-attn12")
    x, t, context = random_inputs(params)
    fused = model(x, t, context)

    set_attention_controller(model, lambda probs, *, name, is_cross: probs)
    assert (model(x, t, context) - fused).abs().max().item() <= 1e-5

    def uniform_cross(probs: torch.Tensor, *, name: str, is_cross: bool) -> torch.Tensor:
        return torch.full_like(probs, 1.0 / probs.shape[-1]) if is_cross else probs

    set_attention_controller(model, uniform_cross)
    assert (model(x, t, context) - fused).abs().max().item() > 1e-2

    assert set_attention_controller(model, None) > 0
    assert all(m.controller is None for m in model.modules() if isinstance(m, CrossAttention))
    assert torch.equal(model(x, t, context), fused)


def test_attention_controller_module_is_not_adopted() -> None:
    class ModuleController(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(1))

        def forward(self, probs: torch.Tensor, *, name: str, is_cross: bool) -> torch.Tensor:
            return probs

    model, _ = tiny_unet("4ch-2heads-attn12")
    keys = set(model.state_dict())
    set_attention_controller(model, ModuleController())
    assert set(model.state_dict()) == keys


@pytest.mark.slow
@torch.no_grad()
def test_sd15_editing_unet_keys_and_shapes_match_diffusers() -> None:
    with torch.device("meta"):
        sd15 = UNetModel(**{**SD15_EDIT_PARAMS, "in_channels": 4})
    assert count_params(sd15) == 859_520_964
    del sd15

    model = UNetModel(**SD15_EDIT_PARAMS)  # real weights: the converter and the load see real tensors
    n_params = count_params(model)
    print(f"SD1.5 editing UNet (8 input channels): {n_params:,} parameters")
    assert n_params == 859_520_964 + 4 * 320 * 3 * 3
    assert model.state_dict()["input_blocks.1.1.proj_in.weight"].shape == (320, 320, 1, 1)

    original_config = {
        "model": {
            "params": {
                "unet_config": {"params": SD15_EDIT_PARAMS},
                "first_stage_config": {"params": {"ddconfig": {"ch_mult": [1, 2, 4, 4]}}},
            }
        }
    }
    checkpoint = {UNET_PREFIX + k: v for k, v in model.state_dict().items()}
    config = create_unet_diffusers_config_from_ldm(original_config, checkpoint)
    assert config["in_channels"] == 8 and config["attention_head_dim"] == 8
    by_hand = diffusers_config(SD15_EDIT_PARAMS)  # the helper the tiny parity tests rely on
    for key in (
        "down_block_types",
        "up_block_types",
        "block_out_channels",
        "layers_per_block",
        "cross_attention_dim",
        "transformer_layers_per_block",
        "use_linear_projection",
    ):
        assert config[key] == by_hand[key], key
    converted = convert_to_diffusers(model, config)
    del checkpoint

    with torch.device("meta"):  # shapes only; our tensors are assigned, not copied
        reference = diffusers.UNet2DConditionModel(**config)
    expected_shapes = {k: v.shape for k, v in reference.state_dict().items()}
    assert {k: v.shape for k, v in converted.items()} == expected_shapes
    result = reference.load_state_dict(converted, strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert count_params(reference) == n_params
