"""The Lightning data module of the original main.py: datasets as target/params configs.

`data.params.{train,validation,test}` are dataset configs. Parameter names and dataset
paths are checked when the module is built, so a typo or a missing folder fails before any
trainer work; the datasets themselves are built in `setup`, after the DDP launch, so each
rank builds its own. Under DDP Lightning swaps in a DistributedSampler on its own.
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

    Inside a worker torch's initial seed is the loader's base seed (drawn from the parent's torch
    RNG) plus `worker_id`, so workers differ and a global seed reproduces them; mixing in the
    global rank keeps ranks that share a seed (DDP with seed_everything) from augmenting alike.
    """
    torch_seed, numpy_seed, python_seed = np.random.SeedSequence([torch.initial_seed(), rank]).generate_state(3)
    torch.manual_seed(int(torch_seed))
    np.random.seed(int(numpy_seed))
    random.seed(int(python_seed))


class DataModuleFromConfig(pl.LightningDataModule):
    """Train/validation/test dataloaders over datasets built from target/params configs.

    `num_workers=None` uses `default_num_workers()`; `persistent_workers=None` means "when
    num_workers > 0". Training batches are shuffled and the last partial batch is dropped.
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
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ConfigError(f"{config_path('batch_size')}: must be at least 1, got {batch_size}")
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
        """Build the datasets `stage` needs (all configured ones for stage=None)."""
        names = self.dataset_configs if stage is None else _STAGE_SPLITS.get(stage, ())
        for name in names:
            if name in self.dataset_configs:
                self.dataset(name)

    def dataset(self, name: str) -> Dataset:
        """The dataset of split `name` ("train", "validation", "test"), built on first use."""
        if name not in self.datasets:
            self.datasets[name] = instantiate_from_config(self.dataset_configs[name], self.dataset_paths[name])
        return self.datasets[name]

    def _train_dataloader(self) -> DataLoader:
        dataset = self.dataset("train")
        if len(dataset) < self.batch_size:
            raise ValueError(
                f"{self.dataset_paths['train']}: {len(dataset)} samples is fewer than batch_size={self.batch_size}; "
                "the last partial batch is dropped, so training would see no batch"
            )
        return self._loader(dataset, shuffle=True, drop_last=True)

    def _val_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("validation"), shuffle=self.shuffle_val_dataloader, drop_last=False)

    def _test_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("test"), shuffle=False, drop_last=False)

    def _loader(self, dataset: Dataset, shuffle: bool, drop_last: bool) -> DataLoader:
        rank = self.trainer.global_rank if self.trainer is not None else 0
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            worker_init_fn=functools.partial(seed_worker, rank=rank),
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
