"""Turn (caption, instruction, edited caption) triples into CLIP-filtered image pairs with Prompt-to-Prompt.

Stage two of the InstructPix2Pix data pipeline, after `generate_txt_dataset.py`:

    python dataset_creation/generate_img_dataset.py --prompts data/edits.jsonl --out data/pairs \\
        --ckpt models/v1-5-pruned-emaonly.ckpt --clip-weights models/clip-vit-large-patch14.pt \\
        --n-partitions 8 --partition 3
    python dataset_creation/prepare_dataset.py data/pairs     # seeds.json for training

For each triple, `--n-samples` candidate pairs are sampled with the text-to-image model: the
input caption and the edited caption share the initial noise, and Prompt-to-Prompt shares the
attention maps of the first p of the steps (`prompt2prompt.py` says which maps and how), with
p ~ U(--min-p2p, --max-p2p) = U(0.1, 0.9) and the guidance scale ~ U(--min-cfg, --max-cfg) =
U(7.5, 15) drawn per candidate. CLIP (ViT-L/14 from a local file) then keeps a candidate when
each image matches its caption (cosine >= --clip-threshold), the image changed like the caption
(direction similarity >= --clip-dir-threshold) and the two images stay alike (image-image
cosine >= --clip-img-threshold); of those, the --max-out-samples with the highest direction
similarity are written. Defaults are the original's (100 candidates, 100 Euler-ancestral steps,
512 px, thresholds 0.2 / 0.2 / 0.7, 4 kept).

Input: the JSONL of `generate_txt_dataset.py`, objects with string "input", "edit" and "output"
and an optional "id" (string or integer; without one the id is the line number, from 1).
Other keys are kept in prompt.json. A repeated id is skipped when its triple is the same, an
error otherwise.

Output, the original InstructPix2Pix layout (one folder per triple, named after its id:
integers zero-padded to 7 digits, strings with characters other than letters, digits, `-`,
`_` and `.` replaced by `_`):

    <out>/generation.json             the settings every run and partition into <out> must share
    <out>/<id>/prompt.json            the triple
    <out>/<id>/{seed}_0.jpg           image of the input caption (JPEG quality 100)
    <out>/<id>/{seed}_1.jpg           image of the edited caption
    <out>/<id>/metadata.jsonl         per kept pair, best first: seed, p2p_threshold, cfg_scale,
                                      clip_sim_0, clip_sim_1, clip_sim_dir, clip_sim_image

A folder may hold no pair when no candidate passed the filter; it still marks the triple done.

Partitions: triple with id x belongs to partition sha256(x) mod --n-partitions, the rule of
`generate_txt_dataset.py` (so partition i of the merged triples is what its partition i wrote).
Partitions never share a folder; together they write exactly the folders of one run.

Resuming: a triple's folder is written under `<out>/.<id>.partial` and renamed when complete;
complete folders are skipped, and a `.partial` folder left by a killed run is removed and its
triple redone. Two processes must not run the same partition at once.

Reproducibility: candidate seeds come from `random.Random(f"{--seed}:{id}")` (distinct, in
[0, 2**32)); a candidate's p, guidance scale, initial and ancestral noise all come from a CPU
`torch.Generator` seeded with its seed. So a triple's pairs depend on the settings and its id
only, not on partitions, resumes or file order; images are bit-identical for the same device,
precision and --batch-size.

Mistakes in arguments or files print one line `generate_img_dataset.py: error: ...` and exit 1;
Ctrl-C prints `generate_img_dataset.py: error: interrupted` and exits 130 (run again to resume).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import re
import sys
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image
from tqdm import tqdm

from dataset_creation.generate_txt_dataset import id_hash
from ldm.cli import (
    ArgumentParser,
    UsageError,
    add_device_arguments,
    existing_file,
    finite_float,
    int_at_least,
    model_weights,
    run_cli,
)
from ldm.edit_settings import SAMPLERS, read_model_config
from ldm.io import atomic_folder, write_text_atomic

if TYPE_CHECKING:
    import torch

    from ldm.modules.encoders.clip_image import ClipSimilarity

# `clip` (imported by k-diffusion) warns about pkg_resources on import; not the user's concern.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)

PROG = "generate_img_dataset.py"
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "configs" / "stable-diffusion" / "v1-inference.yaml"
TRIPLE_KEYS = ("input", "edit", "output")
ATTENTION_KINDS = ("both", "self", "cross")
SETTINGS_FILE = "generation.json"
PARTIAL_SUFFIX = ".partial"
SIMILARITIES = ("clip_sim_0", "clip_sim_1", "clip_sim_dir", "clip_sim_image")


@dataclass(frozen=True)
class Triple:
    """One line of the input: its id, the JSON object (with the id), and its folder name."""

    id: str | int
    record: dict[str, Any]
    folder: str


@dataclass(frozen=True)
class Settings:
    """Everything that decides a triple's pairs besides the weights (saved as generation.json)."""

    seed: int = 0
    steps: int = 100
    sampler: str = "euler_a"
    resolution: int = 512
    n_samples: int = 100
    min_p2p: float = 0.1
    max_p2p: float = 0.9
    min_cfg: float = 7.5
    max_cfg: float = 15.0
    p2p_attention: str = "both"
    clip_threshold: float = 0.2
    clip_dir_threshold: float = 0.2
    clip_img_threshold: float = 0.7
    max_out_samples: int = 4


@dataclass
class Candidate:
    """A sampled pair, its random draws and its CLIP similarities."""

    seed: int
    p2p_threshold: float
    cfg_scale: float
    images: tuple[Image.Image, Image.Image]
    clip_sim_0: float = 0.0
    clip_sim_1: float = 0.0
    clip_sim_dir: float = 0.0
    clip_sim_image: float = 0.0

    def metadata(self) -> dict[str, Any]:
        """The metadata.jsonl line (the original's keys)."""
        keys = ("seed", "p2p_threshold", "cfg_scale", *SIMILARITIES)
        return {key: getattr(self, key) for key in keys}


# ---- arguments ----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Sample Prompt-to-Prompt image pairs for edit triples and keep the CLIP-filtered best.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--prompts", required=True, help='JSONL of {"id", "input", "edit", "output"} (generate_txt_dataset.py)')
    add("--out", required=True, help="dataset folder: one sub-folder per triple")
    add("--config", default=str(DEFAULT_CONFIG), help="YAML whose `model` section builds the text-to-image model")
    add("--ckpt", help="text-to-image weights (.ckpt or .safetensors); required unless the config sets ckpt_path")
    add("--vae-ckpt", help="replace the autoencoder weights (e.g. vae-ft-mse-840000-ema-pruned.ckpt)")
    add("--clip-model", default="ViT-L-14", help="open_clip model name or config JSON")
    add("--clip-weights", required=True, help="local CLIP weights file (open_clip state dict or OpenAI .pt)")
    add("--n-samples", type=int_at_least(1), default=100, help="candidate pairs per triple")
    add("--max-out-samples", type=int_at_least(1), default=4, help="pairs kept per triple, best direction first")
    add("--clip-threshold", type=finite_float, default=0.2, help="min CLIP similarity of each image to its caption")
    add("--clip-dir-threshold", type=finite_float, default=0.2, help="min CLIP direction similarity")
    add("--clip-img-threshold", type=finite_float, default=0.7, help="min CLIP similarity of the two images")
    add("--min-p2p", type=finite_float, default=0.1, help="p ~ U(min, max): fraction of steps sharing attention")
    add("--max-p2p", type=finite_float, default=0.9, help="see --min-p2p")
    add("--min-cfg", type=finite_float, default=7.5, help="guidance scale ~ U(min, max)")
    add("--max-cfg", type=finite_float, default=15.0, help="see --min-cfg")
    add("--p2p-attention", choices=ATTENTION_KINDS, default="both",
        help="maps shared: self (as the original InstructPix2Pix code), cross (word-aligned), or both")  # fmt: skip
    add("--steps", type=int_at_least(1), default=100, help="sampling steps")
    add("--sampler", choices=list(SAMPLERS), default="euler_a", help="k-diffusion sampler")
    add("--resolution", type=int_at_least(1), default=512, help="side of the square images (pixels)")
    add("--batch-size", type=int_at_least(1), default=1, help="candidates sampled at once (4x as many UNet samples)")
    add("--seed", type=int, default=0, help="the whole dataset's seed (every partition must use the same)")
    add("--n-partitions", type=int_at_least(1), default=1, help="split the triples among this many runs")
    add("--partition", type=int, default=0, help="which partition this run does, 0 .. n-partitions - 1")
    add_device_arguments(parser)
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The settings, checked: ranges in order, p within [0, 1], the partition in range."""
    if not 0 <= args.partition < args.n_partitions:
        raise UsageError(f"--partition {args.partition}: must be in 0 .. {args.n_partitions - 1} (--n-partitions)")
    if not 0 <= args.min_p2p <= args.max_p2p <= 1:
        raise UsageError(f"--min-p2p {args.min_p2p} / --max-p2p {args.max_p2p}: need 0 <= min <= max <= 1")
    if args.min_cfg > args.max_cfg:
        raise UsageError(f"--min-cfg {args.min_cfg} is above --max-cfg {args.max_cfg}")
    return Settings(
        args.seed, args.steps, args.sampler, args.resolution, args.n_samples, args.min_p2p, args.max_p2p,
        args.min_cfg, args.max_cfg, args.p2p_attention, args.clip_threshold, args.clip_dir_threshold,
        args.clip_img_threshold, args.max_out_samples,
    )  # fmt: skip


# ---- triples ------------------------------------------------------------------------------------
def folder_name(triple_id: str | int) -> str:
    """Folder of a triple: integers zero-padded to 7 digits, strings made safe (see module doc)."""
    if isinstance(triple_id, int) and triple_id >= 0:
        return f"{triple_id:07d}"
    return re.sub(r"[^A-Za-z0-9._-]", "_", str(triple_id)).lstrip(".") or "_"


def _parse_triple(line: str, number: int, where: str) -> Triple:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise UsageError(f"{where}: not JSON ({err.msg})") from err
    if not isinstance(record, dict):
        raise UsageError(f"{where}: not a JSON object")
    missing = [key for key in TRIPLE_KEYS if not isinstance(record.get(key), str) or not record[key].strip()]
    if missing:
        raise UsageError(f"{where}: needs a non-empty string {missing[0]!r} (a triple has input, edit, output)")
    triple_id = record.get("id", number)
    if isinstance(triple_id, bool) or not isinstance(triple_id, (str, int)) or triple_id == "":
        raise UsageError(f"{where}: 'id' must be a non-empty string or an integer, not {triple_id!r}")
    return Triple(triple_id, {**record, "id": triple_id}, folder_name(triple_id))


def read_triples(path: Path) -> list[Triple]:
    """The triples of a JSONL file in file order; an identical repeat is dropped, a conflicting one refused."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"--prompts {path}: cannot read it ({err})") from err
    triples: dict[str, Triple] = {}
    first_line: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        triple = _parse_triple(line, number, f"{path}:{number}")
        earlier = triples.get(triple.folder)
        if earlier is not None and earlier.record != triple.record:
            raise UsageError(
                f"{path}:{number}: id {triple.id!r} (folder {triple.folder}) is also the id of line "
                f"{first_line[triple.folder]}, another triple; ids must be unique"
            )
        triples.setdefault(triple.folder, triple)
        first_line.setdefault(triple.folder, number)
    if not triples:
        raise UsageError(f"--prompts {path}: no triples in the file")
    return list(triples.values())


def in_partition(triples: Sequence[Triple], n_partitions: int, partition: int) -> list[Triple]:
    """The triples whose id hashes (SHA-256, as generate_txt_dataset.py) to `partition` mod `n_partitions`."""
    return [t for t in triples if id_hash(str(t.id)) % n_partitions == partition]


def candidate_seeds(seed: int, triple_id: str | int, n: int) -> list[int]:
    """`n` distinct seeds in [0, 2**32) drawn from the triple's own RNG (string seeding is SHA-512 based)."""
    return random.Random(f"{seed}:{triple_id}").sample(range(2**32), n)


# ---- CLIP filter --------------------------------------------------------------------------------
def select_candidates(
    sim_0: Sequence[float],
    sim_1: Sequence[float],
    sim_dir: Sequence[float],
    sim_img: Sequence[float],
    clip_threshold: float,
    dir_threshold: float,
    img_threshold: float,
    max_out: int,
) -> list[int]:
    """Indices of the candidates to keep, highest direction similarity first (ties: lower index first).

    A candidate passes when sim_0 and sim_1 (each image vs its caption) >= clip_threshold,
    sim_dir >= dir_threshold and sim_img >= img_threshold; at most `max_out` are kept.
    """
    passed = [
        i
        for i in range(len(sim_dir))
        if min(sim_0[i], sim_1[i]) >= clip_threshold and sim_dir[i] >= dir_threshold and sim_img[i] >= img_threshold
    ]
    return sorted(passed, key=lambda i: -float(sim_dir[i]))[:max_out]


# ---- sampling -----------------------------------------------------------------------------------
def to_pil(image: torch.Tensor) -> Image.Image:
    """(3, H, W) in [0, 1] -> RGB image, rounded to 0..255."""
    import torch

    pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    return Image.fromarray(pixels.permute(1, 2, 0).cpu().numpy())


class PairGenerator:
    """Samples and scores candidate pairs with a loaded text-to-image model and CLIP."""

    def __init__(
        self,
        model: Any,
        clip: ClipSimilarity,
        device: torch.device,
        dtype: torch.dtype | None,
        settings: Settings,
        batch_size: int,
    ) -> None:
        from dataset_creation.prompt2prompt import Sharing
        from ldm.models.diffusion.sampling import denoiser, get_sigmas

        self.model = model.eval().to(device)
        self.clip = clip.eval().to(device)
        self.device, self.dtype = device, dtype
        self.settings, self.batch_size = settings, batch_size
        self.denoiser = denoiser(self.model)  # after .to(device): its sigma buffers live there
        self.sigmas = get_sigmas(self.denoiser, settings.steps)  # (steps + 1,)
        kind = settings.p2p_attention
        self.sharing = Sharing(self_attention=kind in ("both", "self"), cross_attention=kind in ("both", "cross"))
        vae_factor = 2 ** (self.model.first_stage_model.encoder.num_resolutions - 1)
        side = settings.resolution // vae_factor
        self.latent_shape = (1, self.model.channels, side, side)

    def _autocast(self) -> contextlib.AbstractContextManager:
        import torch

        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def candidates(self, triple: Triple) -> list[Candidate]:
        """Every candidate pair of a triple, scored by CLIP, in seed-draw order."""
        seeds = candidate_seeds(self.settings.seed, triple.id, self.settings.n_samples)
        out: list[Candidate] = []
        for start in range(0, len(seeds), self.batch_size):
            out += self._batch(triple, seeds[start : start + self.batch_size])
        return out

    def _batch(self, triple: Triple, seeds: Sequence[int]) -> list[Candidate]:
        import torch

        from dataset_creation.prompt2prompt import sample_pairs

        s = self.settings
        generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        uniforms = torch.stack([torch.rand(2, generator=g) for g in generators])  # (b, 2)
        p = s.min_p2p + uniforms[:, 0] * (s.max_p2p - s.min_p2p)  # (b,)
        cfg = s.min_cfg + uniforms[:, 1] * (s.max_cfg - s.min_cfg)

        def draw_noise(*_: Any) -> torch.Tensor:  # (b, C, h, w): one draw from each candidate's generator
            return torch.cat([torch.randn(self.latent_shape, generator=g) for g in generators]).to(self.device)

        captions = (triple.record["input"], triple.record["output"])
        with torch.inference_mode(), self._autocast():
            z = sample_pairs(self.model, self.denoiser, captions, draw_noise(), p.to(self.device),
                             cfg.to(self.device), self.sigmas, s.sampler, draw_noise, self.sharing)  # fmt: skip
            x = self.model.decode_first_stage(z.flatten(0, 1))  # (2b, 3, H, W) in about [-1, 1]
        images = (x.float() / 2 + 0.5).clamp(0, 1).view(2, len(seeds), *x.shape[1:])  # (2, b, 3, H, W)
        with torch.inference_mode():
            sims = self.clip(images[0], images[1], [captions[0]] * len(seeds), [captions[1]] * len(seeds))
        return [
            Candidate(seed, float(p[i]), float(cfg[i]), (to_pil(images[0, i]), to_pil(images[1, i])),
                      *(float(sim[i]) for sim in sims))  # fmt: skip
            for i, seed in enumerate(seeds)
        ]

    def keep(self, candidates: Sequence[Candidate]) -> list[Candidate]:
        """The candidates the CLIP filter keeps, best first."""
        s = self.settings
        columns = [[getattr(c, key) for c in candidates] for key in SIMILARITIES]
        thresholds = (s.clip_threshold, s.clip_dir_threshold, s.clip_img_threshold)
        return [candidates[i] for i in select_candidates(*columns, *thresholds, s.max_out_samples)]


# ---- output -------------------------------------------------------------------------------------
def write_folder(out: Path, triple: Triple, kept: Sequence[Candidate]) -> None:
    """Write the triple's folder under its `.partial` name, then rename it into place (`ldm.io.atomic_folder`:
    a killed run's `.partial` folder is replaced, a failure removes it)."""
    with atomic_folder(out / triple.folder, temp=out / f".{triple.folder}{PARTIAL_SUFFIX}") as temp:
        lines = []
        for candidate in kept:
            for which, image in enumerate(candidate.images):
                image.save(temp / f"{candidate.seed}_{which}.jpg", quality=100)
            lines.append(json.dumps(candidate.metadata()) + "\n")
        (temp / "metadata.jsonl").write_text("".join(lines), encoding="utf-8")
        (temp / "prompt.json").write_text(json.dumps(triple.record, ensure_ascii=False) + "\n", encoding="utf-8")


def check_settings(out: Path, settings: Settings) -> None:
    """Refuse to add to a dataset whose generation.json records other settings."""
    path = out / SETTINGS_FILE
    if not path.is_file():
        return
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UsageError(f"{path}: cannot read it ({err}); remove it only if --out holds no other run") from err
    wanted = asdict(settings)
    differ = sorted(key for key in wanted if not isinstance(found, dict) or found.get(key) != wanted[key])
    if differ:
        key = differ[0]
        was = found.get(key) if isinstance(found, dict) else None
        raise UsageError(
            f"--out {out} was generated with {key} = {was!r}, this run has {wanted[key]!r}; "
            "use the same settings to resume, or another --out"
        )


def save_settings(out: Path, settings: Settings) -> None:
    """Write <out>/generation.json atomically (partitions starting together write the same text)."""
    write_text_atomic(out / SETTINGS_FILE, json.dumps(asdict(settings), indent=2) + "\n")


# ---- running ------------------------------------------------------------------------------------
def load_generator(args: argparse.Namespace, settings: Settings) -> PairGenerator:
    """Device and precision (chosen once, here), the text-to-image model and CLIP; UsageError for any failure."""
    from ldm.inference import autocast_dtype, model_stride, open_model, pick_device
    from ldm.modules.encoders.clip_image import ClipSimilarity

    model_config, _ = read_model_config(args.config)
    conditioning = (model_config.get("params") or {}).get("conditioning_key")
    if conditioning != "crossattn":
        raise UsageError(
            f"--config {args.config}: not a text-to-image model (conditioning_key {conditioning!r}); "
            f"use a crossattn config such as {DEFAULT_CONFIG.relative_to(ROOT)}"
        )
    ckpt = model_weights(args.ckpt, model_config, args.config)
    existing_file("--vae-ckpt", args.vae_ckpt)
    clip_weights = existing_file("--clip-weights", args.clip_weights)
    try:
        device = pick_device(args.device)
        dtype = autocast_dtype(args.precision, device)
    except ValueError as err:
        raise UsageError(f"--device {args.device} --precision {args.precision}: {err}") from err
    try:
        clip = ClipSimilarity(args.clip_model, clip_weights)
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        raise UsageError(f"cannot load CLIP {args.clip_model} from {clip_weights}: {err}") from err
    model = open_model(model_config, ckpt, args.vae_ckpt)
    stride = model_stride(model)
    if settings.resolution % stride:
        raise UsageError(f"--resolution {settings.resolution}: must be a multiple of {stride} for this model")
    return PairGenerator(model, clip, device, dtype, settings, args.batch_size)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    triples = read_triples(Path(args.prompts))
    mine = in_partition(triples, args.n_partitions, args.partition)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: is a file, not a folder")
    check_settings(out, settings)
    pending = [t for t in mine if not (out / t.folder).is_dir()]
    print(f"partition {args.partition}/{args.n_partitions}: {len(mine)} of {len(triples)} triples, "
          f"{len(mine) - len(pending)} already done", flush=True)  # fmt: skip
    if not pending:
        return 0
    generator = load_generator(args, settings)
    out.mkdir(parents=True, exist_ok=True)
    save_settings(out, settings)
    kept_pairs = 0
    with tqdm(pending, desc="triples", unit="triple", disable=None, dynamic_ncols=True) as bar:
        for triple in bar:
            kept = generator.keep(generator.candidates(triple))
            write_folder(out, triple, kept)
            kept_pairs += len(kept)
            bar.set_postfix(pairs=kept_pairs)
    print(f"wrote {len(pending)} triple folders with {kept_pairs} pairs to {out}", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    return run_cli(PROG, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
