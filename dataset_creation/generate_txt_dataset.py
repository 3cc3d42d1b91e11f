"""Write (caption, instruction, edited caption) triples with a language model.

Stage one of the InstructPix2Pix data pipeline: for each input caption, ask a language model
(fine-tuned on `prepare_for_gpt.py` output, or a chat model given a few examples) for an edit
instruction and the caption after the edit, check the reply, and append it to a JSONL file:

    {"id": ..., "input": caption, "edit": instruction, "output": edited caption, "model": ...}

Input: a text file with one caption a line, or a `.jsonl` file of objects holding the caption
under --caption-key ("caption") and, optionally, an "id" (string or integer). Captions are folded
to one line; identical captions (and repeated ids) are asked once.

Ids: the "id" field when there is one, else the first 16 hex digits of the SHA-256 of the
caption text, so an id never depends on line numbers or on the order of the file.

Selection, the same in every partition: captions longer than --max-chars are left out;
--limit N keeps the N captions whose ids hash lowest (SHA-256), a stable pseudo-random sample;
`--partitions N --partition i` then keeps the ids whose hash mod N is i. The N partitions
are disjoint and together hold exactly the captions of an unpartitioned run. Give each
partition its own --output file.

Resuming: ids already in --output are skipped. Each triple is appended as one complete line and
flushed; a last line cut short by a killed run is removed (and reported) before the run goes on.
Replies that do not parse (no `%%` line, cut off at --max-tokens) or do not check out (an empty
field, output equal to input, longer than --max-chars) are counted as malformed and not written;
requests that still fail after their retries are counted as failed. Both are asked again by the
next run. The summary at the end counts written, already done, malformed (by reason) and failed;
the exit status is 1 when requests failed (run again to finish), or for a mistake in the arguments
or files, reported in one line.

Backends (see `llm_client.py`):
- `--backend openai`: an OpenAI-compatible server (OpenAI, vLLM, llama.cpp, ...): `--base-url`
  (default: $OPENAI_BASE_URL, else https://api.openai.com/v1), `--model`, `--api completions|chat`.
  The key is read from $OPENAI_API_KEY; it must be set unless the server is on this machine
  (localhost, 127.0.0.1, ::1). `--workers` requests at once, `--requests-per-minute` across them.
- `--backend local`: a transformers causal LM folder (`--model-path`), never a hub id.

    python dataset_creation/generate_txt_dataset.py --input captions.txt --output data/edits.jsonl \\
        --model ft:davinci-002:me::abc123
    python dataset_creation/generate_txt_dataset.py --input captions.jsonl --output data/edits-3.jsonl \\
        --backend local --model-path models/edit-gpt --partitions 8 --partition 3
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import ipaddress
import json
import os
import sys
import urllib.parse
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from dataset_creation import prepare_for_gpt
from dataset_creation.llm_client import (
    BackendError,
    EditTriple,
    LocalBackend,
    MalformedReply,
    OpenAIBackend,
    Reply,
    RequestFailed,
    one_line,
    parse_reply,
    triple_problem,
)
from ldm.cli import ArgumentParser, UsageError, finite_float, run_cli

PROG = "generate_txt_dataset.py"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
# Shown to a chat model when --examples is not given (a fine-tuned completion model needs none).
CHAT_EXAMPLES = (
    EditTriple(
        "a pencil sketch of a cat sleeping on a chair",
        "color it as a ginger cat on a blue chair",
        "a colored drawing of a ginger cat sleeping on a blue chair",
    ),
    EditTriple(
        "a watercolor painting of a lighthouse on a cliff",
        "make it night with a full moon",
        "a watercolor painting of a lighthouse on a cliff at night under a full moon",
    ),
)
PRECISIONS = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


@dataclass(frozen=True)
class Caption:
    id: str
    text: str


@dataclass
class Stats:
    """What a run did; `selected` = captions of this partition, of which `already_done` were skipped."""

    captions: int = 0
    repeats: int = 0
    too_long: int = 0
    selected: int = 0
    already_done: int = 0
    written: int = 0
    failed: int = 0
    malformed: Counter = field(default_factory=Counter)
    truncated_line: bool = False


# ---- captions and selection ---------------------------------------------------------------------
def caption_id(text: str) -> str:
    """The id of a caption without one: 16 hex digits of the SHA-256 of its (one-line) text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def id_hash(caption_id: str) -> int:
    """A stable 64-bit hash of an id (sampling and partitions; Python's hash() changes per process)."""
    return int.from_bytes(hashlib.sha256(caption_id.encode("utf-8")).digest()[:8], "big")


def _jsonl_caption(record: Any, key: str, where: str) -> tuple[str | None, str]:
    """(explicit id or None, caption text) of one JSONL record."""
    if not isinstance(record, dict) or not isinstance(record.get(key), str):
        raise UsageError(f"{where}: needs a string {key!r} field (the caption; see --caption-key)")
    given = record.get("id")
    if given is not None and (isinstance(given, bool) or not isinstance(given, (str, int))):
        raise UsageError(f"{where}: 'id' must be a string or an integer, not {type(given).__name__}")
    return (None if given is None else str(given)), record[key]


def read_captions(path: Path, caption_key: str = "caption") -> tuple[list[Caption], int]:
    """Distinct captions of a text or JSONL file in file order, and the number of repeats dropped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"--input {path}: cannot read it ({err})") from err
    jsonl = path.suffix.lower() == ".jsonl"
    captions: dict[str, Caption] = {}
    first_line: dict[str, int] = {}
    repeats = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        if jsonl:
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise UsageError(f"{where}: not JSON ({err.msg})") from err
            given, text = _jsonl_caption(record, caption_key, where)
        else:
            given, text = None, line
        text = one_line(text)
        if not text:
            continue
        cid = given if given is not None else caption_id(text)
        if cid in captions:
            if captions[cid].text != text:
                raise UsageError(f"{where}: id {cid!r} is also the id of line {first_line[cid]}, another caption")
            repeats += 1
            continue
        captions[cid] = Caption(cid, text)
        first_line[cid] = number
    return list(captions.values()), repeats


def select(captions: Sequence[Caption], limit: int | None, partitions: int, partition: int) -> list[Caption]:
    """The captions of one partition (file order): the `limit` lowest id hashes overall, then hash mod N == i."""
    if limit is not None:
        keep = {c.id for c in sorted(captions, key=lambda c: id_hash(c.id))[:limit]}
        captions = [c for c in captions if c.id in keep]
    return [c for c in captions if id_hash(c.id) % partitions == partition]


# ---- output -------------------------------------------------------------------------------------
class OutputFailed(Exception):
    """Writing --output failed (a full disk); the lines written before are kept."""


def read_done(path: Path) -> tuple[set[str], bool]:
    """Ids already written to `path`, and whether a cut-short last line had to be removed first."""
    if not path.exists():
        return set(), False
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    truncated = end < len(data)
    if truncated:  # a run killed mid-write: drop the partial line so the next one starts clean
        with open(path, "r+b") as f:
            f.truncate(end)
    done = set()
    for number, line in enumerate(data[:end].split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            done.add(str(json.loads(line)["id"]))
        except (ValueError, KeyError, TypeError) as err:
            raise UsageError(f"--output {path}:{number}: not a line this script writes (JSON with an id)") from err
    return done, truncated


def append_record(out: IO[str], record: dict[str, str]) -> None:
    """One complete line, flushed: a killed run leaves at most a partial last line, which read_done removes."""
    out.write(json.dumps(record, ensure_ascii=False) + "\n")
    out.flush()


def to_triple(caption: Caption, reply: Reply, max_chars: int) -> EditTriple:
    """The checked triple of a reply; MalformedReply says why it is unusable."""
    if not reply.complete:
        raise MalformedReply("cut off at --max-tokens")
    edit, output = parse_reply(reply.text)
    triple = EditTriple(caption.text, edit, output)
    problem = triple_problem(triple, max_chars)
    if problem is not None:
        raise MalformedReply(problem)
    return triple


# ---- the run ------------------------------------------------------------------------------------
def replies_in_order(backend: Any, captions: Sequence[Caption]) -> Iterator[tuple[list[Caption], Future]]:
    """Chunks of `backend.batch_size` captions with the future of their replies, in input order.

    `backend.workers` calls run at once; at most 4 x workers chunks are queued ahead, and those
    not started are cancelled when the caller stops early.
    """
    size = backend.batch_size
    chunks = (list(captions[i : i + size]) for i in range(0, len(captions), size))
    window = 4 * backend.workers
    with ThreadPoolExecutor(backend.workers) as pool:
        pending: deque[tuple[list[Caption], Future]] = deque()
        try:
            for chunk in chunks:
                pending.append((chunk, pool.submit(backend.complete, [c.text for c in chunk])))
                if len(pending) >= window:
                    yield pending.popleft()
            while pending:
                yield pending.popleft()
        finally:
            for _, future in pending:
                future.cancel()


def generate(
    backend: Any, todo: Sequence[Caption], out: IO[str], model_name: str, max_chars: int, stats: Stats, progress: bool
) -> None:
    """Ask for every caption of `todo`, appending the usable triples to `out` and counting the rest."""
    with (
        tqdm(total=len(todo), unit="caption", disable=None if progress else True, dynamic_ncols=True) as bar,
        contextlib.closing(replies_in_order(backend, todo)) as results,
    ):
        for chunk, future in results:
            bar.update(len(chunk))
            try:
                replies = future.result()
            except RequestFailed as err:
                stats.failed += len(chunk)
                tqdm.write(f"{PROG}: failed: {chunk[0].id}: {one_line(str(err))}", file=sys.stderr)
                continue
            for caption, reply in zip(chunk, replies, strict=True):
                try:
                    triple = to_triple(caption, reply, max_chars)
                except MalformedReply as err:
                    stats.malformed[str(err)] += 1
                    continue
                append_record(out, {"id": caption.id, **asdict(triple), "model": model_name})
                stats.written += 1
            bar.set_postfix(written=stats.written, malformed=sum(stats.malformed.values()), failed=stats.failed)


# ---- arguments ----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    io_ = parser.add_argument_group("captions and output")
    io_.add_argument("--input", required=True, help="captions: a text file (one a line) or a .jsonl file")
    io_.add_argument("--output", required=True, help="JSONL file the triples are appended to (resumable)")
    io_.add_argument("--caption-key", default="caption", help="JSONL field holding the caption")
    io_.add_argument("--limit", type=int, default=None, help="only the N captions with the lowest id hash")
    io_.add_argument("--partitions", type=int, default=1, help="split the captions into N parts by id hash")
    io_.add_argument("--partition", type=int, default=0, help="the part to run, 0 to N-1")
    io_.add_argument(
        "--max-chars", type=int, default=prepare_for_gpt.DEFAULT_MAX_CHARS, help="longest usable caption or edit"
    )
    io_.add_argument("--examples", default=None, help="human-written JSONL (input, edit, output) shown as examples")
    io_.add_argument("--no-progress", action="store_true", help="no progress bar")
    model = parser.add_argument_group("language model")
    model.add_argument("--backend", choices=("openai", "local"), default="openai", help="HTTP API or local folder")
    model.add_argument("--api", choices=("completions", "chat"), default="completions", help="prompt style")
    model.add_argument("--temperature", type=finite_float, default=0.7, help="sampling temperature; 0: greedy")
    model.add_argument("--top-p", type=finite_float, default=1.0, help="nucleus sampling mass")
    model.add_argument("--max-tokens", type=int, default=128, help="tokens per reply")
    http = parser.add_argument_group("--backend openai")
    http.add_argument("--model", default=None, help="model name on the server")
    http.add_argument(
        "--base-url",
        default=os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL,
        help=f"API root (default: $OPENAI_BASE_URL, else {DEFAULT_BASE_URL})",
    )
    http.add_argument("--timeout", type=finite_float, default=60.0, help="seconds to wait for a response")
    http.add_argument("--max-retries", type=int, default=5, help="retries of a request (429, 5xx, timeouts)")
    http.add_argument("--backoff", type=finite_float, default=1.0,
        help="first retry delay in seconds, doubled each time")
    http.add_argument("--requests-per-minute", type=finite_float, default=None, help="rate limit over all workers")
    http.add_argument("--workers", type=int, default=4, help="requests at once")
    local = parser.add_argument_group("--backend local")
    local.add_argument("--model-path", default=None, help="transformers causal LM folder (config, weights, tokenizer)")
    local.add_argument("--batch-size", type=int, default=8, help="captions per generate call")
    local.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    local.add_argument("--precision", choices=("auto", *PRECISIONS), default="auto", help="auto: bf16 on GPUs")
    local.add_argument("--seed", type=int, default=0, help="sampling seed")
    return parser


def check_args(args: argparse.Namespace) -> None:
    """UsageError for the first impossible value."""
    rules = [
        ("--partitions", args.partitions, args.partitions >= 1, "must be at least 1"),
        ("--partition", args.partition, 0 <= args.partition < args.partitions, f"must be 0 to {args.partitions - 1}"),
        ("--limit", args.limit, args.limit is None or args.limit >= 1, "must be at least 1"),
        ("--max-chars", args.max_chars, args.max_chars >= 1, "must be at least 1"),
        ("--temperature", args.temperature, args.temperature >= 0, "must be 0 or more"),
        ("--top-p", args.top_p, 0 < args.top_p <= 1, "must be in (0, 1]"),
        ("--max-tokens", args.max_tokens, args.max_tokens >= 1, "must be at least 1"),
        ("--timeout", args.timeout, args.timeout > 0, "must be positive"),
        ("--max-retries", args.max_retries, args.max_retries >= 0, "must be 0 or more"),
        ("--backoff", args.backoff, args.backoff >= 0, "must be 0 or more"),
        ("--requests-per-minute", args.requests_per_minute, (args.requests_per_minute or 1) > 0, "must be positive"),
        ("--workers", args.workers, args.workers >= 1, "must be at least 1"),
        ("--batch-size", args.batch_size, args.batch_size >= 1, "must be at least 1"),
    ]
    for flag, value, ok, requirement in rules:
        if not ok:
            raise UsageError(f"{flag} {value}: {requirement}")
    if args.backend == "openai" and not args.model:
        raise UsageError("--model is required with --backend openai: the model name on the server")
    if args.backend == "local" and not args.model_path:
        raise UsageError("--model-path is required with --backend local: the folder of a transformers causal LM")
    if args.backend == "local" and not Path(args.model_path).is_dir():
        raise UsageError(f"--model-path {args.model_path}: no such folder")


def is_loopback(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def openai_backend(args: argparse.Namespace, examples: Sequence[EditTriple]) -> OpenAIBackend:
    url = args.base_url
    if urllib.parse.urlsplit(url).scheme not in ("http", "https") or not urllib.parse.urlsplit(url).hostname:
        raise UsageError(f"--base-url {url}: not an http(s) URL such as {DEFAULT_BASE_URL}")
    key = os.environ.get("OPENAI_API_KEY")
    if not key and not is_loopback(url):
        raise UsageError(f"OPENAI_API_KEY is not set: export the API key of {url} (any value if the server needs none)")
    return OpenAIBackend(
        url,
        args.model,
        api=args.api,
        api_key=key,
        examples=examples,
        temperature=args.temperature,
        top_p=args.top_p,
        max_tokens=args.max_tokens,
        timeout=args.timeout,
        max_retries=args.max_retries,
        backoff=args.backoff,
        requests_per_minute=args.requests_per_minute,
        workers=args.workers,
    )


def local_backend(args: argparse.Namespace, examples: Sequence[EditTriple]) -> LocalBackend:
    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: no CUDA GPU is available")
    precision = args.precision
    if precision == "auto":
        precision = "bf16" if device.startswith("cuda") and torch.cuda.is_bf16_supported() else "fp32"
    return LocalBackend(
        args.model_path,
        api=args.api,
        examples=examples,
        device=device,
        dtype=PRECISIONS[precision],
        batch_size=args.batch_size,
        temperature=args.temperature,
        top_p=args.top_p,
        max_tokens=args.max_tokens,
        seed=args.seed,
    )


def read_examples(args: argparse.Namespace) -> tuple[EditTriple, ...]:
    """--examples, else the built-in ones for a chat model, else none."""
    if args.examples is None:
        return CHAT_EXAMPLES if args.api == "chat" else ()
    path = Path(args.examples)
    if not path.is_file():
        raise UsageError(f"--examples {path}: no such file")
    try:
        triples, problems = prepare_for_gpt.read_triples(path, args.max_chars)
    except UsageError as err:  # an unreadable file
        raise UsageError(f"--examples {err}") from err
    if problems:
        raise UsageError(f"--examples {problems[0]}")
    if not triples:
        raise UsageError(f"--examples {path}: the file holds no examples")
    return tuple(triples)


def run(args: argparse.Namespace) -> Stats:
    """Check the arguments and files, then generate; the counts of what happened."""
    check_args(args)
    source, target = Path(args.input), Path(args.output)
    if not source.is_file():
        raise UsageError(f"--input {source}: no such file")
    if target.is_dir():
        raise UsageError(f"--output {target}: is a folder; give a file name such as {target / 'edits.jsonl'}")
    if target.exists() and target.resolve() == source.resolve():
        raise UsageError(f"--output {target}: must differ from --input")
    examples = read_examples(args)
    stats = Stats()
    captions, stats.repeats = read_captions(source, args.caption_key)
    stats.captions = len(captions)
    if not captions:
        raise UsageError(f"--input {source}: no captions in the file")
    short = [c for c in captions if len(c.text) <= args.max_chars]
    stats.too_long = len(captions) - len(short)
    selected = select(short, args.limit, args.partitions, args.partition)
    stats.selected = len(selected)
    done, stats.truncated_line = read_done(target)
    if stats.truncated_line:
        tqdm.write(f"{PROG}: {target}: removed a last line cut short by an interrupted run", file=sys.stderr)
    todo = [c for c in selected if c.id not in done]
    stats.already_done = stats.selected - len(todo)
    if not todo:
        return stats
    backend = openai_backend(args, examples) if args.backend == "openai" else local_backend(args, examples)
    model_name = args.model if args.backend == "openai" else Path(args.model_path).name
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "a", encoding="utf-8") as out:
            generate(backend, todo, out, model_name, args.max_chars, stats, progress=not args.no_progress)
    except OSError as err:  # a full disk: the complete lines stay, a cut-short last one is removed
        if target.is_file():
            read_done(target)
        raise OutputFailed(
            f"--output {target}: {err.strerror or err}; the {stats.written} lines written by this run are kept: "
            "free space and run again to go on"
        ) from err
    return stats


def summary(args: argparse.Namespace, stats: Stats) -> str:
    malformed = sum(stats.malformed.values())
    reasons = ", ".join(f"{reason}: {n}" for reason, n in stats.malformed.most_common())
    part = f"partition {args.partition} of {args.partitions}: " if args.partitions > 1 else ""
    return (
        f"{args.output}: {part}{stats.selected} captions, {stats.written} written, {stats.already_done} already done, "
        f"{malformed} malformed{f' ({reasons})' if reasons else ''}, {stats.failed} failed requests"
        f"{' (run again to retry them)' if stats.failed else ''}; input: {stats.captions} distinct captions, "
        f"{stats.repeats} repeats, {stats.too_long} longer than --max-chars"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (1 when requests failed: run again)."""
    args = build_parser().parse_args(argv)

    def generate_and_summarize() -> int:
        stats = run(args)
        print(summary(args, stats), file=sys.stderr)
        return 1 if stats.failed else 0

    interrupted = "interrupted (the lines written so far are kept; run again to go on)"
    return run_cli(PROG, generate_and_summarize, failures=(BackendError, OutputFailed), interrupted=interrupted)


if __name__ == "__main__":
    sys.exit(main())
