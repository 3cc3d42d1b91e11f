"""Config instantiation and small helpers shared across `ldm`.

Configs follow the CompVis convention: a mapping with `target` (a dotted import path)
and optional `params` (keyword arguments). Instantiation is strict: every problem is
reported as one `ConfigError` naming the config path and the class, so a typo such as
`model.params.unet_config.params.num_heds` is caught before any weights are built.
"""

from __future__ import annotations

import contextvars
import dataclasses
import importlib
import inspect
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ldm.errors import ConfigError

log = logging.getLogger(__name__)

# Config path of the object under construction, so nested configs and errors name full paths.
_PARENT_PATH: contextvars.ContextVar[str] = contextvars.ContextVar("config_path", default="")

# Takes any arguments; original inference configs use it as the autoencoder's "no loss".
_PASSTHROUGH_TARGETS = {"torch.nn.Identity"}


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


def accepted_params(cls: Any) -> tuple[dict[str, inspect.Parameter], bool]:
    """Keyword parameters `cls(...)` takes, and whether it takes any keyword at all.

    A constructor that forwards `**kwargs` to its base class (as the editing LatentDiffusion
    does) accepts the union of its own and its bases' named parameters, so strictness
    survives subclassing.
    """
    named: dict[str, inspect.Parameter] = {}
    classes = cls.__mro__ if inspect.isclass(cls) else (cls,)
    for klass in classes:
        init = klass.__init__ if inspect.isclass(klass) else klass
        if inspect.isclass(klass) and "__init__" not in vars(klass):
            continue
        try:
            signature = inspect.signature(init)
        except (TypeError, ValueError):  # builtins without a signature: nothing to check
            return named, True
        for name, p in signature.parameters.items():
            if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
                named.setdefault(name, p)
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()):
            named.pop("self", None)
            return named, False
        if klass is object:
            break
    named.pop("self", None)
    return named, True


# Keys of the original CompVis configs that did nothing here; refused with why, so no config implies otherwise.
RETIRED_PARAMS = {
    "log_every_t": "it set how often the original sampler kept intermediates, which nothing here records",
    "monitor": "checkpoints are kept every N steps (lightning.checkpoint_every), not by a monitored metric",
}


def check_params(cls: Any, params: Mapping[str, Any], config_path: str) -> None:
    """Raise ConfigError if `params` names a keyword `cls` does not take or misses a required one."""
    named, accepts_any = accepted_params(cls)
    qualname = f"{cls.__module__}.{cls.__qualname__}"
    if not accepts_any:
        unknown = [k for k in params if k not in named]
        retired = [k for k in unknown if k in RETIRED_PARAMS]
        if retired:
            raise ConfigError(
                f"{config_path}.params.{retired[0]}: not used by this project ({RETIRED_PARAMS[retired[0]]}); "
                "delete the line"
            )
        if unknown:
            hint = ", ".join(sorted(named)) or "no parameters"
            raise ConfigError(
                f"{config_path}.params.{unknown[0]}: {qualname} has no parameter {unknown[0]!r} "
                f"(it takes: {hint})"
            )
    missing = [n for n, p in named.items() if p.default is inspect.Parameter.empty and n not in params]
    if missing:
        raise ConfigError(f"{config_path}.params.{missing[0]}: required by {qualname} but not set")


def settings_section(cls: Any, config: Any, path: str, flags: Sequence[str] = ()) -> dict[str, Any]:
    """`config` (the config section at `path`) as a dict of the settings dataclass `cls`'s fields; a
    ConfigError names `path` when it is not a mapping, and `path.<key>` for a key `cls` lacks or one of
    `flags` that is not true or false."""
    names = [field.name for field in dataclasses.fields(cls)]
    section = path.rsplit(".", 1)[-1]
    if not isinstance(config, Mapping):
        raise ConfigError(f"{path}: expected a mapping ({', '.join(names)}), got {config!r}")
    unknown = sorted(set(config) - set(names))
    if unknown:
        raise ConfigError(f"{path}.{unknown[0]}: unknown key ({section} takes: {', '.join(names)})")
    for flag in flags:
        if not isinstance(config.get(flag, False), bool):
            raise ConfigError(f"{path}.{flag}: must be true or false, got {config[flag]!r}")
    return dict(config)


def config_path(name: str) -> str:
    """Full config path of parameter `name` of the object being instantiated (for error messages).

    Inside a constructor called by `instantiate_from_config(cfg, "model")`,
    `config_path("unet_config")` is `"model.params.unet_config"`; outside, it is `name`.
    """
    parent = _PARENT_PATH.get()
    return f"{parent}.params.{name}" if parent else name


def instantiate_from_config(config: Any, path: str = "config", **extra: Any) -> Any:
    """Build `target(**params, **extra)` from a `target`/`params` mapping.

    `path` names this mapping in the user's YAML: top-level callers pass where it sits
    (`"model"`, `"data"`); constructors building nested configs pass their parameter name
    (`"unet_config"`), which is resolved against the object being built, so errors name
    the full path (`model.params.unet_config.params.num_heds`).
    """
    path = config_path(path)
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
    token = _PARENT_PATH.set(path)
    try:
        return cls(**params)
    except ConfigError:
        raise
    except TypeError as err:
        raise ConfigError(f"{path}: {target} rejected its params ({err})") from err
    finally:
        _PARENT_PATH.reset(token)


def load_config_files(bases: Sequence[str], overrides: Sequence[str] = ()) -> DictConfig:
    """Merge YAML files in order, then `a.b.c=value` overrides (main.py's and the scripts' --base)."""
    configs = []
    for base in bases:
        if not Path(base).is_file():
            raise ConfigError(f"config file {base} does not exist")
        try:
            configs.append(OmegaConf.load(base))
        except (OmegaConfBaseException, ValueError, yaml.YAMLError) as err:
            message = " ".join(str(err).split())  # PyYAML's messages span lines
            raise ConfigError(f"config file {base} is not valid YAML ({message})") from err
    bad = [o for o in overrides if "=" not in o or o.startswith("-")]
    if bad:
        raise ConfigError(f"unrecognised argument {bad[0]!r}; overrides look like model.params.key=value")
    return OmegaConf.merge(*configs, OmegaConf.from_dotlist(list(overrides)))


def count_params(model: Any) -> int:
    """Number of parameters of a torch module."""
    return sum(p.numel() for p in model.parameters())
