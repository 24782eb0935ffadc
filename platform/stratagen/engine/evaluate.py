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

from stratagen.eval import ReferenceSet, evaluate_tokenizer, from_uint8, level_swap_examples, to_uint8
from stratagen.registry import Sampler

from . import figures
from .build import BuiltRun, build_metrics
from .distributed import Processes
from .gather import gather_batches, on_main

#: batch seeds of sampling seed ``s`` are ``s * SEED_STRIDE + batch index``
SEED_STRIDE = 1_000_003


@dataclass
class Generated:
    """uint8 images ``[N, 3, H, W]`` for ``labels`` ``[N]``, and the sampling cost.

    Images are kept as :func:`stratagen.eval.to_uint8` gives them (what a PNG holds and what the
    FID extractors read): a quarter of float32's bytes to gather from other processes and to hold
    until they are scored (metrics take float images, :meth:`pixels`, so scoring makes a float copy).
    Sampling under torchrun converts exactly as one process does, so both hold the same bytes.
    ``seconds_per_image`` is the wall time of the whole generation (every batch, and the gathering
    under torchrun) divided by the number of images.
    """

    images: torch.Tensor
    labels: torch.Tensor
    seconds_per_image: float

    def pixels(self) -> torch.Tensor:
        """The images as float ``[N, 3, H, W]`` in [-1, 1] (the uint8 values mapped back exactly)."""
        return from_uint8(self.images)


def sample_labels(num_classes: int, settings: Any) -> list[int]:
    """``samples_per_class`` labels for each evaluated class, class-major."""
    classes = settings.classes if settings.classes is not None else list(range(num_classes))
    return [c for c in classes for _ in range(settings.samples_per_class)]


def generate(pipe: Any, labels: Sequence[int], seed: int, batch_size: int, sampler: Sampler | None = None,
             desc: str = "sample", procs: Processes | None = None) -> Generated | None:
    """Sample ``labels`` in batches of ``batch_size`` (the last may be smaller); batch ``i`` uses seed
    ``seed * SEED_STRIDE + i``, so every model given the same labels, seed and batch size is sampled
    under identical conditions, and nearby seeds (a compare's ``seeds: [0, 1, 2]``) never share a batch.

    Under torchrun (``procs``) the batches are split over the processes and gathered on rank 0
    (:func:`stratagen.engine.gather.gather_batches`): the same images, in the same order, as one
    process samples. Returns the whole set on rank 0 and None on the other ranks.
    """
    procs = procs or Processes(device=pipe.device)
    starts = range(0, len(labels), batch_size)
    start = time.perf_counter()

    def sample(i: int) -> torch.Tensor:
        chunk = labels[starts[i]: starts[i] + batch_size]
        return to_uint8(pipe.sample(chunk, seed=seed * SEED_STRIDE + i, sampler=sampler).images)

    batches = gather_batches(sample, [min(batch_size, len(labels) - s) for s in starts], procs, desc)
    if batches is None:
        return None
    seconds = time.perf_counter() - start
    return Generated(torch.cat(batches), torch.tensor(list(labels)), seconds / max(1, len(labels)))


def score(generated: Generated, metrics: list[tuple[str, Any]], reference: ReferenceSet) -> dict[str, float]:
    """Every metric's values for the generated images (one dict; metric names as keys)."""
    images = generated.pixels()
    out: dict[str, float] = {}
    for _, metric in metrics:
        out.update(metric.compute(images, generated.labels, reference))
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


#: images (rows) in a level-swap figure
SWAP_EXAMPLES = 6


def level_swap_figures(pipe: Any, reference: ReferenceSet, folder: str, variant: str | None = None) -> dict[str, str]:
    """One PNG per two-level tokenizer the run trains, ``<folder>/[<variant>_]level_swap_<tid>.png``:
    eval images, their partners and the level-swapped decodes (:func:`stratagen.eval.level_swap_examples`).
    Returns ``{tokenizer id: path}``."""
    import os

    model, paths = pipe.model, {}
    for tid, tokenizer in model.tokenizers.items():
        examples = model.owns_weights(tid) and level_swap_examples(
            tokenizer, reference.dataset, SWAP_EXAMPLES, pipe.device, model.resolution_of(tid))
        if examples:
            os.makedirs(folder, exist_ok=True)
            prefix = f"{variant}_" if variant else ""
            title = f"{variant + ': ' if variant else ''}level swaps of tokenizer {tid}"
            paths[tid] = figures.level_swaps(examples, title, os.path.join(folder, f"{prefix}level_swap_{tid}.png"))
    return paths


def _log_tokenizers(logdir: str, reports: dict[str, dict[str, float]], swap_figures: dict[str, str]) -> None:
    """The tokenizer report as TensorBoard scalars ``eval/<tokenizer id>/<metric>`` and the level-swap
    figures as images."""
    from .logger import RunLogger

    logger = RunLogger(logdir)
    for tid, values in reports.items():
        logger.scalars(f"eval/{tid}", values, 0)
    for tid, path in swap_figures.items():
        logger.png(f"eval/{tid}/level_swaps", path)
    logger.close()


def evaluate_run(pipe: Any, procs: Processes, samples: bool = True) -> dict[str, Any]:
    """``stratagen eval``'s report: ``tokenizers`` (:func:`tokenizer_report`) and, with ``samples`` and a
    sampler, ``samples``: the configured metrics of ``eval.samples_per_class`` images per class, their
    wall time per image and count. Two-level tokenizers also get a level-swap figure
    (:func:`level_swap_figures`, under ``<run>/figures/``, listed in ``figures``); the tokenizer numbers
    and the figures are logged to the run's TensorBoard under ``eval/``.

    Under torchrun the sampling is split over the processes (:func:`generate`); the tokenizer report
    and the metrics are computed on rank 0 alone, which reads the reference set. Every process
    returns the same report.
    """
    settings = pipe.config.eval
    metrics = build_metrics(settings, pipe.registry)
    reference = reference_set(pipe.built, pipe.run.local_path("eval_cache"))
    report: dict[str, Any] = {"tokenizers": on_main(procs, lambda: tokenizer_report(pipe, reference, metrics))}
    swap_figures = on_main(procs, lambda: level_swap_figures(pipe, reference, pipe.run.local_path("figures")))
    if swap_figures:
        report["figures"] = {f"level_swap_{tid}": path for tid, path in swap_figures.items()}
    if procs.is_main:
        _log_tokenizers(pipe.run.local_path("tb", "eval"), report["tokenizers"], swap_figures)
    if samples and pipe.config.sampler is not None:
        labels = sample_labels(pipe.model.num_classes, settings)
        generated = generate(pipe, labels, settings.seed, settings.batch_size, procs=procs)
        report["samples"] = on_main(procs, lambda: {**score(generated, metrics, reference),
                                                    "sec_per_image": generated.seconds_per_image,
                                                    "count": len(labels)})
    return report
