"""Measure a config's cost: seconds per training step of each component and per sampled image.

Random token grids stand in for a token cache, so nothing needs to be trained first.
Figures are printed, never asserted.
"""
from __future__ import annotations

import time
from typing import Any

import torch

from .build import build
from .train import stack_batch


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def benchmark(config: Any, repeats: int = 5) -> list[dict[str, Any]]:
    """Rows of ``{component, what, seconds, per}`` on the config's device."""
    device = torch.device("cuda" if config.run.device != "cpu" and torch.cuda.is_available() else "cpu")
    built = build(config)
    model = built.model
    data = built.dataset("train")
    rows = []
    for tid, tokenizer in model.tokenizers.items():
        if not model.owns_weights(tid):
            continue
        tokenizer.to(device).train()
        batch = config.tokenizers[tid].train.batch_size
        images = stack_batch(data, torch.arange(batch) % len(data), model.resolution_of(tid))[0].to(device)

        def step():
            losses, _ = tokenizer.losses(images, 10**9)
            sum(losses.values()).backward()
        rows.append({"component": f"tokenizer {tid}", "what": f"train step, batch {batch}",
                     "seconds": _time(step, repeats)})
    for pid, slot in model.priors.items():
        prior = slot.prior.to(device).train()
        batch = config.priors[pid].train.batch_size
        tokens = torch.randint(0, prior.target.codebook_size, (batch, prior.target.height, prior.target.width),
                               device=device)
        conditions = [torch.randint(0, c.codebook_size, (batch, c.height, c.width), device=device)
                      for c in prior.conditions]
        labels = torch.randint(0, model.num_classes, (batch,), device=device)
        generator = torch.Generator(device).manual_seed(0)
        def prior_step():
            prior.loss(tokens, labels, conditions, built.schedules[pid], generator).loss.backward()
        rows.append({"component": f"prior {pid}", "what": f"train step, batch {batch}",
                     "seconds": _time(prior_step, repeats)})
    if built.sampler is not None:
        for module in built.modules():
            module.to(device).eval()
        sampler = built.sampler
        labels = torch.arange(config.eval.batch_size, device=device) % model.num_classes
        generator = torch.Generator(device).manual_seed(0)
        seconds = _time(lambda: sampler.sample(model, labels, generator), max(1, repeats // 2))
        rows.append({"component": f"sampler {config.sampler.name}", "what": f"per image, batch {len(labels)}",
                     "seconds": seconds / len(labels)})
    return rows
