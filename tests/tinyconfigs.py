"""Tiny run configs that train in seconds on a CPU (imported by tests and conftest)."""
from __future__ import annotations

import copy

from pathlib import Path
from typing import Any

import yaml


TINY_TRAIN = {"steps": 4, "batch_size": 8, "lr": 1e-3, "warmup_steps": 0, "log_every": 1, "checkpoint_every": 2}
TINY_VQ = {"channels": 8, "channel_mult": [1, 2, 2], "num_res_blocks": 1, "codebook_size": 32,
           "embedding_dim": 8, "loss": {"gan_weight": 0.0, "perceptual_weights": None}}
TINY_PRIOR = {"depth": 1, "width": 32, "heads": 2, "mlp_dim": 64, "dropout": 0.0}
#: images per token shard of conftest's ``sharded_run`` (32 images: 4 shards); tests that resume or
#: rebuild its cache set ``stratagen.engine.training.tokenize.SHARD_SIZE`` to this too
SHARD_SIZE = 8
TINY_VAR = {"depth": 1, "width": 32, "heads": 2, "feature_dim": TINY_VQ["embedding_dim"]}


def tiny_config(run_dir: Path, variant: str = "maskgit") -> dict[str, Any]:
    """A run config dict for 16 px synthetic images: ``maskgit``, ``strait``, ``cascade``, ``upsample``
    (32 px; one joint upsampler prior), ``upsample-two-stage`` (one upsampler prior per level) or
    ``var`` (three scales, 1, 2 and 4 tokens a side)."""
    config: dict[str, Any] = {
        "run": {"dir": str(run_dir), "seed": 0, "device": "cpu"},
        "data": {"name": "synthetic", "num_classes": 4, "resolution": 16, "train_size": 32, "eval_size": 16},
    }
    if variant == "maskgit":
        config["tokenizers"] = {"vq": {"model": {"name": "vqgan", "factor": 4, **TINY_VQ}, "train": dict(TINY_TRAIN)}}
        config["priors"] = {"main": {"target": "vq.tokens", "model": {"name": "maskgit", **TINY_PRIOR},
                                     "train": dict(TINY_TRAIN)}}
        config["sampler"] = {"name": "maskgit", "stage": {"steps": 3}}
    elif variant == "strait":
        config["tokenizers"] = {"vq": {"model": {"name": "vqgan2-r", **TINY_VQ, "latent_blocks": 1}, "train": dict(TINY_TRAIN)}}
        config["priors"] = {
            "top": {"target": "vq.top", "model": {"name": "cmtm-top", **TINY_PRIOR}, "train": dict(TINY_TRAIN)},
            "bottom": {"target": "vq.bottom", "conditions": ["vq.top"], "model": {"name": "cmtm-bottom", **TINY_PRIOR},
                       "train": dict(TINY_TRAIN)}}
        config["sampler"] = {"name": "stratified", "top": {"steps": 3}, "bottom": {"steps": 2}}
    elif variant == "cascade":
        config["tokenizers"] = {
            "f16": {"model": {"name": "vqgan", "factor": 4, **TINY_VQ}, "train": dict(TINY_TRAIN)},
            "f8": {"model": {"name": "vqgan", "factor": 2, **TINY_VQ, "channel_mult": [1, 2]}, "train": dict(TINY_TRAIN)}}
        config["priors"] = {
            "top": {"target": "f16.tokens", "model": {"name": "maskgit", **TINY_PRIOR}, "train": dict(TINY_TRAIN)},
            "bottom": {"target": "f8.tokens", "conditions": ["f16.tokens"],
                       "model": {"name": "cmtm-bottom", **TINY_PRIOR}, "train": dict(TINY_TRAIN)}}
        config["sampler"] = {"name": "cascade", "top": {"steps": 3}, "bottom": {"steps": 2}}
    elif variant == "upsample":
        config = tiny_config(run_dir, "strait")
        config["data"]["resolution"] = 32
        config["tokenizers"]["vq"]["resolution"] = 16
        config["tokenizers"]["vq512"] = {"share": "vq"}
        config["priors"]["up"] = {"target": "vq512.top+bottom", "conditions": ["vq.top", "vq.bottom"],
                                  "model": {"name": "upsampler", **TINY_PRIOR}, "train": dict(TINY_TRAIN)}
        config["sampler"] = {"name": "upsample", "top": {"steps": 2}, "bottom": {"steps": 2}, "up": {"steps": 2}}
    elif variant == "upsample-two-stage":
        config = tiny_config(run_dir, "upsample")
        del config["priors"]["up"]
        config["priors"]["up_top"] = {"target": "vq512.top", "conditions": ["vq.top", "vq.bottom"],
                                      "model": {"name": "upsampler", **TINY_PRIOR}, "train": dict(TINY_TRAIN)}
        config["priors"]["up_bottom"] = {"target": "vq512.bottom", "conditions": ["vq512.top", "vq.top", "vq.bottom"],
                                         "model": {"name": "upsampler", **TINY_PRIOR}, "train": dict(TINY_TRAIN)}
        config["sampler"] = {"name": "upsample", "form": "two-stage", "top": {"steps": 2}, "bottom": {"steps": 2},
                             "up_top": {"steps": 2}, "up_bottom": {"steps": 2}}
    elif variant == "var":
        config["tokenizers"] = {"vq": {"model": {"name": "msvq", **TINY_VQ, "scales": [1, 2, 4]},
                                       "train": dict(TINY_TRAIN)}}
        config["priors"] = {"main": {"target": "vq.s3", "conditions": ["vq.s1", "vq.s2"],
                                     "model": {"name": "var", **TINY_VAR}, "train": dict(TINY_TRAIN)}}
        config["sampler"] = {"name": "next-scale"}
    else:
        raise ValueError(variant)
    return copy.deepcopy(config)  # callers edit nested sections freely


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
