"""The image-quality metrics papers report, predictions against references, every network from a local file.

    python metrics/image_quality.py --pred outputs/eval/quality50/pred --pairs data/openmoji/test.csv \\
        --allow-missing --inception-weights pt_inception-2015-12-05-6726825d.pth \\
        --lpips-weights alexnet-owt-7be5be79.pth --clip-weights ViT-L-14.pt --out outputs/quality

Pairs: `--pred DIR` against `--ref DIR` (matched by file name), or against the `edited_image`
column of an OpenMoji pairs CSV (`--pairs`, predictions named `<pair_id>.png`, as
`metrics/colorization.py` reads them; results also per `kind`). A prediction of another size is
resized (bicubic) to its reference's size for the per-pair metrics.

Distribution metrics (sets, not pairs; `--inception-weights`):
- FID and KID of the predictions against the references, Inception Score of the predictions.
  Library: torchmetrics' `FrechetInceptionDistance`, `KernelInceptionDistance` and
  `InceptionScore` compute the statistics; the features come from torch-fidelity's
  `FeatureExtractorInceptionV3` (the TF "2015-12-05" FID Inception ported bit-exactly, the network
  torchmetrics itself wraps), run once per image for all three metrics. Its weights: pytorch-fid's
  `pt_inception-2015-12-05-6726825d.pth`, or the file torch-fidelity downloads,
  `weights-inception-2015-12-05-6726825d.pth` (the same TF graph converted, the same hash prefix;
  not checked byte for byte here, where neither file is). Resizing: images go in as uint8 at
  their own size and the network resizes them to 299 x 299 with TF1-compatible bilinear
  interpolation (torch-fidelity's, hence the original TTUR/pytorch-fid FIDs and `fidelity --fid`).
  torchmetrics' own default (`antialias=True`) resizes with PyTorch's antialiased bilinear
  instead, and clean-fid resizes with PIL bicubic before the network: FIDs from those differ from
  these by an amount that depends on the image size, so compare like with like.
  FID is biased at small n (it shrinks as the set grows); KID is unbiased, so at a few hundred
  images or per kind read KID. FID needs 2048-d pool features (`--fid-features`, torch-fidelity's
  choices; a smaller layer is faster and not comparable).

Per-pair metrics (torchmetrics functional, on RGB in [0, 1]):
- LPIPS (`--lpips-weights`, lower is better): torchmetrics' LPIPS network with its bundled linear
  calibration layers (`lpips_models/<net>.pth`, shipped in the wheel) and the backbone from a local
  torchvision ImageNet file (`alexnet-owt-7be5be79.pth` for `--lpips-net alex`, the LPIPS
  paper's metric; `vgg16-397923af.pth` for vgg): its `features.*` tensors are loaded strictly,
  `classifier.*` is ignored. torchmetrics' `LearnedPerceptualImagePatchSimilarity` would fetch the
  backbone from torchvision's hub, so the network is built here from the same class it uses.
- SSIM (Gaussian window 11, sigma 1.5), MS-SSIM (5 scales; skipped, with the library's reason,
  for images under 176 px, such as the 64 px OpenMoji set) and PSNR (capped at 100 dB, identical
  images, as `metrics/colorization.py`). No weights.

CLIP (`--clip-weights`, `--clip-model`; `ldm/modules/encoders/clip_image.py`, as compute_metrics):
- clip_score: torchmetrics' CLIPScore, max(100 * cos(CLIP(image), CLIP(caption)), 0); per pair,
  and over a set the clamp of the mean (as `CLIPScore.compute`). Captions: `--captions` (a JSON
  object or a CSV with `pair_id`/`name` and `caption` columns, keyed by pair id or file stem), or
  with `--pairs` the "output" caption of the prompt.json beside each reference.
- clip_image: cos(CLIP(prediction), CLIP(reference)).

A metric whose weights are not given is skipped, and the report says why. Written under `--out`,
together (`ldm.io.write_files_atomic`): quality_pairs.csv (per pair) and quality.json (settings,
skipped metrics, per-kind and overall results, per pair). Mistakes in arguments or files (a
missing weights file among them) print one line `image_quality.py: error: ...`, exit 2 and write
nothing.

Checking FID against the library with real weights: run torch-fidelity on the same two folders,
`fidelity --fid --kid --isc --input1 PRED --input2 REF --feature-extractor-weights-path
pt_inception-2015-12-05-6726825d.pth` (add `--kid-subset-size` when a set has under 1,000
images): the features are the same, so FID agrees to a few digits (torchmetrics takes the matrix
square root through eigenvalues, torch-fidelity through scipy's sqrtm), IS and KID up to their
random subsets. On CIFAR-10 train
written as PNGs (`--pred cifar --ref cifar`), FID is 0 and IS is close to torch-fidelity's
published 11.24 (README: 11.23678 +- 0.095).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ldm.cli import ArgumentParser, UsageError, existing_file, int_at_least, run_cli
from ldm.image_io import ImageInputError, image_extensions, load_image
from ldm.io import write_files_atomic

if TYPE_CHECKING:
    import torch

    from ldm.modules.encoders.clip_image import ClipSimilarity

PROG = "image_quality.py"
INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_NEEDS = (
    f"needs the FID Inception weights {INCEPTION_FILE} (pytorch-fid's name; torch-fidelity's download is "
    "weights-inception-2015-12-05-6726825d.pth)"
)
LPIPS_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}  # torchvision's ImageNet weights
LPIPS_NETS = {"alex": "alexnet", "vgg": "vgg16"}  # --lpips-net -> torchvision model
FID_FEATURES = (64, 192, 768, 2048)  # torch-fidelity's pool layers; 2048 is the FID
PSNR_CAP = 100.0  # dB, for identical images; metrics/colorization.py's cap
DISTRIBUTION = ("fid", "kid", "is")
PER_PAIR = ("lpips", "ssim", "ms_ssim", "psnr", "clip_score", "clip_image")
METRICS = (*DISTRIBUTION, *PER_PAIR)
RESULT_KEYS = {"fid": ("fid",), "kid": ("kid_mean", "kid_std"), "is": ("is_mean", "is_std")}
LOWER_IS_BETTER = ("fid", "kid_mean", "lpips")
SEED = 0  # KID's subsets and IS's split shuffle


@dataclass(frozen=True)
class Pair:
    """A prediction, its reference, the group it is reported in and its caption (None: none known)."""

    pair_id: str
    pred: Path
    ref: Path
    kind: str = "all"
    caption: str | None = None


# ---- pairs --------------------------------------------------------------------------------------
def read_captions(path: Path) -> dict[str, str]:
    """{pair id or file stem: caption} from a JSON object or a CSV with pair_id/name and caption columns."""
    try:
        if path.suffix.lower() == ".json":
            captions = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(captions, dict) or not all(isinstance(v, str) for v in captions.values()):
                raise UsageError(f"--captions {path}: not a JSON object of strings")
            return captions
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows, columns = list(reader), list(reader.fieldnames or [])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as err:
        raise UsageError(f"--captions {path}: cannot read it ({err})") from err
    key = next((c for c in ("pair_id", "name") if c in columns), None)
    if key is None or "caption" not in columns:
        raise UsageError(f"--captions {path}: needs a pair_id (or name) and a caption column; has {', '.join(columns)}")
    return {row[key]: row["caption"] for row in rows}


def _prompt_caption(prompt_file: Path) -> str | None:
    """The "output" caption of a dataset_creation prompt.json, None without the file or the key."""
    if not prompt_file.is_file():
        return None
    try:
        caption = json.loads(prompt_file.read_text(encoding="utf-8")).get("output")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as err:
        raise UsageError(f"cannot read the caption in {prompt_file} ({err})") from err
    return caption if isinstance(caption, str) else None


def _missing(pairs: list[Pair], allow_missing: bool, where: str) -> list[Pair]:
    absent = [p for p in pairs if not p.pred.is_file()]
    if absent and not allow_missing:
        raise UsageError(
            f"--pred: no prediction for {len(absent)} of the {len(pairs)} references of {where} "
            f"(e.g. {absent[0].pred}); --allow-missing scores only the predicted ones"
        )
    kept = [p for p in pairs if p.pred.is_file()]
    if not kept:
        raise UsageError(f"--pred: no prediction for any reference of {where}")
    return kept


def pairs_from_folders(pred: Path, ref: Path, allow_missing: bool = False) -> list[Pair]:
    """Every image of `ref` with the file of the same name in `pred`."""
    extensions = image_extensions()
    refs = sorted(p for p in ref.iterdir() if p.is_file() and p.suffix.lower() in extensions)
    if not refs:
        raise UsageError(f"--ref {ref}: no images in it")
    return _missing([Pair(r.stem, pred / r.name, r) for r in refs], allow_missing, f"--ref {ref}")


def pairs_from_csv(pred: Path, pairs_csv: Path, split: str | None = None, allow_missing: bool = False) -> list[Pair]:
    """OpenMoji pairs: `<pred>/<pair_id>.png` against the `edited_image` column, grouped by `kind`, with the
    prompt.json caption beside each reference."""
    from metrics.colorization import read_pairs

    try:
        rows = read_pairs(pairs_csv, split=split)
    except (OSError, ValueError) as err:
        raise UsageError(f"--pairs: {err}") from err
    root = pairs_csv.parent
    pairs = []
    for row in rows:
        ref = root / row["edited_image"]
        caption = _prompt_caption(ref.parent / "prompt.json")
        pairs.append(Pair(row["pair_id"], pred / f"{row['pair_id']}.png", ref, row["kind"], caption))
    return _missing(pairs, allow_missing, f"--pairs {pairs_csv}")


# ---- networks -----------------------------------------------------------------------------------
def given_features(num_features: int) -> torch.nn.Module:
    """The feature network handed to torchmetrics' FID/KID/IS: its 'images' are Inception features (N, D)
    computed once per image (`score_pairs`), passed through unchanged."""
    import torch

    module = torch.nn.Identity()
    module.num_features = num_features  # read by FrechetInceptionDistance instead of a dummy forward pass
    return module


def load_inception(path: Path, features: Sequence[str]) -> torch.nn.Module:
    """torch-fidelity's InceptionV3 with the weights of `path` (torch-fidelity loads them strictly), giving the
    `features` named (of "64", "192", "768", "2048", "logits_unbiased") for uint8 images (B, 3, H, W)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    try:
        return FeatureExtractorInceptionV3("inception-v3-compat", list(features), feature_extractor_weights_path=path)
    except Exception as err:  # torch.load's unpickling errors, load_state_dict's RuntimeError, a non-dict file
        detail = " ".join(str(err).strip().splitlines()[:2])[:300] or type(err).__name__
        raise UsageError(
            f"--inception-weights {path}: cannot load it into torch-fidelity's InceptionV3 ({detail}); "
            + INCEPTION_NEEDS
        ) from err


def load_lpips(path: Path, net: str = "alex") -> torch.nn.Module:
    """torchmetrics' LPIPS network: its bundled linear layers, and the backbone's `features.*` from the
    torchvision ImageNet state dict at `path` (strict: every backbone tensor; only `classifier.*` left over)."""
    import torch
    from torchmetrics.functional.image.lpips import _NoTrainLpips

    # pnet_rand builds torchvision's architecture with weights=None (no download); pretrained=True loads the
    # calibration layers shipped in torchmetrics' wheel. The backbone comes from `path` below.
    model = _NoTrainLpips(pretrained=True, net=net, pnet_rand=True)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # not a torch file, or one holding more than tensors
        raise UsageError(f"--lpips-weights {path}: not a state dict file ({err}); needs {LPIPS_FILES[net]}") from err
    if not isinstance(state, Mapping):
        raise UsageError(f"--lpips-weights {path}: holds a {type(state).__name__}, not a state dict")
    # torchvision's features.<i>.<param> is layer i, which torchmetrics keeps as slice<k>.<i>.<param>.
    slice_of = {name.split(".")[1]: name.split(".")[0] for name in model.net.state_dict()}
    backbone, unexpected = {}, []
    for key, tensor in state.items():
        part, _, rest = key.partition(".")
        if part == "features" and rest.split(".")[0] in slice_of:
            backbone[f"{slice_of[rest.split('.')[0]]}.{rest}"] = tensor
        elif part != "classifier":
            unexpected.append(key)
    try:
        if unexpected:
            raise RuntimeError(f"unexpected keys {', '.join(unexpected[:3])}")
        model.net.load_state_dict(backbone, strict=True)
    except RuntimeError as err:
        lines = str(err).strip().splitlines()
        raise UsageError(
            f"--lpips-weights {path}: not torchvision's {LPIPS_NETS[net]} (--lpips-net {net}): "
            f"{' '.join(lines[-1:])[:300]}; needs {LPIPS_FILES[net]}"
        ) from err
    return model.eval()


def load_clip(model_name: str, weights: Path) -> ClipSimilarity:
    from ldm.modules.encoders.clip_image import ClipSimilarity

    try:
        return ClipSimilarity(model_name, weights)
    except FileNotFoundError as err:
        raise UsageError(str(err)) from err
    except (ValueError, RuntimeError, OSError) as err:
        raise UsageError(f"--clip-weights {weights}: cannot load it into {model_name} ({err})") from err


@dataclass
class Networks:
    """The networks the weights files given allow; None: the metrics needing it are skipped."""

    inception: torch.nn.Module | None = None
    features: tuple[str, ...] = ()  # what `inception` returns: the pool layer of FID/KID, logits_unbiased for IS
    lpips: torch.nn.Module | None = None
    clip: ClipSimilarity | None = None
    skipped: dict[str, str] | None = None  # metric -> why it is not computed


# ---- scoring ------------------------------------------------------------------------------------
def size_groups(images: Sequence[torch.Tensor], batch: int) -> list[list[int]]:
    """Indices of same-size images (C, H, W), in chunks of at most `batch`: the batches to stack."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(tuple(image.shape), []).append(i)
    return [idx[s : s + batch] for idx in groups.values() for s in range(0, len(idx), batch)]


def pair_scores(
    pred: torch.Tensor, ref: torch.Tensor, lpips: torch.nn.Module | None = None, ms_ssim: bool = True
) -> dict[str, torch.Tensor]:
    """Per-pair metrics of same-size batches (B, 3, H, W) in [0, 1] -> {metric: (B,)}.

    SSIM, MS-SSIM and PSNR in float64: float32's E[x^2] - E[x]^2 loses ~2e-5 of SSIM on smooth images."""
    import torch
    from torchmetrics.functional.image import (
        multiscale_structural_similarity_index_measure,
        peak_signal_noise_ratio,
        structural_similarity_index_measure,
    )

    p, r = pred.double(), ref.double()
    psnr = peak_signal_noise_ratio(p, r, data_range=1.0, reduction="none", dim=(1, 2, 3))
    scores = {
        "ssim": structural_similarity_index_measure(p, r, data_range=1.0, reduction="none"),
        "psnr": psnr.clamp(max=PSNR_CAP),  # inf for identical images
    }
    if ms_ssim:
        scores["ms_ssim"] = multiscale_structural_similarity_index_measure(p, r, data_range=1.0, reduction="none")
    if lpips is not None:
        with torch.inference_mode():
            scores["lpips"] = lpips(pred, ref, normalize=True).reshape(len(pred))  # (B, 1, 1, 1) -> (B,)
    return scores


def ms_ssim_refusal(height: int, width: int) -> str | None:
    """torchmetrics' reason MS-SSIM cannot score images of this size, None when it can."""
    import torch
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

    blank = torch.zeros(1, 3, height, width)
    try:
        multiscale_structural_similarity_index_measure(blank, blank, data_range=1.0)
    except ValueError as err:
        return f"{height}x{width} images: {err}"
    return None


def clip_cosines(clip: ClipSimilarity, images: torch.Tensor, captions: Sequence[str]) -> torch.Tensor:
    """100 * cos(CLIP(image), CLIP(caption)) per row (B,): torchmetrics' CLIP score before its max(., 0)."""
    import torch

    with torch.inference_mode():
        return 100 * (clip.encode_image(images) * clip.encode_text(list(captions)).float()).sum(-1)


def distribution_scores(
    pred: Mapping[str, torch.Tensor],
    ref: Mapping[str, torch.Tensor],
    kid_subset_size: int = 1000,
    kid_subsets: int = 100,
    is_splits: int = 10,
) -> dict[str, float]:
    """FID, KID (mean, std) and IS (mean, std) through torchmetrics from Inception features {name: (N, D)}:
    FID and KID from the pool layer ("64" ... "2048") when given, IS from "logits_unbiased" when given.

    KID's subsets are min(kid_subset_size, N) images; its subsets and IS's shuffle are seeded (SEED)."""
    import torch
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.inception import InceptionScore
    from torchmetrics.image.kid import KernelInceptionDistance

    out: dict[str, float] = {}
    pool = next((name for name in pred if name != "logits_unbiased"), None)
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Metric `.*` will save all extracted features", UserWarning)
        torch.manual_seed(SEED)
        if pool is not None:
            fake, real = pred[pool].double(), ref[pool].double()  # (N, D)
            fid = FrechetInceptionDistance(feature=given_features(fake.shape[1]))
            fid.update(real, real=True)
            fid.update(fake, real=False)
            out["fid"] = float(fid.compute())
            subset = min(kid_subset_size, len(fake), len(real))
            kid = KernelInceptionDistance(given_features(fake.shape[1]), subsets=kid_subsets, subset_size=subset)
            kid.update(real, real=True)
            kid.update(fake, real=False)
            kid_mean, kid_std = kid.compute()
            out["kid_mean"], out["kid_std"] = float(kid_mean), float(kid_std)
        if "logits_unbiased" in pred:
            logits = pred["logits_unbiased"].double()  # (N, 1008)
            inception_score = InceptionScore(feature=given_features(logits.shape[1]), splits=is_splits)
            inception_score.update(logits)
            is_mean, is_std = inception_score.compute()
            out["is_mean"], out["is_std"] = float(is_mean), float(is_std)
    return out


def _uint8(image: Any) -> torch.Tensor:
    """PIL RGB -> (3, H, W) uint8."""
    import numpy as np
    import torch

    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


def skipped_for(pairs: Sequence[Pair], networks: Networks) -> dict[str, str]:
    """networks.skipped, plus MS-SSIM for reference sizes torchmetrics refuses and the CLIP score without captions."""
    from PIL import Image

    skipped = dict(networks.skipped or {})
    sizes = set()
    for pair in pairs:
        try:
            with Image.open(pair.ref) as image:
                sizes.add((image.height, image.width))
        except OSError as err:
            raise UsageError(f"cannot use {pair.ref}: not a readable image ({err})") from err
    refusals = [r for r in (ms_ssim_refusal(*size) for size in sorted(sizes)) if r]
    if refusals and "ms_ssim" not in skipped:
        skipped["ms_ssim"] = f"torchmetrics refuses {refusals[0]}"
    uncaptioned = [p.pair_id for p in pairs if p.caption is None]
    if uncaptioned and "clip_score" not in skipped:
        skipped["clip_score"] = f"no caption for {len(uncaptioned)} pairs (e.g. {uncaptioned[0]}); give --captions"
    return skipped


@dataclass
class Scores:
    """What one pass over the pairs gives: per-pair values, raw CLIP cosines, Inception features per image."""

    rows: list[dict[str, Any]]
    clip_raw: list[float]  # 100 * cos before the clamp, for the set's CLIP score
    pred_features: dict[str, list[torch.Tensor]]  # feature name -> one (D,) per pair
    ref_features: dict[str, list[torch.Tensor]]
    resized: int = 0


def score_pairs(
    pairs: Sequence[Pair], networks: Networks, skipped: Mapping[str, str], batch: int, device: torch.device
) -> Scores:
    """Load the pairs `batch` at a time and run every network that is not skipped on them, once."""
    import torch
    from PIL import Image

    lpips = networks.lpips.to(device) if networks.lpips is not None else None
    inception = networks.inception.to(device) if networks.inception is not None else None
    clip = networks.clip.to(device) if networks.clip is not None else None
    n = len(pairs)
    out = Scores(
        rows=[{"pair_id": p.pair_id, "kind": p.kind} for p in pairs],
        clip_raw=[math.nan] * n,
        pred_features={name: [None] * n for name in networks.features},
        ref_features={name: [None] * n for name in networks.features},
    )
    for start in range(0, n, batch):
        chunk = range(start, min(start + batch, n))
        try:
            refs = [load_image(pairs[i].ref) for i in chunk]
            preds = [load_image(pairs[i].pred) for i in chunk]
        except ImageInputError as err:
            raise UsageError(err) from err
        out.resized += sum(p.size != r.size for p, r in zip(preds, refs, strict=True))
        pairs_in = zip(preds, refs, strict=True)
        fitted = [_uint8(p if p.size == r.size else p.resize(r.size, Image.BICUBIC)) for p, r in pairs_in]
        ref_u8, pred_u8 = [_uint8(r) for r in refs], [_uint8(p) for p in preds]
        for group in size_groups(ref_u8, batch):
            ref_x = torch.stack([ref_u8[k] for k in group]).to(device).float() / 255  # (B, 3, H, W)
            pred_x = torch.stack([fitted[k] for k in group]).to(device).float() / 255
            scores = pair_scores(pred_x, ref_x, lpips, ms_ssim="ms_ssim" not in skipped)
            if clip is not None and "clip_image" not in skipped:
                scores["clip_image"] = (clip.encode_image(pred_x) * clip.encode_image(ref_x)).sum(-1)
            if clip is not None and "clip_score" not in skipped:
                cosines = clip_cosines(clip, pred_x, [pairs[chunk[k]].caption for k in group])
                for k, value in zip(group, cosines.tolist(), strict=True):
                    out.clip_raw[chunk[k]] = value
                scores["clip_score"] = cosines.clamp(min=0)  # one pair's torchmetrics CLIP score
            for metric, values in scores.items():
                if metric not in skipped:
                    for k, value in zip(group, values.tolist(), strict=True):
                        out.rows[chunk[k]][metric] = value
        for images, store in ((pred_u8, out.pred_features), (ref_u8, out.ref_features)):
            for group in size_groups(images, batch) if inception is not None else ():
                outputs = inception(torch.stack([images[k] for k in group]).to(device))  # one (B, D) per feature
                for name, values in zip(networks.features, outputs, strict=True):
                    for k, row in zip(group, values.double().cpu(), strict=True):
                        store[name][chunk[k]] = row
    return out


def evaluate(
    pairs: Sequence[Pair],
    networks: Networks,
    batch: int = 16,
    kid_subset_size: int = 1000,
    kid_subsets: int = 100,
    is_splits: int = 10,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Score `pairs` with what `networks` allows: the report (see the module doc); nothing is written."""
    import torch

    skipped = skipped_for(pairs, networks)
    with torch.inference_mode():
        scores = score_pairs(pairs, networks, skipped, batch, torch.device(device))
    metrics = [m for m in PER_PAIR if m not in skipped and all(m in row for row in scores.rows)]
    computed = [m for m in DISTRIBUTION if m not in skipped] if networks.inception is not None else []
    distribution_keys = [key for m in computed for key in RESULT_KEYS[m]]
    kinds = sorted({p.kind for p in pairs})
    results: dict[str, dict[str, Any]] = {}
    for kind in [*kinds, "all"] if kinds != ["all"] else ["all"]:
        members = [i for i, p in enumerate(pairs) if kind in (p.kind, "all")]
        entry: dict[str, Any] = {"pairs": len(members)}
        if distribution_keys and len(members) >= 2:
            pred = {name: torch.stack([v[i] for i in members]) for name, v in scores.pred_features.items()}
            ref = {name: torch.stack([v[i] for i in members]) for name, v in scores.ref_features.items()}
            values = distribution_scores(pred, ref, kid_subset_size, kid_subsets, is_splits)
            entry.update({key: values[key] for key in distribution_keys})
        else:  # FID and KID need two images a side
            entry.update(dict.fromkeys(distribution_keys, math.nan))
        for metric in metrics:
            entry[metric] = sum(scores.rows[i][metric] for i in members) / len(members)
        if "clip_score" in metrics:  # torchmetrics' CLIPScore of a set: max(mean of 100 * cos, 0)
            entry["clip_score"] = max(sum(scores.clip_raw[i] for i in members) / len(members), 0.0)
        results[kind] = entry
    return {
        "pairs": len(pairs),
        "metrics": [*distribution_keys, *metrics],
        "skipped": skipped,
        "results": results,
        "settings": {
            "inception": "torch-fidelity FeatureExtractorInceptionV3, TF1-compatible bilinear resize to 299",
            "inception_features": list(networks.features),
            "kid_subset_size": kid_subset_size,
            "kid_subsets": kid_subsets,
            "is_splits": is_splits,
            "seed": SEED,
            "psnr_cap_db": PSNR_CAP,
            "predictions_resized": scores.resized,
        },
        "per_pair": [{**r, "pred": str(p.pred), "ref": str(p.ref)} for r, p in zip(scores.rows, pairs, strict=True)],
    }


# ---- outputs ------------------------------------------------------------------------------------
def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def write_report(report: Mapping[str, Any], out: str | Path) -> tuple[Path, Path]:
    """quality_pairs.csv and quality.json under `out`, written together (the JSON last); returns both paths."""
    out = Path(out)
    columns = ["pair_id", "kind", *[m for m in PER_PAIR if m in report["metrics"]], "pred", "ref"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(report["per_pair"])
    table, summary = out / "quality_pairs.csv", out / "quality.json"
    text = json.dumps(_json_safe(dict(report)), indent=1) + "\n"
    write_files_atomic({table: buffer.getvalue().encode("utf-8"), summary: text.encode("utf-8")})
    return table, summary


def format_table(report: Mapping[str, Any]) -> str:
    """Aligned text: one row per kind and "all", one column per metric computed; then what was skipped."""
    keys = report["metrics"]
    header = ["kind", "pairs", *[f"{k} (lower)" if k in LOWER_IS_BETTER else k for k in keys]]
    lines = [header]
    for kind, entry in report["results"].items():
        lines.append([kind, str(entry["pairs"]), *[f"{entry[k]:.4g}" for k in keys]])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines]
    reasons: dict[str, list[str]] = {}
    for metric, why in report["skipped"].items():
        reasons.setdefault(why, []).append(metric)
    text += [f"skipped {', '.join(metrics)}: {why}" for why, metrics in reasons.items()]
    return "\n".join(text)


# ---- arguments ----------------------------------------------------------------------------------
def add_weight_arguments(parser: argparse.ArgumentParser, clip: bool = True) -> None:
    """The weights options (compute_metrics.py --quality has its own --clip-model / --clip-weights)."""
    add = parser.add_argument
    add("--inception-weights", help=f"FID Inception weights for FID, KID and IS: {INCEPTION_FILE}")
    add("--fid-features", type=int, choices=FID_FEATURES, default=2048,
        help="Inception layer of FID/KID (2048: the FID; smaller layers are not comparable)")  # fmt: skip
    add("--lpips-weights", help=f"torchvision ImageNet weights of the LPIPS backbone: {LPIPS_FILES['alex']} (alex)")
    add("--lpips-net", choices=tuple(LPIPS_FILES), default="alex", help="LPIPS backbone")
    if clip:
        add("--clip-model", default="ViT-L-14", help="open_clip model name or a config .json")
        add("--clip-weights", help="local CLIP weights (open_clip state dict or OpenAI's ViT-L-14.pt)")


def check_weights(args: argparse.Namespace) -> None:
    """Every weights file given exists (a UsageError naming the option and the file it needs otherwise)."""
    if args.inception_weights is not None and not Path(args.inception_weights).is_file():
        raise UsageError(f"--inception-weights {args.inception_weights}: no such file ({INCEPTION_NEEDS})")
    if args.lpips_weights is not None and not Path(args.lpips_weights).is_file():
        raise UsageError(
            f"--lpips-weights {args.lpips_weights}: no such file "
            f"(needs torchvision's ImageNet {LPIPS_FILES[args.lpips_net]} for --lpips-net {args.lpips_net})"
        )
    if args.clip_weights is not None and not Path(args.clip_weights).is_file():
        raise UsageError(
            f"--clip-weights {args.clip_weights}: no such file (needs the weights of --clip-model {args.clip_model}, "
            "an open_clip state dict or OpenAI's ViT-L-14.pt)"
        )
    if args.clip_weights is not None and args.clip_model.endswith(".json"):
        existing_file("--clip-model", args.clip_model)


def load_networks(
    args: argparse.Namespace, metrics: Sequence[str] = METRICS, clip: ClipSimilarity | None = None
) -> Networks:
    """The networks of the weights given and wanted (`metrics`); `clip`: one already loaded."""
    skipped = {}
    inception = lpips = None
    features = [str(args.fid_features)] * bool({"fid", "kid"} & set(metrics)) + ["logits_unbiased"] * ("is" in metrics)
    if features:
        if args.inception_weights is None:
            skipped.update(dict.fromkeys(DISTRIBUTION, f"no --inception-weights ({INCEPTION_NEEDS})"))
        else:
            inception = load_inception(Path(args.inception_weights), features)
    if "lpips" in metrics:
        if args.lpips_weights is None:
            skipped["lpips"] = f"no --lpips-weights (needs torchvision's ImageNet {LPIPS_FILES[args.lpips_net]})"
        else:
            lpips = load_lpips(Path(args.lpips_weights), args.lpips_net)
    if {"clip_score", "clip_image"} & set(metrics) and clip is None:
        if args.clip_weights is None:
            skipped.update(dict.fromkeys(("clip_score", "clip_image"), "no --clip-weights"))
        else:
            clip = load_clip(args.clip_model, Path(args.clip_weights))
    skipped.update({m: "not asked for (--metrics)" for m in METRICS if m not in metrics})
    return Networks(inception, tuple(features), lpips, clip, skipped)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="FID/KID/IS, LPIPS, SSIM/MS-SSIM/PSNR and CLIP score of predictions against references.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--pred", required=True, help="folder of predictions")
    refs = parser.add_mutually_exclusive_group(required=True)
    refs.add_argument("--ref", help="folder of references, matched to --pred by file name")
    refs.add_argument("--pairs", help="OpenMoji pairs CSV: references in edited_image, predictions <pair_id>.png")
    add("--split", help="with --pairs: only rows whose split column has this value")
    add("--allow-missing", action="store_true", help="score only references with a prediction (else: an error)")
    add("--captions", help="captions for the CLIP score: JSON {id: text} or CSV (pair_id or name, caption)")
    add("--out", required=True, help="folder for quality.json and quality_pairs.csv")
    add_weight_arguments(parser)
    add("--metrics", nargs="+", choices=METRICS, default=list(METRICS), help="metrics to compute [all with weights]")
    add("--batch", type=int_at_least(1), default=16, help="images per network call")
    add("--kid-subset-size", type=int_at_least(2), default=1000, help="KID subset size (capped at the set size)")
    add("--kid-subsets", type=int_at_least(1), default=100, help="KID subsets")
    add("--is-splits", type=int_at_least(1), default=10, help="Inception Score splits")
    add("--device", default="cpu", help="cpu, cuda, cuda:1, mps or auto")
    return parser


def run(args: argparse.Namespace) -> int:
    """Check the arguments and files, score, write `--out`, print the table; returns 0."""
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: is a file; give a folder")
    check_weights(args)
    asked = set(args.metrics) != set(METRICS)
    need = {"fid": "inception_weights", "kid": "inception_weights", "is": "inception_weights",
            "lpips": "lpips_weights", "clip_score": "clip_weights", "clip_image": "clip_weights"}  # fmt: skip
    for metric in args.metrics if asked else ():
        if metric in need and getattr(args, need[metric]) is None:
            raise UsageError(f"--metrics {metric} needs --{need[metric].replace('_', '-')}")
    pred = Path(args.pred)
    if not pred.is_dir():
        raise UsageError(f"--pred {pred}: no such folder")
    if args.ref is not None:
        if not Path(args.ref).is_dir():
            raise UsageError(f"--ref {args.ref}: no such folder")
        pairs = pairs_from_folders(pred, Path(args.ref), args.allow_missing)
    else:
        pairs_csv = existing_file("--pairs", args.pairs)
        pairs = pairs_from_csv(pred, pairs_csv, args.split, args.allow_missing)
    if args.captions is not None:
        captions = read_captions(existing_file("--captions", args.captions))
        pairs = [Pair(p.pair_id, p.pred, p.ref, p.kind, captions.get(p.pair_id)) for p in pairs]

    import torch

    if args.device != "cpu":
        from ldm.inference import pick_device

        try:
            device = pick_device(args.device)
        except ValueError as err:
            raise UsageError(f"--device {err}") from err
    else:
        device = torch.device("cpu")
    networks = load_networks(args, args.metrics)
    report = evaluate(pairs, networks, args.batch, args.kid_subset_size, args.kid_subsets, args.is_splits, device)
    report["settings"].update(
        pred=str(pred), ref=args.ref, pairs_csv=args.pairs, split=args.split, captions=args.captions,
        inception_weights=args.inception_weights, lpips_net=args.lpips_net, lpips_weights=args.lpips_weights,
        clip_model=args.clip_model, clip_weights=args.clip_weights, device=str(device),
    )  # fmt: skip
    table, summary = write_report(report, out)
    print(format_table(report))
    print(f"wrote {summary} and {table}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    return run_cli(PROG, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
