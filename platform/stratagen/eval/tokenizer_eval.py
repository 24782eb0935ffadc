"""Tokenizer quality: the columns of StraIT Table 1 (rFID / PSNR, per-level perplexity).

Every image of a dataset is encoded, decoded and compared with its original:

* ``psnr``: mean over images of ``10 log10(1 / MSE)`` in dB, with images mapped from [-1, 1] to
  [0, 1] and reconstructions clamped to [-1, 1] first (an exact reconstruction counts as 100 dB);
* ``ppl_<level>`` / ``ppl_std_<level>``: mean and std of the per-batch perplexity (StraIT Eq. 5),
  as Table 1 reports it, so it depends on ``batch_size``;
* ``ppl_dataset_<level>``, ``usage_<level>``: perplexity and the used share of the codebook over
  the whole dataset's tokens;
* ``rfid``: FID of the reconstructions against the originals, when a metric is given;
* for a two-level tokenizer (levels ``coarse``, ``fine`` in its order, ``top`` and ``bottom`` for
  VQGAN2), the **level-swap test**: each image A is paired with another image B of the set
  (a seeded derangement inside each batch) and ``swap_keep_<coarse>_psnr`` is the PSNR to A of
  ``decode(coarse A, fine B)``, ``swap_keep_<fine>_psnr`` that of ``decode(coarse B, fine A)``;
  ``swap_other_psnr`` is the PSNR of B itself to A (what an unrelated image scores), and
  ``<coarse>_only_psnr`` that of decoding the coarse level alone where the tokenizer can
  (VQGAN2-R). Each comes with a ``_std`` over images. A level that carries the image's layout
  keeps A recognisable when the other level is swapped: StraIT's claim that VQGAN2-R's top
  level is the image's stem (§3.1) reads ``swap_keep_top_psnr`` well above
  ``swap_other_psnr`` and above ``swap_keep_bottom_psnr``.
"""
from __future__ import annotations

import os
from typing import Mapping

import torch
from torch.utils.data import DataLoader, Dataset

from stratagen.data.transforms import resize_images
from stratagen.nn import codebook_stats
from stratagen.registry import StratagenError, Tokenizer

from .fidelity import Metric, ReferenceSet, from_uint8, to_uint8

MIN_MSE = 1e-10  # caps the PSNR of a perfect reconstruction at 100 dB
SWAP_SEED = 0  # the pairing of the level-swap test: the same pairs in every run


def psnr(images: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB ``[B]`` of ``[B, 3, H, W]`` images in [-1, 1] (peak 1 after mapping to [0, 1])."""
    error = (images.clamp(-1, 1) - reconstructions.clamp(-1, 1)) / 2
    return 10 * torch.log10(1 / error.double().pow(2).flatten(1).mean(1).clamp_min(MIN_MSE))


def swap_partners(batch: int, generator: torch.Generator) -> torch.Tensor:
    """A derangement of ``range(batch)`` ``[batch]``: image i is paired with image ``partner[i] != i``
    (one random cycle through the batch, so every image is both an A and a B once)."""
    order = torch.randperm(batch, generator=generator)
    partner = torch.empty_like(order)
    partner[order] = order.roll(-1)
    return partner


def level_swaps(tokenizer: Tokenizer, images: torch.Tensor, grids: Mapping[str, torch.Tensor],
                partner: torch.Tensor) -> dict[str, torch.Tensor]:
    """The level-swap reconstructions of a two-level tokenizer (see the module docstring).

    Args:
        images: ``[B, 3, H, W]`` in [-1, 1], the A images; ``grids`` their tokens (two levels).
        partner: ``[B]`` index of each image's B (:func:`swap_partners`).

    Returns:
        ``swap_keep_<coarse>`` = decode(coarse A, fine B), ``swap_keep_<fine>`` = decode(coarse B,
        fine A), ``swap_other`` = B, and ``<coarse>_only`` where the tokenizer decodes the coarse
        level alone; each ``[B, 3, H, W]`` clamped to [-1, 1].
    """
    coarse, fine = grids
    out = {f"swap_keep_{coarse}": tokenizer.decode({coarse: grids[coarse], fine: grids[fine][partner]}),
           f"swap_keep_{fine}": tokenizer.decode({coarse: grids[coarse][partner], fine: grids[fine]}),
           "swap_other": images[partner]}
    if tokenizer.can_decode({coarse}):
        out[f"{coarse}_only"] = tokenizer.decode({coarse: grids[coarse]})
    return {name: decoded.clamp(-1, 1) for name, decoded in out.items()}


@torch.no_grad()
def level_swap_examples(tokenizer: Tokenizer, dataset: Dataset, count: int, device: str | torch.device,
                        resolution: int | None = None) -> dict[str, torch.Tensor] | None:
    """The first ``count`` images of ``dataset`` with their level swaps, for a figure: ``image`` (A),
    its ``reconstruction`` (top A + bottom A) and every entry of :func:`level_swaps`, each ``[count, 3, H, W]`` on the CPU; None unless the
    tokenizer has two levels. The pairing is that of the first batch of :func:`evaluate_tokenizer`
    with ``batch_size=count``."""
    images = torch.stack([dataset[i][0] for i in range(min(count, len(dataset)))])
    if len(images) < 2:
        return None
    was_training = tokenizer.training
    tokenizer.to(device).eval()
    images = resize_images(images.to(device), resolution)
    grids = tokenizer.encode(images)
    swaps = None
    if len(grids) == 2:
        partner = swap_partners(len(images), torch.Generator().manual_seed(SWAP_SEED)).to(device)
        swaps = {"image": images.cpu(), "reconstruction": tokenizer.decode(grids).clamp(-1, 1).cpu(),
                 **{k: v.cpu() for k, v in level_swaps(tokenizer, images, grids, partner).items()}}
    tokenizer.train(was_training)
    return swaps


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
        ``usage_<level>``; the level-swap PSNRs for a two-level tokenizer; plus ``rfid`` with a
        metric (see the module docstring).
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
    swap_psnrs: dict[str, list[torch.Tensor]] = {}
    pairing = torch.Generator().manual_seed(SWAP_SEED)
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
        if len(grids) == 2 and len(images) > 1:
            partner = swap_partners(len(images), pairing).to(images.device)
            for name, swapped in level_swaps(tokenizer, images, grids, partner).items():
                swap_psnrs.setdefault(f"{name}_psnr", []).append(psnr(images, swapped).cpu())
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
    for key, values in swap_psnrs.items():
        values = torch.cat(values)
        out[key], out[f"{key}_image_std"] = values.mean().item(), values.std(unbiased=False).item()
    if fid_metric is not None:
        scores = fid_metric.compute(from_uint8(torch.cat(reconstructions)), torch.cat(labels),
                                    ReferenceSet(dataset, cache_dir))
        if "fid" not in scores:
            raise StratagenError("evaluate_tokenizer: the rFID metric reports no fid (enable fid in its metrics)")
        out["rfid"] = scores["fid"]
    return out
