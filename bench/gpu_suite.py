"""GPU benchmark suite: training throughput, MFU, peak memory and edit latency at SD1.5 shapes, one table.

One command, written to be run the first time a GPU is lent (budget: under 8 minutes on one
H100/H200), exercised on the CPU with `--tiny` by tests/test_gpu_suite.py. Random weights, nothing
downloaded: the model is configs/train.yaml (the InstructPix2Pix recipe: SD1.5 UNet with 8 input
channels, SD VAE, CLIP ViT-L/14 text tower, 256 px, batch 32, EMA), or configs/tests/tiny_edit.yaml
with `--tiny` (32 px, batch 4, 2-step edits).

Rows (each one guarded: a failure, OOM or a missing package, is printed in its row and the suite
goes on; once `--budget-s` seconds have passed, the remaining rows are skipped):

- `train ...`: one training step as main.py runs it (`LatentDiffusion.shared_step` under autocast:
  posterior sample, conditioning dropout, noise, UNet, loss; backward outside autocast; AdamW step;
  EMA update), `--warmup` steps, then the mean of `--steps` steps. "cached" feeds the batch as
  `CachedEditDataset` yields it (the encoders are skipped), "online" feeds images and instructions
  (VAE encode of both images and the text encoder every step). "+ckpt" turns gradient
  checkpointing on (the UNet's `use_checkpoint`). The other training rows are one throughput switch
  applied from the outside to the base row (cached, no checkpointing). `torch.compile UNet` runs
  last and only with `SETTINGS["full"]["compile_s"]` of the budget left (inductor on CUDA; on a CPU
  the backend is "eager", so the tiny run checks dynamo traces the step without compiling for minutes).
- `edit ...`: one 512 px edit (`--tiny`: 32 px), 20 Euler steps (tiny: 2), three-way CFG
  7.5 / 1.5: this project's `ImageEditor.edit` and diffusers' `StableDiffusionInstructPix2PixPipeline`
  on the same tensors (ldm/diffusers_export.py), in the precision edit_cli.py picks by default
  (fp16 autocast on CUDA, fp32 on CPU); one warm-up edit of one step each, then `--edit-repeats`
  edits per pipeline, alternating, median reported.

Columns: seconds per step (or per edit); img/s = batch / seconds; `time/ref` = seconds / the seconds
of the row named in `ref` (training rows: the base row, below 1 is faster; `edit ours`: diffusers,
the goal is at most 0.8); MFU = model FLOPs per image x img/s / the device's peak dense bf16 FLOP/s.
Model FLOPs are counted with `torch.utils.flop_counter.FlopCounterMode` on one training step (forward
and backward, no recomputation, so checkpointing rows share the count) of one image at the same
shapes, under the math SDPA backend (the fused CPU kernel has no FLOP formula; all ops are linear in
the batch, so x batch is exact). At SD1.5 shapes the count is 1109 GFLOP per image online and
537 GFLOP cached (counted on a CPU at batch 1; design.md section 7 says ~1.1 / 0.55 TFLOP). Peak memory is
`torch.cuda.max_memory_allocated` over the row.

Usage:
    python bench/gpu_suite.py --device cuda --json gpu.json
    python bench/gpu_suite.py --tiny --device cpu
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ldm.cli import ArgumentParser, UsageError, finite_float, int_at_least, run_cli

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"full": ROOT / "configs" / "train.yaml", "tiny": ROOT / "configs" / "tests" / "tiny_edit.yaml"}
# per mode: training batch, training image side, edit image side, edit steps, timed steps, warm-up steps,
# timed edits per pipeline, seconds of budget the torch.compile row needs left before it starts
SETTINGS = {
    "full": dict(batch=32, train_px=256, edit_px=512, edit_steps=20, steps=10, warmup=3, edit_repeats=3, compile_s=150),
    "tiny": dict(batch=4, train_px=32, edit_px=32, edit_steps=2, steps=2, warmup=1, edit_repeats=1, compile_s=0),
}  # fmt: skip
LEARNING_RATE = 1e-6  # tiny, so the weights stay sane over the suite's steps (throughput does not depend on it)
# Dense (no sparsity) bf16 tensor-core peak per device, FLOP/s, from the vendor's data sheets. Matched as a
# substring of torch.cuda.get_device_name(), first match wins (so the PCIe/NVL H100s come before the SXM one).
PEAK_BF16_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("GH200", 989e12),
    ("H200", 989e12),
    ("H100", 989e12),  # SXM ("NVIDIA H100 80GB HBM3")
    ("A100", 312e12),
)
BASE = "train cached"
STATUSES = ("ok", "error", "n/a", "not implemented", "skipped")


@dataclass
class Row:
    """One line of the table. `seconds` is per training step or per edit; `ratio` = seconds / ref's seconds."""

    name: str
    kind: str  # "train" or "edit"
    status: str = "ok"  # one of STATUSES; anything but "ok" carries a `note`
    note: str = ""
    seconds: float | None = None
    images_per_s: float | None = None
    ref: str | None = None
    ratio: float | None = None
    mfu: float | None = None
    peak_memory_gib: float | None = None


@dataclass(frozen=True)
class TrainSpec:
    """A training row: which batch, checkpointing, and the switch applied around the base row's step."""

    name: str
    data: str  # "cached" or "online"
    checkpointing: bool = False
    switch: str | None = None  # None, or a key of SWITCHES
    cuda_only: bool = False


TRAIN_ROWS = (
    TrainSpec(BASE, "cached"),
    TrainSpec("train cached +ckpt", "cached", checkpointing=True),
    TrainSpec("train online", "online"),
    TrainSpec("train online +ckpt", "online", checkpointing=True),
    TrainSpec("channels_last", "cached", switch="channels_last"),
    TrainSpec("fused AdamW", "cached", switch="fused_adamw"),
    TrainSpec("8-bit AdamW (bitsandbytes)", "cached", switch="adamw_8bit", cuda_only=True),
    TrainSpec("SDPA flash", "cached", switch="sdpa_flash"),
    TrainSpec("SDPA mem-efficient", "cached", switch="sdpa_efficient", cuda_only=True),
    TrainSpec("SDPA cuDNN", "cached", switch="sdpa_cudnn", cuda_only=True),
    TrainSpec("SDPA math", "cached", switch="sdpa_math"),
)
COMPILE_ROW = TrainSpec("torch.compile UNet", "cached", switch="compile")
# each switch row's `model.params.throughput` settings
SWITCH_SETTINGS = {
    "channels_last": {"channels_last": True},
    "fused_adamw": {"fused_adamw": True},
    "adamw_8bit": {"adam_8bit": True},
    "sdpa_flash": {"sdpa_backend": "flash"},
    "sdpa_efficient": {"sdpa_backend": "efficient"},
    "sdpa_cudnn": {"sdpa_backend": "cudnn"},
    "sdpa_math": {"sdpa_backend": "math"},
    "compile": {"compile_unet": True},
}
NOT_IMPLEMENTED = {
    "FSDP SHARD_GRAD_OP": "needs the trainer's strategy switch (issue 19 item 2); "
    "one process here has no process group to shard over",
}
EDIT_OURS, EDIT_DIFFUSERS = "edit ours", "edit diffusers"
ROW_NAMES = (
    *(spec.name for spec in TRAIN_ROWS),
    *NOT_IMPLEMENTED,
    EDIT_OURS,
    EDIT_DIFFUSERS,
    COMPILE_ROW.name,
)


def parse_args(argv: list[str] | None):
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N [auto]")
    parser.add_argument("--tiny", action="store_true", help="tiny model and 32 px (a CPU smoke run)")
    parser.add_argument("--json", metavar="FILE", help="also write the rows to FILE (atomically)")
    parser.add_argument("--budget-s", type=finite_float, default=420.0,
                        help="start no row after this many seconds since the start [420]")  # fmt: skip
    parser.add_argument("--precision", choices=("auto", "bf16-mixed", "32"), default="auto",
                        help="training precision; auto: bf16-mixed on CUDA, 32 elsewhere [auto]")  # fmt: skip
    parser.add_argument("--batch", type=int_at_least(1), help="training batch [32; --tiny: 4]")
    parser.add_argument("--steps", type=int_at_least(1), help="timed steps per training row [10; --tiny: 2]")
    parser.add_argument("--warmup", type=int_at_least(1), help="warm-up steps per training row [3; --tiny: 1]")
    parser.add_argument("--edit-repeats", type=int_at_least(1), help="timed edits per pipeline [3; --tiny: 1]")
    parser.add_argument("--threads", type=int_at_least(1), help="torch.set_num_threads (CPU runs) [torch's default]")
    args = parser.parse_args(argv)
    if args.budget_s <= 0:
        parser.error(f"argument --budget-s: must be positive, got {args.budget_s}")
    return args


def main(argv: list[str] | None = None) -> int:
    start = time.monotonic()  # the budget counts from here: imports and the model build are part of it
    args = parse_args(argv)
    return run_cli("gpu_suite.py", lambda: run(args, start), failures=(OSError,))


# ---- everything below imports torch ------------------------------------------------------------------------


def run(args, start: float) -> int:
    import torch

    from ldm.inference import pick_device

    if args.threads:
        torch.set_num_threads(args.threads)

    try:
        device = pick_device(args.device)
    except ValueError as err:
        raise UsageError(f"--device {err}") from err
    mode = "tiny" if args.tiny else "full"
    settings = dict(SETTINGS[mode])
    for key in ("batch", "steps", "warmup", "edit_repeats"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    precision = args.precision if args.precision != "auto" else ("bf16-mixed" if device.type == "cuda" else "32")
    suite = Suite(mode, device, precision, settings, args.budget_s, start)
    rows = suite.run_all()
    print(suite.header())
    print(format_table(rows))
    if args.json:
        from ldm.io import write_text_atomic

        report = {**suite.summary(), "rows": [asdict(row) for row in rows]}
        write_text_atomic(args.json, json.dumps(report, indent=2) + "\n")
    return 0


def peak_flops(device) -> tuple[float | None, str]:
    """(dense bf16 peak FLOP/s of `device`, its name); None when the table does not know it."""
    import torch

    if device.type != "cuda":
        return None, device.type
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_FLOPS if key in name), None), name


def error_text(err: BaseException) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())[:300]


class Suite:
    """Builds the model once, then measures the rows in order, each guarded, within the time budget."""

    def __init__(
        self, mode: str, device, precision: str, settings: dict[str, int], budget_s: float, start: float
    ) -> None:
        self.start = start
        self.mode, self.device, self.precision, self.settings = mode, device, precision, settings
        self.budget_s = budget_s
        self.peak, self.device_name = peak_flops(device)
        self.flops_per_image: dict[str, float] = {}
        self.flops_note = ""
        self.rows: dict[str, Row] = {}

    # ---- set-up --------------------------------------------------------------------------------------------
    def build(self) -> None:
        import torch
        from cached_training import batches, build_model
        from omegaconf import OmegaConf

        torch.manual_seed(0)
        config = OmegaConf.load(CONFIGS[self.mode])
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = bool(OmegaConf.select(config, "lightning.trainer.benchmark") or False)
        self.model_config = OmegaConf.to_container(config.model, resolve=True)
        self.model_config.pop("base_learning_rate", None)
        self.model_config["params"].pop("ckpt_path", None)
        # the same sections, random weights; initialised on the GPU directly (a CPU init of 1.1B parameters is slow)
        with torch.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext():
            self.model = build_model(CONFIGS[self.mode], self.device)
        self.online, self.cached = batches(self.model, self.settings["batch"], self.settings["train_px"], self.device)

    def amp(self) -> contextlib.AbstractContextManager:
        import torch

        if self.precision == "bf16-mixed":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def sync(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def progress(self, message: str) -> None:
        print(f"[{self.elapsed():5.0f} s] {message}", file=sys.stderr, flush=True)

    # ---- training ------------------------------------------------------------------------------------------
    def set_checkpointing(self, enabled: bool) -> None:
        """The UNet's gradient checkpointing (`use_checkpoint` in its config), switched on the built model."""
        from ldm.modules.attention import BasicTransformerBlock
        from ldm.modules.diffusionmodules.openaimodel import ResBlock

        switched = 0
        for module in self.model.model.diffusion_model.modules():
            if isinstance(module, ResBlock):
                module.use_checkpoint = enabled
                switched += 1
            elif isinstance(module, BasicTransformerBlock):
                module.checkpoint = enabled
                switched += 1
        assert switched, "no ResBlock or BasicTransformerBlock in the UNet"

    def batch(self, data: str, n: int | None = None) -> dict[str, Any]:
        """The training batch of `data` ("online" or "cached"), its first n items when n is given."""
        from ldm.data.latent_cache import CACHE_KEY

        if data == "cached":
            return {CACHE_KEY: {key: value[:n] for key, value in self.cached[CACHE_KEY].items()}}
        edit = self.online["edit"]
        return {
            "edited": self.online["edited"][:n],
            "edit": {"c_concat": edit["c_concat"][:n], "c_crossattn": list(edit["c_crossattn"])[:n]},
        }

    def count_flops(self) -> None:
        """Model FLOPs of one image's training step (forward + backward), per data path."""
        import torch
        from torch.nn.attention import SDPBackend, sdpa_kernel
        from torch.utils.flop_counter import FlopCounterMode

        self.model.train()
        self.set_checkpointing(False)
        for data in ("online", "cached"):
            try:
                with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
                    with self.amp():
                        loss = self.model.shared_step(self.batch(data, 1))
                    loss.backward()
                self.flops_per_image[data] = float(counter.get_total_flops())
            except Exception as err:  # noqa: BLE001 - reported in the header, MFU becomes n/a
                self.flops_note += f" {data}: {error_text(err)}"
            finally:
                self.model.zero_grad(set_to_none=True)
        torch.manual_seed(0)

    @contextlib.contextmanager
    def switch(self, name: str | None) -> Iterator[Callable]:
        """Apply the throughput switch `name` (ldm.modules.throughput, as `model.params.throughput` would)
        around a row; yields the optimizer factory to use."""
        import torch

        from ldm.modules.throughput import ThroughputSettings

        settings = ThroughputSettings(**SWITCH_SETTINGS[name]) if name else ThroughputSettings()
        unet = self.model.model.diffusion_model
        # inductor on CUDA; the CPU smoke run only checks that dynamo traces the step (backend "eager")
        settings.apply(unet, compile_backend="inductor" if self.device.type == "cuda" else "eager")
        try:
            with settings.attention():
                yield lambda params: settings.optimizer(params, LEARNING_RATE, self.device, f"switch {name}")
        finally:
            if settings.channels_last:
                unet.to(memory_format=torch.contiguous_format)
            if settings.compile_unet:
                del unet.forward  # the instance attribute shadowed the class's method

    def train_row(self, spec: TrainSpec) -> Row:
        import torch

        row = Row(spec.name, "train")
        model, settings = self.model, self.settings
        model.train()
        self.set_checkpointing(spec.checkpointing)
        batch = self.batch(spec.data)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        with self.switch(spec.switch) as make_optimizer:
            optimizer = make_optimizer(model.trainable_parameters())

            def step() -> None:
                with self.amp():
                    loss = model.shared_step(batch)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if model.use_ema:
                    model.model_ema(model.model)

            try:
                for _ in range(settings["warmup"]):
                    step()
                self.sync()
                start = time.perf_counter()
                for _ in range(settings["steps"]):
                    step()
                self.sync()
                row.seconds = (time.perf_counter() - start) / settings["steps"]
            finally:
                model.zero_grad(set_to_none=True)
        row.images_per_s = settings["batch"] / row.seconds
        if spec.switch == "compile" and self.device.type != "cuda":
            row.note = "backend eager: dynamo tracing only"
        row.peak_memory_gib = self.peak_memory()
        flops = self.flops_per_image.get(spec.data)
        if self.peak is not None and flops is not None and self.precision == "bf16-mixed":
            row.mfu = flops * row.images_per_s / self.peak
        return row

    def peak_memory(self) -> float | None:
        import torch

        return torch.cuda.max_memory_allocated(self.device) / 2**30 if self.device.type == "cuda" else None

    # ---- editing -------------------------------------------------------------------------------------------
    def edit_rows(self) -> list[Row]:
        """Our ImageEditor and diffusers' pipeline on the same tensors, alternating; [ours, diffusers]."""
        import torch
        from diffusers import EulerDiscreteScheduler
        from edit_vs_diffusers import edit_calls
        from PIL import Image, ImageDraw

        from ldm.diffusers_export import to_diffusers_pipeline
        from ldm.inference import ImageEditor, autocast_dtype

        dtype = autocast_dtype("auto", self.device)  # edit_cli.py's default: fp16 autocast on CUDA, fp32 on CPU
        label = "fp32" if dtype is None else f"{str(dtype).removeprefix('torch.')} autocast"
        side, steps = self.settings["edit_px"], self.settings["edit_steps"]
        editor = ImageEditor(self.model, self.device, dtype)
        scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
        pipe = to_diffusers_pipeline(self.model, self.model_config, scheduler).to(self.device)  # UNet, VAE shared
        image = Image.new("RGB", (side, side), "white")
        ImageDraw.Draw(image).ellipse((side // 6, side // 6, side - side // 6, side - side // 6), outline="black",
                                      width=max(1, side // 64))  # fmt: skip

        pair = edit_calls(editor, pipe, image, dtype)  # the CPU benchmark's two callables, on this device
        calls = {EDIT_OURS: pair["ours"], EDIT_DIFFUSERS: pair["diffusers"]}
        for call in calls.values():
            assert call(1).size == image.size  # warm-up
        seconds: dict[str, list[float]] = {name: [] for name in calls}
        memory: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(self.settings["edit_repeats"]):
            for name, call in calls.items():
                if self.device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(self.device)
                self.sync()
                start = time.perf_counter()
                call(steps)
                self.sync()
                seconds[name].append(time.perf_counter() - start)
                memory[name].append(self.peak_memory() or 0.0)
        rows = []
        for name in calls:
            row = Row(name, "edit", note=f"{side} px, {steps} Euler steps, {label}")
            row.seconds = statistics.median(seconds[name])
            row.images_per_s = 1 / row.seconds
            row.peak_memory_gib = max(memory[name]) if self.device.type == "cuda" else None
            rows.append(row)
        return rows

    # ---- the suite -----------------------------------------------------------------------------------------
    def guarded(self, names: list[str], kind: str, measure: Callable[[], list[Row]], needs_s: float = 0) -> None:
        """Run `measure` (rows for `names`) unless the budget is spent; a failure becomes an error row each."""
        import torch

        left = self.budget_s - self.elapsed()
        if left <= needs_s:
            note = f"time budget: {self.elapsed():.0f} s of {self.budget_s:.0f} s used"
            if needs_s:
                note += f", this row needs about {needs_s:.0f} s"
            for name in names:
                self.rows[name] = Row(name, kind, "skipped", note)
            return
        self.progress(f"{', '.join(names)} ...")
        try:
            for row in measure():
                self.rows[row.name] = row
        except Exception as err:  # noqa: BLE001 - the suite goes on; the row shows why it failed
            for name in names:
                self.rows[name] = Row(name, kind, "error", error_text(err))
        finally:
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def train(self, spec: TrainSpec, needs_s: float = 0) -> None:
        if spec.cuda_only and self.device.type != "cuda":
            self.rows[spec.name] = Row(spec.name, "train", "n/a", "CUDA only")
            return
        self.guarded([spec.name], "train", lambda: [self.train_row(spec)], needs_s)

    def run_all(self) -> list[Row]:
        self.progress(f"building {CONFIGS[self.mode].relative_to(ROOT)} on {self.device}")
        try:
            self.build()
        except Exception as err:  # noqa: BLE001 - nothing can run; every row says why
            return [Row(name, "train", "error", f"building the model: {error_text(err)}") for name in ROW_NAMES]
        self.progress("counting FLOPs")
        self.count_flops()
        for spec in TRAIN_ROWS:
            self.train(spec)
        for name, reason in NOT_IMPLEMENTED.items():
            self.rows[name] = Row(name, "train", "not implemented", reason)
        self.guarded([EDIT_OURS, EDIT_DIFFUSERS], "edit", self.edit_rows)
        self.train(COMPILE_ROW, needs_s=self.settings["compile_s"])  # last: compiling takes minutes on a GPU
        self.add_ratios()
        return [self.rows[name] for name in ROW_NAMES]

    def add_ratios(self) -> None:
        for row in self.rows.values():
            row.ref = EDIT_DIFFUSERS if row.kind == "edit" else BASE
            ref = self.rows[row.ref]
            if row.seconds is not None and ref.seconds is not None:
                row.ratio = row.seconds / ref.seconds
            if row.status == "ok" and row.mfu is None and row.kind == "train":
                row.note = "; ".join(filter(None, [row.note, self.mfu_reason()]))

    def mfu_reason(self) -> str:
        if self.peak is None:
            return f"MFU n/a: no peak FLOP/s known for {self.device_name}"
        if self.precision != "bf16-mixed":
            return f"MFU n/a: precision {self.precision} (the peak table is bf16)"
        return f"MFU n/a: FLOP count failed:{self.flops_note}"

    def header(self) -> str:
        import torch

        s = self.settings
        flops = ", ".join(f"{k} {v / 1e9:.1f} GFLOP" for k, v in self.flops_per_image.items()) or "n/a"
        peak = "n/a" if self.peak is None else f"{self.peak / 1e12:.0f} TFLOP/s bf16 dense"
        return (
            f"gpu_suite ({self.mode}): {self.device_name} ({self.device}), torch {torch.__version__}, "
            f"python {platform.python_version()}\n"
            f"training: {CONFIGS[self.mode].relative_to(ROOT)}, batch {s['batch']}, {s['train_px']} px, "
            f"precision {self.precision}, {s['warmup']} warm-up + {s['steps']} timed steps; "
            f"model FLOPs per image {flops}; peak {peak}; {self.elapsed():.0f} s total"
        )

    def summary(self) -> dict[str, Any]:
        import torch

        return {
            "mode": self.mode,
            "device": str(self.device),
            "device_name": self.device_name,
            "torch": torch.__version__,
            "precision": self.precision,
            "settings": self.settings,
            "config": str(CONFIGS[self.mode].relative_to(ROOT)),
            "flops_per_image": self.flops_per_image,
            "peak_flops": self.peak,
            "budget_s": self.budget_s,
            "elapsed_s": self.elapsed(),
        }


def _number(value: float | None, spec: str, missing: str = "n/a") -> str:
    return missing if value is None or not math.isfinite(value) else format(value, spec)


def format_table(rows: list[Row]) -> str:
    header = ("row", "status", "s/step|edit", "img/s", "ref", "time/ref", "MFU", "peak GiB", "note")
    lines = []
    for row in rows:
        ok = row.status == "ok"
        lines.append((
            row.name,
            row.status,
            _number(row.seconds, ".4f", "-"),
            _number(row.images_per_s, ".2f", "-"),
            row.ref or "-",
            _number(row.ratio, ".3f", "-"),
            _number(None if row.mfu is None else 100 * row.mfu, ".1f", "n/a" if ok and row.kind == "train" else "-")
            + ("%" if row.mfu is not None else ""),
            _number(row.peak_memory_gib, ".2f", "n/a" if ok else "-"),
            row.note,
        ))  # fmt: skip
    widths = [max(len(header[i]), *(len(line[i]) for line in lines)) for i in range(len(header) - 1)]
    out = []
    for cells in (header, tuple("-" * w for w in widths) + ("----",), *lines):
        left = [cells[0].ljust(widths[0]), cells[1].ljust(widths[1])]
        right = [cell.rjust(width) for cell, width in zip(cells[2:-1], widths[2:], strict=True)]
        out.append("  ".join([*left, *right, cells[-1]]).rstrip())
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
