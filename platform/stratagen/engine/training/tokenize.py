"""Producing the token cache (:mod:`stratagen.io.tokens`): every image encoded once per view.

Shard ``j`` holds images ``[j * S, (j + 1) * S)`` in every view; process ``rank`` encodes the
shards ``j`` with ``j % world == rank`` and skips those already written for the same
fingerprint (an interrupted cache resumes where it stopped), then process 0 writes the
manifest once every shard exists. View 0 is the evaluation view (centre crop); views
``1 .. K-1`` are the random crops and flips of epochs ``0 .. K-2``, so a prior sees the images
as the tokenizer saw them in training (MaskGIT and StraIT train their priors on random crops).
"""
from __future__ import annotations

import logging
from typing import Any

import torch

from stratagen.data import loader_workers, resize_images
from stratagen.data.loader import view_loader
from stratagen.io.run import Run
from stratagen.io.tokens import Fingerprint, TokenCache, tensor_hash, text_hash, token_dtype
from stratagen.registry import Tokenizer

from ..devices.processes import Processes, barrier
from ..reporting.logger import progress

log = logging.getLogger("stratagen")

SHARD_SIZE = 10_000  # images per shard


def cache_views(config: Any, dataset: Any) -> int:
    """Views worth caching: ``loader.views``, or 1 for a dataset that does not augment."""
    return config.loader.views if getattr(dataset, "augment", False) else 1


def fingerprint(config: Any, tid: str, tokenizer: Tokenizer, dataset: Any, resolution: int | None,
                shard_size: int) -> Fingerprint:
    """What the tokens of ``tid`` depend on: the data, its views, the weights and the config that shapes them."""
    entry = config.tokenizers[tid]
    shaping = {"tokenizer": config.tokenizers[entry.share or tid].model_dump(mode="json"), "resolution": resolution,
               "data": config.data.model_dump(mode="json"), "seed": config.run.seed}
    return Fingerprint(len(dataset), cache_views(config, dataset), shard_size, tensor_hash(tokenizer.state_dict()),
                       text_hash(repr(sorted(shaping.items()))))


@torch.no_grad()
def tokenize(run: Run, config: Any, tid: str, tokenizer: Tokenizer, dataset: Any, split: str, procs: Processes,
             resolution: int | None = None, batch_size: int = 64, shard_size: int | None = None) -> int:
    """Make the token cache of ``tid`` over ``dataset`` unless a complete one for the same
    fingerprint exists; returns the number of images. Called by every process. The tokenizer
    encodes ``batch_size`` crops at a time (``batch_size // views`` images in all their views)."""
    shard_size = shard_size or SHARD_SIZE
    cache = TokenCache(run.path("tokens", tid, split))
    stamp = fingerprint(config, tid, tokenizer, dataset, resolution, shard_size)
    if cache.is_complete(stamp):
        return stamp.images
    shards = -(-stamp.images // shard_size)
    if procs.is_main:
        cache.prepare(shards, stamp)
    barrier(procs)
    tokenizer.eval()
    epochs: list[int | None] = [None, *range(stamp.views - 1)]
    workers = loader_workers(config.loader.workers, procs.device)
    mine = [j for j in range(procs.rank, shards, procs.world) if not cache.shard_is_done(j, stamp)]
    specs = {s.name: s for s in tokenizer.level_specs(resolution or config.data.resolution)}
    skipped: set[str] = set()
    for j in progress(mine, desc=f"tokenize {tid} ({split}, {stamp.views} view(s), rank {procs.rank})"):
        indices = range(j * shard_size, min((j + 1) * shard_size, stamp.images))
        levels: dict[str, list[torch.Tensor]] = {}
        labels = []
        for batch in view_loader(dataset, indices, epochs, max(1, batch_size // stamp.views), workers, procs.device):
            images = batch.float_images(procs.device).flatten(0, 1)  # [B * K, 3, H, W]
            images = resize_images(images, resolution)
            for name, grid in tokenizer.encode(images).items():
                grid = grid.view(len(batch.labels), stamp.views, *grid.shape[1:])
                levels.setdefault(name, []).append(grid.to("cpu", token_dtype(specs[name].codebook_size)))
            labels.append(batch.labels)
            skipped.update(batch.skipped)
        cache.write_shard(j, {k: torch.cat(v) for k, v in levels.items()}, torch.cat(labels), stamp)
    if skipped:
        log.warning("tokenize %s: skipped %d unreadable file(s), e.g. %s", tid, len(skipped), sorted(skipped)[0])
    barrier(procs)
    if procs.is_main:
        counts = [min(shard_size, stamp.images - j * shard_size) for j in range(shards)]
        levels_info = {name: {"shape": [s.height, s.width], "codebook_size": s.codebook_size,
                              "dtype": str(token_dtype(s.codebook_size)).removeprefix("torch.")}
                       for name, s in specs.items()}
        cache.write_manifest(counts, levels_info, stamp)
    barrier(procs)
    return stamp.images

