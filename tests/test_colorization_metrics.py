"""Colorization metrics: CIEDE2000 against Sharma et al., exact scores on hand-made images, the CLI."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from PIL import Image

from metrics import colorization as cm

# Table 1 of Sharma, Wu & Dalal (2005), "The CIEDE2000 Color-Difference Formula: Implementation
# Notes, Supplementary Test Data, and Mathematical Observations": (Lab 1, Lab 2, dE00).
SHARMA = [
    ((50.0000, 2.6772, -79.7751), (50.0000, 0.0000, -82.7485), 2.0425),
    ((50.0000, 3.1571, -77.2803), (50.0000, 0.0000, -82.7485), 2.8615),
    ((50.0000, 2.8361, -74.0200), (50.0000, 0.0000, -82.7485), 3.4412),
    ((50.0000, -1.3802, -84.2814), (50.0000, 0.0000, -82.7485), 1.0000),
    ((50.0000, -1.1848, -84.8006), (50.0000, 0.0000, -82.7485), 1.0000),
    ((50.0000, -0.9009, -85.5211), (50.0000, 0.0000, -82.7485), 1.0000),
    ((50.0000, 0.0000, 0.0000), (50.0000, -1.0000, 2.0000), 2.3669),
    ((50.0000, -1.0000, 2.0000), (50.0000, 0.0000, 0.0000), 2.3669),
    ((50.0000, 2.4900, -0.0010), (50.0000, -2.4900, 0.0009), 7.1792),
    ((50.0000, 2.4900, -0.0010), (50.0000, -2.4900, 0.0010), 7.1792),
    ((50.0000, 2.4900, -0.0010), (50.0000, -2.4900, 0.0011), 7.2195),
    ((50.0000, 2.4900, -0.0010), (50.0000, -2.4900, 0.0012), 7.2195),
    ((50.0000, -0.0010, 2.4900), (50.0000, 0.0009, -2.4900), 4.8045),
    ((50.0000, -0.0010, 2.4900), (50.0000, 0.0010, -2.4900), 4.8045),
    ((50.0000, -0.0010, 2.4900), (50.0000, 0.0011, -2.4900), 4.7461),
    ((50.0000, 2.5000, 0.0000), (50.0000, 0.0000, -2.5000), 4.3065),
    ((50.0000, 2.5000, 0.0000), (73.0000, 25.0000, -18.0000), 27.1492),
    ((50.0000, 2.5000, 0.0000), (61.0000, -5.0000, 29.0000), 22.8977),
    ((50.0000, 2.5000, 0.0000), (56.0000, -27.0000, -3.0000), 31.9030),
    ((50.0000, 2.5000, 0.0000), (58.0000, 24.0000, 15.0000), 19.4535),
    ((50.0000, 2.5000, 0.0000), (50.0000, 3.1736, 0.5854), 1.0000),
    ((50.0000, 2.5000, 0.0000), (50.0000, 3.2972, 0.0000), 1.0000),
    ((50.0000, 2.5000, 0.0000), (50.0000, 1.8634, 0.5757), 1.0000),
    ((50.0000, 2.5000, 0.0000), (50.0000, 3.2592, 0.3350), 1.0000),
    ((60.2574, -34.0099, 36.2677), (60.4626, -34.1751, 39.4387), 1.2644),
    ((63.0109, -31.0961, -5.8663), (62.8187, -29.7946, -4.0864), 1.2630),
    ((61.2901, 3.7196, -5.3901), (61.4292, 2.2480, -4.9620), 1.8731),
    ((35.0831, -44.1164, 3.7933), (35.0232, -40.0716, 1.5901), 1.8645),
    ((22.7233, 20.0904, -46.6940), (23.0331, 14.9730, -42.5619), 2.0373),
    ((36.4612, 47.8580, 18.3852), (36.2715, 50.5065, 21.2231), 1.4146),
    ((90.8027, -2.0831, 1.4410), (91.1528, -1.6435, 0.0447), 1.4441),
    ((90.9257, -0.5406, -0.9208), (88.6381, -0.8985, -0.7239), 1.5381),
    ((6.7747, -0.2908, -2.4247), (5.8714, -0.0985, -2.2286), 0.6377),
    ((2.0776, 0.0795, -1.1350), (0.9033, -0.0636, -0.5514), 0.9082),
]

YELLOW, RED, BLUE = (0xFC, 0xEA, 0x2B), (0xEA, 0x5A, 0x47), (0x61, 0xB2, 0xE4)


def test_ciede2000_matches_sharma_reference_pairs():
    lab1 = np.array([p[0] for p in SHARMA])
    lab2 = np.array([p[1] for p in SHARMA])
    expected = np.array([p[2] for p in SHARMA])
    np.testing.assert_allclose(cm.ciede2000(lab1, lab2), expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(cm.ciede2000(lab2, lab1), expected, atol=1e-4, rtol=0)
    assert cm.ciede2000(lab1, lab1).max() == 0


@pytest.mark.parametrize("ulps", [-4, 4])
def test_ciede2000_hue_discontinuity_is_independent_of_arctan2_rounding(monkeypatch, ulps):
    """Pairs 10 and 14 lie exactly on the 180-degree hue tie; a libm/SIMD arctan2 that rounds a few ulps
    differently (as numpy's AVX-512 path does) must not flip the mean hue (4.8045 vs 4.7461)."""
    exact = np.arctan2

    def rounded_differently(y, x):
        h = exact(y, x)
        return h + ulps * np.spacing(np.abs(h))

    monkeypatch.setattr(np, "arctan2", rounded_differently)
    ties = [SHARMA[9], SHARMA[13], SHARMA[14]]  # pair 15 is 0.002 degrees past the tie: it must still shift
    lab1, lab2 = np.array([p[0] for p in ties]), np.array([p[1] for p in ties])
    expected = np.array([p[2] for p in ties])
    np.testing.assert_allclose(cm.ciede2000(lab1, lab2), expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(cm.ciede2000(lab2, lab1), expected, atol=1e-4, rtol=0)


def random_lab(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.stack([rng.uniform(0, 100, n), rng.uniform(-100, 100, n), rng.uniform(-100, 100, n)], axis=-1)


def test_ciede2000_agrees_with_scikit_image_off_the_hue_tie():
    """The hand-written CIEDE2000 is kept only for the tie (see its docstring); elsewhere it is skimage's."""
    from skimage.color import deltaE_ciede2000

    rng = np.random.default_rng(0)
    lab1, lab2 = random_lab(rng, 20_000), random_lab(rng, 20_000)
    near = lab1 + rng.normal(0, 2, lab1.shape)  # small differences, the regime of a good colorization
    np.testing.assert_allclose(cm.ciede2000(lab1, lab2), deltaE_ciede2000(lab1, lab2), atol=1e-9, rtol=0)
    np.testing.assert_allclose(cm.ciede2000(lab1, near), deltaE_ciede2000(lab1, near), atol=1e-9, rtol=0)


def test_scikit_image_ciede2000_depends_on_arctan2_rounding_at_the_tie(monkeypatch):
    """Why the hand-written version stays: skimage has no tie tolerance. If this starts failing, skimage decides
    the tie robustly and metrics/colorization.py can call it instead."""
    from skimage.color import deltaE_ciede2000

    exact = np.arctan2
    monkeypatch.setattr(np, "arctan2", lambda y, x: exact(y, x) - np.spacing(np.abs(exact(y, x))))
    lab1, lab2 = np.array([SHARMA[9][0]]), np.array([SHARMA[9][1]])
    assert deltaE_ciede2000(lab1, lab2)[0] == pytest.approx(7.2195, abs=1e-4)  # Sharma: 7.1792
    assert cm.ciede2000(lab1, lab2)[0] == pytest.approx(SHARMA[9][2], abs=1e-4)


def test_srgb_to_lab_is_within_0_005_of_scikit_image():
    """The palette's Lab (IEC 61966-2-1 7-digit matrix) against skimage's rgb2lab (6-digit matrix): the reason
    metrics/colorization.py keeps its own is consistency with the palette, not a large disagreement."""
    from skimage.color import rgb2lab

    grid = np.stack(np.meshgrid(*[np.arange(0, 256, 5)] * 3, indexing="ij"), axis=-1).reshape(-1, 3).astype(np.uint8)
    difference = np.abs(cm.srgb_to_lab(grid) - rgb2lab(grid[None])[0]).max()
    assert 1e-3 < difference < 5e-3


def test_filled_mask_dilation_matches_a_shifted_or():
    """scipy's binary_dilation with a 3x3 square, against the OR of the nine shifts of the mask (zero border)."""
    rng = np.random.default_rng(0)
    image = np.where(rng.random((30, 40, 1)) < 0.05, 0, 128).astype(np.uint8).repeat(3, axis=-1)  # sparse black
    lines = cm.line_mask(image)
    padded = np.pad(lines, 1)
    near = np.zeros_like(lines)
    for dy in range(3):
        for dx in range(3):
            near |= padded[dy : dy + 30, dx : dx + 40]
    assert lines.any() and (cm.filled_mask(image) == ~near).all()


def test_srgb_to_lab_reference_values():
    lab = cm.srgb_to_lab(np.array([[255, 255, 255], [0, 0, 0], [255, 0, 0], [0, 0, 255]]))
    expected = [[100, 0, 0], [0, 0, 0], [53.2408, 80.0925, 67.2032], [32.2970, 79.1875, -107.8602]]
    np.testing.assert_allclose(lab, expected, atol=2e-3)


def square(left=YELLOW, right=RED, size=20):
    """White canvas, a 1-px black square outline on rows/cols 2 and 17, interior cols 3-9 `left`, 10-16 `right`."""
    image = np.full((size, size, 3), 255, np.uint8)
    image[2:18, 2:18] = 0
    image[3:17, 3:10] = left
    image[3:17, 10:17] = right
    return image


def test_masks_of_the_hand_made_square():
    truth = cm.Truth(square())
    assert truth.lines.sum() == 60  # the outline: 16 * 4 - 4
    # filled = interior minus a one-pixel margin along the outline: rows/cols 4-15
    expected = np.zeros((20, 20), bool)
    expected[4:16, 4:16] = True
    assert (truth.filled == expected).all()


def test_perfect_prediction():
    gt = square()
    scores = cm.score(gt.copy(), cm.Truth(gt))
    assert scores == {
        "palette_accuracy": 1.0,
        "ciede2000": 0.0,
        "line_iou": 1.0,
        "psnr": cm.PSNR_CAP,
        "filled_pixels": 144,
    }


def test_known_recoloring_gives_a_known_score():
    truth = cm.Truth(square())
    scores = cm.score(square(right=BLUE), truth)
    assert scores["palette_accuracy"] == 0.5  # 72 yellow pixels right, 72 red pixels blue
    red_vs_blue = float(cm.ciede2000(cm.srgb_to_lab(RED), cm.srgb_to_lab(BLUE)))
    assert scores["ciede2000"] == pytest.approx(red_vs_blue / 2, abs=1e-9)
    assert scores["line_iou"] == 1.0
    changed = 14 * 7  # the whole right half differs
    mse = changed * sum((a - b) ** 2 for a, b in zip(RED, BLUE, strict=True)) / (20 * 20 * 3)
    assert scores["psnr"] == pytest.approx(10 * math.log10(255**2 / mse))


def test_line_iou_and_psnr_of_a_missing_edge():
    gt = square()
    pred = gt.copy()
    pred[17, 2:18] = 255  # erase the bottom edge: 16 of the 60 line pixels
    scores = cm.score(pred, cm.Truth(gt))
    assert scores["line_iou"] == pytest.approx(44 / 60)
    assert scores["psnr"] == pytest.approx(10 * math.log10(20 * 20 / 16))
    assert scores["palette_accuracy"] == 1.0  # row 17 is line in the ground truth, not filled


def test_no_filled_pixels_gives_nan_color_scores():
    blank = np.full((8, 8, 3), 255, np.uint8)
    scores = cm.score(blank, cm.Truth(blank))
    assert math.isnan(scores["palette_accuracy"]) and math.isnan(scores["ciede2000"])
    assert scores["line_iou"] == 1.0 and scores["filled_pixels"] == 0


def test_flat_fill_baseline():
    gt = square()
    sketch = square(left=(255, 255, 255), right=(255, 255, 255))
    truth = cm.Truth(gt)
    flat = cm.flat_fill(sketch, truth, YELLOW)
    assert (flat[truth.filled] == YELLOW).all()
    assert (flat[~truth.filled] == sketch[~truth.filled]).all()
    assert cm.score(flat, truth)["palette_accuracy"] == 0.5
    assert cm.score(sketch, truth)["palette_accuracy"] == 0.0


def write_pairs(root):
    """Two pairs (original, recolor) on disk, with a manifest naming the flat color."""
    (root / "test").mkdir(parents=True)
    sketch = square(left=(255, 255, 255), right=(255, 255, 255))
    rows = []
    for pair_id, kind, target in [("A_original", "original", square()), ("A_recolor0", "recolor", square(right=BLUE))]:
        Image.fromarray(sketch).save(root / "test" / f"{pair_id}_0.png")
        Image.fromarray(target).save(root / "test" / f"{pair_id}_1.png")
        rows.append(
            {
                "pair_id": pair_id,
                "input_image": f"test/{pair_id}_0.png",
                "edited_image": f"test/{pair_id}_1.png",
                "edit": "color it",
                "kind": kind,
                "emoji": "A",
                "split": "test",
            }
        )
    with open(root / "test.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (root / "manifest.json").write_text(json.dumps({"most_common_fill": {"hex": "#FCEA2B", "name": "yellow"}}))
    return rows


def test_cli_scores_predictions_and_baselines(tmp_path, capsys):
    write_pairs(tmp_path / "data")
    pred = tmp_path / "pred"
    pred.mkdir()
    Image.fromarray(square()).save(pred / "A_original.png")  # perfect
    Image.fromarray(square()).save(pred / "A_recolor0.png")  # kept the old colors: right half wrong
    out = tmp_path / "out" / "metrics.json"
    cm.main(["--pairs", str(tmp_path / "data" / "test.csv"), "--pred-dir", f"model={pred}", "--out", str(out)])
    report = json.loads(out.read_text())
    results = report["results"]
    assert report["methods"] == ["model", "input_unchanged", "flat_fill"]
    assert results["model"]["original"]["palette_accuracy"] == 1.0
    assert results["model"]["recolor"]["palette_accuracy"] == 0.5
    assert results["model"]["all"]["palette_accuracy"] == 0.75 and results["model"]["all"]["pairs"] == 2
    assert results["input_unchanged"]["all"]["palette_accuracy"] == 0.0
    assert results["flat_fill"]["original"]["palette_accuracy"] == 0.5
    assert results["flat_fill"]["recolor"]["palette_accuracy"] == 0.5
    assert report["settings"]["flat_color"] == {"hex": "#FCEA2B", "name": "yellow"}
    assert len(report["per_pair"]) == 6
    with open(out.with_suffix(".csv"), newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 9 and set(table[0]) == {"method", "kind", "pairs", *cm.METRICS}
    assert "palette_acc" in capsys.readouterr().out


def test_missing_predictions(tmp_path):
    write_pairs(tmp_path / "data")
    pred = tmp_path / "pred"
    pred.mkdir()
    Image.fromarray(square()).save(pred / "A_original.png")
    csv_path = tmp_path / "data" / "test.csv"
    with pytest.raises(FileNotFoundError, match="A_recolor0"):
        cm.evaluate(csv_path, {"model": pred})
    report = cm.evaluate(csv_path, {"model": pred}, allow_missing=True)
    assert report["pairs_scored"] == 1 and report["pairs_missing_predictions"] == 1
    assert report["results"]["flat_fill"]["all"]["pairs"] == 1  # baselines on the same pairs


def test_predictions_of_another_size_are_resized(tmp_path):
    write_pairs(tmp_path / "data")
    pred = tmp_path / "pred"
    pred.mkdir()
    for pair_id in ("A_original", "A_recolor0"):
        Image.fromarray(square()).resize((40, 40), Image.NEAREST).save(pred / f"{pair_id}.png")
    report = cm.evaluate(tmp_path / "data" / "test.csv", {"model": pred})
    assert report["settings"]["predictions_resized"] == {"model": 2}
    assert report["results"]["model"]["original"]["palette_accuracy"] > 0.9


def test_pred_dir_names():
    assert cm.parse_pred_dirs(["out/pred"]) == {"model": cm.Path("out/pred")}
    assert cm.parse_pred_dirs(["a=x", "b=y"]) == {"a": cm.Path("x"), "b": cm.Path("y")}
    with pytest.raises(ValueError):
        cm.parse_pred_dirs(["x", "y"])
