"""Tokenizer quality: the columns of StraIT Table 1 (rFID / PSNR, per-level perplexity).

Every image of a dataset is encoded, decoded and compared with its original:

* ``psnr``: mean over images of ``10 log10(1 / MSE)`` in dB, with images mapped from [-1, 1] to
  [0, 1] and reconstructions clamped to [-1, 1] first (an exact reconstruction counts as 100 dB);
* ``ppl_<level>`` / ``ppl_std_<level>``: mean and std of the per-batch perplexity (StraIT Eq. 5),
  as Table 1 reports it, so it depends on ``batch_size``;
* ``ppl_dataset_<level>``, ``usage_<level>``: perplexity and the used share of the codebook over
  the whole dataset's tokens;
* ``rfid``: FID of the reconstructions against the originals, when a metric is given.
"""
from __future__ import annotations

import os

import torch
from torch.utils.data import DataLoader, Dataset

from stratagen.data.transforms import resize_images
from stratagen.nn import codebook_stats
from stratagen.registry import StratagenError, Tokenizer

from .fidelity import Metric, ReferenceSet, from_uint8, to_uint8

MIN_MSE = 1e-10  # caps the PSNR of a perfect reconstruction at 100 dB


def psnr(images: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB ``[B]`` of ``[B, 3, H, W]`` images in [-1, 1] (peak 1 after mapping to [0, 1])."""
    error = (images.clamp(-1, 1) - reconstructions.clamp(-1, 1)) / 2
    return 10 * torch.log10(1 / error.double().pow(2).flatten(1).mean(1).clamp_min(MIN_MSE))


@torch.no_grad()
def evaluate_tokenizer(tokenizer: Tokenizer, dataset: Dataset, batch_size: int, device: str | torch.device,
                       fid_metric: Metric | None = None, cache_dir: str | os.PathLike | None = None,
                       resolution: int | None = None) -> dict[str, float]:
    """Reconstruction quality and codebook statistics of ``tokenizer`` over every image of ``dataset``.

    Args:
        tokenizer: moved to ``device`` and run in eval mode (its train/eval mode is restored).
        dataset: yields ``(image [3, H, W] in [-1, 1], label)``.
        batch_size: images per batch; also the batch of the per-batch perplexity.
        fid_metric: when given, ``rfid`` is its ``fid`` of the reconstructions against ``dataset``.
        cache_dir: the metric's reference cache (needed with ``fid_metric``).
        resolution: the size the tokenizer works at, when not the dataset's: images are resized
            to it (PSNR is measured there) and reconstructions resized back for rFID.

    Returns:
        ``psnr``, and per level ``ppl_<level>``, ``ppl_std_<level>``, ``ppl_dataset_<level>``,
        ``usage_<level>``; plus ``rfid`` with a metric (see the module docstring).
    """
    if fid_metric is not None and cache_dir is None:
        raise StratagenError("evaluate_tokenizer: rFID needs a cache_dir for the reference statistics")
    was_training = tokenizer.training
    tokenizer.to(device).eval()
    psnrs: list[torch.Tensor] = []
    tokens: dict[str, list[torch.Tensor]] = {}
    batch_ppl: dict[str, list[float]] = {}
    reconstructions: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    codebook_sizes: dict[str, int] = {}
    for images, batch_labels in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        dataset_size = images.shape[-1]
        images = resize_images(images.to(device), resolution)
        grids = tokenizer.encode(images)
        decoded = tokenizer.decode(grids).clamp(-1, 1)
        psnrs.append(psnr(images, decoded).cpu())
        if not codebook_sizes:
            codebook_sizes = {spec.name: spec.codebook_size for spec in tokenizer.level_specs(images.shape[-1])}
        for level, grid in grids.items():
            tokens.setdefault(level, []).append(grid.cpu())
            batch_ppl.setdefault(level, []).append(codebook_stats(grid, codebook_sizes[level])[0])
        if fid_metric is not None:
            reconstructions.append(to_uint8(resize_images(decoded, dataset_size)).cpu())
            labels.append(torch.as_tensor(batch_labels))
    tokenizer.train(was_training)

    out = {"psnr": torch.cat(psnrs).mean().item()}
    for level, grids in tokens.items():
        ppl = torch.tensor(batch_ppl[level], dtype=torch.float64)
        out[f"ppl_{level}"] = ppl.mean().item()
        out[f"ppl_std_{level}"] = ppl.std(unbiased=False).item()
        out[f"ppl_dataset_{level}"], out[f"usage_{level}"] = codebook_stats(torch.cat(grids), codebook_sizes[level])
    if fid_metric is not None:
        scores = fid_metric.compute(from_uint8(torch.cat(reconstructions)), torch.cat(labels),
                                    ReferenceSet(dataset, cache_dir))
        if "fid" not in scores:
            raise StratagenError("evaluate_tokenizer: the rFID metric reports no fid (enable fid in its metrics)")
        out["rfid"] = scores["fid"]
    return out
