"""Strict config instantiation: every mistake names the config path and the class."""

import pytest
from omegaconf import OmegaConf

from ldm.util import ConfigError, instantiate_from_config


class Toy:
    def __init__(self, width: int, depth: int = 2, child: dict | None = None):
        self.width, self.depth = width, depth
        self.child = instantiate_from_config(child, "child") if child else None


def test_builds_from_omegaconf():
    cfg = OmegaConf.create({"target": "test_util.Toy", "params": {"width": 4}})
    toy = instantiate_from_config(cfg, "model")
    assert (toy.width, toy.depth) == (4, 2)


def test_unknown_param_names_path_and_class():
    cfg = {"target": "test_util.Toy", "params": {"width": 4, "dpeth": 3}}
    with pytest.raises(ConfigError, match=r"^model\.params\.dpeth: test_util\.Toy has no parameter 'dpeth'"):
        instantiate_from_config(cfg, "model")


def test_nested_typo_names_full_path():
    cfg = {
        "target": "test_util.Toy",
        "params": {"width": 1, "child": {"target": "test_util.Toy", "params": {"widht": 2}}},
    }
    with pytest.raises(ConfigError, match=r"model\.params\.child\.params\.widht"):
        instantiate_from_config(cfg, "model")


def test_missing_required_param():
    with pytest.raises(ConfigError, match=r"model\.params\.width: required by test_util\.Toy"):
        instantiate_from_config({"target": "test_util.Toy"}, "model")


def test_missing_target():
    with pytest.raises(ConfigError, match=r"^data\.target: missing"):
        instantiate_from_config({"params": {}}, "data")


def test_unknown_top_level_key():
    with pytest.raises(ConfigError, match=r"^data\.parms: unknown key"):
        instantiate_from_config({"target": "test_util.Toy", "parms": {}}, "data")


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("no_such_module.Thing", "cannot import module 'no_such_module'"),
        ("test_util.Nope", "module 'test_util' has no attribute 'Nope'"),
        ("Toy", "is not a dotted path"),
    ],
)
def test_bad_target(target, message):
    with pytest.raises(ConfigError, match=message):
        instantiate_from_config({"target": target}, "model")


def test_identity_passthrough():
    import torch

    assert isinstance(instantiate_from_config({"target": "torch.nn.Identity"}), torch.nn.Identity)


class ToyChild(Toy):
    def __init__(self, *args, colour: str = "red", **kwargs):
        super().__init__(*args, **kwargs)
        self.colour = colour


def test_subclass_forwarding_kwargs_stays_strict():
    built = instantiate_from_config({"target": "test_util.ToyChild", "params": {"width": 3, "colour": "blue"}})
    assert (built.width, built.colour) == (3, "blue")
    with pytest.raises(ConfigError, match=r"model\.params\.widht: test_util\.ToyChild has no parameter"):
        instantiate_from_config({"target": "test_util.ToyChild", "params": {"widht": 3}}, "model")
