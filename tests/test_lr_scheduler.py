"""LR multipliers of the CompVis configs: warm-up, decay, cycles."""

import math

import pytest
import torch

from ldm.lr_scheduler import LambdaLinearScheduler, LambdaWarmUpCosineScheduler, LambdaWarmUpCosineScheduler2
from ldm.util import instantiate_from_config


def test_sd_linear_config_warms_up_then_holds():
    sched = instantiate_from_config(
        {
            "target": "ldm.lr_scheduler.LambdaLinearScheduler",
            "params": {
                "warm_up_steps": [100],
                "cycle_lengths": [10000000000000],
                "f_start": [1.0e-6],
                "f_max": [1.0],
                "f_min": [1.0],
            },
        }
    )
    assert sched(0) == pytest.approx(1e-6)
    assert sched(50) == pytest.approx(1e-6 + (1 - 1e-6) * 0.5)
    assert sched(100) == pytest.approx(1.0)
    assert sched(10**6) == pytest.approx(1.0)


def test_linear_decay_and_cycles():
    sched = LambdaLinearScheduler(
        warm_up_steps=[0, 10], f_min=[0.0, 0.5], f_max=[1.0, 1.0], f_start=[1.0, 0.0], cycle_lengths=[100, 100]
    )
    assert sched(0) == pytest.approx(1.0)
    assert sched(50) == pytest.approx(0.5)
    assert sched(100) == pytest.approx(0.0)  # end of cycle 0 belongs to cycle 0
    assert sched(105) == pytest.approx(0.5)  # halfway through cycle 1's warm-up
    assert sched(10**9) == pytest.approx(0.5)  # past the last cycle: its final value


def test_cosine_two_cycle():
    sched = LambdaWarmUpCosineScheduler2(
        warm_up_steps=[10], f_min=[0.1], f_max=[1.0], f_start=[0.0], cycle_lengths=[110]
    )
    assert sched(5) == pytest.approx(0.5)
    assert sched(60) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 2)))
    assert sched(110) == pytest.approx(0.1)


def test_single_cycle_cosine():
    sched = LambdaWarmUpCosineScheduler(warm_up_steps=10, lr_min=0.0, lr_max=1.0, lr_start=0.0, max_decay_steps=20)
    assert sched(5) == pytest.approx(0.5)
    assert sched(15) == pytest.approx(0.5)
    assert sched(25) == pytest.approx(0.0)


def test_drives_lambdalr():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = LambdaLinearScheduler(warm_up_steps=[4], f_min=[1.0], f_max=[1.0], f_start=[0.0], cycle_lengths=[100])
    lr = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda=sched.schedule)
    seen = []
    for _ in range(5):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        lr.step()
    assert seen == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0])


def test_mismatched_lists_rejected():
    with pytest.raises(ValueError, match="same length"):
        LambdaLinearScheduler(warm_up_steps=[1, 2], f_min=[1.0], f_max=[1.0], f_start=[0.0], cycle_lengths=[10])
