"""Tar shards in the WebDataset layout: ``{key}.jpg`` (or ``.png``) and ``{key}.cls`` per sample.

:func:`pack_folder` converts an image folder once; :class:`TarShards` streams the shards back,
from a local directory or any fsspec URL (``s3://`` needs ``s3fs``, ``gs://`` needs ``gcsfs``).
Tar members are parsed by the ``webdataset`` library; opening, ordering and sharding are done
here so that the stream is a pure function of (seed, process, worker, step):

* epoch ``e`` deals a seeded permutation of the shards to the processes (round robin) and each
  process's share to its loader workers;
* samples pass through a seeded shuffle buffer before decoding;
* a resumed run skips the samples its workers had read (without decoding them), so it
  continues exactly where an uninterrupted run would be, given the same number of processes
  and workers.

``index.json`` beside the shards (written by ``stratagen data pack``) names the classes and
counts the samples of each shard; without it the shards are counted by reading them once when
the count is needed (``len``, the token cache).
"""
from __future__ import annotations

import io
import json
import logging
import tarfile
import uuid
import zlib
from typing import Any, Iterator

import braceexpand
import fsspec
import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, IterableDataset, get_worker_info
from webdataset.tariterators import group_by_keys, tar_file_expander
from webdataset.writer import TarWriter

from stratagen.data.folder import (ImageFolder, UnreadableImage, augment_generator, evaluation_item, image_tensor,
                                   load_rgb)
from stratagen.data.sampling import EPOCH_ORDER, SHUFFLE, Key, derive_seed
from stratagen.data.transforms import to_uint8
from stratagen.io.checkpoint import TEMPORARY
from stratagen.registry import StratagenError

log = logging.getLogger("stratagen")

INDEX = "index.json"
IMAGE_KEYS = ("jpg", "jpeg", "png")


def shard_urls(urls: str) -> list[str]:
    """``urls``: a brace pattern (``s3://b/train-{000000..000099}.tar``) or a directory holding ``*.tar``."""
    expanded = list(braceexpand.braceexpand(urls))
    if len(expanded) == 1 and not expanded[0].endswith(".tar"):
        fs, path = fsspec.core.url_to_fs(expanded[0])
        if not fs.isdir(path):
            raise FileNotFoundError(f"no tar shards at {urls}")
        base = expanded[0].rstrip("/")
        expanded = [f"{base}/{name.rsplit('/', 1)[-1]}" for name in sorted(fs.ls(path, detail=False))
                    if name.endswith(".tar")]
    if not expanded:
        raise FileNotFoundError(f"no tar shards at {urls}")
    return expanded


def _samples(url: str) -> Iterator[dict[str, Any]]:
    """Raw samples (``__key__`` and one bytes entry per extension) of one shard, in order. A shard
    that cannot be read to its end (truncated, not a tar file, gone) yields what it could read, then
    one sample ``{"__url__": url, "__unreadable__": reason}`` in place of the rest."""
    try:
        with fsspec.open(url, "rb") as stream:
            yield from group_by_keys(tar_file_expander([{"url": url, "stream": stream}]))
    except (OSError, EOFError, ValueError, tarfile.TarError) as exc:  # tarfile.ReadError, a truncated member
        yield {"__url__": url, "__key__": "", "__unreadable__": f"unreadable shard: {exc}"}


def _name(sample: dict[str, Any]) -> str:
    """Where a sample lives: ``<shard url>#<key>``."""
    return f"{sample['__url__']}#{sample['__key__']}"


def _identity(sample: dict[str, Any]) -> str:
    """``<shard file name>#<key>``: the same wherever the shards are copied (seeds augmentations)."""
    return f"{sample['__url__'].rsplit('/', 1)[-1]}#{sample['__key__']}"


def _decode(sample: dict[str, Any]) -> tuple[Image.Image, int]:
    where = _name(sample)
    if "__unreadable__" in sample:
        raise UnreadableImage(sample["__url__"], sample["__unreadable__"])
    data = next((sample[k] for k in IMAGE_KEYS if k in sample), None)
    if data is None or "cls" not in sample:
        raise UnreadableImage(where, f"expected {{jpg|png, cls}}, found {sorted(k for k in sample if k[0] != '_')}")
    return load_rgb(data, where), int(sample["cls"])


class TarShards(Dataset):
    """Shards at ``urls`` (see :func:`shard_urls`) as images at ``resolution``, with the transforms
    of :class:`~stratagen.data.ImageFolder` (random crop and flip per epoch when ``augment``).

    Training streams them (:meth:`stream`). Indexing (``shards[i]``, ``shards[Key(i, epoch)]``,
    :meth:`views`) follows the fixed order, shard by shard, and keeps the raw samples of the last
    shard it opened: cheap for in-order reads (evaluation, the token cache), not for random ones.
    """

    def __init__(self, urls: str, resolution: int, augment: bool = False, seed: int = 0, shuffle_buffer: int = 1000):
        self.urls = shard_urls(urls)
        self.resolution, self.augment, self.seed, self.shuffle_buffer = resolution, augment, seed, shuffle_buffer
        self._counts: list[int] | None = None
        self.class_names: list[str] | None = None
        self._open: tuple[int, list[dict[str, Any]]] | None = None  # (shard, its raw samples)
        index_url = self.urls[0].rsplit("/", 1)[0] + "/" + INDEX
        fs, path = fsspec.core.url_to_fs(index_url)
        if fs.exists(path):
            try:
                index = json.loads(fs.cat_file(path))
                counts = {str(entry["name"]): int(entry["count"]) for entry in index["shards"]}
                classes = [str(name) for name in index["classes"]]
            except (ValueError, KeyError, TypeError) as exc:
                raise StratagenError(f"{index_url}: not a shard index ({type(exc).__name__}: {exc}); expected "
                                     f'{{"classes": [...], "shards": [{{"name", "count"}}, ...]}} as '
                                     f"`stratagen data pack` writes it") from None
            if all(u.rsplit("/", 1)[-1] in counts for u in self.urls):
                self._counts = [counts[u.rsplit("/", 1)[-1]] for u in self.urls]
            self.class_names = classes

    @property
    def counts(self) -> list[int]:
        """Samples per shard."""
        if self._counts is None:
            log.info("counting the samples of %d shards (no %s beside them)", len(self.urls), INDEX)
            self._counts = [sum(1 for _ in _samples(u)) for u in self.urls]
        return self._counts

    def __len__(self) -> int:
        return sum(self.counts)

    def image(self, img: Image.Image, epoch: int | None, name: str) -> Tensor:
        """float32 [3, R, R]: the augmentation of ``epoch`` (``None``: centre crop), seeded by the sample's ``name``."""
        augment = self.augment and epoch is not None
        generator = augment_generator(self.seed, Key(zlib.crc32(name.encode()), epoch)) if augment else None
        return image_tensor(img, self.resolution, augment, generator)

    def _raw(self, index: int) -> dict[str, Any]:
        starts = np.cumsum([0, *self.counts])
        shard = int(np.searchsorted(starts, index, side="right") - 1)
        if self._open is None or self._open[0] != shard:
            self._open = (shard, list(_samples(self.urls[shard])))
        samples = self._open[1]
        if index - starts[shard] >= len(samples):  # a truncated shard, or an index.json that over-counts
            return {"__url__": self.urls[shard], "__key__": "",
                    "__unreadable__": f"holds {len(samples)} samples, {INDEX} counts {self.counts[shard]}"}
        return samples[index - starts[shard]]

    def __getitem__(self, key: int | Key) -> tuple[Tensor, int]:
        """As :class:`~stratagen.data.ImageFolder`: ``[Key]`` may raise UnreadableImage, ``[int]``
        (evaluation) passes over unreadable samples."""
        if not isinstance(key, Key):
            return evaluation_item(self, key)
        sample = self._raw(key.index)
        img, label = _decode(sample)
        return self.image(img, key.epoch, _identity(sample)), label

    def views(self, index: int, epochs: list[int | None]) -> tuple[Tensor, int]:
        """Sample ``index`` in each of ``epochs``, decoded once: ([K, 3, R, R], label)."""
        sample = self._raw(index)
        img, label = _decode(sample)
        return torch.stack([self.image(img, e, _identity(sample)) for e in epochs]), label

    def stream(self, seed: int, rank: int, world: int, batch: int, start: int) -> "ShardStream":
        """Endless training samples of process ``rank`` for steps ``start, ...`` in batches of ``batch``."""
        return ShardStream(self, seed, rank, world, batch, start)


class ShardStream(IterableDataset):
    """One process's training samples: (image uint8 [3, R, R], label, skipped files)."""

    def __init__(self, shards: TarShards, seed: int, rank: int, world: int, batch: int, start: int):
        self.shards, self.seed, self.rank, self.world, self.batch, self.start = shards, seed, rank, world, batch, start

    def __iter__(self) -> Iterator[tuple[Tensor, int, list[str]]]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        if len(self.shards.urls) < self.world * workers:
            raise ValueError(f"{len(self.shards.urls)} shards cannot feed {self.world} process(es) x {workers} "
                             f"worker(s); write smaller shards (stratagen data pack --shard-size)")
        # The DataLoader takes batches from its workers in turn, starting with worker 0; after a
        # restart at step `start`, worker w plays the worker that made step start + w.
        virtual = (self.start + worker) % workers
        skip = (self.start + worker) // workers * self.batch
        skipped: list[str] = []
        current, readable = 0, False
        for epoch, sample in self._raw(virtual, workers):
            if epoch != current:
                if not readable:  # a whole epoch of this worker's shards without one image: stop, not spin
                    return
                current, readable = epoch, False
            if skip:
                skip -= 1
                readable = True
                continue
            try:
                img, label = _decode(sample)
            except UnreadableImage as e:
                skipped.append(e.path)
                continue
            readable = True
            yield to_uint8(self.shards.image(img, epoch, _identity(sample))), label, skipped
            skipped = []

    def shards_of(self, epoch: int, worker: int = 0, workers: int = 1) -> np.ndarray:
        """Indices of the shards a loader worker of this process reads in ``epoch``."""
        order = np.random.default_rng(derive_seed(EPOCH_ORDER, self.seed, epoch)).permutation(len(self.shards.urls))
        return order[self.rank::self.world][worker::workers]

    def _raw(self, worker: int, workers: int) -> Iterator[tuple[int, dict[str, Any]]]:
        """(epoch, raw sample) for ever: this worker's shards of each epoch through a shuffle buffer."""
        epoch = 0
        while True:
            mine = self.shards_of(epoch, worker, workers)
            rng = np.random.default_rng(derive_seed(SHUFFLE, self.seed, epoch, self.rank, worker))
            buffer: list[dict[str, Any]] = []
            for j in mine:
                for sample in _samples(self.shards.urls[j]):
                    buffer.append(sample)
                    if len(buffer) >= self.shards.shuffle_buffer:
                        yield epoch, buffer.pop(int(rng.integers(len(buffer))))
            while buffer:
                yield epoch, buffer.pop(int(rng.integers(len(buffer))))
            epoch += 1


def _packable(data: bytes) -> tuple[bytes, str]:
    """(bytes, extension) to store: JPEG and PNG as they are (only the header is parsed here; a
    corrupt body is found and counted when read), other formats re-encoded as PNG."""
    with Image.open(io.BytesIO(data)) as img:
        if img.format in ("JPEG", "PNG"):
            return data, "jpg" if img.format == "JPEG" else "png"
        buffer = io.BytesIO()
        img.convert("RGB").save(buffer, format="PNG")
        return buffer.getvalue(), "png"


def pack_folder(folder: str, out: str, shard_size: int) -> tuple[int, int, list[str]]:
    """Write the images of ``folder`` (class per directory) as tar shards of ``shard_size`` samples
    under ``out`` (a path or fsspec URL; new or empty) with an ``index.json``. Returns (samples,
    shards, files left out because they are not images).

    The shards are written into a temporary sibling of ``out`` and moved into place at the end: an
    interrupted or failed pack leaves ``out`` as it was, and a dataset never mixes two packs.
    """
    fs, base = fsspec.core.url_to_fs(out)
    base = base.rstrip("/")
    if fs.exists(base) and (not fs.isdir(base) or fs.ls(base, detail=False)):
        what = "a file" if not fs.isdir(base) else "files (an earlier pack?)"
        raise StratagenError(f"{out}: already holds {what}; give a new or empty folder for the shards")
    source = ImageFolder(folder, resolution=1)
    staging = f"{base}{TEMPORARY}{uuid.uuid4().hex[:8]}"
    fs.makedirs(staging, exist_ok=True)
    try:
        shards, left_out = _write_shards(source, fs, staging, shard_size)
        if not shards:
            raise StratagenError(f"{folder}: no images to pack (of its {len(left_out)} files none is an image)")
        with fs.open(f"{staging}/{INDEX}", "w") as f:
            json.dump({"classes": source.class_names, "shards": shards}, f, indent=1)
        if fs.exists(base):
            fs.rmdir(base)  # empty (checked above): the staging folder takes its place
        fs.mv(staging, base, recursive=True)
    finally:
        if fs.exists(staging):
            fs.rm(staging, recursive=True)
    return sum(s["count"] for s in shards), len(shards), left_out


def _write_shards(source: ImageFolder, fs: fsspec.AbstractFileSystem, base: str, shard_size: int
                  ) -> tuple[list[dict[str, Any]], list[str]]:
    """The samples of ``source`` as tar shards under ``base``: (index entries, files that are not images)."""
    shards: list[dict[str, Any]] = []
    left_out: list[str] = []
    writer: TarWriter | None = None
    for i in range(len(source)):
        try:
            data, ext = _packable(source.file_bytes(i))
        except Exception:  # PIL raises many types for non-images
            left_out.append(source.path(i))
            continue
        if sum(s["count"] for s in shards) % shard_size == 0:
            if writer is not None:
                writer.close()
            shards.append({"name": f"shard-{len(shards):06d}.tar", "count": 0})
            writer = TarWriter(fs.open(f"{base}/{shards[-1]['name']}", "wb"), encoder=False)
        writer.write({"__key__": f"{sum(s['count'] for s in shards):09d}", ext: data,
                      "cls": str(int(source.labels[i])).encode()})
        shards[-1]["count"] += 1
    if writer is not None:
        writer.close()
    return shards, left_out
