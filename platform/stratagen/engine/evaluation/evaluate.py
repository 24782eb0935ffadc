"""Evaluation of a trained run: tokenizer reconstruction (Table 1) and sample quality.

In-domain metrics (the default, offline) score images in the feature space of a small
classifier trained on the run's eval split; they rank models on the same data but are
not comparable to published Inception FIDs. Against an ADM reference batch
(:mod:`stratagen.eval.adm`, written by :func:`reference_statistics`) the samples also get the
published tables' protocol: ``fid_adm``, ``sfid_adm``, ``is_adm``, ``precision_adm``, ``recall_adm``.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from stratagen.data import Key, UnreadableImage, loader_workers
from stratagen.eval import ReferenceSet, evaluate_tokenizer, from_uint8, level_swap_examples, to_uint8
from stratagen.eval.adm import (NEIGHBOURS, POOL_DIM, SPATIAL_DIM, AdmEvaluator, AdmInception, GaussianAccumulator,
                                ImageSink, ReferenceBatch, write_reference)
from stratagen.eval.fidelity import INCEPTION_FILE
from stratagen.registry import Sampler, StratagenError

from ..build import BuiltRun, build_metrics
from ..devices.gather import gather_batches, on_main
from ..devices.processes import Processes
from ..reporting import figures
from ..reporting.logger import progress

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
    (:func:`stratagen.engine.devices.gather.gather_batches`): the same images, in the same order, as one
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
    import shutil

    from ..reporting.logger import RunLogger

    shutil.rmtree(logdir, ignore_errors=True)  # the latest evaluation, not one copy per run of `eval`
    logger = RunLogger(logdir)
    for tid, values in reports.items():
        logger.scalars(f"eval/{tid}", values, 0)
    for tid, path in swap_figures.items():
        logger.png(f"eval/{tid}/level_swaps", path)
    logger.close()


def evaluate_run(pipe: Any, procs: Processes, samples: bool = True, adm: AdmEvaluator | None = None,
                 reference_only: bool = False) -> dict[str, Any]:
    """``stratagen eval``'s report: ``tokenizers`` (:func:`tokenizer_report`) and, with ``samples`` and a
    sampler, ``samples``: the configured metrics of ``eval.samples_per_class`` images per class, their
    wall time per image and count; with ``adm``, also the ADM protocol's scores against its reference
    batch (:meth:`stratagen.eval.adm.AdmEvaluator.score`). Two-level tokenizers also get a level-swap figure
    (:func:`level_swap_figures`, under ``<run>/figures/``, listed in ``figures``); the tokenizer numbers
    and the figures are logged to the run's TensorBoard under ``eval/``. With ``reference_only`` (and
    ``adm``) the samples are scored by the ADM protocol alone: no tokenizer report, no configured
    metric, and the run's dataset is never opened (a converted run on a machine without its images).

    Under torchrun the sampling is split over the processes (:func:`generate`); the tokenizer report
    and the metrics are computed on rank 0 alone, which reads the reference set. Every process
    returns the same report.
    """
    if reference_only and adm is None:
        raise StratagenError("eval: scoring against the reference batch only needs a reference batch (--reference)")
    settings = pipe.config.eval
    cache_dir = pipe.run.local_path("eval_cache")
    labels = sample_labels(pipe.model.num_classes, settings)
    if adm is not None and adm.reference.images is not None and len(labels) <= NEIGHBOURS:
        raise StratagenError(f"precision/recall against {adm.reference.url} (k = {NEIGHBOURS}) need at least "
                             f"{NEIGHBOURS + 1} samples; eval draws {len(labels)}")
    report: dict[str, Any] = {}
    if not reference_only:
        metrics = build_metrics(settings, pipe.registry)
        reference = reference_set(pipe.built, cache_dir)
        report["tokenizers"] = on_main(procs, lambda: tokenizer_report(pipe, reference, metrics))
        swap_figures = on_main(procs, lambda: level_swap_figures(pipe, reference, pipe.run.local_path("figures")))
        if swap_figures:
            report["figures"] = {f"level_swap_{tid}": path for tid, path in swap_figures.items()}
        if procs.is_main:
            _log_tokenizers(pipe.run.local_path("tb", "eval"), report["tokenizers"], swap_figures)
    if samples and pipe.config.sampler is not None:
        generated = generate(pipe, labels, settings.seed, settings.batch_size, procs=procs)

        def scores() -> dict[str, Any]:
            protocol = adm.score(generated.images, cache_dir) if adm is not None else {}
            configured = {} if reference_only else score(generated, metrics, reference)
            return {**configured, **protocol,
                    "sec_per_image": generated.seconds_per_image, "count": len(labels)}

        report["samples"] = on_main(procs, scores)
    return report


def inception_weights(path: str | None, what: str) -> str:
    """``path`` of torch-fidelity's Inception weights, checked to be a file; ``what`` needs it."""
    if path is None:
        raise StratagenError(f"{what} needs torch-fidelity's Inception weights ({INCEPTION_FILE}): give "
                             f"--inception-weights PATH (or an 'inception' metric with weights in eval.metrics)")
    if not os.path.isfile(path):
        raise StratagenError(f"--inception-weights {path} does not exist (expected {INCEPTION_FILE})")
    return path


def read_reference(url: str, weights: str | None) -> tuple[ReferenceBatch, str]:
    """``eval --reference``'s inputs, checked before any work: the reference batch at ``url`` and the
    path of the Inception weights."""
    return ReferenceBatch.read(url), inception_weights(weights, "eval --reference")


def load_inception(weights: str | None, what: str, device: torch.device | str = "auto",
                   batch_size: int = 64) -> AdmInception:
    """The Inception of ADM's protocol from the weights file ``weights`` (checked; ``what`` needs it)."""
    return AdmInception(inception_weights(weights, what), device, batch_size)


def adm_evaluator(reference: ReferenceBatch, weights: str, device: torch.device | str) -> AdmEvaluator:
    """ADM's evaluator of ``reference``, its Inception on ``device``."""
    return AdmEvaluator(reference, load_inception(weights, "eval --reference", device))


class _EvaluationView(Dataset):
    """Item ``i`` of a dataset's evaluation view (centre crop) as ``(uint8 [3, R, R], readable)``;
    an unreadable file gives zeros and False (and its path, for the report)."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, bool, str]:
        try:
            image, _ = self.dataset[Key(index, None)]
        except UnreadableImage as exc:
            size = self.dataset.resolution
            return torch.zeros(3, size, size, dtype=torch.uint8), False, exc.path
        return to_uint8(image), True, ""


def reference_statistics(dataset: Any, out: str, inception: AdmInception, images: int = 0
                         ) -> tuple[int, int, list[str]]:
    """Write ``dataset``'s ADM reference batch to ``out`` (:func:`stratagen.eval.adm.write_reference`),
    streaming: one pass in order, in batches of ``inception.batch_size``, in constant memory (the
    statistics accumulate; the kept images go to a temporary file). Images are decoded by loader
    workers beside a GPU (:func:`stratagen.data.loader_workers`), in the main process on a CPU.

    ``dataset`` is an image folder or tar shards (``dataset[Key(i, None)]``: the centre crop);
    unreadable files are left out. ``images`` evenly spaced items (``j * len // images``) are
    kept as ``arr_0``, for precision/recall; an unreadable one is replaced by the next readable
    item. Returns (images in the statistics, images kept, paths left out).
    """
    size = len(dataset)
    count = min(images, size)
    keep = {j * size // count for j in range(count)} if count else set()
    pool, spatial = GaussianAccumulator(POOL_DIM), GaussianAccumulator(SPATIAL_DIM)
    sink = ImageSink() if keep else None
    left_out: list[str] = []
    loader = DataLoader(_EvaluationView(dataset), batch_size=inception.batch_size, shuffle=False,
                        num_workers=loader_workers(None, inception.device))
    start, owed = 0, 0  # owed: chosen items that were unreadable, taken from the next readable ones
    for batch, readable, paths in progress(loader, desc="reference statistics", total=len(loader)):
        chosen = []
        for index, ok in enumerate(readable.tolist(), start):
            take = ok and (index in keep or owed > 0)
            owed += int(index in keep and not ok) - int(take and index not in keep)
            chosen.append(take)
        start += len(batch)
        left_out += [p for p, ok in zip(paths, readable.tolist()) if not ok]
        if not readable.any():
            continue
        features = inception(batch[readable])
        pool.add(features.pool)
        spatial.add(features.spatial)
        if sink is not None:
            sink.add(batch[torch.tensor(chosen, dtype=torch.bool)])
    if pool.count < 2:
        raise StratagenError(f"reference statistics need at least 2 readable images, found {pool.count}")
    write_reference(out, pool, spatial, sink)
    return pool.count, sink.count if sink is not None else 0, left_out
