"""prepare_for_gpt.py: human-written edits -> fine-tuning JSONL in the format generate_txt_dataset.py parses."""

from __future__ import annotations

import json

import pytest

from dataset_creation import prepare_for_gpt as prep
from dataset_creation.llm_client import (
    EDIT_END,
    PROMPT_END,
    STOP,
    EditTriple,
    MalformedReply,
    parse_reply,
)

HUMAN = [
    {"input": "a photo of a cat", "edit": "make it a dog", "output": "a photo of a dog", "url": "ignored"},
    {"input": "a sketch of a house\non a hill", "edit": "  color the roof red ", "output": "a red-roofed house"},
]


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_completion_format_round_trips_through_the_parser(tmp_path):
    source, target = tmp_path / "human.jsonl", tmp_path / "out" / "train.jsonl"
    _write_jsonl(source, HUMAN)
    assert prep.main(["--input", str(source), "--output", str(target)]) == 0
    records = _read_jsonl(target)
    assert records[0] == {
        "prompt": "a photo of a cat" + PROMPT_END,
        "completion": " make it a dog" + EDIT_END + "a photo of a dog" + STOP,
    }
    assert records[1]["prompt"] == "a sketch of a house on a hill" + PROMPT_END  # folded to one line
    parsed = [parse_reply(r["completion"]) for r in records]
    assert parsed == [("make it a dog", "a photo of a dog"), ("color the roof red", "a red-roofed house")]
    assert not list(tmp_path.joinpath("out").glob(".*.tmp"))


def test_chat_format(tmp_path):
    source, target = tmp_path / "human.jsonl", tmp_path / "chat.jsonl"
    _write_jsonl(source, HUMAN[:1])
    assert prep.main(["--input", str(source), "--output", str(target), "--format", "chat"]) == 0
    (record,) = _read_jsonl(target)
    roles = [m["role"] for m in record["messages"]]
    assert roles == ["system", "user", "assistant"]
    assert record["messages"][1]["content"] == "a photo of a cat"
    assert parse_reply(record["messages"][2]["content"]) == ("make it a dog", "a photo of a dog")


def test_bad_lines_are_reported_and_left_out(tmp_path, capsys):
    source, target = tmp_path / "human.jsonl", tmp_path / "train.jsonl"
    lines = [
        json.dumps(HUMAN[0]),
        "{not json",
        json.dumps({"input": "a cat", "edit": "make it a dog"}),
        json.dumps({"input": "a cat", "edit": "keep it", "output": "A cat"}),
        json.dumps({"input": "a cat", "edit": "", "output": "a dog"}),
        json.dumps({"input": "a cat", "edit": "x" * 50, "output": "a dog"}),
    ]
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert prep.main(["--input", str(source), "--output", str(target), "--max-chars", "40"]) == 1
    errors = capsys.readouterr().err.splitlines()
    reasons = [line for line in errors if line.startswith("prepare_for_gpt.py: error:")]
    assert [r.split(f"{source}:")[1].split(":")[0] for r in reasons] == ["2", "3", "4", "5", "6"]
    assert "output equals input" in reasons[2] and "empty edit" in reasons[3] and "longer than 40" in reasons[4]
    assert len(_read_jsonl(target)) == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--input", "{tmp}/missing.jsonl"], "no such file"),
        (["--input", "{tmp}/empty.jsonl"], "no usable edits"),
        (["--input", "{tmp}/human.jsonl", "--output", "{tmp}"], "is a folder"),
    ],
)
def test_usage_errors_are_one_line(tmp_path, capsys, args, message):
    _write_jsonl(tmp_path / "human.jsonl", HUMAN)
    (tmp_path / "empty.jsonl").write_text("\n", encoding="utf-8")
    argv = [a.format(tmp=tmp_path) for a in args]
    if "--output" not in argv:
        argv += ["--output", str(tmp_path / "out.jsonl")]
    assert prep.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("prepare_for_gpt.py: error:") and message in err[0]


@pytest.mark.parametrize(
    "reply, expected",
    [
        (" make it red\n%%\na red car\nEND", ("make it red", "a red car")),
        ("make it red\n %% \na red car", ("make it red", "a red car")),  # chat reply, spaces around the mark
        ("make it\nred\n%%\na red car\nEND\nmore text", ("make it red", "a red car")),
        ("make it red, a red car", "no %% line"),
        ("a\n%%\nb\n%%\nc", "several %% lines"),
    ],
)
def test_parse_reply(reply, expected):
    if isinstance(expected, tuple):
        assert parse_reply(reply) == expected
    else:
        with pytest.raises(MalformedReply, match=expected):
            parse_reply(reply)


def test_read_triples_folds_whitespace(tmp_path):
    source = tmp_path / "human.jsonl"
    _write_jsonl(source, HUMAN)
    triples, problems = prep.read_triples(source)
    assert problems == []
    assert triples[1] == EditTriple("a sketch of a house on a hill", "color the roof red", "a red-roofed house")
