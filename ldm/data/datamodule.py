"""The Lightning data module of the original main.py: datasets as target/params configs.

`data.params.{train,validation,test}` are dataset configs. Parameter names and dataset
paths are checked when the module is built, so a typo or a missing folder fails before any
trainer work; the datasets themselves are built in `setup`, after the DDP launch, so each
rank builds its own.

Exact resume. Every loader samples with `ResumableSampler` (streaming shards, `ldm.data.shards`, with
`ShardSampler`, which has the same interface and properties): its order is a function of
(`seed`, epoch), it shards by `trainer.global_rank` / `trainer.world_size` itself, and it
hands each sample a seed for the dataset's augmentation, so no data loading draws from the
global RNG the model uses (each DataLoader also gets a private generator for its workers'
base seed). `state_dict()` (saved by Lightning in every checkpoint) records the epoch and the
training batches this rank has processed in it; after `load_state_dict()` the next train
loader skips those batches of that epoch, so a resumed run sees the batches an uninterrupted
one would have seen, in the same order and with the same augmentation.

- The seed is the `seed` parameter, else `torch.initial_seed()` when the module is built:
  main.py calls `pl.seed_everything(seed)` first, so that is the run's seed. Under DDP rank
  0's seed is broadcast in `setup` (the ranks must agree on the order to get disjoint
  shards), and a resumed run uses the seed stored in the checkpoint.
- The Trainer should get `use_distributed_sampler=False` (main.py passes it): the module
  shards by itself. Were it left on, Lightning would still keep these loaders as they are,
  because `ResumableSampler` is a DistributedSampler.
- Train: shuffled, the tail that does not split evenly across ranks is dropped, and the last
  partial batch of each rank too. Validation and test: sharded the same way without
  shuffling (unless `shuffle_val_dataloader`), padded by repeating a few items when the
  count does not split evenly across ranks (as Lightning's own DistributedSampler would);
  their augmentation seeds change with the epoch Lightning sets.
"""

from __future__ import annotations

import functools
import os
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset

from ldm.data.sampler import ResumableSampler
from ldm.data.shards import ShardDataset, ShardSampler
from ldm.util import ConfigError, check_params, config_path, get_obj_from_str, instantiate_from_config

# Dataset configs each Trainer stage needs.
_STAGE_SPLITS = {
    "fit": ("train", "validation"),
    "validate": ("validation",),
    "test": ("test",),
    "predict": (),
}


def default_num_workers() -> int:
    """min(4, CPUs this process may use)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(4, cpus)


def seed_worker(worker_id: int, rank: int = 0) -> None:
    """DataLoader `worker_init_fn`: reseed torch, NumPy and `random` in a worker from (torch seed, rank).

    Inside a worker torch's initial seed is the loader's base seed (drawn from the loader's
    `generator`, else from the parent's torch RNG) plus `worker_id`, so workers differ and a
    seed reproduces them; mixing in the global rank keeps ranks that share a seed from drawing
    alike. Only datasets indexed by plain ints use these RNGs: `(index, seed)` items carry
    their own seed.
    """
    torch_seed, numpy_seed, python_seed = np.random.SeedSequence([torch.initial_seed(), rank]).generate_state(3)
    torch.manual_seed(int(torch_seed))
    np.random.seed(int(numpy_seed))
    random.seed(int(python_seed))


class DataModuleFromConfig(pl.LightningDataModule):
    """Train/validation/test dataloaders over datasets built from target/params configs.

    `num_workers=None` uses `default_num_workers()`; `persistent_workers=None` means "when
    num_workers > 0". Training batches are shuffled and the last partial batch is dropped.
    `seed=None` uses `torch.initial_seed()` (see the module docstring for seeds and resume).
    """

    def __init__(
        self,
        batch_size: int,
        train: Mapping[str, Any] | None = None,
        validation: Mapping[str, Any] | None = None,
        test: Mapping[str, Any] | None = None,
        num_workers: int | None = None,
        shuffle_val_dataloader: bool = False,
        pin_memory: bool = False,
        persistent_workers: bool | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ConfigError(f"{config_path('batch_size')}: must be at least 1, got {batch_size}")
        if seed is not None and seed < 0:
            raise ConfigError(f"{config_path('seed')}: must be non-negative, got {seed}")
        self.seed = torch.initial_seed() if seed is None else seed
        # (epoch, training batches done in it) from a checkpoint, applied to the next train loader
        self.resume_from: tuple[int, int] | None = None
        self.num_workers = default_num_workers() if num_workers is None else num_workers
        if self.num_workers < 0:
            raise ConfigError(f"{config_path('num_workers')}: must be >= 0, got {num_workers}")
        if persistent_workers and self.num_workers == 0:
            raise ConfigError(f"{config_path('persistent_workers')}: needs num_workers > 0")
        self.batch_size = batch_size
        self.shuffle_val_dataloader = shuffle_val_dataloader
        self.pin_memory = pin_memory
        self.persistent_workers = self.num_workers > 0 if persistent_workers is None else persistent_workers
        configs = {"train": train, "validation": validation, "test": test}
        self.dataset_configs: dict[str, dict[str, Any]] = {}
        # full config paths (data.params.train), kept for errors raised after construction
        self.dataset_paths = {name: config_path(name) for name in configs}
        for name, config in configs.items():
            if config is not None:
                self.dataset_configs[name] = _check_dataset_config(config, self.dataset_paths[name])
        self.datasets: dict[str, Dataset] = {}
        # Lightning runs a loop only if its *_dataloader hook is overridden, so, as in the original
        # main.py, the hooks are bound only for the configured splits.
        if "train" in self.dataset_configs:
            self.train_dataloader = self._train_dataloader
        if "validation" in self.dataset_configs:
            self.val_dataloader = self._val_dataloader
        if "test" in self.dataset_configs:
            self.test_dataloader = self._test_dataloader

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets `stage` needs (all configured ones for stage=None); agree on rank 0's seed."""
        if self.trainer is not None and self.trainer.world_size > 1:
            self.seed = self.trainer.strategy.broadcast(self.seed, src=0)
        names = self.dataset_configs if stage is None else _STAGE_SPLITS.get(stage, ())
        for name in names:
            if name in self.dataset_configs:
                self.dataset(name)

    def dataset(self, name: str) -> Dataset:
        """The dataset of split `name` ("train", "validation", "test"), built on first use."""
        if name not in self.datasets:
            self.datasets[name] = instantiate_from_config(self.dataset_configs[name], self.dataset_paths[name])
        return self.datasets[name]

    def state_dict(self) -> dict[str, int]:
        """{"seed", "epoch", "batches_done": training batches this rank has processed in that epoch}.

        Lightning calls this when it saves a checkpoint; at `on_train_batch_end` of batch k of an
        epoch (counting from 1) `batches_done` is k, as Lightning's own `batch_progress.current.processed`.
        """
        if self.trainer is None:
            epoch, batches_done = self.resume_from or (0, 0)
        else:
            epoch = self.trainer.current_epoch
            batches_done = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {"seed": self.seed, "epoch": epoch, "batches_done": batches_done}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Resume from `state_dict()`: the next train loader continues that epoch after its done batches."""
        self.seed = int(state_dict.get("seed", self.seed))
        self.resume_from = (int(state_dict["epoch"]), int(state_dict["batches_done"]))

    def rank_and_world_size(self) -> tuple[int, int]:
        """(global rank, world size) of the attached trainer; (0, 1) without one."""
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def _train_dataloader(self) -> DataLoader:
        dataset = self.dataset("train")
        rank, world_size = self.rank_and_world_size()
        sampler = self._sampler(dataset, shuffle=True, drop_last=True)
        batches_per_epoch = len(sampler) // self.batch_size
        if batches_per_epoch == 0:
            raise ValueError(
                f"{self.dataset_paths['train']}: {len(dataset)} samples over {world_size} rank(s) is {len(sampler)} "
                f"per rank, fewer than batch_size={self.batch_size}; the last partial batch is dropped, so training "
                "would see no batch"
            )
        # Lightning creates the iterator before it calls set_epoch, and keeps that iterator when it resumes
        # mid-epoch, so the sampler must start at the right epoch here.
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        if self.resume_from is not None:
            resume_epoch, batches_done = self.resume_from
            if batches_done < batches_per_epoch:
                sampler.skip(resume_epoch, batches_done * self.batch_size)
                epoch = max(epoch, resume_epoch)
            else:  # the checkpoint closed that epoch: the next one starts from its beginning
                epoch = max(epoch, resume_epoch + 1)
        sampler.set_epoch(epoch)
        return self._loader(dataset, sampler, drop_last=True, rank=rank)

    def _val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.dataset("validation"), shuffle=self.shuffle_val_dataloader)

    def _test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.dataset("test"), shuffle=False)

    def _eval_loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        sampler = self._sampler(dataset, shuffle=shuffle, drop_last=False)
        return self._loader(dataset, sampler, drop_last=False, rank=sampler.rank)

    def _sampler(self, dataset: Dataset, shuffle: bool, drop_last: bool) -> ResumableSampler | ShardSampler:
        """This rank's sampler: `ShardSampler` for streaming shards (it orders items by loader worker), else
        `ResumableSampler`."""
        rank, world_size = self.rank_and_world_size()
        if isinstance(dataset, ShardDataset):
            return ShardSampler(
                len(dataset), self.seed, self.batch_size, self.num_workers, shuffle=shuffle, drop_last=drop_last,
                rank=rank, world_size=world_size,
            )  # fmt: skip
        return ResumableSampler(
            len(dataset), self.seed, shuffle=shuffle, drop_last=drop_last, rank=rank, world_size=world_size
        )

    def _loader(
        self, dataset: Dataset, sampler: ResumableSampler | ShardSampler, drop_last: bool, rank: int
    ) -> DataLoader:
        # The loader draws its workers' base seed from `generator`, not from the global RNG.
        generator_seed = np.random.SeedSequence(self.seed, spawn_key=(rank,)).generate_state(1, np.uint64)[0]
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            worker_init_fn=functools.partial(seed_worker, rank=rank),
            generator=torch.Generator().manual_seed(int(generator_seed)),
        )


def _check_dataset_config(config: Mapping[str, Any], path: str) -> dict[str, Any]:
    """Check a dataset config's target, parameter names and (if the class can) its files; return it as a dict."""
    if isinstance(config, DictConfig):
        config = OmegaConf.to_container(config, resolve=True)
    if not isinstance(config, Mapping) or "target" not in config:
        raise ConfigError(f"{path}: expected a mapping with 'target' and 'params'")
    cls = get_obj_from_str(config["target"], path)
    params = dict(config.get("params") or {})
    check_params(cls, params, path)
    check_sources = getattr(cls, "check_sources", None)
    if check_sources is not None:
        check_sources(params, f"{path}.params")
    return dict(config)
