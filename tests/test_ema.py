"""LitEma: checkpoint layout, warm-up rule, store/copy_to/restore."""

import torch
from torch import nn

from ldm.modules.ema import LitEma


class Wrapper(nn.Module):
    def __init__(self):
        super().__init__()
        self.diffusion_model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.GroupNorm(1, 3))
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


def test_checkpoint_layout():
    model = Wrapper()
    ema = LitEma(model)
    keys = set(ema.state_dict())
    assert keys == {
        "decay",
        "num_updates",
        "diffusion_model0weight",
        "diffusion_model0bias",
        "diffusion_model1weight",
        "diffusion_model1bias",
    }
    assert ema.num_updates.dtype == torch.int32 and ema.decay.dtype == torch.float32


def test_update_follows_warmup_rule():
    torch.manual_seed(0)
    model = Wrapper()
    ema = LitEma(model, decay=0.9999)
    w = model.diffusion_model[0].weight
    shadow = w.detach().clone()
    for step in range(1, 6):
        with torch.no_grad():
            w.add_(torch.randn_like(w))
        decay = min(0.9999, (1 + step) / (10 + step))
        shadow = decay * shadow + (1 - decay) * w.detach()
        ema(model)
        torch.testing.assert_close(ema.diffusion_model0weight, shadow, rtol=0, atol=1e-6)
    assert int(ema.num_updates) == 5


def test_fixed_decay_without_num_updates():
    model = Wrapper()
    ema = LitEma(model, decay=0.5, use_num_updates=False)
    before = ema.diffusion_model0bias.clone()
    with torch.no_grad():
        model.diffusion_model[0].bias.add_(2.0)
    ema(model)
    torch.testing.assert_close(ema.diffusion_model0bias, before + 1.0)
    assert int(ema.num_updates) == -1


def test_store_copy_restore_roundtrip():
    model = Wrapper()
    ema = LitEma(model)
    with torch.no_grad():
        for p in model.diffusion_model.parameters():
            p.add_(1.0)
    trained = [p.detach().clone() for p in model.diffusion_model.parameters()]
    ema.store(model.diffusion_model.parameters())
    ema.copy_to(model)
    torch.testing.assert_close(model.diffusion_model[0].weight, ema.diffusion_model0weight)
    ema.restore(model.diffusion_model.parameters())
    for p, t in zip(model.diffusion_model.parameters(), trained, strict=True):
        torch.testing.assert_close(p, t)
