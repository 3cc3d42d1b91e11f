"""Sketch2Pokemon: assembly from a fixture mirroring the real layouts, caption matching, the configs.

The fixture mirrors the sources: a Kaggle-style `trainA/` (sketches) and `trainB/` (256 px PNG
colors) paired by file name (0001.png ...), and a Hugging Face-style parquet of the caption
dataset (`image` = {bytes, path} with other file names, `en_text`, `ja_text`) whose images are the
same pictures re-framed (white margin), upscaled and JPEG re-encoded, in another order. 0007.png
has no caption row (it must be reported by name); one row is a near-duplicate of 0002.png (a
small detail added: within the match distance, but farther than the true copy) with another
caption; one row belongs to no pair; trainA/0008.png has no color image.
"""

from __future__ import annotations

import csv
import gc
import io
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import ROOT, run_main
from PIL import Image, ImageDraw

from dataset_creation import sketch2pokemon as s2p
from dataset_creation.make_sketches import make_sketch
from ldm.checkpoint import read_checkpoint
from ldm.data.edit_dataset import EditDataset, PairsCSVDataset

CONFIG_DIR = ROOT / "configs" / "sketch2pokemon"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))
SCRIPT = ROOT / "dataset_creation" / "sketch2pokemon.py"
PALETTE = [(220, 40, 40), (40, 160, 60), (250, 210, 40), (60, 90, 220), (160, 80, 200), (240, 140, 40)]
CAPTIONS = {
    1: "a drawing of a green pokemon with red eyes",
    2: "a cartoon of a yellow bird with blue wings",
    3: "a red and white ball with an angry look on its face",
    4: "a close up of a purple cat with a long tail",
    5: "a drawing of an orange fox on a white background",
    6: "a green and yellow toy with a red nose",
}
DISTRACTOR = "a drawing of a near-duplicate that is not pokemon 2"


def creature(seed: int) -> Image.Image:
    """A 256 px 'pokemon': four outlined shapes of random sizes and colors."""
    rng = random.Random(seed)
    image = Image.new("RGB", (256, 256), "white")
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x0, y0, w, h = rng.randint(20, 140), rng.randint(20, 140), rng.randint(50, 110), rng.randint(50, 110)
        shape = draw.ellipse if rng.random() < 0.6 else draw.rectangle
        shape((x0, y0, x0 + w, y0 + h), fill=rng.choice(PALETTE), outline="black", width=3)
    return image


def near_duplicate(seed: int) -> Image.Image:
    """The same creature with one small extra detail: a dark dot of radius 8 px in the middle."""
    image = creature(seed)
    ImageDraw.Draw(image).ellipse((120, 120, 136, 136), fill=(20, 20, 20))
    return image


def hub_version(image: Image.Image) -> bytes:
    """The caption dataset's copy: a 22 px white margin, upscaled to 640 px, JPEG quality 75."""
    canvas = Image.new("RGB", (300, 300), "white")
    canvas.paste(image, (22, 22))
    buffer = io.BytesIO()
    canvas.resize((640, 640), Image.Resampling.BICUBIC).save(buffer, "JPEG", quality=75)
    return buffer.getvalue()


def make_sources(root: Path) -> tuple[Path, list[dict]]:
    """Kaggle folders under root/kaggle/sketch2pokemon and the caption rows (not yet written)."""
    pairs_dir = root / "kaggle" / "sketch2pokemon"
    for side in ("trainA", "trainB"):
        (pairs_dir / side).mkdir(parents=True)
    for i in range(1, 8):
        color = creature(i)
        color.save(pairs_dir / "trainB" / f"{i:04d}.png")
        Image.fromarray(make_sketch(np.asarray(color))).save(pairs_dir / "trainA" / f"{i:04d}.png")
    Image.new("RGB", (256, 256), "white").save(pairs_dir / "trainA" / "0008.png")
    rows = [{"image": hub_version(creature(i)), "path": f"img_{100 + 7 * i}.jpg", "en_text": text}
            for i, text in CAPTIONS.items()]  # fmt: skip
    rows.append({"image": hub_version(near_duplicate(2)), "path": "img_900.jpg", "en_text": DISTRACTOR})
    rows.append({"image": hub_version(creature(50)), "path": "img_901.jpg", "en_text": "a drawing of another one"})
    random.Random(0).shuffle(rows)
    return root / "kaggle", rows


def write_parquet(rows: list[dict], path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({
        "image": [{"bytes": r["image"], "path": r["path"]} for r in rows],
        "en_text": [r["en_text"] for r in rows],
        "ja_text": ["(ja)" for _ in rows],
    })  # fmt: skip
    pq.write_table(table, path)
    return path


def write_csv_export(rows: list[dict], folder: Path) -> Path:
    (folder / "images").mkdir(parents=True)
    for r in rows:
        (folder / "images" / r["path"]).write_bytes(r["image"])
    with (folder / "captions.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "text"])
        writer.writerows([f"images/{r['path']}", r["en_text"]] for r in rows)
    return folder / "captions.csv"


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> tuple[Path, Path, list[dict]]:
    pytest.importorskip("pyarrow")
    root = tmp_path_factory.mktemp("sources")
    pairs_dir, rows = make_sources(root)
    return pairs_dir, write_parquet(rows, root / "pokemon-blip-captions-en-ja.parquet"), rows


@pytest.fixture(scope="module")
def built(sources, tmp_path_factory) -> tuple[Path, dict]:
    pairs_dir, parquet, _ = sources
    out = tmp_path_factory.mktemp("built") / "sketch2pokemon"
    manifest = s2p.build(s2p.BuildOptions(out=out, pairs_dir=pairs_dir, captions=parquet, progress=False))
    return out, manifest


def prompts(out: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in out.glob("*/*/prompt.json")}


# --- assembly (acceptance 1) ---------------------------------------------------------------------


def test_captions_are_matched_by_content_and_the_unmatched_image_is_named(built):
    out, manifest = built
    found = prompts(out)
    assert {pid: p["caption"] for pid, p in found.items()} == {f"{i:04d}": text for i, text in CAPTIONS.items()}
    assert all(p["caption_source"] == "matched" and p["match_distance"] <= 0.03 for p in found.values())
    matching = manifest["matching"]
    assert [u["color_image"] for u in matching["unmatched"]] == ["0007.png"]
    assert matching["unmatched"][0]["nearest_distance"] > 0.2
    assert manifest["skipped_without_caption"] == ["0007.png"]
    assert manifest["one_sided_files"] == ["trainA/0008.png"]
    assert matching["caption_rows"] == 8 and matching["matched"] == 6 and matching["unused_caption_rows"] == 2


def test_instructions_come_from_the_captions(built):
    out, _ = built
    for pair_id, prompt in prompts(out).items():
        desc = s2p.describe(prompt["caption"])
        assert prompt["edit"] in [t.format(desc=desc) for t in s2p.TEMPLATES]
        assert prompt["edit"] == s2p.to_instruction(prompt["caption"], pair_id)
        assert prompt["output"] == prompt["caption"] and prompt["input"] == f"a line drawing of {desc}"


def test_both_layouts_load_and_agree(built):
    out, manifest = built
    assert manifest["pairs"] == 6
    assert {s: manifest["splits"][s]["pairs"] for s in s2p.SPLITS} == {"train": 4, "val": 1, "test": 1}
    for split in s2p.SPLITS:
        folder = EditDataset(out / split, **{k: v for k, v in manifest["splits"][split]["edit_dataset"].items()
                                             if k != "path"})  # fmt: skip
        table = PairsCSVDataset(out / f"{split}.csv", split=split)
        assert len(folder) == len(table) == manifest["splits"][split]["pairs"]
        a, b = folder[(0, 7)], table[(0, 7)]
        assert a["edited"].shape == a["edit"]["c_concat"].shape == (3, 256, 256)
        assert a["edit"]["c_crossattn"] == b["edit"]["c_crossattn"]
        assert np.array_equal(a["edited"].numpy(), b["edited"].numpy())
    pair = out / "train" / EditDataset(out / "train", splits=(1, 0, 0)).entries[0][0]
    with Image.open(pair / "0_0.png") as sketch, Image.open(pair / "0_1.png") as color:
        assert sketch.size == color.size == (256, 256) and sketch.mode == color.mode == "RGB"


def test_a_csv_export_of_the_captions_matches_the_same_way(sources, tmp_path):
    pairs_dir, _, rows = sources
    captions = write_csv_export(rows, tmp_path / "export")
    out = tmp_path / "out"
    manifest = s2p.build(s2p.BuildOptions(out=out, pairs_dir=pairs_dir, captions=captions, progress=False))
    assert {pid: p["caption"] for pid, p in prompts(out).items()} == {f"{i:04d}": t for i, t in CAPTIONS.items()}
    assert manifest["skipped_without_caption"] == ["0007.png"]


def test_unmatched_images_can_be_captioned_by_a_local_model(sources, tmp_path, monkeypatch):
    from dataset_creation import caption

    class FakeCaptioner:
        def __init__(self, model_dir, *args) -> None:
            assert Path(model_dir) == tmp_path / "blip"

        def __call__(self, images, prompt=None):
            return ["a drawing of a blue pokemon"] * len(images)

    monkeypatch.setattr(caption, "Captioner", FakeCaptioner)
    pairs_dir, parquet, _ = sources
    out = tmp_path / "out"
    options = s2p.BuildOptions(out=out, pairs_dir=pairs_dir, captions=parquet, caption_model=tmp_path / "blip",
                               progress=False)  # fmt: skip
    manifest = s2p.build(options)
    assert manifest["pairs"] == 7 and manifest["caption_sources"] == {"matched": 6, "blip": 1, "csv": 0}
    assert prompts(out)["0007"]["caption"] == "a drawing of a blue pokemon"
    assert json.loads((out / "blip_captions.jsonl").read_text())["image"] == "trainB/0007.png"


def test_the_seed_csv_is_accepted(sources, tmp_path):
    pairs_dir, _, _ = sources
    folder = pairs_dir / "sketch2pokemon"
    seed_csv = folder / "seed.csv"
    with seed_csv.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["input_image", "edited_image", "edit_prompt"])
        writer.writerow(["trainA/0001.png", "trainB/0001.png", "Turn it into a drawing of a green pokemon"])
        writer.writerow(["trainA/0002.png", "trainB/0002.png", "a cartoon of a yellow bird"])
    out = tmp_path / "out"
    manifest = s2p.main(["--pairs-csv", str(seed_csv), "--out", str(out), "--no-progress", "--val-percent", "0",
                         "--test-percent", "0"])  # fmt: skip
    assert manifest["caption_sources"]["csv"] == 2 and manifest["splits"]["train"]["pairs"] == 2
    edits = {pid: p["edit"] for pid, p in prompts(out).items()}
    assert edits["0001"] == "Turn it into a drawing of a green pokemon"  # already an instruction: kept
    assert edits["0002"] == s2p.to_instruction("a cartoon of a yellow bird", "0002")
    assert prompts(out)["0001"]["input"] == "a line drawing of a green pokemon"


def test_main_reports_unmatched_and_one_sided_files_on_stderr(sources, tmp_path, capsys):
    pairs_dir, parquet, _ = sources
    s2p.main(["--pairs-dir", str(pairs_dir), "--captions", str(parquet), "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err
    assert "no caption for 0007.png; pair skipped" in err
    assert "trainA/0008.png has no partner" in err and "6 pairs (train 4, val 1, test 1)" in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--pairs-dir", "{tmp}/none", "--captions", "{tmp}/c.parquet"], "--pairs-dir {tmp}/none does not exist"),
        (["--pairs-dir", "{tmp}"], "has no trainA/ and trainB/ folders"),
        (["--pairs-csv", "{tmp}/seed.csv"], "--pairs-csv {tmp}/seed.csv does not exist"),
        ([], "give --pairs-dir"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, args, message):
    argv = [a.format(tmp=tmp_path) for a in args]
    proc = subprocess.run([sys.executable, str(SCRIPT), *argv, "--out", str(tmp_path / "out")], capture_output=True,
                          text=True)  # fmt: skip
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sketch2pokemon.py: error: ")
    assert message.format(tmp=tmp_path) in lines[0]
    assert not (tmp_path / "out").exists()


# --- the pieces ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "caption, desc",
    [
        ("a drawing of a green pokemon with red eyes", "a green pokemon with red eyes"),
        ("a cartoon drawing of a bird", "a bird"),
        ("a black and white image of a cat.", "a cat"),
        ("a close up of a cartoon bird with a red head", "a cartoon bird with a red head"),
        ("a green and yellow toy with a red nose", "a green and yellow toy with a red nose"),
        ("Turn it into a drawing of a dragon", "a dragon"),
    ],
)
def test_describe_cuts_the_lead_in(caption, desc):
    assert s2p.describe(caption) == desc


def test_instruction_templates_are_drawn_per_pair():
    caption = "a drawing of a green pokemon with red eyes"
    drawn = {s2p.to_instruction(caption, f"{i:04d}") for i in range(200)}
    assert drawn == {t.format(desc="a green pokemon with red eyes") for t in s2p.TEMPLATES}
    assert s2p.to_instruction(caption, "0001") == s2p.to_instruction(caption, "0001")
    assert "color it as a green pokemon with red eyes" in drawn
    assert "turn it into a drawing of a green pokemon with red eyes" in drawn


def test_descriptor_distances_separate_copies_near_duplicates_and_others():
    originals = [creature(i) for i in range(1, 7)]
    copies = [Image.open(io.BytesIO(hub_version(im))) for im in originals]
    dist = s2p.distances(np.stack([s2p.descriptor(im) for im in originals]),
                         np.stack([s2p.descriptor(im) for im in copies]))  # fmt: skip
    assert np.diag(dist).max() <= 0.03  # the same picture, re-framed, resized, JPEG
    assert (dist + np.eye(6)).min() > 0.25  # different pictures
    near = s2p.descriptor(Image.open(io.BytesIO(hub_version(near_duplicate(2)))))
    near_distance = s2p.distances(s2p.descriptor(originals[1])[None], near[None])[0, 0]
    assert dist[1, 1] + 0.02 < near_distance < s2p.MAX_DISTANCE  # close enough to be taken, were 0002 uncaptioned


def test_matching_is_one_to_one_and_greedy_by_distance():
    dist = np.array([[0.01, 0.02, 0.9], [0.015, 0.9, 0.9], [0.9, 0.9, 0.5]])
    assert s2p.match(dist, 0.06) == {0: (0, 0.01)}  # row 1's only close column is taken; row 2 is too far
    assert s2p.match(dist, 1.0) == {0: (0, 0.01), 1: (1, 0.9), 2: (2, 0.5)}


def test_split_sizes():
    ids = [f"{i:04d}" for i in range(826)]
    split = s2p.split_pairs(ids, 5, 5)
    assert [sum(v == s for v in split.values()) for s in s2p.SPLITS] == [744, 41, 41]
    assert s2p.split_pairs(ids[:3], 5, 5) == s2p.split_pairs(ids[:3], 5, 5)
    assert sorted(s2p.split_pairs(ids[:3], 5, 5).values()) == ["test", "train", "val"]
    with pytest.raises(ValueError, match="leave room for train"):
        s2p.split_pairs(ids, 60, 40)


# --- configs (acceptance 2) ----------------------------------------------------------------------


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_both_configs_are_the_same_recipe_from_different_checkpoints():
    assert [p.name for p in CONFIGS] == ["train.yaml", "train_from_sd15.yaml"]
    ip2p, sd15 = (load_yaml(p) for p in CONFIGS)
    assert ip2p["model"]["params"].pop("ckpt_path") == "checkpoints/instruct-pix2pix-00-22000.ckpt"
    assert sd15["model"]["params"].pop("ckpt_path") == "checkpoints/v1-5-pruned-emaonly.ckpt"
    assert ip2p == sd15


def test_the_seed_settings():
    config = load_yaml(CONFIG_DIR / "train.yaml")
    model, data, lightning = config["model"], config["data"]["params"], config["lightning"]
    assert model["base_learning_rate"] == 5e-5
    assert model["params"]["use_ema"] is True and model["params"]["unet_config"]["params"]["use_checkpoint"]
    assert model["params"]["scheduler_config"]["params"]["warm_up_steps"] == [0]
    assert data["batch_size"] == 2 and lightning["trainer"]["accumulate_grad_batches"] == 4
    assert lightning["trainer"]["max_steps"] == 15000 and lightning["checkpoint_every"] == 5000
    assert lightning["trainer"]["precision"] == "16-mixed"
    train = data["train"]["params"]
    assert train["flip_prob"] == 0.5 and train["crop_res"] == train["min_resize_res"] == train["max_resize_res"] == 256


@pytest.mark.slow
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_configs_instantiate_at_full_size(path, built):
    from test_configs import SD15_UNET_4CH, build_model, check_lightning_section, load

    from ldm.util import count_params, instantiate_from_config

    out, _ = built
    config = load(path)
    model = build_model(config, "meta")
    assert count_params(model.model.diffusion_model) == SD15_UNET_4CH + 4 * 320 * 9  # 8 input channels
    assert count_params(model.first_stage_model) == 83_653_863
    assert count_params(model.cond_stage_model) == 123_060_480
    del model
    gc.collect()
    for name in ("train", "validation"):  # the data section, pointed at the assembled fixture
        dataset = config["data"]["params"][name]
        dataset["params"]["path"] = str(out / Path(dataset["params"]["path"]).name)
        assert len(instantiate_from_config(dataset, f"data.params.{name}")) > 0
    check_lightning_section(config)


@pytest.mark.slow
def test_tiny_variant_trains_20_steps_on_the_fixture_then_edits_a_test_sketch(built, tmp_path):
    """configs/sketch2pokemon/train.yaml with the tiny model of configs/tests/tiny_edit.yaml, 32 px, on CPU;
    then the README's last step: edit_cli.py colors a held-out sketch with the trained checkpoint."""
    out, _ = built
    tiny = load_yaml(ROOT / "configs" / "tests" / "tiny_edit.yaml")["model"]
    del tiny["base_learning_rate"]  # keep the recipe's 5e-5
    tiny["params"]["ckpt_path"] = None
    overlay = tmp_path / "tiny_model.yaml"
    overlay.write_text(yaml.safe_dump({"model": tiny}))
    sizes = [f"data.params.{s}.params.{k}=32" for s in ("train", "validation")
             for k in ("min_resize_res", "max_resize_res", "crop_res")]  # fmt: skip
    proc = run_main(
        ["--base", str(CONFIG_DIR / "train.yaml"), str(overlay), "--train", "--name", "tiny", "--logdir", str(tmp_path),
         "--accelerator", "cpu", "--devices", "1", "--precision", "32", "--max_steps", "20", "--logger", "csv",
         f"data.params.train.params.path={out / 'train'}", f"data.params.validation.params.path={out / 'val'}",
         "data.params.num_workers=0", "lightning.trainer.log_every_n_steps=1", "lightning.trainer.benchmark=false",
         *sizes],
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]

    ckpt = read_checkpoint(tmp_path / "tiny" / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 20
    saved_path = next((tmp_path / "tiny" / "configs").glob("*-project.yaml"))
    saved = yaml.safe_load(saved_path.read_text())
    assert saved["model"]["base_learning_rate"] == 5e-5
    assert saved["lightning"]["trainer"]["accumulate_grad_batches"] == 4
    with open(tmp_path / "tiny" / "csv" / "metrics.csv") as f:
        losses = [float(r["train/loss_simple"]) for r in csv.DictReader(f) if r.get("train/loss_simple")]
    assert losses and all(np.isfinite(losses))

    sketch = out / next(csv.DictReader((out / "test.csv").open()))["input_image"]
    edit = subprocess.run(
        [sys.executable, str(ROOT / "edit_cli.py"), "--input", str(sketch), "--output", str(tmp_path / "colored.png"),
         "--edit", "color it as a green pokemon with red eyes", "--config", str(saved_path),
         "--ckpt", str(tmp_path / "tiny" / "checkpoints" / "last.ckpt"), "--resolution", "32", "--steps", "2",
         "--seed", "0", "--device", "cpu"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert edit.returncode == 0, edit.stderr[-3000:]
    with Image.open(tmp_path / "colored.png") as colored:
        assert colored.size == (32, 32)
