"""Official LDM-family autoencoder state dicts (taming/VAR layout, LlamaGen layout) as the state of
:class:`stratagen.nn.LDMEncoder` / :class:`stratagen.nn.LDMDecoder`, and their sizes read from
the shapes.

Both layouts hold the same network: residual blocks ``norm1, conv1, norm2, conv2, nin_shortcut``,
attention blocks with 1x1 convs (``q``, ``k``, ``v`` or one fused ``qkv``, ``proj_out``), resampling
convs, ``quant_conv`` / ``post_quant_conv``. They differ in names: taming and VAR call the levels
``encoder.down.i.block.j`` and ``decoder.up.i`` (``i`` the resolution level, the decoder running
from the last), LlamaGen ``encoder.conv_blocks.i.res.j`` and ``decoder.conv_blocks.i`` in run order,
with the middle as a list ``mid.0, mid.1, mid.2``.
"""
from __future__ import annotations

import re
from typing import Literal

import torch

from stratagen.registry import StratagenError

Layout = Literal["taming", "llamagen"]

#: residual block parameter names -> :class:`stratagen.nn.ResBlock`'s
_RES_BLOCK = {"norm1": "residual.0", "conv1": "residual.2", "norm2": "residual.3", "conv2": "residual.5",
              "nin_shortcut": "shortcut"}
_MID = {"0": "block_1", "1": "attn_1", "2": "block_2"}


def _level_prefix(part: str, layout: Layout) -> str:
    return {"taming": {"encoder": "down", "decoder": "up"}, "llamagen": {"encoder": "conv_blocks",
                                                                         "decoder": "conv_blocks"}}[layout][part]


def _rename(key: str, layout: Layout, levels: int) -> str:
    """A network key in stratagen's names (attention blocks still hold q/k/v/qkv/proj_out)."""
    part, *rest = key.split(".")
    if part in ("quant_conv", "post_quant_conv"):
        return f"{'encoder' if part == 'quant_conv' else 'decoder'}.{key}"
    name = ".".join(rest)
    level = re.fullmatch(rf"{_level_prefix(part, layout)}\.(\d+)\.(block|res|attn|downsample|upsample)\.(.*)", name)
    if level:
        index, kind, tail = int(level.group(1)), level.group(2), level.group(3)
        if part == "decoder" and layout == "taming":
            index = levels - 1 - index  # taming's up[i] is resolution level i; stratagen's up runs coarse first
        kind = {"block": "blocks", "res": "blocks", "downsample": "resample", "upsample": "resample"}.get(kind, kind)
        name = f"{['down', 'up'][part == 'decoder']}.{index}.{kind}.{tail}"
    elif layout == "llamagen" and (mid := re.fullmatch(r"mid\.(\d)\.(.*)", name)):
        name = f"mid.{_MID[mid.group(1)]}.{mid.group(2)}"
    block = re.fullmatch(r"(.*)\.(norm1|conv1|norm2|conv2|nin_shortcut)\.(weight|bias)", name)
    if block:
        name = f"{block.group(1)}.{_RES_BLOCK[block.group(2)]}.{block.group(3)}"
    return f"{part}.{name}"


def _attention(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Attention blocks' 1x1 convs as :class:`stratagen.nn.SpatialSelfAttention`'s linear layers."""
    out = {}
    for key, value in state.items():
        found = re.fullmatch(r"(.*)\.(q|k|v|qkv|proj_out)\.(weight|bias)", key)
        if found is None:
            out[key] = value
            continue
        prefix, conv, kind = found.groups()
        value = value.flatten(1) if kind == "weight" else value  # [C, C, 1, 1] -> [C, C]
        if conv == "qkv":
            q, k, v = value.chunk(3)
            out[f"{prefix}.attn.q.{kind}"], out[f"{prefix}.attn.kv.{kind}"] = q, torch.cat([k, v])
        elif conv == "proj_out":
            out[f"{prefix}.attn.proj.{kind}"] = value
        elif conv == "q":
            out[f"{prefix}.attn.q.{kind}"] = value
        elif conv == "k":
            out[f"{prefix}.attn.kv.{kind}"] = torch.cat([value, state[key.replace(".k.", ".v.")].flatten(1)
                                                         if kind == "weight" else state[key.replace(".k.", ".v.")]])
    return out


def autoencoder_state(state: dict[str, torch.Tensor], layout: Layout) -> dict[str, torch.Tensor]:
    """The ``encoder.*``, ``decoder.*``, ``quant_conv.*`` and ``post_quant_conv.*`` entries of an
    official state dict, renamed for an ``encoder`` / ``decoder`` pair of LDM networks."""
    levels = len(channel_mult(state, layout))
    network = {_rename(k, layout, levels): v for k, v in state.items()
               if k.split(".")[0] in ("encoder", "decoder", "quant_conv", "post_quant_conv")}
    try:
        return _attention(network)
    except KeyError as exc:
        raise StratagenError(f"not an LDM-style autoencoder state dict (an attention block without {exc.args[0]})"
                             ) from None


def channel_mult(state: dict[str, torch.Tensor], layout: Layout) -> list[int]:
    """The encoder's channel multipliers, from its first residual block per level."""
    channels = state["encoder.conv_in.weight"].shape[0]
    inner = "block" if layout == "taming" else "res"
    widths, level = [], 0
    while (key := f"encoder.{_level_prefix('encoder', layout)}.{level}.{inner}.0.conv1.weight") in state:
        widths.append(state[key].shape[0] // channels)
        level += 1
    return widths


def autoencoder_sizes(state: dict[str, torch.Tensor], layout: Layout) -> dict[str, object]:
    """``channels, channel_mult, num_res_blocks, z_channels, embedding_dim, attention_levels,
    mid_attention, quant_kernel`` of the LDM networks in an official state dict."""
    try:
        mult = channel_mult(state, layout)
        if not mult:
            raise KeyError("encoder levels")
        level = f"encoder.{_level_prefix('encoder', layout)}"
        inner = "block" if layout == "taming" else "res"
        blocks = len({k.split(".")[4] for k in state if k.startswith(f"{level}.0.{inner}.")})
        attention = [i for i in range(len(mult)) if any(k.startswith(f"{level}.{i}.attn.") for k in state)]
        mid = "encoder.mid.attn_1" if layout == "taming" else "encoder.mid.1"
        quant = state["quant_conv.weight"]
        return dict(channels=state["encoder.conv_in.weight"].shape[0], channel_mult=mult, num_res_blocks=blocks,
                    z_channels=state["encoder.conv_out.weight"].shape[0], embedding_dim=quant.shape[0],
                    attention_levels=attention, mid_attention=any(k.startswith(mid + ".") for k in state),
                    quant_kernel=quant.shape[-1])
    except KeyError as exc:
        raise StratagenError(f"not an LDM-style autoencoder state dict (no {exc.args[0]})") from None
