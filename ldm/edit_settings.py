"""What an edit can be asked for, torch-free so that command lines and the app can check it before loading.

- `SAMPLERS`: the k-diffusion samplers by name (`ldm.models.diffusion.sampling` resolves them);
- `PRECISIONS`: autocast choices (`ldm.inference.autocast_dtype`);
- `EDIT_DEFAULTS` and `SamplingOptions`: the original InstructPix2Pix CLI's settings;
- `read_model_config`: a YAML's `model` section and its `edit_defaults` (a 64 px model wants
  64 px edits): a value given by the user wins, else the config's, else `EDIT_DEFAULTS`. A
  relative `ckpt_path` is read from the working directory, else from the repository (so the
  shipped models work from any folder).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ldm.errors import ConfigError

# name -> function of k_diffusion.sampling
SAMPLERS = {
    "euler_a": "sample_euler_ancestral",
    "euler": "sample_euler",
    "heun": "sample_heun",
    "dpmpp_2m": "sample_dpmpp_2m",
    "dpmpp_2s_a": "sample_dpmpp_2s_ancestral",
    "lms": "sample_lms",
}
ANCESTRAL = frozenset({"euler_a", "dpmpp_2s_a"})  # samplers that draw fresh noise every step
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
REPO_ROOT = Path(__file__).resolve().parents[1]
# the shipped reference model (models/openmoji-64): what edit_cli, the metrics and the app use by default
DEFAULT_CONFIG = REPO_ROOT / "configs" / "openmoji" / "reference" / "generate.yaml"
EDIT_DEFAULTS = {"resolution": 512, "steps": 100, "sampler": "euler_a", "cfg_text": 7.5, "cfg_image": 1.5}


@dataclass(frozen=True)
class SamplingOptions:
    """How to sample one edit (defaults: the original CLI's)."""

    steps: int = 100
    sampler: str = "euler_a"
    karras: bool = False
    cfg_text: float = 7.5
    cfg_image: float = 1.5


def read_model_config(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the `model` section of a YAML config as a plain dict, its sampling defaults: EDIT_DEFAULTS
    updated by the config's `edit_defaults` section). `base_learning_rate` is a training setting
    and is dropped."""
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file")
    try:
        config = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except (OSError, ValueError, yaml.YAMLError, OmegaConfBaseException) as err:
        raise ConfigError(f"--config {path}: cannot read it ({err})") from err
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise ConfigError(f"--config {path}: no `model` section with target and params")
    model = dict(config["model"])
    model.pop("base_learning_rate", None)
    params = model.get("params")
    ckpt = Path(params["ckpt_path"]) if isinstance(params, dict) and params.get("ckpt_path") else None
    if ckpt is not None and not ckpt.is_absolute() and not ckpt.exists() and (REPO_ROOT / ckpt).exists():
        model["params"] = {**params, "ckpt_path": str(REPO_ROOT / ckpt)}  # a shipped model, run from elsewhere
    defaults = dict(config.get("edit_defaults") or {})
    unknown = sorted(set(defaults) - set(EDIT_DEFAULTS))
    if unknown:
        raise ConfigError(f"--config {path}: edit_defaults.{unknown[0]} is not one of {', '.join(EDIT_DEFAULTS)}")
    if defaults.get("sampler", "euler_a") not in SAMPLERS:
        raise ConfigError(f"--config {path}: edit_defaults.sampler {defaults['sampler']!r} is not a sampler name")
    return model, {**EDIT_DEFAULTS, **defaults}
