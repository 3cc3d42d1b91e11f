"""The browser app: draw or upload a sketch, say how to color it, look at the results.

    python edit_app.py                      # the shipped OpenMoji model, http://127.0.0.1:7860
    python edit_app.py --config configs/generate.yaml --ckpt checkpoints/instruct-pix2pix-00-22000.ckpt

As the original InstructPix2Pix `edit_app.py` (Gradio): input and edited image, instruction,
Generate / Load Example / Reset, steps, seed and text / image CFG each with Fix or Randomize
(text U(6, 9), image U(1.2, 1.8)); the values a run used are written back into the controls.
Beyond it: a sketch canvas (upload, then draw or erase), a sampler choice, N samples in a gallery
with their seeds, a per-step progress bar, a PNG download, tuning tips, and "keep the line art"
(`ldm.image_io.keep_lines`, as `edit_cli.py --keep-lines`). Load Example draws a random held-out
OpenMoji sketch (`dataset_creation.openmoji.examples`). An empty instruction shows the resized
input, as `edit_cli.py` writes it; Reset restores the defaults (the original set steps to 0).

One model load for the process (before the server starts, so a bad --ckpt exits at once with one
line), one queue with one edit at a time and at most --queue-size waiting. Bad input (no image,
an unreadable or oversized one, steps out of range) is a message in the page, and the app goes on.
The same function is the API endpoint `/generate` (README: "Browser app").
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ldm.cli import (
    ArgumentParser,
    UsageError,
    add_device_arguments,
    add_weights_arguments,
    existing_file,
    int_at_least,
    lora_files,
    model_weights,
    run_cli,
)
from ldm.edit_settings import SAMPLERS, SamplingOptions, read_model_config
from ldm.image_io import ImageInputError, fit_to_stride, keep_lines, load_image

if TYPE_CHECKING:
    from PIL import Image

    from ldm.inference import ImageEditor

warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no telemetry calls from a closed network

PROG = "edit_app.py"
MAX_STEPS = 500
MAX_SAMPLES = 8
MAX_SEED = 2**53 - 1  # the largest integer a browser's number field holds exactly
RANDOM_SEEDS = 2**31  # Randomize seed draws below this, as edit_cli.py does
TEXT_CFG_RANGE = (6.0, 9.0)  # the original app's Randomize CFG draws
IMAGE_CFG_RANGE = (1.2, 1.8)
FIX_SEED, RANDOM_SEED = "Fix seed", "Randomize seed"
FIX_CFG, RANDOM_CFG = "Fix CFG", "Randomize CFG"
TIPS = """\
**Tips**
- *Nothing changes?* Raise **Text CFG** (follow the instruction more) or lower **Image CFG**
  (stay less close to the input).
- *Lines or shapes get lost?* Raise **Image CFG**, or tick **Keep line art**: the sketch's lines
  are laid over the colors (multiply), exactly as drawn.
- *Colors in the wrong places?* Try other seeds (**Randomize seed**, or several samples), or
  say it more plainly: "make it red", "color the hat blue".
- *Blotchy results?* More **steps**; `euler` is steady, `euler_a` more varied.
- The shipped model knows OpenMoji line art at 64 px: bold black lines on white work best.
"""

# small images (the shipped model edits at 64 px) are shown enlarged with crisp pixels
CSS = """
#edited-image img { width: 100%; height: 100%; object-fit: contain; }
#edited-image img, #gallery img { image-rendering: pixelated; }
"""


@dataclass(frozen=True)
class AppSettings:
    """What the command line fixed for the whole process."""

    resolution: int
    defaults: SamplingOptions
    default_seed: int
    max_pixels: int
    examples_split: str


class EditService:
    """The model-facing half of the app, free of Gradio widgets (the handlers below call it)."""

    def __init__(self, editor: ImageEditor, settings: AppSettings, downloads: Path) -> None:
        self.editor = editor
        self.settings = settings
        self.downloads = downloads  # PNGs offered for download (a folder of the app's own)
        self._examples = None

    def prepare(self, path: str | Path | None) -> Image.Image:
        """Read the input (ValueError with the reason) and fit it to the model's grid."""
        if path is None:
            raise ValueError("no input image: upload a sketch, draw one, or click Load Example")
        try:
            image = load_image(path, self.settings.max_pixels)
        except ImageInputError as err:
            raise ValueError(f"cannot use this image: {err}") from err
        return fit_to_stride(image, self.settings.resolution, self.editor.stride)

    def edit(
        self,
        image: Image.Image,
        instruction: str,
        options: SamplingOptions,
        seeds: Sequence[int],
        lines: bool,
        progress: Any = None,
    ) -> list[Image.Image]:
        """One result per seed; an empty instruction returns the (resized) input."""
        if not instruction.strip():
            results = [image] * len(seeds)
        else:
            total, done = options.steps * len(seeds), [0]

            def step(_: dict) -> None:
                done[0] += 1
                if progress is not None:
                    progress((done[0], total), desc=f"sample {(done[0] - 1) // options.steps + 1}/{len(seeds)}")

            results = self.editor.edit(image, instruction, seeds, options, callback=step)
        return [keep_lines(result, image) for result in results] if lines else results

    def save_downloads(self, results: Sequence[Image.Image], seeds: Sequence[int]) -> list[str]:
        """Write the results as PNGs named by seed in a fresh folder under `downloads`; their paths."""
        folder = Path(tempfile.mkdtemp(dir=self.downloads))
        paths = []
        for result, seed in zip(results, seeds, strict=True):
            path = folder / f"edit_seed{seed}.png"
            result.save(path)
            paths.append(str(path))
        return paths

    def example(self, rng: random.Random) -> tuple[Image.Image, str]:
        """A random held-out OpenMoji sketch at the model's resolution and an instruction for it."""
        from dataset_creation.openmoji.examples import HeldOutExamples

        if self._examples is None:
            self._examples = HeldOutExamples(self.settings.resolution, self.settings.examples_split)
        example = self._examples.example(rng)
        return example.sketch, example.instruction


def check_request(steps: Any, seed: Any, cfg_text: Any, cfg_image: Any, samples: Any, sampler: Any) -> None:
    """ValueError naming the first control out of range (the page's sliders bound them; the API does not)."""
    if not isinstance(steps, int | float) or steps != int(steps) or not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"steps must be a whole number from 1 to {MAX_STEPS}, got {steps}")
    if not isinstance(samples, int | float) or samples != int(samples) or not 1 <= samples <= MAX_SAMPLES:
        raise ValueError(f"samples must be a whole number from 1 to {MAX_SAMPLES}, got {samples}")
    if not isinstance(seed, int | float) or seed != int(seed) or not 0 <= seed <= MAX_SEED - MAX_SAMPLES:
        raise ValueError(f"seed must be a whole number from 0 to {MAX_SEED - MAX_SAMPLES}, got {seed}")
    for name, value in (("text CFG", cfg_text), ("image CFG", cfg_image)):
        if not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value}")
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")


CONTROL_NAMES = ("image", "instruction", "steps", "seed", "seed_mode", "cfg_text", "cfg_image", "cfg_mode", "sampler",
                 "samples", "lines")  # fmt: skip


def reset_values(settings: AppSettings) -> tuple:
    """What Reset puts in the controls (CONTROL_NAMES order): the start values (steps too, which the original
    app's Reset set to 0)."""
    defaults = settings.defaults
    return (None, "", defaults.steps, settings.default_seed, FIX_SEED, defaults.cfg_text, defaults.cfg_image,
            FIX_CFG, defaults.sampler, 1, False)  # fmt: skip


def editor_image(value: Any) -> str | None:
    """The path to edit from an ImageEditor value: the composite (background + strokes), else the background."""
    if not isinstance(value, dict):
        return value
    return value.get("composite") or value.get("background")


def sketch_canvas(**options: Any) -> Any:
    """A Gradio ImageEditor that hands uploaded files over undecoded, as paths, so that every input
    goes through `ldm.image_io.load_image` (its pixel limit and one-line reasons) instead of Pillow
    inside Gradio's preprocessing, whose failure would be a paragraph about component internals.

    Set on the instance: a subclass of a Gradio component would make Gradio write a `.pyi` stub
    beside this file and look for a custom frontend."""
    import gradio as gr
    from gradio.data_classes import FileData

    canvas = gr.ImageEditor(type="filepath", **options)
    convert = canvas.convert_and_format_image

    def convert_and_format_image(file: Any, flatten_on_white: bool = False) -> Any:
        return file.path if isinstance(file, FileData) else convert(file, flatten_on_white)

    canvas.convert_and_format_image = convert_and_format_image
    return canvas


def build_ui(service: EditService) -> Any:
    """The Gradio Blocks of the app (not launched)."""
    import gradio as gr

    settings = service.settings
    defaults = settings.defaults

    def generate(
        image_value, instruction, steps, seed, seed_mode, cfg_text, cfg_image, cfg_mode, sampler, samples, lines,
        progress=gr.Progress(),  # noqa: B008 (Gradio's way of asking for a progress bar)
    ):  # fmt: skip
        try:
            check_request(steps, seed, cfg_text, cfg_image, samples, sampler)
            image = service.prepare(editor_image(image_value))
        except ValueError as err:
            raise gr.Error(str(err), print_exception=False) from err
        rng = random.Random()
        if seed_mode == RANDOM_SEED:
            seed = rng.randrange(RANDOM_SEEDS)
        if cfg_mode == RANDOM_CFG:
            cfg_text = round(rng.uniform(*TEXT_CFG_RANGE), 2)
            cfg_image = round(rng.uniform(*IMAGE_CFG_RANGE), 2)
        seed, steps, samples = int(seed), int(steps), int(samples)
        options = SamplingOptions(steps, sampler, defaults.karras, float(cfg_text), float(cfg_image))
        seeds = [seed + i for i in range(samples)]
        try:
            results = service.edit(image, instruction or "", options, seeds, bool(lines), progress)
        except MemoryError as err:
            raise gr.Error(str(err), print_exception=False) from err
        gallery = [(result, f"seed {s}") for result, s in zip(results, seeds, strict=True)]
        return results[0], gallery, seed, cfg_text, cfg_image, service.save_downloads(results, seeds)

    def load_example():
        sketch, instruction = service.example(random.Random())
        return {"background": sketch, "layers": [], "composite": None}, instruction

    def reset():
        return (*reset_values(settings), None, [], None)  # the controls, then edited image, gallery, downloads

    with gr.Blocks(title="Sketch colorization (InstructPix2Pix)", analytics_enabled=False) as app:
        gr.Markdown("## Sketch colorization: draw or upload line art, say how to color it")
        with gr.Row():
            with gr.Column(scale=3):
                instruction = gr.Textbox(label="Instruction", placeholder="color it red", elem_id="instruction")
            with gr.Column(scale=1, min_width=240):
                with gr.Row():
                    generate_button = gr.Button("Generate", variant="primary", elem_id="generate")
                    example_button = gr.Button("Load Example", elem_id="load-example")
                    reset_button = gr.Button("Reset", elem_id="reset")
        with gr.Row():
            with gr.Column():
                source = sketch_canvas(
                    label="Input sketch (upload, then draw or erase)", format="png", image_mode="RGB",
                    brush=gr.Brush(colors=["#000000", "#FFFFFF"], default_size=2), canvas_size=(512, 512),
                    height=440, elem_id="input-image",
                )  # fmt: skip
            with gr.Column():
                edited = gr.Image(label="Edited", type="pil", format="png", interactive=False, height=300,
                                  elem_id="edited-image")  # fmt: skip
                gallery = gr.Gallery(label="Samples (seed under each)", columns=4, height=150, format="png",
                                     object_fit="contain", fit_columns=False, elem_id="gallery")  # fmt: skip
                download = gr.File(label="Download (PNG)", file_count="multiple", interactive=False, height=80,
                                   elem_id="download")  # fmt: skip
        with gr.Row():
            with gr.Column(scale=3):
                with gr.Row():
                    steps = gr.Slider(1, MAX_STEPS, value=defaults.steps, step=1, label="Steps", elem_id="steps")
                    samples = gr.Slider(1, MAX_SAMPLES, value=1, step=1, label="Samples")
                    sampler = gr.Dropdown(list(SAMPLERS), value=defaults.sampler, label="Sampler")
                with gr.Row():
                    seed_mode = gr.Radio([FIX_SEED, RANDOM_SEED], value=FIX_SEED, show_label=False)
                    seed = gr.Number(value=settings.default_seed, precision=0, label="Seed", elem_id="seed")
                    lines = gr.Checkbox(value=False, label="Keep line art (lay the sketch's lines over the colors)")
                with gr.Row():
                    cfg_mode = gr.Radio([FIX_CFG, RANDOM_CFG], value=FIX_CFG, show_label=False)
                    cfg_text = gr.Number(value=defaults.cfg_text, label="Text CFG", elem_id="cfg-text")
                    cfg_image = gr.Number(value=defaults.cfg_image, label="Image CFG", elem_id="cfg-image")
            with gr.Column(scale=2):
                gr.Markdown(TIPS)

        controls = [source, instruction, steps, seed, seed_mode, cfg_text, cfg_image, cfg_mode, sampler, samples,
                    lines]  # fmt: skip
        generate_button.click(
            generate, controls, [edited, gallery, seed, cfg_text, cfg_image, download], api_name="generate"
        )
        instruction.submit(generate, controls, [edited, gallery, seed, cfg_text, cfg_image, download],
                           api_visibility="private")  # fmt: skip
        example_button.click(load_example, [], [source, instruction], api_name="load_example")
        reset_button.click(reset, [], [*controls, edited, gallery, download], api_visibility="private")
    return app


# ---- command line -------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="The browser app: colorize sketches from a text instruction (InstructPix2Pix).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add_weights_arguments(parser)
    add("--resolution", type=int_at_least(1), help="longer side of the edited image in pixels [512, or the config's]")
    add_device_arguments(parser)
    add("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: every interface of this machine)")
    add("--port", type=int_at_least(1), default=7860, help="port to serve on")
    add("--share", action="store_true", help="also open a public gradio.live link (off: nothing leaves the machine)")
    add("--queue-size", type=int_at_least(1), default=16, help="edits that may wait; more are turned away")
    add("--max-pixels", type=int_at_least(1), default=40_000_000, help="refuse inputs with more pixels")
    add("--seed", type=int_at_least(0), default=1371, help="the seed shown at start and after Reset")
    add("--examples-split", choices=("test", "val", "train"), default="test",
        help="OpenMoji split that Load Example draws from (test: sketches the shipped model never saw)")
    return parser


def run(args: argparse.Namespace) -> int:
    """Load the model once, then serve until interrupted."""
    if args.port > 65535:
        raise UsageError(f"--port {args.port}: must be at most 65535")
    model_config, defaults = read_model_config(args.config)
    ckpt = model_weights(args.ckpt, model_config, args.config)
    existing_file("--vae-ckpt", args.vae_ckpt)
    loras = lora_files(args.lora, args.lora_scale)
    try:
        import gradio  # noqa: F401 (checked before the model load)
    except ImportError as err:
        raise UsageError("gradio is not installed: pip install -e '.[app]' (or make setup)") from err
    from ldm.inference import load_editor

    editor = load_editor(model_config, ckpt, args.vae_ckpt, args.device, args.precision, loras)
    options = SamplingOptions(defaults["steps"], defaults["sampler"], False, defaults["cfg_text"],
                              defaults["cfg_image"])  # fmt: skip
    settings = AppSettings(args.resolution or defaults["resolution"], options, args.seed, args.max_pixels,
                           args.examples_split)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="edit_app_") as downloads:
        app = build_ui(EditService(editor, settings, Path(downloads)))
        app.queue(default_concurrency_limit=1, max_size=args.queue_size)
        print(f"{PROG}: serving {ckpt} on http://{args.host}:{args.port} (Ctrl-C stops)", flush=True)
        try:
            app.launch(server_name=args.host, server_port=args.port, share=args.share, show_error=True,
                       max_file_size="50mb", allowed_paths=[downloads], css=CSS)  # fmt: skip
        except OSError as err:  # the port is taken, or the host is not this machine's
            raise UsageError(f"--host {args.host} --port {args.port}: cannot serve there ({err})") from err
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    return run_cli(PROG, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
