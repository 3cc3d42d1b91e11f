"""Every entry point, fed a missing file or an invalid argument, prints one line and exits 2 (ldm/cli.py)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# command (after `python`), arguments naming a file that does not exist, arguments with an invalid value
ENTRY_POINTS = {
    "main": (["main.py"], ["--base", "missing.yaml", "--train"], ["--seed", "x"]),
    "edit_cli": (
        ["edit_cli.py"],
        ["--input", "missing.png", "--output", "o.png", "--edit", "x"],
        ["--input", "a.png", "--output", "o.png", "--steps", "0"],
    ),
    "edit_app": (["edit_app.py"], ["--ckpt", "missing.ckpt"], ["--port", "x"]),
    "app_screenshot": (["scripts/app_screenshot.py"], ["--out", "o.png", "--sketch", "missing.png"], ["--no-such"]),
    "caption": (
        ["dataset_creation/caption.py"],
        ["--model", "missing", "--images", "missing", "--out", "o.jsonl"],
        ["--model", "m", "--images", "i", "--out", "o.jsonl", "--num-beams", "x"],
    ),
    "encode_dataset": (
        ["dataset_creation/encode_dataset.py"],
        ["--base", "missing.yaml"],
        ["--base", "b.yaml", "--shard-size", "0"],
    ),
    "generate_img_dataset": (
        ["dataset_creation/generate_img_dataset.py"],
        ["--prompts", "missing.jsonl", "--out", "o", "--clip-weights", "missing.pt"],
        ["--prompts", "p.jsonl", "--out", "o", "--clip-weights", "c.pt", "--steps", "0"],
    ),
    "generate_txt_dataset": (
        ["dataset_creation/generate_txt_dataset.py"],
        ["--input", "missing.jsonl", "--output", "o.jsonl"],
        ["--input", "i.jsonl", "--output", "o.jsonl", "--no-such-flag"],
    ),
    "make_sketches": (
        ["dataset_creation/make_sketches.py"],
        ["--input", "missing", "--out", "o"],
        ["--input", "i", "--out", "o", "--sigma", "x"],
    ),
    "openmoji": (
        ["-m", "dataset_creation.openmoji"],
        None,  # builds from installed packages: no input file to miss
        ["--out", "o", "--limit", "-3"],
    ),
    "prepare_dataset": (["dataset_creation/prepare_dataset.py"], ["missing"], ["--no-such-flag", "r"]),
    "prepare_for_gpt": (
        ["dataset_creation/prepare_for_gpt.py"],
        ["--input", "missing.jsonl", "--output", "o.jsonl"],
        ["--input", "i.jsonl", "--output", "o.jsonl", "--max-chars", "x"],
    ),
    "sketch2pokemon": (
        ["dataset_creation/sketch2pokemon.py"],
        ["--out", "o", "--pairs-dir", "missing"],
        ["--out", "o", "--no-such-flag"],
    ),
    "colorization": (
        ["metrics/colorization.py"],
        ["--pairs", "missing.csv", "--pred", "p"],
        ["--pairs", "p.csv", "--no-such-flag"],
    ),
    "compute_metrics": (
        ["metrics/compute_metrics.py"],
        ["--data", "missing", "--clip-weights", "missing.pt", "--out", "o"],
        ["--data", "d", "--clip-weights", "c.pt", "--out", "o", "--steps", "0"],
    ),
    "eval_openmoji": (
        ["scripts/eval_openmoji.py"],
        ["--out", "o", "--pairs", "missing.csv"],
        ["--out", "o", "--steps", "0"],
    ),
    "convert_to_diffusers": (
        ["scripts/convert_to_diffusers.py"],
        ["--config", "missing.yaml", "--out", "pipe"],
        ["--config", "c.yaml", "--out", "pipe", "--no-such-flag"],
    ),
    "export_emaonly": (
        ["scripts/export_emaonly.py"],
        ["--ckpt", "missing.ckpt", "--out", "o.safetensors"],
        ["--ckpt", "c.ckpt", "--out", "o.safetensors", "--dtype", "fp8"],
    ),
}
CASES = [
    pytest.param(command, args, id=f"{name}-{kind}")
    for name, (command, missing, invalid) in ENTRY_POINTS.items()
    for kind, args in (("missing-file", missing), ("invalid-argument", invalid))
    if args is not None
]


@pytest.mark.parametrize(("command", "args"), CASES)
def test_a_mistake_is_one_line_and_exit_2(command: list[str], args: list[str], tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, *[str(ROOT / c) if c.endswith(".py") else c for c in command], *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    errors = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert len(errors) == 1, result.stderr
    assert not any(tmp_path.iterdir()), "a failed command left files behind"


def documented_training_commands() -> list[tuple[str, list[str], list[str]]]:
    """(where, --base configs, dotted overrides) of every `python main.py` command in the docs and main.py."""
    commands = []
    for doc in (ROOT / "README.md", ROOT / "main.py", *sorted((ROOT / "docs").glob("*.md"))):
        text = re.sub(r"\\\n\s*", " ", doc.read_text(encoding="utf-8"))  # join continuation lines
        for number, line in enumerate(text.splitlines(), start=1):
            if "python main.py" not in line:
                continue
            words = line.split("python main.py", 1)[1].split("#")[0].split()
            bases = [w for w in words if w.endswith(".yaml")]
            overrides = [w.strip("`\"'") for w in words if "=" in w and not w.startswith("-")]  # shell quotes off
            if overrides:
                commands.append((f"{doc.name}:{number}", bases, overrides))
    return commands


def test_documented_overrides_name_existing_config_keys() -> None:
    """A documented `key=value` override must change a key the config has (strict configs refuse new ones)."""
    from omegaconf import OmegaConf

    from ldm.util import load_config_files

    commands = documented_training_commands()
    assert any("model.base_learning_rate=5e-5" in o for _, _, o in commands)  # the README's own example is found
    for where, bases, overrides in commands:
        existing = [b for b in bases if (ROOT / b).is_file()] or ["configs/train.yaml"]  # a.yaml: a placeholder
        config = load_config_files([str(ROOT / b) for b in existing])
        for override in overrides:
            key = override.split("=", 1)[0]
            assert OmegaConf.select(config, key, default=None) is not None, f"{where}: {key} is not in {existing}"


def test_edit_cli_never_overwrites_its_inputs_and_refuses_non_finite_guidance(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (32, 32), "white").save(tmp_path / "b.png")
    original = (tmp_path / "b.png").read_bytes()
    (tmp_path / "jobs.jsonl").write_text('{"input": "b.png", "edit": "x", "output": "b.png"}\n')
    for args, message in (
        (["--input", "b.png", "--output", "b.png", "--edit", "x"], "b.png is an input of this run"),
        (["--input", "jobs.jsonl"], "b.png is an input of this run"),
        (["--input", "b.png", "--output", "o.png", "--edit", "x", "--cfg-text", "nan"], "must be a finite number"),
        (["--input", "b.png", "--output", "o.png", "--edit", "x", "--cfg-image", "inf"], "must be a finite number"),
    ):
        result = subprocess.run([sys.executable, str(ROOT / "edit_cli.py"), *args], cwd=tmp_path,
                                capture_output=True, text=True, timeout=300)  # fmt: skip
        assert result.returncode in (1, 2) and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
        assert (tmp_path / "b.png").read_bytes() == original and not (tmp_path / "o.png").exists()
