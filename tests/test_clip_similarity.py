"""ldm/modules/encoders/clip_image.py: the four similarities against a hand computation, the direction math on
known vectors, weights loading (open_clip state dict, safetensors, TorchScript archive) and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch
from clip_fixtures import TINY_CLIP_CONFIG, write_tiny_clip
from safetensors.torch import save_file

from ldm.modules.encoders.clip_image import ClipSimilarity, direction_similarity


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_tiny_clip(tmp_path_factory.mktemp("clip"))


def images(seed: int, batch: int = 3, size: int = 40) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))  # (B, 3, H, W) in [0, 1]


CAPTIONS_0 = ["a sketch of a cat", "a sketch of a dog", "line art of a house"]
CAPTIONS_1 = ["a red cat", "a blue dog", "a green house"]


@torch.no_grad()
def test_forward_matches_hand_computation(tiny_clip) -> None:
    clip = ClipSimilarity(*tiny_clip)
    image_0, image_1 = images(0), images(1)
    sim_0, sim_1, sim_direction, sim_image = clip(image_0, image_1, CAPTIONS_0, CAPTIONS_1)

    i0, i1 = clip.encode_image(image_0), clip.encode_image(image_1)  # (3, 32)
    t0, t1 = clip.encode_text(CAPTIONS_0), clip.encode_text(CAPTIONS_1)
    for features in (i0, i1, t0, t1):
        assert features.shape == (3, 32)
        torch.testing.assert_close(features.norm(dim=-1), torch.ones(3))
    d_image, d_text = i1 - i0, t1 - t0
    expected_direction = (d_image * d_text).sum(-1) / (d_image.norm(dim=-1) * d_text.norm(dim=-1))
    torch.testing.assert_close(sim_0, (i0 * t0).sum(-1))
    torch.testing.assert_close(sim_1, (i1 * t1).sum(-1))
    torch.testing.assert_close(sim_direction, expected_direction)
    torch.testing.assert_close(sim_image, (i0 * i1).sum(-1))
    assert all(s.shape == (3,) for s in (sim_0, sim_1, sim_direction, sim_image))

    same = clip(image_0, image_0, CAPTIONS_0, CAPTIONS_0)
    torch.testing.assert_close(same[3], torch.ones(3))  # an unchanged image: image similarity 1
    assert torch.equal(same[2], torch.zeros(3))  # no change at all: direction 0, not NaN


@torch.no_grad()
def test_image_preprocessing(tiny_clip) -> None:
    """Any input size reaches the vision tower as 32x32 CLIP-normalised pixels, bicubic overshoot clamped."""
    clip = ClipSimilarity(*tiny_clip)
    assert clip.size == (32, 32)
    seen = []
    clip.model.visual.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    clip.encode_image(torch.full((2, 3, 96, 40), 0.5))
    torch.testing.assert_close(seen[0], ((0.5 - clip.mean) / clip.std).expand(2, 3, 32, 32))
    checkers = (torch.arange(64)[:, None] + torch.arange(64)[None]) % 2  # (64, 64) of 0 and 1: overshoots
    clip.encode_image(checkers.float().expand(1, 3, 64, 64))
    pixels = seen[1] * clip.std + clip.mean  # back to [0, 1]
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6


def test_direction_similarity_on_known_vectors() -> None:
    e = torch.eye(3)
    zero = torch.zeros(1, 3)

    def direction(image_change: torch.Tensor, text_change: torch.Tensor) -> float:
        return direction_similarity(zero, image_change[None], zero, text_change[None]).item()

    assert direction(e[0], e[0]) == pytest.approx(1)
    assert direction(e[0], 3 * e[0]) == pytest.approx(1)  # length does not matter
    assert direction(e[0], -e[0]) == pytest.approx(-1)
    assert direction(e[0], e[1]) == pytest.approx(0)
    assert direction(e[0] + e[1], e[0]) == pytest.approx(2**-0.5)
    # it is the *change* that counts: same start and end points moved by an offset give the same value
    offset = torch.tensor([[5.0, -2.0, 1.0]])
    img0, img1, txt0, txt1 = torch.randn(4, 2, 3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        direction_similarity(img0 + offset, img1 + offset, txt0, txt1), direction_similarity(img0, img1, txt0, txt1)
    )


@torch.no_grad()
def test_weights_files_reproduce_outputs(tiny_clip, tmp_path) -> None:
    config, weights = tiny_clip
    reference = ClipSimilarity(config, weights)
    image_0, image_1 = images(3), images(4)
    expected = reference(image_0, image_1, CAPTIONS_0, CAPTIONS_1)

    state = torch.load(weights, weights_only=True)
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "w.safetensors")
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "w_wrapped.pt")  # DDP-style
    for path in (weights, tmp_path / "w.safetensors", tmp_path / "w_wrapped.pt"):
        got = ClipSimilarity(config, path)(image_0, image_1, CAPTIONS_0, CAPTIONS_1)
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)

    random_weights = ClipSimilarity(config)(image_0, image_1, CAPTIONS_0, CAPTIONS_1)
    assert not torch.allclose(random_weights[0], expected[0])


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
@torch.no_grad()
def test_torchscript_archive_is_loaded_with_quick_gelu(tiny_clip, tmp_path) -> None:
    """OpenAI's released files are TorchScript archives of QuickGELU models."""
    config, weights = tiny_clip
    state = torch.load(weights, weights_only=True)
    openai_style = open_clip.CLIP(**TINY_CLIP_CONFIG, quick_gelu=True).eval()
    openai_style.load_state_dict(state)
    torch.jit.script(openai_style).save(str(tmp_path / "ViT-tiny.pt"))

    def activation(clip: ClipSimilarity) -> str:
        return type(clip.model.visual.transformer.resblocks[0].mlp.gelu).__name__

    loaded, plain = ClipSimilarity(config, tmp_path / "ViT-tiny.pt"), ClipSimilarity(config, weights)
    assert (activation(loaded), activation(plain)) == ("QuickGELU", "GELU")
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, state[key]), key
    image = images(5, size=32)
    expected = openai_style.encode_image((image - loaded.mean) / loaded.std, normalize=True)  # already 32x32
    torch.testing.assert_close(loaded.encode_image(image), expected)


def test_bad_paths_and_names_give_clear_errors(tiny_clip, tmp_path) -> None:
    config, weights = tiny_clip
    with pytest.raises(FileNotFoundError, match=r"CLIP weights .*nothing\.pt: no such file"):
        ClipSimilarity(config, tmp_path / "nothing.pt")
    with pytest.raises(FileNotFoundError, match=r"CLIP model config .*nothing\.json: no such file"):
        ClipSimilarity(tmp_path / "nothing.json")
    with pytest.raises(ValueError, match="not an open_clip model name"):
        ClipSimilarity("ViT-Q-99")
    with pytest.raises(ValueError, match="model name or a config"):
        ClipSimilarity("hf-hub:laion/CLIP-ViT-L-14")
    (tmp_path / "partial.json").write_text(json.dumps({"embed_dim": 8}))
    with pytest.raises(ValueError, match="needs embed_dim, vision_cfg and text_cfg"):
        ClipSimilarity(tmp_path / "partial.json")
    wrong = {**TINY_CLIP_CONFIG, "embed_dim": 16}
    (tmp_path / "wrong.json").write_text(json.dumps(wrong))
    with pytest.raises(RuntimeError, match="size mismatch"):
        ClipSimilarity(tmp_path / "wrong.json", weights)


@pytest.mark.slow
@torch.no_grad()
def test_named_vit_l_14_builds_offline() -> None:
    """The paper's architecture from open_clip's built-in config, with its shipped BPE vocabulary (random weights)."""
    clip = ClipSimilarity("ViT-L-14")
    assert clip.size == (224, 224)
    assert sum(p.numel() for p in clip.parameters()) > 4e8
    sims = clip(images(7, batch=1), images(8, batch=1), ["a cat"], ["a red cat"])
    assert all(s.shape == (1,) and torch.isfinite(s).all() for s in sims)
