"""Evaluation of a trained run: tokenizer reconstruction (Table 1) and sample quality.

In-domain metrics (the default, offline) score images in the feature space of a small
classifier trained on the run's eval split; they rank models on the same data but are
not comparable to published Inception FIDs.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from stratagen.eval import ReferenceSet, evaluate_tokenizer
from stratagen.registry import Sampler

from .build import BuiltRun
from .logger import progress

#: batch seeds of sampling seed ``s`` are ``s * SEED_STRIDE + batch index``
SEED_STRIDE = 1_000_003


@dataclass
class Generated:
    """Images ``[N, 3, H, W]`` for ``labels`` ``[N]``, and the sampling cost."""

    images: torch.Tensor
    labels: torch.Tensor
    seconds_per_image: float
    steps: int


def sample_labels(num_classes: int, settings: Any) -> list[int]:
    """``samples_per_class`` labels for each evaluated class, class-major."""
    classes = settings.classes if settings.classes is not None else list(range(num_classes))
    return [c for c in classes for _ in range(settings.samples_per_class)]


def generate(pipe: Any, labels: Sequence[int], seed: int, batch_size: int, sampler: Sampler | None = None,
             desc: str = "sample") -> Generated:
    """Sample ``labels`` in batches; batch ``i`` uses seed ``seed * SEED_STRIDE + i``, so every model
    given the same labels, seed and batch size is sampled under identical conditions, and nearby
    seeds (a compare's ``seeds: [0, 1, 2]``) never share a batch."""
    images, steps, start = [], 0, time.perf_counter()
    batches = range(0, len(labels), batch_size)
    for i, begin in enumerate(progress(batches, desc=desc)):
        out = pipe.sample(labels[begin: begin + batch_size], seed=seed * SEED_STRIDE + i, sampler=sampler)
        images.append(out.images.float().clamp(-1, 1).cpu())
        steps = out.steps
    seconds = time.perf_counter() - start
    return Generated(torch.cat(images), torch.tensor(list(labels)), seconds / max(1, len(labels)), steps)


def score(generated: Generated, metrics: list[tuple[str, Any]], reference: ReferenceSet) -> dict[str, float]:
    out: dict[str, float] = {}
    for _, metric in metrics:
        out.update(metric.compute(generated.images, generated.labels, reference))
    return out


def reference_set(built: BuiltRun, cache_dir: str) -> ReferenceSet:
    """The run's eval split, with metric caches (classifier, features) under ``cache_dir``."""
    return ReferenceSet(built.dataset("eval"), cache_dir)


def tokenizer_report(pipe: Any, reference: ReferenceSet, metrics: list[tuple[str, Any]],
                     batch_size: int = 64) -> dict[str, dict[str, float]]:
    """Per tokenizer: PSNR, per-level perplexity and usage, and rFID with the first metric that reports FID."""
    fid_metric = next((m for _, m in metrics if m.reports_fid), None)
    model = pipe.model
    return {tid: evaluate_tokenizer(tokenizer, reference.dataset, batch_size, pipe.device, fid_metric,
                                    reference.cache_dir, model.resolution_of(tid))
            for tid, tokenizer in model.tokenizers.items() if model.owns_weights(tid)}
