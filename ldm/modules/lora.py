"""LoRA adapters (Hu et al., 2021) on the UNet and optionally the text encoder, built on peft.

A LoRA layer adds `(alpha / r) * B @ A` to a frozen linear weight W (out, in), with A (r, in)
random and B (out, r) zero at the start, so a new adapter leaves the model unchanged. peft
(the library diffusers uses) does the layer surgery: an adapted `to_q` becomes a peft
`lora.Linear` whose frozen weight sits at `to_q.base_layer.weight` and whose factors are
`to_q.lora_A.default.weight` / `to_q.lora_B.default.weight`.

Targets are module-name suffixes. The UNet's attention projections carry diffusers' names
(`to_q`, `to_k`, `to_v`, `to_out.0`, see `ldm.modules.attention.CrossAttention`), and so do
the feed-forward layers (`ff.net.0.proj`, `ff.net.2`). The text encoder's are those of its
transformers model (CLIP: `q_proj`, `k_proj`, `v_proj`, `out_proj`; MiniLM/BERT: `query`, `key`,
`value`). `train_conv_in` trains the UNet's first convolution in full
(`model.diffusion_model.input_blocks.0.0`), which an editing model widened from a 4-channel SD
checkpoint needs: its 4 new input channels start at zero and no low-rank update of the
attention layers can make the UNet see the input image.

Files. An adapter is a `.safetensors` file in the layout diffusers'
`StableDiffusionInstructPix2PixPipeline.load_lora_weights` reads (peft names, no adapter name):
`unet.<diffusers module>.lora_A.weight`, `unet.<...>.lora_B.weight`,
`text_encoder.<module>.lora_A.weight`, ..., with rank and alpha in the header metadata
`lora_adapter_metadata` (`{"unet.r": 4, "unet.lora_alpha": 4, "unet.target_modules": [...]}`, as
diffusers' `save_lora_weights` writes it). A trained `conv_in` is stored as `unet.conv_in.weight` /
`unet.conv_in.bias` (full tensors); diffusers' loader skips those keys, so such an adapter only
reproduces its edits in diffusers once merged (`scripts/merge_lora.py`) and exported
(`scripts/convert_to_diffusers.py`). UNet module names are translated with diffusers' own
checkpoint converter (`convert_ldm_unet_checkpoint`, the one `ldm.diffusers_export` uses), fed
with the names themselves, so there is no second mapping table; reading and writing this
layout needs diffusers installed. Files without metadata get alpha = rank (diffusers' rule), or
the `<module>.alpha` entries a file carries.

A LoRA training checkpoint (Lightning `.ckpt`) holds only the trainable tensors (adapters,
conv_in), their EMA, and `checkpoint["lora"] = {"settings": ..., "base": {"path", "sha256"}}`,
the frozen base weights being `model.params.ckpt_path`. It can be given wherever an adapter file
can (its EMA weights are used when present, as `ldm.inference.load_model` prefers EMA weights).

Applying an adapter for inference (`apply_adapter`) merges it into the base weights with its
scale: W + scale * (alpha / r) * B @ A, and conv_in W + scale * (W_adapter - W); the model then
has its usual modules and names, and several adapters add up.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ldm.errors import CheckpointMismatchError, ConfigError
from ldm.util import settings_section

UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
FEED_FORWARD_TARGETS = ("ff.net.0.proj", "ff.net.2")
UNET = "model.diffusion_model."  # the UNet's prefix in the LatentDiffusion state dict
TEXT = "cond_stage_model.transformer."  # the text encoder's transformers model
CONV_IN = "input_blocks.0.0"  # the UNet's first convolution (diffusers: conv_in)
ADAPTER = "default"  # peft adapter name of the adapter being trained
METADATA_KEY = "lora_adapter_metadata"  # diffusers' safetensors header entry (loaders.lora_base)
DIFFUSERS_PREFIXES = {"unet.": UNET, "text_encoder.": TEXT}


# ---- settings ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoraSettings:
    """`model.params.lora_config`: rank r, alpha (None: = r), dropout on the adapter's input, UNet target
    suffixes (+ the feed-forward layers with `feed_forward`), text-encoder target suffixes (none: the
    text encoder stays frozen) and whether the UNet's first convolution trains in full."""

    rank: int = 4
    alpha: float | None = None
    dropout: float = 0.0
    targets: tuple[str, ...] = UNET_TARGETS
    feed_forward: bool = False
    text_encoder_targets: tuple[str, ...] = ()
    train_conv_in: bool = False

    @property
    def lora_alpha(self) -> float:
        return float(self.rank if self.alpha is None else self.alpha)

    @property
    def unet_targets(self) -> tuple[str, ...]:
        return self.targets + (FEED_FORWARD_TARGETS if self.feed_forward else ())

    def as_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_config(cls, config: Any, path: str) -> LoraSettings:
        """Validated settings; a ConfigError names `path.<key>` for an unknown key or a bad value."""
        values = settings_section(cls, config, path, flags=("feed_forward", "train_conv_in"))
        rank = values.get("rank", cls.rank)
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ConfigError(f"{path}.rank: must be an integer >= 1, got {rank!r}")
        alpha = values.get("alpha")
        if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0):
            raise ConfigError(f"{path}.alpha: must be a number > 0 (or null for alpha = rank), got {alpha!r}")
        dropout = values.get("dropout", cls.dropout)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ConfigError(f"{path}.dropout: must be a number in [0, 1), got {dropout!r}")
        lists = {}
        for key in ("targets", "text_encoder_targets"):
            value = values.get(key, getattr(cls, key))
            if isinstance(value, str) or not isinstance(value, Sequence) or not all(
                isinstance(v, str) and v for v in value
            ):
                raise ConfigError(f"{path}.{key}: must be a list of module-name suffixes like to_q, got {value!r}")
            lists[key] = tuple(value)
        settings = cls(
            rank=rank,
            alpha=None if alpha is None else float(alpha),
            dropout=float(dropout),
            feed_forward=values.get("feed_forward", False),
            train_conv_in=values.get("train_conv_in", False),
            **lists,
        )
        if not (settings.unet_targets or settings.text_encoder_targets or settings.train_conv_in):
            raise ConfigError(f"{path}.targets: nothing would train (no targets and train_conv_in false)")
        return settings


# ---- adapting a module ---------------------------------------------------------------------------
def matching_modules(module: nn.Module, suffix: str) -> list[str]:
    """Names of the linear layers in `module` that `suffix` selects (peft's rule: the name or `*.suffix`)."""
    return [
        name
        for name, m in module.named_modules()
        if isinstance(m, nn.Linear) and (name == suffix or name.endswith("." + suffix))
    ]


def inject(module: nn.Module, targets: Sequence[str], rank: int, alpha: float, dropout: float = 0.0,
           name: str = ADAPTER, config_key: str | None = None) -> None:  # fmt: skip
    """Wrap the linear layers of `module` that `targets` select in peft LoRA layers (B = 0: no change yet).
    A target that selects nothing is a ConfigError naming `config_key` (else a ValueError)."""
    from peft import LoraConfig, inject_adapter_in_model

    for target in targets:
        if not matching_modules(module, target):
            examples = sorted({n.rsplit(".", 2)[-1] if n.endswith(".0") else n.rsplit(".", 1)[-1]
                               for n, m in module.named_modules() if isinstance(m, nn.Linear)})  # fmt: skip
            message = f"{target!r} names no linear layer of {type(module).__name__} (its last names: {examples[:12]})"
            raise ConfigError(f"{config_key}: {message}") if config_key else ValueError(message)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets))
    # peft edits the modules in place; it is handed a plain holder of `module`'s children, so that it neither
    # treats our CLIP holder (which has a transformers `config`) as a transformers model nor leaves a
    # `peft_config` attribute behind. Replaced children of the root itself are put back.
    holder = nn.Module()
    for child_name, child in module.named_children():
        holder.add_module(child_name, child)
    inject_adapter_in_model(config, holder, adapter_name=name)
    for child_name, child in holder.named_children():
        if getattr(module, child_name) is not child:
            setattr(module, child_name, child)


def add_adapters(model: nn.Module, settings: LoraSettings, path: str = "lora_config") -> None:
    """Freeze the UNet and the text encoder of a LatentDiffusion, then add trainable adapters (and conv_in)."""
    unet = model.model.diffusion_model
    unet.requires_grad_(False)
    if settings.unet_targets:
        inject(unet, settings.unet_targets, settings.rank, settings.lora_alpha, settings.dropout,
               config_key=f"{path}.targets")  # fmt: skip
    if settings.train_conv_in:
        unet.get_submodule(CONV_IN).requires_grad_(True)
    if settings.text_encoder_targets:
        encoder = model.cond_stage_model
        encoder.requires_grad_(False)
        inject(encoder.transformer, settings.text_encoder_targets, settings.rank, settings.lora_alpha,
               settings.dropout, config_key=f"{path}.text_encoder_targets")  # fmt: skip
        # not frozen any more: the empty-prompt embedding is recomputed with the adapters, dropout applies
        encoder.frozen = False


def lora_layers(module: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(name, peft LoRA layer) pairs in `module`."""
    from peft.tuners.lora import LoraLayer

    for name, m in module.named_modules():
        if isinstance(m, LoraLayer):
            yield name, m


def merge_and_unload(module: nn.Module) -> int:
    """Merge every peft LoRA layer of `module` into its base layer (with its current scale) and put the
    base layer back in its place; the module's names and state dict become the plain ones. Returns the count."""
    layers = list(lora_layers(module))
    for name, layer in layers:
        layer.merge()
        parent, _, child = name.rpartition(".")
        setattr(module.get_submodule(parent) if parent else module, child, layer.get_base_layer())
    return len(layers)


def set_scale(module: nn.Module, scale: float, name: str = ADAPTER) -> None:
    """Scale adapter `name` in every LoRA layer of `module`: its update becomes scale * (alpha / r) * B @ A."""
    for _, layer in lora_layers(module):
        layer.set_scale(name, scale)


# ---- adapters as tensors -------------------------------------------------------------------------
@dataclass
class Adapter:
    """An adapter in this project's names. `lora`: module name in the LatentDiffusion (e.g.
    `model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q`) -> (A (r, in), B (out, r),
    alpha). `full`: parameter name -> tensor replacing it (a trained conv_in)."""

    lora: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = field(default_factory=dict)
    full: dict[str, torch.Tensor] = field(default_factory=dict)


def ema_key(name: str) -> str:
    """LitEma's buffer for a parameter of `model` (`model.diffusion_model.x.y` -> `model_ema.diffusion_modelxy`)."""
    return "model_ema." + name.removeprefix("model.").replace(".", "")


def adapter_from_state(state: Mapping[str, torch.Tensor], alpha: float, use_ema: bool = True) -> Adapter:
    """The adapter in a LoRA training state dict (keys `<module>.lora_A.default.weight`, conv_in, `model_ema.*`);
    the EMA copy of a UNet tensor is taken when present and `use_ema`."""

    def value(key: str) -> torch.Tensor:
        if use_ema and key.startswith(UNET) and ema_key(key) in state:
            return state[ema_key(key)]
        return state[key]

    adapter = Adapter()
    suffix_a, suffix_b = f".lora_A.{ADAPTER}.weight", f".lora_B.{ADAPTER}.weight"
    for key in state:
        if key.endswith(suffix_a):
            module = key.removesuffix(suffix_a)
            adapter.lora[module] = (value(key), value(module + suffix_b), alpha)
        elif key.startswith(f"{UNET}{CONV_IN}."):
            adapter.full[key] = value(key)
    return adapter


def adapter_from_model(model: nn.Module) -> Adapter:
    """The adapter trained in a LatentDiffusion with `lora_config` (its current weights; use `ema_scope` for EMA)."""
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("model_ema.")}
    adapter = adapter_from_state(state, model.lora.lora_alpha, use_ema=False)
    if not model.lora.train_conv_in:
        adapter.full.clear()
    adapter.lora = {k: (a.clone(), b.clone(), alpha) for k, (a, b, alpha) in adapter.lora.items()}
    adapter.full = {k: v.clone() for k, v in adapter.full.items()}
    return adapter


def apply_adapter(model: nn.Module, adapter: Adapter, scale: float = 1.0, name: str = "merging") -> None:
    """Merge `adapter` times `scale` into the base weights of a plain (adapter-free) LatentDiffusion."""
    own = model.state_dict()
    for key, tensor in adapter.full.items():
        if key not in own:
            raise CheckpointMismatchError(f"the adapter replaces {key}, which this model does not have")
        if own[key].shape != tensor.shape:
            raise CheckpointMismatchError(
                f"the adapter's {key} is {tuple(tensor.shape)}, the model's {tuple(own[key].shape)}"
            )
    groups: dict[tuple[str, int, float], list[str]] = collections.defaultdict(list)
    for module, (a, _, alpha) in adapter.lora.items():
        root = next((prefix for prefix in (UNET, TEXT) if module.startswith(prefix)), None)
        if root is None:
            raise CheckpointMismatchError(f"the adapter targets {module}, outside the UNet and the text encoder")
        groups[(root, a.shape[0], alpha)].append(module.removeprefix(root))
    for (root, rank, alpha), names in groups.items():
        base = model.get_submodule(root.rstrip("."))
        missing = [n for n in names if not isinstance(_get(base, n), nn.Linear)]
        if missing:
            raise CheckpointMismatchError(f"the adapter targets {root}{missing[0]}, not a linear layer of this model")
        inject(base, names, rank, alpha, name=name)
        for n in names:
            layer = base.get_submodule(n)
            a, b, _ = adapter.lora[root + n]
            for part, tensor in ((layer.lora_A[name], a), (layer.lora_B[name], b)):
                if part.weight.shape != tensor.shape:
                    raise CheckpointMismatchError(
                        f"the adapter's {root}{n} factor is {tuple(tensor.shape)}, this model needs "
                        f"{tuple(part.weight.shape)}"
                    )
                with torch.no_grad():
                    part.weight.copy_(tensor)
        set_scale(base, scale, name)
        merge_and_unload(base)
    with torch.no_grad():
        for key, tensor in adapter.full.items():
            weight = model.get_parameter(key)
            weight.add_(scale * (tensor.to(weight.dtype) - weight))


def _get(module: nn.Module, name: str) -> nn.Module | None:
    try:
        return module.get_submodule(name)
    except AttributeError:
        return None


# ---- diffusers' layout ---------------------------------------------------------------------------
def diffusers_unet_names(unet: nn.Module) -> dict[str, str]:
    """Our UNet's module names -> diffusers' `UNet2DConditionModel`'s, from diffusers' own converter
    (`convert_ldm_unet_checkpoint`) run on the parameter names themselves."""
    try:
        from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

        from ldm.diffusers_keys import layers_per_block
    except ImportError as err:
        raise ImportError(f"LoRA files in diffusers' layout need diffusers (pip install diffusers): {err}") from err

    keys = {k.replace(".base_layer.", ".") for k in unet.state_dict() if ".lora_" not in k}
    converted = convert_ldm_unet_checkpoint({UNET + k: k for k in keys}, {"layers_per_block": layers_per_block(unet)})
    if set(converted.values()) != keys:
        missed = sorted(keys - set(converted.values()))
        raise CheckpointMismatchError(f"diffusers' UNet converter does not map {missed[:3]}")
    return {ours.rpartition(".")[0]: theirs.rpartition(".")[0] for theirs, ours in converted.items()}


def _common(values: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    """(the most common value, {name: value} for the others): peft's r / rank_pattern split."""
    top = collections.Counter(values.values()).most_common(1)[0][0]
    return top, {k: v for k, v in values.items() if v != top}


def to_diffusers(adapter: Adapter, model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, lora_adapter_metadata) of `adapter` in diffusers' layout for this model."""
    names = diffusers_unet_names(model.model.diffusion_model)
    tensors: dict[str, torch.Tensor] = {}
    per_part: dict[str, dict[str, tuple[int, float]]] = collections.defaultdict(dict)
    for module, (a, b, alpha) in sorted(adapter.lora.items()):
        if module.startswith(UNET):
            part, theirs = "unet", names[module.removeprefix(UNET)]
        elif module.startswith(TEXT):
            part, theirs = "text_encoder", module.removeprefix(TEXT)
        else:
            raise ValueError(f"the adapter targets {module}, outside the UNet and the text encoder")
        tensors[f"{part}.{theirs}.lora_A.weight"] = a.detach().contiguous()
        tensors[f"{part}.{theirs}.lora_B.weight"] = b.detach().contiguous()
        per_part[part][theirs] = (a.shape[0], float(alpha))
    for key, tensor in adapter.full.items():
        module, _, kind = key.removeprefix(UNET).rpartition(".")
        tensors[f"unet.{names[module]}.{kind}"] = tensor.detach().contiguous()
    metadata: dict[str, Any] = {}
    for part, modules in per_part.items():
        r, rank_pattern = _common({k: v[0] for k, v in modules.items()})
        alpha, alpha_pattern = _common({k: v[1] for k, v in modules.items()})
        config = {"r": r, "lora_alpha": alpha, "target_modules": sorted(modules),
                  "rank_pattern": rank_pattern, "alpha_pattern": alpha_pattern}  # fmt: skip
        metadata.update({f"{part}.{k}": v for k, v in config.items()})
    return tensors, metadata


def _pattern_value(patterns: Mapping[str, Any], name: str, default: Any) -> Any:
    """peft's lookup of a module in rank_pattern / alpha_pattern (a key matches the name or a dotted suffix)."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern.removeprefix('^')})$", name):
            return value
    return default


def from_diffusers(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any] | None, model: nn.Module,
                   source: str | Path) -> Adapter:  # fmt: skip
    """The adapter of a diffusers-layout state dict (peft or older diffusers names) for this model; every key
    must be understood (a CheckpointMismatchError names the first that is not)."""
    theirs_to_ours = {v: k for k, v in diffusers_unet_names(model.model.diffusion_model).items()}
    text_model = hasattr(model.cond_stage_model.transformer, "text_model")
    metadata = dict(metadata or {})
    adapter = Adapter()
    for part, root in DIFFUSERS_PREFIXES.items():
        state = {k.removeprefix(part): v for k, v in tensors.items() if k.startswith(part)}
        if state and part == "unet." and not any(".lora_A." in k for k in state):
            from diffusers.utils import convert_unet_state_dict_to_peft

            state = convert_unet_state_dict_to_peft(state)  # the older diffusers names (to_q_lora.down ...)
        config = {k.removeprefix(part): v for k, v in metadata.items() if k.startswith(part)}
        for key, tensor in state.items():
            if ".lora_B." in key or key.endswith(".alpha"):
                continue
            if ".lora_A." in key:
                theirs = key.split(".lora_A.")[0]
                b_key = key.replace(".lora_A.", ".lora_B.")
                if b_key not in state:
                    raise CheckpointMismatchError(f"{source}: {part}{key} has no {part}{b_key}")
                rank = tensor.shape[0]
                if f"{theirs}.alpha" in state:
                    alpha = float(state[f"{theirs}.alpha"])
                else:
                    alpha = _pattern_value(config.get("alpha_pattern") or {}, theirs, config.get("lora_alpha", rank))
                if part == "unet.":
                    ours = theirs_to_ours.get(theirs)
                else:
                    ours = f"text_model.{theirs}" if text_model and not theirs.startswith("text_model.") else theirs
                if ours is None:
                    raise CheckpointMismatchError(f"{source}: {part}{key} names no module of this UNet")
                adapter.lora[root + ours] = (tensor, state[b_key], float(alpha))
            elif part == "unet." and key.rpartition(".")[0] == "conv_in":
                adapter.full[f"{UNET}{CONV_IN}.{key.rpartition('.')[2]}"] = tensor
            else:
                raise CheckpointMismatchError(f"{source}: {part}{key} is not a LoRA tensor this project reads")
    other = sorted(k for k in tensors if not k.startswith(tuple(DIFFUSERS_PREFIXES)))
    if other:
        raise CheckpointMismatchError(
            f"{source}: {other[0]} is neither unet.* nor text_encoder.* (kohya-style files are not read)"
        )
    return adapter


# ---- files ---------------------------------------------------------------------------------------
def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def save_adapter(adapter: Adapter, model: nn.Module, path: str | Path) -> None:
    """Write `adapter` as a diffusers-layout `.safetensors` file, atomically."""
    from safetensors.torch import save

    from ldm.io import write_bytes_atomic

    if Path(path).suffix != ".safetensors":
        raise ValueError(f"{path}: adapters are written as .safetensors")
    tensors, metadata = to_diffusers(adapter, model)
    header = {"format": "pt", METADATA_KEY: json.dumps(metadata, indent=2, sort_keys=True)}
    write_bytes_atomic(path, save(tensors, metadata=header))


def read_adapter(path: str | Path, model: nn.Module) -> Adapter:
    """The adapter in `path`: a diffusers-layout `.safetensors` file, or a LoRA training checkpoint (EMA weights
    when it has them). Errors (CheckpointMismatchError, FileNotFoundError) name the file."""
    from ldm.checkpoint import read_checkpoint

    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")
        try:
            with safe_open(str(path), framework="pt") as f:
                header = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except SafetensorError as err:
            raise CheckpointMismatchError(f"{path} is not a readable .safetensors file ({err})") from err
        try:
            metadata = json.loads(header[METADATA_KEY]) if METADATA_KEY in header else None
        except json.JSONDecodeError as err:
            raise CheckpointMismatchError(f"{path}: its {METADATA_KEY} header is not JSON ({err})") from err
        return from_diffusers(tensors, metadata, model, path)
    checkpoint = read_checkpoint(path)
    if "lora" not in checkpoint:
        raise CheckpointMismatchError(
            f"{path} is not a LoRA checkpoint (no 'lora' entry): give an adapter .safetensors file or the .ckpt "
            "of a run with model.params.lora_config"
        )
    settings = LoraSettings.from_config(checkpoint["lora"]["settings"], f"{path}: lora.settings")
    return adapter_from_state(checkpoint["state_dict"], settings.lora_alpha)
