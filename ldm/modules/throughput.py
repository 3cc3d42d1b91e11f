"""`model.params.throughput`: training-speed switches, all off by default until measured.

    throughput:
      channels_last: false   # the UNet's weights in NHWC memory format (activations follow)
      compile_unet: false    # torch.compile of the UNet's forward (its module and state-dict keys unchanged)
      sdpa_backend: null     # null: PyTorch's choice; or math, flash, efficient, cudnn (torch.nn.attention)
      fused_adamw: false     # AdamW's fused kernel (CUDA and CPU)
      adam_8bit: false       # bitsandbytes' AdamW8bit, CUDA only

None of them changes a checkpoint: keys, shapes and dtypes stay the same, so a run can switch them
between resumes. `bench/throughput_switches.py` measures each against the default at the demo size.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ldm.util import ConfigError, settings_section

SDPA_BACKENDS = ("math", "flash", "efficient", "cudnn")


@dataclasses.dataclass(frozen=True)
class ThroughputSettings:
    """See the module docstring; `from_config` validates."""

    channels_last: bool = False
    compile_unet: bool = False
    sdpa_backend: str | None = None
    fused_adamw: bool = False
    adam_8bit: bool = False

    @classmethod
    def from_config(cls, config: Any, path: str) -> ThroughputSettings:
        """Validated settings; a ConfigError names `path.<key>` for an unknown key or a bad value."""
        if config is None:
            return cls()
        flags = ("channels_last", "compile_unet", "fused_adamw", "adam_8bit")
        config = settings_section(cls, config, path, flags=flags)
        backend = config.get("sdpa_backend")
        if backend is not None and backend not in SDPA_BACKENDS:
            raise ConfigError(f"{path}.sdpa_backend: {backend!r} is not null or one of {', '.join(SDPA_BACKENDS)}")
        if config.get("fused_adamw") and config.get("adam_8bit"):
            raise ConfigError(f"{path}: fused_adamw and adam_8bit are two optimizers; choose one")
        return cls(**config)

    def apply(self, unet: nn.Module, compile_backend: str = "inductor") -> None:
        """Memory format and compilation of the UNet (in place; the module and its parameters stay)."""
        if self.channels_last:
            unet.to(memory_format=torch.channels_last)
        if self.compile_unet:  # an instance attribute: no `_orig_mod.` in the keys
            unet.forward = torch.compile(unet.forward, backend=compile_backend)

    def attention(self) -> contextlib.AbstractContextManager:
        """The SDPA backend for a training step (none: PyTorch picks per call)."""
        if self.sdpa_backend is None:
            return contextlib.nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backend = {"math": SDPBackend.MATH, "flash": SDPBackend.FLASH_ATTENTION,
                   "efficient": SDPBackend.EFFICIENT_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}  # fmt: skip
        return sdpa_kernel(backend[self.sdpa_backend])

    def optimizer(self, params: Iterable[nn.Parameter], lr: float, device: torch.device, path: str):
        """AdamW (fused when asked) or bitsandbytes' AdamW8bit; a ConfigError when the device cannot."""
        params = list(params)
        if self.adam_8bit:
            if device.type != "cuda":
                raise ConfigError(f"{path}.adam_8bit: bitsandbytes' 8-bit Adam runs on CUDA only (here: {device})")
            try:
                import bitsandbytes as bnb
            except ImportError as err:
                raise ConfigError(f"{path}.adam_8bit: needs bitsandbytes (pip install bitsandbytes)") from err
            return bnb.optim.AdamW8bit(params, lr=lr)
        return torch.optim.AdamW(params, lr=lr, fused=True if self.fused_adamw else None)
