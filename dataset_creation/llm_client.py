"""Talking to a language model that writes edits: the prompt format and two backends.

The format (shared by `prepare_for_gpt.py`, which writes fine-tuning data in it, and
`generate_txt_dataset.py`, which reads the model's replies):

    prompt      "<input caption>\\n##\\n"                       (PROMPT_END)
    completion  " <instruction>\\n%%\\n<edited caption>\\nEND"   (EDIT_END, then STOP)

These are the delimiters of the original InstructPix2Pix GPT-3 data, so its fine-tuning files
and models work as they are. Texts are single lines (whitespace runs are folded to one space),
so the delimiters, which hold newlines, can never occur inside a text. A chat model gets
SYSTEM_PROMPT, a few example turns, and the caption as the user turn; its reply is
"<instruction>\\n%%\\n<edited caption>" (the chat format has its own end of turn).

Backends, both with `complete(captions) -> list[Reply]`, `batch_size` (captions per call) and
`workers` (calls that may run at once, in threads):
- OpenAIBackend: any server speaking the OpenAI HTTP API, `/completions` or `/chat/completions`.
  Standard library only (urllib). Timeouts, retries with exponential backoff and jitter that
  honor a `Retry-After` header, and a requests-per-minute limit shared by the threads.
- LocalBackend: a transformers causal LM folder, loaded with `local_files_only=True`, batched.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import math
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

PROMPT_END = "\n##\n"  # ends every prompt: the input caption, then this
EDIT_END = "\n%%\n"  # between the instruction and the edited caption
STOP = "\nEND"  # ends every completion; the stop sequence sent to the model
EDIT_MARK = EDIT_END.strip()  # "%%": the separator line a reply is split at

SYSTEM_PROMPT = (
    "You write training data for an image-editing model. Given the caption of an image, reply with one short "
    "instruction that changes the image, then a line holding only %%, then the caption of the image after the "
    "edit. Write nothing else."
)

# Status codes worth a retry; Retry-After is honored on any of them (servers send it with 429 and 503).
RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
# Status codes that will not change by retrying another caption: a wrong key, URL or model name.
FATAL_STATUS = frozenset({401, 403, 404})
MAX_BACKOFF = 60.0  # seconds: cap of the exponential backoff
MAX_RETRY_AFTER = 600.0  # seconds: cap of a server's Retry-After


class BackendError(Exception):
    """The backend cannot work at all (bad key, URL, model name or folder): stop the run."""


class RequestFailed(Exception):
    """One request failed for good (after its retries): its captions are left for the next run."""


class MalformedReply(ValueError):
    """A reply that does not hold an instruction and an edited caption in the expected format."""


@dataclass(frozen=True)
class EditTriple:
    input: str
    edit: str
    output: str


@dataclass(frozen=True)
class Reply:
    """Text of one model reply; `complete` is False when generation stopped at the token limit."""

    text: str
    complete: bool = True


def one_line(text: str) -> str:
    """Whitespace runs (newlines included) folded to one space, ends stripped."""
    return " ".join(text.split())


# ---- the format ---------------------------------------------------------------------------------
def completion_prompt(caption: str) -> str:
    return one_line(caption) + PROMPT_END


def format_completion(edit: str, output: str) -> str:
    """The completion a fine-tuned completion model learns (leading space as OpenAI's guide asks)."""
    return " " + one_line(edit) + EDIT_END + one_line(output) + STOP


def format_chat_reply(edit: str, output: str) -> str:
    return one_line(edit) + EDIT_END + one_line(output)


def few_shot_prompt(caption: str, examples: Sequence[EditTriple]) -> str:
    """A completion prompt with `examples` written out before the caption (none for a fine-tuned model)."""
    shots = "".join(completion_prompt(e.input) + format_completion(e.edit, e.output) + "\n" for e in examples)
    return shots + completion_prompt(caption)


def chat_messages(caption: str, examples: Sequence[EditTriple]) -> list[dict[str, str]]:
    """System prompt, one user/assistant exchange per example, then the caption."""
    messages = [{"role": "system", "content": SYSTEM_PROMPT}]
    for e in examples:
        messages.append({"role": "user", "content": one_line(e.input)})
        messages.append({"role": "assistant", "content": format_chat_reply(e.edit, e.output)})
    messages.append({"role": "user", "content": one_line(caption)})
    return messages


def parse_reply(text: str) -> tuple[str, str]:
    """(instruction, edited caption) of a completion or chat reply; MalformedReply names what is wrong.

    Text from STOP on is dropped (a server that ignores the stop sequence, a local model).
    """
    lines = text.split(STOP, 1)[0].strip().split("\n")
    marks = [i for i, line in enumerate(lines) if line.strip() == EDIT_MARK]
    if not marks:
        raise MalformedReply(f"no {EDIT_MARK} line")
    if len(marks) > 1:
        raise MalformedReply(f"several {EDIT_MARK} lines")
    return one_line(" ".join(lines[: marks[0]])), one_line(" ".join(lines[marks[0] + 1 :]))


def triple_problem(triple: EditTriple, max_chars: int) -> str | None:
    """Why a triple is unusable as training data (empty, unchanged, too long), or None."""
    for name in ("input", "edit", "output"):
        value = getattr(triple, name)
        if not value:
            return f"empty {name}"
        if len(value) > max_chars:
            return f"{name} longer than {max_chars} characters"
    if triple.output.casefold() == triple.input.casefold():
        return "output equals input"
    return None


# ---- HTTP ---------------------------------------------------------------------------------------
class RateLimiter:
    """At most `per_minute` calls to `wait` per minute, spaced evenly, across threads."""

    def __init__(
        self,
        per_minute: float | None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.interval = 60.0 / per_minute if per_minute else 0.0
        self.clock = clock
        self.sleep = sleep
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:  # reserve the next slot; sleep outside the lock
            now = self.clock()
            slot = max(now, self._next)
            self._next = slot + self.interval
        if slot > now:
            self.sleep(slot - now)


def backoff_delay(attempt: int, base: float, rng: random.Random) -> float:
    """Seconds before retry number `attempt + 1`: base * 2^attempt (capped), times a jitter in [0.5, 1)."""
    return min(MAX_BACKOFF, base * 2.0**attempt) * rng.uniform(0.5, 1.0)


def parse_retry_after(value: str | None, now: Callable[[], float] = time.time) -> float | None:
    """Seconds to wait from a Retry-After header (delay seconds or an HTTP date); None if absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - now()
        except (TypeError, ValueError):
            return None
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


class _Retry(Exception):
    """A failed attempt worth retrying; `retry_after` is the server's wish in seconds, if it said."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _error_detail(body: bytes) -> str:
    """The `error.message` of an OpenAI error body, else the body's start."""
    text = body.decode("utf-8", "replace")
    try:
        message = json.loads(text)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = text
    return one_line(str(message))[:200]


class OpenAIBackend:
    """Completions from an OpenAI-compatible server: `<base_url>/completions` or `<base_url>/chat/completions`."""

    batch_size = 1

    def __init__(
        self,
        base_url: str,
        model: str,
        api: str = "completions",
        api_key: str | None = None,
        examples: Sequence[EditTriple] = (),
        temperature: float = 0.7,
        top_p: float = 1.0,
        max_tokens: int = 128,
        timeout: float = 60.0,
        max_retries: int = 5,
        backoff: float = 1.0,
        requests_per_minute: float | None = None,
        workers: int = 4,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if api not in ("completions", "chat"):
            raise ValueError(f"api must be 'completions' or 'chat', not {api!r}")
        self.url = base_url.rstrip("/") + ("/chat/completions" if api == "chat" else "/completions")
        self.model = model
        self.api = api
        self.api_key = api_key
        self.examples = tuple(examples)
        self.sampling = {"temperature": temperature, "top_p": top_p, "max_tokens": max_tokens, "stop": [STOP]}
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.workers = workers
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.limiter = RateLimiter(requests_per_minute, sleep=sleep)

    def complete(self, captions: Sequence[str]) -> list[Reply]:
        return [self._complete_one(caption) for caption in captions]

    def _body(self, caption: str) -> dict:
        if self.api == "chat":
            return {"model": self.model, "messages": chat_messages(caption, self.examples), **self.sampling}
        return {"model": self.model, "prompt": few_shot_prompt(caption, self.examples), **self.sampling}

    def _complete_one(self, caption: str) -> Reply:
        response = self._request(self._body(caption))
        try:
            choice = response["choices"][0]
            text = choice["message"]["content"] if self.api == "chat" else choice["text"]
        except (KeyError, IndexError, TypeError) as err:
            raise RequestFailed(f"{self.url}: the response has no choices[0] {err} (not an OpenAI API reply)") from err
        if not isinstance(text, str):
            raise RequestFailed(f"{self.url}: the reply text is {type(text).__name__}, not a string")
        return Reply(text, complete=choice.get("finish_reason") != "length")

    def _request(self, body: dict) -> dict:
        """POST with retries; the decoded JSON response."""
        for attempt in range(self.max_retries + 1):
            self.limiter.wait()
            try:
                return self._post(body)
            except _Retry as err:
                failure = err
                if attempt < self.max_retries:
                    wait = err.retry_after
                    self.sleep(backoff_delay(attempt, self.backoff, self.rng) if wait is None else wait)
        raise RequestFailed(f"{failure} (gave up after {self.max_retries + 1} attempts)")

    def _post(self, body: dict) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as err:
            detail = f"{self.url}: HTTP {err.code} ({_error_detail(err.read())})"
            if err.code in RETRY_STATUS:
                raise _Retry(detail, parse_retry_after(err.headers.get("Retry-After"))) from err
            if err.code in FATAL_STATUS:
                raise BackendError(detail) from err
            raise RequestFailed(detail) from err
        except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as err:
            reason = getattr(err, "reason", err)
            raise _Retry(f"{self.url}: {type(reason).__name__}: {reason or 'timed out'}") from err
        try:
            return json.loads(raw)
        except ValueError as err:
            raise RequestFailed(f"{self.url}: the response is not JSON (not an OpenAI API server?)") from err


# ---- local transformers model -------------------------------------------------------------------
class LocalBackend:
    """A transformers causal LM from a local folder, generating for `batch_size` captions at once.

    temperature 0 decodes greedily; otherwise sampling with `seed` set once (a resumed run draws
    other samples than an uninterrupted one would have).
    """

    workers = 1

    def __init__(
        self,
        model_path: str | Path,
        api: str = "completions",
        examples: Sequence[EditTriple] = (),
        device: str = "cpu",
        dtype: str = "float32",
        batch_size: int = 8,
        temperature: float = 0.7,
        top_p: float = 1.0,
        max_tokens: int = 128,
        seed: int = 0,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(model_path)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=getattr(torch, dtype))
        except (OSError, ValueError, KeyError) as err:
            raise BackendError(
                f"--model-path {path}: cannot load a causal language model ({one_line(str(err))})"
            ) from err
        if api == "chat" and not self.tokenizer.chat_template:
            raise BackendError(f"--model-path {path}: the tokenizer has no chat template; use --api completions")
        self.tokenizer.padding_side = "left"  # generation continues from the right end of every row
        if self.tokenizer.eos_token is None:
            raise BackendError(f"--model-path {path}: the tokenizer has no end-of-text token (eos_token)")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = model.to(device).eval()
        self.device = device
        self.api = api
        self.examples = tuple(examples)
        self.batch_size = batch_size
        self.sampling = {"do_sample": temperature > 0, "max_new_tokens": max_tokens}
        if temperature > 0:
            self.sampling.update(temperature=temperature, top_p=top_p)
        torch.manual_seed(seed)

    def _prompt(self, caption: str) -> str:
        if self.api == "chat":
            messages = chat_messages(caption, self.examples)
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return few_shot_prompt(caption, self.examples)

    def complete(self, captions: Sequence[str]) -> list[Reply]:
        import torch

        prompts = [self._prompt(c) for c in captions]
        # a chat template writes the special tokens (BOS, role markers) itself
        batch = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=self.api != "chat")
        batch = batch.to(self.device)
        context = getattr(self.model.config, "max_position_embeddings", None)
        length = batch["input_ids"].shape[1] + self.sampling["max_new_tokens"]
        if context is not None and length > context:
            raise BackendError(
                f"prompts of {batch['input_ids'].shape[1]} tokens and --max-tokens {self.sampling['max_new_tokens']} "
                f"exceed the model's context of {context} tokens (fewer --examples or a lower --max-tokens)"
            )
        with torch.inference_mode():
            tokens = self.model.generate(
                **batch,
                **self.sampling,
                pad_token_id=self.tokenizer.pad_token_id,
                stop_strings=[STOP],
                tokenizer=self.tokenizer,
            )
        new = tokens[:, batch["input_ids"].shape[1] :]  # (B, generated)
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        ended = (new == self.tokenizer.eos_token_id).any(dim=1).tolist()  # eos (also the padding of ended rows)
        return [Reply(text, complete=STOP in text or end) for text, end in zip(texts, ended, strict=True)]
