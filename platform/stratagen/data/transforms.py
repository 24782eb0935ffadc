"""Image transforms shared by the datasets.

Training images go through the data pipeline of MaskGIT and StraIT (§4: "cropped 256×256
images from ImageNet"): resize the shorter side to the resolution, take a random square
crop and a random horizontal flip. Evaluation takes the centre crop, unflipped.
"""

import numpy as np
import torch
from PIL import Image
from torch import Tensor


def resize_shorter_side(img: Image.Image, resolution: int) -> Image.Image:
    """Resize (antialiased bicubic) so that the shorter side equals ``resolution``."""
    w, h = img.size
    scale = resolution / min(w, h)
    size = (max(resolution, round(w * scale)), max(resolution, round(h * scale)))
    return img if size == img.size else img.resize(size, Image.Resampling.BICUBIC)


def resize_center_crop(img: Image.Image, resolution: int) -> Image.Image:
    """Resize the shorter side to ``resolution``, centre-crop a square (evaluation)."""
    img = resize_shorter_side(img, resolution)
    left, top = (img.size[0] - resolution) // 2, (img.size[1] - resolution) // 2
    return img.crop((left, top, left + resolution, top + resolution))


def resize_random_crop_flip(img: Image.Image, resolution: int, generator: torch.Generator) -> Image.Image:
    """Resize the shorter side to ``resolution``, crop a random square, flip it with probability 1/2
    (training); the draws come from ``generator``."""
    img = resize_shorter_side(img, resolution)
    left = int(torch.randint(img.size[0] - resolution + 1, (), generator=generator))
    top = int(torch.randint(img.size[1] - resolution + 1, (), generator=generator))
    img = img.crop((left, top, left + resolution, top + resolution))
    if torch.rand((), generator=generator).item() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return img


def to_tensor(img: Image.Image) -> Tensor:
    """PIL image (any mode) -> float32 [3, H, W] in [-1, 1]."""
    array = np.array(img.convert("RGB"), dtype=np.uint8)  # [H, W, 3], a writable copy
    return torch.from_numpy(array).permute(2, 0, 1).float() / 127.5 - 1.0



def to_uint8(image: Tensor) -> Tensor:
    """float [..., H, W] in [-1, 1] (multiples of 1/127.5, as decoded) -> uint8, exactly; a quarter
    of the bytes to pass between processes."""
    return ((image + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)


def resize_images(images: Tensor, resolution: int | None) -> Tensor:
    """``[B, 3, H, W]`` in [-1, 1] -> ``[B, 3, resolution, resolution]`` (bilinear, antialiased);
    unchanged when ``resolution`` is None or already the size. This is how a tokenizer that
    works at another resolution than the data (``tokenizers.<id>.resolution``) sees images."""
    if resolution is None or tuple(images.shape[-2:]) == (resolution, resolution):
        return images
    return torch.nn.functional.interpolate(images, size=(resolution, resolution), mode="bilinear",
                                           antialias=True, align_corners=False).clamp(-1, 1)
