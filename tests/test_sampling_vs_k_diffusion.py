"""`sampling.sample` by name against k-diffusion's own `sample_*` functions called directly.

Both run the tiny editing model's k-diffusion denoiser under three-way guidance on the same x,
sigmas and extra_args. Ancestral samplers get the same per-step noise: a `noise_sampler` built
from a seeded generator on both sides, or (our default path, what edit_cli uses) `generator=` on
ours against an equivalent noise sampler handed to k-diffusion. The calls are the same
computation, so the results must be bit-identical; guards check that the samplers moved x and
differ from each other, so equality is not trivially met.
"""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_model
from k_diffusion import sampling as ks

from ldm.models.diffusion.sampling import SAMPLERS, CFGDenoiser, denoiser, get_sigmas, sample

# our name -> k-diffusion's function, written out here so a remapped name cannot pass
REFERENCE = {
    "euler_a": ks.sample_euler_ancestral,
    "euler": ks.sample_euler,
    "heun": ks.sample_heun,
    "dpmpp_2m": ks.sample_dpmpp_2m,
    "dpmpp_2s_a": ks.sample_dpmpp_2s_ancestral,
    "lms": ks.sample_lms,
}
ANCESTRAL = {"euler_a", "dpmpp_2s_a"}
STEPS = 4


@pytest.fixture(scope="module")
def setup():
    """(guided denoiser, x = noise * sigma_max (1, 4, 8, 8), sigmas (STEPS + 1,), extra_args)."""
    model = tiny_model(scale=1.0)
    wrapped = denoiser(model)
    g = torch.Generator().manual_seed(7)
    cond = {"c_concat": [torch.randn(1, 4, 8, 8, generator=g)], "c_crossattn": [torch.randn(1, 77, 32, generator=g)]}
    uncond = {"c_concat": [torch.zeros(1, 4, 8, 8)], "c_crossattn": [torch.randn(1, 77, 32, generator=g)]}
    extra_args = {"cond": cond, "uncond": uncond, "text_cfg_scale": 7.5, "image_cfg_scale": 1.5}
    sigmas = get_sigmas(wrapped, STEPS)
    x = torch.randn(1, 4, 8, 8, generator=g) * sigmas[0]
    return CFGDenoiser(wrapped), x, sigmas, extra_args


def seeded_noise_sampler(x: torch.Tensor, seed: int):
    g = torch.Generator().manual_seed(seed)
    return lambda sigma, sigma_next: torch.randn(x.shape, generator=g, dtype=x.dtype)


def test_every_name_is_the_k_diffusion_function():
    assert SAMPLERS == REFERENCE


@pytest.mark.parametrize("name", list(REFERENCE))
@torch.no_grad()
def test_sample_equals_k_diffusion(setup, name):
    model_fn, x, sigmas, extra_args = setup
    ticks = {"ours": [], "theirs": []}
    kwargs = {"noise_sampler": seeded_noise_sampler(x, 5)} if name in ANCESTRAL else {}
    theirs = REFERENCE[name](model_fn, x.clone(), sigmas, extra_args=extra_args, disable=True,
                             callback=lambda info: ticks["theirs"].append(info["i"]), **kwargs)  # fmt: skip
    ours = sample(model_fn, x.clone(), sigmas, name, extra_args=extra_args,
                  callback=lambda info: ticks["ours"].append(info["i"]),
                  noise_sampler=seeded_noise_sampler(x, 5) if name in ANCESTRAL else None)  # fmt: skip
    assert torch.equal(ours, theirs), (ours - theirs).abs().max()
    assert ticks["ours"] == ticks["theirs"] == list(range(STEPS))
    assert (ours - x).abs().max() > 1  # the sampler moved x: sigma_max ~ 14.6 of noise left the latent


@pytest.mark.parametrize("name", sorted(ANCESTRAL))
@torch.no_grad()
def test_generator_gives_k_diffusion_unit_noise_per_step(setup, name):
    """Our default ancestral noise, `generator=`, is one N(0, I) draw of x's shape per step from it."""
    model_fn, x, sigmas, extra_args = setup
    theirs = REFERENCE[name](model_fn, x.clone(), sigmas, extra_args=extra_args, disable=True,
                             noise_sampler=seeded_noise_sampler(x, 9))  # fmt: skip
    ours = sample(model_fn, x.clone(), sigmas, name, extra_args=extra_args, generator=torch.Generator().manual_seed(9))
    assert torch.equal(ours, theirs), (ours - theirs).abs().max()
    other_seed = sample(model_fn, x.clone(), sigmas, name, extra_args=extra_args,
                        generator=torch.Generator().manual_seed(10))  # fmt: skip
    assert (other_seed - ours).abs().max() > 1e-2  # the noise matters, so the equality above says something


@torch.no_grad()
def test_samplers_differ_from_each_other(setup):
    """Guard for the equalities above: six distinct results, so a name mapped to another sampler would show."""
    model_fn, x, sigmas, extra_args = setup
    results = {}
    for name in REFERENCE:
        generator = torch.Generator().manual_seed(1)
        results[name] = sample(model_fn, x.clone(), sigmas, name, extra_args=extra_args, generator=generator)
    names = list(results)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert (results[a] - results[b]).abs().max() > 1e-3, (a, b)


def test_unknown_sampler_names_the_choices(setup):
    model_fn, x, sigmas, extra_args = setup
    with pytest.raises(ValueError, match="unknown sampler 'ddim'.*euler_a"):
        sample(model_fn, x, sigmas, "ddim", extra_args=extra_args)
