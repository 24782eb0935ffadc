"""Multi-scale sliced Wasserstein distance (SWD) on Laplacian-pyramid patches.

Karras et al. 2018 (Progressive Growing of GANs, Sec. 5 and Appendix D): build a Laplacian
pyramid of every image, take random 7x7 neighbourhoods (3 channels, so 147 numbers) at each
level, normalise each level's descriptors per channel, and compare the two sets of
descriptors level by level with the sliced Wasserstein distance: project both sets on
random unit directions, sort, and average the absolute differences of the sorted
projections. Fine levels see texture, sharpness and noise; coarse levels see colour and
layout. No network and no weights are involved.

Differences from the paper's setting (Karras et al. compared unconditional 1024-px sets):

* the pyramid stops at ``min_resolution`` (16 px in the paper; 8 here, so that 32-px images
  get three levels) and fewer descriptors and projections are used (64 per image, 4 x 128
  directions instead of 128 and 4 x 512), which keeps one evaluation at seconds on a CPU;
* it is class-conditional: the images generated for class ``c`` are compared with as many
  descriptors drawn from the reference images of class ``c``, and the per-class distances
  are averaged, so images of the wrong class count even when the whole set looks right;
* both sides are normalised with the *reference* descriptors' per-channel mean and standard
  deviation (the paper's code normalised each set by its own), so a colour, brightness or
  contrast shift counts too.

Reported values are multiplied by 1e3 (as in the paper's tables).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .fidelity import Metric, ReferenceSet, from_uint8

PATCH = 7
#: the 5-tap binomial filter of the paper's (and Burt & Adelson's) Gaussian pyramid
_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16


def _blur(images: torch.Tensor) -> torch.Tensor:
    """Separable 5x5 binomial blur of ``[B, C, H, W]`` with reflected borders."""
    channels = images.shape[1]
    kernel = (_BINOMIAL[:, None] * _BINOMIAL[None, :]).to(images)[None, None].repeat(channels, 1, 1, 1)
    return F.conv2d(F.pad(images, (2, 2, 2, 2), mode="reflect"), kernel, groups=channels)


def laplacian_pyramid(images: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """``[B, C, H, W]`` -> ``levels`` band-pass images, finest first (``[B, C, H / 2^l, W / 2^l]``);
    the last one is the low-pass residual."""
    bands, current = [], images
    for _ in range(levels - 1):
        down = _blur(current)[..., ::2, ::2]
        up = torch.zeros_like(current)
        up[..., ::2, ::2] = down
        bands.append(current - 4 * _blur(up))  # 4x: the zero-inserted image has a quarter of the energy
        current = down
    bands.append(current)
    return bands


def patch_descriptors(band: torch.Tensor, count: int, generator: torch.Generator,
                      image_index: torch.Tensor) -> torch.Tensor:
    """``count`` random 7x7 neighbourhoods of ``band`` ``[B, C, H, W]`` -> ``[count, C * 49]``;
    neighbourhood ``k`` comes from image ``image_index[k]``, at a uniform position."""
    _, channels, height, width = band.shape
    ys = torch.randint(0, height - PATCH + 1, (count,), generator=generator)
    xs = torch.randint(0, width - PATCH + 1, (count,), generator=generator)
    offsets = torch.arange(PATCH)
    rows = (ys[:, None] + offsets)[:, :, None].expand(count, PATCH, PATCH)
    cols = (xs[:, None] + offsets)[:, None, :].expand(count, PATCH, PATCH)
    patches = band[image_index[:, None, None], :, rows, cols]  # [count, 7, 7, C]
    return patches.permute(0, 3, 1, 2).reshape(count, channels * PATCH * PATCH)


def channel_stats(descriptors: torch.Tensor, channels: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Per colour channel mean and standard deviation over all of ``[N, C * 49]`` -> ``[1, C, 1]`` each."""
    view = descriptors.view(len(descriptors), channels, -1)
    return view.mean((0, 2), keepdim=True), view.std((0, 2), keepdim=True).clamp_min(1e-8)


def normalise(descriptors: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``[N, C * 49]`` descriptors with per-channel ``mean`` and ``std`` (``[1, C, 1]``) taken out."""
    return ((descriptors.view(len(descriptors), mean.shape[1], -1) - mean) / std).view_as(descriptors)


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, directions: int, repeats: int,
                       generator: torch.Generator) -> float:
    """Mean over ``repeats`` x ``directions`` random unit directions of the 1-D Wasserstein-1
    distance between the projections of ``a`` and ``b`` (both ``[N, D]``, same ``N``)."""
    if a.shape != b.shape:
        raise ValueError(f"sliced_wasserstein needs equally many descriptors, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    distances = []
    for _ in range(repeats):
        projection = torch.randn(a.shape[1], directions, generator=generator)
        projection /= projection.norm(dim=0, keepdim=True)
        pa, _ = (projection.T @ a.T).sort(1)  # [directions, N]: sorting along rows is the fast layout
        pb, _ = (projection.T @ b.T).sort(1)
        distances.append((pa - pb).abs().mean())
    return float(torch.stack(distances).mean())


class SlicedWassersteinMetric(Metric):
    """``swd`` (mean over pyramid levels) and ``swd<resolution>`` per level, times 1e3; lower is better.

    Class-conditional: the descriptors of the images generated for class ``c`` are compared with
    as many descriptors drawn from the reference images of class ``c``, and the per-class
    distances are averaged, so images of the wrong class count as different even when the
    whole set looks like the whole reference set.

    Args:
        patches_per_image: descriptors drawn per generated image and level (128 in the paper).
        directions: random projections per repeat (512 in the paper).
        repeats: independent sets of projections averaged (4 in the paper).
        min_resolution: the coarsest pyramid level (and at least 8 px, for 7x7 patches).
        seed: seeds patch positions, reference draws and projections (same seed, same value).
    """

    reports_fid = False

    def __init__(self, patches_per_image: int = 64, directions: int = 128, repeats: int = 4,
                 min_resolution: int = 8, seed: int = 0):
        self.patches_per_image = patches_per_image
        self.directions = directions
        self.repeats = repeats
        self.min_resolution = max(min_resolution, PATCH + 1)
        self.seed = seed

    def levels(self, resolution: int) -> int:
        """Pyramid levels of a ``resolution``-px image: halve while at least ``min_resolution``."""
        count = 1
        while resolution // 2 ** count >= self.min_resolution:
            count += 1
        return count

    @torch.no_grad()
    def compute(self, generated: torch.Tensor, labels: torch.Tensor, reference: ReferenceSet) -> dict[str, float]:
        """``generated`` ``[N, 3, H, W]`` in [-1, 1] drawn for ``labels`` ``[N]``, against the reference set."""
        batches = list(reference.batches(256))
        real = from_uint8(torch.cat([images for images, _ in batches]))
        return self.distance(generated.float().cpu(), labels.cpu(), real, torch.cat([b[1] for b in batches]))

    @torch.no_grad()
    def distance(self, generated: torch.Tensor, labels: torch.Tensor, real: torch.Tensor,
                 real_labels: torch.Tensor) -> dict[str, float]:
        """SWD between ``generated`` ``[N, 3, H, W]`` (labels ``[N]``) and ``real`` ``[M, 3, H, W]``
        (labels ``[M]``), images in [-1, 1]."""
        generator = torch.Generator().manual_seed(self.seed)
        resolution = generated.shape[-1]
        count = len(generated) * self.patches_per_image
        fake_index = torch.arange(count) // self.patches_per_image
        classes = labels[fake_index]
        real_index = torch.empty(count, dtype=torch.long)
        for c in classes.unique().tolist():
            pool = (real_labels == c).nonzero().squeeze(1)
            if len(pool) == 0:
                raise ValueError(f"swd: the reference set has no image of class {c}")
            picked = classes == c
            real_index[picked] = pool[torch.randint(len(pool), (int(picked.sum()),), generator=generator)]
        levels = self.levels(resolution)
        out: dict[str, float] = {}
        for level, (fake_band, real_band) in enumerate(zip(laplacian_pyramid(generated, levels),
                                                           laplacian_pyramid(real, levels))):
            fake = patch_descriptors(fake_band, count, generator, fake_index)
            true = patch_descriptors(real_band, count, generator, real_index)
            mean, std = channel_stats(true)
            fake, true = normalise(fake, mean, std), normalise(true, mean, std)
            per_class = [sliced_wasserstein(fake[classes == c], true[classes == c], self.directions, self.repeats,
                                            generator) for c in classes.unique().tolist()]
            out[f"swd{resolution // 2 ** level}"] = 1e3 * sum(per_class) / len(per_class)
        out["swd"] = sum(out.values()) / len(out)
        return out
