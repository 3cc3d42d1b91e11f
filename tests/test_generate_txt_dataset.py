"""generate_txt_dataset.py against a scripted OpenAI-API server on loopback, and a tiny local model.

The server answers each caption by a script, one action per attempt (after the script: a good
completion): a 429 with `Retry-After: 0`, a 503, a reply slower than the client's timeout, a
reply without the `%%` line, an unchanged caption, a reply cut off at the token limit, a
non-JSON body, a 401.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from dataset_creation import generate_txt_dataset as gtd
from dataset_creation.llm_client import (
    PROMPT_END,
    STOP,
    BackendError,
    OpenAIBackend,
    RateLimiter,
    RequestFailed,
    backoff_delay,
    parse_retry_after,
)

SLOW_SECONDS = 1.5  # a "slow" reply; the runs below time out after 0.5 s
RUN_ARGS = ["--no-progress", "--model", "test-model", "--timeout", "0.5", "--max-retries", "3", "--backoff", "0.01"]


def good_reply(caption: str) -> str:
    return f" make it blue\n%%\n{caption} in blue"


class FakeOpenAI:
    """An OpenAI-API server on 127.0.0.1 (a random port) that follows `script`; records every request."""

    def __init__(self, script: dict[str, list[str]] | None = None) -> None:
        self.script = script or {}
        self.requests: list[dict] = []
        self.attempts: Counter = Counter()
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.server.handle_error = lambda request, address: None  # the client hung up on a slow reply
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def captions_asked(self) -> list[str]:
        return [r["caption"] for r in self.requests]

    def action(self, caption: str) -> str:
        with self.lock:
            attempt = self.attempts[caption]
            self.attempts[caption] += 1
        steps = self.script.get(caption, [])
        return steps[attempt] if attempt < len(steps) else "good"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for key, value in {"Content-Type": "application/json", **(headers or {})}.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
                self._send(status, json.dumps({"error": {"message": message}}).encode(), headers)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                chat = self.path == "/v1/chat/completions"
                if chat:
                    caption = body["messages"][-1]["content"]
                else:
                    caption = body["prompt"].removesuffix(PROMPT_END).rsplit("\n", 1)[-1]
                with fake.lock:
                    fake.requests.append(
                        {"path": self.path, "body": body, "headers": dict(self.headers), "caption": caption}
                    )
                action = fake.action(caption)
                if action == "429":
                    return self._error(429, "slow down", {"Retry-After": "0"})
                if action in ("503", "401"):
                    return self._error(int(action), f"status {action}")
                if action == "notjson":
                    return self._send(200, b"<html>hello</html>")
                if action == "slow":
                    time.sleep(SLOW_SECONDS)
                text = {
                    "malformed": "make it blue, a blue thing",
                    "same": f" keep it\n%%\n{caption}",
                }.get(action, good_reply(caption))
                finish = "length" if action == "length" else "stop"
                if chat:
                    choice = {"index": 0, "message": {"role": "assistant", "content": text.strip()}}
                else:
                    choice = {"index": 0, "text": text, "logprobs": None}
                self._send(200, json.dumps({"object": "x", "choices": [{**choice, "finish_reason": finish}]}).encode())

        return Handler


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def run(server, source, target, *extra):
    args = gtd.build_parser().parse_args(
        ["--input", str(source), "--output", str(target), "--base-url", server.url, *RUN_ARGS, *extra]
    )
    return gtd.run(args)


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")


def test_http_run_retries_skips_malformed_and_resumes(tmp_path):
    """Acceptance 1: 429 + Retry-After, a timeout, malformed replies; valid JSONL; a rerun adds nothing twice."""
    captions = ["a red car", "a slow boat", "a garbled cat", "an unchanged dog", "a good tree", "a busy bus", "a long"]
    script = {
        "a red car": ["429"],
        "a slow boat": ["slow"],
        "a garbled cat": ["malformed"] * 9,
        "an unchanged dog": ["same"] * 9,
        "a busy bus": ["503"] * 4,  # 1 try + 3 retries: failed in the first run, fine in the second
        "a long": ["length"] * 9,
    }
    source, target = tmp_path / "captions.txt", tmp_path / "out" / "edits.jsonl"
    source.write_text("\n".join(captions + ["a red car", ""]) + "\n", encoding="utf-8")
    with FakeOpenAI(script) as server:
        first = run(server, source, target, "--workers", "3")
        assert first.repeats == 1 and first.selected == 7
        assert (first.written, first.failed) == (3, 1)
        assert first.malformed == {"no %% line": 1, "output equals input": 1, "cut off at --max-tokens": 1}
        assert server.attempts["a red car"] == 2  # the 429, then the retry right away (Retry-After: 0)
        assert server.attempts["a slow boat"] >= 2  # timed out once, then answered
        records = read_jsonl(target)
        assert {r["input"] for r in records} == {"a red car", "a slow boat", "a good tree"}
        for r in records:
            assert set(r) == {"id", "input", "edit", "output", "model"}
            assert r["id"] == gtd.caption_id(r["input"]) and r["edit"] == "make it blue"
            assert r["output"] == r["input"] + " in blue" and r["model"] == "test-model"
        request = server.requests[0]
        assert request["headers"]["Authorization"] == "Bearer test-key"
        assert request["body"]["stop"] == [STOP] and request["body"]["model"] == "test-model"

        second = run(server, source, target)
        assert (second.already_done, second.written, second.failed) == (3, 1, 0)
        after_second = target.read_text(encoding="utf-8")

        server.requests.clear()
        third = run(server, source, target)
        assert third.written == 0 and third.already_done == 4
        assert sorted(server.captions_asked()) == ["a garbled cat", "a long", "an unchanged dog"]
    assert target.read_text(encoding="utf-8") == after_second
    ids = [r["id"] for r in read_jsonl(target)]
    assert len(ids) == len(set(ids)) == 4


def test_cli_exit_status_and_summary(tmp_path, capsys):
    source, target = tmp_path / "captions.txt", tmp_path / "edits.jsonl"
    source.write_text("a red car\na busy bus\n", encoding="utf-8")
    with FakeOpenAI({"a busy bus": ["503"] * 4}) as server:
        argv = ["--input", str(source), "--output", str(target), "--base-url", server.url, *RUN_ARGS]
        assert gtd.main(argv) == 1  # a failed request: run again
        err = capsys.readouterr().err
        assert "failed:" in err and "HTTP 503" in err
        assert "1 written, 0 already done, 0 malformed, 1 failed requests (run again" in err
        assert gtd.main(argv) == 0
        assert "1 written, 1 already done" in capsys.readouterr().err


def test_partitions_together_are_one_run(tmp_path):
    """Acceptance 6: three partitions hold exactly the items of one unpartitioned run, without overlap."""
    source = tmp_path / "captions.jsonl"
    lines = [{"id": i, "caption": f"a drawing of object {i}"} for i in range(40)]
    lines += [{"caption": f"an untagged photo {i}"} for i in range(20)]
    source.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    for limit in ([], ["--limit", "25"]):
        with FakeOpenAI() as server:
            run(server, source, tmp_path / "whole.jsonl", *limit)
            for i in range(3):
                run(server, source, tmp_path / f"part{i}.jsonl", *limit, "--partitions", "3", "--partition", str(i))
        whole = read_jsonl(tmp_path / "whole.jsonl")
        parts = [read_jsonl(tmp_path / f"part{i}.jsonl") for i in range(3)]
        assert len(whole) == (25 if limit else 60)
        assert all(parts) and sum(map(len, parts)) == len(whole)
        ids = [{r["id"] for r in p} for p in parts]
        assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
        as_text = lambda r: json.dumps(r, sort_keys=True)  # noqa: E731
        assert sorted(map(as_text, whole)) == sorted(as_text(r) for p in parts for r in p)
        for path in tmp_path.glob("*.jsonl"):
            if path != source:
                path.unlink()


def test_cut_short_last_line_is_removed_and_redone(tmp_path, capsys):
    source, target = tmp_path / "captions.txt", tmp_path / "edits.jsonl"
    source.write_text("a red car\na blue boat\na green tree\n", encoding="utf-8")
    with FakeOpenAI() as server:
        run(server, source, target)
        complete = target.read_bytes()
        target.write_bytes(complete[:-20])  # killed in the middle of the last line
        stats = run(server, source, target)
    assert stats.truncated_line and (stats.already_done, stats.written) == (2, 1)
    assert target.read_bytes() == complete
    assert "removed a last line cut short" in capsys.readouterr().err


def test_chat_api_sends_system_prompt_and_examples(tmp_path):
    source, target = tmp_path / "captions.txt", tmp_path / "edits.jsonl"
    source.write_text("a red car\n", encoding="utf-8")
    with FakeOpenAI() as server:
        stats = run(server, source, target, "--api", "chat")
    assert stats.written == 1
    (request,) = server.requests
    assert request["path"] == "/v1/chat/completions"
    roles = [m["role"] for m in request["body"]["messages"]]
    assert roles == ["system"] + ["user", "assistant"] * len(gtd.CHAT_EXAMPLES) + ["user"]
    assert read_jsonl(target)[0]["output"] == "a red car in blue"


def test_examples_file_goes_into_a_completion_prompt(tmp_path):
    source, target, examples = tmp_path / "captions.txt", tmp_path / "edits.jsonl", tmp_path / "human.jsonl"
    source.write_text("a red car\n", encoding="utf-8")
    examples.write_text(json.dumps({"input": "a cat", "edit": "make it a dog", "output": "a dog"}) + "\n")
    with FakeOpenAI() as server:
        run(server, source, target, "--examples", str(examples))
    prompt = server.requests[0]["body"]["prompt"]
    assert prompt == "a cat\n##\n make it a dog\n%%\na dog\nEND\na red car\n##\n"


@pytest.mark.parametrize("action, message", [("401", "HTTP 401 (status 401)"), ("notjson", "failed:")])
def test_server_errors(tmp_path, capsys, action, message):
    source, target = tmp_path / "captions.txt", tmp_path / "edits.jsonl"
    source.write_text("a red car\n", encoding="utf-8")
    with FakeOpenAI({"a red car": [action]}) as server:
        argv = ["--input", str(source), "--output", str(target), "--base-url", server.url, *RUN_ARGS]
        assert gtd.main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    if action == "401":
        assert err.strip().splitlines() == [
            f"generate_txt_dataset.py: error: {server.url}/completions: HTTP 401 (status 401)"
        ]


@pytest.mark.parametrize(
    "content, extra, message",
    [
        ("a cat\n", ["--partitions", "3", "--partition", "3"], "--partition 3: must be 0 to 2"),
        ("a cat\n", ["--base-url", "https://api.example.com/v1", "--no-key"], "OPENAI_API_KEY is not set"),
        ("a cat\n", ["--base-url", "ftp://x"], "not an http(s) URL"),
        ('{"caption": "a cat"}\n{"text": "a dog"}\n', [], ":2: needs a string 'caption' field"),
        ('{"id": 1, "caption": "a cat"}\n{"id": "1", "caption": "a dog"}\n', [], "also the id of line 1"),
        ("a cat\n", ["--examples", "{tmp}/captions.txt"], "--examples " + "{tmp}/captions.txt:1: not JSON"),
        ("a cat\n", ["--backend", "local"], "--model-path is required"),
        ("a cat\n", ["--backend", "local", "--model-path", "{tmp}/nothing"], "no such folder"),
    ],
)
def test_usage_errors_are_one_line(tmp_path, capsys, monkeypatch, content, extra, message):
    source = tmp_path / ("captions.jsonl" if content.startswith("{") else "captions.txt")
    source.write_text(content, encoding="utf-8")
    if "--no-key" in extra:
        monkeypatch.delenv("OPENAI_API_KEY")
        extra = [e for e in extra if e != "--no-key"]
    argv = ["--input", str(source), "--output", str(tmp_path / "o.jsonl"), "--model", "m", "--no-progress"]
    assert gtd.main(argv + [e.format(tmp=tmp_path) for e in extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("generate_txt_dataset.py: error:"), err
    assert message.format(tmp=tmp_path) in err[0]


def test_ids_and_selection(tmp_path):
    source = tmp_path / "c.jsonl"
    source.write_text('{"id": 7, "caption": "a  cat\\n on a mat"}\n{"caption": "a dog"}\n{"caption": "a dog"}\n')
    captions, repeats = gtd.read_captions(source)
    assert repeats == 1
    assert captions == [gtd.Caption("7", "a cat on a mat"), gtd.Caption(gtd.caption_id("a dog"), "a dog")]
    assert gtd.caption_id("a dog") == "7dbdf68ac0bb3482"  # stable across processes and versions
    many = [gtd.Caption(str(i), f"c{i}") for i in range(100)]
    sample = gtd.select(many, 10, 1, 0)
    assert len(sample) == 10 and sample == gtd.select(list(reversed(many)), 10, 1, 0)[::-1]


def test_backoff_honors_retry_after_without_waiting():
    sleeps: list[float] = []
    with FakeOpenAI({"a cat": ["429", "503", "503"]}) as server:
        backend = OpenAIBackend(server.url, "m", sleep=sleeps.append, backoff=2.0, rng=random.Random(0))
        (reply,) = backend.complete(["a cat"])
    assert reply.text == good_reply("a cat") and reply.complete
    assert sleeps[0] == 0.0  # Retry-After: 0
    assert 2.0 <= sleeps[1] < 4.0 and 4.0 <= sleeps[2] < 8.0  # attempts 1 and 2: base * 2^attempt * [0.5, 1)
    with FakeOpenAI({"a cat": ["503"] * 3}) as server:
        with pytest.raises(RequestFailed, match="gave up after 3 attempts"):
            OpenAIBackend(server.url, "m", max_retries=2, sleep=sleeps.append).complete(["a cat"])
    with FakeOpenAI({"a cat": ["401"]}) as server:
        with pytest.raises(BackendError, match="HTTP 401"):
            OpenAIBackend(server.url, "m", sleep=sleeps.append).complete(["a cat"])


def test_retry_after_and_rate_limiter():
    assert parse_retry_after("3") == 3.0 and parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=lambda: 1445412480.0) == 10.0
    assert parse_retry_after("99999") == 600.0 and parse_retry_after("nan") is None
    assert all(1.0 <= backoff_delay(1, 1.0, random.Random(s)) < 2.0 for s in range(20))
    assert backoff_delay(30, 1.0, random.Random(0)) <= 60.0
    sleeps: list[float] = []
    limiter = RateLimiter(120, clock=lambda: 100.0, sleep=sleeps.append)  # a frozen clock: every slot queues
    for _ in range(3):
        limiter.wait()
    assert sleeps == [0.5, 1.0]


# ---- local backend: a tiny random GPT-2 and a tokenizer trained here ----------------------------
@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    torch = pytest.importorskip("torch")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-lm")
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(["a photo of a cat\n##\n make it a dog\n%%\na photo of a dog\nEND"] * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>", unk_token="<unk>")
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    tokenizer.save_pretrained(folder)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=1024, n_embd=16, n_layer=1, n_head=2)
    config.eos_token_id = config.bos_token_id = tokenizer.eos_token_id
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_local_backend_counts_random_output_as_malformed(tmp_path, tiny_lm, api):
    source, target = tmp_path / "captions.txt", tmp_path / "edits.jsonl"
    source.write_text("a photo of a cat\na sketch of a house\na photo of a dog\n", encoding="utf-8")
    argv = ["--input", str(source), "--output", str(target), "--backend", "local", "--model-path", str(tiny_lm)]
    argv += ["--api", api, "--batch-size", "2", "--max-tokens", "6", "--device", "cpu", "--no-progress"]
    stats = gtd.run(gtd.build_parser().parse_args(argv + ["--temperature", "0"]))
    assert (stats.selected, stats.written, stats.failed) == (3, 0, 0)
    assert sum(stats.malformed.values()) == 3
    assert target.read_text() == ""
    if api == "chat":  # the system prompt and two examples take about 600 tokens of this byte-level BPE
        with pytest.raises(BackendError, match="exceed the model's context of 1024 tokens"):
            gtd.run(gtd.build_parser().parse_args(argv + ["--max-tokens", "500"]))
    stats = gtd.run(gtd.build_parser().parse_args(argv + ["--seed", "1"]))  # sampling; nothing was done
    assert stats.already_done == 0 and sum(stats.malformed.values()) == 3
