"""A run directory (local path or fsspec URL) and what it holds.

::

    <run>/config.yaml                        the resolved config of the last training command
    <run>/tokenizers/<id>/config.yaml        the resolved config this component was trained with
    <run>/tokenizers/<id>/model.safetensors  weights (+ plugin name/version, step)
    <run>/tokenizers/<id>/checkpoint.safetensors  weights + optimizer state, for --resume
    <run>/priors/<id>/...                    the same for priors
    <run>/tokens/<tokenizer id>/<split>/     token cache (:mod:`stratagen.io.tokens`)
    <run>/tb/                                TensorBoard logs (local runs)
    <run>/samples/                           PNG files and grids
    <run>/.training                          who is training the run now (local runs; see Run.training)
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import time
import uuid
from typing import Any, Iterator

import fsspec
import torch
from torch import nn

from stratagen import config as cfg
from stratagen.registry import Registry, StratagenError, get_registry

from stratagen.io import checkpoint

WEIGHTS = "model.safetensors"
TRAIN_STATE = "checkpoint.safetensors"
CONFIG = "config.yaml"
TRAINING = ".training"
#: what ``os.link`` fails with on a filesystem without hard links (FAT, FUSE mounts of buckets)
NO_HARD_LINKS = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS)

log = logging.getLogger("stratagen")


class Run:
    """Paths and component IO of one run directory."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")

    def path(self, *parts: str) -> str:
        return "/".join((self.url,) + parts)

    @property
    def is_local(self) -> bool:
        return "://" not in self.url or self.url.startswith("file://")

    def local_path(self, *parts: str) -> str:
        """A local filesystem path under the run (TensorBoard and PNG writers need one)."""
        if not self.is_local:
            raise StratagenError(f"{self.url}: this needs a local run directory")
        return self.path(*parts).removeprefix("file://")

    def exists(self) -> bool:
        """Whether this is a run directory (it holds a config.yaml)."""
        return checkpoint.exists(self.path("config.yaml"))

    # ---------------------------------------------------------------- config
    def save_config(self, config: Any, kind: str | None = None, cid: str | None = None) -> None:
        """Write the resolved ``config`` as the run's config, or (with ``kind`` and ``cid``) as the
        one that component is trained with: several configs may share one run directory (a
        critic variant adds critics to a run), and each component is checked on ``--resume``
        against its own record, not against whichever config trained last."""
        url = self.component_url(kind, cid, CONFIG) if kind else self.path(CONFIG)
        checkpoint.write_bytes_atomic(url, cfg.dump_config(config).encode())

    def trained_with(self, kind: str, cid: str) -> bool:
        """Whether the component has a record of the config it is trained with."""
        return checkpoint.exists(self.component_url(kind, cid, CONFIG))

    def load_config(self, overrides: list[str] | None = None, registry: Registry | None = None) -> Any:
        """The run's config, with ``run.dir`` pointing here: a copied or moved run directory is
        itself the run, whatever directory its ``config.yaml`` was written in."""
        url = self.path("config.yaml")
        if not checkpoint.exists(url):
            raise StratagenError(f"{self.url}: not a run directory (no config.yaml)")
        config = cfg.load_config(url, overrides, registry)
        config.run.dir = self.url
        return config

    @contextlib.contextmanager
    def training(self) -> Iterator[None]:
        """Held while this process trains the run (rank 0 under torchrun): a second process that
        would train the same run directory meanwhile is refused, naming the first, rather than
        interleave its checkpoints with the first's or remove the first's files in flight (see
        :meth:`prepare`). The hold is ``<run>/.training`` (process id, host, start, directory),
        removed when the block ends; one left by a killed process of this host, or copied with the
        run, is taken over. Local runs on filesystems with hard links only: object stores have no
        exclusive create, and FAT or a FUSE mount of a bucket no hard links (a warning says the run
        is not held)."""
        if not self.is_local:
            yield
            return
        self._refuse_file()
        with held_by_this_process(self.local_path(TRAINING), self.url, "training this run", "run",
                                  "training writes its checkpoints there"):
            yield

    def prepare(self) -> None:
        """Before training: refuse a run directory that is a file, and remove the temporary files
        (``*.tmp-*``) of atomic writes that a killed process left behind."""
        self._refuse_file()
        fs, path = fsspec.core.url_to_fs(self.url)
        for leftover in fs.glob(f"{path}/**/*{checkpoint.TEMPORARY}*"):
            fs.rm(leftover)

    def _refuse_file(self) -> None:
        fs, path = fsspec.core.url_to_fs(self.url)
        if fs.exists(path) and not fs.isdir(path):
            raise StratagenError(f"run.dir: {self.url} is a file; give a directory (it is created if missing)")

    # ---------------------------------------------------------------- components
    def component_url(self, kind: str, cid: str, filename: str = WEIGHTS) -> str:
        return self.path(f"{kind}s", cid, filename)

    def save_weights(self, kind: str, cid: str, module: nn.Module, plugin: str, step: int,
                     registry: Registry | None = None) -> None:
        provider = (registry or get_registry()).get(kind, plugin).provider
        meta = {"kind": kind, "plugin": plugin, "distribution": provider.distribution,
                "version": provider.version, "step": step}
        checkpoint.save_tensors(self.component_url(kind, cid), module.state_dict(), meta)

    def load_weights(self, kind: str, cid: str, module: nn.Module, plugin: str,
                     registry: Registry | None = None) -> dict:
        """Load trained weights into ``module``, the configured ``plugin``; says which plugin to
        install if the one that wrote them is missing, and refuses weights of another plugin."""
        url = self.component_url(kind, cid)
        if not checkpoint.exists(url):
            raise StratagenError(f"{url}: {kind} {cid!r} has not been trained (run `stratagen train`)")
        try:
            tensors, meta = checkpoint.load_tensors(url)
        except StratagenError as exc:
            raise StratagenError(f"{exc}; {self._rewrite_hint(kind, cid, url)}") from None
        registry = registry or get_registry()
        written_by = meta.get("plugin")
        if written_by not in registry.names(kind):
            raise StratagenError(
                f"{url} was written by {kind} plugin {written_by!r} from "
                f"{meta.get('distribution')} {meta.get('version')}, which is not installed; install that distribution")
        if written_by != plugin:
            raise StratagenError(f"{url} holds the weights of {kind} plugin {written_by!r}, but {kind}s.{cid} "
                                 f"is configured as {plugin!r}; was the config changed?")
        load_state(module, tensors, url, f"the configured {kind} {cid!r}")
        return meta

    def _rewrite_hint(self, kind: str, cid: str, url: str) -> str:
        """How to get unreadable weights at ``url`` back: from the component's last training state
        when that is readable (``train --resume`` writes the weights of a finished checkpoint), else by
        training it again."""
        try:
            step = self.trained_step(kind, cid, TRAIN_STATE)
        except StratagenError:
            step = None
        if step is None:
            return f"delete it and run `stratagen train {self.url} --resume` to train {kind} {cid!r} again"
        return (f"delete it and run `stratagen train {self.url} --resume`: it is rewritten from "
                f"{self.component_url(kind, cid, TRAIN_STATE)} (step {step}), nothing is retrained")

    def trained_step(self, kind: str, cid: str, filename: str = WEIGHTS) -> int | None:
        """The step of the component's weights (or of its ``TRAIN_STATE`` checkpoint); None if absent."""
        url = self.component_url(kind, cid, filename)
        if not checkpoint.exists(url):
            return None
        return checkpoint.read_metadata(url).get("step")

    def started(self, kind: str, cid: str) -> bool:
        """Whether the component has weights or a checkpoint (finished or not)."""
        return self.trained_step(kind, cid) is not None or self.trained_step(kind, cid, TRAIN_STATE) is not None

    def finished(self, kind: str, cid: str, steps: int) -> bool:
        """Whether the component's final weights are written and its checkpoint, if it has one, is
        not behind them (a run stopped between the two is resumed, and rewrites both)."""
        return self.trained_step(kind, cid) == steps and self.trained_step(kind, cid, TRAIN_STATE) in (None, steps)


@contextlib.contextmanager
def held_by_this_process(lock: str, name: str, doing: str, kind: str, writes: str) -> Iterator[None]:
    """Held while the block runs: the hold file ``lock`` (process id, host, start, directory) is made
    atomically; another process's live hold refuses this one (``<name>: another process is <doing>
    ...``), a stale one is taken over (see :func:`_stale`), and the file is removed when the block ends.
    ``kind`` and ``writes`` say what the directory is and why it must be writable. On a filesystem
    without hard links a warning says the directory is not held."""
    os.makedirs(os.path.dirname(lock), exist_ok=True)
    stat = os.stat(os.path.dirname(lock))
    directory = f"{stat.st_dev}:{stat.st_ino}"  # which directory, however it is reached (links, bind mounts)
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
              "dir": directory}
    written = f"{lock}{checkpoint.TEMPORARY}{uuid.uuid4().hex[:8]}"
    try:
        with open(written, "w") as f:
            json.dump(holder, f)
    except OSError as exc:
        raise StratagenError(f"{name}: cannot write into the {kind} directory ({exc.strerror}); {writes}") from None
    held = True
    try:
        while True:
            try:
                os.link(written, lock)  # atomic, and the hold is complete when it appears
                break
            except FileExistsError:
                other = _holder(lock)
                if other is not None and not _stale(other, directory):
                    raise StratagenError(
                        f"{name}: another process is {doing} (process {other['pid']} on {other['host']}, since "
                        f"{other['since']}); wait for it to end, or remove {lock} if that process is gone") from None
                with contextlib.suppress(FileNotFoundError):  # no one's hold: taken over
                    os.remove(lock)
            except OSError as exc:
                if exc.errno not in NO_HARD_LINKS:
                    raise
                log.warning("%s: its filesystem has no hard links, so this %s is not held against a second process",
                            name, kind)
                held = False
                break
    finally:
        os.remove(written)
    try:
        yield
    finally:
        if held:
            with contextlib.suppress(FileNotFoundError):
                os.remove(lock)


def _holder(lock: str) -> dict[str, Any] | None:
    """Who holds the hold file ``lock``, or None when the file is unreadable or already gone."""
    try:
        with open(lock) as f:
            holder = json.load(f)
        return holder if isinstance(holder, dict) and {"pid", "host", "since"} <= holder.keys() else None
    except (OSError, ValueError):
        return None


def _stale(holder: dict[str, Any], directory: str) -> bool:
    """Whether a hold of ``directory`` (device and inode) is no one's: known only for a hold of this
    host. It is when it names another directory (it came with a copy of the directory), this very
    process (an earlier one with the same id left it, as a restarted container numbers its processes
    alike: a process takes each hold only once, so it holds none of this one yet), or a process that
    has ended."""
    if holder["host"] != socket.gethostname():
        return False
    if holder.get("dir", directory) != directory or holder["pid"] == os.getpid():
        return True
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError, OverflowError):
        return False
    return False


def load_state(module: nn.Module, tensors: dict[str, torch.Tensor], url: str, what: str) -> None:
    """``module.load_state_dict(tensors)``, or one line naming what does not fit (names, shapes)."""
    missing, unexpected, resized = checkpoint.mismatches({k: v.shape for k, v in module.state_dict().items()},
                                                         {k: v.shape for k, v in tensors.items()})
    if missing or unexpected or resized:
        found = [f"{label} {items[:3]}" for label, items in
                 (("missing", missing), ("unexpected", unexpected), ("other shapes (file vs config)", resized)) if items]
        raise StratagenError(f"{url}: weights do not fit {what} ({'; '.join(found)}); was the config changed?")
    module.load_state_dict(tensors)


@contextlib.contextmanager
def replacing(url: str, overwrite: bool) -> Iterator[None]:
    """Around the writing of a new run into ``url`` (a path or fsspec URL): refuse a file, and a
    folder that holds anything unless ``overwrite``. With ``overwrite`` the old contents are moved
    aside first, removed once the body succeeds, and put back if it fails: the folder holds either
    the old run or the new one, never a mix of the two."""
    fs, path = fsspec.core.url_to_fs(url)
    if fs.exists(path) and not fs.isdir(path):
        raise StratagenError(f"{url} is a file; give a new or empty folder for the run")
    used = fs.exists(path) and bool(fs.ls(path, detail=False))
    if used and not overwrite:
        what = "a run" if Run(url).exists() else "files"
        raise StratagenError(f"{url} already holds {what}; give a new or empty folder, or pass --overwrite to "
                             f"replace it")
    if not used:
        yield
        return
    aside = f"{path.rstrip('/')}{checkpoint.TEMPORARY}{uuid.uuid4().hex[:8]}"
    fs.mv(path, aside, recursive=True)
    try:
        yield
    except BaseException:
        if fs.exists(path):
            fs.rm(path, recursive=True)
        fs.mv(aside, path, recursive=True)
        raise
    fs.rm(aside, recursive=True)
