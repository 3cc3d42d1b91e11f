"""A sampler for exact resume: the order is a pure function of (seed, epoch), sharded by rank.

`ResumableSampler` yields `(index, sample_seed)` pairs. The datasets seed a private
`torch.Generator` with `sample_seed` for every random choice of that sample, so a sample's
augmentation depends only on (seed, epoch, index): not on the global RNG (which the model
uses for noise and timesteps), on the number of DataLoader workers, on prefetching, or on
where a run was resumed.

Resuming mid-epoch: `skip(epoch, k)` drops the first `k` samples this rank would yield in
`epoch` (and only in that epoch), while `len()` keeps reporting the full epoch length:
Lightning restores its batch counter to the checkpoint's and ends the epoch when either the
counter reaches `len(dataloader)` or the iterator runs out, and both happen together.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DistributedSampler


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of item `index` in `epoch`: a 64-bit hash of (seed, epoch, index) by NumPy's SeedSequence.

    It does not depend on the rank or the world size, so a given item of a given epoch is
    augmented alike whatever the number of processes.
    """
    return int(np.random.SeedSequence(seed, spawn_key=(epoch, index)).generate_state(1, np.uint64)[0])


def epoch_permutation(seed: int, num_items: int, epoch: int) -> list[int]:
    """A permutation of range(num_items), from a torch.Generator seeded by a SeedSequence of (seed, epoch)."""
    generator_seed = int(np.random.SeedSequence(seed, spawn_key=(epoch,)).generate_state(1, np.uint64)[0])
    generator = torch.Generator().manual_seed(generator_seed)
    return torch.randperm(num_items, generator=generator).tolist()


class ResumableSampler(DistributedSampler):
    """Per-rank `(index, sample_seed)` pairs; the order is a function of (seed, epoch) only.

    Sharding follows DistributedSampler: the epoch's order (a permutation of the items if
    `shuffle`, else 0..n-1) is cut to a multiple of `world_size`, and rank r takes positions
    r, r + world_size, ... so the ranks' shards are disjoint and of equal length. With
    `drop_last=True` the tail (at most world_size - 1 items, different ones each shuffled
    epoch) is dropped; with `drop_last=False` the order is padded by repeating its head, so
    a few items appear twice in the epoch (on different ranks, with the same seed). This is
    per-rank sharding only; dropping a last partial batch is the DataLoader's `drop_last`.

    It subclasses DistributedSampler so that Lightning, even with `use_distributed_sampler`
    on, recognises the loader as already sharded and does not wrap it a second time.
    `set_epoch(epoch)` is the inherited one (Lightning calls it every epoch).
    """

    def __init__(
        self,
        num_items: int,
        seed: int,
        shuffle: bool = True,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if num_items < 1:
            raise ValueError(f"num_items={num_items}: need at least one item")
        if seed < 0:
            raise ValueError(f"seed={seed} must be non-negative")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank={rank}, world_size={world_size}: need 0 <= rank < world_size")
        # Sets epoch=0, seed, shuffle, drop_last, num_replicas, rank, num_samples (per rank) and total_size.
        super().__init__(
            range(num_items), num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last
        )
        self.num_items = num_items
        self._skip: tuple[int, int] | None = None  # (epoch, samples to skip in it)

    def __len__(self) -> int:
        """Samples per rank in a full epoch, also while an epoch is being skipped into."""
        return self.num_samples

    def skip(self, epoch: int, num_samples: int) -> None:
        """Leave out the first `num_samples` samples of this rank's `epoch` (replacing an earlier skip)."""
        if not 0 <= num_samples <= self.num_samples:
            raise ValueError(f"cannot skip {num_samples} samples of an epoch of {self.num_samples} (per rank)")
        self._skip = (epoch, num_samples)

    def indices(self, epoch: int) -> list[int]:
        """This rank's item indices in `epoch`, ignoring any skip."""
        order = epoch_permutation(self.seed, self.num_items, epoch) if self.shuffle else list(range(self.num_items))
        if self.drop_last:
            order = order[: self.total_size]
        else:
            padding = self.total_size - len(order)
            order += (order * math.ceil(padding / len(order)))[:padding]
        return order[self.rank : self.total_size : self.num_replicas]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        # The order is fixed when iteration starts (an epoch set later does not change it); seeds are made lazily.
        epoch, seed = self.epoch, self.seed
        indices = self.indices(epoch)
        if self._skip is not None and self._skip[0] == epoch:
            indices = indices[self._skip[1] :]
        return ((index, sample_seed(seed, epoch, index)) for index in indices)
