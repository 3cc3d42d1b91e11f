"""Prompt-to-Prompt pairs: two-way guidance math, token alignment, step tracking, and the sharing
invariants on a tiny text-to-image model (identical prompts, p = 0, which layers and steps)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from helpers import ROOT
from omegaconf import OmegaConf

from dataset_creation.prompt2prompt import AttentionSharing, Sharing, StepTracker, align_tokens, sample_pairs
from ldm.models.diffusion.sampling import CFGDenoiser, denoiser, get_sigmas, sample

TINY_TXT2IMG = ROOT / "configs" / "tests" / "tiny_txt2img.yaml"
STEPS = 4
# Pairs vs images sampled alone differ by rounding: fused vs explicit attention and batch 8 vs 2
# (~1e-6 of the noise prediction), times up to 2 * 7.5 - 1 = 14 from the guidance, integrated over
# sigma_max = 14.6 by the sampler: ~2e-4 (measured up to 2.1e-4). The captions' effect is > 0.1.
ATOL = 1e-3
CAPTIONS = ("a photo of a cat on a sofa", "a photo of a black dog on a sofa")
SHARE_ALL = Sharing()


# ---- tiny model ---------------------------------------------------------------------------------
def tiny_txt2img_config() -> dict:
    """The `model` section of configs/tests/tiny_txt2img.yaml as a plain dict (no base_learning_rate)."""
    config = OmegaConf.to_container(OmegaConf.load(TINY_TXT2IMG).model, resolve=True)
    config.pop("base_learning_rate")
    return config


@torch.no_grad()
def tiny_txt2img(seed: int = 0, scale: float = 0.5):
    """Tiny text-to-image model whose zero-initialised UNet layers (output conv, transformer proj_out) get
    N(0, scale^2 / fan_in) weights, so attention and text change the predicted noise."""
    from ldm.util import instantiate_from_config

    torch.manual_seed(seed)
    model = instantiate_from_config(tiny_txt2img_config(), "model")
    generator = torch.Generator().manual_seed(seed)
    for p in model.model.parameters():
        if not p.any():
            p.copy_(scale * torch.randn(p.shape, generator=generator) / math.sqrt(max(1, p[0].numel())))
    return model.eval()


def save_tiny_txt2img(root: Path) -> tuple[Path, Path]:
    """(config YAML, checkpoint) of the tiny text-to-image model under `root`."""
    root.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": tiny_txt2img().state_dict()}, root / "txt2img.ckpt")
    OmegaConf.save({"model": OmegaConf.load(TINY_TXT2IMG).model}, root / "txt2img.yaml")
    return root / "txt2img.yaml", root / "txt2img.ckpt"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread (several times faster on a shared, busy CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model():
    return tiny_txt2img()


def noise_sampler(b: int, seed: int):
    """Per-call ancestral noise (b, 4, 8, 8) from one seeded generator, and the same draw again for a replay."""
    generator = torch.Generator().manual_seed(seed)
    return lambda sigma, sigma_next: torch.randn((b, 4, 8, 8), generator=generator)


@torch.inference_mode()
def pairs(model, captions, p, sampler: str = "euler_a", sharing: Sharing = SHARE_ALL, b: int = 2) -> torch.Tensor:
    """Latents (2, b, 4, 8, 8) of b pairs with fixed initial noise, cfg 7.5 and p (b,)."""
    model_denoiser = denoiser(model)
    noise = torch.randn((b, 4, 8, 8), generator=torch.Generator().manual_seed(1))
    sigmas = get_sigmas(model_denoiser, STEPS)
    return sample_pairs(model, model_denoiser, captions, noise, torch.as_tensor(p, dtype=torch.float32),
                        torch.full((b,), 7.5), sigmas, sampler, noise_sampler(b, 2), sharing)  # fmt: skip


@torch.inference_mode()
def independent(model, caption: str, index: int, b: int = 2) -> torch.Tensor:
    """Pair `index`'s image of `caption` sampled alone, no controller, same initial and ancestral noise: (4, 8, 8)."""
    model_denoiser = denoiser(model)
    noise = torch.randn((b, 4, 8, 8), generator=torch.Generator().manual_seed(1))[index : index + 1]
    sigmas = get_sigmas(model_denoiser, STEPS)
    text = model.get_learned_conditioning([caption, ""])  # (2, T, D)
    draw = noise_sampler(b, 2)
    extra = {"cond": text[:1], "uncond": text[1:], "cfg_scale": 7.5}
    z = sample(CFGDenoiser(model_denoiser), noise * sigmas[0], sigmas, "euler_a", extra,
               noise_sampler=lambda s, s_next: draw(s, s_next)[index : index + 1])  # fmt: skip
    return z[0]


# ---- two-way guidance ---------------------------------------------------------------------------
class StubDenoiser(torch.nn.Module):
    """D(x, sigma) = x + sigma + 100 * text (per-sample constant), recording its inputs."""

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: dict) -> torch.Tensor:
        self.seen = (x, sigma, cond)
        text = cond["c_crossattn"][0].flatten(1)[:, :1, None, None]  # (2B, 1, 1, 1)
        return x + sigma[:, None, None, None] + 100 * text


def test_text_cfg_denoiser_batch_order_and_combination() -> None:
    x = torch.stack([torch.full((4, 2, 2), 1.0), torch.full((4, 2, 2), 2.0)])  # (2, 4, 2, 2)
    sigma = torch.tensor([3.0, 3.0])
    cond, uncond = torch.full((2, 5, 8), 1.0), torch.zeros(2, 5, 8)
    stub = StubDenoiser()
    out = CFGDenoiser(stub)(x, sigma, cond, uncond, cfg_scale=torch.tensor([7.5, 2.0]))
    seen_x, seen_sigma, seen_cond = stub.seen
    assert torch.equal(seen_x, torch.cat([x, x])) and torch.equal(seen_sigma, torch.full((4,), 3.0))
    assert seen_cond["c_crossattn"][0][:, 0, 0].tolist() == [1.0, 1.0, 0.0, 0.0]  # [text; no text]
    # uncond + s * (cond - uncond) = (x + 3) + s * 100
    assert torch.equal(out[0], torch.full((4, 2, 2), 1 + 3 + 750.0))
    assert torch.equal(out[1], torch.full((4, 2, 2), 2 + 3 + 200.0))
    scalar = CFGDenoiser(stub)(x, sigma, cond, uncond, cfg_scale=1.0)
    assert torch.equal(scalar, x + 3 + 100)  # scale 1: the conditional prediction


# ---- token alignment and steps ------------------------------------------------------------------
def test_align_tokens() -> None:
    # BOS a cat EOS pad pad -> BOS a black cat EOS pad: "black" is new, the padding aligns too
    assert align_tokens([0, 5, 7, 9, 9, 9], [0, 5, 6, 7, 9, 9]).tolist() == [0, 1, -1, 2, 3, 4]
    assert align_tokens([0, 5, 7, 9], [0, 5, 8, 9]).tolist() == [0, 1, -1, 3]  # a swapped word keeps its own
    assert align_tokens([1, 2, 3], [1, 2, 3]).tolist() == [0, 1, 2]
    assert align_tokens([1, 2, 3], [4]).tolist() == [-1]


class SigmaStub(torch.nn.Module):
    def __init__(self, controller: AttentionSharing) -> None:
        super().__init__()
        self.controller, self.steps = controller, []

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, **kwargs) -> torch.Tensor:
        self.steps.append(self.controller.step)
        return x * 0.5


@pytest.mark.parametrize(
    ("sampler", "expected"),
    [
        ("euler_a", [0, 1, 2, 3]),
        ("euler", [0, 1, 2, 3]),
        ("heun", [0, 1, 1, 2, 2, 3, 3]),  # the second evaluation of step i is at sigmas[i + 1]
        ("dpmpp_2s_a", [0, 1, 1, 2, 2, 3, 3]),  # so is the midpoint, at eta 1: sigma_down = sigmas[i + 1]^2 / sigmas[i]
    ],
)
def test_step_tracker_reads_the_step_from_sigma(sampler: str, expected: list[int]) -> None:
    sigmas = torch.tensor([10.0, 6.0, 3.0, 1.5, 0.0])
    controller = AttentionSharing(torch.tensor([1.0]), 4, torch.zeros(2, 1, dtype=torch.long), Sharing())
    controller.step = 99
    stub = SigmaStub(controller)
    sample(StepTracker(stub, controller, sigmas), torch.ones(1, 1, 1, 1), sigmas, sampler,
           noise_sampler=lambda s, s_next: torch.zeros(1, 1, 1, 1))  # fmt: skip
    assert stub.steps == expected


# ---- sharing invariants on the tiny model -------------------------------------------------------
def test_identical_prompts_with_full_sharing_give_identical_images(model) -> None:
    caption = CAPTIONS[0]
    z = pairs(model, (caption, caption), [1.0, 1.0])
    assert torch.equal(z[0], z[1])
    for i in range(2):  # the source half is never touched: it is the image sampled alone
        torch.testing.assert_close(z[0, i], independent(model, caption, i), rtol=0, atol=ATOL)


def test_no_sharing_equals_two_independent_samples_from_the_same_noise(model) -> None:
    z = pairs(model, CAPTIONS, [0.0, 0.0])
    for half, caption in enumerate(CAPTIONS):
        for i in range(2):
            torch.testing.assert_close(z[half, i], independent(model, caption, i), rtol=0, atol=ATOL)
    assert (z[0] - z[1]).abs().max() > 0.1  # the captions differ, so do the images


def test_sharing_moves_the_edited_image_towards_the_source(model) -> None:
    apart = pairs(model, CAPTIONS, [0.0, 0.0])
    shared = pairs(model, CAPTIONS, [1.0, 1.0])
    torch.testing.assert_close(shared[0], apart[0], rtol=0, atol=ATOL)  # sources unchanged
    assert (shared[1] - shared[0]).abs().mean() < (apart[1] - apart[0]).abs().mean()


def record_calls(monkeypatch) -> list[dict]:
    """Every controller call: step, layer, kind, and which pairs' edited maps it changed."""
    calls: list[dict] = []
    original = AttentionSharing.__call__

    def recording(self, probs, *, name, is_cross):
        out = original(self, probs, name=name, is_cross=is_cross)
        before, after = probs.view(2, 2, -1, *probs.shape[1:]), out.view(2, 2, -1, *probs.shape[1:])
        changed = [bool((before[:, 1, i] != after[:, 1, i]).any()) for i in range(before.shape[2])]
        calls.append({"step": self.step, "name": name, "is_cross": is_cross, "changed": changed, "same": out is probs,
                      "source_kept": torch.equal(before[:, 0], after[:, 0]), "in": before, "out": after})  # fmt: skip
        return out

    monkeypatch.setattr(AttentionSharing, "__call__", recording)
    return calls


def test_controller_touches_only_the_configured_layers_and_steps(model, monkeypatch) -> None:
    names = [n for n, m in model.model.diffusion_model.named_modules() if n.endswith((".attn1", ".attn2"))]
    # the last layers: there the text has made the two halves' maps differ, even at step 0
    self_layer = [n for n in names if n.endswith("attn1")][-1]
    cross_layer = [n for n in names if n.endswith("attn2")][-1]
    calls = record_calls(monkeypatch)
    sharing = Sharing(layers=frozenset({self_layer, cross_layer}))
    pairs(model, CAPTIONS, [0.5, 0.25], sampler="euler", sharing=sharing)  # 4 steps: pair 0 shares 2, pair 1 one

    assert {c["name"] for c in calls} == set(names) and {c["step"] for c in calls} == set(range(STEPS))
    assert all(c["source_kept"] for c in calls)
    controlled = {(c["step"], c["name"]) for c in calls if not c["same"]}  # the others got their input back
    assert controlled == {(step, name) for step in (0, 1) for name in (self_layer, cross_layer)}
    touched = {(c["step"], c["name"], tuple(c["changed"])) for c in calls if any(c["changed"])}
    expected = {(0, self_layer, (True, True)), (0, cross_layer, (True, True)),
                (1, self_layer, (True, False)), (1, cross_layer, (True, False))}  # fmt: skip
    assert touched == expected
    for c in calls:
        if c["step"] == 0 and c["name"] == self_layer:  # self-attention: the source's maps, whole
            assert torch.equal(c["out"][:, 1], c["out"][:, 0])


def test_cross_attention_columns_follow_the_token_alignment(model, monkeypatch) -> None:
    calls = record_calls(monkeypatch)
    pairs(model, CAPTIONS, [1.0, 1.0], sampler="euler", sharing=Sharing(self_attention=False))
    ids = model.cond_stage_model.tokenize(list(CAPTIONS))["input_ids"]  # (2, 77)
    mapping = align_tokens(ids[0].tolist(), ids[1].tolist())
    new = (mapping < 0).nonzero().flatten().tolist()
    assert len(new) == 2  # "black" and "dog" are not in the source caption; "cat" is not in the edit
    assert {c["step"] for c in calls if any(c["changed"])} == set(range(STEPS))
    assert not any(any(c["changed"]) for c in calls if not c["is_cross"])
    for c in calls:
        if c["is_cross"]:
            source, edited_in, edited_out = c["in"][:, 0], c["in"][:, 1], c["out"][:, 1]  # (2, b, heads, N_q, 77)
            kept = mapping >= 0
            assert torch.equal(edited_out[0][..., kept], source[0][..., mapping[kept]])  # conditional group
            assert torch.equal(edited_out[0][..., new], edited_in[0][..., new])
            assert torch.equal(edited_out[1], source[1])  # unconditional group: both "", one to one


def test_controller_is_detached_after_sampling(model) -> None:
    pairs(model, CAPTIONS, [0.5, 0.5])
    attention = [m for m in model.modules() if type(m).__name__ == "CrossAttention"]
    assert attention and all(m.controller is None for m in attention)
