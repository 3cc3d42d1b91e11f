"""Training on streaming shards through main.py: two-process DDP (gloo, CPU) sees every sample once per
epoch, a run killed mid-epoch and resumed sees the batches of an uninterrupted one, a corrupt shard stops
the run with its name."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from helpers import TINY_CONFIG, kill_main_when, make_edit_dataset, run_main, sample_hash
from omegaconf import OmegaConf

from ldm.checkpoint import read_checkpoint
from ldm.data import shards
from ldm.data.sampler import sample_seed
from ldm.util import instantiate_from_config

pytestmark = pytest.mark.slow  # each test starts main.py and trains
SEED = 23  # main.py's default seed, which the data module takes


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(config file training on 40 pairs as shards of ~7, the folder dataset's config)."""
    root = tmp_path_factory.mktemp("shard-training")
    config = OmegaConf.load(TINY_CONFIG)
    source = OmegaConf.to_container(config.data.params.train)
    source["params"].update(path=str(make_edit_dataset(root / "edits", n=40)), splits=[1.0, 0.0, 0.0])
    dataset = instantiate_from_config(source, "source")
    sample_bytes = sum(len(b) for b in shards._pair_members(dataset, 0).values())
    shards.write_shards(dataset, source, root / "shards", shard_bytes=7 * sample_bytes)
    config.data.params.train = {"target": "ldm.data.shards.ShardDataset",
                                "params": {"url": str(root / "shards"), "shuffle_buffer": 8}}  # fmt: skip
    OmegaConf.save(config, root / "shards.yaml")
    return root / "shards.yaml", source


def args(config: Path, logdir: Path, name: str, *extra: str) -> list[str]:
    return ["--base", str(config), "--train", "--name", name, "--logdir", str(logdir), "--accelerator", "cpu",
            *extra]  # fmt: skip


def batches(dump: Path) -> dict[tuple[int, int], list[str]]:
    """{(rank, step): sample hashes}; a step logged twice (before a kill and after the resume) keeps its last record."""
    out = {}
    for rank in (0, 1):
        for line in (dump / f"rank{rank}.jsonl").read_text().splitlines():
            record = json.loads(line)
            out[(rank, record["step"])] = record["samples"]
    return out


def test_two_process_ddp_over_shards_sees_each_sample_once_and_resumes_exactly(setup, tmp_path):
    config, source = setup
    dump_args = ["lightning.callbacks.dump.target=helpers.DumpBatches"]
    # 40 samples, 2 ranks, batch 2: one epoch is 10 steps
    out = f"lightning.callbacks.dump.params.out_dir={tmp_path / 'dump-straight'}"
    straight = run_main(args(config, tmp_path, "straight", "--devices", "2", "--max_steps", "10", *dump_args, out),
                        cwd=tmp_path)  # fmt: skip
    assert straight.returncode == 0, straight.stderr[-3000:]
    seen = batches(tmp_path / "dump-straight")
    assert sorted(seen) == [(r, s) for r in (0, 1) for s in range(1, 11)]
    folder = instantiate_from_config(source, "source")
    expected = [sample_hash(folder[(i, sample_seed(SEED, 0, i))]["edited"]) for i in range(len(folder))]
    assert len(set(expected)) >= 35  # samples are told apart by their pixels (a few of the 40 pairs coincide)
    got = [h for samples in seen.values() for h in samples]
    assert Counter(got) == Counter(expected), "every sample exactly once in the epoch, across both ranks"

    killed_dump = tmp_path / "dump-killed"
    step5 = tmp_path / "killed" / "checkpoints" / "step-000005.ckpt"
    kill_main_when(args(config, tmp_path, "killed", "--devices", "2", "--max_steps", "10", *dump_args,
                        f"lightning.callbacks.dump.params.out_dir={killed_dump}"), tmp_path, step5)  # mid-epoch
    resumed = run_main(["--resume", str(step5), "--train", "--accelerator", "cpu", "--devices", "2",
                        "--max_steps", "10"], cwd=tmp_path)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert batches(killed_dump) == seen, "the resumed run saw the uninterrupted run's batches"
    a = read_checkpoint(tmp_path / "straight" / "checkpoints" / "last.ckpt")["state_dict"]
    b = read_checkpoint(tmp_path / "killed" / "checkpoints" / "last.ckpt")["state_dict"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)


def test_a_corrupt_shard_stops_the_run_with_its_name(setup, tmp_path):
    config, _ = setup
    source = Path(OmegaConf.load(config).data.params.train.params.url)
    index = shards.read_index(str(source))
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in source.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    victim = broken / index["shards"][2]["name"]
    victim.write_bytes(victim.read_bytes()[:3000])
    result = run_main(args(config, tmp_path, "broken", "--max_steps", "40", f"data.params.train.params.url={broken}",
                           "data.params.num_workers=1"), cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert victim.name in last and "write it again" in last and "Traceback" not in result.stderr, result.stderr[-3000:]
