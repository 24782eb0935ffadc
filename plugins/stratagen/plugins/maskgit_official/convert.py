"""Official MaskGIT checkpoints (flax msgpack) -> a stratagen run directory.

Sizes are read from the checkpoints' shapes; the weights are mapped onto
:class:`OfficialVQGANTokenizer` and :class:`BertMaskedTokenTransformer` and written with their
config through :class:`stratagen.io.run.Run` (safetensors + config.yaml), so every command uses
the result like a run it trained.
"""
from __future__ import annotations

import math
import re
from typing import Any

import torch
from torch import nn

from stratagen import config as cfg
from stratagen.io import checkpoint
from stratagen.io.run import Run
from stratagen.nn import NearestUpsample
from stratagen.registry import StratagenError, get_registry

from .flax_msgpack import read_flax_checkpoint
from .tokenizer import OfficialResBlock, OfficialVQGANTokenizer
from .transformer import BertMaskedTokenTransformer

TOKENIZER_ID, PRIOR_ID = "vq", "main"


def _conv(kernel: torch.Tensor) -> torch.Tensor:
    """flax conv kernel [kh, kw, in, out] -> torch [out, in, kh, kw]."""
    return kernel.permute(3, 2, 0, 1)


def _numbered(tree: dict[str, Any], prefix: str) -> list[Any]:
    """The children ``<prefix>_0, <prefix>_1, ...`` of a flax tree, in order."""
    found = {int(m.group(1)): v for k, v in tree.items() if (m := re.fullmatch(rf"{prefix}_(\d+)", k))}
    return [found[i] for i in range(len(found))]


def _norm(state: dict[str, torch.Tensor], name: str, tree: dict[str, torch.Tensor]) -> None:
    state[f"{name}.weight"], state[f"{name}.bias"] = tree["scale"], tree["bias"]


def _dense(state: dict[str, torch.Tensor], name: str, tree: dict[str, torch.Tensor]) -> None:
    state[f"{name}.weight"], state[f"{name}.bias"] = tree["kernel"].T, tree["bias"]


def _res_block(state: dict[str, torch.Tensor], name: str, tree: dict[str, Any]) -> None:
    _norm(state, f"{name}.branch.0", tree["GroupNorm_0"])
    state[f"{name}.branch.2.weight"] = _conv(tree["Conv_0"]["kernel"])
    _norm(state, f"{name}.branch.3", tree["GroupNorm_1"])
    state[f"{name}.branch.5.weight"] = _conv(tree["Conv_1"]["kernel"])
    if "Conv_2" in tree:
        state[f"{name}.shortcut.weight"] = _conv(tree["Conv_2"]["kernel"])


def _indices(module: nn.Sequential, kind: type) -> list[int]:
    return [i for i, m in enumerate(module) if isinstance(m, kind)]


def tokenizer_sizes(params: dict[str, Any]) -> dict[str, Any]:
    """channels (official "filters"), channel_mult, num_res_blocks, codebook_size, embedding_dim of an
    official VQGAN."""
    encoder, decoder = params["encoder"], params["decoder"]
    levels = len(_numbered(decoder, "Conv")) - 1  # conv_in, one conv per upsampling, conv_out
    blocks = _numbered(encoder, "ResBlock")
    per_level = len(blocks) // (levels + 1)  # each level, then the last level's extra blocks
    filters = encoder["Conv_0"]["kernel"].shape[-1]
    widths = [blocks[i * per_level]["Conv_1"]["kernel"].shape[-1] for i in range(levels)]
    codebook_size, embedding_dim = params["quantizer"]["codebook"].shape
    return dict(channels=filters, channel_mult=[w // filters for w in widths], num_res_blocks=per_level,
                codebook_size=codebook_size, embedding_dim=embedding_dim)


def tokenizer_state(params: dict[str, Any], tokenizer: OfficialVQGANTokenizer) -> dict[str, torch.Tensor]:
    """The official VQGAN's parameters as ``tokenizer``'s state dict."""
    encoder, decoder = params["encoder"], params["decoder"]
    state = {"encoder.conv_in.weight": _conv(encoder["Conv_0"]["kernel"]),
             "quantizer.codebook.weight": params["quantizer"]["codebook"]}
    for i, tree in zip(_indices(tokenizer.encoder.body, OfficialResBlock), _numbered(encoder, "ResBlock")):
        _res_block(state, f"encoder.body.{i}", tree)
    _norm(state, "encoder.head.0", encoder["GroupNorm_0"])
    state["encoder.head.2.weight"], state["encoder.head.2.bias"] = _conv(encoder["Conv_1"]["kernel"]), \
        encoder["Conv_1"]["bias"]
    convs = _numbered(decoder, "Conv")
    state["decoder.conv_in.weight"], state["decoder.conv_in.bias"] = _conv(convs[0]["kernel"]), convs[0]["bias"]
    for i, tree in zip(_indices(tokenizer.decoder.body, OfficialResBlock), _numbered(decoder, "ResBlock")):
        _res_block(state, f"decoder.body.{i}", tree)
    for i, tree in zip(_indices(tokenizer.decoder.body, NearestUpsample), convs[1:-1]):
        state[f"decoder.body.{i}.conv.weight"], state[f"decoder.body.{i}.conv.bias"] = _conv(tree["kernel"]), \
            tree["bias"]
    _norm(state, "decoder.head.0", decoder["GroupNorm_0"])
    state["decoder.head.2.weight"], state["decoder.head.2.bias"] = _conv(convs[-1]["kernel"]), convs[-1]["bias"]
    return state


def transformer_sizes(params: dict[str, Any]) -> dict[str, Any]:
    """depth, width, heads, mlp_dim, vocabulary and positions of an official MaskGIT transformer."""
    layers = _numbered(params, "TransformerLayer")
    vocab, width = params["Embed_0"]["word_embeddings"]["embedding"].shape
    _, heads, _ = layers[0]["Attention_0"]["self_attention"]["query"]["kernel"].shape
    return dict(depth=len(layers), width=width, heads=heads,
                mlp_dim=layers[0]["Mlp_0"]["intermediate_output"]["kernel"].shape[1], vocab_size=vocab,
                positions=params["Embed_0"]["position_embeddings"]["embedding"].shape[0])


def transformer_state(params: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The official transformer's parameters as a :class:`BertMaskedTokenTransformer` state dict."""
    embed = params["Embed_0"]
    state = {"word_embedding.weight": embed["word_embeddings"]["embedding"],
             "position": embed["position_embeddings"]["embedding"][None]}
    _norm(state, "embed_norm", embed["embeddings_ln"])
    for i, layer in enumerate(_numbered(params, "TransformerLayer")):
        attention, mlp, name = layer["Attention_0"], layer["Mlp_0"], f"blocks.{i}"
        qkv = attention["self_attention"]
        width = qkv["query"]["kernel"].shape[0]
        flat = {k: (qkv[k]["kernel"].reshape(width, width).T, qkv[k]["bias"].reshape(width))
                for k in ("query", "key", "value")}
        state[f"{name}.attn.q.weight"], state[f"{name}.attn.q.bias"] = flat["query"]
        state[f"{name}.attn.kv.weight"] = torch.cat([flat["key"][0], flat["value"][0]])
        state[f"{name}.attn.kv.bias"] = torch.cat([flat["key"][1], flat["value"][1]])
        state[f"{name}.attn.proj.weight"] = qkv["out"]["kernel"].reshape(width, width).T
        state[f"{name}.attn.proj.bias"] = qkv["out"]["bias"]
        _norm(state, f"{name}.norm1", attention["attention_output_ln"])
        _dense(state, f"{name}.mlp.fc1", mlp["intermediate_output"])
        _dense(state, f"{name}.mlp.fc2", mlp["layer_output"])
        _norm(state, f"{name}.norm2", mlp["layer_output_ln"])
    mlm = params["MlmLayer_0"]
    _dense(state, "head.0", mlm["mlm_dense"])
    _norm(state, "head.2", mlm["mlm_ln"])
    state["head_bias"] = mlm["mlm_bias"]["bias"]
    return state


def _load(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise StratagenError(f"{source}: does not fit the official MaskGIT architecture "
                             f"(missing {missing[:3]}, unexpected {unexpected[:3]})")


def convert_maskgit_official(*, tokenizer: str, transformer: str, data_root: str, steps: int,
                             out: str) -> Run:
    """Convert official MaskGIT checkpoints (paths or fsspec URLs) into the run directory ``out``.

    The run has tokenizer ``vq`` (``maskgit-official``), prior ``main`` (``maskgit-bert``) on
    ``vq.tokens`` and the ``maskgit`` sampler with the official decoding (``steps`` steps, cosine
    schedule, choice temperature 4.5). ``data_root`` is the image folder ``eval``/``train`` use.
    """
    tokenizer_params = read_flax_checkpoint(checkpoint.read_bytes(tokenizer), tokenizer)
    transformer_params = read_flax_checkpoint(checkpoint.read_bytes(transformer), transformer)
    try:
        vq_sizes, prior_sizes = tokenizer_sizes(tokenizer_params), transformer_sizes(transformer_params)
    except (KeyError, IndexError, ValueError) as exc:
        raise StratagenError(f"{tokenizer}, {transformer}: not official MaskGIT checkpoints (no {exc})") from None
    num_classes = prior_sizes.pop("vocab_size") - vq_sizes["codebook_size"] - 1
    side = math.isqrt(prior_sizes.pop("positions") - 1)
    resolution = side * 2 ** (len(vq_sizes["channel_mult"]) - 1)
    if num_classes < 1:
        raise StratagenError(f"{transformer}: its vocabulary does not hold the tokenizer's "
                             f"{vq_sizes['codebook_size']} codes plus classes and [MASK]")
    converted = {"steps": 0, "checkpoint_every": 1}  # nothing left to train here
    raw = {
        "run": {"dir": out},
        "data": {"name": "imagefolder", "root": data_root, "num_classes": num_classes, "resolution": resolution},
        "tokenizers": {TOKENIZER_ID: {"model": {"name": "maskgit-official", **vq_sizes}, "train": converted}},
        "priors": {PRIOR_ID: {"target": f"{TOKENIZER_ID}.tokens", "train": converted,
                              "model": {"name": "maskgit-bert", **prior_sizes}}},
        "sampler": {"name": "maskgit", "stage": {"steps": steps, "schedule": "cosine", "choice_temperature": 4.5}},
    }
    registry = get_registry()
    config = cfg.validate(raw, f"{tokenizer} + {transformer}", registry)
    vq = registry.build("tokenizer", config.tokenizers[TOKENIZER_ID].model, resolution=resolution)
    _load(vq, tokenizer_state(tokenizer_params, vq), tokenizer)
    target = vq.level_specs(resolution)[0]
    prior = registry.build("prior", config.priors[PRIOR_ID].model, target=target, conditions=[],
                           num_classes=num_classes)
    _load(prior, transformer_state(transformer_params), transformer)
    run = Run(out)
    run.save_config(config)
    run.save_weights("tokenizer", TOKENIZER_ID, vq, "maskgit-official", step=0, registry=registry)
    run.save_weights("prior", PRIOR_ID, prior, "maskgit-bert", step=0, registry=registry)
    return run
