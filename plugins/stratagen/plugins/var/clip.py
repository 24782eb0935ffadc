"""A local pretrained CLIP text tower for STAR's text conditioning (``text_encoder: {name: clip}``).

OpenAI CLIP's text transformer (Radford et al. 2021) read from a safetensors file in the layout
of Hugging Face's ``CLIPTextModel`` (``text_model.embeddings.token_embedding.weight``,
``text_model.encoder.layers.{i}.self_attn.{q,k,v,out}_proj``, ``layer_norm1/2``, ``mlp.fc1/fc2``,
``text_model.final_layer_norm``), and CLIP's byte-level BPE tokenizer read from ``vocab.json``
and ``merges.txt``. Nothing is downloaded. Width, depth, vocabulary, context length and FFN
width come from the tensors' shapes; the number of heads (and the activation and layer-norm
epsilon) from the config or Hugging Face's ``config.json`` beside the weights.
"""
from __future__ import annotations

import html
import json
import math
import os
import re
from typing import Literal, Sequence

import torch
from safetensors import SafetensorError, safe_open
from timm.layers import QuickGELU
from torch import nn

from stratagen.nn import TransformerBlock
from stratagen.registry import ConfigError, MissingWeightsError, StratagenError

from .text import CaptionEncoder, CaptionError, check_tensors

START_TOKEN, END_TOKEN = "<|startoftext|>", "<|endoftext|>"
POSITION_IDS = "text_model.embeddings.position_ids"  # a buffer some older files hold: arange(context)
#: the parts of a full CLIPModel file besides the text tower (not read)
OTHER_CLIP_PARTS = ("vision_model.", "visual_projection.", "text_projection.", "logit_scale")

#: CLIP's pre-tokenizer (OpenAI's simple_tokenizer) with the standard ``re`` module: contractions,
#: runs of letters, single digits, runs of other non-space characters.
WORDS = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|(?:[^\s\w]|_)+", re.IGNORECASE)

ACTIVATIONS: dict[str, type[nn.Module]] = {"quick_gelu": QuickGELU, "gelu": nn.GELU}

#: Hugging Face names of each local parameter's module (k and v are concatenated into ``attn.kv``).
LAYER_SOURCES = {"norm1": ("layer_norm1",), "attn.q": ("self_attn.q_proj",),
                 "attn.kv": ("self_attn.k_proj", "self_attn.v_proj"), "attn.proj": ("self_attn.out_proj",),
                 "norm2": ("layer_norm2",), "mlp.fc1": ("mlp.fc1",), "mlp.fc2": ("mlp.fc2",)}
TOP_SOURCES = {"token_embedding": ("embeddings.token_embedding",),
               "position_embedding": ("embeddings.position_embedding",), "final_norm": ("final_layer_norm",)}
LAYER_KEY = re.compile(r"text_model\.encoder\.layers\.(\d+)\.")
LAYOUT = "a CLIP text tower in Hugging Face's CLIPTextModel layout"


def byte_alphabet() -> dict[int, str]:
    """CLIP's (GPT-2's) reversible map of the 256 byte values to printable characters: printable
    Latin-1 bytes map to themselves, the others to code points from 256 on."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}


class ClipTokenizer:
    """CLIP's byte-level BPE over a local ``vocab.json`` (token -> id) and ``merges.txt`` (one merge
    a line, by rank; a ``#version`` header is skipped).

    A caption is HTML-unescaped, whitespace-collapsed and lower-cased, split by :data:`WORDS`; each
    piece's UTF-8 bytes become :func:`byte_alphabet` characters, the last one marked ``</w>``, and
    adjacent symbols are merged, lowest rank first, until no ranked pair is left. Ids are framed
    by ``<|startoftext|>`` and ``<|endoftext|>`` and padded with ``<|endoftext|>`` (Hugging Face's
    OpenAI tokenizers). OpenAI's tokenizer first repairs mojibake with ftfy; that is left out here
    (no extra dependency), and special-token text inside a caption is read as plain text.

    Args:
        folder: holds ``vocab.json`` and ``merges.txt``.
        length: ids per caption (the text tower's context length, 77 for OpenAI CLIP).
    """

    def __init__(self, folder: str, length: int):
        vocab_path, merges_path = os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt")
        for path, what in ((vocab_path, "CLIP's BPE vocabulary, a JSON map of tokens to ids"),
                           (merges_path, "CLIP's BPE merges, one pair a line")):
            if not os.path.isfile(path):
                raise MissingWeightsError(f"CLIP tokenizer {path}: no such file (expected {what})")
        self.vocab: dict[str, int] = _read_json_object(vocab_path, "a CLIP vocabulary (a JSON map of tokens to ids)")
        with open(merges_path, encoding="utf-8") as f:
            pairs = [tuple(line.split()) for line in f if line.strip() and not line.startswith("#version")]
        malformed = [" ".join(p) for p in pairs if len(p) != 2]
        if malformed:
            raise ConfigError(f"{merges_path}: not BPE merges (a pair a line): {malformed[:3]}")
        self.ranks = {pair: rank for rank, pair in enumerate(pairs)}
        absent = [t for t in (START_TOKEN, END_TOKEN) if t not in self.vocab]
        if absent:
            raise ConfigError(f"{vocab_path}: no {' or '.join(absent)}; not a CLIP vocabulary")
        self.start, self.end = self.vocab[START_TOKEN], self.vocab[END_TOKEN]
        self.length = length
        self.bytes = byte_alphabet()
        self._pieces: dict[str, list[str]] = {}

    def bpe(self, word: str) -> list[str]:
        """The vocabulary tokens of one pre-tokenized ``word`` (its characters already byte-mapped)."""
        if word not in self._pieces:
            parts = [*word[:-1], word[-1] + "</w>"]
            while len(parts) > 1:
                best = min(zip(parts, parts[1:]), key=lambda pair: self.ranks.get(pair, math.inf))
                if best not in self.ranks:
                    break
                merged, i = [], 0
                while i < len(parts):
                    if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                        merged.append(parts[i] + parts[i + 1])
                        i += 2
                    else:
                        merged.append(parts[i])
                        i += 1
                parts = merged
            self._pieces[word] = parts
        return self._pieces[word]

    def ids(self, caption: str) -> list[int]:
        """The BPE ids of ``caption``, without the start and end tokens."""
        text = " ".join(html.unescape(html.unescape(caption)).split()).lower()
        tokens = [t for word in WORDS.findall(text)
                  for t in self.bpe("".join(self.bytes[b] for b in word.encode("utf-8")))]
        unknown = sorted({t for t in tokens if t not in self.vocab})
        if unknown:
            raise CaptionError(f"caption {caption!r}: BPE tokens missing from the CLIP vocabulary: "
                               f"{', '.join(unknown[:5])} (are vocab.json and merges.txt of one tokenizer?)")
        return [self.vocab[t] for t in tokens]

    def encode(self, captions: Sequence[str]) -> torch.Tensor:
        """``[B, length]`` ids: start, the caption's BPE ids, end, end padding. CaptionError for a
        caption longer than ``length - 2`` tokens."""
        rows = []
        for caption in captions:
            ids = self.ids(caption)
            if len(ids) > self.length - 2:
                raise CaptionError(f"caption {caption!r}: {len(ids)} BPE tokens; the CLIP text tower reads at "
                                   f"most {self.length - 2} between its start and end tokens")
            rows.append([self.start, *ids, *[self.end] * (self.length - 1 - len(ids))])
        return torch.tensor(rows, dtype=torch.long)


class ClipTextTransformer(nn.Module):
    """OpenAI CLIP's text transformer: ids ``[B, M]`` -> final-layer-normed features ``[B, M, width]``.

    Token plus learned position embeddings, ``depth`` pre-norm blocks with causal self-attention
    (a position sees itself and the earlier ones) and an MLP ``width -> mlp_dim -> width``, then a
    final layer norm. Names follow :class:`stratagen.nn.TransformerBlock`; :func:`load_clip_text`
    maps Hugging Face's names onto them.

    Args:
        vocab_size, length: token ids ``[0, vocab_size)``, at most ``length`` positions (77).
        width, depth, heads, mlp_dim: transformer size (ViT-L/14's text tower: 768, 12, 12, 3072).
        activation: the MLP's, ``quick_gelu`` (OpenAI) or ``gelu``; ``eps``: the layer norms'.
    """

    def __init__(self, vocab_size: int, length: int, width: int, depth: int, heads: int, mlp_dim: int,
                 activation: Literal["quick_gelu", "gelu"] = "quick_gelu", eps: float = 1e-5):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.position_embedding = nn.Embedding(length, width)
        self.layers = nn.ModuleList(TransformerBlock(width, heads, mlp_dim, eps=eps, activation=ACTIVATIONS[activation])
                                    for _ in range(depth))
        self.final_norm = nn.LayerNorm(width, eps=eps)
        self.register_buffer("causal", torch.ones(length, length, dtype=torch.bool).tril(), persistent=False)

    @property
    def width(self) -> int:
        return self.token_embedding.embedding_dim

    @property
    def length(self) -> int:
        return self.position_embedding.num_embeddings

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Ids ``[B, M]`` (``M <= length``) -> features ``[B, M, width]``."""
        m = ids.shape[1]
        x = self.token_embedding(ids) + self.position_embedding.weight[:m]
        for layer in self.layers:
            x = layer(x, mask=self.causal[:m, :m])
        return self.final_norm(x)


def hf_sources(key: str) -> tuple[str, ...]:
    """The Hugging Face tensors that make the local parameter ``key`` of :class:`ClipTextTransformer`
    (two for ``attn.kv``: k then v, concatenated along the output dimension)."""
    module, parameter = key.rsplit(".", 1)
    if module.startswith("layers."):
        _, index, rest = module.split(".", 2)
        return tuple(f"text_model.encoder.layers.{index}.{name}.{parameter}" for name in LAYER_SOURCES[rest])
    return tuple(f"text_model.{name}.{parameter}" for name in TOP_SOURCES[module])


def _hf_config(weights: str) -> dict:
    """The text settings of Hugging Face's ``config.json`` beside ``weights`` (CLIPTextConfig, or a
    CLIPConfig's ``text_config``); empty when there is none."""
    path = os.path.join(os.path.dirname(os.path.abspath(weights)), "config.json")
    if not os.path.isfile(path):
        return {}
    config = _read_json_object(path, "Hugging Face's CLIP config.json (a JSON object)")
    return config.get("text_config", config)


def _read_json_object(path: str, what: str) -> dict:
    """The JSON object in the file ``path``; ConfigError naming the file and ``what`` it should be."""
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (ValueError, UnicodeDecodeError) as exc:  # json.JSONDecodeError is a ValueError
        raise ConfigError(f"{path}: not {what}: {exc}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: not {what}: a JSON {type(value).__name__}")
    return value


def load_clip_text(weights: str, heads: int | None = None,
                   activation: Literal["quick_gelu", "gelu"] | None = None) -> ClipTextTransformer:
    """A :class:`ClipTextTransformer` holding the tensors of the safetensors file ``weights`` (or of
    ``model.safetensors`` in the folder ``weights``).

    Every tensor of the file is read, except those of a full CLIPModel's other parts
    (:data:`OTHER_CLIP_PARTS`: vision tower, projections, logit scale); a missing, unexpected or
    reshaped one is a one-line StratagenError naming a few. ``heads`` and ``activation`` default to ``num_attention_heads`` and
    ``hidden_act`` of the ``config.json`` beside the file (``quick_gelu`` without one); the heads
    cannot be read from the shapes, so without both it is a ConfigError.
    """
    if os.path.isdir(weights):  # a Hugging Face model folder
        weights = os.path.join(weights, "model.safetensors")
    if not os.path.isfile(weights):
        raise MissingWeightsError(f"CLIP text weights {weights}: no such file (expected a safetensors file of "
                                  f"Hugging Face's CLIPTextModel layout, keys text_model.*)")
    try:
        return _read_tower(weights, heads, activation)
    except SafetensorError as exc:  # truncated, corrupt, or not safetensors at all (a pickle)
        raise StratagenError(f"CLIP text weights {weights}: not a readable safetensors file ({exc})") from None


def _read_tower(weights: str, heads: int | None, activation: Literal["quick_gelu", "gelu"] | None
                ) -> ClipTextTransformer:
    with safe_open(weights, framework="pt") as f:
        shapes = {k: f.get_slice(k).get_shape() for k in f.keys() if not k.startswith(OTHER_CLIP_PARTS)}
        required = ["text_model.embeddings.token_embedding.weight", "text_model.embeddings.position_embedding.weight",
                    "text_model.encoder.layers.0.mlp.fc1.weight"]
        if any(k not in shapes for k in required):
            check_tensors(weights, {k: () for k in required if k not in shapes},
                          {k: v for k, v in shapes.items() if not k.startswith("text_model.")}, LAYOUT)
        vocab_size, width = shapes[required[0]]
        length = shapes[required[1]][0]
        mlp_dim = shapes[required[2]][0]
        depth = 1 + max(int(m.group(1)) for k in shapes if (m := LAYER_KEY.match(k)))
        config = _hf_config(weights)
        heads = heads or config.get("num_attention_heads")
        if heads is None:
            raise ConfigError(f"text_encoder.heads: {weights} does not tell the number of attention heads; set "
                              f"it, or put Hugging Face's config.json beside the weights")
        if width % heads:
            raise ConfigError(f"text_encoder.heads: {heads} heads do not divide the CLIP width {width}")
        tower = ClipTextTransformer(vocab_size, length, width, depth, heads, mlp_dim,
                                    activation or config.get("hidden_act", "quick_gelu"),
                                    config.get("layer_norm_eps", 1e-5))
        own = tower.state_dict()
        expected = {name: (own[key].shape[0] // len(names), *own[key].shape[1:])
                    for key in own for names in [hf_sources(key)] for name in names}
        check_tensors(weights, expected, {k: v for k, v in shapes.items() if k != POSITION_IDS}, LAYOUT)
        if POSITION_IDS in shapes and not torch.equal(f.get_tensor(POSITION_IDS).flatten().long(),
                                                      torch.arange(length)):
            raise ConfigError(f"{weights}: {POSITION_IDS} is not 0 .. {length - 1}; positions are not CLIP's")
        tower.load_state_dict({key: torch.cat([f.get_tensor(name) for name in hf_sources(key)]) for key in own})
    return tower


class ClipTextEncoder(CaptionEncoder):
    """A local pretrained CLIP text tower, with a trained projection to the prior's width.

    Token features are the tower's final-layer-normed features, projected (``[B, M, width]``); the
    pooled feature is the projected feature at the end token (CLIP's pooling: the first
    ``<|endoftext|>``, the highest id of OpenAI's vocabulary).

    With ``fine_tune`` false (the default) the tower is frozen: no gradients, and its tensors are
    left out of the state dict, so checkpoints hold the projection and the tower's
    :func:`fingerprint` only, and the tower is read from ``weights`` whenever the prior is built (a
    file whose tensors are not the ones the prior was trained with is refused when it is loaded).
    With ``fine_tune`` it trains with the prior and is saved with it.

    Args:
        width: the prior's width (the projection's output).
        weights: the CLIPTextModel safetensors file (:func:`load_clip_text`).
        tokenizer: folder of ``vocab.json`` and ``merges.txt``; default: the folder of ``weights``.
        heads, activation: see :func:`load_clip_text`.
        fine_tune: train the tower with the prior.
    """

    def __init__(self, width: int, weights: str, tokenizer: str | None = None, heads: int | None = None,
                 activation: Literal["quick_gelu", "gelu"] | None = None, fine_tune: bool = False):
        super().__init__()
        self.weights = weights
        self.tower = load_clip_text(weights, heads, activation)
        self.tokenizer = ClipTokenizer(tokenizer or os.path.dirname(os.path.abspath(weights)), self.tower.length)
        largest = max(self.tokenizer.vocab.values())
        if largest >= self.tower.token_embedding.num_embeddings:
            raise ConfigError(f"the CLIP tokenizer's ids go up to {largest}, but {weights} embeds "
                              f"{self.tower.token_embedding.num_embeddings} tokens; are they of one model?")
        self.projection = nn.Linear(self.tower.width, width)
        nn.init.trunc_normal_(self.projection.weight, std=0.02)
        nn.init.zeros_(self.projection.bias)
        self.fine_tune = fine_tune
        if not fine_tune:
            self.tower.requires_grad_(False)
            self.register_state_dict_post_hook(_leave_out_tower)
            self.register_load_state_dict_pre_hook(_keep_tower)

    def tokenize(self, captions: Sequence[str]) -> torch.Tensor:
        return self.tokenizer.encode(captions)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.projection(self.tower(ids))
        end = (ids == self.tokenizer.end).int().argmax(dim=1)
        return tokens, tokens[torch.arange(ids.shape[0], device=ids.device), end]


FINGERPRINT = "tower_fingerprint"


def fingerprint(tower: nn.Module) -> torch.Tensor:
    """``[2 * T]`` float64: the sum and the sum of squares of each of the tower's ``T`` tensors, in
    state-dict order; what a checkpoint keeps of a frozen tower to recognise its file."""
    return torch.stack([stat for t in tower.state_dict().values()
                        for stat in (t.double().sum(), t.double().square().sum())]).cpu()


def _leave_out_tower(module: ClipTextEncoder, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """State-dict hook of a frozen :class:`ClipTextEncoder`: the tower's tensors give way to its
    :func:`fingerprint`."""
    for key in [k for k in state_dict if k.startswith(prefix + "tower.")]:
        del state_dict[key]
    state_dict[prefix + FINGERPRINT] = fingerprint(module.tower)


def _keep_tower(module: ClipTextEncoder, state_dict: dict, prefix: str, *args: object) -> None:
    """Load hook of a frozen :class:`ClipTextEncoder`: the tower keeps the pretrained tensors it holds
    (a state dict without them, as :func:`_leave_out_tower` writes, loads strictly), provided they
    are the ones the state dict was saved with (its fingerprint, where it has one)."""
    saved = state_dict.pop(prefix + FINGERPRINT, None)
    # float64 sums agree to ~1e-12 however the reduction is ordered; another model's tensors differ
    # from them by far more than 1e-6
    if saved is not None and not (saved.shape == (current := fingerprint(module.tower)).shape
                                  and torch.allclose(saved.double(), current, rtol=1e-6, atol=0)):
        raise StratagenError(f"{module.weights}: not the CLIP text tower this prior was trained with (its "
                             f"tensors differ from the fingerprint saved with the prior); point "
                             f"text_encoder.weights at that file, or train the prior again")
    for key, value in module.tower.state_dict(prefix=prefix + "tower.").items():
        state_dict.setdefault(key, value)
