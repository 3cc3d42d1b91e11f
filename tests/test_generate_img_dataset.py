"""generate_img_dataset.py: the CLIP filter on hand-built embeddings, a tiny end-to-end run through
prepare_dataset.py and main.py, partitions, resuming, and one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from clip_fixtures import write_tiny_clip
from helpers import ROOT, TINY_CONFIG, run_main
from PIL import Image
from test_prompt2prompt import one_thread, save_tiny_txt2img  # noqa: F401  (one_thread: autouse fixture)

from dataset_creation import generate_img_dataset as gen
from dataset_creation import prepare_dataset
from dataset_creation.generate_img_dataset import select_candidates
from ldm.checkpoint import read_checkpoint
from ldm.data.edit_dataset import EditDataset
from ldm.modules.encoders.clip_image import direction_similarity

TRIPLES = [
    {"id": "a1f0", "input": "a photo of a cat", "edit": "make it a dog", "output": "a photo of a dog", "model": "x"},
    {"id": 7, "input": "a red house", "edit": "make it blue", "output": "a blue house"},
    {"input": "a tree in summer", "edit": "make it winter", "output": "a tree in winter"},  # id: line number 3
    {"id": "b/2", "input": "a car", "edit": "make it old", "output": "an old car"},
    {"id": "c3", "input": "a bird", "edit": "add a hat", "output": "a bird with a hat"},
]
FOLDERS = ["a1f0", "0000007", "0000003", "b_2", "c3"]


# ---- CLIP filter on hand-built embeddings -------------------------------------------------------
def unit(*values: float) -> torch.Tensor:
    v = torch.tensor(values + (0.0,) * (4 - len(values)), dtype=torch.float64)
    return v / v.norm()


# Captions t0 = x axis, t1 = y axis: the edit direction is (-1, 1, 0, 0). Each candidate is
# (image_0, image_1) features, mostly along z, with the criteria it is built to fail.
T0, T1 = unit(1, 0, 0), unit(0, 1, 0)
CANDIDATES = {
    "moves_exactly_along_the_edit": (unit(0.3, 0, 1), unit(0, 0.3, 1), set()),
    "moves_partly_along_the_edit": (unit(0.3, 0, 1), unit(0.15, 0.3, 1), set()),
    "moves_less_aligned": (unit(0.3, 0.1, 1), unit(0.3, 0.4, 1), set()),
    "input_unlike_its_caption": (unit(0.1, 0, 1), unit(0, 0.3, 1), {"clip"}),
    "edit_unlike_its_caption": (unit(0.3, 0, 1), unit(0, 0.1, 1), {"clip"}),
    "moves_across_the_edit": (unit(0.3, 0.3, 1), unit(0.3, 0.3, 1, 0.5), {"dir"}),
    "changes_too_much": (unit(0.3, 0, 1), unit(0, 0.5, 1, 1), {"img"}),
}
NAMES = list(CANDIDATES)


def similarities() -> dict[str, list[float]]:
    """The four CLIP similarities of every candidate, computed as ClipSimilarity does."""
    i0 = torch.stack([c[0] for c in CANDIDATES.values()])  # (N, 4)
    i1 = torch.stack([c[1] for c in CANDIDATES.values()])
    t0, t1 = T0.expand_as(i0), T1.expand_as(i0)
    return {
        "sim_0": F.cosine_similarity(i0, t0, dim=-1).tolist(),
        "sim_1": F.cosine_similarity(i1, t1, dim=-1).tolist(),
        "sim_dir": direction_similarity(i0, i1, t0, t1).tolist(),
        "sim_img": F.cosine_similarity(i0, i1, dim=-1).tolist(),
    }


def keep(clip: float = 0.2, direction: float = 0.2, image: float = 0.7, max_out: int = 10) -> list[str]:
    sims = similarities()
    chosen = select_candidates(sims["sim_0"], sims["sim_1"], sims["sim_dir"], sims["sim_img"],
                               clip, direction, image, max_out)  # fmt: skip
    return [NAMES[i] for i in chosen]


def test_hand_built_candidates_are_what_they_claim() -> None:
    sims = similarities()
    assert sims["sim_dir"][0] == pytest.approx(1.0)  # moving from x to y exactly as the captions do
    assert sims["sim_dir"][NAMES.index("moves_across_the_edit")] == pytest.approx(0.0, abs=1e-12)
    for i, (_, _, fails) in enumerate(CANDIDATES.values()):
        failing = set()
        if min(sims["sim_0"][i], sims["sim_1"][i]) < 0.2:
            failing.add("clip")
        if sims["sim_dir"][i] < 0.2:
            failing.add("dir")
        if sims["sim_img"][i] < 0.7:
            failing.add("img")
        assert failing == fails, (NAMES[i], sims)


def test_each_threshold_keeps_and_drops_the_right_candidates() -> None:
    passing = ["moves_exactly_along_the_edit", "moves_partly_along_the_edit", "moves_less_aligned"]
    assert keep() == passing  # highest direction similarity first
    off = -2.0  # cosines are >= -1: a threshold that keeps everything
    assert set(keep(clip=off)) == {*passing, "input_unlike_its_caption", "edit_unlike_its_caption"}
    assert set(keep(direction=off)) == {*passing, "moves_across_the_edit"}
    assert set(keep(image=off)) == {*passing, "changes_too_much"}
    assert set(keep(off, off, off)) == set(NAMES)
    assert keep(clip=0.99) == keep(direction=1.01) == keep(image=1.01) == []


def test_top_k_by_direction_similarity() -> None:
    sims = similarities()
    everything = keep(-2.0, -2.0, -2.0)
    directions = [sims["sim_dir"][NAMES.index(n)] for n in everything]
    assert directions == sorted(directions, reverse=True)
    assert keep(max_out=2) == ["moves_exactly_along_the_edit", "moves_partly_along_the_edit"]
    assert keep(-2.0, -2.0, -2.0, max_out=1) == ["moves_exactly_along_the_edit"]


def test_thresholds_are_inclusive_and_ties_keep_candidate_order() -> None:
    assert select_candidates([0.2], [0.2], [0.2], [0.7], 0.2, 0.2, 0.7, 4) == [0]
    assert select_candidates([0.5] * 3, [0.5] * 3, [0.3, 0.4, 0.3], [0.9] * 3, 0.2, 0.2, 0.7, 4) == [1, 0, 2]
    assert select_candidates([], [], [], [], 0.2, 0.2, 0.7, 4) == []


# ---- triples, folders, partitions ---------------------------------------------------------------
def write_triples(path: Path, triples: list[dict]) -> Path:
    path.write_text("".join(json.dumps(t) + "\n" for t in triples))
    return path


def test_read_triples_ids_and_folders(tmp_path) -> None:
    path = write_triples(tmp_path / "t.jsonl", [*TRIPLES, TRIPLES[0]])  # an identical repeat is dropped
    triples = gen.read_triples(path)
    assert [t.folder for t in triples] == FOLDERS
    assert triples[2].id == 3 and triples[2].record["id"] == 3  # the line number
    assert triples[0].record["model"] == "x"  # other keys are kept for prompt.json
    assert gen.folder_name("../x y") == "_x_y" and gen.folder_name(".") == "_"


def test_partitions_are_disjoint_and_cover(tmp_path) -> None:
    triples = gen.read_triples(write_triples(tmp_path / "t.jsonl", TRIPLES))
    parts = [gen.in_partition(triples, 3, k) for k in range(3)]
    folders = [t.folder for part in parts for t in part]
    assert sorted(folders) == sorted(FOLDERS) and len(set(folders)) == len(FOLDERS)


def test_candidate_seeds_depend_on_seed_and_id_only() -> None:
    seeds = gen.candidate_seeds(0, "a1f0", 50)
    assert len(set(seeds)) == 50 and all(0 <= s < 2**32 for s in seeds)
    assert gen.candidate_seeds(0, "a1f0", 50) == seeds
    assert gen.candidate_seeds(0, "a1f0", 10) == seeds[:10]
    assert gen.candidate_seeds(1, "a1f0", 50) != seeds and gen.candidate_seeds(0, "c3", 50) != seeds


# ---- tiny runs ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    config, ckpt = save_tiny_txt2img(root)
    clip_config, clip_weights = write_tiny_clip(root)
    return {"config": config, "ckpt": ckpt, "clip_config": clip_config, "clip_weights": clip_weights}


def gen_args(models: dict[str, Path], prompts: Path, out: Path, *extra: str) -> list[str]:
    """A tiny run: 32 px, 4 steps, 4 candidates in batches of 3, every candidate passing, 2 kept."""
    return [
        "--prompts", str(prompts), "--out", str(out), "--config", str(models["config"]), "--ckpt", str(models["ckpt"]),
        "--clip-model", str(models["clip_config"]), "--clip-weights", str(models["clip_weights"]),
        "--resolution", "32", "--steps", "4", "--n-samples", "4", "--batch-size", "3", "--max-out-samples", "2",
        "--clip-threshold", "-1", "--clip-dir-threshold", "-1", "--clip-img-threshold", "-1", "--device", "cpu",
        *extra,
    ]  # fmt: skip


def tree(root: Path) -> dict[str, bytes]:
    """Every file under root (relative path -> bytes), generation.json and seeds.json aside."""
    skip = {gen.SETTINGS_FILE, "seeds.json"}
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name
            not in skip}  # fmt: skip


@pytest.fixture(scope="module")
def full_run(models, tmp_path_factory) -> Path:
    """One unpartitioned run over the five triples."""
    root = tmp_path_factory.mktemp("full")
    prompts = write_triples(root / "triples.jsonl", TRIPLES)
    assert gen.main(gen_args(models, prompts, root / "out")) == 0
    return root / "out"


def test_run_writes_the_original_layout(full_run) -> None:
    assert sorted(p.name for p in full_run.iterdir()) == sorted([*FOLDERS, gen.SETTINGS_FILE])
    folder = full_run / "a1f0"
    assert json.loads((folder / "prompt.json").read_text()) == TRIPLES[0]
    metadata = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    assert len(metadata) == 2
    assert list(metadata[0]) == ["seed", "p2p_threshold", "cfg_scale", "clip_sim_0", "clip_sim_1", "clip_sim_dir",
                                 "clip_sim_image"]  # fmt: skip
    assert metadata[0]["clip_sim_dir"] >= metadata[1]["clip_sim_dir"]
    assert {m["seed"] for m in metadata} <= set(gen.candidate_seeds(0, "a1f0", 4))
    for m in metadata:
        assert 0.1 <= m["p2p_threshold"] <= 0.9 and 7.5 <= m["cfg_scale"] <= 15
        for which in (0, 1):
            with Image.open(folder / f"{m['seed']}_{which}.jpg") as image:
                assert image.format == "JPEG" and image.size == (32, 32)
    assert json.loads((full_run / gen.SETTINGS_FILE).read_text())["n_samples"] == 4


def test_partitions_together_make_exactly_one_run(models, full_run, tmp_path) -> None:
    prompts = write_triples(tmp_path / "triples.jsonl", TRIPLES)
    out = tmp_path / "out"
    added: list[set[str]] = []
    for k in range(3):
        before = set(p.name for p in out.iterdir()) if out.exists() else set()
        assert gen.main(gen_args(models, prompts, out, "--n-partitions", "3", "--partition", str(k))) == 0
        added.append({p.name for p in out.iterdir()} - before - {gen.SETTINGS_FILE})
    assert sum(len(a) for a in added) == len(FOLDERS) and set().union(*added) == set(FOLDERS)  # no overlap
    assert tree(out) == tree(full_run)  # the same files, byte for byte


def test_resume_skips_complete_folders_and_redoes_partial_ones(models, full_run, tmp_path, monkeypatch) -> None:
    out = tmp_path / "out"
    shutil.copytree(full_run, out)
    prompts = write_triples(tmp_path / "triples.jsonl", TRIPLES)
    shutil.rmtree(out / "c3")
    shutil.rmtree(out / "b_2")
    (out / ".b_2.partial").mkdir()  # what a run killed while writing leaves
    (out / ".b_2.partial" / "123_0.jpg").write_bytes(b"half")
    untouched = (out / "a1f0" / "metadata.jsonl").stat().st_mtime_ns
    sampled = []
    original = gen.PairGenerator.candidates
    monkeypatch.setattr(gen.PairGenerator, "candidates", lambda self, t: sampled.append(t.folder) or original(self, t))
    assert gen.main(gen_args(models, prompts, out)) == 0
    assert sorted(sampled) == ["b_2", "c3"]
    assert not (out / ".b_2.partial").exists()
    assert (out / "a1f0" / "metadata.jsonl").stat().st_mtime_ns == untouched
    assert tree(out) == tree(full_run)


def test_a_failure_while_writing_leaves_no_folder(models, tmp_path, monkeypatch) -> None:
    prompts = write_triples(tmp_path / "triples.jsonl", TRIPLES[:1])
    out = tmp_path / "out"

    def disk_full(self, fp, *args, **kwargs):
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(Image.Image, "save", disk_full)
        with pytest.raises(OSError, match="disk full"):
            gen.main(gen_args(models, prompts, out))
    assert sorted(p.name for p in out.iterdir()) == [gen.SETTINGS_FILE]  # the .partial folder removed
    with pytest.raises(prepare_dataset.UsageError, match="no prompt folder"):
        prepare_dataset.run(out)
    assert gen.main(gen_args(models, prompts, out)) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a1f0", gen.SETTINGS_FILE]


# ---- end to end ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_generated_dataset_is_indexed_and_trains_through_main(full_run, tmp_path) -> None:
    data = tmp_path / "data"
    shutil.copytree(full_run, data)
    assert prepare_dataset.main([str(data)]) == 0
    entries = json.loads((data / "seeds.json").read_text())
    assert [name for name, _ in entries] == sorted(FOLDERS) and all(len(seeds) == 2 for _, seeds in entries)
    dataset = EditDataset(data, split="train", min_resize_res=32, max_resize_res=32, crop_res=32)
    sample = dataset[(0, 0)]
    assert sample["edited"].shape == (3, 32, 32) and sample["edit"]["c_crossattn"] == TRIPLES[2]["edit"]  # 0000003

    args = ["--base", str(TINY_CONFIG), "--train", "--name", "p2p", "--logdir", str(tmp_path), "--max_steps", "5",
            f"data.params.train.params.path={data}"]  # fmt: skip
    result = run_main(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_checkpoint(tmp_path / "p2p" / "checkpoints" / "last.ckpt")["global_step"] == 5


# ---- one-line errors ----------------------------------------------------------------------------
def one_error(capsys, *fragments: str) -> None:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("generate_img_dataset.py: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize(
    ("lines", "fragments"),
    [
        (['{"input": "a", "edit": "b", "output": "c"}', "not json"], ["t.jsonl:2", "not JSON"]),
        (['{"input": "a", "edit": "b"}'], ["t.jsonl:1", "'output'"]),
        (['{"id": true, "input": "a", "edit": "b", "output": "c"}'], ["t.jsonl:1", "'id'"]),
        (['{"id": "x", "input": "a", "edit": "b", "output": "c"}', '{"id": "x", "input": "d", "edit": "b",'
          ' "output": "c"}'], ["t.jsonl:2", "'x'", "line 1"]),  # fmt: skip
        ([""], ["no triples"]),
    ],
)
def test_bad_triples_file(models, tmp_path, capsys, lines, fragments) -> None:
    (tmp_path / "t.jsonl").write_text("\n".join(lines) + "\n")
    assert gen.main(gen_args(models, tmp_path / "t.jsonl", tmp_path / "out")) == 2
    one_error(capsys, *fragments)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        (["--partition", "3", "--n-partitions", "3"], ["--partition 3", "0 .. 2"]),
        (["--min-p2p", "0.9", "--max-p2p", "0.1"], ["--min-p2p 0.9"]),
        (["--resolution", "36"], ["--resolution 36", "multiple of 8"]),
        (["--config", str(TINY_CONFIG)], ["not a text-to-image model", "'hybrid'"]),
        (["--clip-weights", "/nonexistent/clip.pt"], ["--clip-weights /nonexistent/clip.pt", "no such file"]),
    ],
)
def test_bad_arguments(models, tmp_path, capsys, extra, fragments) -> None:
    prompts = write_triples(tmp_path / "t.jsonl", TRIPLES[:1])
    assert gen.main(gen_args(models, prompts, tmp_path / "out", *extra)) == 2
    one_error(capsys, *fragments)
    assert not (tmp_path / "out").exists()


def test_other_settings_are_refused_for_an_existing_dataset(models, full_run, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    shutil.copytree(full_run, out)
    prompts = write_triples(tmp_path / "t.jsonl", TRIPLES)
    assert gen.main(gen_args(models, prompts, out, "--steps", "5")) == 2
    one_error(capsys, "steps = 4", "5", "another --out")


def test_script_runs_from_the_repository_root(tmp_path) -> None:
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "dataset_creation/generate_img_dataset.py", "--prompts", "none.jsonl",
                             "--out", str(tmp_path / "o"), "--clip-weights", "w.pt"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2 and result.stderr.startswith("generate_img_dataset.py: error: --prompts none.jsonl")
