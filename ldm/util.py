"""Config instantiation and small helpers shared across `ldm`.

Configs follow the CompVis convention: a mapping with `target` (a dotted import path)
and optional `params` (keyword arguments). Instantiation is strict: every problem is
reported as one `ConfigError` naming the config path and the class, so a typo such as
`model.params.unet_config.params.num_heds` is caught before any weights are built.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

# Takes any arguments; original inference configs use it as the autoencoder's "no loss".
_PASSTHROUGH_TARGETS = {"torch.nn.Identity"}


class ConfigError(ValueError):
    """A user-facing configuration mistake; the message names the config path."""


def get_obj_from_str(path: str, config_path: str = "config") -> Any:
    """Import `package.module.Name` and return `Name`, or raise ConfigError naming `config_path`."""
    module_name, _, attr = path.rpartition(".")
    if not module_name:
        raise ConfigError(f"{config_path}.target: {path!r} is not a dotted path like 'package.module.Class'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"{config_path}.target: cannot import module {module_name!r} ({err})") from err
    try:
        return getattr(module, attr)
    except AttributeError as err:
        raise ConfigError(f"{config_path}.target: module {module_name!r} has no attribute {attr!r}") from err


def _to_plain(config: Any) -> Any:
    """OmegaConf containers -> plain dicts/lists; anything else unchanged."""
    if isinstance(config, (DictConfig, ListConfig)):
        return OmegaConf.to_container(config, resolve=True)
    return config


def check_params(cls: Any, params: Mapping[str, Any], config_path: str) -> None:
    """Raise ConfigError if `params` names a keyword `cls` does not take or misses a required one."""
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):  # builtins without a signature: nothing to check
        return
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
    named = {
        name: p
        for name, p in signature.parameters.items()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    qualname = f"{cls.__module__}.{cls.__qualname__}"
    if not accepts_any:
        unknown = [k for k in params if k not in named]
        if unknown:
            hint = ", ".join(sorted(named)) or "no parameters"
            raise ConfigError(
                f"{config_path}.params.{unknown[0]}: {qualname} has no parameter {unknown[0]!r} "
                f"(it takes: {hint})"
            )
    missing = [n for n, p in named.items() if p.default is inspect.Parameter.empty and n not in params]
    if missing:
        raise ConfigError(f"{config_path}.params.{missing[0]}: required by {qualname} but not set")


def instantiate_from_config(config: Any, path: str = "config", **extra: Any) -> Any:
    """Build `target(**params, **extra)` from a `target`/`params` mapping.

    `path` is where this mapping sits in the user's YAML (for example
    `model.params.unet_config`); errors name it. Nested configs are built by the
    constructors themselves, which pass their own path down.
    """
    config = _to_plain(config)
    if not isinstance(config, Mapping):
        raise ConfigError(f"{path}: expected a mapping with 'target' and 'params', got {type(config).__name__}")
    unknown_keys = set(config) - {"target", "params"}
    if unknown_keys:
        raise ConfigError(f"{path}.{sorted(unknown_keys)[0]}: unknown key (a config has 'target' and 'params')")
    if "target" not in config:
        raise ConfigError(f"{path}.target: missing (every config needs a dotted 'target' class path)")
    target = config["target"]
    params = dict(config.get("params") or {})
    if not isinstance(params, dict):
        raise ConfigError(f"{path}.params: expected a mapping, got {type(params).__name__}")
    cls = get_obj_from_str(target, path)
    params.update(extra)
    if target not in _PASSTHROUGH_TARGETS:
        check_params(cls, params, path)
    try:
        return cls(**params)
    except ConfigError:
        raise
    except TypeError as err:
        raise ConfigError(f"{path}: {target} rejected its params ({err})") from err


def count_params(model: Any) -> int:
    """Number of parameters of a torch module."""
    return sum(p.numel() for p in model.parameters())
