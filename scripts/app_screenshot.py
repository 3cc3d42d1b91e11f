"""Use the app in a real browser: start `edit_app.py`, upload a sketch, type, click Generate, screenshot.

    python scripts/app_screenshot.py --out docs/app.png       # the shipped model on a held-out sketch

Chromium is Debian's `chromium` package (`apt-get install -y chromium`), driven by Playwright
(PyPI) through `--chromium`, so no browser is downloaded. The page is used as a person would:
the sketch goes in through the input's file chooser, the instruction is typed, "Randomize seed"
is chosen and Generate clicked; the script waits for the edited image, fetches it from the page,
and reports the seed the page then shows, the gallery's captions and the time from the click to
the image. `tests/test_edit_app.py` runs this script on a tiny model. Arguments after `--` go to
`edit_app.py` (`-- --config my.yaml --ckpt my.ckpt`). The screenshot, result and report are
written atomically; without `--sketch`, a held-out OpenMoji sketch is drawn with `--example-seed`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from ldm.cli import ArgumentParser, UsageError, existing_file, int_at_least, run_cli
from ldm.io import write_bytes_atomic, write_text_atomic

PROG = "app_screenshot.py"
ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
# Without these Chromium keeps dialing Google's services, which a closed network refuses.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_app(app_args: list[str], port: int, log: Path, timeout: float = 300) -> subprocess.Popen:
    """`edit_app.py` on 127.0.0.1:`port`, once it answers HTTP; its output goes to `log`."""
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as out:
        app = subprocess.Popen([sys.executable, str(ROOT / "edit_app.py"), *app_args, "--port", str(port)],
                               stdout=out, stderr=subprocess.STDOUT, env=env)  # fmt: skip
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if app.poll() is not None:
            raise UsageError(f"edit_app.py exited with {app.returncode}: {log.read_text()[-500:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5):
                return app
        except OSError:
            time.sleep(0.5)
    app.kill()
    raise UsageError(f"edit_app.py did not answer on port {port} within {timeout:.0f} s")


def wait_for_result(page: Any, timeout: float) -> Any:
    """The edited image's locator once it shows; RuntimeError with the page's message if an error shows."""
    image, toast = page.locator("#edited-image img"), page.locator("[data-testid=toast-text]")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if image.count():
            return image
        if toast.count():
            raise RuntimeError(f"the page shows an error: {toast.first.inner_text()}")
        page.wait_for_timeout(100)
    raise RuntimeError(f"no edited image after {timeout:.0f} s")


def upload(page: Any, sketch: Path, timeout: float = 240) -> float:
    """Put `sketch` into the input canvas through its file chooser and wait until the canvas shows it.
    Returns the seconds from the page load to the sketch shown. The canvas is PixiJS on WebGL, drawn by
    Chromium's software renderer: on a busy CPU its placeholder shows seconds before PixiJS has made its
    <canvas> elements, and a file chosen in between is dropped for good, so the upload waits for them."""
    start = time.monotonic()
    editor = page.locator("#input-image")
    editor.locator("canvas").first.wait_for(state="attached", timeout=timeout * 1000)
    editor.locator("input[type=file]").set_input_files(str(sketch))
    editor.get_by_text("Upload an image").wait_for(state="hidden", timeout=timeout * 1000)
    return time.monotonic() - start


def use_app(url: str, chromium: str, sketch: Path, instruction: str, screenshot: Path, result: Path) -> dict:
    """Upload, type, randomize the seed, Generate, wait; the screenshot and result are written."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(url)
            upload_seconds = upload(page, sketch)
            page.locator("#instruction textarea").fill(instruction)
            page.get_by_label("Randomize seed").check()
            shown_seed = page.locator("#seed input").input_value()
            page.wait_for_timeout(500)  # the canvas renders the upload before its composite is taken
            start = time.perf_counter()
            page.locator("#generate").click()
            image = wait_for_result(page, timeout=600)
            seconds = time.perf_counter() - start
            page.locator("#gallery img").first.wait_for()
            page.wait_for_function("s => document.querySelector('#seed input').value !== s", arg=shown_seed)
            response = page.request.get(image.get_attribute("src"))
            report = {
                "seconds_click_to_image": round(seconds, 2),
                "seconds_load_to_canvas": round(upload_seconds, 2),
                "seed_before": shown_seed,
                "seed_shown": page.locator("#seed input").input_value(),
                "gallery_captions": page.locator("#gallery .caption-label").all_inner_texts(),
                "instruction": instruction,
                "sketch": str(sketch),
                "result": str(result),
            }
            write_bytes_atomic(result, response.body())
            write_bytes_atomic(screenshot, page.screenshot(full_page=True))
        finally:
            browser.close()
    return report


def example_sketch(seed: int, folder: Path, size: int = 64) -> tuple[Path, str]:
    """A held-out OpenMoji sketch (PNG in `folder`) and its instruction."""
    from dataset_creation.openmoji.examples import HeldOutExamples

    example = HeldOutExamples(size).example(random.Random(seed))
    path = folder / f"{example.code}.png"
    example.sketch.save(path)
    return path, example.instruction


def run(args: argparse.Namespace) -> int:
    if not Path(args.chromium).is_file():
        raise UsageError(f"--chromium {args.chromium}: no such file (apt-get install -y chromium)")
    existing_file("--sketch", args.sketch)
    with tempfile.TemporaryDirectory() as work:
        if args.sketch is None:
            sketch, instruction = example_sketch(args.example_seed, Path(work))
        else:
            sketch, instruction = Path(args.sketch), args.instruction
        instruction = args.instruction or instruction
        if not instruction:
            raise UsageError("--instruction is required with --sketch")
        from playwright.sync_api import Error as PlaywrightError

        port = free_port()
        app = start_app(args.app_args, port, Path(work) / "app.log")
        try:
            report = use_app(f"http://127.0.0.1:{port}/", args.chromium, sketch, instruction, Path(args.out),
                             Path(args.result or Path(args.out).with_name(Path(args.out).stem + "_result.png")))
        except PlaywrightError as err:  # a page that never showed what was waited for: one line, exit 1
            raise RuntimeError(f"the browser: {str(err).splitlines()[0]}") from err
        finally:
            app.terminate()
            app.wait(timeout=30)
    text = json.dumps(report, indent=1)
    if args.report:
        write_text_atomic(args.report, text + "\n")
    print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    app_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="the screenshot (PNG)")
    parser.add_argument("--result", help="the edited image fetched from the page [<out>_result.png]")
    parser.add_argument("--report", help="also write the report (JSON) here")
    parser.add_argument("--sketch", help="the sketch to upload [a held-out OpenMoji sketch]")
    parser.add_argument("--instruction", help="what to type [the example's instruction]")
    parser.add_argument("--example-seed", type=int_at_least(0), default=3, help="which held-out sketch")
    parser.add_argument("--chromium", default=CHROMIUM, help="the browser executable (Debian's chromium package)")
    args = parser.parse_args(argv)
    args.app_args = app_args
    return run_cli(PROG, lambda: run(args), failures=(RuntimeError,))


if __name__ == "__main__":
    sys.exit(main())
