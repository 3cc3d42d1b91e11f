"""Exponential moving average of model weights, in the CompVis checkpoint layout.

The EMA lives inside the LightningModule as `model_ema`, so its buffers are saved as
`model_ema.decay`, `model_ema.num_updates` and one buffer per trainable parameter named
after the parameter with the dots removed (`diffusion_model.input_blocks.0.0.weight` ->
`model_ema.diffusion_modelinput_blocks00weight`). That odd naming is the ecosystem's
format (buffer names may not contain dots), so released checkpoints load unchanged.
"""

from __future__ import annotations

import torch
from torch import nn


class LitEma(nn.Module):
    """Shadow copy of `model`'s trainable parameters, updated by `ema(model)` after each step.

    With `use_num_updates`, the effective decay warms up as
    `min(decay, (1 + n) / (10 + n))` where n counts updates, so early weights are not
    averaged with the random initialisation for thousands of steps.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, use_num_updates: bool = True) -> None:
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.register_buffer("decay", torch.tensor(decay, dtype=torch.float32))
        self.register_buffer("num_updates", torch.tensor(0 if use_num_updates else -1, dtype=torch.int))
        # model parameter name -> shadow buffer name
        self.m_name2s_name: dict[str, str] = {}
        for name, p in model.named_parameters():
            if p.requires_grad:
                s_name = name.replace(".", "")
                self.m_name2s_name[name] = s_name
                self.register_buffer(s_name, p.detach().clone())
        self.collected_params: list[torch.Tensor] = []

    def current_decay(self) -> float:
        """Decay used by the next update (after the warm-up rule)."""
        decay = float(self.decay)
        if self.num_updates >= 0:
            n = int(self.num_updates) + 1
            decay = min(decay, (1 + n) / (10 + n))
        return decay

    @torch.no_grad()
    def forward(self, model: nn.Module) -> None:
        decay = self.current_decay()
        if self.num_updates >= 0:
            self.num_updates += 1
        shadows = dict(self.named_buffers())
        shadow_list, param_list = [], []
        for name, p in model.named_parameters():
            if p.requires_grad:
                shadow_list.append(shadows[self.m_name2s_name[name]])
                param_list.append(p.detach().to(shadow_list[-1].dtype))
            elif name in self.m_name2s_name:
                raise RuntimeError(f"EMA tracks {name!r}, which is no longer trainable")
        # shadow <- shadow + (1 - decay) * (param - shadow)
        if shadow_list:
            torch._foreach_lerp_(shadow_list, param_list, 1.0 - decay)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the EMA weights into `model`'s trainable parameters."""
        shadows = dict(self.named_buffers())
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(shadows[self.m_name2s_name[name]])

    def store(self, parameters) -> None:
        """Keep a copy of `parameters` so `restore` can put them back after `copy_to`."""
        self.collected_params = [p.detach().clone() for p in parameters]

    @torch.no_grad()
    def restore(self, parameters) -> None:
        """Put back the parameters saved by `store` (e.g. after validating with EMA weights)."""
        if not self.collected_params:
            raise RuntimeError("LitEma.restore called without a matching store")
        for saved, p in zip(self.collected_params, parameters, strict=True):
            p.copy_(saved)
        self.collected_params = []
