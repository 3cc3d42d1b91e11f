"""Latent cache: the cached loss equals the online loss, foreign caches are refused, encoding resumes."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from helpers import ROOT, TINY_CONFIG, make_edit_dataset, run_main, tiny_model
from omegaconf import OmegaConf
from torch.utils.data import default_collate

from ldm.data import latent_cache as lc
from ldm.util import instantiate_from_config

SOURCE = {
    "target": "ldm.data.edit_dataset.EditDataset",
    "params": {"split": "train", "splits": [1.0, 0.0, 0.0], "min_resize_res": 32, "max_resize_res": 32,
               "crop_res": 32, "flip_prob": 0.5},
}  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = make_edit_dataset(tmp_path_factory.mktemp("edits") / "pairs", n=10)
    source = copy.deepcopy(SOURCE)
    source["params"]["path"] = str(root)
    return source


@pytest.fixture(scope="module")
def model():
    return tiny_model(cond_drop_text=0.2, cond_drop_both=0.2, cond_drop_image=0.2)


def encode(model, source, out, **kwargs):
    dataset = instantiate_from_config(source, "source")
    return lc.encode_dataset(model, dataset, source, out, **kwargs)


def test_cached_loss_equals_online_loss(model, data, tmp_path):
    encode(model, data, tmp_path / "cache", shard_size=3)  # 4 shards, the last one partial
    online = instantiate_from_config(data, "source")
    cached = lc.CachedEditDataset(tmp_path / "cache", data)
    items = [(i, 1000 + i) for i in range(len(online))]
    flips = [online.transform.draw(torch.Generator().manual_seed(s))[3] for _, s in items]
    assert any(flips) and not all(flips)  # both stored orientations are exercised
    batch_online = default_collate([online[item] for item in items])
    batch_cached = default_collate([cached[item] for item in items])
    model.train()  # conditioning dropout on (rates 0.2 each: every case occurs in 10 samples x 3 seeds)
    for seed in range(3):
        losses = []
        for batch in (batch_online, batch_cached):
            torch.manual_seed(seed)
            losses.append(model.shared_step(batch))
        # fp16 storage: latents carry a relative error of at most 2^-11 (about 5e-4), the loss about the same
        torch.testing.assert_close(losses[1], losses[0], rtol=2e-3, atol=1e-5)
    torch.manual_seed(0)
    z_online, cond_online = model.get_input(batch_online)
    torch.manual_seed(0)
    z_cached, cond_cached = model.get_input(batch_cached)
    torch.testing.assert_close(z_cached, z_online, rtol=2e-3, atol=2e-3)
    for key in ("c_concat", "c_crossattn"):
        torch.testing.assert_close(cond_cached[key][0], cond_online[key][0], rtol=2e-3, atol=2e-3)
    assert (cond_online["c_concat"][0].flatten(1).abs().sum(1) == 0).any()  # an image-dropped sample was compared
    model.eval()


def test_cache_of_another_autoencoder_is_refused(model, data, tmp_path):
    meta = encode(model, data, tmp_path / "cache", shard_size=16)
    other = tiny_model(seed=1)
    with pytest.raises(lc.CacheMismatchError, match="another autoencoder") as err:
        lc.check_identity(meta["encoders"], lc.encoder_identity(other), "data.params.train.params.path")
    assert "\n" not in str(err.value) and "encode_dataset.py" in str(err.value)
    other.cond_stage_model = model.cond_stage_model  # same text encoder, another autoencoder: still refused
    with pytest.raises(lc.CacheMismatchError, match="autoencoder"):
        lc.check_identity(meta["encoders"], lc.encoder_identity(other), "x")
    lc.check_identity(meta["encoders"], lc.encoder_identity(model), "x")  # its own encoders pass


def test_cache_of_other_data_is_refused(model, data, tmp_path):
    encode(model, data, tmp_path / "cache", shard_size=16)
    moved = copy.deepcopy(data)
    moved["params"]["flip_prob"] = 0.0
    with pytest.raises(lc.CacheMismatchError, match="differs in params flip_prob"):
        lc.CachedEditDataset(tmp_path / "cache", moved)
    with pytest.raises(lc.CacheMismatchError, match="another dataset or encoders"):
        encode(model, moved, tmp_path / "cache", shard_size=16)  # not overwritten either
    with pytest.raises(FileNotFoundError, match="encode_dataset.py"):
        lc.CachedEditDataset(tmp_path / "nothing", data)


def test_encoding_resumes_and_partitions(model, data, tmp_path):
    out = tmp_path / "cache"
    meta = encode(model, data, out, shard_size=3, partition=1, num_partitions=2)
    assert lc.missing_shards(out, meta) == [0, 2]
    with pytest.raises(lc.CacheMismatchError, match="incomplete: 2 of 4 shards"):
        lc.CachedEditDataset(out, data)
    encode(model, data, out, shard_size=3, partition=0, num_partitions=2)
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")}
    (out / lc.shard_name(2)).unlink()
    encode(model, data, out, shard_size=3)
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")}
    assert sorted(after) == sorted(before) and all(after[k] == before[k] for k in after if k != lc.shard_name(2))
    assert not list(out.glob(".*.tmp"))
    assert len(lc.CachedEditDataset(out, data)) == 10


def cached_config(tmp_path, data, init_ckpt) -> str:
    config = OmegaConf.load(TINY_CONFIG)
    config.model.params.ckpt_path = str(init_ckpt)
    config.data.params.train = {
        "target": "ldm.data.latent_cache.CachedEditDataset",
        "params": {"path": str(tmp_path / "cache"), "source": data},
    }
    path = tmp_path / "cached.yaml"
    OmegaConf.save(config, path)
    return str(path)


@pytest.mark.slow
def test_encode_script_then_main_trains_on_the_cache(model, data, tmp_path):
    """encode_dataset.py fills the config's cache; main.py trains on it; a cache of other encoders is refused."""
    init = tmp_path / "init.ckpt"
    torch.save({"state_dict": model.state_dict()}, init)
    config = cached_config(tmp_path, data, init)
    script = [sys.executable, str(ROOT / "dataset_creation" / "encode_dataset.py"), "--base", config]
    done = subprocess.run([*script, "--shard-size", "4"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "10 pairs x 2 flip(s) in 3 shards (complete)" in done.stdout
    run = run_main(["--base", config, "--train", "--name", "cached", "--max_steps", "3", "--logger", "csv"], tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "logs" / "cached" / "checkpoints" / "last.ckpt").is_file()
    # the same config initialised from other weights: main.py refuses the cache in one line, exit 2
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": tiny_model(seed=1).state_dict()}, other)
    config_other = cached_config(tmp_path, data, other)
    run = run_main(["--base", config_other, "--train", "--name", "other", "--max_steps", "1"], tmp_path)
    assert run.returncode == 2
    lines = [line for line in run.stderr.splitlines() if "error" in line]
    assert len(lines) == 1 and "another autoencoder" in lines[0] and "Traceback" not in run.stderr, run.stderr
