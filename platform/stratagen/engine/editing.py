"""Image editing with a trained masked-token model: inpainting, outpainting, class-conditional
editing (StraIT Appendix A, Figure 10) and semantic domain transfer with bottom-level
re-prediction (StraIT §4.4, Figure 6).

Masked token modeling learns to infill, so every edit is a token canvas handed to the
sampler: the input's own tokens where the image is kept, :data:`UNKNOWN` where tokens are
regenerated. No fine-tuning, no architecture change, the same forward passes as sampling.

::

    from stratagen.engine.pipeline import Pipeline
    from stratagen.engine import editing
    pipe = Pipeline.from_run("runs/demo/strait_r")
    R = pipe.model.resolution
    image = editing.load_image("cat.png", R)                                  # [1, 3, R, R]
    hole = editing.box_mask(1, R, R, top=8, left=8, box_h=16, box_w=16, inside=True)
    editing.inpaint(pipe, image, hole, classes=[3]).images                    # infill, same class
    editing.inpaint(pipe, image, hole, classes=[5]).images                    # class-conditional edit
    editing.inpaint(pipe, image, ~hole, classes=[3]).images                   # outpainting
    editing.domain_transfer(pipe, image, [5], region=hole).images             # transfer the box to class 5
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from stratagen.data.transforms import resize_center_crop, resize_images, to_tensor
from stratagen.engine.reporting.logger import image_grid
from stratagen.registry import UNKNOWN, Sampler, StratagenError, TokenGrids, split_stream_key, stream_parts

if TYPE_CHECKING:
    from stratagen.engine.pipeline import Pipeline


@dataclass
class EditResult:
    """What an edit returns.

    Attributes:
        images: ``[B, 3, H, W]`` the result: ``generated`` inside the mask, the input outside
            (inpainting); ``generated`` itself (domain transfer).
        generated: ``[B, 3, H, W]`` the images decoded from the sampled tokens.
        tokens: per generated stream, the final tokens ``[B, h, w]``.
        token_masks: per generated stream, ``[B, h, w]`` bool, True where tokens were regenerated.
    """

    images: torch.Tensor
    generated: torch.Tensor
    tokens: dict[str, torch.Tensor]
    token_masks: dict[str, torch.Tensor]


# ----------------------------------------------------------------------------- masks and canvases
def project_mask(pixel_mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pixel mask ``[B, H, W]`` bool -> token mask ``[B, height, width]`` bool.

    A token is regenerated iff any pixel of its cell is masked, so no masked pixel is left to a
    kept token: a max-pool over cells of ``H / height`` x ``W / width`` pixels. Where the grid does
    not divide the image (VAR's scales 3, 5, 6, 10, 13 at 256 px), cell ``i`` spans pixels
    ``floor(i H / height)`` to ``ceil((i + 1) H / height)`` (adaptive pooling), so neighbouring
    cells share their border pixels.
    """
    return F.adaptive_max_pool2d(pixel_mask.float()[:, None], (height, width))[:, 0] > 0


def box_mask(batch: int, height: int, width: int, top: int, left: int, box_h: int, box_w: int,
             inside: bool = True) -> torch.Tensor:
    """``[batch, height, width]`` bool: True inside the box (inpainting) or outside it (outpainting)."""
    if box_h < 1 or box_w < 1 or top < 0 or left < 0 or top + box_h > height or left + box_w > width:
        raise StratagenError(f"box top={top}, left={left}, {box_h}x{box_w} does not fit in a "
                             f"{height}x{width} image")
    mask = torch.zeros(batch, height, width, dtype=torch.bool)
    mask[:, top:top + box_h, left:left + box_w] = True
    return mask if inside else ~mask


def children(parent_mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Token mask ``[B, h, w]`` of a coarser level -> ``[B, height, width]``: True on every finer token
    whose cell overlaps a True coarse cell (the 2x2 bottom tokens under a top token in VQGAN2; where
    the grids do not divide each other, as VAR's scales 2 and 3, every finer token a coarse cell
    touches)."""
    _, h, w = parent_mask.shape

    def overlap(fine: int, coarse: int) -> torch.Tensor:
        """``[fine, coarse]``: whether fine cell i and coarse cell j of [0, 1) overlap."""
        i, j = torch.arange(fine)[:, None], torch.arange(coarse)[None]
        return ((j * fine < (i + 1) * coarse) & (i * coarse < (j + 1) * fine)).float()

    rows, cols = overlap(height, h).to(parent_mask.device), overlap(width, w).to(parent_mask.device)
    return (rows @ parent_mask.float() @ cols.T) > 0


def token_canvas(pipe: Pipeline, images: torch.Tensor, pixel_mask: torch.Tensor,
                 streams: Sequence[str], keep_children: bool = False) -> dict[str, torch.Tensor]:
    """Per stream, the input's tokens ``[B, h, w]`` with :data:`UNKNOWN` where the projected mask is
    True and (unless ``keep_children``) under every regenerated token of an earlier, coarser level
    of the same tokenizer.

    A finer level's tokens are encoded relative to the coarser ones (VQGAN2 quantizes the
    bottom level from features stacked with the top level's; VQGAN2-R decodes it as a residual
    on the top), so a kept bottom token under a regenerated top token would describe the old
    top, not the new one: its children are regenerated too.

    Args:
        images: ``[B, 3, R, R]`` in [-1, 1], ``R = pipe.model.resolution``.
        pixel_mask: ``[B, R, R]`` bool, True where the image is regenerated.
        streams: ``"<tokenizer>.<level>"`` keys, in decoding order (coarse before fine); each
            tokenizer encodes the images once.
        keep_children: project the mask onto each level on its own (finer tokens under a
            regenerated coarser token are kept where their own cell has no masked pixel).
    """
    _check_images(pipe, images, pixel_mask)
    images, pixel_mask = images.to(pipe.device), pixel_mask.to(pipe.device)
    encoded: dict[str, TokenGrids] = {}
    canvas, masks = {}, {}
    with torch.no_grad():
        for stream in streams:
            tokenizer_id, level = split_stream_key(stream)
            if tokenizer_id not in encoded:  # each tokenizer sees the images at its own resolution
                resized = resize_images(images, pipe.model.resolution_of(tokenizer_id))
                encoded[tokenizer_id] = pipe.model.tokenizer_of(stream).encode(resized)
            tokens = encoded[tokenizer_id][level]
            mask = project_mask(pixel_mask, *tokens.shape[1:])
            if not keep_children:
                for parent, parent_mask in masks.items():
                    if split_stream_key(parent)[0] == tokenizer_id:
                        mask = mask | children(parent_mask, *tokens.shape[1:])
            masks[stream] = mask
            canvas[stream] = tokens.masked_fill(mask, UNKNOWN)
    return canvas


# ----------------------------------------------------------------------------- edits
def inpaint(pipe: Pipeline, images: torch.Tensor, pixel_mask: torch.Tensor, classes: Sequence[int],
            seed: int = 0, sampler: Sampler | None = None, keep_children: bool = False) -> EditResult:
    """Regenerate the masked part of ``images`` ``[B, 3, R, R]`` (StraIT Appendix A, "Flexible Image Editing").

    Every stream the sampler generates is encoded from the input and its tokens under the
    projected ``pixel_mask`` ``[B, R, R]`` are set :data:`UNKNOWN`, so the mask reaches every
    level (top and bottom; both tokenizers of a cascade), and so are the children (the bottom
    tokens) of every regenerated top token (see :func:`token_canvas`; ``keep_children=True``
    keeps those whose own cell is not masked). The sampler keeps the other tokens. The decoded
    result is composited, ``where(pixel_mask, generated, images)``, so pixels outside the mask
    are exactly the input.

    Outpainting is the same call with the mask covering the outside (``box_mask(...,
    inside=False)``). Class-conditional editing (Figure 10: "turning lion into husky") is
    the same call with ``classes`` other than the image's own.
    """
    _check_images(pipe, images, pixel_mask)
    empty = [i for i, m in enumerate(pixel_mask) if not m.any()]
    if empty:
        raise StratagenError(f"nothing to edit: the mask of image {empty[0]} selects no pixel (white or a box "
                             f"marks the region to regenerate)")
    sampler = sampler or pipe.sampler()
    canvas = token_canvas(pipe, images, pixel_mask, _streams(pipe, sampler), keep_children)
    _check_classes(classes, images.shape[0])
    output = pipe.sample(classes, seed, sampler, canvas)
    composited = torch.where(pixel_mask.to(pipe.device)[:, None], output.images, images.to(pipe.device))
    return EditResult(composited, output.images, output.tokens, _regenerated(canvas))


def domain_transfer(pipe: Pipeline, images: torch.Tensor, new_classes: Sequence[int], region: torch.Tensor | None = None,
                    seed: int = 0, bottom_only: bool = False, sampler: Sampler | None = None) -> EditResult:
    """Semantic domain transfer (StraIT §4.4, Figure 6) with bottom-level re-prediction.

    "Masking unwanted tokens" (§4.4): the first stage's tokens of ``images`` ``[B, 3, R, R]``
    (the top level: layout, coarse shapes and colours) are regenerated under ``new_classes``
    inside ``region`` ``[B, R, R]`` (the part being transferred) and kept elsewhere; then every
    token of the later stage(s) is re-predicted from the transferred top ("Bottom-level
    Re-prediction"). ``bottom_only=True`` keeps every top token and re-predicts the bottom
    only (no ``region``). Needs a sampler of two or more stages: stratified (top -> bottom of
    one tokenizer) or cascade (f16 -> f8). Nothing is composited: ``images`` is ``generated``.
    """
    if bottom_only == (region is not None):
        raise StratagenError("domain transfer regenerates the top tokens of the edited region (StraIT §4.4): "
                             "give a region (pixel mask), or bottom_only=True to re-predict the bottom level only")
    sampler = sampler or pipe.sampler()
    streams = _streams(pipe, sampler)
    if len(streams) < 2:
        raise StratagenError(f"domain transfer keeps the first stage and re-predicts the later ones, but "
                             f"{type(sampler).__name__} decodes a single stream ({streams[0]}); "
                             f"use the stratified or cascade sampler")
    if region is None:
        region = torch.zeros(images.shape[0], *images.shape[2:], dtype=torch.bool)
    elif not region.any():
        raise StratagenError("the transfer region selects no pixel: give a region to regenerate, or "
                             "bottom_only=True (--bottom-only) to keep every top token")
    canvas = token_canvas(pipe, images, region, streams)
    for stream in streams[1:]:
        canvas[stream] = torch.full_like(canvas[stream], UNKNOWN)
    _check_classes(new_classes, images.shape[0])
    output = pipe.sample(new_classes, seed, sampler, canvas)
    return EditResult(output.images, output.images, output.tokens, _regenerated(canvas))


def _streams(pipe: Pipeline, sampler: Sampler) -> list[str]:
    """The one-level streams ``sampler`` generates on the run's model, in decoding order (a joint
    stream's levels in its order)."""
    return [part for stage in sampler.stages(pipe.model) for part in stream_parts(stage.stream)]


def _regenerated(canvas: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {stream: tokens == UNKNOWN for stream, tokens in canvas.items()}


def _check_images(pipe: Pipeline, images: torch.Tensor, pixel_mask: torch.Tensor) -> None:
    R = pipe.model.resolution
    if images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
        raise StratagenError(f"images must be a float tensor [B, 3, H, W], got {images.dtype} {tuple(images.shape)}")
    if tuple(images.shape[2:]) != (R, R):
        raise StratagenError(f"images are {images.shape[2]}x{images.shape[3]} but the run's resolution is {R}x{R}; "
                             f"load them with load_image(path, {R})")
    low, high = float(images.min()), float(images.max())
    if low < -1 or high > 1:
        raise StratagenError(f"images must be in [-1, 1], got [{low:.3g}, {high:.3g}] "
                             f"(clamp decoded images with .clamp(-1, 1))")
    expected = (images.shape[0], R, R)
    if pixel_mask.dtype != torch.bool or tuple(pixel_mask.shape) != expected:
        raise StratagenError(f"the mask must be a bool tensor {list(expected)} matching the images, "
                             f"got {pixel_mask.dtype} {list(pixel_mask.shape)}")


def _check_classes(classes: Sequence[int], batch: int) -> None:
    if len(classes) != batch:
        raise StratagenError(f"give one class per image: {batch} images, {len(classes)} classes")


# ----------------------------------------------------------------------------- image files
def _open(path: str) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
    except FileNotFoundError:
        raise StratagenError(f"image file {path} does not exist") from None
    except (OSError, ValueError) as exc:  # not an image, truncated, unsupported
        raise StratagenError(f"cannot read image {path}: {exc}") from None
    return image


def load_image(path: str, resolution: int) -> torch.Tensor:
    """An image file -> ``[1, 3, resolution, resolution]`` in [-1, 1], resized and centre-cropped
    as the datasets are."""
    return to_tensor(resize_center_crop(_open(path).convert("RGB"), resolution))[None]


def load_mask(path: str, resolution: int) -> torch.Tensor:
    """A mask image (white = regenerate) -> ``[1, resolution, resolution]`` bool.

    Thresholded at mid-grey to a mode "1" image, which Pillow always resizes with nearest,
    then given the same resize and centre crop as :func:`load_image` gives its image.
    """
    binary = _open(path).convert("L").point(lambda v: 255 if v >= 128 else 0, mode="1")
    return torch.from_numpy(np.array(resize_center_crop(binary, resolution)))[None]


def save_edit(inputs: torch.Tensor, pixel_mask: torch.Tensor, results: torch.Tensor, path: str) -> str:
    """Write ``results`` ``[B, 3, H, W]`` to ``path`` and, next to it, ``<stem>_strip.png``: one row
    per image, input | mask overlay (masked pixels tinted red) | result. Returns the strip's path."""
    from torchvision.utils import save_image  # imported on use: torchvision's import costs seconds

    inputs, pixel_mask, results = inputs.cpu(), pixel_mask.cpu()[:, None], results.detach().float().cpu()
    red = torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1)
    overlay = torch.where(pixel_mask, 0.5 * inputs + 0.5 * red, inputs)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    save_image(results.clamp(-1, 1) * 0.5 + 0.5, path, nrow=1)  # one image: written as is, no padding
    strip = str(Path(path).with_name(f"{Path(path).stem}_strip.png"))
    rows = torch.stack([inputs, overlay, results], dim=1).flatten(0, 1)  # [3B, 3, H, W]
    save_image(image_grid(rows, nrow=3), strip)
    return strip
