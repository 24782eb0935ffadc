"""ImageFolder: class-per-directory images read lazily through fsspec.

Layout (as ImageNet): ``root/<class_name>/**/<file>``. The classes are the directories directly
under the root that hold files; class index = position in the sorted list of their names. Every file inside a
class directory is a sample except hidden ones (names starting with "."); files directly under
the root are ignored. Building the dataset only lists files: nothing is opened until a sample is
read (in DataLoader workers), and a file that cannot be decoded raises :class:`UnreadableImage`
then, so the loader can skip and count it.

``root`` is anything ``fsspec.core.url_to_fs`` accepts: a local path, ``file://``,
``memory://``, ``s3://``, ... A zip archive is given either as a plain path ending in ``.zip``
(its top level is the root) or as a chained URL whose path names the root inside the archive:
``zip://::/data/a.zip`` (top level) or ``zip://imagenet/train::/data/a.zip``.
"""

import io
import logging
import os
from typing import Any, Callable, TypeVar

import numpy as np
import torch
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem
from fsspec.spec import AbstractFileSystem
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from stratagen.data import transforms
from stratagen.data.sampling import AUGMENT, Key, derive_seed
from stratagen.registry import StratagenError

log = logging.getLogger("stratagen")

_LAYOUT = "expected one sub-folder per class, e.g. <root>/<class_name>/<image>.png"


class UnreadableImage(Exception):
    """A sample's file could not be decoded as an image."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path} ({reason})")
        self.path, self.reason = path, reason


T = TypeVar("T")


def first_readable(size: int, index: int, read: Callable[[int], T]) -> tuple[T, list[str]]:
    """``read(i)`` of the first readable sample from ``index`` on (wrapping around), with the paths
    of the unreadable ones passed over."""
    skipped: list[str] = []
    for offset in range(size):
        try:
            return read((index + offset) % size), skipped
        except UnreadableImage as e:
            skipped.append(e.path)
    raise StratagenError(f"none of the {size} files could be read as an image (e.g. {skipped[0]})")


_WARNED: set[str] = set()  # unreadable files already logged by this process


def evaluation_item(dataset: Any, index: int) -> tuple[Tensor, int]:
    """``dataset[Key(index, None)]``, or the next readable sample's, logging each unreadable file once."""
    item, skipped = first_readable(len(dataset), int(index), lambda i: dataset[Key(i, None)])
    for path in skipped:
        if path not in _WARNED:
            _WARNED.add(path)
            log.warning("skipped a file that is not a readable image: %s", path)
    return item


def _url(root: str) -> str:
    """Turn a plain ``*.zip`` path or URL into fsspec's chained zip URL."""
    if "::" not in root and root.rstrip("/").lower().endswith(".zip"):
        return f"zip://::{root}"
    return root


def filesystem(url: str) -> tuple[AbstractFileSystem, str]:
    """fsspec filesystem and root path inside it; FileNotFoundError if the root is missing,
    ImportError naming the package that a protocol needs (``s3://`` needs ``s3fs``)."""
    try:
        fs, path = url_to_fs(url)
    except FileNotFoundError:  # e.g. a missing zip archive
        raise FileNotFoundError(f"image folder root not found: {url}") from None
    if not fs.isdir(path):
        raise FileNotFoundError(f"image folder root not found: {url}")
    return fs, path.rstrip("/")


def _files(fs: AbstractFileSystem, directory: str) -> list[str]:
    """Paths relative to ``directory`` of the files below it, sorted, hidden ones (a part starting
    with ".") left out."""
    if isinstance(fs, LocalFileSystem):
        # fsspec's local find stats every file: 9x slower than os.walk on 200,000 files (measured)
        top = directory.rstrip("/")
        found = [f"{root[len(top):].lstrip('/')}/{f}".lstrip("/") for root, _, files in os.walk(top) for f in files]
    else:
        found = [path[len(directory):].lstrip("/") for path in fs.find(directory)]
    return sorted(f for f in found if not any(part.startswith(".") for part in f.split("/")))


def load_rgb(data: bytes, name: str) -> Image.Image:
    """Decode the bytes of an image file (``name`` says where it came from) to RGB;
    UnreadableImage if they are not an image."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.convert("RGB")
    except Exception as e:  # PIL raises many types for corrupt files; none is fatal
        # PIL appends the file object's repr ("... <_io.BufferedReader ...>"); drop it.
        raise UnreadableImage(name, str(e).split(" <", 1)[0] or type(e).__name__) from None


def image_tensor(img: Image.Image, resolution: int, augment: bool, generator: torch.Generator | None) -> Tensor:
    """float32 [3, R, R] in [-1, 1]: a random crop and flip from ``generator`` when ``augment``,
    else the centre crop."""
    if augment:
        return transforms.to_tensor(transforms.resize_random_crop_flip(img, resolution, generator))
    return transforms.to_tensor(transforms.resize_center_crop(img, resolution))


def augment_generator(seed: int, key: Key) -> torch.Generator:
    """The generator of ``key``'s augmentation: a pure function of (seed, epoch, index)."""
    return torch.Generator().manual_seed(derive_seed(AUGMENT, seed, key.epoch, key.index) % 2**63)


class ImageFolder(Dataset):
    """Images under ``root/<class_name>/`` at ``resolution`` x ``resolution``.

    ``folder[Key(i, epoch)]`` is sample ``i``'s random crop and flip of that epoch when ``augment``
    (drawn from (seed, epoch, i)), or its centre crop when ``epoch`` is None; it returns (image
    float32 [3, R, R] in [-1, 1], label) or raises :class:`UnreadableImage` (the training loader
    counts those). ``folder[i]`` is the evaluation view: the centre crop of sample ``i``, or of the
    next readable one. ``views`` decodes once for several epochs. With ``unlabelled_ok`` (statistics
    that need no labels, ``stratagen data stats``) a root without class folders is read as one class
    of the files directly under it.

    The index is two numpy arrays (relative paths as bytes, labels), not Python lists: forked
    DataLoader workers then share its pages instead of copying them as reference counts change.
    """

    def __init__(self, root: str, resolution: int, augment: bool = False, seed: int = 0,
                 unlabelled_ok: bool = False) -> None:
        self.root = root
        self.resolution = resolution
        self.augment = augment
        self.seed = seed
        self._url = _url(root)
        fs, self._base = filesystem(self._url)

        # One class folder at a time: the index grows by compact arrays, and the listing's
        # Python strings never exceed one class.
        paths: list[np.ndarray] = []
        labels: list[np.ndarray] = []
        self.class_names = []
        for entry in sorted(fs.ls(self._base, detail=True), key=lambda e: e["name"]):
            name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
            if entry["type"] != "directory" or name.startswith("."):
                continue
            files = _files(fs, f"{self._base}/{name}" if self._base else name)
            if files:
                paths.append(np.array([f"{name}/{f}".encode() for f in files]))
                labels.append(np.full(len(files), len(self.class_names), dtype=np.int32))
                self.class_names.append(name)
        if unlabelled_ok:
            loose = sorted(name for entry in fs.ls(self._base, detail=True) if entry["type"] == "file"
                           for name in [entry["name"].rstrip("/").rsplit("/", 1)[-1]] if not name.startswith("."))
            if loose and paths:
                raise ValueError(f"{root} holds both sub-folders with files ({', '.join(self.class_names[:3])}"
                                 f"{', ...' if len(self.class_names) > 3 else ''}) and {len(loose)} file(s) beside "
                                 f"them (e.g. {loose[0]}); give one layout: the images directly in the folder, or "
                                 f"one sub-folder per class")
            if loose:
                paths.append(np.array([f.encode() for f in loose]))
                labels.append(np.zeros(len(loose), dtype=np.int32))
                self.class_names.append("")
        if not paths:
            raise ValueError(f"no files under {root}: " + (
                "expected its images, or one sub-folder per class" if unlabelled_ok else _LAYOUT))
        self.num_classes = len(self.class_names)
        self.paths = np.concatenate(paths)  # bytes, fixed width
        self.labels = np.concatenate(labels)

    def __len__(self) -> int:
        return len(self.paths)

    def path(self, index: int) -> str:
        """Path of sample ``index`` relative to the root."""
        return self.paths[index].decode()

    def _file(self, index: int) -> str:
        rel = self.path(index)
        return f"{self._base}/{rel}" if self._base else rel

    def file_bytes(self, index: int) -> bytes:
        """The raw bytes of sample ``index``'s file."""
        # Resolved per call: fsspec caches instances per process, so forked DataLoader workers
        # get their own zip handle instead of sharing the parent's file offset.
        return url_to_fs(self._url)[0].cat_file(self._file(index))

    def load(self, index: int) -> Image.Image:
        """The decoded RGB image of sample ``index``; UnreadableImage if it is not one."""
        return load_rgb(self.file_bytes(index), self._file(index))

    def transform(self, img: Image.Image, key: Key) -> Tensor:
        """float32 [3, R, R] in [-1, 1]: ``key``'s augmentation of the decoded image."""
        augment = self.augment and key.epoch is not None
        return image_tensor(img, self.resolution, augment, augment_generator(self.seed, key) if augment else None)

    def __getitem__(self, key: int | Key) -> tuple[Tensor, int]:
        if not isinstance(key, Key):
            return evaluation_item(self, key)
        return self.transform(self.load(key.index), key), int(self.labels[key.index])

    def views(self, index: int, epochs: list[int | None]) -> tuple[Tensor, int]:
        """Sample ``index`` as seen in each of ``epochs``, decoded once: ([K, 3, R, R], label)."""
        img = self.load(index)
        return torch.stack([self.transform(img, Key(index, e)) for e in epochs]), int(self.labels[index])
