"""Reading checkpoints: one reader for every format, one strict key check, one error type.

Formats: a Lightning `.ckpt` (`{"state_dict": ..., "loops": ..., ...}`), a bare state dict
saved with `torch.save`, and `.safetensors`. Pickled files are always read with
`weights_only=True`, so a downloaded checkpoint cannot run code. Released SD checkpoints also
pickle Lightning callback objects and numpy scalars; those classes are replaced by an inert
stand-in that keeps their state and runs nothing (only the tensors are used).

Model-specific allow-lists stay with the models (`ldm.models.diffusion.loading` for
LatentDiffusion, `AutoencoderKL.init_from_ckpt`); both end in `load_strict` here.
"""

from __future__ import annotations

import json
import logging
import pickle
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ldm.errors import CheckpointMismatchError

# checkpoint entry (safetensors: metadata key) recording the settings that decide what the weights compute,
# beyond the tensors themselves (`LatentDiffusion.model_settings`)
MODEL_SETTINGS = "model_settings"

log = logging.getLogger(__name__)

ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default (zip) format
PICKLE_MAGIC = b"\x80"  # torch's legacy format starts with a pickle protocol opcode


class _Inert:
    """Stands in for a class pickled by another library (a Lightning callback, a numpy scalar)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _torch_load(path: Path) -> Any:
    """`torch.load(weights_only=True)`, memory-mapped, with foreign classes replaced by `_Inert`."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != ZIP_MAGIC and magic[:1] != PICKLE_MAGIC:
        raise CheckpointMismatchError(f"{path} is not a PyTorch checkpoint (.ckpt / .pt) or a .safetensors file")
    if magic != ZIP_MAGIC:  # legacy format: no memory map, no listing of its classes
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise CheckpointMismatchError(
                f"{path} (legacy torch format) pickles objects besides tensors; re-save its state dict "
                f"or convert it to .safetensors ({err})"
            ) from err
    try:
        foreign = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except (zipfile.BadZipFile, RuntimeError, OSError) as err:
        raise CheckpointMismatchError(f"{path} is truncated or not a checkpoint ({err})") from err
    if foreign:
        log.info("%s pickles %s; reading it without running their code", path, ", ".join(foreign))
    try:
        with torch.serialization.safe_globals([(_Inert, name) for name in foreign]):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError) as err:
        raise CheckpointMismatchError(f"{path} is truncated or not a checkpoint ({err})") from err


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The whole checkpoint as a dict; a `.safetensors` file reads as `{"state_dict": tensors}`, plus
    `MODEL_SETTINGS` when its metadata records them (JSON, as `scripts/export_emaonly.py` writes)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; check the path (ckpt_path or --ckpt)")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:  # tensors and metadata in one open
                checkpoint: dict[str, Any] = {"state_dict": {key: f.get_tensor(key) for key in f.keys()}}
                recorded = (f.metadata() or {}).get(MODEL_SETTINGS)
        except SafetensorError as err:
            raise CheckpointMismatchError(f"{path} is not a readable .safetensors file ({err})") from err
        if recorded is not None:
            try:
                checkpoint[MODEL_SETTINGS] = json.loads(recorded)
            except json.JSONDecodeError as err:
                raise CheckpointMismatchError(f"{path}: its {MODEL_SETTINGS} metadata is not JSON ({err})") from err
        return checkpoint
    checkpoint = _torch_load(path)
    if not isinstance(checkpoint, dict):
        raise CheckpointMismatchError(f"{path} holds a {type(checkpoint).__name__}, not a state dict")
    return checkpoint


def state_dict_of(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors of a `read_checkpoint` result: its `state_dict`, or the whole dict for a bare state dict."""
    return dict(checkpoint.get("state_dict", checkpoint))


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a `.safetensors` file, or of a `.ckpt`/`.pt` holding `{"state_dict": ...}` or a bare state dict."""
    return state_dict_of(read_checkpoint(path))


def checkpoint_keys(path: str | Path) -> set[str]:
    """Tensor names in a checkpoint; safetensors headers and memory-mapped `.ckpt` files read no tensor data."""
    path = Path(path)
    if path.suffix == ".safetensors" and path.is_file():
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return set(f.keys())
        except SafetensorError as err:
            raise CheckpointMismatchError(f"{path} is not a readable .safetensors file ({err})") from err
    return set(load_state_dict_file(path))


def has_loop_state(path: str | Path) -> bool:
    """True for Lightning training checkpoints (loops and optimizer state), False for weight-only files."""
    if Path(path).suffix == ".safetensors":
        return False
    checkpoint = read_checkpoint(path)
    return "loops" in checkpoint and "optimizer_states" in checkpoint


def describe_keys(keys: Sequence[str]) -> str:
    """`3 (a, b, c)`, or the first three and `...`: key lists short enough for one error line."""
    shown = ", ".join(keys[:3])
    return f"{len(keys)} ({shown}{', ...' if len(keys) > 3 else ''})"


def check_fits(
    module: nn.Module,
    state: dict[str, torch.Tensor],
    source: str | Path,
    may_miss: Callable[[str], bool] = lambda key: False,
    may_add: Callable[[str], bool] = lambda key: False,
    advice: str = "is the config the checkpoint's architecture?",
) -> None:
    """CheckpointMismatchError unless every key of `state` lands in `module` with its shape and every module
    key is filled. The caller's allow-list: `may_miss(key)` for module keys the checkpoint may lack,
    `may_add(key)` for checkpoint keys the module may lack. The error names `source`, the first
    offending keys and `advice`."""
    own = module.state_dict()
    wrong_shape = [k for k in state if k in own and state[k].shape != own[k].shape]
    if wrong_shape:
        k = wrong_shape[0]
        raise CheckpointMismatchError(
            f"{source}: {len(wrong_shape)} tensors have the wrong shape, e.g. {k}: checkpoint "
            f"{tuple(state[k].shape)} vs model {tuple(own[k].shape)}; {advice}"
        )
    missing = [k for k in own if k not in state and not may_miss(k)]
    unexpected = [k for k in state if k not in own and not may_add(k)]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {describe_keys(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {describe_keys(unexpected)}")
        raise CheckpointMismatchError(
            f"{source} does not match {type(module).__name__} ({'; '.join(parts)}); {advice}"
        )


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], source: str | Path, **allow: Any) -> None:
    """`check_fits(module, state, source, **allow)` (allow: may_miss, may_add, advice), then load `state`."""
    check_fits(module, state, source, **allow)
    module.load_state_dict(state, strict=False)
