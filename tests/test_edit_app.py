"""edit_app.py: the Gradio app served on loopback with a tiny model, used through gradio_client (the
API) and through headless Chromium (scripts/app_screenshot.py, which uploads, types and clicks)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT, TINY_CONFIG, tiny_model
from omegaconf import OmegaConf
from PIL import Image, ImageDraw
from safetensors.torch import save_file

gradio_client = pytest.importorskip("gradio_client", reason="gradio is not installed: pip install -e '.[app]'")
sys.path.insert(0, str(ROOT / "scripts"))
import app_screenshot  # noqa: E402 (scripts/ is not a package)

import edit_app  # noqa: E402
from ldm.edit_settings import SamplingOptions  # noqa: E402
from ldm.image_io import edit_size  # noqa: E402

RESOLUTION, STEPS = 32, 3
SIZE = edit_size(48, 40, RESOLUTION, 8)  # the sketch's size fitted to the tiny model's grid (stride 8)
CHROMIUM = shutil.which("chromium") or app_screenshot.CHROMIUM


def sketch(size: tuple[int, int] = (48, 40)) -> Image.Image:
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).ellipse((5, 5, size[0] - 7, size[1] - 6), outline="black", width=3)
    return image


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("edit_app")
    state = tiny_model().state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, root / "tiny.safetensors")
    OmegaConf.save({"model": OmegaConf.load(TINY_CONFIG).model, "edit_defaults": {"steps": STEPS}}, root / "tiny.yaml")
    sketch().save(root / "sketch.png")
    (root / "not_an_image.png").write_text("this is text, not a PNG\n")
    return {"root": root, "config": root / "tiny.yaml", "ckpt": root / "tiny.safetensors",
            "sketch": root / "sketch.png", "bad": root / "not_an_image.png"}  # fmt: skip


def app_args(files: dict[str, Path]) -> list[str]:
    return ["--config", str(files["config"]), "--ckpt", str(files["ckpt"]), "--resolution", str(RESOLUTION),
            "--device", "cpu"]  # fmt: skip


@pytest.fixture(scope="module")
def client(files: dict[str, Path]):
    port = app_screenshot.free_port()
    app = app_screenshot.start_app(app_args(files), port, files["root"] / "app.log")
    try:
        yield gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False)
    finally:
        app.terminate()
        app.wait(timeout=30)


def generate(client, image: Path | None, instruction: str = "make it red", **controls):
    """(edited image, gallery, seed, text CFG, image CFG, downloads) from the /generate endpoint."""
    value = None if image is None else {"background": gradio_client.handle_file(str(image)), "layers": [],
                                        "composite": None}  # fmt: skip
    settings = {"steps": STEPS, "seed": 5, "seed_mode": edit_app.FIX_SEED, "cfg_text": 7.5, "cfg_image": 1.5,
                "cfg_mode": edit_app.FIX_CFG, "sampler": "euler_a", "samples": 1, "lines": False}  # fmt: skip
    settings.update(controls)
    return client.predict(value, instruction, *settings.values(), api_name="/generate")


def pixels(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_api_edits_at_the_model_size_and_a_fixed_seed_repeats(client, files):
    edited, gallery, seed, cfg_text, cfg_image, downloads = generate(client, files["sketch"], samples=2)
    assert Image.open(edited).size == SIZE
    assert (seed, cfg_text, cfg_image) == (5, 7.5, 1.5)
    assert [item["caption"] for item in gallery] == ["seed 5", "seed 6"]
    assert [Path(p).name for p in downloads] == ["edit_seed5.png", "edit_seed6.png"]
    assert np.array_equal(pixels(downloads[0]), pixels(edited))
    assert not np.array_equal(pixels(gallery[0]["image"]), pixels(gallery[1]["image"]))  # seeds 5 and 6 differ
    again = generate(client, files["sketch"])[0]
    assert np.array_equal(pixels(again), pixels(edited))
    other_seed = generate(client, files["sketch"], seed=9)[0]
    assert not np.array_equal(pixels(other_seed), pixels(edited))


def test_api_randomize_writes_the_values_used_back(client, files):
    _, gallery, seed, cfg_text, cfg_image, _ = generate(
        client, files["sketch"], seed_mode=edit_app.RANDOM_SEED, cfg_mode=edit_app.RANDOM_CFG
    )
    assert gallery[0]["caption"] == f"seed {seed}" and 0 <= seed < edit_app.RANDOM_SEEDS
    assert 6 <= cfg_text <= 9 and 1.2 <= cfg_image <= 1.8


def test_api_keep_lines_and_an_empty_instruction(client, files):
    resized = np.asarray(Image.open(generate(client, files["sketch"], instruction="")[0]), dtype=np.int16)
    assert resized.shape[:2] == SIZE[::-1]
    ink = resized.max(axis=2) <= 32  # the drawn circle's core, after resizing (fully laid over)
    assert ink.any()
    lined = pixels(generate(client, files["sketch"], lines=True)[0])
    raw = pixels(generate(client, files["sketch"], lines=False)[0])
    assert lined[ink].max() <= 32 and not np.array_equal(lined, raw)


@pytest.mark.parametrize(
    ("image", "controls", "message"),
    [
        ("bad", {}, "cannot use this image"),
        (None, {}, "no input image"),
        ("sketch", {"steps": 0}, "less than minimum value 1"),  # Gradio's slider checks its own range
        ("sketch", {"steps": edit_app.MAX_STEPS + 1}, f"greater than maximum value {edit_app.MAX_STEPS}"),
        ("sketch", {"steps": 2.5}, "steps must be a whole number"),
        ("sketch", {"samples": 99}, "greater than maximum value"),
        ("sketch", {"seed": -1}, "seed must be"),
    ],
)
def test_api_bad_input_is_a_message_and_the_app_goes_on(client, files, image, controls, message):
    with pytest.raises(gradio_client.exceptions.AppError, match=message):
        generate(client, files[image] if image else None, **controls)
    assert Image.open(generate(client, files["sketch"])[0]).size == SIZE


def test_api_load_example_is_a_held_out_openmoji_sketch(client):
    pytest.importorskip("resvg_py", reason="Load Example renders OpenMoji: pip install -e '.[data]'")
    value, instruction = client.predict(api_name="/load_example")
    image = np.asarray(Image.open(value["background"]).convert("L"))
    assert image.shape == (RESOLUTION, RESOLUTION)
    assert (image < 128).mean() > 0.002 and (image > 200).mean() > 0.5  # black lines on white
    assert instruction.strip()


def test_reset_restores_the_defaults_not_zero_steps():
    settings = edit_app.AppSettings(64, SamplingOptions(steps=20, sampler="euler"), 1371, 10**6, "test")
    values = dict(zip(edit_app.CONTROL_NAMES, edit_app.reset_values(settings), strict=False))
    assert values["steps"] == 20 and values["seed"] == 1371 and values["sampler"] == "euler"
    assert values["seed_mode"] == edit_app.FIX_SEED and values["cfg_text"] == 7.5 and values["samples"] == 1


def test_bad_command_lines_are_one_line(files):
    runs = [
        [*app_args(files)[:2], "--ckpt", str(files["root"] / "missing.ckpt")],
        ["--config", str(files["root"] / "missing.yaml")],
        [*app_args(files), "--port", "70000"],
        [*app_args(files), "--lora", str(files["root"] / "missing.safetensors")],  # the adapter options of edit_cli
    ]
    for args in runs:
        run = subprocess.run([sys.executable, str(ROOT / "edit_app.py"), *args], capture_output=True, text=True,
                             timeout=120)  # fmt: skip
        assert run.returncode == 2, run.stderr
        assert len(run.stderr.strip().splitlines()) == 1 and run.stderr.startswith("edit_app.py: error: ")


@pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason="no Chromium: apt-get install -y chromium (Debian package)")
def test_browser_upload_type_generate(files, tmp_path):
    pytest.importorskip("playwright", reason="Playwright is not installed: pip install -e '.[test]'")
    out = tmp_path / "app.png"
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "app_screenshot.py"), "--out", str(out), "--sketch",
         str(files["sketch"]), "--instruction", "make it blue", "--chromium", CHROMIUM, "--report",
         str(tmp_path / "report.json"), "--", *app_args(files)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    report = json.loads((tmp_path / "report.json").read_text())
    result = pixels(report["result"])
    assert result.shape[:2] == SIZE[::-1]
    assert result.std() > 5  # not blank
    resized = np.asarray(sketch().resize(SIZE, Image.Resampling.LANCZOS), np.int16)
    assert np.abs(result - resized).mean() > 5  # the edit differs from the input
    assert report["seed_shown"] != report["seed_before"]  # Randomize seed: the page shows the new seed ...
    assert report["gallery_captions"] == [f"seed {report['seed_shown']}"]  # ... which is the one used
    assert Image.open(out).size[0] >= 1000  # the screenshot of the page
