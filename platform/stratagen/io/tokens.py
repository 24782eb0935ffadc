"""The token cache on disk: compact shards, a manifest written last, memory-mapped reads.

::

    <run>/tokens/<tokenizer id>/<split>/00000.safetensors   images [j*S, (j+1)*S): each level
                                                             [n, views, h, w] and labels [n]
    <run>/tokens/<tokenizer id>/<split>/manifest.json       written after every shard

Tokens are stored in the smallest integer type that holds the codebook (uint8 up to 256 codes,
uint16 up to 65,536, else int32). Every shard carries the cache's *fingerprint* (numbers of
images, views and images per shard, a hash of the tokenizer weights, a hash of the config that
produced it). The
manifest is the only proof that a cache is complete: a missing manifest, or one whose
fingerprint differs from the current one, means the cache is resumed (shards whose
fingerprint matches are kept) or rebuilt, and only shards the manifest lists are ever read,
so leftovers of an older, larger dataset cannot mix in. The manifest is not trusted alone either:
whenever a cache is opened each listed shard is checked against it (present, whole: its tensors end
where the file does, made for this cache, the rows, levels and dtypes the manifest lists); a cache
that fails is rebuilt where it is produced and named in one error line where it is read, and
token ids beyond the codebook are refused when read.

A training process reads exactly the rows of its batch (``os.pread`` at their offsets in the
safetensors data section on a local disk; ranged requests through fsspec elsewhere), so it holds
none of the cache in memory and fetches only the rows it trains on. (Memory-mapping the shards was
measured first: the kernel maps about ten times the bytes read around each random row, so a
process's resident memory grew with the cache.)
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import weakref
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
from fsspec.implementations.local import LocalFileSystem
import torch

from stratagen.io import checkpoint
from stratagen.registry import StratagenError

log = logging.getLogger("stratagen")

MANIFEST = "manifest.json"
FORMAT = 1
_NUMPY = {"U8": np.uint8, "U16": np.uint16, "I32": np.int32, "I64": np.int64}


def token_dtype(codebook_size: int) -> torch.dtype:
    """The smallest integer dtype holding token ids ``[0, codebook_size)``."""
    if codebook_size <= 2**8:
        return torch.uint8
    if codebook_size <= 2**16:
        return torch.uint16
    return torch.int32


def tensor_hash(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of named tensors (names, dtypes, shapes and bytes), e.g. a state dict."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Fingerprint:
    """What a cache was made from; a cache is used only if all of it matches."""

    images: int
    views: int
    shard_size: int  # images per shard (the last may hold fewer)
    tokenizer: str  # tensor_hash of the tokenizer weights
    config: str  # text_hash of the config sections that shape the tokens

    def as_dict(self) -> dict[str, Any]:
        return {"images": self.images, "views": self.views, "shard_size": self.shard_size,
                "tokenizer": self.tokenizer, "config": self.config}


@dataclass(frozen=True)
class _Column:
    """Where one array of a shard lies: row ``r``, view ``v`` is ``item_bytes`` at
    ``offset + r * row_bytes + v * view_bytes``."""

    offset: int
    row_bytes: int
    view_bytes: int
    item_bytes: int
    dtype: np.dtype
    item_shape: tuple[int, ...]


class _Shard:
    """Reads rows of one shard file: ``os.pread`` on a local disk, ranged requests elsewhere."""

    def __init__(self, url: str):
        self.url = url
        self.fs, self.path = fsspec.core.url_to_fs(url)
        header, data_start = checkpoint.read_header(url)
        self.meta = json.loads(header.get("__metadata__", {}).get("json", "{}"))
        self.shapes = {name: entry["shape"] for name, entry in header.items() if name != "__metadata__"}
        self.columns = {}
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            if entry["dtype"] not in _NUMPY:
                raise StratagenError(f"{url}: {name} holds {entry['dtype']}, not token ids")
            dtype = np.dtype(_NUMPY[entry["dtype"]])
            shape = entry["shape"]
            item_shape = tuple(shape[2:]) if len(shape) > 1 else ()
            item_bytes = int(np.prod(item_shape, dtype=np.int64)) * dtype.itemsize
            self.columns[name] = _Column(data_start + entry["data_offsets"][0],
                                         int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize,
                                         item_bytes if len(shape) > 1 else 0, item_bytes, dtype, item_shape)
        self.fd: int | None = None
        if isinstance(self.fs, LocalFileSystem):
            self.fd = os.open(self.path, os.O_RDONLY)
            weakref.finalize(self, os.close, self.fd)

    def read(self, name: str, rows: np.ndarray, views: np.ndarray) -> np.ndarray:
        """Rows ``rows`` [n] in views ``views`` [n] of array ``name``: [n, *item shape]."""
        c = self.columns[name]
        starts = (c.offset + rows * c.row_bytes + views * c.view_bytes).tolist()
        if self.fd is not None:
            data = b"".join(os.pread(self.fd, c.item_bytes, s) for s in starts)
        else:
            data = b"".join(self.fs.cat_ranges([self.path] * len(starts), starts, [s + c.item_bytes for s in starts]))
        return np.frombuffer(data, c.dtype).reshape(len(starts), *c.item_shape)


class TokenCache:
    """One tokenizer's cache of one split, at ``url`` (a directory)."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")

    def shard_url(self, index: int) -> str:
        return f"{self.url}/{index:05d}.safetensors"

    def manifest(self) -> dict[str, Any] | None:
        """The manifest (None if there is none); StratagenError naming it if it is not one."""
        url = f"{self.url}/{MANIFEST}"
        if not checkpoint.exists(url):
            return None
        try:
            manifest = checkpoint.read_json(url)
            if not (isinstance(manifest, dict) and isinstance(manifest.get("fingerprint"), dict)
                    and isinstance(manifest.get("levels"), dict)
                    and all(isinstance(n, int) and n > 0 for n in manifest.get("shards"))):
                raise ValueError("expected fingerprint, shards (row counts) and levels")
        except (ValueError, UnicodeDecodeError, TypeError) as exc:
            raise StratagenError(f"{url}: not a token cache manifest ({exc})") from None
        return manifest

    def problem(self, manifest: dict[str, Any]) -> str | None:
        """The first way the shards disagree with ``manifest`` (a shard missing, truncated, of
        another cache, with other rows, levels or dtypes than the manifest lists), or None."""
        names = sorted([*manifest["levels"], "labels"])
        for index, rows in enumerate(manifest["shards"]):
            try:
                shard = _Shard(self.shard_url(index))
            except StratagenError as exc:
                return str(exc)
            where = self.shard_url(index)
            if shard.meta.get("fingerprint") != manifest["fingerprint"] or shard.meta.get("shard") != index:
                return f"{where}: made for another cache than {MANIFEST} describes"
            if sorted(shard.columns) != names:
                return f"{where}: holds {sorted(shard.columns)}, {MANIFEST} lists {names}"
            for name, column in shard.columns.items():
                if shard.shapes[name][0] != rows:
                    return f"{where}: {name} has {shard.shapes[name][0]} rows, {MANIFEST} says {rows}"
                dtype = str(manifest["levels"].get(name, {}).get("dtype", "int64")).removeprefix("torch.")
                if column.dtype.name != dtype:
                    return f"{where}: {name} holds {column.dtype.name}, {MANIFEST} says {dtype}"
        return None

    def is_complete(self, fingerprint: Fingerprint) -> bool:
        """Whether a sealed cache for ``fingerprint`` is here and its shards agree with the manifest;
        a cache that does not is reported (it is then resumed or rebuilt)."""
        try:
            manifest = self.manifest()
        except StratagenError as exc:
            log.warning("%s; rebuilding the token cache", exc)
            return False
        if manifest is None or manifest["fingerprint"] != fingerprint.as_dict():
            return False
        problem = self.problem(manifest)
        if problem is not None:
            log.warning("%s; rebuilding what is missing of the token cache", problem)
        return problem is None

    def shard_is_done(self, index: int, fingerprint: Fingerprint) -> bool:
        """Shard ``index`` exists, is whole and was written for ``fingerprint`` (shards are written atomically)."""
        url = self.shard_url(index)
        if not checkpoint.exists(url):
            return False
        try:
            meta = checkpoint.read_metadata(url)
        except StratagenError:  # a damaged shard: rebuilt
            return False
        return meta.get("fingerprint") == fingerprint.as_dict() and meta.get("shard") == index

    def prepare(self, shards: int, fingerprint: Fingerprint) -> None:
        """Before (re)building: drop the manifest first, then every shard that is not one of
        ``shards`` made for ``fingerprint``."""
        fs, path = fsspec.core.url_to_fs(self.url)
        if fs.exists(f"{path}/{MANIFEST}"):
            fs.rm(f"{path}/{MANIFEST}")
        if not fs.exists(path):
            return
        for name in fs.ls(path, detail=False):
            stem, _, extension = name.rsplit("/", 1)[-1].partition(".")
            keep = (extension == "safetensors" and stem.isdigit() and int(stem) < shards
                    and self.shard_is_done(int(stem), fingerprint))
            if not keep:
                fs.rm(name, recursive=True)

    def write_shard(self, index: int, levels: dict[str, torch.Tensor], labels: torch.Tensor,
                    fingerprint: Fingerprint) -> None:
        """levels: name -> [n, views, h, w] (already in their cache dtype); labels: [n]."""
        checkpoint.save_tensors(self.shard_url(index), {**levels, "labels": labels.to(torch.int64)},
                                {"fingerprint": fingerprint.as_dict(), "shard": index})

    def write_manifest(self, counts: list[int], levels: dict[str, dict[str, Any]], fingerprint: Fingerprint) -> None:
        """Seal the cache; call after every shard is written. levels: name -> {shape, codebook_size, dtype}."""
        checkpoint.write_json(f"{self.url}/{MANIFEST}", {"format": FORMAT, "fingerprint": fingerprint.as_dict(),
                                                         "shards": counts, "levels": levels})

    def open(self) -> "TokenReader":
        manifest = self.manifest()
        if manifest is None:
            raise StratagenError(f"{self.url}: no complete token cache (no {MANIFEST}; run `stratagen tokenize`)")
        problem = self.problem(manifest)
        if problem is not None:
            raise StratagenError(f"{problem}; `stratagen tokenize` (or train --resume) rebuilds the token cache")
        return TokenReader(self, manifest)


class TokenReader:
    """Rows of a complete cache: ``gather(indices, views)`` reads exactly the rows a training step
    needs, so a process holds nothing of the cache between steps."""

    def __init__(self, cache: TokenCache, manifest: dict[str, Any]):
        self.manifest = manifest
        self.levels = list(manifest["levels"])
        self.codebook_sizes = {name: int(level["codebook_size"]) for name, level in manifest["levels"].items()}
        self.views = int(manifest["fingerprint"]["views"])
        counts = manifest["shards"]
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.shards = [_Shard(cache.shard_url(i)) for i in range(len(counts))]

    def __len__(self) -> int:
        return int(self.starts[-1])

    def gather(self, indices: np.ndarray, views: np.ndarray) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Images ``indices`` [B] in views ``views`` [B]: (level -> int64 [B, h, w], labels int64 [B])."""
        indices, views = np.asarray(indices, dtype=np.int64), np.asarray(views, dtype=np.int64)
        shard = np.searchsorted(self.starts, indices, side="right") - 1
        rows = indices - self.starts[shard]
        result: dict[str, np.ndarray] = {}
        for j in np.unique(shard):
            at = np.nonzero(shard == j)[0]
            for name in [*self.levels, "labels"]:
                part = self.shards[j].read(name, rows[at], views[at])
                if name in self.codebook_sizes and part.size and part.max() >= self.codebook_sizes[name]:
                    raise StratagenError(f"{self.shards[j].url}: {name} holds token id {int(part.max())}, beyond "
                                         f"the codebook of {self.codebook_sizes[name]}; rebuild the token cache")
                if name not in result:
                    result[name] = np.empty((len(indices), *part.shape[1:]), dtype=np.int64)
                result[name][at] = part
        labels = torch.from_numpy(result.pop("labels"))
        return {k: torch.from_numpy(v) for k, v in result.items()}, labels
