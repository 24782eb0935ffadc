"""Official VAR checkpoints (``vae_ch160v4096z32.pth`` + ``var_d16.pth`` ... ``var_d30.pth``) -> a
stratagen run directory.

Both files are plain state dicts (``torch.load(weights_only=True)``). Sizes come from the shapes:
the VQVAE's networks, codebook and number of shared phi convs; the transformer's depth, width,
FFN ratio, classes and heads (the per-head scales of its q/k-normalised attention; VAR's rule
heads = depth without them). The scales (``patch_nums``) come from the transformer's level table
(``lvl_1L``: the scale of every position, so scale k holds pn_k^2 of them); given by hand, they are
checked against it and against the position table's length.

The run: tokenizer ``vq`` (``var-vqvae``), prior ``main`` (``var`` with ``qk_norm`` and no key
bias: VAR's attention) generating the finest scale from the coarser ones, and the ``next-scale``
sampler with VAR's ``cfg * k / (K - 1)`` guidance ramp and its FID settings.
"""
from __future__ import annotations

import re
from typing import Any

import torch

from stratagen import config as cfg
from stratagen.io.run import Run, load_state
from stratagen.registry import ConfigError, StratagenError, get_registry

from .convert_llamagen import CONVERTED, TOKENIZER_ID
from .keys import autoencoder_sizes, autoencoder_state
from stratagen.io.checkpoint import load_torch_file

PRIOR_ID = "main"

#: VAR transformer names -> the ``var`` prior's (the attention's q/k/v are split separately)
_PRIOR_NAMES = [(r"pos_start", "start_position"), (r"pos_1LC", "position"), (r"word_embed\.", "word_embedding."),
                (r"class_emb\.", "class_embedding."), (r"lvl_embed\.", "level_embedding."),
                (r"head_nm\.ada_lin\.", "head_ada."), (r"\.ada_lin\.", ".ada."), (r"\.ffn\.", ".mlp."),
                (r"\.attn\.scale_mul_1H11", ".attn.log_scale"), (r"\.attn\.q_bias", ".attn.q.bias"),
                (r"\.attn\.v_bias", ".attn.v_bias")]
#: buffers of the official modules (masks, level ids, the zero key bias, usage statistics)
_DROPPED = re.compile(r"lvl_1L|attn_bias_for_masking|.*\.zero_k_bias|quantize\.ema_vocab_hit_SV")


def _state_dict(url: str) -> dict[str, torch.Tensor]:
    loaded = load_torch_file(url)
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise StratagenError(f"{url}: not a VAR state dict (a flat mapping of names to tensors)")
    return loaded


def vqvae_state(state: dict[str, torch.Tensor], source: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(the ``var-vqvae`` fields except scales, its state dict) of VAR's VQVAE state dict."""
    try:
        sizes, weights = autoencoder_sizes(state, "taming"), autoencoder_state(state, "taming")
        codebook = state["quantize.embedding.weight"]
    except (StratagenError, KeyError) as exc:
        raise StratagenError(f"{source}: not VAR's VQVAE ({exc})") from None
    weights["quantizer.codebook.weight"] = codebook
    phis = 0
    for key, value in state.items():
        # partially shared (qresi_ls.i), one per scale (quant_resi.i) or fully shared (qresi)
        found = re.fullmatch(r"quantize\.quant_resi\.(?:qresi_ls\.(\d+)|(\d+)|qresi)\.(weight|bias)", key)
        if found:
            index = found.group(1) or found.group(2) or "0"
            weights[f"phis.{index}.conv.{found.group(3)}"] = value
            phis = max(phis, int(index) + 1)
    if not phis:
        raise StratagenError(f"{source}: VAR's VQVAE without phi convolutions (quant_resi 0) is not supported")
    shared = 0 if any(re.fullmatch(r"quantize\.quant_resi\.\d+\.weight", k) for k in state) else phis
    return {"name": "var-vqvae", **sizes, "codebook_size": codebook.shape[0], "shared_phis": shared}, weights


def transformer_state(state: dict[str, torch.Tensor], source: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(the ``var`` prior's fields, its state dict) of VAR's transformer state dict."""
    if any(k.endswith("ada_gss") for k in state):
        raise StratagenError(f"{source}: VAR with shared AdaLN (shared_aln) is not supported; the released "
                             "models do not use it")
    try:
        width, feature_dim = state["word_embed.weight"].shape
        depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
        hidden = state["blocks.0.ffn.fc1.weight"].shape[0]
        scale = state.get("blocks.0.attn.scale_mul_1H11")
        fields = {"name": "var", "depth": depth, "width": width, "heads": depth if scale is None else scale.shape[1],
                  "mlp_ratio": hidden / width, "feature_dim": feature_dim, "qk_norm": scale is not None,
                  "key_bias": False, "class_dropout": 0.1}
        num_classes = state["class_emb.weight"].shape[0] - 1
    except KeyError as exc:
        raise StratagenError(f"{source}: not a VAR transformer state dict (no {exc.args[0]})") from None
    weights = {}
    for key, value in state.items():
        if _DROPPED.fullmatch(key):
            continue
        if key.endswith(".attn.mat_qkv.weight"):
            q, k, v = value.chunk(3)
            prefix = key[: -len("mat_qkv.weight")]
            weights[prefix + "q.weight"], weights[prefix + "kv.weight"] = q, torch.cat([k, v])
            continue
        for pattern, replacement in _PRIOR_NAMES:
            key = re.sub(pattern, replacement, key)
        weights[key] = value
    return fields | {"num_classes": num_classes}, weights


def scales_of_levels(levels: torch.Tensor) -> list[int] | None:
    """VAR's ``patch_nums`` from its level table ``lvl_1L`` ``[1, L]`` (the scale index of every
    position, ascending): scale k holds pn_k^2 positions. None if the table is not of that form."""
    flat = levels.flatten().long()
    if flat.numel() == 0 or bool((flat[1:] < flat[:-1]).any()) or int(flat[0]) != 0:
        return None
    counts = torch.bincount(flat).tolist()
    sides = [round(c ** 0.5) for c in counts]
    return sides if all(c > 0 and side * side == c for c, side in zip(counts, sides)) else None


def convert_var_official(*, vae: str, var: str, patch_nums: str | None, data_root: str, guidance_scale: float, top_k: int,
                         top_p: float, out: str) -> Run:
    """Convert VAR's VQVAE and transformer state dicts (paths or fsspec URLs) into the run ``out``."""
    try:
        scales = [int(p) for p in patch_nums.split(",")] if patch_nums else None
    except ValueError:
        raise ConfigError(f"convert var-official: --patch-nums: comma-separated integers, got {patch_nums!r}") from None
    vq_fields, vq_weights = vqvae_state(_state_dict(vae), vae)
    state = _state_dict(var)
    stored = scales_of_levels(state["lvl_1L"]) if "lvl_1L" in state else None
    prior_fields, prior_weights = transformer_state(state, var)
    num_classes = prior_fields.pop("num_classes")
    positions = prior_weights["position"].shape[1]
    if scales is None and stored is None:
        raise ConfigError(f"convert var-official: {var} has no level table (lvl_1L); give --patch-nums")
    if scales is not None and stored is not None and scales != stored:
        raise ConfigError(f"convert var-official: --patch-nums {patch_nums} but {var} was trained with "
                          f"{','.join(map(str, stored))} (its lvl_1L); leave --patch-nums out to use those")
    scales = scales or stored
    if sum(p * p for p in scales) != positions:
        raise ConfigError(f"convert var-official: --patch-nums {patch_nums} gives {sum(p * p for p in scales)} "
                          f"tokens but {var} has positions for {positions}")
    resolution = scales[-1] * 2 ** (len(vq_fields["channel_mult"]) - 1)
    names = [f"{TOKENIZER_ID}.s{k + 1}" for k in range(len(scales))]
    raw = {
        "run": {"dir": out},
        "data": {"name": "imagefolder", "root": data_root, "num_classes": num_classes, "resolution": resolution},
        "tokenizers": {TOKENIZER_ID: {"model": vq_fields | {"scales": scales}, "train": CONVERTED}},
        "priors": {PRIOR_ID: {"target": names[-1], "conditions": names[:-1], "model": prior_fields,
                              "train": CONVERTED}},
        "sampler": {"name": "next-scale", "scales": {"steps": 1, "top_k": top_k, "top_p": top_p,
                                                     "guidance_scale": guidance_scale, "guidance_schedule": "var"}},
    }
    registry = get_registry()
    config = cfg.validate(raw, f"{vae} + {var}", registry)
    tokenizer = registry.build("tokenizer", config.tokenizers[TOKENIZER_ID].model, resolution=resolution)
    load_state(tokenizer, vq_weights, vae, "VAR's VQVAE")
    specs = tokenizer.level_specs(resolution)
    prior = registry.build("prior", config.priors[PRIOR_ID].model, target=specs[-1], conditions=specs[:-1],
                           num_classes=num_classes)
    load_state(prior, prior_weights, var, "the VAR transformer")
    run = Run(out)
    run.save_config(config)
    run.save_weights("tokenizer", TOKENIZER_ID, tokenizer, "var-vqvae", step=0, registry=registry)
    run.save_weights("prior", PRIOR_ID, prior, "var", step=0, registry=registry)
    return run
