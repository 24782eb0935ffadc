"""LlamaGen's VQ checkpoints (``vq_ds16_c2i.pt`` and the like) -> a stratagen run directory.

The released file is ``{"model": state_dict, "args": argparse.Namespace(...)}`` (the training
arguments beside the weights): it is read with ``torch.load(weights_only=True)`` with exactly
``argparse.Namespace`` allowed. Sizes come from the weights' shapes; the codes are l2-normalised
unless the arguments say ``codebook_l2_norm=False``.

The run holds the tokenizer ``vq`` (``llamagen-vq``, nothing left to train). With ``config``, a
run config whose data, priors, critics, sampler and eval sections it takes (priors on
``vq.tokens``): ``stratagen train OUT --resume`` then trains those priors on LlamaGen's tokens.
"""
from __future__ import annotations

import argparse
from typing import Any

from stratagen import config as cfg
from stratagen.io.run import Run, load_state
from stratagen.registry import ConfigError, StratagenError, get_registry

from .keys import autoencoder_sizes, autoencoder_state
from stratagen.io.checkpoint import load_torch_file

TOKENIZER_ID = "vq"
CONVERTED = {"steps": 0, "checkpoint_every": 1}  # nothing left to train


def llamagen_state(loaded: Any, source: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the ``llamagen-vq`` model fields, its state dict) of a loaded LlamaGen VQ checkpoint."""
    state = loaded.get("model", loaded) if isinstance(loaded, dict) else None
    if not isinstance(state, dict) or "quantize.embedding.weight" not in state:
        raise StratagenError(f"{source}: not a LlamaGen VQ checkpoint (no model weights with quantize.embedding)")
    args = loaded.get("args") if isinstance(loaded.get("args"), argparse.Namespace) else argparse.Namespace()
    try:
        sizes, weights = autoencoder_sizes(state, "llamagen"), autoencoder_state(state, "llamagen")
    except StratagenError as exc:
        raise StratagenError(f"{source}: {exc}") from None
    fields = {"name": "llamagen-vq", **sizes, "codebook_size": state["quantize.embedding.weight"].shape[0],
              "l2_normalized_codes": bool(getattr(args, "codebook_l2_norm", True))}
    weights["quantizer.codebook.weight"] = state["quantize.embedding.weight"]
    return fields, weights


def convert_llamagen_vq(*, checkpoint: str, resolution: int, data_root: str, num_classes: int,
                        config: str | None, out: str) -> Run:
    """Convert LlamaGen's VQ checkpoint (path or fsspec URL) into the run directory ``out``.

    ``resolution``: image size of the run; ``data_root``/``num_classes``: its image folder when no
    ``config`` gives the data; ``config``: a run config providing data, priors, sampler and eval.
    """
    fields, weights = llamagen_state(load_torch_file(checkpoint, allowed=[argparse.Namespace]), checkpoint)
    raw: dict[str, Any] = {"data": {"name": "imagefolder", "root": data_root, "num_classes": num_classes}}
    if config is not None:
        raw = cfg.load_raw(config)
        if set(raw.get("tokenizers") or {}) - {TOKENIZER_ID}:
            raise ConfigError(f"{config}: the converted run's only tokenizer is {TOKENIZER_ID!r} "
                              f"(LlamaGen's); found tokenizers {sorted(raw['tokenizers'])}")
    raw["run"] = {**raw.get("run", {}), "dir": out}
    raw["data"] = {**raw["data"], "resolution": resolution}
    raw["tokenizers"] = {TOKENIZER_ID: {"model": fields, "train": CONVERTED}}
    registry = get_registry()
    run_config = cfg.validate(raw, f"{checkpoint} + {config}" if config else checkpoint, registry)
    try:
        tokenizer = registry.build("tokenizer", run_config.tokenizers[TOKENIZER_ID].model, resolution=resolution)
    except ValueError as exc:
        raise ConfigError(f"convert llamagen-vq: {exc}") from None
    load_state(tokenizer, weights, checkpoint, "LlamaGen VQ")
    run = Run(out)
    run.save_config(run_config)
    run.save_weights("tokenizer", TOKENIZER_ID, tokenizer, "llamagen-vq", step=0, registry=registry)
    return run
