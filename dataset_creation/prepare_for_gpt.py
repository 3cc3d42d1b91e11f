"""Turn human-written edits into fine-tuning data for a language model.

Input: JSONL, one edit a line: {"input": caption, "edit": instruction, "output": edited caption}
(other keys are ignored). Output, in the format of `llm_client.py` that `generate_txt_dataset.py`
reads back:

    --format completion   {"prompt": "<input>\\n##\\n", "completion": " <edit>\\n%%\\n<output>\\nEND"}
    --format chat         {"messages": [system prompt, user: <input>, assistant: "<edit>\\n%%\\n<output>"]}

(completion: OpenAI's legacy prompt/completion files and most open fine-tuning scripts; chat:
OpenAI's current fine-tuning files.) Texts are folded to one line. A line that is not such an
object, or whose edit is unusable (an empty field, output equal to input, a field longer than
--max-chars) is reported as `file:line: reason` and left out; the others are written, and the
exit status is then 1. The output is written to a temporary file and renamed, never half-written.

    python dataset_creation/prepare_for_gpt.py --input data/human-written.jsonl --output data/gpt-train.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from dataset_creation.llm_client import (
    SYSTEM_PROMPT,
    EditTriple,
    completion_prompt,
    format_chat_reply,
    format_completion,
    one_line,
    triple_problem,
)
from ldm.cli import ArgumentParser, UsageError, report_error, run_cli
from ldm.io import atomic_text_writer

PROG = "prepare_for_gpt.py"
FIELDS = ("input", "edit", "output")
DEFAULT_MAX_CHARS = 300  # per text; generate_txt_dataset.py applies the same limit to what the model writes


def read_triples(path: Path, max_chars: int = DEFAULT_MAX_CHARS) -> tuple[list[EditTriple], list[str]]:
    """The usable edits of a human-written JSONL file, and a `file:line: reason` for each line left out."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"{path}: cannot read it ({err})") from err
    triples, problems = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            problems.append(f"{path}:{number}: not JSON ({err.msg})")
            continue
        missing = [k for k in FIELDS if not isinstance(record, dict) or not isinstance(record.get(k), str)]
        if missing:
            problems.append(f"{path}:{number}: needs string fields {', '.join(FIELDS)} ({missing[0]!r} is not one)")
            continue
        triple = EditTriple(*(one_line(record[k]) for k in FIELDS))
        problem = triple_problem(triple, max_chars)
        if problem is not None:
            problems.append(f"{path}:{number}: {problem}")
            continue
        triples.append(triple)
    return triples, problems


def completion_record(triple: EditTriple) -> dict[str, str]:
    return {"prompt": completion_prompt(triple.input), "completion": format_completion(triple.edit, triple.output)}


def chat_record(triple: EditTriple) -> dict[str, list[dict[str, str]]]:
    return {
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": triple.input},
            {"role": "assistant", "content": format_chat_reply(triple.edit, triple.output)},
        ]
    }


def write_jsonl_atomic(path: Path, records: Iterable[dict]) -> None:
    """Write all records as JSON lines to `path`, all or nothing (`ldm.io.atomic_text_writer`)."""
    with atomic_text_writer(path) as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help="human-written JSONL: input, edit, output per line")
    parser.add_argument("--output", required=True, help="fine-tuning JSONL to write")
    parser.add_argument("--format", choices=("completion", "chat"), default="completion", help="record layout")
    parser.add_argument("--max-chars", type=int, default=DEFAULT_MAX_CHARS, help="longest usable text")
    return parser


def run(args: argparse.Namespace) -> int:
    """Convert, reporting each line left out; the number of lines left out."""
    source, target = Path(args.input), Path(args.output)
    if not source.is_file():
        raise UsageError(f"--input {source}: no such file")
    if target.is_dir():
        raise UsageError(f"--output {target}: is a folder; give a file name such as {target / 'gpt-train.jsonl'}")
    if target.resolve() == source.resolve():
        raise UsageError(f"--output {target}: must differ from --input (it would be overwritten)")
    if args.max_chars < 1:
        raise UsageError(f"--max-chars {args.max_chars}: must be at least 1")
    triples, problems = read_triples(source, args.max_chars)
    for problem in problems:
        report_error(PROG, problem)
    if not triples:
        raise UsageError(f"--input {source}: no usable edits (every line was left out)")
    to_record = chat_record if args.format == "chat" else completion_record
    try:
        write_jsonl_atomic(target, map(to_record, triples))
    except OSError as err:
        raise UsageError(f"--output {target}: cannot write it ({err})") from err
    print(f"{target}: {len(triples)} examples ({args.format} format), {len(problems)} lines left out", file=sys.stderr)
    return len(problems)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (1 when lines were left out)."""
    args = build_parser().parse_args(argv)
    return run_cli(PROG, lambda: 1 if run(args) else 0)


if __name__ == "__main__":
    sys.exit(main())
