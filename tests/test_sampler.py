"""ResumableSampler: order from (seed, epoch) only, disjoint rank shards, mid-epoch skip."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ldm.data.sampler import ResumableSampler, sample_seed


def indices(sampler: ResumableSampler) -> list[int]:
    return [index for index, _ in sampler]


def test_order_is_a_function_of_seed_and_epoch() -> None:
    def order(seed: int, epoch: int) -> list[tuple[int, int]]:
        sampler = ResumableSampler(50, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    torch.manual_seed(0)
    first = order(3, 0)
    torch.manual_seed(1)
    torch.rand(100)
    assert order(3, 0) == first, "the global RNG must not matter"
    assert sorted(i for i, _ in first) == list(range(50))
    assert [s for _, s in first] == [sample_seed(3, 0, i) for i, _ in first]
    assert order(3, 1) != first and order(4, 0) != first
    # The same item gets a new augmentation seed each epoch.
    assert dict(order(3, 0))[7] != dict(order(3, 1))[7]
    assert len({s for _, s in first}) == 50


def test_without_shuffle_the_order_is_sequential() -> None:
    sampler = ResumableSampler(7, seed=0, shuffle=False)
    sampler.set_epoch(5)
    assert indices(sampler) == list(range(7))


@pytest.mark.parametrize(("drop_last", "per_rank"), [(True, 3), (False, 4)])
def test_ranks_get_disjoint_shards(drop_last: bool, per_rank: int) -> None:
    shards = []
    for rank in range(3):
        sampler = ResumableSampler(10, seed=1, drop_last=drop_last, rank=rank, world_size=3)
        sampler.set_epoch(2)
        assert len(sampler) == per_rank
        shards.append(indices(sampler))
    assert all(len(shard) == per_rank for shard in shards)
    seen = [i for shard in shards for i in shard]
    if drop_last:  # 9 distinct items: one of the 10 is left out this epoch
        assert len(set(seen)) == 9
    else:  # all 10 items, two of them twice (padding)
        assert set(seen) == set(range(10)) and len(seen) == 12
    # Each rank's shard is its slice of the one-process order.
    whole = ResumableSampler(10, seed=1)
    whole.set_epoch(2)
    order = indices(whole)
    assert shards[1] == (order + order)[1 : 3 * per_rank : 3]


def test_sample_seeds_do_not_depend_on_world_size() -> None:
    seeds = {}
    for world_size in (1, 2, 4):
        for rank in range(world_size):
            sampler = ResumableSampler(8, seed=5, rank=rank, world_size=world_size)
            sampler.set_epoch(1)
            for index, seed in sampler:
                assert seeds.setdefault(index, seed) == seed


def test_skip_yields_the_tail_and_keeps_the_length() -> None:
    sampler = ResumableSampler(20, seed=2, rank=1, world_size=2)
    full = {}
    for epoch in (3, 4):
        sampler.set_epoch(epoch)
        full[epoch] = list(sampler)
    sampler.skip(3, 4)
    sampler.set_epoch(3)
    assert list(sampler) == full[3][4:]
    assert len(sampler) == 10
    assert list(sampler) == full[3][4:], "the skip holds for every iteration of that epoch"
    sampler.set_epoch(4)
    assert list(sampler) == full[4], "the next epoch is not skipped"
    sampler.skip(3, 10)
    sampler.set_epoch(3)
    assert list(sampler) == []
    with pytest.raises(ValueError, match="cannot skip 11 samples of an epoch of 10"):
        sampler.skip(3, 11)


class Echo(Dataset):
    """Returns the `(index, seed)` pair it is given."""

    def __len__(self) -> int:
        return 30

    def __getitem__(self, item: tuple[int, int]) -> tuple[int, int]:
        return item


def test_skipped_batches_in_a_dataloader() -> None:
    def batches(sampler: ResumableSampler) -> list[list[tuple[int, int]]]:
        loader = DataLoader(Echo(), batch_size=4, sampler=sampler, drop_last=True, collate_fn=list)
        assert len(loader) == 7
        return list(loader)

    full = batches(ResumableSampler(30, seed=9))
    resumed = ResumableSampler(30, seed=9)
    resumed.skip(0, 3 * 4)
    assert batches(resumed) == full[3:]


def test_lightning_sees_a_distributed_sampler() -> None:
    # Lightning wraps a loader's sampler for DDP only if it is not a DistributedSampler already.
    assert isinstance(ResumableSampler(4, seed=0, rank=1, world_size=2), DistributedSampler)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="rank=2, world_size=2"):
        ResumableSampler(4, seed=0, rank=2, world_size=2)
    with pytest.raises(ValueError, match="seed=-1"):
        ResumableSampler(4, seed=-1)
    with pytest.raises(ValueError, match="num_items=0"):
        ResumableSampler(0, seed=0)
