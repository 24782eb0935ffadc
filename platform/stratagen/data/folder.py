"""ImageFolder: class-per-directory images read through fsspec.

Layout (as ImageNet): ``root/<class_name>/**/<image>``. The classes are the directories directly
under the root that contain at least one file with an image extension; class index = position
in the sorted list of their names. Files directly under the root and files with other
extensions are ignored.

``root`` is anything ``fsspec.core.url_to_fs`` accepts: a local path, ``file://``,
``memory://``, ``s3://``, ... A zip archive is given either as a plain path ending in ``.zip``
(its top level is the root) or as a chained URL whose path names the root inside the archive:
``zip://::/data/a.zip`` (top level) or ``zip://imagenet/train::/data/a.zip``.
"""

import warnings

import numpy as np
import torch
from fsspec.core import url_to_fs
from fsspec.spec import AbstractFileSystem
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from stratagen.data import transforms

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
_LAYOUT = "expected one sub-folder per class, e.g. <root>/<class_name>/<image>.png"


def _url(root: str) -> str:
    """Turn a plain ``*.zip`` path or URL into fsspec's chained zip URL."""
    if "::" not in root and root.rstrip("/").lower().endswith(".zip"):
        return f"zip://::{root}"
    return root


def _filesystem(url: str) -> tuple[AbstractFileSystem, str]:
    """fsspec filesystem and root path inside it; FileNotFoundError if the root is missing."""
    try:
        fs, path = url_to_fs(url)
    except FileNotFoundError:  # e.g. a missing zip archive
        raise FileNotFoundError(f"image folder root not found: {url}") from None
    if not fs.isdir(path):
        raise FileNotFoundError(f"image folder root not found: {url}")
    return fs, path


def _load_rgb(fs: AbstractFileSystem, path: str) -> Image.Image:
    with fs.open(path, "rb") as f, Image.open(f) as img:
        return img.convert("RGB")  # decodes fully, inside the open file


class ImageFolder(Dataset):
    """Images under ``root/<class_name>/``, resized and centre-cropped to ``resolution``.

    Files that cannot be decoded are skipped at construction, listed in ``skipped`` as
    (path relative to the root, reason) and reported with one warning. Only paths are kept;
    ``__getitem__`` reopens the file and returns (image float32 [3, R, R] in [-1, 1], label).
    With ``random_flip`` the horizontal flip is drawn from (seed, epoch, index): call
    ``set_epoch`` at the start of each epoch for fresh flips.
    """

    def __init__(
        self,
        root: str,
        resolution: int,
        random_flip: bool = False,
        seed: int = 0,
        extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
    ) -> None:
        self.root = root
        self.resolution = resolution
        self.random_flip = random_flip
        self.seed = seed
        self.epoch = 0
        self._url = _url(root)
        fs, base = _filesystem(self._url)
        base = base.rstrip("/")

        candidates: list[tuple[str, str]] = []  # (path relative to root, class name)
        for path in sorted(fs.find(base)):
            rel = path[len(base) :].lstrip("/")
            class_name, sep, _ = rel.partition("/")
            if sep and rel.lower().endswith(tuple(e.lower() for e in extensions)):
                candidates.append((rel, class_name))
        self.class_names = sorted({c for _, c in candidates})
        self.num_classes = len(self.class_names)
        label_of = {name: i for i, name in enumerate(self.class_names)}

        self.samples: list[tuple[str, int]] = []  # (filesystem path, label)
        self.skipped: list[tuple[str, str]] = []
        for rel, class_name in candidates:
            path = f"{base}/{rel}" if base else rel
            try:
                _load_rgb(fs, path)
            except Exception as e:  # PIL raises many types for corrupt files; none is fatal
                # PIL appends the file object's repr ("... <_io.BufferedReader ...>"); drop it.
                self.skipped.append((rel, str(e).split(" <", 1)[0] or type(e).__name__))
            else:
                self.samples.append((path, label_of[class_name]))

        if self.skipped:
            shown = ", ".join(f"{p} ({r})" for p, r in self.skipped[:3])
            more = ", ..." if len(self.skipped) > 3 else ""
            warnings.warn(
                f"skipped {len(self.skipped)} of {len(candidates)} files under {root} that could "
                f"not be read as images: {shown}{more}",
                stacklevel=2,
            )
        if not self.samples:
            raise ValueError(f"no readable images under {root}: {_LAYOUT}")

    def set_epoch(self, epoch: int) -> None:
        """Select the flips of this epoch (only matters with random_flip)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        """Returns (image float32 [3, R, R] in [-1, 1], label)."""
        path, label = self.samples[index]
        # Resolved per call: fsspec caches instances per process, so forked DataLoader workers
        # get their own zip handle instead of sharing the parent's file offset.
        fs, _ = url_to_fs(self._url)
        img = transforms.resize_center_crop(_load_rgb(fs, path), self.resolution)
        x = transforms.to_tensor(img)
        if self.random_flip:
            x = transforms.random_flip(x, self._flip_generator(index))
        return x, label

    def _flip_generator(self, index: int) -> torch.Generator:
        entropy = np.random.SeedSequence([self.seed, self.epoch, index])
        return torch.Generator().manual_seed(int(entropy.generate_state(1, np.uint64)[0]))
