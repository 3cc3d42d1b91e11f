"""Streaming shards: the same examples as the folder dataset and the cache, disjoint ranks, exact resume,
webdataset-readable files, fsspec URLs, corrupt shards named, resumable writing."""

from __future__ import annotations

import copy
import json
import shutil

import fsspec
import pytest
import torch
from helpers import make_edit_dataset, tiny_model
from torch.utils.data import DataLoader

from dataset_creation import write_shards as cli
from ldm.data import latent_cache as lc
from ldm.data import shards
from ldm.data.sampler import sample_seed
from ldm.util import instantiate_from_config

SOURCE = {
    "target": "ldm.data.edit_dataset.EditDataset",
    "params": {"split": "train", "splits": [1.0, 0.0, 0.0], "min_resize_res": 32, "max_resize_res": 32,
               "crop_res": 32, "flip_prob": 0.5},
}  # fmt: skip
SEED = 11


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """24 entries, every third with two pairs (the loader draws one), as a dataset config."""
    root = make_edit_dataset(tmp_path_factory.mktemp("edits") / "pairs", n=24)
    entries = json.loads((root / "seeds.json").read_text())
    for i in range(0, len(entries), 3):
        name, (seed,) = entries[i]
        for which in (0, 1):
            shutil.copy(root / name / f"{seed}_{which}.jpg", root / name / f"{seed + 1000}_{which}.jpg")
        entries[i][1].append(seed + 1000)
    (root / "seeds.json").write_text(json.dumps(entries))
    config = copy.deepcopy(SOURCE)
    config["params"]["path"] = str(root)
    return config


@pytest.fixture(scope="module")
def written(source, tmp_path_factory):
    """The source as shards of about 5 samples each (the last one partial)."""
    out = tmp_path_factory.mktemp("shards") / "train"
    dataset = instantiate_from_config(source, "source")
    sample_bytes = sum(len(b) for b in shards._pair_members(dataset, 1).values())
    index = shards.write_shards(dataset, source, out, shard_bytes=5 * sample_bytes + 1)
    assert index["complete"] and len(index["shards"]) >= 4
    return out


def epoch_items(sampler: shards.ShardSampler, epoch: int) -> list[tuple[shards.Stream, int]]:
    sampler.set_epoch(epoch)
    return list(sampler)


def indices(dataset: shards.ShardDataset, items) -> list[int]:
    """The source indices of `items`, read with one copy of the dataset per worker stream."""
    copies: dict[shards.Stream, shards.ShardDataset] = {}
    return [json.loads(copies.setdefault(s, copy.copy(dataset)).raw((s, k))["json"])["index"] for s, k in items]


def assert_samples_equal(a: dict, b: dict) -> None:
    assert a["edit"]["c_crossattn"] == b["edit"]["c_crossattn"]
    torch.testing.assert_close(a["edited"], b["edited"], rtol=0, atol=0)
    torch.testing.assert_close(a["edit"]["c_concat"], b["edit"]["c_concat"], rtol=0, atol=0)


def test_shards_yield_the_folder_datasets_examples(source, written):
    folder = instantiate_from_config(source, "source")
    dataset = shards.ShardDataset(str(written), shuffle_buffer=4)
    assert len(dataset) == len(folder) == 24
    sampler = shards.ShardSampler(len(dataset), SEED, batch_size=4, num_workers=1)
    orders = []
    for epoch in (0, 1):
        items = epoch_items(sampler, epoch)
        order = indices(dataset, items)
        assert sorted(order) == list(range(24)), "every sample once per epoch"
        orders.append(order)
        for (stream, k), index in zip(items, order, strict=True):
            assert_samples_equal(dataset[(stream, k)], folder[(index, sample_seed(SEED, epoch, index))])
    assert orders[0] != orders[1], "the order changes with the epoch"
    multi = [i for i in range(24) if folder.num_variants(i) == 2]
    assert multi and all(json.loads(m)["variants"] == 2 for m in _jsons(written, multi))


def _jsons(written, wanted: list[int]) -> list[bytes]:
    index = shards.read_index(str(written))
    found = {}
    for entry in index["shards"]:
        for sample in shards.read_shard(str(written), entry):
            meta = json.loads(sample["json"])
            found[meta["index"]] = sample["json"]
    return [found[i] for i in wanted]


@pytest.mark.parametrize("world_size, num_workers, batch_size", [(2, 1, 3), (2, 2, 2), (3, 2, 2)])
def test_ranks_and_workers_read_disjoint_parts(written, world_size, num_workers, batch_size):
    dataset = shards.ShardDataset(str(written))
    seen = []
    for rank in range(world_size):
        sampler = shards.ShardSampler(24, SEED, batch_size, num_workers, drop_last=True, rank=rank,
                                      world_size=world_size)  # fmt: skip
        items = epoch_items(sampler, 3)
        assert len(items) == len(sampler) == (24 // world_size) // batch_size * batch_size
        seen += indices(dataset, items)
    assert len(seen) == len(set(seen)), "no sample twice in an epoch"
    if 24 % (world_size * batch_size) == 0:
        assert sorted(seen) == list(range(24))


def test_dataloader_workers_take_their_turns(written):
    """A DataLoader with 2 workers yields the batches the sampler plans, in its order."""
    dataset = shards.ShardDataset(str(written), shuffle_buffer=3)
    sampler = shards.ShardSampler(24, SEED, batch_size=3, num_workers=2, drop_last=True)
    sampler.set_epoch(1)
    expected = [dataset[item]["edited"] for item in list(sampler)]  # one process: streams replayed on each switch
    loader = DataLoader(dataset, batch_size=3, sampler=sampler, num_workers=2, drop_last=True)
    got = [image for batch in loader for image in batch["edited"]]
    assert len(got) == len(expected) == 24
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_resume_skips_to_the_same_batches(written):
    dataset = shards.ShardDataset(str(written))
    full = shards.ShardSampler(24, SEED, batch_size=2, num_workers=2, drop_last=True)
    full.set_epoch(2)
    straight = indices(dataset, list(full))
    resumed = shards.ShardSampler(24, SEED, batch_size=2, num_workers=2, drop_last=True)
    resumed.skip(2, 6)
    resumed.set_epoch(2)
    assert indices(shards.ShardDataset(str(written)), list(resumed)) == straight[6:]
    with pytest.raises(ValueError, match="whole batches|batches of"):
        resumed.skip(2, 3)


def test_validation_pads_each_rank_and_only_the_last_batch_is_short(written):
    assert shards.worker_runs(5, 2, 2) == [(1, 2), (0, 1)]  # worker 0 yields batches 0 and 2, the short one last
    dataset = shards.ShardDataset(str(written))
    for rank in (0, 4):
        sampler = shards.ShardSampler(24, SEED, batch_size=2, num_workers=2, shuffle=False, rank=rank, world_size=5)
        expected = [dataset[item]["edited"] for item in list(sampler)]
        assert len(expected) == 5  # ceil(24 / 5)
        batches = list(DataLoader(dataset, batch_size=2, sampler=sampler, num_workers=2))
        assert [len(b["edited"]) for b in batches] == [2, 2, 1]
        for a, b in zip([x for batch in batches for x in batch["edited"]], expected, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    everything = []
    for rank in range(5):
        sampler = shards.ShardSampler(24, SEED, batch_size=2, num_workers=1, shuffle=False, rank=rank, world_size=5)
        everything += indices(shards.ShardDataset(str(written)), list(sampler))
    assert set(everything) == set(range(24)) and len(everything) == 25  # one sample padded


def test_webdataset_reads_the_shards(written):
    wds = pytest.importorskip("webdataset")
    index = shards.read_index(str(written))
    urls = [str(written / e["name"]) for e in index["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    assert len(samples) == 24
    assert all(k in samples[0] for k in ("__key__", "json", "input_0.jpg", "edited_0.jpg"))
    ours = [s for e in index["shards"] for s in shards.read_shard(str(written), e)]
    assert [s["__key__"] for s in samples] == [s["__key__"] for s in ours]
    for theirs, mine in zip(samples, ours, strict=True):
        assert theirs["json"] == mine["json"] and theirs["input_0.jpg"] == mine["input_0.jpg"]


def test_an_fsspec_url_reads_like_the_folder(written):
    fs = fsspec.filesystem("memory")
    for path in written.iterdir():
        fs.pipe(f"/shardtest/{path.name}", path.read_bytes())
    local, remote = shards.ShardDataset(str(written)), shards.ShardDataset("memory://shardtest")
    sampler = shards.ShardSampler(24, SEED, batch_size=4, num_workers=1)
    for item in list(sampler)[:8]:
        assert_samples_equal(local[item], remote[item])
    fs.rm("/shardtest", recursive=True)


def test_the_shard_dataset_of_a_cache_yields_the_caches_tensors(source, tmp_path):
    model = tiny_model()
    dataset = instantiate_from_config(source, "source")
    meta = lc.encode_dataset(model, dataset, source, tmp_path / "cache", shard_size=5)  # variants straddle shards
    cache_cfg = {"target": "ldm.data.latent_cache.CachedEditDataset",
                 "params": {"path": str(tmp_path / "cache"), "source": source}}  # fmt: skip
    cached = instantiate_from_config(cache_cfg, "train")
    shards.write_shards(cached, cache_cfg, tmp_path / "shards", shard_bytes=10_000)
    streamed = shards.ShardDataset(str(tmp_path / "shards"), source=cache_cfg)
    assert streamed.encoder_identity == meta["encoders"]
    sampler = shards.ShardSampler(24, SEED, batch_size=4, num_workers=1)
    for epoch in (0, 1):
        items = epoch_items(sampler, epoch)
        for (stream, k), index in zip(items, indices(streamed, items), strict=True):
            a = streamed[(stream, k)][lc.CACHE_KEY]
            b = cached[(index, sample_seed(SEED, epoch, index))][lc.CACHE_KEY]
            assert a.keys() == b.keys()
            for key in a:
                torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def read_all(url: str) -> None:
    dataset = shards.ShardDataset(url, shuffle_buffer=1)
    for item in shards.ShardSampler(len(dataset), SEED, batch_size=1, num_workers=1, shuffle=False):
        dataset[item]


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_a_corrupt_or_missing_shard_stops_reading_with_its_name(written, tmp_path, damage):
    copy_dir = tmp_path / "copy"
    shutil.copytree(written, copy_dir)
    victim = copy_dir / shards.shard_name(1)
    data = victim.read_bytes()
    if damage == "truncate":
        victim.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        victim.write_bytes(data[:1000] + bytes([data[1000] ^ 0xFF]) + data[1001:])
    else:
        victim.unlink()
    with pytest.raises(shards.ShardError, match=shards.shard_name(1)) as err:
        read_all(str(copy_dir))
    assert "\n" not in str(err.value)


def test_writing_resumes_and_refuses_another_write(source, written, tmp_path):
    out = tmp_path / "again"
    shutil.copytree(written, out)
    index = json.loads((out / shards.INDEX_FILE).read_text())
    last = index["shards"].pop()
    (out / last["name"]).unlink()
    (out / shards.INDEX_FILE).write_text(json.dumps({**index, "complete": False}))
    with pytest.raises(shards.ShardError, match="incomplete"):
        shards.ShardDataset(str(out))
    dataset = instantiate_from_config(source, "source")
    per_shard = index["samples_per_shard"]
    sample_bytes = sum(len(b) for b in shards._pair_members(dataset, 1).values())
    shards.write_shards(dataset, source, out, shard_bytes=5 * sample_bytes + 1)
    for path in written.iterdir():
        assert (out / path.name).read_bytes() == path.read_bytes(), path.name  # the same bytes as one run
    with pytest.raises(shards.ShardError, match="another write.*samples_per_shard"):
        shards.write_shards(dataset, source, out, shard_bytes=(per_shard + 3) * sample_bytes)


def test_cli_writes_and_reports_mistakes_in_one_line(source, tmp_path, capsys):
    config = tmp_path / "c.yaml"
    from omegaconf import OmegaConf

    OmegaConf.save({"data": {"params": {"train": source}}}, config)
    assert cli.main(["--base", str(config), "--out", str(tmp_path / "s"), "--shard-mb", "1"]) == 0
    assert "24 samples (pairs) in 1 shards" in capsys.readouterr().out
    assert cli.main(["--base", str(config)]) == 2
    assert "give --out" in capsys.readouterr().err
    assert json.loads((tmp_path / "s" / shards.INDEX_FILE).read_text())["complete"]
    folder = source["params"]["path"]
    name, (seed, *_) = json.loads(open(f"{folder}/seeds.json").read())[5]
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    (broken / name / f"{seed}_1.jpg").write_bytes(b"not a jpeg")
    override = f"data.params.train.params.path={broken}"
    assert cli.main(["--base", str(config), "--out", str(tmp_path / "b"), override]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{seed}_1.jpg" in err and "\n" not in err
    streamed = {"target": cli.SHARD_DATASET, "params": {"url": str(tmp_path / "u"), "source": source}}
    OmegaConf.save({"data": {"params": {"train": streamed}}}, config)
    assert cli.main(["--base", str(config), "--keep-order"]) == 0  # to the config's url
    assert shards.read_index(str(tmp_path / "u"))["order_seed"] is None
