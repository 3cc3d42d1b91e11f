"""metrics/image_quality.py on seeded random-weight networks saved to files and loaded as real weights are:
FID against itself and under noise, LPIPS/SSIM/MS-SSIM/PSNR against torchmetrics called directly, the CLIP
score against torchmetrics' CLIPScore, one-line errors for missing weights, and compute_metrics.py --quality."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from clip_fixtures import write_tiny_clip
from helpers import ROOT, TINY_CONFIG, make_edit_dataset, tiny_model
from omegaconf import OmegaConf
from PIL import Image

from ldm.modules.encoders.clip_image import ClipSimilarity
from metrics import colorization, compute_metrics
from metrics import image_quality as iq
from scripts import quality_table


def write_random_inception(path: Path, seed: int = 0) -> Path:
    """torch-fidelity's InceptionV3 with seeded He-normal convolutions, saved as a state dict like the real file.

    Its constructor always loads weights (from the hub when given no file), so for this one build the load is
    skipped; He init keeps the features O(1) through the stem (PyTorch's default init shrinks them ~1e-8).
    """
    import torch_fidelity.feature_extractor_inceptionv3 as tf_inception

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tf_inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
        patch.setattr(tf_inception, "load_state_dict_from_url", lambda *args, **kwargs: {})
        torch.manual_seed(seed)
        net = tf_inception.FeatureExtractorInceptionV3("inception-v3-compat", ["64"])
    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    torch.save(net.state_dict(), path)
    return path


def random_alexnet(seed: int = 0) -> torchvision.models.AlexNet:
    torch.manual_seed(seed)
    return torchvision.models.alexnet(weights=None).eval()


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("weights")
    alexnet = {k: v for k, v in random_alexnet().state_dict().items() if k.startswith("features.")}
    torch.save(alexnet, root / "alexnet.pth")  # the backbone tensors of torchvision's file; classifier.* is ignored
    clip_config, clip_weights = write_tiny_clip(root / "clip")
    return {"inception": write_random_inception(root / "inception.pth"), "lpips": root / "alexnet.pth",
            "clip_config": clip_config, "clip_weights": clip_weights}  # fmt: skip


def smooth_images(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """n images (size, size, 3) uint8: 4x4 random colors upsampled bilinearly (structure, not white noise)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
    return [np.asarray(Image.fromarray(c).resize((size, size), Image.BILINEAR)) for c in coarse]


def noisy(image: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, sigma, image.shape)
    return np.clip(image + noise, 0, 255).round().astype(np.uint8)


def save_folder(folder: Path, images: list[np.ndarray]) -> Path:
    folder.mkdir(parents=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:02d}.png")
    return folder


def unit(path: Path) -> torch.Tensor:
    """An image file -> (1, 3, H, W) float in [0, 1]."""
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy()).permute(2, 0, 1)[None].float() / 255


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_fid_is_zero_against_itself_and_rises_with_noise(weights, tmp_path, capsys) -> None:
    """One CLI run over a pairs CSV whose kinds are noise levels: sigma00 predicts the references themselves."""
    refs = smooth_images(8, 32)
    save_folder(tmp_path / "test", refs)
    pred, sigmas, rows = tmp_path / "pred", (0, 4, 16, 48), []
    pred.mkdir()
    for sigma in sigmas:
        for i, image in enumerate(refs):
            Image.fromarray(noisy(image, sigma, i)).save(pred / f"s{sigma:02d}_{i}.png")
            rows.append(f"s{sigma:02d}_{i},x.png,test/{i:02d}.png,sigma{sigma:02d}")
    (tmp_path / "pairs.csv").write_text("\n".join(["pair_id,input_image,edited_image,kind", *rows]) + "\n")
    flags = ["--inception-weights", str(weights["inception"]), "--fid-features", "64", "--metrics", "fid", "kid"]
    out = tmp_path / "out"
    assert iq.main(["--pred", str(pred), "--pairs", str(tmp_path / "pairs.csv"), "--out", str(out), *flags]) == 0
    assert "fid (lower)" in capsys.readouterr().out
    report = json.loads((out / "quality.json").read_text())
    assert report["metrics"] == ["fid", "kid_mean", "kid_std"] and report["pairs"] == 32
    fids = [report["results"][f"sigma{sigma:02d}"]["fid"] for sigma in sigmas]
    assert fids[1] > 0 and fids[1:] == sorted(fids[1:]), fids
    assert fids[-1] > 3 * fids[1], fids  # noise the features see, not a rounding effect
    # torchmetrics takes sqrt(eigvals(S1 @ S2)): ~1e-8 per null direction of an 8-image covariance, not 0
    assert abs(fids[0]) < 1e-3 * fids[1], fids


def test_per_pair_identity_values(weights) -> None:
    image = torch.from_numpy(smooth_images(1, 176)[0].copy()).permute(2, 0, 1)[None] / 255  # MS-SSIM needs >= 176
    lpips = iq.load_lpips(weights["lpips"], "alex")
    scores = iq.pair_scores(image.float(), image.float(), lpips)
    assert scores["lpips"].item() == 0.0
    assert scores["ssim"].item() == pytest.approx(1.0, abs=1e-12)  # float64 (float32 gives 0.99998 here)
    assert scores["ms_ssim"].item() == pytest.approx(1.0, abs=1e-12)
    assert scores["psnr"].item() == iq.PSNR_CAP  # torchmetrics gives inf; capped as metrics/colorization.py
    assert iq.ms_ssim_refusal(64, 64) and iq.ms_ssim_refusal(176, 176) is None


def test_known_distortion_matches_torchmetrics(weights, tmp_path, monkeypatch) -> None:
    """The CLI's numbers for a noisy, shifted copy equal torchmetrics' own, LPIPS through its public metric class
    holding the same (random) AlexNet whose weights the CLI loaded from the file."""
    from torchmetrics.functional.image import lpips as tm_lpips
    from torchmetrics.functional.image import (
        multiscale_structural_similarity_index_measure,
        peak_signal_noise_ratio,
        structural_similarity_index_measure,
    )
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    refs = smooth_images(2, 176, seed=1)
    ref = save_folder(tmp_path / "ref", refs)
    pred = save_folder(tmp_path / "pred", [np.roll(noisy(r, 20, i), 3, axis=1) for i, r in enumerate(refs)])
    out = tmp_path / "out"
    flags = ["--lpips-weights", str(weights["lpips"]), "--metrics", "lpips", "ssim", "ms_ssim", "psnr"]
    assert iq.main(["--pred", str(pred), "--ref", str(ref), "--out", str(out), *flags]) == 0
    rows = read_rows(out / "quality_pairs.csv")
    assert [r["pair_id"] for r in rows] == ["00", "01"]

    monkeypatch.setattr(tm_lpips, "_get_tv_model_features", lambda net, pretrained=False: random_alexnet().features)
    reference_lpips = LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True)
    for row in rows:
        p, r = unit(pred / f"{row['pair_id']}.png"), unit(ref / f"{row['pair_id']}.png")
        expected = {
            "ssim": structural_similarity_index_measure(p.double(), r.double(), data_range=1.0),
            "ms_ssim": multiscale_structural_similarity_index_measure(p.double(), r.double(), data_range=1.0),
            "psnr": peak_signal_noise_ratio(p.double(), r.double(), data_range=1.0),
            "lpips": reference_lpips(p, r),
        }
        for metric, value in expected.items():
            assert float(row[metric]) == pytest.approx(float(value), rel=1e-5, abs=1e-6), metric
        assert 0.005 < float(row["lpips"]) and float(row["ssim"]) < 0.9 and 15 < float(row["psnr"]) < 40
    report = json.loads((out / "quality.json").read_text())
    assert report["results"]["all"]["psnr"] == pytest.approx(np.mean([float(r["psnr"]) for r in rows]))
    assert set(report["skipped"]) == {"fid", "kid", "is", "clip_score", "clip_image"}


class _ClipProcessor:
    """torchmetrics' CLIPScore expects a Hugging Face processor: images pass as they are, captions are tokenized."""

    def __init__(self, clip: ClipSimilarity) -> None:
        self.clip = clip

    def __call__(self, text=None, images=None, **kwargs):
        if images is not None:
            return {"pixel_values": torch.stack(images)}
        tokens = self.clip.tokenizer(text)  # (B, context_length)
        return {"input_ids": tokens, "attention_mask": torch.ones_like(tokens)}


class _ClipModel(torch.nn.Module):
    """The project's CLIP behind the two methods CLIPScore calls."""

    def __init__(self, clip: ClipSimilarity) -> None:
        super().__init__()
        self.clip, self.config = clip, object()

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_image(pixel_values)

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.clip.model.encode_text(input_ids, normalize=True)


def write_openmoji_pairs(root: Path) -> Path:
    """A pairs CSV as dataset_creation.openmoji writes it, a prompt.json with the output caption beside each target."""
    rows = []
    kinds = [("original", "a red heart"), ("original", "a blue cat"), ("recolor", "a sun")]
    for i, (kind, caption) in enumerate(kinds):
        folder = root / "test" / f"E{i}_{kind}"
        folder.mkdir(parents=True)
        Image.fromarray(smooth_images(1, 40, seed=10 + i)[0]).save(folder / "0_1.png")
        Image.fromarray(np.full((40, 40, 3), 255, np.uint8)).save(folder / "0_0.png")  # a blank sketch
        (folder / "prompt.json").write_text(json.dumps({"edit": "color it", "output": caption, "kind": kind}))
        rows.append({"pair_id": f"E{i}_{kind}", "input_image": f"test/E{i}_{kind}/0_0.png",
                     "edited_image": f"test/E{i}_{kind}/0_1.png", "kind": kind, "caption": caption})  # fmt: skip
    with (root / "test.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (root / "manifest.json").write_text(json.dumps({"most_common_fill": {"hex": "#FCEA2B"}}))
    return root / "test.csv"


def test_clip_score_matches_torchmetrics_clipscore(weights, tmp_path) -> None:
    from torchmetrics.multimodal.clip_score import CLIPScore

    pairs_csv = write_openmoji_pairs(tmp_path / "data")
    pred = save_folder(tmp_path / "pred", [])  # predictions are 32 px, the targets 40: resized for scoring
    rows = list(csv.DictReader(pairs_csv.open()))
    for i, row in enumerate(rows):
        Image.fromarray(smooth_images(1, 32, seed=20 + i)[0]).save(pred / f"{row['pair_id']}.png")
    out = tmp_path / "out"
    flags = ["--clip-model", str(weights["clip_config"]), "--clip-weights", str(weights["clip_weights"])]
    argv = ["--pred", str(pred), "--pairs", str(pairs_csv), "--out", str(out), "--metrics", "clip_score", "clip_image"]
    assert iq.main([*argv, *flags]) == 0
    report = json.loads((out / "quality.json").read_text())
    assert list(report["results"]) == ["original", "recolor", "all"]
    assert report["settings"]["predictions_resized"] == 3

    clip = ClipSimilarity(weights["clip_config"], weights["clip_weights"])
    for kind, entry in report["results"].items():
        members = [r for r in rows if kind in (r["kind"], "all")]
        images = [_fitted(pred, r) for r in members]
        metric = CLIPScore(model_name_or_path=lambda: (_ClipModel(clip), _ClipProcessor(clip)))
        metric.update(images, [r["caption"] for r in members])
        assert entry["clip_score"] == pytest.approx(float(metric.compute()), abs=1e-4), kind
        assert entry["pairs"] == len(members)
    per_pair = {r["pair_id"]: r for r in read_rows(out / "quality_pairs.csv")}
    for r in rows:
        image, target = _fitted(pred, r)[None], unit(tmp_path / "data" / r["edited_image"])
        with torch.no_grad():
            cos = float((clip.encode_image(image) * clip.encode_image(target)).sum())
            score = max(100 * float((clip.encode_image(image) * clip.encode_text([r["caption"]])).sum()), 0.0)
        assert float(per_pair[r["pair_id"]]["clip_image"]) == pytest.approx(cos, abs=1e-5)
        assert float(per_pair[r["pair_id"]]["clip_score"]) == pytest.approx(score, abs=1e-4)


def _fitted(pred: Path, row: dict[str, str]) -> torch.Tensor:
    """The prediction of a pair resized (bicubic) to its 40 px target, (3, 40, 40) in [0, 1]."""
    image = Image.open(pred / f"{row['pair_id']}.png").convert("RGB").resize((40, 40), Image.BICUBIC)
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255


@pytest.mark.parametrize(
    ("flag", "needs"),
    [
        ("--inception-weights", f"({iq.INCEPTION_NEEDS})"),
        ("--lpips-weights", "(needs torchvision's ImageNet alexnet-owt-7be5be79.pth for --lpips-net alex)"),
        ("--clip-weights", "(needs the weights of --clip-model ViT-L-14, an open_clip state dict or OpenAI's "
         "ViT-L-14.pt)"),  # fmt: skip
    ],
)
def test_missing_weights_file_is_one_line_and_writes_nothing(tmp_path, capsys, flag, needs) -> None:
    folder = save_folder(tmp_path / "images", smooth_images(2, 16))
    missing, out = tmp_path / "missing.pth", tmp_path / "out"
    argv = ["--pred", str(folder), "--ref", str(folder), "--out", str(out), flag, str(missing)]
    assert iq.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [f"image_quality.py: error: {flag} {missing}: no such file {needs}"]
    assert captured.out == "" and not out.exists()


def test_unusable_weights_files_are_one_line(weights, tmp_path, capsys) -> None:
    folder = save_folder(tmp_path / "images", smooth_images(2, 16))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    for flag, path, expected in [
        ("--inception-weights", garbage, "cannot load it into torch-fidelity's InceptionV3"),
        ("--lpips-weights", weights["clip_weights"], "not torchvision's alexnet (--lpips-net alex): unexpected keys"),
        ("--lpips-weights", garbage, "not a state dict file"),
    ]:
        out = tmp_path / "out"
        assert iq.main(["--pred", str(folder), "--ref", str(folder), "--out", str(out), flag, str(path)]) == 2
        errors = capsys.readouterr().err.splitlines()
        assert len(errors) == 1 and errors[0].startswith(f"image_quality.py: error: {flag} {path}: "), errors
        assert expected in errors[0] and not out.exists()


def test_script_entry_point(tmp_path) -> None:
    """`python metrics/image_quality.py` from another folder: a mistake is one line, exit 2, no traceback."""
    folder = save_folder(tmp_path / "images", smooth_images(1, 16))
    result = subprocess.run(
        [sys.executable, str(ROOT / "metrics" / "image_quality.py"), "--pred", str(folder), "--ref", str(folder),
         "--out", str(tmp_path / "out"), "--inception-weights", "none.pth"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"image_quality.py: error: --inception-weights none.pth: no such file "
                                          f"({iq.INCEPTION_NEEDS})"]  # fmt: skip


def test_compute_metrics_quality(weights, tmp_path, capsys) -> None:
    """compute_metrics.py --quality scores each setting's edits with image_quality, after checking its files."""
    torch.save({"state_dict": tiny_model().state_dict()}, tmp_path / "tiny.ckpt")
    OmegaConf.save({"model": OmegaConf.load(TINY_CONFIG).model}, tmp_path / "tiny.yaml")
    data = make_edit_dataset(tmp_path / "data", n=3)
    for prompt_file in data.glob("*/prompt.json"):
        prompt = json.loads(prompt_file.read_text())
        prompt_file.write_text(json.dumps({**prompt, "input": "a circle", "output": "a colored circle"}))
    out = tmp_path / "out"
    argv = ["--config", str(tmp_path / "tiny.yaml"), "--ckpt", str(tmp_path / "tiny.ckpt"), "--data", str(data),
            "--split", "train", "--num-samples", "2", "--cfg-image", "1.5", "--steps", "2", "--resolution", "32",
            "--device", "cpu", "--colorization", "off", "--clip-model", str(weights["clip_config"]),
            "--clip-weights", str(weights["clip_weights"]), "--out", str(out), "--quality"]  # fmt: skip
    missing = tmp_path / "missing.pth"
    assert compute_metrics.main([*argv, "--inception-weights", str(missing)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"compute_metrics.py: error: --inception-weights {missing}: no such file ({iq.INCEPTION_NEEDS})"
    ]
    assert not out.exists()

    assert compute_metrics.main([*argv, "--lpips-weights", str(weights["lpips"])]) == 0
    report = json.loads((out / "quality" / "text_7.5_image_1.5" / "quality.json").read_text())
    assert report["pairs"] == 2 and report["metrics"] == ["lpips", "ssim", "psnr", "clip_score", "clip_image"]
    assert "inception-weights" in report["skipped"]["fid"] and "32x32" in report["skipped"]["ms_ssim"]
    rows = read_rows(out / "quality" / "text_7.5_image_1.5" / "quality_pairs.csv")
    edits = sorted(p.stem for p in (out / "edits" / "text_7.5_image_1.5").iterdir())
    assert [r["pair_id"] for r in rows] == edits and all(float(r["lpips"]) > 0 for r in rows)
    assert "image quality, text_7.5_image_1.5" in capsys.readouterr().out


def test_quality_table_scores_methods_and_baselines_on_the_predicted_pairs(tmp_path, capsys) -> None:
    """scripts/quality_table.py: every eval_openmoji.py folder there and the two baselines, on the same pairs."""
    pairs_csv = write_openmoji_pairs(tmp_path / "data")
    eval_dir = tmp_path / "eval"
    for folder in ("pred", "autoencoder"):
        (eval_dir / folder).mkdir(parents=True)
        for i, pair_id in enumerate(["E0_original", "E2_recolor"]):  # E1 not predicted: left out everywhere
            Image.fromarray(smooth_images(1, 40, seed=30 + i)[0]).save(eval_dir / folder / f"{pair_id}.png")
    assert quality_table.main(["--eval-dir", str(eval_dir), "--pairs", str(pairs_csv)]) == 0
    table = (eval_dir / "quality" / "table.md").read_text()
    assert table == capsys.readouterr().out.removesuffix(f"wrote {eval_dir / 'quality' / 'table.md'}\n")
    header, _, *rows = table.split("\n\n")[0].splitlines()
    assert header == "| method | kind | pairs | ssim | psnr |"
    expected = [(m, kind, n) for m in ("model", "autoencoder", "input_unchanged", "flat_fill")
                for kind, n in (("original", "1"), ("recolor", "1"), ("all", "2"))]  # fmt: skip
    assert [tuple(r.strip("| ").split(" | ")[:3]) for r in rows] == expected
    assert "Skipped fid, kid, is: no --inception-weights" in table
    flat = np.asarray(Image.open(eval_dir / "quality" / "baselines" / "flat_fill" / "E0_original.png"))
    truth = colorization.Truth(np.asarray(Image.open(tmp_path / "data" / "test" / "E0_original" / "0_1.png")))
    assert truth.filled.any() and (flat[truth.filled] == (0xFC, 0xEA, 0x2B)).all()
