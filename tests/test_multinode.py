"""Multi-node start-up as clusters do it, on loopback: two "nodes" of one CPU process each, through
`main.py --num_nodes 2`, launched by torchrun (node ranks 0 and 1) and by SLURM's environment variables.
Both ranks must end with identical weights, and the two nodes (sharing this file system, as cluster nodes
share theirs) must write one run directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import ROOT, TINY_CONFIG, make_edit_dataset

sys.path.insert(0, str(ROOT / "scripts"))
from app_screenshot import free_port  # noqa: E402 (scripts/ is not a package)

STEPS = 4


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_edit_dataset(tmp_path_factory.mktemp("data") / "edits", n=16)


def main_args(dataset: Path, logdir: Path, dump: Path) -> list[str]:
    return ["--base", str(TINY_CONFIG), "--train", "--name", "cluster", "--logdir", str(logdir), "--accelerator",
            "cpu", "--devices", "1", "--num_nodes", "2", "--max_steps", str(STEPS), "--logger", "csv",
            f"data.params.train.params.path={dataset}", "data.params.num_workers=0",
            "lightning.callbacks.dump.target=helpers.DumpWeights",
            f"lightning.callbacks.dump.params.out_dir={dump}"]  # fmt: skip


def launch(commands: list[tuple[list[str], dict[str, str]]], cwd: Path) -> None:
    """Start every (command, extra environment) at once, as the nodes of one job; all must succeed."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_", "TORCHELASTIC_"))}
    base["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), str(ROOT)])
    procs = [subprocess.Popen(cmd, cwd=cwd, env={**base, **extra}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True) for cmd, extra in commands]  # fmt: skip
    errors = [proc.communicate(timeout=600)[1] for proc in procs]
    for proc, err in zip(procs, errors, strict=True):
        assert proc.returncode == 0, err[-3000:]


def check_one_run(tmp_path: Path, dump: Path) -> None:
    assert [(dump / f"rank{r}.world").read_text() for r in (0, 1)] == ["2", "2"]  # one job, not two runs
    rank0, rank1 = torch.load(dump / "rank0.pt"), torch.load(dump / "rank1.pt")
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["cluster"]  # one run directory
    ckpt = torch.load(tmp_path / "logs" / "cluster" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == STEPS


@pytest.mark.slow
def test_torchrun_two_nodes(dataset: Path, tmp_path: Path) -> None:
    dump, port = tmp_path / "dump", str(free_port())
    args = main_args(dataset, tmp_path / "logs", dump)
    launch([([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
              "--node-rank", str(node), "--master-addr", "127.0.0.1", "--master-port", port,
              str(ROOT / "main.py"), *args], {}) for node in (0, 1)], tmp_path)  # fmt: skip
    check_one_run(tmp_path, dump)


@pytest.mark.slow
def test_slurm_two_nodes(dataset: Path, tmp_path: Path) -> None:
    dump, port = tmp_path / "dump", str(free_port())
    args = main_args(dataset, tmp_path / "logs", dump)

    def slurm(node: int) -> dict[str, str]:  # what srun sets for task `node` of a 2-node, 1-task-per-node job
        return {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "sketch-pix2pix", "SLURM_NNODES": "2",
                "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "1", "SLURM_PROCID": str(node),
                "SLURM_LOCALID": "0", "SLURM_NODEID": str(node), "SLURM_NODELIST": "127.0.0.1",
                "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}  # fmt: skip

    launch([([sys.executable, str(ROOT / "main.py"), *args], slurm(node)) for node in (0, 1)], tmp_path)
    check_one_run(tmp_path, dump)
