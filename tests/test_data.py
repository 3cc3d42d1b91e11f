"""Editing datasets and the data module on tiny generated images (CPU, a few seconds).

Fixture images carry their own coordinates: R = 10 * x, G = 10 * y (G = 10 * (23 - y) for the
second seed of an entry) and a constant B that encodes the entry (input 20 + 5k, edited
235 - 5k). An input and edited crop are aligned exactly when their R and G channels agree;
R rising or falling along x tells whether the pair was flipped.
"""

from __future__ import annotations

import csv
import json
import random
import re
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import DataLoader

from ldm.data.datamodule import DataModuleFromConfig
from ldm.data.edit_dataset import EditDataset, PairsCSVDataset
from ldm.data.sampler import sample_seed
from ldm.errors import DatasetError
from ldm.image_io import ImageInputError
from ldm.util import ConfigError, instantiate_from_config

SIZE = 24
NUM_ENTRIES = 40


def pattern(k: int, edited: bool, seed_index: int = 0) -> Image.Image:
    """(SIZE, SIZE) RGB image: coordinate gradients in R/G, entry code in B."""
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    g = 10 * y if seed_index == 0 else 10 * (SIZE - 1 - y)
    b = np.full_like(x, 235 - 5 * k if edited else 20 + 5 * k)
    return Image.fromarray(np.stack([10 * x, g, b], axis=-1).astype(np.uint8))


def make_edit_dataset(root: Path, num_entries: int = NUM_ENTRIES, seeds: tuple[int, ...] = (0, 1)) -> Path:
    """InstructPix2Pix layout: seeds.json, one folder per prompt with prompt.json and {seed}_{0,1}.jpg."""
    root.mkdir(parents=True)
    entries = []
    for k in range(num_entries):
        name = f"prompt_{k:03d}"
        folder = root / name
        folder.mkdir()
        (folder / "prompt.json").write_text(json.dumps({"input": "a cat", "edit": f"make it {k}", "output": "a dog"}))
        for j, seed in enumerate(seeds):
            for i in (0, 1):
                # quality 100 without chroma subsampling keeps every channel within ~3 levels.
                pattern(k, edited=i == 1, seed_index=j).save(folder / f"{seed}_{i}.jpg", quality=100, subsampling=0)
        entries.append([name, list(seeds)])
    (root / "seeds.json").write_text(json.dumps(entries))
    return root


@pytest.fixture(scope="module")
def edit_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_edit_dataset(tmp_path_factory.mktemp("ip2p") / "data")


def entry_of(instruction: str) -> int:
    return int(instruction.rsplit(" ", 1)[1])


def levels(channel: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 255]."""
    return (channel + 1) * 127.5


def assert_aligned(sample: dict) -> bool:
    """Check pairing and spatial alignment of one sample; return whether it was flipped."""
    edited, source = sample["edited"], sample["edit"]["c_concat"]
    k = entry_of(sample["edit"]["c_crossattn"])
    assert abs(levels(source[2]).mean().item() - (20 + 5 * k)) < 1.5
    assert abs(levels(edited[2]).mean().item() - (235 - 5 * k)) < 1.5
    # Same window, same flip, same seed: coordinates agree to JPEG noise (a 1-pixel shift is ~10 levels).
    assert (levels(source[:2]) - levels(edited[:2])).abs().mean().item() < 2.0
    dx = levels(source[0, :, -1]).mean() - levels(source[0, :, 0]).mean()
    assert dx.abs() > 5 * source.shape[-1]
    return bool(dx < 0)


# --- EditDataset -----------------------------------------------------------------------


def test_edit_dataset_splits_are_disjoint_and_ordered(edit_root: Path) -> None:
    splits = {
        s: EditDataset(edit_root, split=s, min_resize_res=24, max_resize_res=24, crop_res=24)
        for s in ("train", "val", "test")
    }
    assert {s: len(d) for s, d in splits.items()} == {"train": 36, "val": 2, "test": 2}
    names = [name for s in ("train", "val", "test") for name, _ in splits[s].entries]
    assert names == [f"prompt_{k:03d}" for k in range(NUM_ENTRIES)]


def test_edit_dataset_rejects_bad_splits(edit_root: Path) -> None:
    with pytest.raises(ValueError, match="summing to 1"):
        EditDataset(edit_root, splits=(0.9, 0.2, 0.05), min_resize_res=24, max_resize_res=24, crop_res=24)
    with pytest.raises(ValueError, match="split='valid' must be one of train, val, test"):
        EditDataset(edit_root, split="valid", min_resize_res=24, max_resize_res=24, crop_res=24)
    with pytest.raises(ValueError, match=rf"split 'val' of {re.escape(str(edit_root))}.*is empty"):
        EditDataset(edit_root, split="val", splits=(1.0, 0.0, 0.0), min_resize_res=24, max_resize_res=24, crop_res=24)
    with pytest.raises(ValueError, match="crop_res=32 must be between 1 and min_resize_res=24"):
        EditDataset(edit_root, min_resize_res=24, max_resize_res=24, crop_res=32)


def test_edit_dataset_item_format(edit_root: Path) -> None:
    sample = EditDataset(edit_root, min_resize_res=20, max_resize_res=28, crop_res=16)[5]
    assert set(sample) == {"edited", "edit"} and set(sample["edit"]) == {"c_concat", "c_crossattn"}
    assert sample["edit"]["c_crossattn"] == "make it 5"
    for image in (sample["edited"], sample["edit"]["c_concat"]):
        assert image.shape == (3, 16, 16) and image.dtype == torch.float32
        assert image.min() >= -1.0 and image.max() <= 1.0


@pytest.mark.parametrize("flip_prob", [0.0, 1.0])
def test_edit_dataset_pairs_share_crop_and_flip(edit_root: Path, flip_prob: float) -> None:
    dataset = EditDataset(edit_root, min_resize_res=20, max_resize_res=28, crop_res=16, flip_prob=flip_prob)
    torch.manual_seed(0)
    corners = set()
    for i in range(24):
        sample = dataset[i]
        assert entry_of(sample["edit"]["c_crossattn"]) == i
        assert assert_aligned(sample) is (flip_prob == 1.0)
        corners.add(round(levels(sample["edit"]["c_concat"][0, 0, 0]).item()))
    assert len(corners) > 3, "crops should vary in position and scale"


def test_edit_dataset_random_flip_keeps_pairs_aligned(edit_root: Path) -> None:
    dataset = EditDataset(edit_root, min_resize_res=24, max_resize_res=24, crop_res=20, flip_prob=0.5)
    torch.manual_seed(1)
    flips = [assert_aligned(dataset[i]) for i in range(24)]
    assert any(flips) and not all(flips)


def test_edit_dataset_only_torch_rng_matters(edit_root: Path) -> None:
    dataset = EditDataset(edit_root, min_resize_res=20, max_resize_res=28, crop_res=16, flip_prob=0.5)

    def draw(python_seed: int) -> list[torch.Tensor]:
        torch.manual_seed(123)
        random.seed(python_seed)
        np.random.seed(python_seed)
        return [torch.cat([s["edited"], s["edit"]["c_concat"]]) for s in (dataset[i] for i in range(8))]

    first, second = draw(0), draw(1)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    torch.manual_seed(124)
    other = [torch.cat([s["edited"], s["edit"]["c_concat"]]) for s in (dataset[i] for i in range(8))]
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


def pixels(sample: dict) -> torch.Tensor:
    """(6, H, W): input and edited image of a sample."""
    return torch.cat([sample["edit"]["c_concat"], sample["edited"]])


def seed_folder(sample: dict) -> int:
    """Which seed folder of make_edit_dataset a sample came from: its G gradient runs down (0) or up (1)."""
    g = levels(sample["edit"]["c_concat"][1])
    return int(g[-1].mean() < g[0].mean())


def test_item_for_index_and_seed_ignores_global_rng(edit_root: Path) -> None:
    dataset = EditDataset(edit_root, min_resize_res=20, max_resize_res=28, crop_res=16, flip_prob=0.5)
    items = [(i, sample_seed(0, 0, i)) for i in range(12)]
    torch.manual_seed(0)
    rng_state = torch.get_rng_state()
    first = [pixels(dataset[item]) for item in items]
    assert torch.equal(torch.get_rng_state(), rng_state), "an (index, seed) item must not draw from the global RNG"
    torch.manual_seed(1)
    torch.rand(100)
    second = [pixels(dataset[item]) for item in reversed(items)][::-1]
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    for num_workers in (0, 2):
        loader = DataLoader(dataset, batch_size=4, sampler=items, num_workers=num_workers)
        batches = [torch.cat([b["edit"]["c_concat"], b["edited"]], dim=1) for b in loader]
        assert torch.equal(torch.cat(batches), torch.stack(first)), f"num_workers={num_workers}"
    # The seed drives every choice: seed folder, scale, crop window, flip.
    samples = [dataset[(5, seed)] for seed in range(24)]
    assert {seed_folder(sample) for sample in samples} == {0, 1}
    assert {assert_aligned(sample) for sample in samples} == {False, True}
    assert len({pixels(sample).shape for sample in samples}) == 1
    assert len({round(levels(pixels(sample)[0, 0, 0]).item()) for sample in samples}) > 3


def test_csv_dataset_takes_index_and_seed(csv_root: Path) -> None:
    dataset = PairsCSVDataset(
        csv_root / "pairs.csv", "sketch", "color", "prompt", min_resize_res=20, max_resize_res=28, crop_res=16
    )
    sample = dataset[(4, 123)]
    assert sample["edit"]["c_crossattn"] == "make it 4"
    assert torch.equal(pixels(sample), pixels(dataset[(4, 123)]))


# --- PairsCSVDataset ---------------------------------------------------------------------


@pytest.fixture
def csv_root(tmp_path: Path) -> Path:
    """tmp/data/pairs.csv with custom column names and a split column; images in tmp/data/imgs (PNG)."""
    images = tmp_path / "data" / "imgs"
    images.mkdir(parents=True)
    rows = []
    for k in range(10):
        pattern(k, edited=False).save(images / f"{k}_sketch.png")
        pattern(k, edited=True).save(images / f"{k}_color.png")
        split = "train" if k < 6 else ("val" if k < 8 else "test")
        rows.append(
            {"sketch": f"imgs/{k}_sketch.png", "color": f"imgs/{k}_color.png", "prompt": f"make it {k}", "split": split}
        )
    # One absolute path: it must stay as it is.
    rows[0]["color"] = str(images / "0_color.png")
    write_csv(tmp_path / "data" / "pairs.csv", rows)
    return tmp_path / "data"


def write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def csv_dataset(csv_path: Path, **kwargs) -> PairsCSVDataset:
    kwargs = {"input_column": "sketch", "edited_column": "color", "instruction_column": "prompt", **kwargs}
    return PairsCSVDataset(csv_path, min_resize_res=24, max_resize_res=24, crop_res=24, **kwargs)


def test_csv_paths_resolve_against_csv_folder(csv_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    dataset = csv_dataset(Path("..") / "data" / "pairs.csv")
    assert len(dataset) == 10
    for k in range(10):
        sample = dataset[k]
        assert sample["edit"]["c_crossattn"] == f"make it {k}"
        expected_input = torch.from_numpy(np.array(pattern(k, edited=False))).permute(2, 0, 1).float() / 127.5 - 1
        torch.testing.assert_close(sample["edit"]["c_concat"], expected_input)
        assert_aligned(sample)
    assert dataset.num_skipped == 0


def test_csv_split_column_is_respected(csv_root: Path) -> None:
    sizes = {s: len(csv_dataset(csv_root / "pairs.csv", split=s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 6, "val": 2, "test": 2}
    val = csv_dataset(csv_root / "pairs.csv", split="val")
    assert sorted(entry_of(val[i]["edit"]["c_crossattn"]) for i in range(2)) == [6, 7]


def test_csv_without_split_column_splits_by_position(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"")  # never read: only the row count matters here
    rows = [{"input_image": "a.png", "edited_image": "a.png", "edit": str(k)} for k in range(20)]
    write_csv(tmp_path / "pairs.csv", rows)
    kwargs = {"min_resize_res": 8, "max_resize_res": 8, "crop_res": 8}
    sizes = {s: len(PairsCSVDataset(tmp_path / "pairs.csv", split=s, **kwargs)) for s in ("train", "val", "test")}
    assert sizes == {"train": 18, "val": 1, "test": 1}
    assert len(PairsCSVDataset(tmp_path / "pairs.csv", **kwargs)) == 20


def test_csv_missing_column_names_file_and_columns(csv_root: Path) -> None:
    with pytest.raises(ConfigError) as info:
        csv_dataset(csv_root / "pairs.csv", instruction_column="instruction")
    message = str(info.value)
    assert "'instruction'" in message and str(csv_root / "pairs.csv") in message
    assert "columns present: sketch, color, prompt, split" in message


# --- Bad input ---------------------------------------------------------------------------


def test_missing_dataset_paths_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=rf"dataset path {re.escape(str(tmp_path / 'nope'))} does not exist"):
        EditDataset(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="has no seeds.json"):
        EditDataset(tmp_path)
    with pytest.raises(FileNotFoundError, match=rf"dataset CSV {re.escape(str(tmp_path / 'x.csv'))} does not exist"):
        PairsCSVDataset(tmp_path / "x.csv")


def small_dataset(root: Path, **kwargs) -> EditDataset:
    """Six entries, one seed each, all in the train split."""
    make_edit_dataset(root, num_entries=6, seeds=(7,))
    return EditDataset(root, splits=(1.0, 0.0, 0.0), min_resize_res=24, max_resize_res=24, crop_res=24, **kwargs)


def test_corrupt_image_is_skipped_with_one_warning(tmp_path: Path) -> None:
    dataset = small_dataset(tmp_path / "data")
    bad = tmp_path / "data" / "prompt_002" / "7_0.jpg"
    bad.write_bytes(b"not a jpeg at all")
    with pytest.warns(UserWarning, match=re.escape(str(bad))):
        sample = dataset[2]
    assert sample["edit"]["c_crossattn"] == "make it 3"  # the next readable sample
    assert dataset.num_skipped == 1
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        samples = [dataset[i] for i in range(len(dataset))]
    assert not record, "warn once per file"
    assert [entry_of(s["edit"]["c_crossattn"]) for s in samples] == [0, 1, 3, 3, 4, 5]
    assert dataset.num_skipped == 1


def test_skipped_sample_is_replaced_with_the_same_seed(tmp_path: Path) -> None:
    dataset = small_dataset(tmp_path / "data", flip_prob=0.5)
    (tmp_path / "data" / "prompt_002" / "7_1.jpg").write_bytes(b"")
    with pytest.warns(UserWarning, match="7_1.jpg"):
        replaced = [dataset[(2, seed)] for seed in range(8)]
    for seed, sample in enumerate(replaced):
        assert sample["edit"]["c_crossattn"] == "make it 3"
        assert torch.equal(pixels(sample), pixels(dataset[(3, seed)]))
    assert {assert_aligned(sample) for sample in replaced} == {False, True}


def test_missing_image_raises_when_asked(tmp_path: Path) -> None:
    dataset = small_dataset(tmp_path / "data", on_bad_image="raise")
    missing = tmp_path / "data" / "prompt_004" / "7_1.jpg"
    missing.unlink()
    dataset[3]
    with pytest.raises(ImageInputError, match=re.escape(str(missing))):
        dataset[4]


def test_all_images_corrupt_is_a_clear_error(tmp_path: Path) -> None:
    dataset = small_dataset(tmp_path / "data")
    for image in (tmp_path / "data").glob("*/*_0.jpg"):
        image.write_bytes(b"\x00" * 16)
    with pytest.warns(UserWarning), pytest.raises(DatasetError, match=r"no readable sample in .*all 6 samples"):
        dataset[0]
    assert dataset.num_skipped == 6


# --- DataModuleFromConfig ------------------------------------------------------------------


def data_config(root: Path, num_workers: int, datamodule_params: dict | None = None, **train_params) -> dict:
    dataset = {"target": "ldm.data.edit_dataset.EditDataset"}
    common = {"path": str(root), "min_resize_res": 20, "max_resize_res": 28, "crop_res": 16}
    return OmegaConf.create(
        {
            "target": "ldm.data.datamodule.DataModuleFromConfig",
            "params": {
                "batch_size": 4,
                "num_workers": num_workers,
                **(datamodule_params or {}),
                "train": {**dataset, "params": {**common, "flip_prob": 0.5, **train_params}},
                "validation": {**dataset, "params": {**common, "split": "val"}},
            },
        }
    )


def check_batch(batch: dict, size: int) -> None:
    assert batch["edited"].shape == (size, 3, 16, 16)
    assert batch["edit"]["c_concat"].shape == (size, 3, 16, 16)
    prompts = batch["edit"]["c_crossattn"]
    assert isinstance(prompts, list) and len(prompts) == size and all(isinstance(p, str) for p in prompts)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_datamodule_batches(edit_root: Path, num_workers: int) -> None:
    data = instantiate_from_config(data_config(edit_root, num_workers), "data")
    data.setup("fit")
    assert set(data.datasets) == {"train", "validation"}
    torch.manual_seed(0)
    check_batch(next(iter(data.train_dataloader())), 4)
    check_batch(next(iter(data.val_dataloader())), 2)


def batch_pixels(batch: dict) -> torch.Tensor:
    return torch.cat([batch["edit"]["c_concat"], batch["edited"]], dim=1)  # (B, 6, H, W)


def same_batches(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        x["edit"]["c_crossattn"] == y["edit"]["c_crossattn"] and torch.equal(batch_pixels(x), batch_pixels(y))
        for x, y in zip(a, b, strict=True)
    )


def test_datamodule_batches_ignore_workers_and_global_rng(edit_root: Path) -> None:
    epochs = {}
    for num_workers in (0, 2):
        data = instantiate_from_config(data_config(edit_root, num_workers, {"seed": 3}), "data")
        torch.manual_seed(num_workers)
        rng_state = torch.get_rng_state()
        epochs[num_workers] = list(data.train_dataloader())
        assert torch.equal(torch.get_rng_state(), rng_state), "loading must not draw from the global RNG"
    assert len(epochs[0]) == 9  # 36 training entries, batch_size 4
    assert same_batches(epochs[0], epochs[2])
    prompts = [p for batch in epochs[0] for p in batch["edit"]["c_crossattn"]]
    assert sorted(prompts) == sorted(f"make it {k}" for k in range(36)) and prompts != sorted(prompts)


def test_datamodule_seed_defaults_to_torch_initial_seed(edit_root: Path) -> None:
    torch.manual_seed(1234)
    assert instantiate_from_config(data_config(edit_root, 0), "data").seed == 1234


def fake_trainer(epoch: int, processed: int, rank: int = 0, world_size: int = 1) -> SimpleNamespace:
    """The attributes of pl.Trainer the data module reads."""
    progress = SimpleNamespace(current=SimpleNamespace(processed=processed))
    fit_loop = SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress))
    return SimpleNamespace(current_epoch=epoch, global_rank=rank, world_size=world_size, fit_loop=fit_loop)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_datamodule_state_round_trip(edit_root: Path, num_workers: int) -> None:
    first = instantiate_from_config(data_config(edit_root, 0, {"seed": 7}), "data")
    first.trainer = fake_trainer(epoch=0, processed=0)
    epoch0 = list(first.train_dataloader())
    first.trainer = fake_trainer(epoch=1, processed=0)
    epoch1 = list(first.train_dataloader())
    assert not same_batches(epoch0, epoch1)

    first.trainer = fake_trainer(epoch=0, processed=3)
    state = first.state_dict()
    assert state == {"seed": 7, "epoch": 0, "batches_done": 3}
    # The checkpoint's seed wins over the configured one.
    second = instantiate_from_config(data_config(edit_root, num_workers, {"seed": 8}), "data")
    second.load_state_dict(state)
    loader = second.train_dataloader()
    assert len(loader) == 9, "Lightning counts the resumed epoch from the checkpoint's batch on"
    assert same_batches(list(loader), epoch0[3:])
    loader.sampler.set_epoch(1)
    assert same_batches(list(loader), epoch1), "only the checkpoint's epoch is skipped into"

    # A checkpoint after the last batch of epoch 0: the next loader starts epoch 1 from its beginning.
    third = instantiate_from_config(data_config(edit_root, 0), "data")
    third.load_state_dict({"seed": 7, "epoch": 0, "batches_done": 9})
    assert same_batches(list(third.train_dataloader()), epoch1)


def test_datamodule_shards_by_rank(edit_root: Path) -> None:
    prompts = []
    for rank in range(2):
        data = instantiate_from_config(data_config(edit_root, 0, {"seed": 7}), "data")
        data.trainer = fake_trainer(epoch=0, processed=0, rank=rank, world_size=2)
        train = list(data.train_dataloader())
        assert len(train) == 4  # 18 samples per rank, the last partial batch dropped
        prompts.append([p for batch in train for p in batch["edit"]["c_crossattn"]])
        val = [p for batch in data.val_dataloader() for p in batch["edit"]["c_crossattn"]]
        assert val == [f"make it {36 + rank}"]
    assert not set(prompts[0]) & set(prompts[1])


class BatchRecorder(pl.LightningModule):
    """Records (epoch, batch_idx, prompts, pixel sum) of each training batch; one weight fits the mean pixel."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[tuple[int, int, tuple[str, ...], float]] = []

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        edited = batch["edited"]
        self.seen.append((self.current_epoch, batch_idx, tuple(batch["edit"]["c_crossattn"]), edited.sum().item()))
        return (self.weight - edited.mean()) ** 2

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.5)


@pytest.mark.filterwarnings("ignore::lightning_fabric.utilities.warnings.PossibleUserWarning")
@pytest.mark.parametrize("num_workers", [0, 2])
def test_lightning_resume_sees_the_uninterrupted_batches(edit_root: Path, tmp_path: Path, num_workers: int) -> None:
    def fit(ckpt_path: Path | None = None) -> BatchRecorder:
        config = data_config(edit_root, num_workers)
        del config.params.validation
        callbacks = (
            []
            if ckpt_path
            else [pl.callbacks.ModelCheckpoint(tmp_path, filename="{step}", every_n_train_steps=1, save_top_k=-1)]
        )
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=1,
            max_steps=12,  # 9 batches per epoch: into the second epoch
            logger=False,
            callbacks=callbacks,
            enable_checkpointing=not ckpt_path,
            enable_progress_bar=False,
            enable_model_summary=False,
            use_distributed_sampler=False,
            default_root_dir=tmp_path,
        )
        model = BatchRecorder()
        trainer.fit(model, datamodule=instantiate_from_config(config, "data"), ckpt_path=ckpt_path)
        return model

    full = fit()
    assert [(epoch, index) for epoch, index, _, _ in full.seen] == [(0, i) for i in range(9)] + [(1, 0), (1, 1), (1, 2)]
    # mid-epoch, after the last batch of an epoch, just after an epoch boundary
    for step in (3, 9, 10):
        resumed = fit(tmp_path / f"step={step}.ckpt")
        assert resumed.seen == full.seen[step:], f"resumed from step {step}"
        assert torch.equal(resumed.weight, full.weight)


def test_datamodule_dataset_typo_names_config_path(edit_root: Path) -> None:
    with pytest.raises(ConfigError, match=r"^data\.params\.train\.params\.flip_prb: "):
        instantiate_from_config(data_config(edit_root, 0, flip_prb=0.5), "data")


def test_datamodule_missing_path_fails_early(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"set data\.params\.train\.params\.path to a folder with seeds\.json"):
        instantiate_from_config(data_config(tmp_path / "missing", 0), "data")


def test_datamodule_only_binds_configured_loaders(edit_root: Path) -> None:
    from pytorch_lightning.utilities.model_helpers import is_overridden

    config = data_config(edit_root, 0)
    del config.params.validation
    data = DataModuleFromConfig(**config.params)
    assert is_overridden("train_dataloader", data)
    assert not is_overridden("val_dataloader", data)


def test_edit_dataset_reads_png_pairs(tmp_path: Path) -> None:
    root = make_edit_dataset(tmp_path / "png", num_entries=20, seeds=(0,))
    for jpg in root.rglob("*.jpg"):
        Image.open(jpg).save(jpg.with_suffix(".png"))
        jpg.unlink()
    sample = EditDataset(root, split="train", min_resize_res=24, max_resize_res=24, crop_res=24)[(0, 1)]
    assert sample["edited"].shape == (3, 24, 24)
