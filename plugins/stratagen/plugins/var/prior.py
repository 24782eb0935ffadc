"""VAR's next-scale prior (Tian et al. 2024, §3.2; STAR slides "VAR: Auto-regressive sampling").

One transformer over the concatenated scales ``r_1 .. r_K`` of a multi-scale tokenizer models
p(r_k | r_1 .. r_{k-1}): attention is block-causal (a token sees its own scale and every
coarser one), the class conditions every block through adaptive layer norm, and the input
of scale k is the tokenizer's cumulative feature map f_hat of the coarser scales,
area-downsampled to scale k's grid (teacher forcing, VAR's ``idxBl_to_var_input``); the first
scale's input is the start token [s] (class embedding plus a learned position). Positions are
VAR's (a learned level embedding plus learned absolute positions) or STAR's normalized 2D
RoPE (with the level embedding, no absolute positions).

With ``captions`` (one per class) the prior is STAR's text-to-image model: a text encoder
(:mod:`.text`: a small one trained with it, or a local pretrained CLIP text tower) reads the
caption; its pooled feature replaces the class embedding (start token and AdaLN) and every block
cross-attends to the caption's tokens. The null class is the empty caption (classifier-free
guidance).

In a run the prior generates the finest scale (``target``) conditioned on all coarser ones
(``conditions``, coarse to fine); its training loss covers every scale at once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from stratagen.nn import AdaLNBlock, KVCache, NormalizedRope2D, grid_positions
from stratagen.registry import (IncompatibleComponentsError, LevelSpec, MaskSchedule, MultiScaleTokenizer, Prior,
                                PriorLoss, Tokenizer)

from .text import CaptionEncoder


@dataclass
class ScaleState:
    """Where sampling stands: the next scale to predict and what it needs.

    Attributes:
        cond: ``[B, width]`` the AdaLN condition (class embedding, or pooled caption).
        text_kv: per block, the cross-attention keys/values of the caption (text mode), else None.
        inputs: embedded inputs ``[B, n_k, width]`` of scales 0 .. ``scale`` (the last one is next).
        caches: one KV cache per block, or None to recompute the whole prefix at every scale.
        features: the tokenizer's f_hat of the scales sampled so far (None before the first).
    """

    cond: torch.Tensor
    inputs: list[torch.Tensor]
    caches: list[KVCache] | None
    text_kv: list[tuple[torch.Tensor, torch.Tensor]] | None
    features: torch.Tensor | None = None
    scale: int = 0


class NextScaleTransformer(Prior):
    """Logits over K scales' tokens, each scale given the coarser ones.

    Args:
        target: the finest scale generated; ``conditions``: the coarser scales, coarse to fine
            (together: the first K levels of one multi-scale tokenizer, one codebook).
        num_classes: class ids ``[0, num_classes)``; ``num_classes`` is the null class.
        depth, width, heads, mlp_ratio: transformer size (VAR-d: width 64 d, d heads, ratio 4).
        feature_dim: channels of the tokenizer's feature map (checked in :meth:`use_tokenizer`).
        position: ``absolute`` (VAR) or ``rope`` (STAR's normalized 2D RoPE).
        dropout: on attention and FFN; ``class_dropout``: share of null-class rows in training
            (enables classifier-free guidance); ``label_smoothing`` of the cross-entropy.
        captions: one caption per class (STAR's text conditioning); None: class conditioning.
        text: the text encoder reading them (given exactly when ``captions`` are); its features
            have the prior's ``width``.
        qk_norm, key_bias: the self-attention's options (:class:`stratagen.nn.Attention`); VAR's
            released models: ``qk_norm=True`` (its ``attn_l2_norm``), ``key_bias=False``.
    """

    def __init__(self, *, target: LevelSpec, conditions: Sequence[LevelSpec] = (), num_classes: int, depth: int,
                 width: int, heads: int, mlp_ratio: float, feature_dim: int,
                 position: Literal["absolute", "rope"], dropout: float, class_dropout: float,
                 label_smoothing: float, captions: Sequence[str] | None = None, text: CaptionEncoder | None = None,
                 qk_norm: bool = False, key_bias: bool = True):
        super().__init__()
        self.target = target
        self.conditions = tuple(conditions)
        self.scales = (*self.conditions, target)
        if len({s.codebook_size for s in self.scales}) != 1:
            raise IncompatibleComponentsError("a next-scale prior needs scales of one shared codebook; got sizes "
                                              + ", ".join(str(s.codebook_size) for s in self.scales))
        self.num_classes = num_classes
        self.feature_dim = feature_dim
        self.class_dropout = class_dropout
        self.label_smoothing = label_smoothing
        self.lengths = [s.length for s in self.scales]
        self.offsets = [sum(self.lengths[:k]) for k in range(len(self.scales) + 1)]
        self._tokenizer: tuple[MultiScaleTokenizer, ...] = ()
        if (captions is None) != (text is None):
            raise ValueError("a next-scale prior takes a text encoder exactly when it takes captions")
        if captions is None:
            self.class_embedding = nn.Embedding(num_classes + 1, width)
        else:
            if len(captions) != num_classes:
                raise IncompatibleComponentsError(f"captions: give one per class ({num_classes}), got {len(captions)}")
            self.class_embedding = None
            self.register_buffer("caption_ids", text.tokenize([*captions, ""]), persistent=False)
        self.start_position = nn.Parameter(torch.zeros(1, self.lengths[0], width))
        self.level_embedding = nn.Embedding(len(self.scales), width)
        self.word_embedding = nn.Linear(feature_dim, width)
        if position == "absolute":
            self.position = nn.Parameter(torch.zeros(1, self.offsets[-1], width))
            self.rope = None
        else:
            self.position = None
            positions = grid_positions([s.height for s in self.scales], reference=float(target.height))
            self.rope = NormalizedRope2D(width // heads, positions)
        context_dim = None if captions is None else width
        self.blocks = nn.ModuleList(AdaLNBlock(width, heads, int(width * mlp_ratio), cond_dim=width, dropout=dropout,
                                               context_dim=context_dim, qk_norm=qk_norm, key_bias=key_bias)
                                    for _ in range(depth))
        self.head_norm = nn.LayerNorm(width, eps=1e-6, elementwise_affine=False)
        self.head_ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.head = nn.Linear(width, target.codebook_size)
        self.apply(_init_weights)
        self.text = text  # after the init above, so that loaded weights stay as loaded
        for parameter in (self.start_position, self.position):
            if parameter is not None:
                nn.init.trunc_normal_(parameter, std=0.02)
        levels = [k for k, n in enumerate(self.lengths) for _ in range(n)]
        self.register_buffer("levels", torch.tensor(levels), persistent=False)

    # ------------------------------------------------------------------ wiring
    def use_tokenizer(self, tokenizer: Tokenizer) -> None:
        """Keep the multi-scale tokenizer whose f_hat gives the teacher-forcing inputs."""
        if not isinstance(tokenizer, MultiScaleTokenizer):
            raise IncompatibleComponentsError(f"a next-scale prior needs a multi-scale tokenizer (e.g. msvq); "
                                              f"got {type(tokenizer).__name__}")
        if tokenizer.feature_dim != self.feature_dim:
            raise IncompatibleComponentsError(f"model.feature_dim is {self.feature_dim} but the tokenizer's feature "
                                              f"map has {tokenizer.feature_dim} channels")
        names = tuple(s.name for s in self.scales)
        if names != tokenizer.level_names[: len(names)]:
            raise IncompatibleComponentsError(f"the target and conditions must be the tokenizer's first scales, "
                                              f"coarse to fine: {list(tokenizer.level_names[: len(names)])}; "
                                              f"got {list(names)}")
        self._tokenizer = (tokenizer,)

    def _features(self) -> MultiScaleTokenizer:
        if not self._tokenizer:
            raise IncompatibleComponentsError("a next-scale prior over several scales needs its tokenizer "
                                              "(use_tokenizer)")
        return self._tokenizer[0]

    def _next_input(self, features: torch.Tensor, scale: int) -> torch.Tensor:
        """f_hat ``[B, C, H, W]`` area-downsampled to scale ``scale``'s grid, ``[B, n_scale, C]``."""
        spec = self.scales[scale]
        down = F.interpolate(features, size=(spec.height, spec.width), mode="area")
        return down.flatten(2).transpose(1, 2)

    @torch.no_grad()
    def teacher_inputs(self, grids: Sequence[torch.Tensor]) -> torch.Tensor | None:
        """Teacher-forcing inputs ``[B, L - n_1, C]`` of scales 2 .. K from the token grids of
        scales 1 .. K-1 (``[B, h_k, w_k]``; a finer grid, if given, is not read); None for K = 1."""
        if len(self.scales) == 1:
            return None
        tokenizer, features, parts = self._features(), None, []
        for k in range(len(self.scales) - 1):
            features = tokenizer.accumulate(features, k, grids[k])
            parts.append(self._next_input(features, k + 1))
        return torch.cat(parts, dim=1)

    # ------------------------------------------------------------------ the network
    def _embed(self, cond: torch.Tensor, scale: int, features: torch.Tensor | None) -> torch.Tensor:
        """Input ``[B, n_scale, width]`` of scale ``scale``: the start token [s] for the first,
        else the embedded teacher features ``[B, n_scale, C]``; plus level (and absolute) positions."""
        if scale == 0:
            x = cond[:, None] + self.start_position
        else:
            x = self.word_embedding(features)
        x = x + self.level_embedding.weight[scale]
        if self.position is not None:
            x = x + self.position[:, self.offsets[scale]:self.offsets[scale + 1]]
        return x

    def caption_tokens(self, captions: Sequence[str]) -> torch.Tensor:
        """``[B, M]`` ids of ``captions`` by the text encoder (text mode; CaptionError for a caption
        it cannot read, IncompatibleComponentsError for a class-conditioned prior)."""
        if self.text is None:
            raise IncompatibleComponentsError("the next-scale prior is class-conditioned (no captions in its "
                                              "config); only a text-conditioned (STAR) prior takes captions")
        return self.text.tokenize(captions).to(self.caption_ids.device)

    def _condition(self, labels: torch.Tensor, captions: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]] | None]:
        """AdaLN condition ``[B, width]`` and per-block caption keys/values (text mode) of ``labels``
        ``[B]``, or of caption ids ``captions`` ``[B, M]`` given instead of the classes' own."""
        if self.text is None:
            return self.class_embedding(labels), None
        tokens, pooled = self.text(self.caption_ids[labels] if captions is None else captions)
        return pooled, [block.project_context(tokens) for block in self.blocks]

    def _blocks(self, x: torch.Tensor, cond: torch.Tensor, start: int, caches: list[KVCache] | None,
                text_kv: list[tuple[torch.Tensor, torch.Tensor]] | None) -> torch.Tensor:
        """Run the blocks on positions ``start .. start + N`` of ``x`` ``[B, N, width]``: over the KV
        caches (which hold every earlier position), or with the block-causal mask from position 0."""
        mask = None
        if caches is None:
            levels = self.levels[start:start + x.shape[1]]
            mask = levels[None, :] <= levels[:, None]
        rotary = None if self.rope is None else self.rope.at(start)
        for i, block in enumerate(self.blocks):
            x = block(x, cond, mask=mask, cache=None if caches is None else caches[i], rotary=rotary,
                      context_kv=None if text_kv is None else text_kv[i])
        return x

    def _head(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """VAR's AdaLN before the head: ``[B, N, width]`` -> logits ``[B, N, V]``."""
        scale, shift = self.head_ada(cond)[:, None].chunk(2, dim=-1)
        return self.head(self.head_norm(h) * (1 + scale) + shift)

    def logits(self, teacher: torch.Tensor | None, labels: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, L, V]`` of every scale from the teacher inputs (:meth:`teacher_inputs`), one
        block-causal forward."""
        cond, text_kv = self._condition(labels)
        parts = [self._embed(cond, 0, None)]
        for k in range(1, len(self.scales)):
            parts.append(self._embed(cond, k, teacher[:, self.offsets[k] - self.lengths[0]:
                                                       self.offsets[k + 1] - self.lengths[0]]))
        return self._head(self._blocks(torch.cat(parts, dim=1), cond, 0, None, text_kv), cond)

    # ------------------------------------------------------------------ the Prior contract
    def encode_conditions(self, conditions: Sequence[torch.Tensor], labels: torch.Tensor) -> torch.Tensor | None:
        """The coarser scales ``[B, h_k, w_k]`` -> teacher inputs of scales 2 .. K (computed once)."""
        if len(conditions) != len(self.conditions):
            raise ValueError(f"expected {len(self.conditions)} coarser scales, got {len(conditions)}")
        return self.teacher_inputs(conditions)

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor, context: object = None,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[B, N, V]`` of the finest scale given the coarser ones (in ``context``), or
        ``[B, M, V]`` at ``positions`` ``[B, M]``. Next-scale prediction generates a whole scale at
        once, so no token of ``tokens`` ``[B, N]`` is visible."""
        logits = self.logits(context, labels)[:, -tokens.shape[1]:]
        if positions is None:
            return logits
        return logits.gather(1, positions[..., None].expand(-1, -1, logits.shape[-1]))

    def loss(self, tokens: torch.Tensor, labels: torch.Tensor, conditions: Sequence[torch.Tensor],
             schedule: MaskSchedule, generator: torch.Generator) -> PriorLoss:
        """Cross-entropy over the tokens of every scale (VAR §3.2, teacher forcing); no masking, so
        ``schedule`` is not used. Classes are replaced by the null class with ``class_dropout``."""
        grids = [*conditions, tokens]
        drop = torch.rand(labels.shape, generator=generator, device=labels.device) < self.class_dropout
        labels = torch.where(drop, torch.full_like(labels, self.null_class), labels)
        logits = self.logits(self.teacher_inputs(grids), labels)
        target = torch.cat([g.flatten(1) for g in grids], dim=1)
        loss = F.cross_entropy(logits.flatten(0, 1), target.flatten(), label_smoothing=self.label_smoothing)
        with torch.no_grad():
            correct = (logits.argmax(-1) == target).float()
        return PriorLoss(loss, {"accuracy": correct.mean().item(),
                                "finest_accuracy": correct[:, -self.lengths[-1]:].mean().item()})

    # ------------------------------------------------------------------ sampling, one scale per call
    def begin(self, labels: torch.Tensor, use_cache: bool = True, captions: torch.Tensor | None = None) -> ScaleState:
        """Sampling state before the first scale; ``use_cache=False`` recomputes every prefix (reference).
        ``captions`` ``[B, M]`` (:meth:`caption_tokens`) replace the classes' captions in text mode."""
        cond, text_kv = self._condition(labels, captions)
        caches = [KVCache() for _ in self.blocks] if use_cache else None
        return ScaleState(cond, [self._embed(cond, 0, None)], caches, text_kv)

    def scale_logits(self, state: ScaleState) -> torch.Tensor:
        """Logits ``[B, n_k, V]`` of the next scale k: one forward over its own tokens with the KV
        cache, or over every scale up to k without it."""
        k = state.scale
        if state.caches is not None:
            h = self._blocks(state.inputs[k], state.cond, self.offsets[k], state.caches, state.text_kv)
        else:
            h = self._blocks(torch.cat(state.inputs, dim=1), state.cond, 0, None, state.text_kv)[:, -self.lengths[k]:]
        return self._head(h, state.cond)

    def advance(self, state: ScaleState, tokens: torch.Tensor) -> None:
        """Record scale k's tokens ``[B, h_k, w_k]`` (or weights over the codebook ``[B, h_k, w_k, V]``,
        VAR's ``more_smooth``): add them to f_hat and embed the next scale's input."""
        k = state.scale
        state.scale += 1
        if state.scale < len(self.scales):
            state.features = self._features().accumulate(state.features, k, tokens)
            state.inputs.append(self._embed(state.cond, k + 1, self._next_input(state.features, k + 1)))


def _init_weights(module: nn.Module) -> None:
    """Truncated normal(0.02) weights, zero biases (as the project's other transformers)."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
