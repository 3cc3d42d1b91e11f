"""Learning-rate multipliers of the CompVis configs, used through `torch.optim.lr_scheduler.LambdaLR`.

Each class is a callable `step -> factor`; the optimizer's base LR is multiplied by it.
Configs name them as `scheduler_config` (e.g. SD 1.x: `LambdaLinearScheduler` with
`warm_up_steps: [10000]`, `cycle_lengths: [10000000000000]`, `f_start: [1.e-6]`,
`f_max: [1.]`, `f_min: [1.]`).
"""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Sequence

log = logging.getLogger(__name__)


class LambdaWarmUpCosineScheduler:
    """One cycle: linear warm-up from `lr_start` to `lr_max`, then cosine decay to `lr_min`."""

    def __init__(
        self,
        warm_up_steps: int,
        lr_min: float,
        lr_max: float,
        lr_start: float,
        max_decay_steps: int,
        verbosity_interval: int = 0,
    ) -> None:
        if max_decay_steps <= warm_up_steps:
            raise ValueError(f"max_decay_steps ({max_decay_steps}) must exceed warm_up_steps ({warm_up_steps})")
        self.warm_up_steps, self.max_decay_steps = warm_up_steps, max_decay_steps
        self.lr_min, self.lr_max, self.lr_start = lr_min, lr_max, lr_start
        self.verbosity_interval = verbosity_interval

    def schedule(self, n: int) -> float:
        if n < self.warm_up_steps:
            f = (self.lr_max - self.lr_start) / self.warm_up_steps * n + self.lr_start
        else:
            t = min((n - self.warm_up_steps) / (self.max_decay_steps - self.warm_up_steps), 1.0)
            f = self.lr_min + 0.5 * (self.lr_max - self.lr_min) * (1 + math.cos(t * math.pi))
        if self.verbosity_interval > 0 and n % self.verbosity_interval == 0:
            log.info("step %d: lr factor %.6g", n, f)
        return f

    def __call__(self, n: int) -> float:
        return self.schedule(n)


class LambdaWarmUpCosineScheduler2:
    """Several cycles, each a linear warm-up from `f_start` to `f_max`, then a cosine decay to `f_min`.

    Lists are per cycle; `cycle_lengths` are in steps. Past the last cycle the last
    cycle's final value holds.
    """

    def __init__(
        self,
        warm_up_steps: Sequence[int],
        f_min: Sequence[float],
        f_max: Sequence[float],
        f_start: Sequence[float],
        cycle_lengths: Sequence[int],
        verbosity_interval: int = 0,
    ) -> None:
        lengths = {len(warm_up_steps), len(f_min), len(f_max), len(f_start), len(cycle_lengths)}
        if len(lengths) != 1:
            raise ValueError(
                "warm_up_steps, f_min, f_max, f_start and cycle_lengths must be lists of the same length "
                "(one entry per cycle)"
            )
        self.lr_warm_up_steps = list(warm_up_steps)
        self.f_min, self.f_max, self.f_start = list(f_min), list(f_max), list(f_start)
        self.cycle_lengths = list(cycle_lengths)
        self.cum_cycles = [0]
        for length in self.cycle_lengths:
            self.cum_cycles.append(self.cum_cycles[-1] + length)
        self.verbosity_interval = verbosity_interval

    def find_in_interval(self, n: int) -> int:
        """Index of the cycle that step n falls in (a step equal to a cycle end belongs to that cycle)."""
        return min(bisect.bisect_left(self.cum_cycles, n, lo=1) - 1, len(self.cycle_lengths) - 1)

    def cycle_factor(self, cycle: int, n: int) -> float:
        """Factor after the warm-up, `n` steps into `cycle`."""
        warm, length = self.lr_warm_up_steps[cycle], self.cycle_lengths[cycle]
        t = min((n - warm) / (length - warm), 1.0)
        return self.f_min[cycle] + 0.5 * (self.f_max[cycle] - self.f_min[cycle]) * (1 + math.cos(t * math.pi))

    def schedule(self, n: int) -> float:
        cycle = self.find_in_interval(n)
        n = n - self.cum_cycles[cycle]
        warm = self.lr_warm_up_steps[cycle]
        if n < warm:
            f = (self.f_max[cycle] - self.f_start[cycle]) / warm * n + self.f_start[cycle]
        else:
            f = self.cycle_factor(cycle, n)
        if self.verbosity_interval > 0 and n % self.verbosity_interval == 0:
            log.info("step %d (cycle %d): lr factor %.6g", n, cycle, f)
        return f

    def __call__(self, n: int) -> float:
        return self.schedule(n)


class LambdaLinearScheduler(LambdaWarmUpCosineScheduler2):
    """Like the cosine family, but each cycle decays linearly from `f_max` towards `f_min` over its length."""

    def cycle_factor(self, cycle: int, n: int) -> float:
        length = self.cycle_lengths[cycle]
        return self.f_min[cycle] + (self.f_max[cycle] - self.f_min[cycle]) * max(length - n, 0) / length
